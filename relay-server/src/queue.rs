//! Queue mode: requests accepted while the tenant's connector may be offline, delivered when it is
//! online, responses kept for pickup.
//!
//! ```text
//! visitor ── /queue/{tenant}/{target}/… ──► accept: store (commit) ──► 202 + Location
//!            (or Prefer: respond-async)                 │ NOTIFY relay_queue / local wake
//!                                                       ▼
//!            any node holding a session of the tenant: claim (lease) ──► deliver through the
//!            session like a visitor request (x-relay-message-id, x-relay-attempt) ──► store the
//!            response, or retry with backoff, or fail
//! visitor ── GET /queue/_messages/{id} (status), …/response (the stored response), DELETE (cancel)
//! ```
//!
//! Delivery is at least once: a node that dies mid-delivery loses its lease and another node
//! claims the message again (`x-relay-attempt` tells the backend). Every outcome is fenced by the
//! attempt number in the store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use relay_store::{
    Cancelled, Enqueued, Finish, NewMessage, QueueMessage, QueueQuota, QueueState, StoredResponse,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnel_protocol::{ErrorCode, RequestHead, StreamFrame};
use tunnel_session::framing::{FramedRecv, FramedSend};
use tunnel_session::headers::strip_hop_by_hop;

use crate::audit::{Draft, Outcome};
use crate::error::ProxyError;
use crate::proxy::Visitor;
use crate::registry::Pick;
use crate::Relay;

/// The status resources live here; `_` is not allowed in tenant names, so no route collides.
const STATUS_PREFIX: &str = "/queue/_messages/";
static X_RELAY_MESSAGE_ID: HeaderName = HeaderName::from_static("x-relay-message-id");
static X_RELAY_ATTEMPT: HeaderName = HeaderName::from_static("x-relay-attempt");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// How long accepting may wait for the store before the visitor gets 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expiry runs, and the depth gauges are refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Deliveries in flight on one node, all tenants together: with their bodies in memory (up to
/// `queue.max_body_bytes` each), this bounds what the queue holds at once.
const MAX_DELIVERIES: u32 = 256;
/// How often the depth gauges are refreshed (a count over the whole table).
const COUNT_EVERY: Duration = Duration::from_secs(30);
/// Least time between two notifications to the other nodes.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(20);
/// Least time between the starts of two passes of the delivery loop (deliveries ending in a
/// burst wake it once per pass, not once each). Short: a pass claims only for the tenants named
/// to it, and a claim costs its limit; at 10 ms each of a tenant's delivery slots idled for most
/// of a pass and delivery stayed near 1 200 messages/s.
const MIN_PASS: Duration = Duration::from_millis(5);
/// Least time between two scans of the store for tenants with messages due (or the poll
/// interval, when it is shorter).
const SCAN_EVERY: Duration = Duration::from_millis(100);
/// How often old messages are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The queue's shared state on one node.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Wakes the delivery loop (a message accepted here, a session established, a delivery done).
    wake: Arc<Notify>,
    /// Tenants the loop claims for on its next pass without asking the store which tenants have
    /// messages due: a message accepted here, a session established, a delivery finished.
    ready: Mutex<HashSet<String>>,
    /// Set when the loop should ask the store which tenants have messages due (another node
    /// accepted one, or the poll): a query over every tenant in the store, so at most every
    /// [`SCAN_EVERY`].
    scan: AtomicBool,
    /// Asks for one `NOTIFY relay_queue` to the other nodes (coalesced: see [`announcer`]).
    announce: Arc<Notify>,
    /// Deliveries in flight per tenant id on this node.
    in_progress: Mutex<HashMap<String, u32>>,
    /// Waiting messages and bytes per tenant id, as last counted (plus what this node accepted
    /// since): quotas are checked against it instead of counting on every accept. Across nodes
    /// a quota may be overshot by what the others accept within [`USAGE_TTL`].
    usage: Mutex<HashMap<String, Usage>>,
    /// Tenants' queue settings as last read, per tenant id: an accept reads them from here, not
    /// from the store (a change made elsewhere applies within [`SETTINGS_TTL`]).
    settings: Mutex<HashMap<String, (tokio::time::Instant, relay_store::QueueSettings)>>,
}

impl Queue {
    /// Wakes the delivery loop to claim `tenant_id`'s due messages.
    pub(crate) fn wake_for(&self, tenant_id: &str) {
        self.mark_ready(tenant_id);
        self.wake.notify_one();
    }

