//! Visitor access policies (docs/policies.md): a tenant's rules by scope (`tenant`,
//! `target:NAME`, `host:HOSTNAME`) and its visitor API keys (create: the key exists only in the
//! answer; revoke). The store validates rules (`PolicyRules::validate`); relays compile them
//! into their next catalog snapshot.

use relay_store::{ApiKey, NewApiKey, PolicyRules, PolicyScope};

use super::credentials::MAX_LABEL;
use super::{tenants, Actor};
use crate::error::Error;
use crate::AppState;

/// A tenant's canonical name and its policies, tenant scope first.
pub(crate) async fn overview(
    state: &AppState,
    tenant: &str,
) -> Result<(String, Vec<(PolicyScope, PolicyRules)>), Error> {
    let t = tenants::find(state, tenant).await?;
    let all = state.store().policies(&t.name).await?;
    Ok((t.name, all))
}

/// The rules stored at one scope (empty when none).
pub(crate) async fn rules(
    state: &AppState,
    tenant: &str,
    scope: &PolicyScope,
) -> Result<PolicyRules, Error> {
    let t = tenants::find(state, tenant).await?;
    Ok(state.store().policy(&t.name, scope).await?)
}

/// Replaces one scope's rules (`tenant.policy`, object `tenant [scope]`); empty rules remove
/// the scope. Invalid rules are [`Error::Validation`] and change nothing.
pub(crate) async fn set(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    scope: &PolicyScope,
    rules: &PolicyRules,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    state.store().set_policy(&t.name, scope, rules).await?;
    let object = format!("{} [{}]", t.name, scope_key(scope));
    state.record(actor, "tenant.policy", &object).await;
    Ok(())
}

/// A tenant's API keys, newest first, revoked ones included (never the keys themselves).
pub(crate) async fn keys(state: &AppState, tenant: &str) -> Result<Vec<ApiKey>, Error> {
    let t = tenants::find(state, tenant).await?;
    Ok(state.store().api_keys(&t.name).await?)
}

/// Creates a visitor API key (`api_key.create`, object `tenant/id`); the answer holds the key,
/// which is stored only as a keyed hash.
pub(crate) async fn create_key(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    label: &str,
) -> Result<NewApiKey, Error> {
    let t = tenants::find(state, tenant).await?;
    let label: String = label.chars().take(MAX_LABEL).collect();
    let created = state
        .store()
        .create_api_key(&t.name, &label, state.hasher())
        .await?;
    let object = format!("{}/{}", t.name, created.key.id);
    state.record(actor, "api_key.create", &object).await;
    Ok(created)
}

/// Revokes API key `id` of `tenant` (`api_key.revoke`); one that is not the tenant's or is
/// revoked already is [`Error::NotFound`]. Relays refuse it from their next snapshot on.
pub(crate) async fn revoke_key(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    id: &str,
) -> Result<(), Error> {
    let t = tenants::find(state, tenant).await?;
    state.store().revoke_api_key(&t.name, id).await?;
    let object = format!("{}/{id}", t.name);
    state.record(actor, "api_key.revoke", &object).await;
    Ok(())
}

/// `tenant`, `target:{name}` or `host:{hostname}`; anything else is [`Error::Validation`].
pub(crate) fn parse_scope(s: &str) -> Result<PolicyScope, Error> {
    let bad = || {
        Error::Validation(format!(
            "unknown scope {s:?}: tenant, target:NAME or host:HOSTNAME"
        ))
    };
    if s == "tenant" {
        return Ok(PolicyScope::Tenant);
    }
    if let Some(t) = s.strip_prefix("target:") {
        return relay_store::validate_name(t)
            .map(PolicyScope::Target)
            .map_err(|_| bad());
    }
    if let Some(h) = s.strip_prefix("host:") {
        return relay_store::canonical_hostname(h)
            .map(PolicyScope::Hostname)
            .map_err(|_| bad());
    }
    Err(bad())
}

/// The form [`parse_scope`] reads: `tenant`, `target:{name}`, `host:{hostname}`.
pub(crate) fn scope_key(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Tenant => "tenant".into(),
        s => s.key(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    #[test]
    fn scopes_are_parsed_and_canonical() {
        assert_eq!(parse_scope("tenant").ok(), Some(PolicyScope::Tenant));
        assert_eq!(
            parse_scope("target:App").ok(),
            Some(PolicyScope::Target("app".into()))
        );
        let host = parse_scope("host:App.Acme.Test").unwrap();
        assert_eq!(scope_key(&host), "host:app.acme.test");
        assert!(parse_scope("target:../x").is_err());
        assert!(parse_scope("everything").is_err());
    }

    #[tokio::test]
    async fn changes_are_validated_and_recorded() {
        let (_dir, state) = state().await;
        let actor = Actor::user("alice");
        state.store().create_tenant("acme").await.unwrap();
        let scope = PolicyScope::Target("app".into());
        let bad = PolicyRules {
            deny_ip: Some(vec!["300.0.0.1".into()]),
            ..PolicyRules::default()
        };
        let e = set(&state, &actor, "acme", &scope, &bad).await.unwrap_err();
        assert!(matches!(e, Error::Validation(_)), "{e:?}");
        let good = PolicyRules {
            deny_ip: Some(vec!["203.0.113.0/24".into()]),
            ..PolicyRules::default()
        };
        set(&state, &actor, "ACME", &scope, &good).await.unwrap();
        assert_eq!(rules(&state, "acme", &scope).await.unwrap(), good);
        let key = create_key(&state, &actor, "acme", "ci").await.unwrap();
        revoke_key(&state, &actor, "acme", &key.key.id)
            .await
            .unwrap();
        let again = revoke_key(&state, &actor, "acme", &key.key.id).await;
        assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
        let object = format!("acme/{}", key.key.id);
        assert_eq!(
            recorded(&state).await,
            [
                entry("user:alice", "tenant.policy", "acme [target:app]"),
                entry("user:alice", "api_key.create", &object),
                entry("user:alice", "api_key.revoke", &object),
            ]
        );
    }
}
