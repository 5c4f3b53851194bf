//! One visitor request: route it, pick a session, open a stream, stream the body both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tracing::debug;
use tunnel_protocol::node::NodeMessage;
use tunnel_protocol::{ErrorCode, RequestHeadRef, StreamFrame};
use tunnel_session::framing::{splice, FramedRecv, FramedSend, RecvError, TunnelBody};
use tunnel_session::headers::{
    allowed_upgrade, restore_upgrade, strip_hop_by_hop, upgrade_answers, upgrade_of,
};

use crate::audit::{Draft, Outcome};
use crate::cluster::{Located, Peer};
use crate::error::{error_response, ProxyError};
use crate::metrics::TenantCounters;
use crate::registry::{Pick, SessionEntry};
use crate::route;
use crate::Relay;

/// The response body: a short local answer, or the backend's body streamed from the tunnel.
pub(crate) type ProxyBody = Either<Full<Bytes>, Metered<TunnelBody<InFlight>>>;

/// A response body that counts the bytes it passes on, and writes the request's audit record
/// when it is dropped: `ok` after a clean end, `backend-error`/`timeout` after a tunnel failure,
/// `visitor-aborted` when hyper dropped it before the end (the visitor went away).
#[derive(Debug)]
pub(crate) struct Metered<B> {
    inner: B,
    counters: Arc<TenantCounters>,
    sent: u64,
    ended: Option<Outcome>,
    audit: Option<(Arc<Relay>, Draft, u16)>,
}

impl<B> Metered<B> {
    fn new(inner: B, counters: Arc<TenantCounters>) -> Metered<B> {
        Metered {
            inner,
            counters,
            sent: 0,
            ended: None,
            audit: None,
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some((relay, draft, status)) = self.audit.take() {
            let outcome = self.ended.unwrap_or(Outcome::VisitorAborted);
            relay.audit.record(draft, status, outcome, self.sent);
        }
    }
}

impl<B: Body<Data = Bytes, Error = RecvError> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, RecvError>>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.sent += n;
                    self.counters.response_bytes.fetch_add(n, Ordering::Relaxed);
                }
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                self.ended = Some(match e {
                    RecvError::Idle(_) => Outcome::Timeout,
                    _ => Outcome::BackendError,
                });
            }
            std::task::Poll::Ready(None) => self.ended = Some(Outcome::Ok),
            std::task::Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long to wait for the connector to accept a new stream (its stream limit).
pub(crate) const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

