//! The visitor side: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) and the optional plain-HTTP listener.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::certificates::{Certificates, ACME_TLS_ALPN};
use crate::head_timeout::{self, ConnState, Tracked, Watched, PARK_AFTER};
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
    // Every connection's task, so that the shutdown can wait for them.
    let tasks = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(relay.config.limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let http = Arc::new(Http::new(&relay));
    let stop = CancellationToken::new();
    let ends = Ends {
        shutdown: shutdown.clone(),
        stop: stop.clone(),
    };
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
        let http = http.clone();
        let tls = tls.clone();
        let ends = ends.clone();
        let sessions = sessions.clone();
        // The task holds only what an idle connection needs: the TLS branch (handshake state,
        // sessions) is boxed apart, so a plain-HTTP connection's task is not its size.
        tasks.spawn(async move {
            let _permits = (permit, per_ip);
            match tls {
                Some(acceptor) => {
                    Box::pin(serve_tls(
                        relay, acceptor, stream, peer, http, ends, sessions,
                    ))
                    .await
                }
                None => {
                    let limit = relay.config.limits.header_read_timeout;
                    let Some(protocol) = sniff(&stream, limit, &ends.shutdown).await else {
                        return;
                    };
                    let visitor = Visitor::new(peer, "http", None);
                    serve_connection(relay, http, protocol, stream, visitor, ends).await
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    let grace = relay.config.shutdown_grace;
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            ?grace,
            open = tasks.len(),
            "visitor connections still open after the grace period; closing them"
        );
        stop.cancel();
        // Dropping a connection takes no waiting. Connector sessions over TLS/TCP run on this
        // listener's tasks too and are not dropped here: their drain ends them, and the relay
        // waits for that after the ingress.
        let _ = tokio::time::timeout(CLOSE_WAIT, tasks.wait()).await;
    }
}

/// How long the ingress waits for its connections to go once told to drop them.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A connection on the HTTPS listener: the TLS handshake, then by ALPN a connector session, an
/// ACME TLS-ALPN-01 validation, or visitors.
async fn serve_tls(
    relay: Arc<Relay>,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    http: Arc<Http>,
    ends: Ends,
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
        // ALPN decides, as RFC 9113 §3.2 asks; a client that offered none is read to tell.
        let protocol = match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Sniff,
        };
        let visitor = Visitor::new(peer, "https", sni);
        serve_connection(relay, http, protocol, tls_stream, visitor, ends).await
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

/// HTTP's preface on a connection that starts with HTTP/2 (h2c with prior knowledge).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which HTTP a visitor connection speaks, when it is known before hyper reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Not known: hyper-util's reader tells by the first bytes. Knowing it beforehand matters:
    /// that reader hands hyper the first 24 bytes alone, and hyper, finding the head
    /// unfinished in its 8 KiB buffer, doubled the buffer for the next read. Every HTTP/1
    /// connection kept a 16 KiB buffer for its whole life and paid a reallocation and a copy.
    Sniff,
}

/// Reads (without consuming) the first bytes of a plain connection: HTTP/2's preface means h2c
/// with prior knowledge, anything else HTTP/1. `None` when the visitor closes, sends nothing
/// within `limit` (such a connection is closed quietly, as hyper's header timeout closes an
/// idle one), or the relay shuts down first.
async fn sniff(
    stream: &TcpStream,
    limit: Duration,
    shutdown: &CancellationToken,
) -> Option<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    // Why select: a visitor that sends nothing must not hold up the shutdown.
    let n = tokio::select! {
        r = tokio::time::timeout(limit, stream.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        },
        _ = shutdown.cancelled() => return None,
    };
    Some(if first[..n] != H2_PREFACE[..n] {
        Protocol::Http1
    } else if n == H2_PREFACE.len() {
        Protocol::Http2
    } else {
        // The start of the preface, the rest not yet arrived: peeking again would return at
        // once with the same bytes, so hyper-util's reader waits for the rest (within the
        // header read timeout: `Watched`).
        Protocol::Sniff
    })
}

/// The visitor-facing HTTP servers, configured once and shared by every connection.
pub(crate) struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// For connections whose protocol is not known beforehand ([`Protocol::Sniff`]).
    auto: auto::Builder<TokioExecutor>,
}

/// HTTP/1 settings, applied alike to hyper's server and to hyper-util's (same method names).
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
            .max_headers($limits.max_headers)
            .max_buf_size(64 * 1024)
    };
}

