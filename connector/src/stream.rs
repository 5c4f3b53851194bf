//! One request stream: read the head, call the backend, stream the answer back.
//!
//! The one place where a failure becomes a stream `Error` frame or reset carrying an
//! [`ErrorCode`]; the relay maps the code back to a visitor status.

use std::time::Duration;

use futures_util::FutureExt;
use http::header::{HeaderValue, CONTENT_LENGTH, UPGRADE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tracing::{debug, info_span, warn, Instrument};
use tunnel_protocol::{
    ErrorCode, RequestHead, ResponseHead, StreamError, StreamFrame, MAX_HEAD_FRAME_LEN,
};

use std::sync::Arc;

use crate::backend::{Backend, BackendBody, Backends, Body, ResponseBody};
use crate::config::Target;
use crate::inspector::{Asked, Exchange};
use tunnel_session::framing::{splice, FramedRecv, FramedSend, TunnelBody};
use tunnel_session::headers::{
    allowed_upgrade, restore_upgrade, strip_hop_by_hop, upgrade_answers, upgrade_of,
};
use tunnel_session::transport::{RecvHalf, SendHalf};

/// How long the relay may take to send the request head after opening a stream.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one stream the relay opened. Never panics on peer input; every failure is logged once.
pub(crate) async fn serve(send: SendHalf, recv: RecvHalf, backends: Backends) {
    let mut send = FramedSend::new(send, ErrorCode::BACKEND_ABORTED);
    let mut recv = FramedRecv::new(recv, ErrorCode::BACKEND_ABORTED);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, recv.next()).await {
        Ok(Ok(Some(StreamFrame::RequestHead(head)))) => head,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            debug!("stream without a valid request head");
            send.reset(ErrorCode::PROTOCOL_ERROR);
            return;
        }
    };
    let span = info_span!("stream", request_id = %head.request_id, target = %head.target);
    async move {
        let Some(backend) = backends.get(&head.target) else {
            debug!("unknown target");
            fail(
                &mut send,
                ErrorCode::UNKNOWN_TARGET,
                "target not defined on this connector",
            )
            .await;
            return;
        };
        // Recorded only while the inspector runs; its absence costs this one check.
        let rec = backends.inspector().map(|i| {
            i.record(
                Asked {
                    target: &head.target,
                    method: &head.method,
                    path: &head.path_and_query,
                    request_id: &head.request_id,
                    headers: &head.headers,
                },
                None,
            )
        });
        let redact = backends.inspector().map(|i| i.redact()).unwrap_or_default();
        proxy(head, backend, send, recv, Recording { rec, redact }).await;
    }
    .instrument(span)
    .await
}

/// One request to a backend, phase by phase: prepare the backend request, call the backend,
/// send the response head (with what of the body is already at hand), then stream the body or
/// splice an upgraded connection.
async fn proxy(
    head: RequestHead,
    backend: &Backend,
    mut send: FramedSend,
    recv: FramedRecv,
    rec: Recording<'_>,
) {
    let prepared = match prepare(head, backend, recv, rec.rec.as_ref()) {
        Ok(p) => p,
        Err((code, message)) => return rec.fail(&mut send, code, &message).await,
    };
    let (offered, upgrade_recv) = prepared.upgrade.unzip();
    let response = match call(backend, prepared.req, prepared.body_sent, &mut send).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            if let Some(r) = &rec.rec {
                r.failed("the relay cancelled the request");
            }
            return;
        }
        Err((code, message)) => return rec.fail(&mut send, code, &message).await,
    };
    let switch = match switch_of(response, offered.as_ref(), upgrade_recv) {
        Ok(s) => s,
        Err((code, message)) => return rec.fail(&mut send, code, &message).await,
    };
    match switch {
        Switch::No(response) => {
            let (parts, body) = response.into_parts();
            let mut headers = parts.headers;
            strip_hop_by_hop(&mut headers);
            let tap = rec
                .rec
                .as_ref()
                .map(|r| r.response(parts.status, &headers, rec.redact));
            let mut body = body.tapped(tap);
            match send_head(parts.status, headers, Some(&mut body), &mut send).await {
                Ok(HeadSent::Ended) | Err(()) => {}
                Ok(HeadSent::More) => stream_body(body, send).await,
            }
        }
        Switch::Yes {
            status,
            headers,
            on_upgrade,
            recv,
        } => {
            if let Some(r) = &rec.rec {
                let tap = r.response(status, &headers, rec.redact);
                r.upgraded();
                drop(tap);
            }
            if send_head(status, headers, None, &mut send).await.is_err() {
                return;
            }
            match on_upgrade.await {
                Ok(upgraded) => splice(TokioIo::new(upgraded), send, recv).await,
                Err(e) => warn!(error = %e, "backend upgrade failed after its 101"),
            }
        }
    }
}