static X_RELAY_REQUEST_ID: HeaderName = HeaderName::from_static("x-relay-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Looked up in every response head (a name given as text is parsed and hashed at each lookup).
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What carries a request to the connector: a session of this node, or a link to the node that
/// holds one (which admits it there under the tenant's stream cap).
#[derive(Debug, Clone)]
pub(crate) enum Carrier {
    Local(Arc<SessionEntry>),
    Remote(Arc<Peer>, quinn::Connection),
}

impl Carrier {
    fn in_flight(&self) -> &std::sync::atomic::AtomicUsize {
        match self {
            Carrier::Local(s) => &s.in_flight,
            Carrier::Remote(p, _) => &p.in_flight,
        }
    }
}

/// Counts a stream as in flight on its carrier and the relay until dropped (with the body), and
/// holds the tenant's stream-cap permit when this node counts it.
#[derive(Debug)]
pub(crate) struct InFlight {
    carrier: Carrier,
    relay: Arc<Relay>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn new(carrier: Carrier, relay: Arc<Relay>, permit: Option<OwnedSemaphorePermit>) -> InFlight {
        carrier.in_flight().fetch_add(1, Ordering::Relaxed);
        relay.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            carrier,
            relay,
            _permit: permit,
        }
    }

    /// A stream on a local session (a forwarded request served here counts too).
    pub(crate) fn local(
        session: Arc<SessionEntry>,
        relay: Arc<Relay>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> InFlight {
        InFlight::new(Carrier::Local(session), relay, permit)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.carrier.in_flight().fetch_sub(1, Ordering::Relaxed);
        self.relay.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one visitor request. Never fails: errors become problem+json responses.
pub(crate) async fn handle(
    relay: Arc<Relay>,
    req: Request<Incoming>,
    conn: Arc<Visitor>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = crate::audit::request_id();
    relay.metrics.requests.fetch_add(1, Ordering::Relaxed);
    // The queue's and pairing's futures are boxed: inline, they made every request's future
    // (allocated and moved whole for each request) 5.5 KiB instead of 4.5.
    if let Some(kind) = crate::queue::kind(&relay, &req) {
        return Box::pin(queued(relay, req, conn, kind, (request_id, started))).await;
    }
    if crate::pair::is_pairing(&relay, &req) {
        return Box::pin(crate::pair::handle(relay, req, conn, &request_id))
            .await
            .map(Either::Left);
    }
    // Requests that match no tenant count under "" (visitor-chosen names never become labels).
    let mut counters = None;
    let mut draft = Draft::new(
        request_id,
        req.method().as_str(),
        req.uri().path(),
        conn.peer_ip.clone(),
    );
    let mut response = match proxy(&relay, req, &conn, &mut draft, &mut counters).await {
        Ok(r) => r,
        Err(e) => error_response(&e, &draft.request_id).map(Either::Left),
    };
    let counters = counters.unwrap_or_else(|| relay.metrics.tenant(""));
    relay
        .metrics
        .record(&counters, response.status().as_u16(), started.elapsed());
    if let Ok(v) = HeaderValue::from_str(&draft.request_id) {
        response.headers_mut().insert(X_RELAY_REQUEST_ID.clone(), v);
    }
    let status = response.status().as_u16();
    match response.body_mut() {
        // Streamed: recorded when the body ends or is dropped.
        Either::Right(body) => body.audit = Some((relay.clone(), draft, status)),
        Either::Left(_) => relay
            .audit
            .record(draft, status, Outcome::of_status(status), 0),
    }
    response
}

/// A request for the queue (accept, status, response, cancel): answered by the relay itself.
async fn queued(
    relay: Arc<Relay>,
    req: Request<Incoming>,
    conn: Arc<Visitor>,
    kind: crate::queue::Kind,
    (request_id, started): (String, Instant),
) -> Response<ProxyBody> {
    let mut draft = Draft::new(
        request_id,
        req.method().as_str(),
        req.uri().path(),
        conn.peer_ip.clone(),
    );
    let mut response = crate::queue::handle(&relay, req, &conn, &mut draft, kind).await;
    let counters = relay.metrics.tenant(&draft.tenant);
    let status = response.status().as_u16();
    relay.metrics.record(&counters, status, started.elapsed());
    if let Ok(v) = HeaderValue::from_str(&draft.request_id) {
        response.headers_mut().insert(X_RELAY_REQUEST_ID.clone(), v);
    }
    relay
        .audit
        .record(draft, status, Outcome::of_status(status), 0);
    response.map(Either::Left)
}

/// One request through the tunnel, phase by phase: admit it, open a stream and send the head,
/// await the response head, then answer (or switch protocols).
async fn proxy(
    relay: &Arc<Relay>,
    req: Request<Incoming>,
    conn: &Visitor,
    draft: &mut Draft,
    counters: &mut Option<Arc<TenantCounters>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let mut admitted = admit(relay, &mut parts, &body, conn, (draft, counters)).await?;
    let upgrade = take_upgrade(&mut parts, admitted.content_length);
    let head = request_head(relay, parts, conn, upgrade.as_ref(), draft);
    // A request without a body can be placed again when the node it was forwarded to refused
    // it undelivered (the tenant's connector moved meanwhile): nothing of it was consumed.
    let replayable = upgrade.is_none() && body.is_end_stream();
    let (mut body, mut upgrade) = (Some(body), upgrade);
    let mut placements = 1;
    loop {
        let sent =
            open_and_send(relay, &admitted, &head, body.take(), upgrade.take(), draft).await?;
        match await_response_head(relay, &admitted, sent.pump, sent.recv, draft).await {
            Err(ProxyError::Moved) if replayable && placements < MAX_PLACEMENTS => {
                placements += 1;
                let (carrier, permit) =
                    place(relay, &admitted.tenant, &admitted.target, draft).await?;
                admitted.guard = InFlight::new(carrier.clone(), relay.clone(), permit);
                admitted.carrier = carrier;
            }
            Err(e) => return Err(e),
            Ok(first) => return respond(relay, admitted, first, sent.upgrade).await,
        }
    }
}

/// How often a request may be placed on a session (see [`ProxyError::Moved`]).
const MAX_PLACEMENTS: u32 = 3;

/// A request the relay has decided to serve: where it goes, under which limits, on which session.
struct Admitted {
    tenant: Arc<relay_store::Tenant>,
    target: String,
    /// The path below the target and the query, as received.
    path_and_query: String,
    counters: Arc<TenantCounters>,
    max_body: u64,
    content_length: Option<u64>,
    carrier: Carrier,
    /// Counts the stream in flight (carrier, relay, tenant cap) until the response body ends.
    guard: InFlight,
    /// CORS headers the access policy adds to the response.
    cors: Option<HeaderMap>,
}

/// Phase 1: everything decided before a stream opens — refusals that need no tenant (method,
/// framing, URI length), the route, the tenant's limits and stream cap, and a live session — here,
/// or on another node of the cluster. Once the tenant is known its metric counters are handed
/// out, so its refusals count under it.
async fn admit(
    relay: &Arc<Relay>,
    parts: &mut http::request::Parts,
    body: &Incoming,
    conn: &Visitor,
    (draft, counters_out): (&mut Draft, &mut Option<Arc<TenantCounters>>),
) -> Result<Admitted, ProxyError> {
    // The relay is a reverse proxy: a target is a base URL, never a tunnel to anywhere.
    if parts.method == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // Both framing headers (CL.TE / TE.CL smuggling): refuse outright and close the connection,
    // rather than picking one interpretation.
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ProxyError::ConflictingFraming);
    }
    let limits = &relay.config.limits;
    let uri_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(ProxyError::UriTooLong(limits.max_uri_bytes));
    }
    let route = route::resolve(relay, parts, conn.sni.as_deref())?;
    let tenant = route.tenant;
    let (target, path) = (route.target, route.path.to_string());
    draft.tenant = tenant.name.clone();
    if tenant.audit_query_strings {
        if let Some(q) = parts.uri.query() {
            draft.path = crate::audit::truncated(&format!("{}?{q}", draft.path), 4096);
        }
    }
    draft.target = target.clone();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    // From here on, refusals count under the tenant.
    let counters = relay.metrics.tenant(&tenant.name);
    *counters_out = Some(counters.clone());
    // HTTP/1.1 counts fields in hyper's parser; HTTP/2 only bounds their total size.
    if parts.headers.len() > limits.max_headers {
        return Err(ProxyError::TooManyHeaders);
    }
    let scope = crate::policy::Scope {
        tenant_id: &tenant.id.0,
        target: Some(&target),
        method: &parts.method,
        request: Some((&parts.uri, parts.version)),
    };
    let admission = crate::policy::check(relay, scope, &mut parts.headers, conn, draft).await?;
    let max_body = tenant
        .limits
        .max_body_bytes
        .unwrap_or(limits.max_body_bytes);
    let content_length = body.size_hint().exact();
    if content_length.is_some_and(|n| n > max_body) {
        return Err(ProxyError::BodyTooLarge(max_body));
    }
    let (carrier, permit) = place(relay, &tenant, &target, draft).await?;
    let guard = InFlight::new(carrier.clone(), relay.clone(), permit);
    Ok(Admitted {
        tenant,
        target,
        path_and_query,
        counters,
        max_body,
        content_length,
        carrier,
        guard,
        cors: admission.cors,
    })
}

