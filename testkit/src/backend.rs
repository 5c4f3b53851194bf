//! A backend that records what it receives (the parsed requests, and the raw bytes) and answers
//! by path:
//!
//! | path | answer |
//! |---|---|
//! | `/bytes/{n}` | `n` bytes of a deterministic pattern, streamed in 64 KiB chunks |
//! | `/sink` | reads the whole body; answers `"{len} {sha256}"` |
//! | `/slow` | `first\n`, then waits for [`Backend::release`] (≤ 30 s), then `second\n` |
//! | `/hold` | 1 KiB every 10 ms until the reader goes away |
//! | `/sleep/{ms}` | waits, then `slept` |
//! | `/status/{code}` | that status, empty body |
//! | `/fail-until/{n}` | 500 while `x-relay-attempt` < n, then 200 `delivered on {attempt}` |
//! | `/upgrade-echo` | `101` to the first protocol the request's `Upgrade` offers (any, `h2c` too, as an h2c-capable server would), then echoes raw bytes; `200 not upgraded` to a request that asks for no upgrade |
//! | `/switch-anyway` | `101` with `Upgrade: h2c`, whatever the request asked for |
//! | `/trailers` | two data chunks, then trailers `grpc-status: 0`, `x-trailer: yes` (gRPC-shaped) |
//! | anything else | 200, `x-echo-method`/`x-echo-path` headers, the request body streamed back |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Chunk size of generated bodies.
const CHUNK: usize = 64 * 1024;

/// What the backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// HTTP version (over TLS: what ALPN chose).
    pub version: http::Version,
}

#[derive(Debug, Default)]
struct Shared {
    requests: AtomicU64,
    connections: AtomicU64,
    active_streams: AtomicI64,
    seen: Mutex<Vec<Seen>>,
    raw: Mutex<Vec<u8>>,
    release: Notify,
}

/// Most raw bytes a backend keeps ([`Backend::raw`]); later bytes are not recorded.
const RAW_CAP: usize = 4 << 20;

/// A connection whose received bytes are appended to the backend's raw record, as read.
struct Recording {
    inner: tokio::net::TcpStream,
    shared: Arc<Shared>,
}

impl tokio::io::AsyncRead for Recording {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            let mut raw = this.shared.raw.lock().unwrap_or_else(|p| p.into_inner());
            let room = RAW_CAP.saturating_sub(raw.len());
            raw.extend_from_slice(&new[..new.len().min(room)]);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Recording {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running backend; it stops when dropped.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    tls: Option<(std::path::PathBuf, tempfile::TempDir)>,
}

impl Backend {
    /// Starts on `127.0.0.1:0`.
    pub async fn spawn() -> Backend {
        Backend::spawn_on("127.0.0.1:0".parse().expect("literal")).await
    }

    /// Starts on `addr` (e.g. a veth address a network namespace can reach).
    pub async fn spawn_on(addr: std::net::SocketAddr) -> Backend {
        Backend::start(addr, None).await
    }