/// Why a stream failed before its response head: the code and detail the relay gets.
type Failure = (ErrorCode, String);

/// The inspector's record of this request, when the inspector runs.
struct Recording<'a> {
    rec: Option<Arc<Exchange>>,
    redact: &'a [http::HeaderName],
}

impl Recording<'_> {
    /// [`fail`], noted in the record.
    async fn fail(&self, send: &mut FramedSend, code: ErrorCode, message: &str) {
        if let Some(r) = &self.rec {
            r.failed(&format!("{code:?}: {message}"));
        }
        fail(send, code, message).await
    }
}

/// The headers of a backend request, from those the relay sent (hop-by-hop headers are removed
/// again, whatever the relay did): the target's own `Host`, or the visitor's for targets that
/// preserve it.
pub(crate) fn backend_headers(headers: &mut http::HeaderMap, target: &Target) {
    strip_hop_by_hop(headers);
    headers.remove(http::header::HOST);
    if target.preserve_host {
        // The relay set X-Forwarded-Host from the visitor's Host (or its trusted proxy's).
        if let Some(host) = headers.get("x-forwarded-host").cloned() {
            headers.insert(http::header::HOST, host);
        }
    }
}

/// Whether `method`'s semantics anticipate content, so that an empty body is declared with
/// `Content-Length: 0` (a POST or PUT without one is refused by some servers with 411).
fn anticipates_content(method: &http::Method) -> bool {
    use http::Method;
    ![
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

/// A backend request ready to send, and what the stream keeps for later.
struct Prepared {
    req: Request<BackendBody>,
    /// The protocols offered to the backend, and the stream's receive half kept for raw bytes.
    upgrade: Option<(HeaderValue, FramedRecv)>,
    /// Fires when hyper is done with the request body: the response timeout starts then.
    body_sent: tokio::sync::oneshot::Receiver<()>,
}

/// Phase 1: the backend request — the URI below the target (path guarantee checked), header
/// hygiene, the target's Host choice, and the upgrade allow-list.
fn prepare(
    head: RequestHead,
    backend: &Backend,
    recv: FramedRecv,
    rec: Option<&Arc<Exchange>>,
) -> Result<Prepared, Failure> {
    let uri = backend
        .uri(&head.path_and_query)
        .map_err(|e| (ErrorCode::PROTOCOL_ERROR, format!("bad path: {e}")))?;
    if head.method == http::Method::CONNECT {
        // The relay refuses CONNECT; a target is a base URL, never a tunnel to anywhere.
        return Err((ErrorCode::PROTOCOL_ERROR, "CONNECT is not forwarded".into()));
    }
    let mut headers = head.headers;
    // An upgrade (WebSocket) keeps the stream for raw bytes after the backend's 101; only the
    // protocols the target allows are offered to the backend, never h2c.
    let upgrade = upgrade_of(&headers)
        .filter(|_| head.content_length == Some(0))
        .and_then(|v| allowed_upgrade(&v, |p| backend.target.allows_upgrade(p)));
    backend_headers(&mut headers, &backend.target);
    match head.content_length {
        // A GET, HEAD, DELETE, OPTIONS or TRACE without content goes without a length, as its
        // visitor sent it (RFC 9110 §8.6): the relay cannot tell "no body" from
        // `Content-Length: 0`, and some servers refuse a GET that declares one.
        Some(0) if !anticipates_content(&head.method) => {}
        // Any other bodiless request: a shared static instead of a formatted, allocated value.
        Some(0) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        Some(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        None => {}
    }
    // The response timeout runs from the end of the request body, not from its start: a large
    // upload to a slow backend is not a timeout.
    let (body_done, body_sent) = tokio::sync::oneshot::channel::<()>();
    let (body, upgrade) = match upgrade {
        Some(value) => {
            restore_upgrade(&mut headers, value.clone());
            (
                Body::tunnel(TunnelBody::empty(body_done)),
                Some((value, recv)),
            )
        }
        None => {
            let body = Body::tunnel(TunnelBody::new(recv, head.content_length, body_done));
            (body.tapped(rec.map(|r| r.request_tap())), None)
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(Prepared {
        req,
        upgrade,
        body_sent,
    })
}

/// Phase 2: the backend's response head, within the target's timeout from the end of the body;
/// `None` when the relay cancelled the request first (the backend request is dropped, which
/// cancels it, instead of waiting for a response nobody will read).
async fn call(
    backend: &Backend,
    req: Request<BackendBody>,
    body_sent: tokio::sync::oneshot::Receiver<()>,
    send: &mut FramedSend,
) -> Result<Option<http::Response<ResponseBody>>, Failure> {
    let timeout = backend.target.timeout;
    let deadline = async {
        let _ = body_sent.await;
        tokio::time::sleep(timeout).await;
    };
    // Why select: the relay stops the stream when the visitor goes away.
    tokio::select! {
        r = backend.send(req) => match r {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let code = if e.is_connect() {
                    ErrorCode::BACKEND_UNAVAILABLE
                } else {
                    ErrorCode::BACKEND_BAD_RESPONSE
                };
                warn!(error = %error_chain(&e), "backend request failed");
                Err((code, error_chain(&e)))
            }
        },
        _ = deadline => Err((
            ErrorCode::BACKEND_TIMEOUT,
            format!("no response head within {timeout:?}"),
        )),
        code = send.stopped() => {
            debug!(?code, "relay cancelled the request before the response head");
            Ok(None)
        }
    }
}

/// Whether the backend switched protocols.
enum Switch {
    No(http::Response<ResponseBody>),
    Yes {
        status: StatusCode,
        headers: http::HeaderMap,
        on_upgrade: hyper::upgrade::OnUpgrade,
        recv: FramedRecv,
    },
}

/// Phase 3: a `101` is accepted only when it names a protocol that was offered; a switch nobody
/// asked for (or to another protocol) would hand the visitor's connection to whatever the
/// backend speaks next.
fn switch_of(
    mut response: http::Response<ResponseBody>,
    offered: Option<&HeaderValue>,
    recv: Option<FramedRecv>,
) -> Result<Switch, Failure> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Switch::No(response));
    }
    let answers = offered.is_some_and(|o| upgrade_answers(o, response.headers().get(UPGRADE)));
    let Some(recv) = recv.filter(|_| answers) else {
        warn!("backend switched protocols without a matching upgrade request");
        return Err((
            ErrorCode::BACKEND_BAD_RESPONSE,
            "101 without a matching upgrade request".into(),
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut response);
    let (parts, _) = response.into_parts();
    let mut headers = parts.headers;
    let chosen = upgrade_of(&headers);
    strip_hop_by_hop(&mut headers);
    if let Some(value) = chosen {
        restore_upgrade(&mut headers, value);
    }
    Ok(Switch::Yes {
        status: parts.status,
        headers,
        on_upgrade,
        recv,
    })
}

/// What is left after the response head went out.
enum HeadSent {
    /// The body ended with the head: the FIN went out too.
    Ended,
    /// More body (or raw bytes) follows.
    More,
}

/// Phase 4: the response head. A small answer leaves in one write: the head, the body frames
/// already at hand (a short body usually arrives with its head) and, when the body has ended,
/// the FIN. `Err` when the stream is done for (a failure was sent, or the relay went away).
async fn send_head(
    status: StatusCode,
    headers: http::HeaderMap,
    body: Option<&mut ResponseBody>,
    send: &mut FramedSend,
) -> Result<HeadSent, ()> {
    if headers.len() > tunnel_protocol::MAX_HEADERS {
        let message = "too many response header fields";
        fail(send, ErrorCode::BACKEND_BAD_RESPONSE, message).await;
        return Err(());
    }
    let head = StreamFrame::ResponseHead(ResponseHead { status, headers });
    let head_len = head.encoded_len();
    // Room for the body too when its exact length says it follows in this write (below), so
    // that the buffer is not reallocated, head copied, for it. A larger or unknown body goes in
    // writes of its own: nothing is reserved for it.
    let whole_body = body
        .as_ref()
        .and_then(|b| http_body::Body::size_hint(&**b).exact())
        .and_then(|len| usize::try_from(len).ok())
        .map(StreamFrame::data_len)
        .filter(|&len| head_len + len <= COALESCE_BYTES)
        .unwrap_or(0);
    let mut encoded = bytes::BytesMut::with_capacity(head_len + whole_body);
    head.encode(&mut encoded);
    if encoded.len() > MAX_HEAD_FRAME_LEN {
        fail(
            send,
            ErrorCode::BACKEND_BAD_RESPONSE,
            "response head too large",
        )
        .await;
        return Err(());
    }
    let mut ended = false;
    let mut large = None;
    if let Some(body) = body {
        while encoded.len() < COALESCE_BYTES {
            match body.frame().now_or_never() {
                Some(None) => {
                    ended = true;
                    break;
                }
                Some(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if encoded.len() + data.len() <= COALESCE_BYTES => {
                        StreamFrame::Data(data).encode(&mut encoded)
                    }
                    // Large chunks are not copied: they follow in their own write.
                    Ok(data) => {
                        large = Some(data);
                        break;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            StreamFrame::Trailers(trailers).encode(&mut encoded);
                        }
                    }
                },
                Some(Some(Err(e))) => {
                    warn!(error = %e, "backend body failed mid-stream");
                    let _ = send.send_encoded(&encoded).await;
                    send.reset(ErrorCode::BACKEND_ABORTED);
                    return Err(());
                }
                None => break,
            }
        }
    }
    send.send_encoded(&encoded).await.map_err(|_| ())?;
    if ended {
        send.finish();
        return Ok(HeadSent::Ended);
    }
    if let Some(data) = large {
        send.send_data(data).await.map_err(|_| ())?;
    }
    Ok(HeadSent::More)
}

/// Phase 5: the rest of the body, frame by frame, until it ends, fails, or the relay stops it.
async fn stream_body(mut body: ResponseBody, mut send: FramedSend) {
    loop {
        // Why select: a slow backend chunk must not delay noticing that the visitor went away.
        let frame = tokio::select! {
            f = body.frame() => f,
            code = send.stopped() => {
                debug!(?code, "relay stopped the response body");
                return;
            }
        };
        let sent = match frame {
            None => {
                send.finish();
                return;
            }
            Some(Err(e)) => {
                warn!(error = %e, "backend body failed mid-stream");
                send.reset(ErrorCode::BACKEND_ABORTED);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).await,
                    Err(_) => Ok(()),
                },
            },
        };
        if sent.is_err() {
            // The relay stopped or reset the stream; dropping `body` cancels the backend.
            return;
        }
    }
}

/// Most bytes of body gathered behind a response head for its first write.
const COALESCE_BYTES: usize = 16 * 1024;

async fn fail(send: &mut FramedSend, code: ErrorCode, message: &str) {
    let frame = StreamFrame::Error(StreamError {
        code,
        message: message.to_string(),
    });
    if send.send(&frame).await.is_ok() {
        send.finish();
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
