//! HTTP/1.1 backend connections, pooled per target without a task per request.
//!
//! hyper-util's pool hands a connection back through a task it spawns after every response,
//! hashes a pool key per request, and waits on a lock shared by every target. Here the request's
//! own stream hands the connection back when the response body ends (or is dropped at its end),
//! and a checkout takes the most recently used connection of the target's own list. HTTP/2
//! targets keep hyper-util's client, which multiplexes on one connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;
use tracing::debug;
use tunnel_session::headers::connection_has;

use crate::backend::{BackendBody, BoxError};

/// How long a checkout waits for a pooled connection to take a request. A connection is handed
/// back when its response ends; hyper marks it ready in the same turn, so this is only a bound.
const READY_WAIT: Duration = Duration::from_secs(1);

/// Why a pooled call failed before its response head.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection to the backend could be made.
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed (or the backend answered badly) after the request was handed over.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<BackendBody>,
    since: Instant,
}

/// The idle HTTP/1.1 connections to one target, most recently used last.
pub(crate) struct H1Pool {
    connector: HttpsConnector<HttpConnector>,
    /// The target's authority as a `Host` value, for requests that carry none.
    host: Option<HeaderValue>,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("host", &self.host)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        target: &Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> H1Pool {
        H1Pool {
            connector,
            host: host_value(target),
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Sends `req` (absolute URI) on an idle connection, or on a new one. A request refused by a
    /// pooled connection before any of it was written (the backend closed it meanwhile) is sent
    /// again on the next one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<BackendBody>,
    ) -> Result<Response<Pooled>, PoolError> {
        let target = req.uri().clone();
        if let Some(host) = &self.host {
            req.headers_mut()
                .entry(HOST)
                .or_insert_with(|| host.clone());
        }
        *req.uri_mut() = origin_form(&target);
        while let Some(mut sender) = self.checkout() {
            if !matches!(
                tokio::time::timeout(READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            ) {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.pooled(response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        debug!(error = %e.error(), "pooled backend connection refused the request; trying another");
                        req = back;
                    }
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(PoolError::Connect)?;
        let io = connector.call(target).await.map_err(PoolError::Connect)?;
        // Boxed: inline, the handshake's 2.4 KiB state would be part of every request's future
        // (allocated and moved whole per stream), though most requests take a pooled connection.
        let (mut sender, conn) = Box::pin(http1::handshake(io))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "backend connection ended with an error");
            }
        });
        let response = sender.send_request(req).await.map_err(PoolError::Http)?;
        Ok(self.pooled(response, sender))
    }

    /// The most recently used idle connection that is neither closed nor too old.
    fn checkout(&self) -> Option<http1::SendRequest<BackendBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(entry) = idle.pop_back() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<BackendBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|e| e.since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The response, with its connection to be handed back at the end of the body unless the
    /// connection cannot carry another request (a protocol switch, `Connection: close`).
    fn pooled(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: http1::SendRequest<BackendBody>,
    ) -> Response<Pooled> {
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS
            && response.version() == http::Version::HTTP_11
            && !connection_has(response.headers(), "close");
        let back = reusable.then(|| (sender, self.clone()));
        response.map(|body| Pooled { body, back })
    }
}

/// A response body from a pooled connection; the connection goes back to its pool when the body
/// has ended, not before.
pub(crate) struct Pooled {
    body: Incoming,
    back: Option<(http1::SendRequest<BackendBody>, Arc<H1Pool>)>,
}

impl http_body::Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Pooled {
    /// The body has been read to its end: the connection can take the next request.
    fn ended(&mut self) {
        let Some((mut sender, pool)) = self.back.take() else {
            return;
        };
        if sender.is_ready() {
            return pool.checkin(sender);
        }
        // Still busy: the backend answered before the request body was all sent (a 401 or 413
        // to an upload, say), or hyper has not seen the end yet. It goes back once it can take
        // a request; a checkout never waits on it meanwhile.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let ready = tokio::time::timeout(pool.idle_timeout, sender.ready()).await;
                if let Ok(Ok(())) = ready {
                    pool.checkin(sender);
                }
            });
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // Dropped at its end (a reader that stops at `is_end_stream`, a HEAD, a 204): reusable.
        // Dropped earlier, the sender goes with it and hyper closes the connection.
        if self.body.is_end_stream() {
            self.ended();
        }
    }
}

/// The request target as an HTTP/1.1 origin server expects it: path and query only.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Uri::from(pq.clone()),
        _ => Uri::from_static("/"),
    }
}

/// `host[:port]`, the port only when it is not the scheme's default.
fn host_value(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_leave_default_ports_out() {
        let host = |u: &str| host_value(&u.parse().unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:8080/base"), "127.0.0.1:8080");
        assert_eq!(host("http://example.com:80/"), "example.com");
        assert_eq!(host("https://example.com/"), "example.com");
        assert_eq!(host("https://example.com:8443"), "example.com:8443");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let of = |u: &str| origin_form(&u.parse().unwrap()).to_string();
        assert_eq!(of("http://h:1/a/b?c=d"), "/a/b?c=d");
        assert_eq!(of("http://h:1"), "/");
    }
}