/// Where a request goes: a session here (under the tenant's stream cap), else the node holding
/// one, else — while the tenant's connector moves away from this node — its draining session.
async fn place(
    relay: &Arc<Relay>,
    tenant: &Arc<relay_store::Tenant>,
    target: &str,
    draft: &mut Draft,
) -> Result<(Carrier, Option<OwnedSemaphorePermit>), ProxyError> {
    draft.session_node = None;
    Ok(match relay.registry.pick(&tenant.id, target) {
        Pick::Session(s) => {
            let permit = cap_permit(relay, tenant)?;
            draft.session_id = s.id.clone();
            (Carrier::Local(s), Some(permit))
        }
        // The owning node counts the stream under the tenant's cap: once, there.
        here => match relay.cluster.locate(tenant, target).await {
            Located::Peer(peer, link) => {
                draft.session_node = Some(peer.node_name.clone());
                (Carrier::Remote(peer, link), None)
            }
            Located::NoTarget => return Err(ProxyError::UnknownTarget),
            Located::NoSession if matches!(here, Pick::NoTarget) => {
                return Err(ProxyError::UnknownTarget)
            }
            Located::NoSession => match relay.registry.pick_draining(&tenant.id, target) {
                Some(s) => {
                    let permit = cap_permit(relay, tenant)?;
                    draft.session_id = s.id.clone();
                    (Carrier::Local(s), Some(permit))
                }
                None => return Err(ProxyError::NoSession),
            },
        },
    })
}

