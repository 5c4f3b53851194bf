//! Admin API tokens: create (the value exists only in the answer) and revoke.

use relay_store::{ApiToken, NewApiToken};

use super::Actor;
use crate::error::Error;
use crate::AppState;

/// Creates an API token named `name` (`api_token.create`); the naming rule of tenants applies,
/// and a taken name is [`Error::Conflict`]. The answer holds the token, stored only as a hash.
pub(crate) async fn create(
    state: &AppState,
    actor: &Actor,
    name: &str,
) -> Result<NewApiToken, Error> {
    let new = state.store().create_api_token(name, state.hasher()).await?;
    state
        .record(actor, "api_token.create", &new.token.name)
        .await;
    Ok(new)
}

/// Revokes the token with id or name `id_or_name` (`api_token.revoke`); revoking twice is not
/// an error, an unknown token is [`Error::NotFound`].
pub(crate) async fn revoke(
    state: &AppState,
    actor: &Actor,
    id_or_name: &str,
) -> Result<ApiToken, Error> {
    let token = state.store().revoke_api_token(id_or_name).await?;
    state.record(actor, "api_token.revoke", &token.name).await;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    #[tokio::test]
    async fn create_then_revoke_and_the_token_stops_working() {
        let (_dir, state) = state().await;
        let actor = Actor::user("alice");
        let new = create(&state, &actor, "Terraform").await.unwrap();
        assert_eq!(new.token.name, "terraform");
        let verify = || state.store().verify_api_token(&new.value, state.hasher());
        assert!(verify().await.unwrap().is_some());
        let taken = create(&state, &actor, "terraform").await.unwrap_err();
        assert!(matches!(taken, Error::Conflict(_)), "{taken:?}");
        let bad = create(&state, &actor, "no spaces").await.unwrap_err();
        assert!(matches!(bad, Error::Validation(_)), "{bad:?}");

        let revoked = revoke(&state, &actor, &new.token.id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(verify().await.unwrap().is_none());
        let unknown = revoke(&state, &actor, "nobody").await.unwrap_err();
        assert!(matches!(unknown, Error::NotFound(_)), "{unknown:?}");
        assert_eq!(
            recorded(&state).await,
            [
                entry("user:alice", "api_token.create", "terraform"),
                entry("user:alice", "api_token.revoke", "terraform"),
            ]
        );
    }
}
