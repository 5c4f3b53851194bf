//! Pairing (docs/pairing.md): a tenant's mode (off, open, token) and its pairing tokens
//! (create: the token exists only in the answer; revoke).

use relay_store::{NewPairingToken, PairingMode, PairingToken};

use super::credentials::MAX_LABEL;
use super::{tenants, Actor};
use crate::error::Error;
use crate::AppState;

/// A tenant's pairing mode and tokens (newest first, revoked ones included).
pub(crate) async fn overview(
    state: &AppState,
    tenant: &str,
) -> Result<(String, PairingMode, Vec<PairingToken>), Error> {
    let t = tenants::find(state, tenant).await?;
    let mode = state.store().pairing_mode(&t.id.0).await?;
    let tokens = state.store().pairing_tokens(&t.name).await?;
    Ok((t.name, mode, tokens))
}

/// Sets a tenant's pairing mode (`tenant.pairing`, object `tenant: old -> new`, recorded only
/// when it changes). Relays close open sockets the new mode refuses within their recheck.
pub(crate) async fn set_mode(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    mode: PairingMode,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    let old = state.store().set_pairing_mode(&t.name, mode).await?;
    if old != mode {
        let object = format!("{}: {old} -> {mode}", t.name);
        state.record(actor, "tenant.pairing", &object).await;
    }
    Ok(())
}

/// Creates a pairing token (`pairing_token.create`, object `tenant/id`), optionally bound to
/// one peer id (1 to 128 bytes, else [`Error::Validation`]).
pub(crate) async fn create_token(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    peer_id: Option<&str>,
    label: &str,
) -> Result<NewPairingToken, Error> {
    let t = tenants::find(state, tenant).await?;
    let label: String = label.chars().take(MAX_LABEL).collect();
    let created = state
        .store()
        .create_pairing_token(&t.name, peer_id, &label, state.hasher())
        .await?;
    let object = format!("{}/{}", t.name, created.token.id);
    state.record(actor, "pairing_token.create", &object).await;
    Ok(created)
}

/// Revokes pairing token `id` of `tenant` (`pairing_token.revoke`); one that is not the
/// tenant's or is revoked already is [`Error::NotFound`].
pub(crate) async fn revoke_token(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    id: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    state.store().revoke_pairing_token(&t.name, id).await?;
    let object = format!("{}/{id}", t.name);
    state.record(actor, "pairing_token.revoke", &object).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    #[tokio::test]
    async fn modes_and_tokens_are_recorded_and_checked() {
        let (_dir, state) = state().await;
        state.store().create_tenant("acme").await.unwrap();
        let actor = Actor::token("ci");
        set_mode(&state, &actor, "ACME", PairingMode::Token)
            .await
            .unwrap();
        // The same mode again changes nothing and records nothing.
        set_mode(&state, &actor, "acme", PairingMode::Token)
            .await
            .unwrap();
        let t = create_token(&state, &actor, "acme", Some("alice"), "tablet")
            .await
            .unwrap();
        assert!(relay_store::parse_pairing_token(&t.value).is_some());
        let e = create_token(&state, &actor, "acme", Some(""), "")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Validation(_)), "{e:?}");
        let (name, mode, tokens) = overview(&state, "acme").await.unwrap();
        assert_eq!(
            (name.as_str(), mode, tokens.len()),
            ("acme", PairingMode::Token, 1)
        );
        revoke_token(&state, &actor, "acme", &t.token.id)
            .await
            .unwrap();
        let e = revoke_token(&state, &actor, "acme", &t.token.id)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        let e = set_mode(&state, &actor, "nobody", PairingMode::Open)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert_eq!(
            recorded(&state).await,
            [
                entry("token:ci", "tenant.pairing", "acme: off -> token"),
                entry(
                    "token:ci",
                    "pairing_token.create",
                    &format!("acme/{}", t.token.id)
                ),
                entry(
                    "token:ci",
                    "pairing_token.revoke",
                    &format!("acme/{}", t.token.id)
                ),
            ]
        );
    }
}
