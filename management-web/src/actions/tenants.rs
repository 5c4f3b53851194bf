//! Tenants: create, change (settings, limits, enabled), delete, and the lookup every tenant
//! route starts with.

use relay_store::{Tenant, TenantLimits, TenantSettings};

use super::Actor;
use crate::error::Error;
use crate::AppState;

/// Largest value of a byte or millisecond limit (the store keeps signed 64 bits).
pub(crate) const MAX_LIMIT_VALUE: u64 = i64::MAX as u64;

/// A tenant to create. The name follows the naming rule (`relay_store::validate_name`) and is
/// stored lowercase.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewTenant {
    pub(crate) name: String,
    pub(crate) display_name: Option<String>,
    pub(crate) description: Option<String>,
}

/// A change to a tenant; what is `None` is kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantChange {
    pub(crate) enabled: Option<bool>,
    pub(crate) settings: TenantSettings,
    pub(crate) limits: Option<LimitsChange>,
}

/// A change to a tenant's limits: `None` keeps a limit, `Some(None)` returns it to the relay's
/// default, `Some(Some(n))` sets it (1 or more; `max_concurrent_streams` at most 2^32-1, the
/// others at most 2^63-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LimitsChange {
    pub(crate) max_body_bytes: Option<Option<u64>>,
    pub(crate) max_concurrent_streams: Option<Option<u64>>,
    pub(crate) request_timeout_ms: Option<Option<u64>>,
}

impl LimitsChange {
    /// Every limit set: `None` is the relay's default (the pages' settings form).
    pub(crate) fn all(limits: [Option<u64>; 3]) -> LimitsChange {
        let [max_body_bytes, max_concurrent_streams, request_timeout_ms] = limits.map(Some);
        LimitsChange {
            max_body_bytes,
            max_concurrent_streams,
            request_timeout_ms,
        }
    }
}

/// The tenant named `name` (any case), or [`Error::NotFound`].
pub(crate) async fn find(state: &AppState, name: &str) -> Result<Tenant, Error> {
    state
        .store()
        .tenant(name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("tenant {name} not found")))
}

/// Creates an enabled tenant (`tenant.create`). A taken name is [`Error::Conflict`], one that
/// breaks the naming rule [`Error::Validation`].
pub(crate) async fn create(
    state: &AppState,
    actor: &Actor,
    new: NewTenant,
) -> Result<Tenant, Error> {
    let store = state.store();
    let mut t = store.create_tenant(&new.name).await?;
    if new.display_name.is_some() || new.description.is_some() {
        let settings = TenantSettings {
            display_name: new.display_name,
            description: new.description,
            audit_query_strings: None,
        };
        t = store.set_tenant_settings(&t.name, &settings).await?;
    }
    state.record(actor, "tenant.create", &t.name).await;
    Ok(t)
}

/// Changes a tenant and returns it as it is now. Limits are checked before anything is written.
/// Settings and limits are recorded as `tenant.update`, the enabled state as `tenant.enable` or
/// `tenant.disable`; a change of nothing records nothing. Disabling closes the tenant's sessions
/// on every relay (see the module docs).
pub(crate) async fn update(
    state: &AppState,
    actor: &Actor,
    name: &str,
    change: TenantChange,
) -> Result<Tenant, Error> {
    let store = state.store();
    let t = find(state, name).await?;
    let limits = change
        .limits
        .map(|c| merge_limits(&t.limits, &c))
        .transpose()?;
    let settings_changed = change.settings != TenantSettings::default();
    if settings_changed {
        store.set_tenant_settings(&t.name, &change.settings).await?;
    }
    if let Some(l) = &limits {
        store.set_tenant_limits(&t.name, l).await?;
    }
    if settings_changed || limits.is_some() {
        state.record(actor, "tenant.update", &t.name).await;
    }
    if let Some(enabled) = change.enabled {
        store.set_tenant_enabled(&t.name, enabled).await?;
        let action = if enabled {
            "tenant.enable"
        } else {
            "tenant.disable"
        };
        state.record(actor, action, &t.name).await;
    }
    find(state, &t.name).await
}

/// Deletes a tenant with its credentials and hostnames (`tenant.delete`); relays close its
/// sessions and its URLs answer 404.
pub(crate) async fn delete(state: &AppState, actor: &Actor, name: &str) -> Result<(), Error> {
    let t = find(state, name).await?;
    state.store().delete_tenant(&t.name).await?;
    state.record(actor, "tenant.delete", &t.name).await;
    Ok(())
}

