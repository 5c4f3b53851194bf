//! The management web: the admin UI, the `/api/v1` REST API and the operations endpoints, over
//! `relay-store` (axum + askama).
//!
//! `app(state)` is what both `relay-server` (on its admin listener) and the standalone
//! `management-web` binary serve, and what tests call. Everything it shows comes from the store,
//! so one management web sees every relay node sharing the database; a relay that mounts it also
//! passes a [`NodeView`] for what only the process knows (streams in flight, `/metrics`).
//!
//! Who may do what:
//! - Every request must name an allowed host in `Host` / `:authority` ([`AllowedHosts`]: the
//!   loopback names and the listen address, plus configured names), else 421: a DNS-rebinding
//!   page cannot reach a loopback listener from a victim's browser.
//! - `/healthz` and `/readyz` answer anyone, whatever the host (orchestrators' probes; they
//!   reveal nothing).
//! - `/api/v1/*` and `/metrics` need `Authorization: Bearer rat_…` (an admin API token).
//! - Every page needs a login session (`__Host-relay-session` cookie); every state change also
//!   needs the session's CSRF token and a same-origin request.
//!
//! Non-goals: no data-plane work; nothing here is on a visitor's request path. No action closes
//! a connector session itself: relays do, when they see a change in the store.
//!
//! Modules, from the request inwards:
//!
//! ```text
//! host       the host allow-list (421), first on every request
//! auth       who is asking: login sessions and CSRF/same-origin checks (pages), API tokens
//! api        /api/v1, one module per resource: api/{tenants,credentials,hostnames,connections,
//!            requests,nodes,queue}.rs; api/extract.rs (JSON object bodies, queries);
//!            api/openapi.rs
//! ui         the pages, one module per resource: ui/{login,dashboard,tenants,credentials,
//!            hostnames,nodes,queue,audit,admin_log,tokens}.rs; askama templates in templates/
//! actions    every admin operation once (validate, change the store, record it):
//!            actions/{tenants,credentials,hostnames,tokens,nodes,queue}.rs, and the reads both
//!            front ends share: actions/{sessions,audit}.rs
//! error      the one Error, its one status mapping, and its two answers: a problem document
//!            (api, /metrics, host check) or an HTML page (ui)
//! view       formatting (times, sizes, charts); limiter: login rate limiting
//! ```
//!
//! `api` and `ui` are adapters: they parse a request, call an action and render the outcome.
//! Imports point inwards only (`api`/`ui` → `actions` → `relay_store`, everything → `error`).

mod actions;
mod api;
mod auth;
mod error;
mod host;
mod limiter;
mod ui;
mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use relay_store::{SecretHasher, Store};

use crate::actions::Actor;
use crate::error::Error;

pub use api::{openapi_document, ApiRoute, ROUTES as API_ROUTES};
pub use host::AllowedHosts;
pub use ui::ROUTES as PAGE_ROUTES;

/// What only a relay process knows; `relay-server` implements it when it mounts the app.
pub trait NodeView: Send + Sync + 'static {
    /// Streams in flight on each live session of this node, by session id.
    fn in_flight(&self) -> HashMap<String, usize>;
    /// The Prometheus text exposition of the node's counters.
    fn metrics(&self) -> String;
    /// Whether this node is draining (asked to through `node drain`, the API or the Nodes page):
    /// `/readyz` then answers 503 so that load balancers take it out.
    fn draining(&self) -> bool {
        false
    }
}

/// How old a node's heartbeat may be for it to count as live, unless configured
/// ([`AppState::with_node_timeout`]): the relay's default `cluster.node_timeout`.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// The relays' `[queue]` times to live, as the management web needs them: a tenant's own time to
/// live may not exceed `max`, and a retried message gets its tenant's, or `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTtl {
    /// `queue.ttl`: what a tenant without its own gets.
    pub default: Duration,
    /// `queue.max_ttl`: the longest a tenant may set.
    pub max: Duration,
}

impl Default for QueueTtl {
    /// The relay's defaults: 24 hours, at most 30 days.
    fn default() -> QueueTtl {
        QueueTtl {
            default: Duration::from_secs(24 * 3600),
            max: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    /// Nodes whose heartbeat is older than this are not listed (the relays' `cluster.node_timeout`).
    node_timeout: Duration,
    /// The relays' queue times to live.
    queue_ttl: QueueTtl,
    /// Seals uploaded certificates' private keys (the relays' `keys/certificate-key`); without
    /// it uploads are refused.
    certificate_key: Option<Arc<relay_store::CertificateKey>>,
}

struct Inner {
    store: Store,
    hasher: SecretHasher,
    node: Option<Arc<dyn NodeView>>,
    limiter: limiter::LoginLimiter,
    hosts: AllowedHosts,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .field("node", &self.inner.node.is_some())
            .field("node_timeout", &self.node_timeout)
            .field("queue_ttl", &self.queue_ttl)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `store`; `hasher` (the relay's pepper) makes and checks credential secrets and
    /// API tokens, so it must be the relays' own. `hosts` are the names the listener answers to.
    pub fn new(store: Store, hasher: SecretHasher, hosts: AllowedHosts) -> AppState {
        AppState::build(store, hasher, None, hosts)
    }

    /// The same, with a relay process's live view (in-flight streams, `/metrics`).
    pub fn with_node(
        store: Store,
        hasher: SecretHasher,
        node: Arc<dyn NodeView>,
        hosts: AllowedHosts,
    ) -> AppState {
        AppState::build(store, hasher, Some(node), hosts)
    }

    fn build(
        store: Store,
        hasher: SecretHasher,
        node: Option<Arc<dyn NodeView>>,
        hosts: AllowedHosts,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                hasher,
                node,
                limiter: limiter::LoginLimiter::default(),
                hosts,
            }),
            node_timeout: DEFAULT_NODE_TIMEOUT,
            queue_ttl: QueueTtl::default(),
            certificate_key: None,
        }
    }