    /// Names `tenant_id` to the loop's next pass, without waking it.
    fn mark_ready(&self, tenant_id: &str) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if !ready.contains(tenant_id) {
            ready.insert(tenant_id.to_string());
        }
    }

    /// Wakes the delivery loop to ask the store which tenants have messages due.
    fn wake_to_scan(&self) {
        self.scan.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// How long a tenant's queue settings are reused without reading them again.
const SETTINGS_TTL: Duration = Duration::from_secs(1);
/// Most tenants whose settings are kept (beyond it, expired entries are dropped).
const MAX_CACHED_SETTINGS: usize = 100_000;

/// A tenant's queue settings: cached for [`SETTINGS_TTL`], read from the store otherwise.
async fn tenant_settings(
    relay: &Relay,
    tenant_id: &str,
) -> Result<relay_store::QueueSettings, Refusal> {
    let cached = relay
        .queue
        .settings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(tenant_id)
        .filter(|(at, _)| at.elapsed() < SETTINGS_TTL)
        .map(|(_, s)| *s);
    if let Some(s) = cached {
        return Ok(s);
    }
    let s = tokio::time::timeout(STORE_TIMEOUT, relay.store.queue_settings(tenant_id))
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    let mut cache = relay
        .queue
        .settings
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if cache.len() >= MAX_CACHED_SETTINGS {
        cache.retain(|_, (at, _)| at.elapsed() < SETTINGS_TTL);
    }
    cache.insert(tenant_id.to_string(), (tokio::time::Instant::now(), s));
    Ok(s)
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    counted: tokio::time::Instant,
    messages: u64,
    bytes: u64,
}

/// How long a tenant's counted queue usage is trusted.
const USAGE_TTL: Duration = Duration::from_secs(1);

/// What a request asks of the queue.
#[derive(Debug)]
pub(crate) enum Kind {
    /// `/queue/{tenant}/{target}/…`: accept.
    Accept,
    /// `Prefer: respond-async` on an ordinary route: accept.
    RespondAsync,
    /// `/queue/_messages/{id}[/response]`.
    Status { id: String, response: bool },
}

/// Looked up in every request (a name given as text is parsed and hashed at each lookup).
static PREFER: http::HeaderName = http::HeaderName::from_static("prefer");

/// Whether `req` is for the queue. On a tenant's own hostname the path belongs to the backend:
/// only `Prefer: respond-async` and the status resources (a reserved prefix on every host, so
/// that the `Location` of a message accepted there works) are the queue's.
pub(crate) fn kind(relay: &Relay, req: &Request<Incoming>) -> Option<Kind> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(STATUS_PREFIX) {
        let (id, response) = match rest.strip_suffix("/response") {
            Some(id) => (id, true),
            None => (rest, false),
        };
        return Some(Kind::Status {
            id: id.to_string(),
            response,
        });
    }
    if path.starts_with("/queue/")
        && !crate::route::tenant_host(relay, req.headers(), req.uri(), req.version())
    {
        return Some(Kind::Accept);
    }
    let async_preferred = req
        .headers()
        .get_all(&PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    async_preferred.then_some(Kind::RespondAsync)
}

/// Serves a queue request; the response and, for the audit log, the tenant and target.
pub(crate) async fn handle(
    relay: &Arc<Relay>,
    req: Request<Incoming>,
    conn: &Visitor,
    draft: &mut Draft,
    kind: Kind,
) -> Response<Full<Bytes>> {
    let result = match kind {
        Kind::Status { id, response } => status(relay, req, conn, draft, &id, response).await,
        Kind::Accept | Kind::RespondAsync => accept(relay, req, conn, draft, &kind).await,
    };
    match result {
        Ok(r) => r,
        Err(Refusal::Proxy(e)) => crate::error::error_response(&e, &draft.request_id),
        Err(Refusal::Status(status, detail, retry_after)) => {
            problem(status, detail, &draft.request_id, retry_after)
        }
    }
}

/// Why a queue request is answered with an error.
enum Refusal {
    /// As for relayed requests.
    Proxy(ProxyError),
    /// Queue-specific: status, detail, `Retry-After` seconds.
    Status(StatusCode, &'static str, Option<u32>),
}

impl From<ProxyError> for Refusal {
    fn from(e: ProxyError) -> Refusal {
        Refusal::Proxy(e)
    }
}

fn problem(
    status: StatusCode,
    detail: &str,
    request_id: &str,
    retry_after: Option<u32>,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Stores the request and answers 202 once it is committed.
async fn accept(
    relay: &Arc<Relay>,
    req: Request<Incoming>,
    conn: &Visitor,
    draft: &mut Draft,
    kind: &Kind,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let (mut parts, body) = req.into_parts();
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed.into());
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::ConflictingFraming.into());
    }
    let (tenant, target, path) = match kind {
        Kind::Accept => {
            let route =
                crate::route::parse_under("/queue/", parts.uri.path()).map_err(|e| match e {
                    crate::route::RouteError::NotRelay => ProxyError::NotFound,
                    crate::route::RouteError::Malformed => ProxyError::MalformedRoute,
                })?;
            let tenant = relay
                .catalog
                .enabled_tenant(&route.tenant)
                .ok_or(ProxyError::UnknownTenant)?;
            (tenant, route.target, route.path.to_string())
        }
        _ => {
            let r = crate::route::resolve(relay, &parts, conn.sni.as_deref())?;
            (r.tenant, r.target, r.path.to_string())
        }
    };
    draft.tenant = tenant.name.clone();
    draft.target = target.clone();
    let scope = crate::policy::Scope {
        tenant_id: &tenant.id.0,
        target: Some(&target),
        method: &parts.method,
        request: Some((&parts.uri, parts.version)),
    };
    crate::policy::check(relay, scope, &mut parts.headers, conn, draft).await?;
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    // The checks of a relayed request that do not need a connector.
    let limits = &relay.config.limits;
    let uri_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong(limits.max_uri_bytes).into());
    }
    if parts.headers.len() > limits.max_headers {
        return Err(ProxyError::TooManyHeaders.into());
    }
    let limit = tenant
        .limits
        .max_body_bytes
        .map_or(relay.config.queue.max_body_bytes, |t| {
            t.min(relay.config.queue.max_body_bytes)
        });
    if body.size_hint().exact().is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge(limit).into());
    }
    let key = match parts.headers.get(&IDEMPOTENCY_KEY) {
        Some(v) => {
            let k = v.to_str().map_err(|_| {
                Refusal::Status(StatusCode::BAD_REQUEST, "malformed Idempotency-Key", None)
            })?;
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                return Err(Refusal::Status(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key must be 1 to 255 characters",
                    None,
                ));
            }
            Some(k.to_string())
        }
        None => None,
    };
    let bytes = read_body(body, limit, relay.config.limits.body_idle_timeout, draft).await?;
    // What the backend will receive: the relayed request's headers (forwarding headers set by
    // the relay), without the async preference that was meant for the relay.
    parts.headers.remove(&PREFER);
    parts.headers.remove(header::UPGRADE);
    let headers = crate::proxy::visitor_headers(
        relay,
        std::mem::take(&mut parts.headers),
        &parts.uri,
        conn,
        draft,
    );
    // Where the visitor reached us (behind a trusted load balancer: what it reports).
    let base = public_base(&headers, conn);
    if let Some(key) = &key {
        // A repeat: the same message, whatever the quota says now.
        if let Ok(Some(m)) = relay.store.message_with_key(&tenant.id.0, key).await {
            return Ok(accepted(&m, &base));
        }
    }
    let settings = tenant_settings(relay, &tenant.id.0).await?;
    let q = &relay.config.queue;
    let ttl = settings
        .ttl_ms
        .map(|ms| Duration::from_millis(ms.max(1) as u64))
        .unwrap_or(q.ttl)
        .min(q.max_ttl);
    let quota = QueueQuota {
        max_messages: Some(
            settings
                .max_messages
                .map_or(q.max_messages, |n| n.max(0) as u64),
        ),
        max_bytes: Some(settings.max_bytes.map_or(q.max_bytes, |n| n.max(0) as u64)),
    };
    let message = NewMessage {
        id: message_id(),
        tenant_id: tenant.id.0.clone(),
        tenant: tenant.name.clone(),
        target: target.clone(),
        method: parts.method.as_str().to_string(),
        path: path_and_query,
        headers: encode_headers(&headers),
        body: bytes.to_vec(),
        idempotency_key: key,
        ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
    };
    within_quota(relay, &tenant.id.0, quota, message.body.len() as u64).await?;
    let stored = tokio::time::timeout(
        STORE_TIMEOUT,
        relay.store.enqueue(&message, QueueQuota::default()),
    )
    .await
    .map_err(|_| unavailable())?
    .map_err(|e| {
        warn!(error = %e, "queue message not stored");
        unavailable()
    })?;
    let (m, fresh) = match stored {
        Enqueued::New(m) => (m, true),
        Enqueued::Existing(m) => (m, false),
        Enqueued::TooManyMessages => {
            return Err(Refusal::Status(
                StatusCode::TOO_MANY_REQUESTS,
                "the tenant's queue holds as many messages as it may; retry later",
                Some(60),
            ))
        }
        Enqueued::TooManyBytes => {
            return Err(Refusal::Status(
                StatusCode::INSUFFICIENT_STORAGE,
                "the tenant's queue holds as many bytes as it may",
                None,
            ))
        }
    };
    if fresh {
        let mut usage = relay.queue.usage.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = usage.get_mut(&tenant.id.0) {
            u.messages += 1;
            u.bytes += m.body_bytes.max(0) as u64;
        }
        drop(usage);
        relay.metrics.queue_accepted.fetch_add(1, Ordering::Relaxed);
        relay.queue.wake_for(&tenant.id.0);
        relay.queue.announce.notify_one();
        debug!(message_id = %m.id, tenant = %m.tenant, "queue message accepted");
    }
    Ok(accepted(&m, &base))
}