/// A permit of the tenant's stream cap, counted by the node holding the session.
pub(crate) fn cap_permit(
    relay: &Relay,
    tenant: &relay_store::Tenant,
) -> Result<OwnedSemaphorePermit, ProxyError> {
    let cap = tenant
        .limits
        .max_concurrent_streams
        .unwrap_or(relay.config.limits.max_concurrent_streams);
    relay
        .registry
        .tenant_cap(&tenant.id, cap)
        .try_acquire_owned()
        .map_err(|_| ProxyError::TooManyStreams)
}

/// An HTTP/1.1 upgrade the relay will offer on: what is left of `Upgrade` (never h2c; the
/// connector applies the target's allow-list) and hyper's handle on the visitor connection.
struct Upgrade {
    offered: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// An upgrade (WebSocket) is offered on only for an HTTP/1.1 request without a body; without a
/// protocol left, the request goes on as an ordinary one.
fn take_upgrade(parts: &mut http::request::Parts, content_length: Option<u64>) -> Option<Upgrade> {
    let offered = upgrade_of(&parts.headers)
        .filter(|_| content_length == Some(0) && parts.version == http::Version::HTTP_11)
        .and_then(|v| allowed_upgrade(&v, |_| true))?;
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some(Upgrade {
        offered,
        on_upgrade,
    })
}

/// What the request head for the connector has of its own: the method, and the visitor's headers
/// after hygiene, with the relay's forwarding headers set after stripping. The rest of the head
/// (request id, target, path) is borrowed when it is encoded ([`RequestHeadRef`]).
struct Head {
    method: http::Method,
    headers: HeaderMap,
}

fn request_head(
    relay: &Relay,
    parts: http::request::Parts,
    conn: &Visitor,
    upgrade: Option<&Upgrade>,
    draft: &mut Draft,
) -> Head {
    let http::request::Parts {
        method,
        uri,
        headers,
        ..
    } = parts;
    let mut headers = visitor_headers(relay, headers, &uri, conn, draft);
    if let Some(upgrade) = upgrade {
        restore_upgrade(&mut headers, upgrade.offered.clone());
    }
    Head { method, headers }
}

/// The headers the backend receives for a visitor's request: hygiene applied, the relay's
/// forwarding headers set. Behind a trusted load balancer its forwarding headers are kept and the
/// visitor is the address it reports (in `draft` too); from anyone else they are replaced.
/// Takes the visitor's headers by value: they become the backend's without a copy.
pub(crate) fn visitor_headers(
    relay: &Relay,
    headers: HeaderMap,
    uri: &http::Uri,
    conn: &Visitor,
    draft: &mut Draft,
) -> HeaderMap {
    let trusted = crate::forwarded::trusted(&relay.config.trusted_proxies, conn.peer.ip());
    let forwarded_for = trusted.then(|| {
        let values: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        crate::forwarded::chain(&values)
    });
    if let Some(chain) = &forwarded_for {
        draft.visitor =
            crate::forwarded::client(&relay.config.trusted_proxies, conn.peer.ip(), chain)
                .to_string();
    }
    request_headers(headers, uri, (conn, forwarded_for), &draft.request_id)
}

/// What [`open_and_send`] leaves running: the response side of the stream, the outcome of the
/// request body, and for an upgrade the send side kept for raw bytes.
struct Sent {
    recv: Answer,
    /// The request body's outcome, when one is being sent (none for a bodiless request or an
    /// upgrade: no channel is made for them).
    pump: Option<oneshot::Receiver<Result<(), ProxyError>>>,
    upgrade: Option<(Upgrade, FramedSend)>,
}

/// Phase 2: opens a stream on the session, sends the head, and starts the request body on its
/// own task, so a backend that answers before reading the whole body (or a slow upload) never
/// blocks the response.
async fn open_and_send(
    relay: &Relay,
    admitted: &Admitted,
    head: &Head,
    body: Option<Incoming>,
    upgrade: Option<Upgrade>,
    draft: &Draft,
) -> Result<Sent, ProxyError> {
    let open = async {
        match &admitted.carrier {
            Carrier::Local(session) => session.conn.open_bi().await,
            Carrier::Remote(_, link) => {
                let link = tunnel_session::transport::Conn::Quic(link.clone());
                link.open_bi().await
            }
        }
    };
    let (send, recv) = match tokio::time::timeout(OPEN_STREAM_TIMEOUT, open).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            if let Carrier::Remote(..) = admitted.carrier {
                relay
                    .metrics
                    .forward_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Err(ProxyError::NoSession);
        }
    };
    let mut send = FramedSend::new(send, ErrorCode::VISITOR_ABORTED);
    // A request without a body (most GETs) is complete with its head: head and FIN leave in one
    // write, and no body task is needed.
    let body = body.filter(|b| upgrade.is_some() || !b.is_end_stream());
    let bodiless = upgrade.is_none() && body.is_none();
    let mut encoded = bytes::BytesMut::new();
    let recv = match &admitted.carrier {
        Carrier::Local(_) => Answer::Tunnel(FramedRecv::new(recv, ErrorCode::VISITOR_ABORTED)),
        Carrier::Remote(..) => {
            relay.metrics.forwarded_out.fetch_add(1, Ordering::Relaxed);
            NodeMessage::Forward {
                tenant_id: admitted.tenant.id.0.clone(),
                target: admitted.target.clone(),
                request_id: draft.request_id.clone(),
            }
            .encode(&mut encoded);
            Answer::Forwarded(recv)
        }
    };
    RequestHeadRef {
        request_id: &draft.request_id,
        target: &admitted.target,
        method: &head.method,
        path_and_query: &admitted.path_and_query,
        headers: &head.headers,
        content_length: admitted.content_length,
    }
    .encode(&mut encoded);
    let sent = send.send_encoded(&encoded).await;
    if bodiless {
        send.finish();
    }
    if sent.is_err() {
        return Err(ProxyError::Connector(
            "stream failed while sending the request head".into(),
        ));
    }
    let (upgrade, pump) = match upgrade {
        Some(upgrade) => (Some((upgrade, send)), None),
        None if bodiless => (None, None),
        None => {
            let Some(body) = body else {
                return Err(ProxyError::BadBody);
            };
            let (pump_tx, pump) = oneshot::channel();
            tokio::spawn(pump_request(
                body,
                send,
                (admitted.max_body, relay.config.limits.body_idle_timeout),
                (admitted.counters.clone(), draft.bytes_in.clone()),
                pump_tx,
            ));
            (None, Some(pump))
        }
    };
    Ok(Sent {
        recv,
        pump,
        upgrade,
    })
}

