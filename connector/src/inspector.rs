//! The local inspector: the last requests that went through this connector, on a small page and
//! JSON API on the tenant's own network, and replay of one of them to the local backend.
//!
//! ```text
//! relay ══► connector ──► backend
//!               │ records: head, status, timing, sizes, the first bytes of each body
//!               ▼
//!   http://127.0.0.1:4040/   (GET /api/requests, GET /api/requests/{id},
//!                             POST /api/requests/{id}/replay, DELETE /api/requests)
//! ```
//!
//! Off unless `[inspect] listen` (`--inspect ADDR`) is set, loopback only unless
//! `allow_remote`. Nothing is recorded while it is off: the request path pays one `Option`
//! check. What it keeps is bounded: `entries` requests (oldest dropped first) and `body_bytes`
//! of each body, truncation marked. Values of `Authorization`, `Proxy-Authorization`, `Cookie`,
//! `Set-Cookie` and the configured headers are never recorded; a replay sends the request without
//! them unless the edit supplies them. The relay keeps metadata only (its audit log); bodies and
//! headers recorded here never leave this machine.
//!
//! The page is for a person at this machine, so the API defends against other web pages in the
//! same browser: the `Host` header must name the listen address (DNS rebinding), and requests
//! that change something must carry `Content-Type: application/json` (which a cross-origin page
//! cannot send without a preflight this server never answers).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{Backends, Body};
use crate::config::Inspect;

/// Shown in place of a redacted header's value.
pub const REDACTED: &str = "[redacted]";
/// Most inspector connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// Largest replay edit accepted (the edited body included).
const MAX_EDIT_BYTES: usize = 2 * 1024 * 1024;

/// The recorder: a bounded ring of exchanges.
#[derive(Debug)]
pub struct Inspector {
    entries: Mutex<VecDeque<Arc<Exchange>>>,
    capacity: usize,
    body_bytes: usize,
    redact: Vec<HeaderName>,
    next_id: AtomicU64,
}

/// One request and its response, as far as they got.
#[derive(Debug)]
pub struct Exchange {
    id: u64,
    replay_of: Option<u64>,
    at: SystemTime,
    started: Instant,
    target: String,
    method: Method,
    path: String,
    request_id: String,
    request_headers: Vec<(String, String)>,
    body_bytes: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    status: Option<u16>,
    response_headers: Vec<(String, String)>,
    request_body: Captured,
    response_body: Captured,
    outcome: Outcome,
    duration: Option<Duration>,
}

#[derive(Debug, Default, Clone, PartialEq)]
enum Outcome {
    #[default]
    InFlight,
    Complete,
    Upgraded,
    Failed(String),
}

/// The first bytes of a body, and how many there were in all.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    size: u64,
    truncated: bool,
}

impl Captured {
    fn push(&mut self, data: &[u8], limit: usize) {
        self.size += data.len() as u64;
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..room.min(data.len())]);
        if data.len() > room {
            self.truncated = true;
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({ "size": self.size, "truncated": self.truncated });
        match std::str::from_utf8(&self.bytes) {
            Ok(text) => v["text"] = text.into(),
            Err(_) => {
                v["base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&self.bytes)
                    .into()
            }
        }
        v
    }
}

/// Which body a [`Tap`] watches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Request,
    Response,
}

/// Copies the start of a body into its exchange as the body is read; a response body's end
/// (or failure, or being dropped unfinished) completes the exchange.
#[derive(Debug)]
pub struct Tap {
    exchange: Arc<Exchange>,
    side: Side,
}

impl Tap {
    pub(crate) fn saw<E: std::fmt::Display>(&self, polled: &Option<Result<Frame<Bytes>, E>>) {
        let ex = &self.exchange;
        match polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let mut state = ex.lock();
                    let body = match self.side {
                        Side::Request => &mut state.request_body,
                        Side::Response => &mut state.response_body,
                    };
                    body.push(data, ex.body_bytes);
                }
            }
            Some(Err(e)) => ex.end(Outcome::Failed(match self.side {
                Side::Request => format!("request body failed: {e}"),
                Side::Response => format!("response body failed: {e}"),
            })),
            None if self.side == Side::Response => ex.end(Outcome::Complete),
            None => {}
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.side == Side::Response {
            // Ended without its end: the relay stopped reading (the visitor went away).
            self.exchange
                .end(Outcome::Failed("response not read to its end".into()));
        }
    }
}

impl Exchange {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the record inconsistent in a way that
        // matters: keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A tap on the request body.
    pub(crate) fn request_tap(self: &Arc<Self>) -> Tap {
        Tap {
            exchange: self.clone(),
            side: Side::Request,
        }
    }