/// `202 Accepted` for a stored message: its status document, `Location`, `x-relay-message-id`.
fn accepted(m: &QueueMessage, base: &str) -> Response<Full<Bytes>> {
    let location = format!("{base}{STATUS_PREFIX}{}", m.id);
    let mut resp = json(StatusCode::ACCEPTED, status_document(m, &location));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&m.id) {
        resp.headers_mut().insert(X_RELAY_MESSAGE_ID.clone(), v);
    }
    resp
}

/// `scheme://host` as the visitor addressed the relay, from the forwarding headers the relay
/// computed (a trusted load balancer's, or its own).
fn public_base(forwarded: &HeaderMap, conn: &Visitor) -> String {
    let proto = forwarded
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(conn.scheme);
    let host = forwarded
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("{proto}://{host}")
}

/// Refuses a message that would take the tenant over its quota of waiting messages or bytes.
/// Counts a tenant's waiting messages and bytes in the store, and caches the counts.
async fn recount(relay: &Relay, tenant_id: &str) -> Result<Usage, Refusal> {
    let (messages, bytes) = tokio::time::timeout(STORE_TIMEOUT, relay.store.queue_usage(tenant_id))
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())?;
    let u = Usage {
        counted: tokio::time::Instant::now(),
        messages,
        bytes,
    };
    let mut usage = relay.queue.usage.lock().unwrap_or_else(|p| p.into_inner());
    if usage.len() > 100_000 {
        usage.retain(|_, u| u.counted.elapsed() < USAGE_TTL);
    }
    usage.insert(tenant_id.to_string(), u);
    Ok(u)
}