    /// Starts on `127.0.0.1:0` behind TLS (ALPN `h2` and `http/1.1`) with a certificate for
    /// `localhost` only, issued by a CA made for this backend ([`Backend::ca_cert`]); its URL is
    /// `https://localhost:PORT`.
    pub async fn spawn_tls() -> Backend {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "testkit backend CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .and_then(|p| p.signed_by(&key, &ca))
            .expect("leaf cert");
        let ca_path = dir.path().join("backend-ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("TLS config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut backend =
            Backend::start("127.0.0.1:0".parse().expect("literal"), Some(acceptor)).await;
        backend.tls = Some((ca_path, dir));
        backend
    }

    async fn start(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                s.connections.fetch_add(1, Ordering::Relaxed);
                let (s, tls) = (s.clone(), tls.clone());
                let stream = Recording {
                    inner: stream,
                    shared: s.clone(),
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(Ok(stream)) = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            shared,
            task,
            tls: None,
        }
    }

    /// The CA that issued a TLS backend's certificate (PEM).
    pub fn ca_cert(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|(path, _)| path.as_path())
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS backend.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Streaming responses (`/hold`, `/bytes`) still being produced.
    pub fn active_streams(&self) -> i64 {
        self.shared.active_streams.load(Ordering::SeqCst)
    }

    /// What the backend saw, oldest first (the last 1000 requests).
    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every byte received on every connection so far, in arrival order (TLS backends: the
    /// encrypted bytes), up to the first 4 MiB.
    pub fn raw(&self) -> Vec<u8> {
        self.shared
            .raw
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets waiting `/slow` responses finish.
    pub fn release(&self) {
        self.shared.release.notify_waiters();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The SHA-256 (hex) of the first `n` bytes of the `/bytes` pattern.
pub fn pattern_sha256(n: u64) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(CHUNK as u64) as usize;
        ctx.update(&pattern_chunk(sent, len));
        sent += len as u64;
    }
    crate::hex(ctx.finish().as_ref())
}

/// The pattern's period: byte `i` is `i % 251`.
const PERIOD: usize = 251;

/// The pattern bytes at `offset..offset+len` (`len` ≤ 64 KiB), sliced from one precomputed run.
pub fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    static RUN: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        (0..CHUNK + PERIOD)
            .map(|i| (i % PERIOD) as u8)
            .collect::<Vec<u8>>()
            .into()
    });
    assert!(len <= CHUNK, "pattern chunks are at most 64 KiB");
    let start = (offset % PERIOD as u64) as usize;
    run.slice(start..start + len)
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn active(shared: &Arc<Shared>) -> ActiveGuard {
    shared.active_streams.fetch_add(1, Ordering::SeqCst);
    ActiveGuard(shared.clone())
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    {
        let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 1000 {
            seen.remove(0);
        }
        seen.push(Seen {
            method: req.method().to_string(),
            path: path.clone(),
            headers: req.headers().clone(),
            version: req.version(),
        });
    }
    let p = req.uri().path().to_string();
    if let Some(n) = p.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        let guard = active(&shared);
        let stream = futures_util::stream::unfold((0u64, guard), move |(sent, guard)| async move {
            if sent >= n {
                return None;
            }
            let len = (n - sent).min(CHUNK as u64) as usize;
            let chunk = pattern_chunk(sent, len);
            Some((
                Ok::<_, BoxError>(Frame::data(chunk)),
                (sent + len as u64, guard),
            ))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
        return resp;
    }
    match p.as_str() {
        "/upgrade-echo" | "/switch-anyway" => {
            let asked = req
                .headers()
                .get_all("connection")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            let offered = req
                .headers()
                .get("upgrade")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|p| p.trim().to_string())
                .filter(|p| asked && !p.is_empty());
            let protocol = match (p.as_str(), offered) {
                ("/switch-anyway", _) => "h2c".to_string(),
                (_, Some(protocol)) => protocol,
                (_, None) => return text(StatusCode::OK, "not upgraded"),
            };
            // Switches protocols, then echoes raw bytes until the peer closes.
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                }
            });
            let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
            resp.headers_mut()
                .insert("connection", "upgrade".parse().expect("static"));
            if let Ok(v) = protocol.parse() {
                resp.headers_mut().insert("upgrade", v);
            }
            resp
        }
        "/trailers" => {
            // A gRPC-shaped answer: data, then trailers; says which HTTP version and TE it saw.
            let version = format!("{:?}", req.version());
            let te = req
                .headers()
                .get("te")
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("static"));
            trailers.insert("x-trailer", "yes".parse().expect("static"));
            let frames = vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"part-1;"))),
                Ok(Frame::data(Bytes::from_static(b"part-2"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(
                futures_util::stream::iter(frames),
            )));
            resp.headers_mut()
                .insert("x-seen-version", version.parse().expect("version"));
            if let Ok(v) = te.parse() {
                resp.headers_mut().insert("x-seen-te", v);
            }
            resp
        }
        "/sink" => {
            let mut body = req.into_body();
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            len += d.len() as u64;
                            ctx.update(&d);
                        }
                    }
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body failed"),
                }
            }
            text(
                StatusCode::OK,
                &format!("{len} {}", crate::hex(ctx.finish().as_ref())),
            )
        }
        "/slow" => Response::new(two_parts(&shared, "first\n", "second\n")),
        "/sse" => {
            // Server-sent events: one event now, the next when the test releases the backend.
            let mut resp = Response::new(two_parts(
                &shared,
                "event: tick\ndata: first\n\n",
                "data: second\n\n",
            ));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache"),
            );
            resp
        }
        "/hold" => {
            let guard = active(&shared);
            let stream = futures_util::stream::unfold(guard, |guard| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 1024]))),
                    guard,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        _ if p.starts_with("/sleep/") => {
            let ms: u64 = p["/sleep/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slept")
        }
        "/redirect" => {
            let mut resp = text(StatusCode::FOUND, "moved");
            resp.headers_mut().insert(
                http::header::LOCATION,
                http::HeaderValue::from_static("http://elsewhere.invalid/next"),
            );
            resp
        }
        // Queue mode: 500 until the relay's `x-relay-attempt` reaches N, then `delivered on N`.
        _ if p.starts_with("/fail-until/") => {
            let n: i64 = p["/fail-until/".len()..].parse().unwrap_or(1);
            let attempt: i64 = req
                .headers()
                .get("x-relay-attempt")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            if attempt < n {
                text(StatusCode::INTERNAL_SERVER_ERROR, "not yet")
            } else {
                text(StatusCode::OK, &format!("delivered on {attempt}"))
            }
        }
        // Answers and closes the connection.
        "/close" => {
            let mut resp = text(StatusCode::OK, "closing");
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            resp
        }
        _ if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            text(code.unwrap_or(StatusCode::BAD_REQUEST), "")
        }
        _ => {
            let method = req.method().to_string();
            let body =
                BodyStream::new(req.into_body()).map(|r| r.map_err(|e| Box::new(e) as BoxError));
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(body)));
            resp.headers_mut().insert(
                "x-echo-method",
                method.parse().expect("method is a valid header"),
            );
            if let Ok(v) = path.parse() {
                resp.headers_mut().insert("x-echo-path", v);
            }
            resp
        }
    }
}

/// A body that sends `first` at once and `second` when the test calls `release` (or after 30 s).
fn two_parts(shared: &Arc<Shared>, first: &'static str, second: &'static str) -> Body {
    let s = shared.clone();
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let s = s.clone();
        async move {
            match step {
                0 => Some((
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(first.as_bytes()))),
                    1,
                )),
                1 => {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), s.release.notified()).await;
                    Some((Ok(Frame::data(Bytes::from_static(second.as_bytes()))), 2))
                }
                _ => None,
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn text(status: StatusCode, s: &str) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed(
        Full::new(Bytes::from(s.to_string())).map_err(|n: Infallible| match n {}),
    ));
    *resp.status_mut() = status;
    resp
}
