//! Connector credentials: create (the secret exists only in the answer) and revoke.

use relay_store::NewCredential;

use super::{tenants, Actor};
use crate::error::Error;
use crate::AppState;

/// Longest label kept, in characters (the rest is cut).
pub(crate) const MAX_LABEL: usize = 200;

/// Creates a credential for `tenant` (`credential.create`, object `tenant/id`). The answer
/// holds the secret, which is stored only as a hash.
pub(crate) async fn create(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    label: &str,
) -> Result<NewCredential, Error> {
    let t = tenants::find(state, tenant).await?;
    let label: String = label.chars().take(MAX_LABEL).collect();
    let created = state
        .store()
        .create_credential(&t.name, &label, state.hasher())
        .await?;
    let object = format!("{}/{}", t.name, created.credential.id.0);
    state.record(actor, "credential.create", &object).await;
    Ok(created)
}

/// Revokes credential `id` of `tenant` (`credential.revoke`): an unknown tenant, or a
/// credential that is not the tenant's or is revoked already, is [`Error::NotFound`]. Relays
/// close the sessions using it (see the module docs of `actions`).
pub(crate) async fn revoke(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    id: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    state.store().revoke_credential(&t.name, id).await?;
    let object = format!("{}/{id}", t.name);
    state.record(actor, "credential.revoke", &object).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    #[tokio::test]
    async fn create_keeps_200_characters_of_the_label_and_records_tenant_and_id() {
        let (_dir, state) = state().await;
        state.store().create_tenant("acme").await.unwrap();
        let actor = Actor::token("ci");
        let created = create(&state, &actor, "ACME", &"é".repeat(300))
            .await
            .unwrap();
        let c = &created.credential;
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.label.chars().count(), MAX_LABEL);
        assert!(relay_store::parse_secret(&created.secret).is_some());
        let listed = state.store().credentials("acme").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, c.id);
        assert_eq!(
            recorded(&state).await,
            [entry(
                "token:ci",
                "credential.create",
                &format!("acme/{}", c.id.0)
            )]
        );
        let e = create(&state, &actor, "nobody", "").await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    }

    #[tokio::test]
    async fn revoke_needs_the_credentials_own_tenant() {
        let (_dir, state) = state().await;
        let store = state.store();
        store.create_tenant("acme").await.unwrap();
        store.create_tenant("other").await.unwrap();
        let c = store
            .create_credential("acme", "office", state.hasher())
            .await
            .unwrap()
            .credential;
        let actor = Actor::user("alice");
        // Another tenant's name, or no tenant: not found, and the credential stays valid.
        for tenant in ["other", "nobody"] {
            let e = revoke(&state, &actor, tenant, &c.id.0).await.unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{tenant}: {e:?}");
        }
        let still = store.credential("acme", &c.id.0).await.unwrap().unwrap();
        assert_eq!(still.revoked_at, None);
        assert!(recorded(&state).await.is_empty());

        let before = store.revision().await.unwrap();
        revoke(&state, &actor, "Acme", &c.id.0).await.unwrap();
        let revoked = store.credential("acme", &c.id.0).await.unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        // Relays see a new revision and close the sessions using it.
        assert!(store.revision().await.unwrap() > before);
        let twice = revoke(&state, &actor, "acme", &c.id.0).await.unwrap_err();
        assert!(matches!(twice, Error::NotFound(_)), "{twice:?}");
        assert_eq!(
            recorded(&state).await,
            [entry(
                "user:alice",
                "credential.revoke",
                &format!("acme/{}", c.id.0)
            )]
        );
    }
}