async fn within_quota(
    relay: &Relay,
    tenant_id: &str,
    quota: QueueQuota,
    len: u64,
) -> Result<(), Refusal> {
    // One request recounts an expired entry; the others go on with its last counts meanwhile (a
    // herd of recounts, each a scan of the tenant's waiting messages, slowed every accept as
    // the queue grew).
    let (cached, recount_now) = {
        let mut usage = relay.queue.usage.lock().unwrap_or_else(|p| p.into_inner());
        match usage.get_mut(tenant_id) {
            Some(u) if u.counted.elapsed() < USAGE_TTL => (Some(*u), false),
            Some(u) => {
                let stale = *u;
                u.counted = tokio::time::Instant::now();
                (Some(stale), true)
            }
            None => (None, true),
        }
    };
    let u = match cached {
        Some(stale) => {
            if recount_now {
                let _ = recount(relay, tenant_id).await;
            }
            stale
        }
        None => recount(relay, tenant_id).await?,
    };
    if quota.max_messages.is_some_and(|max| u.messages >= max) {
        return Err(Refusal::Status(
            StatusCode::TOO_MANY_REQUESTS,
            "the tenant's queue holds as many messages as it may; retry later",
            Some(60),
        ));
    }
    if quota.max_bytes.is_some_and(|max| u.bytes + len > max) {
        return Err(Refusal::Status(
            StatusCode::INSUFFICIENT_STORAGE,
            "the tenant's queue holds as many bytes as it may",
            None,
        ));
    }
    Ok(())
}

fn unavailable() -> Refusal {
    Refusal::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is not available right now; retry",
        Some(5),
    )
}

/// Reads the visitor's body whole (bounded by `limit` and the body idle timeout).
async fn read_body(
    mut body: Incoming,
    limit: u64,
    idle: Duration,
    draft: &Draft,
) -> Result<Bytes, Refusal> {
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout(idle).into()),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(ProxyError::BadBody.into()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() as u64 + data.len() as u64 > limit {
                        return Err(ProxyError::BodyTooLarge(limit).into());
                    }
                    draft
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// A message id: 128 random bits, hex.
fn message_id() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        // The system RNG does not fail on supported platforms; never fall back to a weak id.
        b = *uuid::Uuid::new_v4().as_bytes();
        let more = *uuid::Uuid::new_v4().as_bytes();
        for (x, y) in b.iter_mut().zip(more) {
            *x ^= y;
        }
    }
    tunnel_protocol::hex(&b)
}

