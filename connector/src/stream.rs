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

use crate::backend::{Backend, Backends};
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
        proxy(head, backend, send, recv).await;
    }
    .instrument(span)
    .await
}

async fn proxy(head: RequestHead, backend: &Backend, mut send: FramedSend, recv: FramedRecv) {
    let uri = match backend.uri(&head.path_and_query) {
        Ok(uri) => uri,
        Err(e) => {
            fail(
                &mut send,
                ErrorCode::PROTOCOL_ERROR,
                &format!("bad path: {e}"),
            )
            .await;
            return;
        }
    };
    if head.method == http::Method::CONNECT {
        // The relay refuses CONNECT; a target is a base URL, never a tunnel to anywhere.
        fail(
            &mut send,
            ErrorCode::PROTOCOL_ERROR,
            "CONNECT is not forwarded",
        )
        .await;
        return;
    }
    let mut headers = head.headers;
    // An upgrade (WebSocket) keeps the stream for raw bytes after the backend's 101; only the
    // protocols the target allows are offered to the backend, never h2c.
    let upgrade = upgrade_of(&headers)
        .filter(|_| head.content_length == Some(0))
        .and_then(|v| allowed_upgrade(&v, |p| backend.target.allows_upgrade(p)));
    strip_hop_by_hop(&mut headers);
    headers.remove(http::header::HOST);
    if backend.target.preserve_host {
        // The relay set X-Forwarded-Host from the visitor's Host (or its trusted proxy's).
        if let Some(host) = headers.get("x-forwarded-host").cloned() {
            headers.insert(http::header::HOST, host);
        }
    }
    if let Some(len) = head.content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    // The response timeout runs from the end of the request body, not from its start: a large
    // upload to a slow backend is not a timeout.
    let (body_done, body_sent) = tokio::sync::oneshot::channel::<()>();
    let (body, upgrade_recv) = match upgrade.clone() {
        Some(value) => {
            restore_upgrade(&mut headers, value);
            (TunnelBody::empty(body_done), Some(recv))
        }
        None => (TunnelBody::new(recv, head.content_length, body_done), None),
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;

    let timeout = backend.target.timeout;
    // Why select: the relay stops the stream when the visitor goes away; the backend request is
    // then dropped, which cancels it, instead of waiting for a response nobody will read.
    let deadline = async {
        let _ = body_sent.await;
        tokio::time::sleep(timeout).await;
    };
    let response = tokio::select! {
        r = backend.send(req) => Ok(r),
        _ = deadline => Err(()),
        code = send.stopped() => {
            debug!(?code, "relay cancelled the request before the response head");
            return;
        }
    };
    let response = match response {
        Err(_) => {
            fail(
                &mut send,
                ErrorCode::BACKEND_TIMEOUT,
                &format!("no response head within {timeout:?}"),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            let code = if e.is_connect() {
                ErrorCode::BACKEND_UNAVAILABLE
            } else {
                ErrorCode::BACKEND_BAD_RESPONSE
            };
            warn!(error = %error_chain(&e), "backend request failed");
            fail(&mut send, code, &error_chain(&e)).await;
            return;
        }
        Ok(Ok(r)) => r,
    };
    let mut response = response;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && !upgrade
            .as_ref()
            .is_some_and(|offered| upgrade_answers(offered, response.headers().get(UPGRADE)))
    {
        // A switch nobody asked for (or to another protocol) would hand the visitor's
        // connection to whatever the backend speaks next.
        warn!("backend switched protocols without a matching upgrade request");
        fail(
            &mut send,
            ErrorCode::BACKEND_BAD_RESPONSE,
            "101 without a matching upgrade request",
        )
        .await;
        return;
    }
    let switching = upgrade_recv.is_some() && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let on_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (parts, mut body) = response.into_parts();
    let mut headers = parts.headers;
    let answer_upgrade = upgrade_of(&headers);
    strip_hop_by_hop(&mut headers);
    if let (true, Some(value)) = (switching, answer_upgrade) {
        restore_upgrade(&mut headers, value);
    }
    if headers.len() > tunnel_protocol::MAX_HEADERS {
        fail(
            &mut send,
            ErrorCode::BACKEND_BAD_RESPONSE,
            "too many response header fields",
        )
        .await;
        return;
    }
    let head = StreamFrame::ResponseHead(ResponseHead {
        status: parts.status,
        headers,
    });
    let mut encoded = bytes::BytesMut::new();
    head.encode(&mut encoded);
    if encoded.len() > MAX_HEAD_FRAME_LEN {
        fail(
            &mut send,
            ErrorCode::BACKEND_BAD_RESPONSE,
            "response head too large",
        )
        .await;
        return;
    }
    // A small answer leaves in one write: the head, the body frames already at hand (a short
    // body usually arrives with its head) and, when the body has ended, the FIN.
    let mut ended = false;
    let mut large = None;
    if on_upgrade.is_none() {
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
                    return;
                }
                None => break,
            }
        }
    }
    if send.send_encoded(&encoded).await.is_err() {
        return;
    }
    if ended {
        send.finish();
        return;
    }
    if let Some(data) = large {
        if send.send_data(data).await.is_err() {
            return;
        }
    }
    if let (Some(on_upgrade), Some(recv)) = (on_upgrade, upgrade_recv) {
        match on_upgrade.await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), send, recv).await,
            Err(e) => warn!(error = %e, "backend upgrade failed after its 101"),
        }
        return;
    }
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
