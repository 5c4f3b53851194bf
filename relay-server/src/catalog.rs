//! The in-memory view of tenants and credentials that the data plane reads: no store query per
//! visitor request or per connector authentication. It is replaced as a whole snapshot when the
//! store's revision changes (polled), and each refresh closes sessions whose credential was
//! revoked or whose tenant was disabled or deleted.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use relay_store::{ApiKeyRecord, CredentialRecord, Snapshot, Store, Tenant, TenantId};
use rustc_hash::FxHashMap as HashMap;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// One immutable snapshot. Its maps hash with FxHash, not SipHash: they are read on every
/// request, and only an admin adds keys to them, so a visitor cannot make keys collide.
#[derive(Debug, Default)]
pub(crate) struct CatalogData {
    pub(crate) revision: i64,
    by_name: HashMap<String, Arc<Tenant>>,
    by_id: HashMap<TenantId, Arc<Tenant>>,
    credentials: HashMap<String, CredentialRecord>,
    hostnames: HashMap<String, (TenantId, String)>,
    /// Visitor access policies per tenant id, compiled.
    policies: HashMap<String, Arc<crate::policy::TenantPolicies>>,
    /// Active visitor API keys by id.
    api_keys: HashMap<String, ApiKeyRecord>,
}

impl CatalogData {
    fn from_snapshot(s: Snapshot) -> CatalogData {
        let mut by_name = HashMap::with_capacity_and_hasher(s.tenants.len(), Default::default());
        let mut by_id = HashMap::with_capacity_and_hasher(s.tenants.len(), Default::default());
        for t in s.tenants {
            let t = Arc::new(t);
            by_name.insert(t.name.clone(), t.clone());
            by_id.insert(t.id.clone(), t);
        }
        let credentials = s
            .credentials
            .into_iter()
            .map(|c| (c.id.0.clone(), c))
            .collect();
        let hostnames = s
            .hostnames
            .into_iter()
            .map(|h| (h.hostname, (h.tenant_id, h.target)))
            .collect();
        let policies = crate::policy::compile_all(s.policies)
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        let api_keys = s.api_keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        CatalogData {
            revision: s.revision,
            by_name,
            by_id,
            credentials,
            hostnames,
            policies,
            api_keys,
        }
    }
}

/// The shared catalog.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    data: RwLock<Arc<CatalogData>>,
}

impl Catalog {
    /// Loads the first snapshot.
    pub(crate) async fn load(store: &Store) -> Result<Catalog, relay_store::Error> {
        let snapshot = store.snapshot().await?;
        Ok(Catalog {
            data: RwLock::new(Arc::new(CatalogData::from_snapshot(snapshot))),
        })
    }

    fn current(&self) -> Arc<CatalogData> {
        self.data.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An enabled tenant by canonical name. Disabled and unknown look the same.
    pub(crate) fn enabled_tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.current()
            .by_name
            .get(name)
            .filter(|t| t.enabled)
            .cloned()
    }

    /// An enabled tenant by id.
    pub(crate) fn enabled_tenant_by_id(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.current().by_id.get(id).filter(|t| t.enabled).cloned()
    }

    /// The enabled tenant and target a hostname routes to. `None` for unknown hostnames; a
    /// disabled tenant's hostname gives `Some(None)` so it answers like an unknown tenant.
    pub(crate) fn hostname(&self, host: &str) -> Option<Option<(Arc<Tenant>, String)>> {
        let data = self.current();
        let (tenant_id, target) = data.hostnames.get(host)?;
        let tenant = data.by_id.get(tenant_id).filter(|t| t.enabled).cloned();
        Some(tenant.map(|t| (t, target.clone())))
    }

    /// An active (not revoked) credential.
    pub(crate) fn credential(&self, id: &str) -> Option<CredentialRecord> {
        self.current().credentials.get(id).cloned()
    }

    /// A tenant's access policies, if it has any.
    pub(crate) fn policies(&self, tenant_id: &str) -> Option<Arc<crate::policy::TenantPolicies>> {
        self.current().policies.get(tenant_id).cloned()
    }

    /// An active visitor API key.
    pub(crate) fn api_key(&self, id: &str) -> Option<ApiKeyRecord> {
        self.current().api_keys.get(id).cloned()
    }

    /// The current revision.
    pub(crate) fn revision(&self) -> i64 {
        self.current().revision
    }

    fn replace(&self, data: CatalogData) {
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(data);
    }
}

/// Polls the store and swaps in new snapshots until `shutdown`; `on_change` runs after each swap.
pub(crate) async fn run_refresh(
    catalog: Arc<Catalog>,
    store: Store,
    (interval, wake): (Duration, Arc<tokio::sync::Notify>),
    shutdown: CancellationToken,
    on_change: impl Fn() + Send + 'static,
) {
    let mut failing = false;
    loop {
        // Why select: refresh on the poll interval, at once when PostgreSQL notifies a change,
        // and stop on shutdown.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        // Fail static: when the store is unreachable the last snapshot keeps serving.
        let revision = match store.revision().await {
            Ok(r) => r,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "store unreachable; serving the last known tenants");
                    failing = true;
                }
                continue;
            }
        };
        if failing {
            info!("store reachable again");
            failing = false;
        }
        if revision == catalog.revision() {
            continue;
        }
        match store.snapshot().await {
            Ok(s) => {
                debug!(
                    revision = s.revision,
                    tenants = s.tenants.len(),
                    "catalog refreshed"
                );
                catalog.replace(CatalogData::from_snapshot(s));
                on_change();
            }
            Err(e) => warn!(error = %e, "catalog refresh failed"),
        }
    }
}