/// GET (status, or the stored response) and DELETE (cancel) on a status resource.
async fn status(
    relay: &Arc<Relay>,
    req: Request<Incoming>,
    conn: &Visitor,
    draft: &mut Draft,
    id: &str,
    response: bool,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let not_found = || Refusal::Status(StatusCode::NOT_FOUND, "no such message", None);
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let store = &relay.store;
    let lookup = |r: Result<Option<QueueMessage>, relay_store::Error>| match r {
        Ok(Some(m)) if m.purged => Err(Refusal::Status(
            StatusCode::GONE,
            "the message's retention period is over",
            None,
        )),
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(not_found()),
        Err(_) => Err(unavailable()),
    };
    let (mut parts, _) = req.into_parts();
    let visitor = std::mem::take(&mut parts.headers);
    let base = public_base(
        &crate::proxy::visitor_headers(relay, visitor, &parts.uri, conn, draft),
        conn,
    );
    let location = format!("{base}{STATUS_PREFIX}{id}");
    match (parts.method.clone(), response) {
        (http::Method::GET | http::Method::HEAD, false) => {
            let m = lookup(store.message(id).await)?;
            Ok(json(StatusCode::OK, status_document(&m, &location)))
        }
        (http::Method::GET | http::Method::HEAD, true) => {
            let m = lookup(store.message(id).await)?;
            let stored = store
                .message_response(id)
                .await
                .map_err(|_| unavailable())?
                .ok_or(Refusal::Status(
                    StatusCode::NOT_FOUND,
                    "no response (yet): see the message's state",
                    None,
                ))?;
            let mut resp = Response::new(Full::new(Bytes::from(stored.body)));
            *resp.status_mut() =
                StatusCode::from_u16(stored.status).unwrap_or(StatusCode::BAD_GATEWAY);
            *resp.headers_mut() = decode_headers(&stored.headers);
            if let Ok(v) = HeaderValue::from_str(&m.id) {
                resp.headers_mut().insert(X_RELAY_MESSAGE_ID.clone(), v);
            }
            if stored.truncated {
                resp.headers_mut().insert(
                    HeaderName::from_static("x-relay-response-truncated"),
                    HeaderValue::from_static("true"),
                );
            }
            Ok(resp)
        }
        (http::Method::DELETE, false) => match store.cancel_message(id).await {
            Ok(Cancelled::Done) => {
                let m = lookup(store.message(id).await)?;
                Ok(json(StatusCode::OK, status_document(&m, &location)))
            }
            Ok(Cancelled::Too(_)) => Err(Refusal::Status(
                StatusCode::CONFLICT,
                "the message is being delivered or is final; it cannot be cancelled",
                None,
            )),
            Ok(Cancelled::NotFound) => Err(not_found()),
            Err(_) => Err(unavailable()),
        },
        _ => Err(Refusal::Status(
            StatusCode::METHOD_NOT_ALLOWED,
            "a message's status takes GET, HEAD and DELETE; its response GET and HEAD",
            None,
        )),
    }
}

