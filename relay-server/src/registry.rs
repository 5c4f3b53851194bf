//! Live sessions by tenant, and the choice of session for each request (fewest streams in flight).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use relay_store::TenantId;
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tunnel_protocol::ErrorCode;

use crate::auth::Identity;

/// How a session is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseKind {
    /// Ask the connector to move, let streams finish (shutdown, drain).
    Drain(ErrorCode),
    /// Cut now (revoked credential, disabled tenant).
    Kill(ErrorCode),
}

/// The target names a connector announced, sorted: a request's lookup is a binary search, not
/// a hash of its name with SipHash for every session of the tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Targets(Box<[String]>);

impl Targets {
    /// From names already checked and canonical; duplicates are dropped.
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> Targets {
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        Targets(names.into_boxed_slice())
    }

    /// Whether a request for `target` may go to the session: it announced `target`, or it
    /// announced nothing (then it may be asked for any).
    pub(crate) fn serves(&self, target: &str) -> bool {
        self.0.is_empty() || self.0.binary_search_by(|t| t.as_str().cmp(target)).is_ok()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &String> {
        self.0.iter()
    }
}

/// One live session.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    pub(crate) id: String,
    pub(crate) identity: Identity,
    pub(crate) connector_id: String,
    pub(crate) connector_version: String,
    /// The targets the connector announced in its `Hello` (canonical names); empty means it did
    /// not say, and it may be asked for any.
    pub(crate) targets: Targets,
    pub(crate) conn: tunnel_session::transport::Conn,
    pub(crate) remote: SocketAddr,
    pub(crate) connected_at: SystemTime,
    pub(crate) in_flight: AtomicUsize,
    draining: AtomicBool,
    close: Mutex<Option<CloseKind>>,
    pub(crate) cancel: CancellationToken,
}