/// Phase 3: the first frame of the answer. The response timeout runs from the end of the
/// request body (as Envoy's route timeout): an upload that is still flowing is governed by the
/// body idle timeout instead.
async fn await_response_head(
    relay: &Relay,
    admitted: &Admitted,
    mut pump: Option<oneshot::Receiver<Result<(), ProxyError>>>,
    recv: Answer,
    draft: &mut Draft,
) -> Result<(tunnel_protocol::ResponseHead, FramedRecv), ProxyError> {
    let timeout = admitted
        .tenant
        .limits
        .request_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(relay.config.limits.request_timeout);
    // Runs from the end of the body: now, for a request sent whole with its head.
    let mut uploading = pump.is_some();
    let deadline = tokio::time::sleep(if uploading {
        Duration::MAX / 4
    } else {
        timeout
    });
    tokio::pin!(deadline);
    // One future across the loop's turns: reading the peer's answer to a forwarded request is not
    // cancel safe, and must not restart when the upload finishes.
    let head = async {
        let mut recv = match recv {
            Answer::Tunnel(recv) => recv,
            Answer::Forwarded(raw) => forwarded(relay, admitted, raw, draft).await?,
        };
        let first = recv.next().await;
        Ok::<_, ProxyError>((first, recv))
    };
    tokio::pin!(head);
    let (first, recv) = loop {
        // Why select: the head may come first (an early answer), the upload may fail first (too
        // large, stalled: the visitor gets that status), or the deadline may pass.
        tokio::select! {
            r = &mut head => break r?,
            outcome = futures_util::future::OptionFuture::from(pump.as_mut()), if uploading => {
                uploading = false;
                if let Some(Ok(Err(e))) = outcome {
                    return Err(e);
                }
                deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            _ = &mut deadline => return Err(ProxyError::ResponseTimeout(timeout)),
        }
    };
    match first {
        Ok(Some(StreamFrame::ResponseHead(head))) => Ok((head, recv)),
        Ok(Some(StreamFrame::Error(e))) => Err(ProxyError::from_code(e.code, e.message)),
        Ok(Some(_)) => Err(ProxyError::Connector(
            "unexpected frame before the response head".into(),
        )),
        Ok(None) => Err(ProxyError::Connector(
            "stream ended before the response head".into(),
        )),
        Err(e) => Err(ProxyError::Connector(e.to_string())),
    }
}

/// How the answer to a request comes back: straight from the connector, or from the node that
/// serves a forwarded request (its `Accepted`/`Refused`, then the connector's frames).
enum Answer {
    Tunnel(FramedRecv),
    Forwarded(tunnel_session::transport::RecvHalf),
}

/// Reads the owning node's verdict on a forwarded request; the stream of frames after it.
async fn forwarded(
    relay: &Relay,
    admitted: &Admitted,
    mut raw: tunnel_session::transport::RecvHalf,
    draft: &mut Draft,
) -> Result<FramedRecv, ProxyError> {
    let verdict = crate::cluster::read_message(&mut raw).await;
    let fail = |e: ProxyError| {
        relay
            .metrics
            .forward_failures
            .fetch_add(1, Ordering::Relaxed);
        e
    };
    match verdict {
        Ok(NodeMessage::Accepted { session_id }) => {
            draft.session_id = session_id;
            Ok(FramedRecv::new(raw, ErrorCode::VISITOR_ABORTED))
        }
        Ok(NodeMessage::Refused { code, message }) => {
            // Its sessions moved or ended since the directory was read: ask again.
            relay.cluster.forget(&admitted.tenant.name);
            debug!(code = %code, message, "forwarded request refused by the owning node");
            Err(fail(match code {
                ErrorCode::UNKNOWN_TARGET => ProxyError::UnknownTarget,
                ErrorCode::RATE_LIMITED => ProxyError::TooManyStreams,
                _ => ProxyError::Moved,
            }))
        }
        Ok(other) => Err(fail(ProxyError::Connector(format!(
            "unexpected node message {other:?}"
        )))),
        // The connector reset its stream before answering; the owning node passes only the
        // reset on (its `Accepted` would have ridden with the first bytes): a connector failure,
        // as on one node. The link and the forward worked: not a forwarding failure.
        Err(e) if stream_reset(&e) => Err(ProxyError::Connector(e.to_string())),
        // The owning node is gone (killed, cut off): as when a local session is lost, the
        // visitor may retry once the connector is back elsewhere.
        Err(e) => {
            relay.cluster.forget(&admitted.tenant.name);
            debug!(error = %e, "node link failed before the owning node answered");
            Err(fail(ProxyError::NoSession))
        }
    }
}

/// Whether a node-link read failed because the stream was reset (rather than the link lost).
fn stream_reset(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .and_then(tunnel_session::transport::reset_code)
        .is_some()
}

/// Phase 4: the visitor's response — the backend's body streamed from the tunnel, or, after a
/// `101` to an upgrade the visitor offered, the raw byte splice.
async fn respond(
    relay: &Relay,
    admitted: Admitted,
    (head, mut recv): (tunnel_protocol::ResponseHead, FramedRecv),
    upgrade: Option<(Upgrade, FramedSend)>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut headers = head.headers;
    let switching = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some((upgrade, send)) =
            upgrade.filter(|(u, _)| upgrade_answers(&u.offered, headers.get(header::UPGRADE)))
        else {
            return Err(ProxyError::Connector(
                "101 without a matching upgrade request".into(),
            ));
        };
        let chosen = upgrade_of(&headers);
        strip_hop_by_hop(&mut headers);
        if let Some(value) = chosen {
            restore_upgrade(&mut headers, value);
        }
        // The tunnel carries raw bytes once hyper hands over the visitor connection; the stream
        // counts as in flight until the splice ends.
        let guard = admitted.guard;
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.on_upgrade.await {
                splice(TokioIo::new(upgraded), send, recv).await;
            }
            drop(guard);
        });
        let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
        *response.status_mut() = head.status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
    strip_hop_by_hop(&mut headers);
    if let Some(cors) = admitted.cors {
        crate::policy::add_cors(&mut headers, cors);
    }
    if let Some((_, mut send)) = upgrade {
        // No switch: the (empty) request body ends here; the response is ordinary.
        send.finish();
    }
    let idle = relay.config.limits.stream_idle_timeout;
    // gRPC's Trailers-Only answer (the status in the head, no body) must reach the visitor as one
    // HEADERS frame with END_STREAM: given the status in the head and then an empty DATA frame,
    // clients report a broken stream instead of the status. The connector sends the FIN right
    // behind such a head, so wait for it (at most the idle timeout).
    let mut size = None;
    if headers.contains_key(&GRPC_STATUS) {
        if let Ok(Ok(true)) = tokio::time::timeout(idle, recv.at_end()).await {
            size = Some(0);
        }
    }
    let body = Metered::new(
        TunnelBody::new(recv, size, admitted.guard).with_idle_timeout(idle),
        admitted.counters,
    );
    let mut response = Response::new(Either::Right(body));
    *response.status_mut() = head.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The visitor connection a request arrived on.