/// `current` with `change` applied, or [`Error::Validation`] if a limit is out of range.
fn merge_limits(current: &TenantLimits, change: &LimitsChange) -> Result<TenantLimits, Error> {
    let pick = |c: Option<Option<u64>>, now: Option<u64>| c.unwrap_or(now);
    let streams = pick(
        change.max_concurrent_streams,
        current.max_concurrent_streams.map(u64::from),
    );
    let merged = (
        pick(change.max_body_bytes, current.max_body_bytes),
        streams,
        pick(change.request_timeout_ms, current.request_timeout_ms),
    );
    let in_range = |v: Option<u64>, max: u64| v.is_none_or(|v| (1..=max).contains(&v));
    if !(in_range(merged.0, MAX_LIMIT_VALUE)
        && in_range(merged.1, u64::from(u32::MAX))
        && in_range(merged.2, MAX_LIMIT_VALUE))
    {
        return Err(Error::Validation(
            "limits must be 1 to 2^63-1 (max_concurrent_streams: 1 to 2^32-1); use null for \
             the relay's default"
                .into(),
        ));
    }
    Ok(TenantLimits {
        max_body_bytes: merged.0,
        max_concurrent_streams: merged.1.and_then(|v| u32::try_from(v).ok()),
        request_timeout_ms: merged.2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    fn alice() -> Actor {
        Actor::user("alice")
    }

    #[tokio::test]
    async fn create_stores_the_tenant_and_records_it() {
        let (_dir, state) = state().await;
        let t = create(
            &state,
            &alice(),
            NewTenant {
                name: "Contoso".into(),
                display_name: Some("Contoso Ltd".into()),
                description: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(t.name, "contoso");
        assert_eq!(t.display_name, "Contoso Ltd");
        assert!(t.enabled);
        assert_eq!(find(&state, "CONTOSO").await.unwrap(), t);
        assert_eq!(
            recorded(&state).await,
            [entry("user:alice", "tenant.create", "contoso")]
        );
    }

    #[tokio::test]
    async fn create_refuses_taken_and_invalid_names_and_records_nothing() {
        let (_dir, state) = state().await;
        let new = |name: &str| NewTenant {
            name: name.into(),
            ..Default::default()
        };
        create(&state, &alice(), new("acme")).await.unwrap();
        let taken = create(&state, &alice(), new("ACME")).await.unwrap_err();
        assert!(matches!(taken, Error::Conflict(_)), "{taken:?}");
        for bad in ["bad name!", "-x", "", "Bad_Name"] {
            let e = create(&state, &alice(), new(bad)).await.unwrap_err();
            assert!(matches!(e, Error::Validation(_)), "{bad:?}: {e:?}");
        }
        assert_eq!(recorded(&state).await.len(), 1);
    }

    #[tokio::test]
    async fn update_merges_limits_and_records_each_kind_of_change() {
        let (_dir, state) = state().await;
        let t = state.store().create_tenant("acme").await.unwrap();
        let before = state.store().revision().await.unwrap();
        let change = TenantChange {
            settings: TenantSettings {
                description: Some("ERP".into()),
                ..Default::default()
            },
            limits: Some(LimitsChange {
                max_body_bytes: Some(Some(1024)),
                request_timeout_ms: Some(Some(5000)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t2 = update(&state, &alice(), &t.name, change).await.unwrap();
        assert_eq!(t2.description, "ERP");
        assert_eq!(t2.limits.max_body_bytes, Some(1024));
        assert_eq!(t2.limits.request_timeout_ms, Some(5000));
        // Null returns to the default; absent fields are kept.
        let change = TenantChange {
            limits: Some(LimitsChange {
                max_body_bytes: Some(None),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t3 = update(&state, &alice(), "ACME", change).await.unwrap();
        assert_eq!(t3.limits.max_body_bytes, None);
        assert_eq!(t3.limits.request_timeout_ms, Some(5000));
        // Disabling: relays see a new revision and close the tenant's sessions.
        let change = TenantChange {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(
            !update(&state, &alice(), "acme", change)
                .await
                .unwrap()
                .enabled
        );
        assert!(state.store().revision().await.unwrap() > before);
        // Nothing to change: nothing recorded.
        update(&state, &alice(), "acme", TenantChange::default())
            .await
            .unwrap();
        assert_eq!(
            recorded(&state).await,
            [
                entry("user:alice", "tenant.update", "acme"),
                entry("user:alice", "tenant.update", "acme"),
                entry("user:alice", "tenant.disable", "acme"),
            ]
        );
    }

    #[tokio::test]
    async fn update_refuses_limits_out_of_range_before_writing_anything() {
        let (_dir, state) = state().await;
        state.store().create_tenant("acme").await.unwrap();
        for limits in [
            LimitsChange {
                max_concurrent_streams: Some(Some(0)),
                ..Default::default()
            },
            LimitsChange {
                max_concurrent_streams: Some(Some(u64::from(u32::MAX) + 1)),
                ..Default::default()
            },
            LimitsChange {
                max_body_bytes: Some(Some(MAX_LIMIT_VALUE + 1)),
                ..Default::default()
            },
            LimitsChange::all([Some(1), Some(1), Some(0)]),
        ] {
            let change = TenantChange {
                enabled: Some(false),
                settings: TenantSettings {
                    description: Some("changed".into()),
                    ..Default::default()
                },
                limits: Some(limits.clone()),
            };
            let e = update(&state, &alice(), "acme", change).await.unwrap_err();
            assert!(matches!(e, Error::Validation(_)), "{limits:?}: {e:?}");
        }
        let t = find(&state, "acme").await.unwrap();
        assert!(t.enabled);
        assert_eq!(t.description, "");
        assert_eq!(t.limits, TenantLimits::default());
        assert!(recorded(&state).await.is_empty());
        let e = update(&state, &alice(), "nobody", TenantChange::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    }

    #[tokio::test]
    async fn delete_removes_the_tenant_and_records_its_canonical_name() {
        let (_dir, state) = state().await;
        state.store().create_tenant("acme").await.unwrap();
        delete(&state, &Actor::token("ci"), "Acme").await.unwrap();
        assert!(matches!(
            find(&state, "acme").await,
            Err(Error::NotFound(_))
        ));
        let again = delete(&state, &Actor::token("ci"), "acme").await;
        assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
        assert_eq!(
            recorded(&state).await,
            [entry("token:ci", "tenant.delete", "acme")]
        );
    }

    #[tokio::test]
    async fn a_store_that_does_not_answer_is_unavailable() {
        let (_dir, state) = state().await;
        state.store().close().await;
        let new = NewTenant {
            name: "acme".into(),
            ..Default::default()
        };
        let e = create(&state, &alice(), new).await.unwrap_err();
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
        assert_eq!(
            e.outcome().status,
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