    /// The same state, accepting certificate uploads sealed with `key`: the relays'
    /// `keys/certificate-key`, so that they can open them.
    pub fn with_certificate_key(self, key: Arc<relay_store::CertificateKey>) -> AppState {
        AppState {
            certificate_key: Some(key),
            ..self
        }
    }

    /// The key sealing uploaded certificates' private keys, if this process has it.
    pub(crate) fn certificate_key(&self) -> Option<&relay_store::CertificateKey> {
        self.certificate_key.as_deref()
    }

    /// The same state, counting relay nodes as live while their heartbeat is at most `timeout`
    /// old: give it the relays' `cluster.node_timeout` (default [`DEFAULT_NODE_TIMEOUT`]).
    pub fn with_node_timeout(self, timeout: Duration) -> AppState {
        AppState {
            node_timeout: timeout,
            ..self
        }
    }

    /// The same state, checking tenants' queue times to live against the relays' `[queue]`
    /// settings (default [`QueueTtl::default`]): give it the relays' `queue.ttl` and
    /// `queue.max_ttl`.
    pub fn with_queue_ttl(self, ttl: QueueTtl) -> AppState {
        AppState {
            queue_ttl: ttl,
            ..self
        }
    }

    /// Records an admin action; a failure is logged, never shown (the change itself is done).
    pub(crate) async fn record(&self, actor: &Actor, action: &str, object: &str) {
        if let Err(e) = self
            .inner
            .store
            .record_admin_action(actor.as_str(), action, object)
            .await
        {
            tracing::warn!(error = %e, %actor, action, object, "admin action not recorded");
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn hasher(&self) -> &SecretHasher {
        &self.inner.hasher
    }

    pub(crate) fn node(&self) -> Option<&Arc<dyn NodeView>> {
        self.inner.node.as_ref()
    }

    pub(crate) fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The freshness window of the node registry, in ms as the store counts.
    pub(crate) fn node_fresh_ms(&self) -> i64 {
        i64::try_from(self.node_timeout.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn queue_ttl(&self) -> QueueTtl {
        self.queue_ttl
    }

    pub(crate) fn limiter(&self) -> &limiter::LoginLimiter {
        &self.inner.limiter
    }

    pub(crate) fn allowed_hosts(&self) -> &AllowedHosts {
        &self.inner.hosts
    }
}

/// The router: `main`, `relay-server` and tests all call this. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that login rate limiting sees the
/// client's address. The host check runs first (inside the security headers, so its refusals
/// carry them too).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::router())
        .merge(ui::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            host::check,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Live: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store answers and this relay node is not draining.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.node().is_some_and(|n| n.draining()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match state.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "store not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n")
        }
    }
}

/// Prometheus text, for an API token (Prometheus: `authorization: credentials_file`).
async fn metrics(State(state): State<AppState>, _auth: auth::ApiAdmin) -> Response {
    match state.node() {
        Some(node) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            node.metrics(),
        )
            .into_response(),
        None => Error::NotFound(
            "the standalone management web has no data plane; scrape the relays".into(),
        )
        .problem(),
    }
}

/// No route: a problem document under `/api/`, a page elsewhere.
async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") {
        Error::NotFound("no such API route".into()).problem()
    } else {
        Error::NotFound("no such page".into()).page()
    }
}

/// The content security policy: nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Security headers on every answer; no caching of anything but static files.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the
    // same-origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    if !is_static {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    #[derive(Default)]
    struct Node {
        draining: AtomicBool,
    }

    impl NodeView for Node {
        fn in_flight(&self) -> HashMap<String, usize> {
            HashMap::new()
        }
        fn metrics(&self) -> String {
            String::new()
        }
        fn draining(&self) -> bool {
            self.draining.load(Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn readyz_answers_503_while_the_node_drains() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let store = Store::connect(&url).await.unwrap();
        let hasher = SecretHasher::new(b"a test pepper of thirty-two bytes");
        let node = Arc::new(Node::default());
        let state = AppState::with_node(store, hasher, node.clone(), AllowedHosts::loopback(None));
        let ready = || async {
            let req = Request::get("/readyz").body(Body::empty()).unwrap();
            let res = app(state.clone()).oneshot(req).await.unwrap();
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        assert_eq!(ready().await, (StatusCode::OK, "ready\n".into()));
        node.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            ready().await,
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        );
    }
}