/// HTTP/2 settings, applied alike to hyper's server and to hyper-util's.
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($limits.h2_max_concurrent_streams)
            .initial_stream_window_size($limits.h2_stream_window_bytes)
            .initial_connection_window_size($limits.h2_connection_window_bytes)
            .max_header_list_size(16 * 1024)
            .max_send_buf_size(64 * 1024)
            // Rapid reset (CVE-2023-44487) and its server-side twin (CVE-2024-27316-style
            // floods): streams a client resets before they are served, and streams the server
            // had to reset for protocol errors, are bounded; past either bound h2 closes the
            // connection.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
    };
}

impl Http {
    fn new(relay: &Relay) -> Http {
        let limits = &relay.config.limits;
        let mut h1 = http1::Builder::new();
        http1_settings!(h1, limits);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        http2_settings!(h2, limits);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1_settings!(auto.http1(), limits);
        http2_settings!(auto.http2(), limits);
        Http { h1, h2, auto }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper connection that can be asked to finish what it is serving and close.
trait Graceful {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S, B> Graceful for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// How a connection ends besides on its own: the relay's shutdown, the end of its grace
/// period, and (HTTP/2) an idle timeout.
#[derive(Clone)]
struct Ends {
    /// The relay stops taking visitors: each connection finishes what it serves and closes.
    shutdown: CancellationToken,
    /// The grace period is over: what is still open is dropped.
    stop: CancellationToken,
}

/// Runs `conn` to its end; once `shutdown` fires it is asked to finish what it is serving (an
/// HTTP/1 connection closes after its response, an HTTP/2 one sends GOAWAY) and close, and is
/// dropped if it has not when the grace period ends (`stop`). One whose visitor has sent nothing
/// yet (`state`) is closed at once: hyper would wait for its first request, or the HTTP/2
/// preface, up to the header read timeout.
///
/// With `idle` (HTTP/2, whose idle connections hyper keeps for good), a connection on which no
/// request was begun or active for `idle` is asked to close too (GOAWAY), as an idle HTTP/1
/// connection is closed by hyper's header read timeout. Looked at every `idle`, so it closes
/// between one and two `idle`s after its last request ended; a visitor that does not close its
/// side (h2 waits for the answer to its PING before the final GOAWAY) is dropped one `idle`
/// later.
async fn drive<C, E>(
    mut conn: Pin<Box<C>>,
    ends: &Ends,
    state: &ConnState,
    idle: Option<Duration>,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>> + Graceful + ?Sized,
    E: Into<BoxError>,
{
    // Boxed, and only for HTTP/2: an HTTP/1 connection's task does not carry a timer.
    let mut watch = idle.map(|every| Box::pin(tokio::time::sleep(every)));
    let mut seen = state.activity();
    let mut then_drop = None;
    let cancelled = std::pin::pin!(ends.shutdown.cancelled());
    let mut shutdown = tunnel_session::wake::WhenWoken::new(cancelled);
    loop {
        // Why select: the connection may idle indefinitely; the shutdown must reach it at once.
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            () = &mut shutdown => {
                if !state.spoke() {
                    return Ok(());
                }
                break;
            }
            () = elapsed(&mut watch) => {
                let now = state.activity();
                if now == seen && !now.1 {
                    debug!("connection idle; closing it");
                    then_drop = idle;
                    break;
                }
                seen = now;
                if let (Some(sleep), Some(every)) = (watch.as_mut(), idle) {
                    sleep.as_mut().reset(tokio::time::Instant::now() + every);
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    // Why select: a visitor that does not let its connection finish must not outlast the
    // relay's grace period, nor an idle one its last chance.
    tokio::select! {
        r = conn.as_mut() => r.map_err(Into::into),
        _ = ends.stop.cancelled() => Ok(()),
        () = tokio::time::sleep(then_drop.unwrap_or_default()), if then_drop.is_some() => Ok(()),
    }
}

/// When the idle watch's timer fires; never without one.
async fn elapsed(watch: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match watch {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A visitor's stream whose next bytes can be awaited without reading them: a parked HTTP/1
/// connection (`head_timeout`) waits so, holding no buffer.
pub(crate) trait Readable {
    /// Ready when the stream has bytes to read, or has ended or failed.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Readable for TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        TcpStream::readable(self)
    }
}

/// rustls holds no plaintext when a read came back empty, so the socket's bytes are what is
/// next; a part of a record already buffered waits for its rest the same way.
impl Readable for tokio_rustls::server::TlsStream<TcpStream> {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send {
        self.get_ref().0.readable()
    }
}

/// Whether a parked connection's visitor sent more (or closed: hyper reads that) by `until`,
/// before the relay's shutdown. Counted in `relay_visitor_connections_parked` meanwhile.
async fn next_bytes<S: Readable>(
    stream: &S,
    until: tokio::time::Instant,
    shutdown: &CancellationToken,
    metrics: &crate::metrics::Metrics,
) -> bool {
    /// Counts one parked connection for as long as it lives (the task may be dropped).
    struct Counted<'a>(&'a AtomicUsize);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    metrics.visitors_parked.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(&metrics.visitors_parked);
    // Why select: a parked connection may idle indefinitely; the shutdown must close it at once.
    tokio::select! {
        r = tokio::time::timeout_at(until, stream.readable()) => matches!(r, Ok(Ok(()))),
        _ = shutdown.cancelled() => false,
    }
}

async fn serve_connection<S>(
    relay: Arc<Relay>,
    http: Arc<Http>,
    protocol: Protocol,
    stream: S,
    visitor: Visitor,
    ends: Ends,
) where
    S: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
{
    let peer = visitor.peer;
    let header_read_timeout = relay.config.limits.header_read_timeout;
    let visitor = Arc::new(visitor);
    let state = Arc::new(ConnState::default());
    // HTTP/2's preface must come whole within the header read timeout: the h2 handshake has no
    // timer of its own, and hyper-util's version reader wants all 24 bytes.
    let until = match protocol {
        Protocol::Http1 => 1,
        Protocol::Http2 | Protocol::Sniff => H2_PREFACE.len(),
    };
    let park = protocol == Protocol::Http1;
    let metrics = relay.metrics.clone();
    let (stream, slot) = Watched::new(stream, state.clone(), header_read_timeout, until, park);
    let requests = state.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let relay = relay.clone();
        let visitor = visitor.clone();
        // A body of unknown length (chunked, which may be left unread) or a tunnel keeps hyper
        // reading: not parked then. A `Content-Length` body's end is known.
        let length = hyper::body::Body::size_hint(req.body())
            .exact()
            .filter(|_| req.method() != http::Method::CONNECT);
        let active = requests.request(length);
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
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                active.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, active)))
        })
    });
    // Each connection is boxed once, in its final place: as a local moved into `drive`, it
    // would take its size twice over in this future, for the connection's whole life.
    let mut io = TokioIo::new(stream);
    let result = match protocol {
        Protocol::Http1 => loop {
            // hyper's header read timeout closes an idle HTTP/1 connection, unless it was parked
            // first (`head_timeout`): then the rest of that wait is the ingress's own.
            let conn = http
                .h1
                .serve_connection(io, service.clone())
                .with_upgrades();
            let result = drive(Box::pin(conn), &ends, &state, None).await;
            if !(state.take_parked() && result.is_ok()) {
                break result;
            }
            let Some(stream) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                break result;
            };
            // Idle since about one parking delay ago: what is left of the header read timeout
            // covers both the wait for the next bytes and the head they begin.
            let head_by =
                tokio::time::Instant::now() + header_read_timeout.saturating_sub(PARK_AFTER);
            if !next_bytes(&stream, head_by, &ends.shutdown, &metrics).await {
                debug!(%peer, "parked connection idle; closing it");
                break Ok(());
            }
            let watched = Watched::again(stream, state.clone(), slot.clone(), park, Some(head_by));
            io = TokioIo::new(watched);
        },
        Protocol::Http2 => {
            let conn = http.h2.serve_connection(io, service);
            drive(Box::pin(conn), &ends, &state, Some(header_read_timeout)).await
        }
        Protocol::Sniff => {
            // HTTP/1 or HTTP/2. On HTTP/1 hyper's header read timeout closes an idle connection
            // first; the watch, a second later, never races it (a request head begun would
            // otherwise lose its 408).
            let conn = http.auto.serve_connection_with_upgrades(io, service);
            let idle = header_read_timeout + Duration::from_secs(1);
            drive(Box::pin(conn), &ends, &state, Some(idle)).await
        }
    };
    let timed_out = match result {
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