    /// The response head arrived; its body will be read through the returned tap.
    pub(crate) fn response(
        self: &Arc<Self>,
        status: StatusCode,
        headers: &HeaderMap,
        redact: &[HeaderName],
    ) -> Tap {
        let mut state = self.lock();
        state.status = Some(status.as_u16());
        state.response_headers = redacted(headers, redact);
        Tap {
            exchange: self.clone(),
            side: Side::Response,
        }
    }

    /// The exchange ended (first end wins).
    fn end(&self, outcome: Outcome) {
        let mut state = self.lock();
        if state.outcome == Outcome::InFlight {
            state.outcome = outcome;
            state.duration = Some(self.started.elapsed());
        }
    }

    /// The request failed before a response: the error the relay was told.
    pub(crate) fn failed(&self, message: &str) {
        self.end(Outcome::Failed(message.to_string()));
    }

    /// The connection was switched to another protocol; the bytes after it are not recorded.
    pub(crate) fn upgraded(&self) {
        self.end(Outcome::Upgraded);
    }

    /// This exchange as JSON; `full` adds headers and bodies.
    fn json(&self, full: bool) -> Value {
        let state = self.lock();
        let (outcome, error) = match &state.outcome {
            Outcome::InFlight => ("in flight", None),
            Outcome::Complete => ("complete", None),
            Outcome::Upgraded => ("upgraded", None),
            Outcome::Failed(e) => ("failed", Some(e.clone())),
        };
        let mut v = json!({
            "id": self.id,
            "replay_of": self.replay_of,
            "time": humantime::format_rfc3339_millis(self.at).to_string(),
            "target": self.target,
            "method": self.method.as_str(),
            "path": self.path,
            "request_id": self.request_id,
            "status": state.status,
            "outcome": outcome,
            "error": error,
            "duration_ms": state.duration.map(|d| d.as_secs_f64() * 1000.0),
            "request_size": state.request_body.size,
            "response_size": state.response_body.size,
        });
        if full {
            v["request"] = json!({
                "headers": self.request_headers,
                "body": state.request_body.json(),
            });
            v["response"] = json!({
                "headers": state.response_headers,
                "body": state.response_body.json(),
            });
        }
        v
    }
}

/// Header pairs with the values of `redact` replaced.
fn redacted(headers: &HeaderMap, redact: &[HeaderName]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if redact.contains(name) {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// What the relay asked for, as the recorder needs it.
pub(crate) struct Asked<'a> {
    pub target: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub request_id: &'a str,
    pub headers: &'a HeaderMap,
}

impl Inspector {
    /// An empty recorder.
    pub fn new(config: &Inspect) -> Inspector {
        Inspector {
            entries: Mutex::new(VecDeque::with_capacity(config.entries.min(1024))),
            capacity: config.entries,
            body_bytes: config.body_bytes,
            redact: config.redact.clone(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The headers whose values are never recorded.
    pub(crate) fn redact(&self) -> &[HeaderName] {
        &self.redact
    }

    /// Starts recording a request.
    pub(crate) fn record(&self, asked: Asked<'_>, replay_of: Option<u64>) -> Arc<Exchange> {
        let exchange = Arc::new(Exchange {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            replay_of,
            at: SystemTime::now(),
            started: Instant::now(),
            target: asked.target.to_string(),
            method: asked.method.clone(),
            path: asked.path.to_string(),
            request_id: asked.request_id.to_string(),
            request_headers: redacted(asked.headers, &self.redact),
            body_bytes: self.body_bytes,
            state: Mutex::default(),
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(exchange.clone());
        exchange
    }

    fn find(&self, id: u64) -> Option<Arc<Exchange>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().find(|e| e.id == id).cloned()
    }

    fn list(&self) -> Vec<Arc<Exchange>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().rev().cloned().collect()
    }

    fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Sends a recorded request (edited) to its backend again, recording it as a new exchange
    /// whose response is read to its end (only its first bytes are kept).
    async fn replay(
        &self,
        backends: &Backends,
        id: u64,
        edit: Edit,
    ) -> Result<Arc<Exchange>, (StatusCode, String)> {
        let original = self.find(id).ok_or((
            StatusCode::NOT_FOUND,
            format!("no request {id} (gone from the list?)"),
        ))?;
        let backend = backends.get(&original.target).ok_or((
            StatusCode::CONFLICT,
            format!("target {} is no longer configured", original.target),
        ))?;
        let method = match edit.method.as_deref() {
            Some(m) => Method::from_bytes(m.trim().as_bytes()).map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("method {m:?} is not valid"),
                )
            })?,
            None => original.method.clone(),
        };
        if method == Method::CONNECT {
            return Err((
                StatusCode::BAD_REQUEST,
                "CONNECT is not sent to backends".into(),
            ));
        }
        let path = edit.path.unwrap_or_else(|| original.path.clone());
        let uri = backend
            .uri(&path)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("path {path:?}: {e}")))?;
        let body = match (edit.body, edit.body_base64) {
            (Some(_), Some(_)) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "give body or body_base64, not both".into(),
                ))
            }
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(Bytes::from)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("body_base64: {e}")))?,
            (None, None) => {
                let state = original.lock();
                if state.request_body.truncated {
                    return Err((
                        StatusCode::CONFLICT,
                        format!(
                            "the recorded body is truncated ({} of {} bytes kept): send an edited body",
                            state.request_body.bytes.len(),
                            state.request_body.size
                        ),
                    ));
                }
                Bytes::copy_from_slice(&state.request_body.bytes)
            }
        };
        let mut headers = HeaderMap::new();
        let pairs = match edit.headers {
            Some(h) => h,
            None => original.request_headers.clone(),
        };
        for (name, value) in pairs {
            if value == REDACTED {
                continue; // never recorded: a replay goes without it unless the edit gives it
            }
            let name = HeaderName::try_from(name.trim()).map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("{name:?} is not a header name"),
                )
            })?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("header {name}: value is not valid"),
                )
            })?;
            headers.append(name, value);
        }
        headers.remove(CONTENT_LENGTH);
        headers.remove(TRANSFER_ENCODING);
        crate::stream::backend_headers(&mut headers, &backend.target);
        let exchange = self.record(
            Asked {
                target: &original.target,
                method: &method,
                path: &path,
                request_id: &original.request_id,
                headers: &headers,
            },
            Some(original.id),
        );
        exchange.lock().request_body.push(&body, self.body_bytes);
        let mut req = Request::new(Body::full(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let timeout = backend.target.timeout;
        let response = match tokio::time::timeout(timeout, backend.send(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                exchange.failed(&format!("backend request failed: {e}"));
                return Ok(exchange);
            }
            Err(_) => {
                exchange.failed(&format!("no response head within {timeout:?}"));
                return Ok(exchange);
            }
        };
        let (parts, body) = response.into_parts();
        let tap = exchange.response(parts.status, &parts.headers, &self.redact);
        let mut body = body.tapped(Some(tap));
        // Read to the end (the tap keeps the first bytes), within the timeout again per frame.
        loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => break,
                Err(_) => {
                    exchange.failed(&format!("response body stalled for {timeout:?}"));
                    break;
                }
            }
        }
        Ok(exchange)
    }
}