#[derive(Debug)]
pub(crate) struct Visitor {
    pub(crate) peer: SocketAddr,
    /// The peer's address as text, written once per connection (every request needs it for
    /// the audit record and the forwarding headers; formatting an address is not cheap).
    pub(crate) peer_ip: String,
    /// `peer_ip` as a header value: the `X-Forwarded-For` of every request from an untrusted
    /// peer, shared instead of copied.
    peer_value: HeaderValue,
    pub(crate) scheme: &'static str,
    /// The TLS server name the visitor asked for (lowercase), if any.
    pub(crate) sni: Option<String>,
}

impl Visitor {
    pub(crate) fn new(peer: SocketAddr, scheme: &'static str, sni: Option<String>) -> Visitor {
        let peer_ip = peer.ip().to_string();
        Visitor {
            peer,
            // An address's text is always a valid header value.
            peer_value: HeaderValue::from_str(&peer_ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            peer_ip,
            scheme,
            sni,
        }
    }
}

/// The headers sent to the backend: hop-by-hop and relay-internal ones removed, then the
/// forwarding headers set after stripping. `forwarded_for` is the incoming `X-Forwarded-For`
/// chain when the peer is a trusted proxy (its `X-Forwarded-Proto`/`-Host` are then kept too);
/// otherwise everything comes from what the relay itself saw.
fn request_headers(
    mut headers: HeaderMap,
    uri: &http::Uri,
    (conn, forwarded_for): (&Visitor, Option<Vec<String>>),
    request_id: &str,
) -> HeaderMap {
    let scheme = conn.scheme;
    let trusted = forwarded_for.is_some();
    let proto_in = headers
        .get(&X_FORWARDED_PROTO)
        .filter(|v| *v == "https" || *v == "http")
        .cloned()
        .filter(|_| trusted);
    let host_in = headers.get(&X_FORWARDED_HOST).cloned().filter(|_| trusted);
    let host = host_in.or_else(|| {
        headers.get(header::HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
    });
    strip_hop_by_hop(&mut headers);
    // One pass finds the relay's own and the forwarding fields a visitor sent; most requests carry
    // none, and then nothing is looked up or allocated.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let replaced = *name == header::HOST
            || *name == header::CONTENT_LENGTH
            || *name == header::FORWARDED
            || name.as_str() == "x-real-ip"
            || name.as_str().starts_with("x-relay-");
        if replaced {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    // Added after stripping, so a visitor can neither remove nor pre-set them.
    headers.reserve(5);
    let proto = proto_in.unwrap_or(HeaderValue::from_static(scheme));
    let proto_text = proto.to_str().unwrap_or(scheme);
    let host_text = host.as_ref().and_then(|h| h.to_str().ok());
    let (chain, forwarded) = match forwarded_for {
        Some(mut chain) => {
            chain.push(conn.peer_ip.clone());
            let forwarded = crate::forwarded::header(&chain, proto_text, host_text);
            (HeaderValue::from_str(&chain.join(", ")).ok(), forwarded)
        }
        // The usual case, a visitor's own connection: its address is the whole chain.
        None => (
            Some(conn.peer_value.clone()),
            crate::forwarded::header(std::slice::from_ref(&conn.peer_ip), proto_text, host_text),
        ),
    };
    if let Some(v) = chain {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    // The string becomes the value's buffer, not copied into a new one.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
        headers.insert(header::FORWARDED, v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(X_RELAY_REQUEST_ID.clone(), v);
    }
    headers
}

/// Streams the visitor's body into the tunnel, enforcing the size limit and the idle timeout.
/// A failure resets the stream (the backend sees an aborted request, never a complete one) and is
/// reported through `done` so the visitor can be told why, if no response has started; `Ok` (or
/// the sender dropped) means the body is done and the response timeout starts.
async fn pump_request(
    body: Incoming,
    send: FramedSend,
    (max, idle): (u64, Duration),
    (counters, received): (Arc<TenantCounters>, Arc<AtomicU64>),
    done: oneshot::Sender<Result<(), ProxyError>>,
) {
    let outcome = pump(body, send, max, idle, (&counters, &received)).await;
    let _ = done.send(outcome);
}

async fn pump(
    mut body: Incoming,
    mut send: FramedSend,
    max: u64,
    idle: Duration,
    (counters, received): (&TenantCounters, &AtomicU64),
) -> Result<(), ProxyError> {
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                send.reset(ErrorCode::REQUEST_REJECTED);
                return Err(ProxyError::BodyTimeout(idle));
            }
            Ok(None) => {
                send.finish();
                return Ok(());
            }
            Ok(Some(Err(e))) => {
                // Either the visitor went away mid-upload, or it sent a malformed body (a bad
                // chunk size, say): the backend request is cancelled either way, and the latter
                // is answered 400 if no response has started.
                send.reset(ErrorCode::VISITOR_ABORTED);
                if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                    return Ok(());
                }
                return Err(ProxyError::BadBody);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let sent = match frame.into_data() {
            Ok(data) => {
                total = total.saturating_add(data.len() as u64);
                counters
                    .request_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                received.fetch_add(data.len() as u64, Ordering::Relaxed);
                if total > max {
                    send.reset(ErrorCode::REQUEST_REJECTED);
                    return Err(ProxyError::BodyTooLarge(max));
                }
                send.send_data(data).await
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => send.send_trailers(trailers).await,
                Err(_) => Ok(()),
            },
        };
        if sent.is_err() {
            // The connector stopped reading (the backend answered or failed); nothing to add.
            return Ok(());
        }
    }
}