/// The status resource's JSON.
fn status_document(m: &QueueMessage, location: &str) -> serde_json::Value {
    let ms = |t: i64| {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(t).ok()?);
        Some(humantime::format_rfc3339_millis(at).to_string())
    };
    let response = m.response_status.map(|status| {
        serde_json::json!({
            "status": status,
            "truncated": m.response_truncated,
            "url": format!("{location}/response"),
        })
    });
    serde_json::json!({
        "id": m.id,
        "state": m.state.as_str(),
        "tenant": m.tenant,
        "target": m.target,
        "method": m.method,
        "path": m.path,
        "body_bytes": m.body_bytes,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "created_at": ms(m.created_at),
        "expires_at": ms(m.expires_at),
        "next_attempt_at": (m.state == QueueState::Queued).then(|| ms(m.next_attempt_at)).flatten(),
        "finished_at": m.finished_at.and_then(ms),
        "response": response,
    })
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Headers in the store's form ([`relay_store::encode_headers`]).
fn encode_headers(headers: &HeaderMap) -> String {
    relay_store::encode_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// Stored headers back as a map; entries that are not valid headers are skipped.
fn decode_headers(s: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for h in relay_store::decode_headers(s) {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok();
        let value = h.bytes().and_then(|b| HeaderValue::from_bytes(&b).ok());
        if let (Some(name), Some(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

/// The delivery loop of this node: whenever woken (a message accepted here, a `NOTIFY` from
/// another node, a session established, a delivery done) or every `queue.poll_interval`, claims
/// the due messages of tenants it holds sessions of and delivers them. Also expires, purges and
/// refreshes the depth gauges.
pub(crate) async fn run(relay: Arc<Relay>, stop: CancellationToken, deliveries: TaskTracker) {
    let wake = relay.queue.wake.clone();
    let listener = {
        let (store, relay) = (relay.store.clone(), relay.clone());
        tokio::spawn(async move {
            store
                .listen_for_queue(move || relay.queue.wake_to_scan())
                .await
        })
    };
    let announcing = tokio::spawn(announcer(relay.clone()));
    let q = relay.config.queue.clone();
    let started = tokio::time::Instant::now();
    let (mut housekeeping, mut counted) = (started, started);
    // The first purge runs soon after start: restarts must not postpone it forever.
    let mut purged = started.checked_sub(PURGE_EVERY).unwrap_or(started);
    // The first pass scans the store (messages may have waited while no relay ran).
    let scan_every = SCAN_EVERY.min(q.poll_interval);
    let mut scanned = started.checked_sub(scan_every).unwrap_or(started);
    relay.queue.scan.store(true, Ordering::Release);
    let mut passed = started;
    loop {
        // A scan asked for too soon after the last one is made once it is allowed; without one
        // asked for, the poll period asks for one (retries come due, leases run out, a
        // notification may have been missed).
        let next_scan = match relay.queue.scan.load(Ordering::Acquire) {
            true => scanned + scan_every,
            false => scanned + q.poll_interval,
        };
        // Why select: woken early, or when a scan is due, until the relay stops.
        tokio::select! {
            () = stop.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep_until(next_scan) => {
                relay.queue.scan.store(true, Ordering::Release);
            }
        }
        tokio::time::sleep_until(passed + MIN_PASS).await;
        passed = tokio::time::Instant::now();
        if housekeeping.elapsed() >= HOUSEKEEPING {
            housekeeping = tokio::time::Instant::now();
            match relay.store.expire_messages().await {
                Ok(n) if n > 0 => {
                    relay.metrics.queue_expired.fetch_add(n, Ordering::Relaxed);
                    info!(messages = n, "queue messages expired");
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "queue expiry failed"),
            }
        }
        if counted.elapsed() >= COUNT_EVERY {
            counted = tokio::time::Instant::now();
            if let Ok(counts) = relay.store.queue_counts(None).await {
                relay.metrics.set_queue_depth(&counts);
            }
        }
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            let ms = i64::try_from(q.retention.as_millis()).unwrap_or(i64::MAX);
            if let Err(e) = relay.store.purge_messages(ms).await {
                debug!(error = %e, "queue purge failed");
            }
        }
        // Without a usable session here there is nothing this node could deliver: no query is
        // made. (Accepts for offline connectors woke this loop up to 100 times a second, and
        // PostgreSQL once spent more CPU on the queries than on the accepts themselves.)
        let mut due =
            std::mem::take(&mut *relay.queue.ready.lock().unwrap_or_else(|p| p.into_inner()));
        if relay.draining.load(Ordering::Acquire) || !relay.registry.any_available() {
            // Nothing to deliver from here: no scan until the next poll (a session established
            // here names its tenant at once). Left set, the wanted scan would be due at every
            // pass, and the loop would run every MIN_PASS.
            relay.queue.scan.store(false, Ordering::Release);
            scanned = tokio::time::Instant::now();
            continue;
        }
        // Which tenants have messages due is a query over every tenant in the store (a few index
        // seeks each): made when another node accepted messages or on the poll period, at most
        // every `scan_every`. A delivery finished, a message accepted here or a session
        // established names its tenant, and the loop claims for it without a scan: claiming
        // stops at its limit, so draining a deep queue costs per message, not per waiting message.
        if scanned.elapsed() >= scan_every && relay.queue.scan.swap(false, Ordering::AcqRel) {
            scanned = tokio::time::Instant::now();
            match relay.store.due_tenants().await {
                Ok(d) => due.extend(d),
                Err(e) => {
                    debug!(error = %e, "due queue messages not read");
                    relay.queue.scan.store(true, Ordering::Release);
                }
            }
        }
        for tenant_id in due {
            let id = relay_store::TenantId(tenant_id.clone());
            // Only a node holding a usable session of the tenant delivers its messages; a
            // draining node leaves them to the node its connectors move to.
            if relay.draining.load(Ordering::Acquire) || !relay.registry.has_available(&id) {
                continue;
            }
            let free = {
                let map = relay
                    .queue
                    .in_progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let busy = map.get(&tenant_id).copied().unwrap_or(0);
                let total: u32 = map.values().sum();
                q.parallel
                    .saturating_sub(busy)
                    .min(MAX_DELIVERIES.saturating_sub(total))
            };
            if free == 0 {
                // Every slot is taken (the tenant's, or the node's): the next delivery to end
                // wakes the loop, and the tenant is claimed for then. No wake-up of its own:
                // the deliveries in flight will end.
                relay.queue.mark_ready(&tenant_id);
                continue;
            }
            let lease = i64::try_from(q.lease.as_millis()).unwrap_or(i64::MAX);
            let claimed = match relay
                .store
                .claim(&tenant_id, &relay.node_id, lease, free)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "queue claim failed");
                    // Tried again at the next scan (not at the next pass: the store may be down).
                    relay.queue.scan.store(true, Ordering::Release);
                    continue;
                }
            };
            for m in claimed {
                let guard = Busy::new(&relay, &tenant_id);
                deliveries.spawn(deliver(relay.clone(), m, guard));
            }
        }
    }
    listener.abort();
    announcing.abort();
}

/// Sends `NOTIFY relay_queue` when asked, at most once per [`ANNOUNCE_EVERY`]: a burst of
/// accepts wakes the other nodes once.
async fn announcer(relay: Arc<Relay>) {
    let announce = relay.queue.announce.clone();
    loop {
        announce.notified().await;
        if let Err(e) = relay.store.notify_queue().await {
            debug!(error = %e, "queue notification not sent; the poll covers it");
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// Counts a delivery in flight for its tenant on this node; wakes the loop when done (the next
/// message of an ordered tenant is due now).
struct Busy {
    relay: Arc<Relay>,
    tenant_id: String,
}

impl Busy {
    fn new(relay: &Arc<Relay>, tenant_id: &str) -> Busy {
        *relay
            .queue
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant_id.to_string())
            .or_default() += 1;
        Busy {
            relay: relay.clone(),
            tenant_id: tenant_id.to_string(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut map = self
            .relay
            .queue
            .in_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.tenant_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.tenant_id);
            }
        }
        self.relay.queue.wake_for(&self.tenant_id);
    }
}

/// Why an attempt did not produce a final response.
struct Failure {
    error: String,
    /// Retry (connector absent, connection errors, timeouts); `false` for final failures.
    retry: bool,
    /// The backend's `Retry-After`, when it sent one.
    retry_after: Option<Duration>,
    /// The backend's answer, kept with a final failure.
    response: Option<StoredResponse>,
    status: u16,
}

impl Failure {
    fn retry(error: impl Into<String>, status: u16) -> Failure {
        Failure {
            error: error.into(),
            retry: true,
            retry_after: None,
            response: None,
            status,
        }
    }
}

/// One delivery attempt, its outcome recorded in the store, the audit log and the metrics.
async fn deliver(relay: Arc<Relay>, m: QueueMessage, _busy: Busy) {
    let request_id = crate::audit::request_id();
    let path_only = m.path.split('?').next().unwrap_or("/").to_string();
    let mut draft = Draft::new(
        request_id.clone(),
        &m.method,
        &path_only,
        "queue".to_string(),
    );
    draft.tenant = m.tenant.clone();
    draft.target = m.target.clone();
    draft
        .bytes_in
        .store(m.body_bytes.max(0) as u64, Ordering::Relaxed);
    let attempt = m.attempts;
    // The lease is renewed while the attempt runs: a slow backend is not mistaken for a dead node.
    let lease = relay.config.queue.lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let renew = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            match relay.store.extend_lease(&m.id, attempt, lease_ms).await {
                Ok(true) => {}
                // Another attempt owns the message now; this one's outcome will be dropped.
                Ok(false) => std::future::pending::<()>().await,
                Err(e) => debug!(error = %e, "queue lease not renewed"),
            }
        }
    };
    // Why select: the attempt ends the renewal; the renewal never ends by itself.
    let outcome = tokio::select! {
        o = attempt_delivery(&relay, &m, &request_id, &mut draft) => o,
        () = renew => Err(Failure::retry("lease renewal stopped", 503)),
    };
    let q = &relay.config.queue;
    let (finish, status, audit_outcome, bytes_out) = match outcome {
        Ok(resp) => {
            let (status, n) = (resp.status, resp.body.len() as u64);
            relay
                .metrics
                .queue_delivered
                .fetch_add(1, Ordering::Relaxed);
            (Finish::Delivered(resp), status, Outcome::Ok, n)
        }
        Err(f) if f.retry => {
            relay.metrics.queue_retries.fetch_add(1, Ordering::Relaxed);
            let delay =
                backoff(q.retry_base, q.retry_cap, attempt).max(f.retry_after.unwrap_or_default());
            let at = relay_store::now_ms()
                .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
            debug!(message_id = %m.id, attempt, retry_in = ?delay, error = %f.error, "queue delivery will be retried");
            (
                Finish::Retry { error: f.error, at },
                f.status,
                Outcome::BackendError,
                0,
            )
        }
        Err(f) => {
            relay.metrics.queue_failed.fetch_add(1, Ordering::Relaxed);
            let n = f.response.as_ref().map_or(0, |r| r.body.len() as u64);
            (
                Finish::Failed {
                    error: f.error,
                    response: f.response,
                },
                f.status,
                Outcome::Refused,
                n,
            )
        }
    };
    match relay.store.finish_attempt(&m.id, attempt, &finish).await {
        Ok(true) => {}
        Ok(false) => {
            info!(message_id = %m.id, attempt, "a newer attempt owns this message; outcome dropped")
        }
        // The lease runs out and another attempt follows: at least once.
        Err(e) => warn!(message_id = %m.id, attempt, error = %e, "queue outcome not stored"),
    }
    relay.audit.record(draft, status, audit_outcome, bytes_out);
}