/// A replay's changes to the recorded request.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    method: Option<String>,
    path: Option<String>,
    /// Replaces all recorded headers.
    headers: Option<Vec<(String, String)>>,
    body: Option<String>,
    body_base64: Option<String>,
}

/// Serves the page and API on `listener` until `shutdown`. Replays use their own backend
/// clients (`backends`), on this runtime.
pub(crate) async fn serve(
    listener: TcpListener,
    inspector: Arc<Inspector>,
    backends: Backends,
    shutdown: CancellationToken,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return warn!(error = %e, "inspector: no local address"),
    };
    info!(address = %local, "inspector listening: http://{local}/");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        // Why select: the accept loop must stop with the connector.
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "inspector accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "inspector: too many connections");
            continue;
        };
        let (inspector, backends, shutdown) =
            (inspector.clone(), backends.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let (inspector, backends) = (inspector.clone(), backends.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(req, local, &inspector, &backends).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // Why select: an open page's keep-alive connection must not hold up shutdown.
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "inspector connection"); },
                _ = shutdown.cancelled() => {}
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    r
}

fn json_answer(status: StatusCode, v: &Value) -> Answer {
    answer(status, "application/json", v.to_string())
}

fn problem(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

/// Whether the request's `Host` names this listener (DNS rebinding defence).
fn host_ok(headers: &HeaderMap, local: SocketAddr) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let port = local.port();
    let mut names = vec![format!("{local}")];
    if local.ip().is_loopback() {
        names.push(format!("localhost:{port}"));
        names.push(format!("127.0.0.1:{port}"));
        names.push(format!("[::1]:{port}"));
    }
    names.iter().any(|n| n.eq_ignore_ascii_case(host))
}