impl SessionEntry {
    pub(crate) fn new(
        id: String,
        identity: Identity,
        connector_id: String,
        connector_version: String,
        targets: Targets,
        conn: tunnel_session::transport::Conn,
    ) -> SessionEntry {
        SessionEntry {
            id,
            identity,
            connector_id,
            connector_version,
            targets,
            remote: conn.remote_address(),
            conn,
            connected_at: SystemTime::now(),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            close: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// Asks the session task to end this way (the first request wins, except that a kill
    /// overrides a drain).
    pub(crate) fn request_close(&self, kind: CloseKind) {
        let mut close = self.close.lock().unwrap_or_else(|p| p.into_inner());
        match (*close, kind) {
            (None, _) | (Some(CloseKind::Drain(_)), CloseKind::Kill(_)) => *close = Some(kind),
            _ => {}
        }
        self.draining.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// Stops new streams from being routed here (the connector is moving).
    pub(crate) fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn close_kind(&self) -> Option<CloseKind> {
        *self.close.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn available(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.conn.close_reason().is_none()
    }

    /// Whether the connector serves `target` (or did not say which targets it serves).
    pub(crate) fn serves(&self, target: &str) -> bool {
        self.targets.serves(target)
    }
}

/// Where a request for a tenant's target can go.
#[derive(Debug)]
pub(crate) enum Pick {
    /// The available session serving the target with the fewest streams in flight.
    Session(Arc<SessionEntry>),
    /// The tenant has available sessions, but none serves the target (404).
    NoTarget,
    /// The tenant has no available session (503).
    NoSession,
}

/// Live sessions and per-tenant stream caps, by tenant id (FxHash: read on every request; the
/// keys are tenants an admin made).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: RwLock<HashMap<TenantId, Vec<Arc<SessionEntry>>>>,
    tenant_caps: Mutex<HashMap<TenantId, (u32, Arc<Semaphore>)>>,
    /// Set when the relay shuts down: a session established after that (its handshake was under
    /// way) is asked to close the same way at once, instead of living until the grace period ends.
    closing: Mutex<Option<CloseKind>>,
}

impl Registry {
    pub(crate) fn insert(&self, entry: Arc<SessionEntry>) {
        let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = *self.closing.lock().unwrap_or_else(|p| p.into_inner()) {
            entry.request_close(kind);
        }
        map.entry(entry.identity.tenant.id.clone())
            .or_default()
            .push(entry);
    }

    /// Asks every session, and every one established from now on, to close this way.
    pub(crate) fn close_all(&self, kind: CloseKind) {
        // Under the map's lock, so that no insert slips between the flag and the sweep.
        let map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        *self.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        for s in map.values().flatten() {
            s.request_close(kind);
        }
    }

    pub(crate) fn remove(&self, entry: &SessionEntry) {
        let mut map = self.sessions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&entry.identity.tenant.id) {
            list.retain(|s| s.id != entry.id);
            if list.is_empty() {
                map.remove(&entry.identity.tenant.id);
            }
        }
    }

    /// The available session of `tenant` that serves `target`, with the fewest streams in flight.
    pub(crate) fn pick(&self, tenant: &TenantId, target: &str) -> Pick {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        let best = map
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|s| s.available())
            .inspect(|_| any = true)
            .filter(|s| s.serves(target))
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed));
        match best {
            Some(s) => Pick::Session(s.clone()),
            None if any => Pick::NoTarget,
            None => Pick::NoSession,
        }
    }

    /// A session of `tenant` serving `target` that is draining but still open (its connector
    /// still takes the streams opened before it leaves): the last resort while the connector
    /// moves, so that a drain loses no request.
    pub(crate) fn pick_draining(
        &self,
        tenant: &TenantId,
        target: &str,
    ) -> Option<Arc<SessionEntry>> {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .into_iter()
            .flatten()
            .filter(|s| s.conn.close_reason().is_none() && s.serves(target))
            .filter(|s| !matches!(s.close_kind(), Some(CloseKind::Kill(_))))
            .min_by_key(|s| s.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// Undoes [`Registry::close_all`] for sessions established from now on (a drain was called
    /// off).
    pub(crate) fn reopen(&self) {
        *self.closing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether `tenant` has a session that takes new streams.
    pub(crate) fn has_available(&self, tenant: &TenantId) -> bool {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .is_some_and(|list| list.iter().any(|s| s.available()))
    }

    /// Whether any tenant has a session that takes new streams.
    pub(crate) fn any_available(&self) -> bool {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().any(|s| s.available())
    }

    /// The sessions of `tenant`.
    pub(crate) fn of_tenant(&self, tenant: &TenantId) -> Vec<Arc<SessionEntry>> {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        map.get(tenant).cloned().unwrap_or_default()
    }

    /// Every session.
    pub(crate) fn all(&self) -> Vec<Arc<SessionEntry>> {
        let map = self.sessions.read().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().cloned().collect()
    }

    /// The stream cap of a tenant with `limit` permits. When the limit changes (`tenant set`), a
    /// new cap replaces the old one; streams holding the old one's permits finish undisturbed.
    pub(crate) fn tenant_cap(&self, tenant: &TenantId, limit: u32) -> Arc<Semaphore> {
        let mut caps = self.tenant_caps.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up first: `entry` would copy the tenant's id on every request.
        if let Some((known, cap)) = caps.get(tenant) {
            if *known == limit {
                return cap.clone();
            }
        }
        let cap = Arc::new(Semaphore::new(limit as usize));
        caps.insert(tenant.clone(), (limit, cap.clone()));
        cap
    }
}

#[cfg(test)]
mod tests {
    use super::Targets;

    #[test]
    fn a_session_serves_what_it_announced_or_anything_when_silent() {
        let some = Targets::new(["echo", "app", "zeta", "app"].map(String::from));
        assert!(some.serves("app") && some.serves("echo") && some.serves("zeta"));
        assert!(!some.serves("ap") && !some.serves("apps") && !some.serves(""));
        assert_eq!(some.iter().count(), 3);
        let silent = Targets::new(Vec::new());
        assert!(silent.serves("anything"));
    }
}
