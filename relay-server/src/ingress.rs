//! The visitor side: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) and the optional plain-HTTP listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::certificates::{Certificates, ACME_TLS_ALPN};
use crate::head_timeout::{self, ConnState, Tracked, Watched};
use crate::proxy::Visitor;
use crate::Relay;

/// Pause after an accept error (EMFILE and kin) so the loop neither spins nor dies.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The TLS config for visitors — TLS 1.2 and 1.3, ALPN h2 and http/1.1 — and for connectors'
/// TLS-over-TCP sessions, told apart by the tunnel's own ALPN (which no browser offers). The
/// certificate is picked by SNI (`certificates.rs`); `acme-tls/1` comes last, for TLS-ALPN-01
/// validations only.
pub(crate) fn tls_acceptor(certificates: Arc<Certificates>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    tls.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        tunnel_protocol::ALPN.to_vec(),
        ACME_TLS_ALPN.to_vec(),
    ];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// Serves visitors on `listener` until `shutdown`; then lets in-flight requests finish for the
/// grace period. `tls` is `None` for the plain-HTTP ingress.
pub(crate) async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(relay.config.limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let builder = builder(&relay);
    loop {
        // Why select: accept blocks; shutdown must stop accepting at once.
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let Some(per_ip) = PerIp::acquire(
            &per_ip,
            peer.ip(),
            relay.config.limits.max_connections_per_ip,
        ) else {
            debug!(%peer, "per-address connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let relay = relay.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let sessions = sessions.clone();
        // The task holds only what an idle connection needs: the TLS branch (handshake state,
        // sessions) is boxed apart, so a plain-HTTP connection's task is not its size.
        tokio::spawn(async move {
            let _permits = (permit, per_ip);
            match tls {
                Some(acceptor) => {
                    Box::pin(serve_tls(
                        relay, acceptor, stream, peer, builder, watcher, sessions,
                    ))
                    .await
                }
                None => {
                    let visitor = Visitor::new(peer, "http", None);
                    serve_connection(relay, builder, stream, visitor, watcher).await
                }
            }
        });
    }
    drop(listener);
    let grace = relay.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "visitor connections still open after the grace period; closing them"
        );
    }
}

/// A connection on the HTTPS listener: the TLS handshake, then by ALPN a connector session, an
/// ACME TLS-ALPN-01 validation, or visitors.
async fn serve_tls(
    relay: Arc<Relay>,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    sessions: TaskTracker,
) {
    // Boxed: the handshake's state is freed once it is done, not kept for the connection's life.
    let handshake = Box::pin(tokio::time::timeout(
        relay.config.limits.tls_handshake_timeout,
        acceptor.accept(stream),
    ))
    .await;
    let tls_stream = match handshake {
        Ok(Ok(tls_stream)) => tls_stream,
        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    };
    let alpn = tls_stream.get_ref().1.alpn_protocol();
    if alpn == Some(tunnel_protocol::ALPN) {
        // A connector session, tracked with the QUIC ones for the drain; boxed, so that a
        // visitor connection's state is not the size of a session's.
        let session = Box::pin(crate::tunnel::session_tcp(relay, tls_stream, peer));
        sessions.track_future(session).await
    } else if alpn == Some(ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation ends with the handshake (RFC 8737).
        debug!(%peer, "acme-tls/1 handshake done");
    } else {
        let sni = tls_stream
            .get_ref()
            .1
            .server_name()
            .map(str::to_ascii_lowercase);
        let visitor = Visitor::new(peer, "https", sni);
        serve_connection(relay, builder, tls_stream, visitor, watcher).await
    }
}

/// One connection counted against its source address; dropping it gives the slot back.
struct PerIp {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        limit: usize,
    ) -> Option<PerIp> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PerIp {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn builder(relay: &Relay) -> auto::Builder<TokioExecutor> {
    let limits = &relay.config.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .max_header_list_size(16 * 1024)
        .max_send_buf_size(64 * 1024)
        // Rapid reset (CVE-2023-44487) and its server-side twin (CVE-2024-27316-style floods):
        // streams a client resets before they are served, and streams the server had to reset
        // for protocol errors, are bounded; past either bound h2 closes the connection.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    b
}

async fn serve_connection<S>(
    relay: Arc<Relay>,
    builder: auto::Builder<TokioExecutor>,
    stream: S,
    visitor: Visitor,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = visitor.peer;
    let header_read_timeout = relay.config.limits.header_read_timeout;
    let visitor = Arc::new(visitor);
    let state = Arc::new(ConnState::default());
    let (stream, slot) = Watched::new(stream, state.clone(), header_read_timeout);
    let requests = state.clone();
    let service = service_fn(move |req| {
        let relay = relay.clone();
        let visitor = visitor.clone();
        let active = requests.request();
        // Boxed: hyper keeps a slot the size of this future for the connection's whole life,
        // idle or not; boxed, an idle keep-alive connection holds a pointer instead of the
        // request path's state machine.
        Box::pin(async move {
            // HTTP-01 validations arrive on the plain listener (RFC 8555 §8.3).
            if visitor.scheme == "http" {
                if let Some(answer) = relay.certificates.http_answer(req.uri().path()) {
                    let response = crate::certificates::http01_response(answer);
                    return Ok(response.map(|body| Tracked::new(body, active)));
                }
            }
            let response = crate::proxy::handle(relay, req, visitor).await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active)))
        })
    });
    // Boxed once, in its final place: as a local moved into `watch`, the connection took its
    // size twice over in this future, for the connection's whole life.
    let conn = Box::pin(
        watcher.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        ),
    );
    let timed_out = match conn.await {
        Ok(()) => false,
        Err(e) => {
            debug!(%peer, error = %e, "visitor connection ended with an error");
            head_timeout::is_head_timeout(&*e)
        }
    };
    if timed_out {
        head_timeout::answer(&state, &slot, header_read_timeout).await;
    }
}