async fn handle(
    req: Request<Incoming>,
    local: SocketAddr,
    inspector: &Inspector,
    backends: &Backends,
) -> Answer {
    if !host_ok(req.headers(), local) {
        return problem(
            StatusCode::MISDIRECTED_REQUEST,
            "this inspector answers only to its own address",
        );
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type: application/json",
            );
        }
    }
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, [""]) => answer(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::GET, ["inspector.css"]) => {
            answer(StatusCode::OK, "text/css; charset=utf-8", STYLE)
        }
        (Method::GET, ["inspector.js"]) => {
            answer(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
        }
        (Method::GET, ["api", "requests"]) => {
            let list: Vec<Value> = inspector.list().iter().map(|e| e.json(false)).collect();
            let redacted: Vec<&str> = inspector.redact().iter().map(|h| h.as_str()).collect();
            json_answer(
                StatusCode::OK,
                &json!({ "requests": list, "redacted": redacted }),
            )
        }
        (Method::DELETE, ["api", "requests"]) => {
            inspector.clear();
            json_answer(StatusCode::OK, &json!({ "cleared": true }))
        }
        (Method::GET, ["api", "requests", id]) => {
            match id.parse().ok().and_then(|id| inspector.find(id)) {
                Some(e) => json_answer(StatusCode::OK, &e.json(true)),
                None => problem(StatusCode::NOT_FOUND, "no such request"),
            }
        }
        (Method::POST, ["api", "requests", id, "replay"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return problem(StatusCode::NOT_FOUND, "no such request");
            };
            let body = match Limited::new(req.into_body(), MAX_EDIT_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "edit too large (2 MiB at most)",
                    )
                }
            };
            let edit: Edit = if body.iter().all(u8::is_ascii_whitespace) {
                Edit::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(e) => e,
                    Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("edit: {e}")),
                }
            };
            match inspector.replay(backends, id, edit).await {
                Ok(e) => json_answer(StatusCode::CREATED, &e.json(true)),
                Err((status, message)) => problem(status, &message),
            }
        }
        (_, ["api", ..]) => problem(StatusCode::NOT_FOUND, "no such resource"),
        _ => problem(StatusCode::NOT_FOUND, "not found"),
    }
}

const PAGE: &str = include_str!("inspector/page.html");
const SCRIPT: &str = include_str!("inspector/inspector.js");
const STYLE: &str = include_str!("inspector/inspector.css");

#[cfg(test)]
mod tests {
    use super::*;

    fn inspector(entries: usize, body_bytes: usize) -> Inspector {
        Inspector::new(&Inspect {
            listen: "127.0.0.1:0".parse().unwrap(),
            entries,
            body_bytes,
            redact: crate::config::ALWAYS_REDACTED
                .iter()
                .map(|n| HeaderName::from_static(n))
                .chain([HeaderName::from_static("x-api-key")])
                .collect(),
        })
    }

    fn asked<'a>(headers: &'a HeaderMap, path: &'a str) -> Asked<'a> {
        Asked {
            target: "app",
            method: &Method::POST,
            path,
            request_id: "r1",
            headers,
        }
    }

    #[test]
    fn keeps_the_newest_entries_and_redacts() {
        let i = inspector(2, 4);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        h.insert("x-api-key", HeaderValue::from_static("k3y"));
        h.insert("accept", HeaderValue::from_static("text/plain"));
        for p in ["/1", "/2", "/3"] {
            i.record(asked(&h, p), None);
        }
        let list = i.list();
        assert_eq!(
            list.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/3", "/2"]
        );
        let text = list[0].json(true).to_string();
        assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
        assert!(text.contains("text/plain"));
    }

    #[test]
    fn bodies_are_cut_at_the_limit_and_marked() {
        let i = inspector(10, 4);
        let e = i.record(asked(&HeaderMap::new(), "/"), None);
        let tap = e.request_tap();
        for chunk in ["ab", "cdef", "g"] {
            tap.saw::<String>(&Some(Ok(Frame::data(Bytes::from(chunk)))));
        }
        let v = e.json(true);
        assert_eq!(v["request"]["body"]["text"], "abcd");
        assert_eq!(v["request"]["body"]["size"], 7);
        assert_eq!(v["request"]["body"]["truncated"], true);
        assert_eq!(v["outcome"], "in flight");
        let tap = e.response(StatusCode::OK, &HeaderMap::new(), i.redact());
        tap.saw::<String>(&None);
        assert_eq!(e.json(false)["outcome"], "complete");
        assert_eq!(e.json(false)["status"], 200);
    }

    #[test]
    fn an_abandoned_response_is_marked() {
        let i = inspector(10, 4);
        let e = i.record(asked(&HeaderMap::new(), "/"), None);
        drop(e.response(StatusCode::OK, &HeaderMap::new(), i.redact()));
        assert_eq!(e.json(false)["outcome"], "failed");
    }

    #[test]
    fn only_its_own_host_names_are_served() {
        let local: SocketAddr = "127.0.0.1:4040".parse().unwrap();
        let with = |h: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(HOST, HeaderValue::from_static(h));
            m
        };
        assert!(host_ok(&with("127.0.0.1:4040"), local));
        assert!(host_ok(&with("localhost:4040"), local));
        assert!(!host_ok(&with("evil.example:4040"), local));
        assert!(!host_ok(&with("localhost:80"), local));
        assert!(!host_ok(&HeaderMap::new(), local));
    }
}