/// Exponential backoff with jitter: between half and all of `base · 2^(attempt-1)`, capped.
fn backoff(base: Duration, cap: Duration, attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let full = base.saturating_mul(2u32.saturating_pow(exp)).min(cap);
    let half = full / 2;
    let jitter = rand::random::<f64>();
    half + half.mul_f64(jitter)
}

/// Sends the message through a session of its tenant and reads the answer.
async fn attempt_delivery(
    relay: &Arc<Relay>,
    m: &QueueMessage,
    request_id: &str,
    draft: &mut Draft,
) -> Result<StoredResponse, Failure> {
    let tenant = relay
        .catalog
        .enabled_tenant_by_id(&relay_store::TenantId(m.tenant_id.clone()))
        .ok_or_else(|| Failure::retry("the tenant is disabled", 503))?;
    let session = match relay.registry.pick(&tenant.id, &m.target) {
        Pick::Session(s) => s,
        Pick::NoTarget => return Err(Failure::retry("no connector serves the target", 404)),
        Pick::NoSession => return Err(Failure::retry("no connector online", 503)),
    };
    draft.session_id = session.id.clone();
    let permit = crate::proxy::cap_permit(relay, &tenant)
        .map_err(|_| Failure::retry("the tenant's stream limit is reached", 429))?;
    let _guard = crate::proxy::InFlight::local(session.clone(), relay.clone(), Some(permit));
    let mut headers = decode_headers(&m.headers);
    let id = |v: &str| HeaderValue::from_str(v).ok();
    if let Some(v) = id(&m.id) {
        headers.insert(X_RELAY_MESSAGE_ID.clone(), v);
    }
    headers.insert(X_RELAY_ATTEMPT.clone(), HeaderValue::from(m.attempts));
    if let Some(v) = id(request_id) {
        headers.insert(HeaderName::from_static("x-relay-request-id"), v);
    }
    let method = http::Method::from_bytes(m.method.as_bytes()).map_err(|_| Failure {
        retry: false,
        ..Failure::retry("stored method is invalid", 500)
    })?;
    let body = m.body.clone().unwrap_or_default();
    let head = StreamFrame::RequestHead(RequestHead {
        request_id: request_id.to_string(),
        target: m.target.clone(),
        method,
        path_and_query: m.path.clone(),
        headers,
        content_length: Some(body.len() as u64),
    });
    let (send, recv) =
        match tokio::time::timeout(crate::proxy::OPEN_STREAM_TIMEOUT, session.conn.open_bi()).await
        {
            Ok(Ok(s)) => s,
            _ => return Err(Failure::retry("the session did not open a stream", 503)),
        };
    let mut send = FramedSend::new(send, ErrorCode::VISITOR_ABORTED);
    let mut recv = FramedRecv::new(recv, ErrorCode::VISITOR_ABORTED);
    let sent = async {
        send.send(&head).await?;
        send.send_data(Bytes::from(body)).await?;
        send.finish();
        std::io::Result::Ok(())
    };
    if sent.await.is_err() {
        return Err(Failure::retry(
            "the stream failed while sending the request",
            502,
        ));
    }
    let timeout = tenant
        .limits
        .request_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(relay.config.limits.request_timeout);
    let head = match tokio::time::timeout(timeout, recv.next()).await {
        Err(_) => return Err(Failure::retry("the backend did not answer in time", 504)),
        Ok(Ok(Some(StreamFrame::ResponseHead(h)))) => h,
        Ok(Ok(Some(StreamFrame::Error(e)))) => {
            return Err(Failure::retry(format!("{}: {}", e.code, e.message), 502))
        }
        Ok(Ok(_)) => return Err(Failure::retry("no response head", 502)),
        Ok(Err(e)) => return Err(Failure::retry(format!("stream failed: {e}"), 502)),
    };
    // The body, up to the limit; the rest is not read (the stream is stopped).
    let limit = relay.config.queue.max_response_bytes as usize;
    let idle = relay.config.limits.stream_idle_timeout;
    let (mut body, mut truncated) = (BytesMut::new(), false);
    loop {
        match tokio::time::timeout(idle, recv.next()).await {
            Err(_) => return Err(Failure::retry("the response body stalled", 504)),
            Ok(Ok(Some(StreamFrame::Data(d)))) => {
                let room = limit.saturating_sub(body.len());
                if d.len() > room {
                    body.extend_from_slice(&d[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&d);
            }
            Ok(Ok(Some(StreamFrame::Trailers(_)))) => {}
            Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) => return Err(Failure::retry("unexpected frame in the response", 502)),
            Ok(Err(e)) => return Err(Failure::retry(format!("response body failed: {e}"), 502)),
        }
    }
    let status = head.status.as_u16();
    let retry_after = head
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut headers = head.headers;
    strip_hop_by_hop(&mut headers);
    // Replayed with the stored body, which may be cut: its own length is what counts.
    headers.remove(header::CONTENT_LENGTH);
    let stored = StoredResponse {
        status,
        headers: encode_headers(&headers),
        body: body.to_vec(),
        truncated,
    };
    match status {
        408 | 429 | 500..=599 => Err(Failure {
            error: format!("the backend answered {status}"),
            retry: true,
            retry_after,
            response: None,
            status,
        }),
        400..=499 => Err(Failure {
            error: format!("the backend answered {status}"),
            retry: false,
            retry_after: None,
            response: Some(stored),
            status,
        }),
        _ => Ok(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_store() {
        let mut h = HeaderMap::new();
        h.append("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-two", HeaderValue::from_static("a"));
        h.append("x-two", HeaderValue::from_static("b"));
        h.append("x-bin", HeaderValue::from_bytes(&[0xe9, b'x']).unwrap());
        assert_eq!(decode_headers(&encode_headers(&h)), h);
        assert!(decode_headers("not json").is_empty());
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..=10 {
            let d = backoff(base, cap, attempt);
            let full = (base * 2u32.pow(attempt as u32 - 1)).min(cap);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn message_ids_are_128_random_bits() {
        let (a, b) = (message_id(), message_id());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
