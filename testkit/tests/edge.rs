//! What the edge guarantees about paths, upgrades and methods (docs/security.md), against the real
//! relay, connector and a recording backend, over raw sockets (curl and hyper would normalise or
//! refuse to send most of these requests).

use std::time::Duration;

use relay_server::testing::relay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::connect;

/// Sends `request` as it is to the relay's plain-HTTP ingress; returns the status (`"close"`
/// when the relay closed without answering) and everything the relay sent.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    // Until the relay closes; after a 101, until the end of its head (the connection stays open).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.starts_with(b"HTTP/1.1 101") && got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_string();
    let status = match text.split_whitespace().nth(1) {
        Some(s) => s.to_string(),
        None => "close".to_string(),
    };
    (status, text)
}

/// Reads a response head from `s`, byte by byte so that nothing after it is consumed.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("a response head within 5 s")
            .unwrap();
        head.push(b[0]);
    }
    head
}

/// Reads `s` to its end in a task: when the relay closed it, and what it sent before.
fn closed_at<S>(mut s: S) -> tokio::task::JoinHandle<(std::time::Instant, Vec<u8>)>
where
    S: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        (std::time::Instant::now(), rest)
    })
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// The path the backend received, decoded the most generous way (percent-decoding until stable,
/// `\` as `/`), then normalised: what a lenient backend would serve.
fn served_path(received: &str) -> String {
    let mut p = received.split('?').next().unwrap_or_default().to_string();
    for _ in 0..4 {
        let mut out = Vec::new();
        let b = p.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (b[i], hex) {
                (b'%', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        p = String::from_utf8_lossy(&out).replace('\\', "/");
    }
    let mut stack: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            _ => stack.push(seg),
        }
    }
    format!("/{}", stack.join("/"))
}

#[tokio::test]
async fn traversal_never_leaves_a_targets_prefix() {
    let relay = relay().spawn().await;
    let backend = testkit::Backend::spawn().await;
    let base = backend.url();
    let _conn = connect(&relay, "acme", |c| {
        c.target("static", &format!("{base}/public"))
    })
    .await;
    let addr = relay.http_addr.unwrap();

    // Refused with 400 before anything reaches the connector: every encoding of a dot-segment
    // or separator that would (or might, on some server) climb out of /public.
    let refused = [
        "/relay/acme/static/../secret.txt",
        "/relay/acme/static/x/../../secret.txt",
        "/relay/acme/static/..%2fsecret.txt",
        "/relay/acme/static/..%2Fsecret.txt",
        "/relay/acme/static/x/..%2f..%2fsecret.txt",
        "/relay/acme/static/%2e%2e/secret.txt",
        "/relay/acme/static/%2E%2e%2fsecret.txt",
        "/relay/acme/static/.%2e/secret.txt",
        "/relay/acme/static/%252e%252e/secret.txt",
        "/relay/acme/static/%252e%252e%252fsecret.txt",
        "/relay/acme/static/..%252fsecret.txt",
        "/relay/acme/static/%25252e%25252e/secret.txt",
        "/relay/acme/static/..%5csecret.txt",
        "/relay/acme/static/..%5Csecret.txt",
        "/relay/acme/static/x\\..\\..\\secret.txt",
        "/relay/acme/static/..\\secret.txt",
        "/relay/acme/static/..%255csecret.txt",
        "/relay/acme/static/..;/secret.txt",
        "/relay/acme/static/%c0%ae%c0%ae/secret.txt",
        "/relay/acme/static/..%c0%afsecret.txt",
        "/relay/acme/static/%u002e%u002e/secret.txt",
        "/relay/acme/static/%ef%bc%8e%ef%bc%8e/secret.txt",
        "/relay/acme/static/secret%00.txt",
    ];
    for path in refused {
        let before = backend.requests();
        let (status, text) = raw(addr, &get(path, "")).await;
        assert_eq!(status, "400", "{path}: {text}");
        assert_eq!(backend.requests(), before, "{path} reached the backend");
    }

    // Paths that stay inside pass, byte for byte as the visitor sent them.
    let passed = [
        ("/relay/acme/static/a/b.txt", "/public/a/b.txt"),
        ("/relay/acme/static/x/../b.txt", "/public/x/../b.txt"),
        ("/relay/acme/static/x%2Fy", "/public/x%2Fy"),
        ("/relay/acme/static/100%25", "/public/100%25"),
        ("/relay/acme/static/a;v=1/b", "/public/a;v=1/b"),
        ("/relay/acme/static/..a/b..", "/public/..a/b.."),
    ];
    for (path, want) in passed {
        let (status, text) = raw(addr, &get(path, "")).await;
        assert_eq!(status, "200", "{path}: {text}");
        let seen = backend.seen();
        let last = seen.last().expect("a request");
        assert_eq!(last.path, want, "{path}");
    }

    // Whatever reached the backend, read the most generous way, is below /public.
    for s in backend.seen() {
        let served = served_path(&s.path);
        assert!(
            served == "/public" || served.starts_with("/public/"),
            "{} is served as {served}",
            s.path
        );
    }
}

#[tokio::test]
async fn h2c_is_never_forwarded_and_websocket_still_works() {
    let relay = relay().spawn().await;
    let backend = testkit::Backend::spawn().await;
    let base = backend.url();
    let _conn = connect(&relay, "acme", |c| {
        c.target("app", &base)
            .target_with("closed", &base, |t| t.upgrades = Some(Vec::new()))
            .target_with("custom", &base, |t| {
                t.upgrades = Some(vec!["x-custom".into()])
            })
    })
    .await;
    let addr = relay.http_addr.unwrap();
    let path = "/relay/acme/app/upgrade-echo";

    // Every spelling of an h2c upgrade: the backend (which would switch to anything it is
    // offered) sees an ordinary request, and the visitor never gets a 101.
    let settings = "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let spellings = [
        format!("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n{settings}"),
        format!("Connection: upgrade\r\nUpgrade: H2C\r\n{settings}"),
        format!("Connection: keep-alive, UPGRADE\r\nUpgrade: h2c/1\r\n{settings}"),
        format!("Connection: Upgrade\r\nUpgrade:   h2c   \r\n{settings}"),
        "Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n".to_string(),
        format!("Connection: HTTP2-Settings\r\nConnection: Upgrade\r\nUpgrade: h2C\r\n{settings}"),
        format!("Upgrade: h2c\r\n{settings}"),
    ];
    for extra in &spellings {
        let raw_before = backend.raw().len();
        let (status, text) = raw(addr, &get(path, extra)).await;
        assert_eq!(status, "200", "{extra:?}: {text}");
        assert!(text.ends_with("not upgraded"), "{extra:?}: {text}");
        let seen = String::from_utf8_lossy(&backend.raw()[raw_before..]).to_lowercase();
        assert!(
            !seen.contains("h2c"),
            "{extra:?} reached the backend: {seen}"
        );
        assert!(!seen.contains("http2-settings"), "{extra:?}: {seen}");
        assert!(!seen.contains("\r\nupgrade:"), "{extra:?}: {seen}");
        assert!(!seen.contains("connection: upgrade"), "{extra:?}: {seen}");
    }

    // h2c offered beside websocket: only websocket is offered on.
    let raw_before = backend.raw().len();
    let (status, text) = raw(
        addr,
        &get(path, "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n"),
    )
    .await;
    assert_eq!(status, "101", "{text}");
    assert!(text.to_lowercase().contains("upgrade: websocket"), "{text}");
    let seen = String::from_utf8_lossy(&backend.raw()[raw_before..]).to_lowercase();
    assert!(!seen.contains("h2c"), "{seen}");

    // WebSocket switches and carries bytes both ways.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /relay/acme/app/upgrade-echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("the echo")
        .unwrap();
    assert_eq!(&echo, b"ping");

    // A target's allow-list: none at all, or a protocol of its own.
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let (status, text) = raw(addr, &get("/relay/acme/closed/upgrade-echo", ws)).await;
    assert_eq!(
        status, "200",
        "websocket on a target without upgrades: {text}"
    );
    let (status, text) = raw(addr, &get("/relay/acme/custom/upgrade-echo", ws)).await;
    assert_eq!(
        status, "200",
        "websocket on a target that allows x-custom only: {text}"
    );
    let custom = "Connection: Upgrade\r\nUpgrade: x-custom\r\n";
    let (status, text) = raw(addr, &get("/relay/acme/custom/upgrade-echo", custom)).await;
    assert_eq!(status, "101", "{text}");

    // A backend that switches when nobody asked, or to another protocol than offered: 502.
    for extra in ["", ws] {
        let (status, text) = raw(addr, &get("/relay/acme/app/switch-anyway", extra)).await;
        assert_eq!(status, "502", "{extra:?}: {text}");
    }
}

#[tokio::test]
async fn connect_is_refused() {
    let relay = relay().spawn().await;
    let (backend, _conn) = serve_app(&relay).await;
    let addr = relay.http_addr.unwrap();
    for request in [
        "CONNECT /relay/acme/app/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
        "CONNECT a:80 HTTP/1.1\r\nHost: a:80\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = raw(addr, request.as_bytes()).await;
        assert!(status == "405" || status == "400", "{request:?}: {text}");
        if status == "405" {
            assert!(text.to_lowercase().contains("\r\nallow: "), "{text}");
        }
    }
    assert_eq!(backend.requests(), 0, "a CONNECT reached the backend");
    // The relay still serves the tenant.
    let (status, _) = raw(addr, &get("/relay/acme/app/ok", "")).await;
    assert_eq!(status, "200");
}

/// HTTP/1.1 and HTTP/2 are told apart every way a visitor can choose: by ALPN, by HTTP/2's
/// preface on the plain listener (h2c with prior knowledge, whole or split over two writes, and
/// an HTTP/1 request whose first write is a prefix of the preface), and by the first bytes on
/// TLS without ALPN. A TLS client that speaks another protocol than its ALPN is refused.
#[tokio::test]
async fn http1_and_http2_are_told_apart_every_way_a_visitor_picks_them() {
    let relay = relay().spawn().await;
    let (backend, _conn) = serve_app(&relay).await;

    // The plain listener: HTTP/1.1, h2c with prior knowledge, h2c whose preface arrives in two
    // parts (the relay must wait for the rest, not take it for HTTP/1), and an HTTP/1 request
    // whose first byte, `P`, could start the preface.
    let plain = relay.http_addr.unwrap();
    let tcp = || tokio::net::TcpStream::connect(plain);
    let pause = Duration::from_millis(300);
    assert_eq!(h1(tcp().await.unwrap(), "GET").await, Ok(200));
    assert_eq!(h2(tcp().await.unwrap(), "http").await, Ok(200));
    let split = SplitFirstWrite::new(tcp().await.unwrap(), 5, pause);
    assert_eq!(h2(split, "http").await, Ok(200));
    let split = SplitFirstWrite::new(tcp().await.unwrap(), 1, pause);
    assert_eq!(h1(split, "POST").await, Ok(200));

    // TLS: by ALPN, and without ALPN by the first bytes.
    for (alpn, two) in [
        (Some("h2"), true),
        (Some("http/1.1"), false),
        (None, true),
        (None, false),
    ] {
        let tls = tls_to(&relay, alpn).await;
        let status = if two {
            h2(tls, "https").await
        } else {
            h1(tls, "GET").await
        };
        assert_eq!(status, Ok(200), "ALPN {alpn:?}, HTTP/2: {two}");
    }
    assert_eq!(backend.requests(), 8);

    // ALPN is binding (RFC 9113 §3.2): HTTP/2 after `http/1.1`, or HTTP/1 after `h2`, is refused.
    let wrong = h2(tls_to(&relay, Some("http/1.1")).await, "https").await;
    assert!(wrong.is_err(), "{wrong:?}");
    let wrong = h1(tls_to(&relay, Some("h2")).await, "GET").await;
    assert!(wrong.is_err(), "{wrong:?}");
    assert_eq!(backend.requests(), 8);
}

/// At shutdown, connections whose visitor has sent nothing yet are closed at once, on every
/// path (the plain listener's peek, TLS with either ALPN, and a partial preface the version
/// reader waits on), instead of holding the shutdown for the header read timeout (10 s).
#[tokio::test]
async fn shutdown_does_not_wait_for_connections_that_sent_nothing() {
    use tokio::io::AsyncWriteExt;
    let relay = relay().spawn().await;
    let plain = relay.http_addr.unwrap();
    let silent = tokio::net::TcpStream::connect(plain).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(plain).await.unwrap();
    partial.write_all(b"PRI * HT").await.unwrap();
    let h1 = tls_to(&relay, Some("http/1.1")).await;
    let h2 = tls_to(&relay, Some("h2")).await;
    let none = tls_to(&relay, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(8), relay.stop())
        .await
        .expect("the relay stops without waiting for silent connections")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop((silent, partial, h1, h2, none));
}

/// A partial HTTP/2 preface followed by silence (the version reader waits for the rest) holds
/// its connection no longer than the header read timeout, on the plain listener and on TLS
/// without ALPN or with `h2`.
#[tokio::test]
async fn a_partial_preface_is_held_no_longer_than_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = relay()
        .configure(|f| f.limits.header_read_timeout = Some(Duration::from_secs(1)))
        .spawn()
        .await;
    async fn closed_after<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
    ) -> Duration {
        s.write_all(b"PRI * HT").await.unwrap();
        s.flush().await.unwrap();
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest))
            .await
            .expect("the relay closes the connection");
        started.elapsed()
    }
    let plain = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    let held = closed_after(plain).await;
    assert!(held >= Duration::from_millis(700), "closed early: {held:?}");
    let held = closed_after(tls_to(&relay, None).await).await;
    assert!(held >= Duration::from_millis(500), "closed early: {held:?}");
    // With ALPN `h2` the preface must come whole too: hyper's HTTP/2 handshake has no timer.
    let held = closed_after(tls_to(&relay, Some("h2")).await).await;
    assert!(held >= Duration::from_millis(500), "closed early: {held:?}");
}

/// A TLS connection to the relay's HTTPS listener offering `alpn` (nothing when `None`).
async fn tls_to(
    relay: &relay_server::testing::RelayHandle,
    alpn: Option<&str>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    common::tls_connect(relay.addr, &relay.ca_cert(), alpn).await
}

/// One HTTP/2 request (`GET /relay/acme/app/ok`) over `io`; its status, or what failed.
async fn h2<S>(io: S, scheme: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // `localhost`: over TLS the authority must match the SNI (421 otherwise).
    let request = http::Request::get(format!("{scheme}://localhost/relay/acme/app/ok"))
        .body(Default::default())
        .unwrap();
    status_within(common::request_on(io, true, request)).await
}

/// One HTTP/1.1 request (`{method} /relay/acme/app/ok`) over `io`; its status, or what failed.
async fn h1<S>(io: S, method: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = http::Request::builder()
        .method(method)
        .uri("/relay/acme/app/ok")
        .header("host", "localhost")
        .body(Default::default())
        .unwrap();
    status_within(common::request_on(io, false, request)).await
}

/// The answer's status within 10 s, or what failed.
async fn status_within(
    answer: impl std::future::Future<Output = anyhow::Result<testkit::client::Answer>>,
) -> Result<u16, String> {
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(a)) => Ok(a.status.as_u16()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no answer within 10 s".to_string()),
    }
}

/// A stream whose first write sends only `first` bytes; the rest waits for `pause`.
struct SplitFirstWrite {
    inner: tokio::net::TcpStream,
    first: Option<usize>,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl SplitFirstWrite {
    fn new(inner: tokio::net::TcpStream, first: usize, pause: Duration) -> SplitFirstWrite {
        SplitFirstWrite {
            inner,
            first: Some(first),
            pause: Box::pin(tokio::time::sleep(pause)),
        }
    }
}

impl tokio::io::AsyncRead for SplitFirstWrite {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SplitFirstWrite {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            // `pause` started with the stream: the first part goes now, the rest after it.
            return std::pin::Pin::new(&mut this.inner)
                .poll_write(cx, &buf[..first.min(buf.len())]);
        }
        std::task::ready!(std::future::Future::poll(this.pause.as_mut(), cx));
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
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

/// An HTTP/2 connection with no request for the header read timeout is closed (GOAWAY), as an
/// idle HTTP/1 connection is: before, hyper kept it for good, holding a connection slot. One
/// whose request is still being answered is not, however long the answer takes.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    use http_body_util::BodyExt;
    let relay = relay()
        .configure(|f| f.limits.header_read_timeout = Some(Duration::from_secs(1)))
        .spawn()
        .await;
    let (backend, _conn) = serve_app(&relay).await;

    // An h2c connection; `ended` fires when the relay has closed it.
    let tcp = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = ended_tx.send(());
    });
    let get = |path: &str| {
        http::Request::get(format!("http://localhost/relay/acme/app/{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    // Busy: a response that takes 3 s (three idle timeouts) to finish keeps the connection.
    let slow = sender.send_request(get("slow")).await.unwrap();
    assert_eq!(slow.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        ended.try_recv().is_err(),
        "closed while a response was on its way"
    );
    backend.release();
    let body = slow.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first\nsecond\n");

    // Idle: closed between one and two timeouts after the last response, not before.
    let ok = sender
        .send_request(get("ok"))
        .await
        .expect("the connection still serves after a response longer than the idle timeout");
    assert_eq!(ok.status(), 200);
    let _ = ok.into_body().collect().await.unwrap();
    let idle_since = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), &mut ended)
        .await
        .expect("the relay closes an idle HTTP/2 connection")
        .unwrap();
    let held = idle_since.elapsed();
    assert!(held >= Duration::from_millis(900), "closed early: {held:?}");
}

/// A request still in flight when the shutdown's grace period ends is cut and its connection
/// closed, rather than left running after the relay has stopped. A queued request whose body
/// trickles in is one that no connector session's drain ends (it is stored, not relayed).
#[tokio::test]
async fn connections_still_open_after_the_grace_period_are_closed() {
    let relay = relay()
        .configure(|f| f.shutdown.grace = Some(Duration::from_secs(1)))
        .spawn()
        .await;
    let (_backend, _conn) = serve_app(&relay).await;

    let mut s = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"POST /queue/acme/app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nx")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // When the relay closes the connection, timed from the stop; the body idle timeout (30 s)
    // would have closed it otherwise.
    let closed = closed_at(s);
    let stopped = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), relay.stop())
        .await
        .expect("the relay stops")
        .unwrap();
    let (at, rest) = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the connection is closed after the grace period")
        .unwrap();
    let held = at.duration_since(stopped);
    assert!(
        held >= Duration::from_millis(900),
        "closed before the grace period ended: {held:?}"
    );
    assert!(held < Duration::from_secs(4), "{held:?}");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Reads one HTTP/1.1 response from `s` (a length or a chunked body, which the test paths send);
/// its status.
async fn response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let body = &got[end + 4..];
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let done = match length {
                    Some(n) => body.len() >= n,
                    None => body.ends_with(b"0\r\n\r\n"),
                };
                if done {
                    return head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a whole response within 5 s")
}

/// The parking tests' relay: header read timeout 4 s, tenant `acme`'s connector serving target
/// `app` from a test backend (kept with it).
async fn parking_relay() -> (
    relay_server::testing::RelayHandle,
    testkit::Backend,
    connector::testing::ConnectorHandle,
) {
    let relay = relay()
        .configure(|f| f.limits.header_read_timeout = Some(Duration::from_secs(4)))
        .spawn()
        .await;
    let (backend, conn) = serve_app(&relay).await;
    (relay, backend, conn)
}

/// A test backend, and tenant `acme`'s connector serving it on `relay` as target `app`.
async fn serve_app(
    relay: &relay_server::testing::RelayHandle,
) -> (testkit::Backend, connector::testing::ConnectorHandle) {
    let backend = testkit::Backend::spawn().await;
    let base = backend.url();
    let conn = connect(relay, "acme", |c| c.target("app", &base)).await;
    (backend, conn)
}

/// Reads the next response head from `s`; its status line must begin with `status`.
async fn expect_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S, status: &str) {
    let head = read_head(s).await;
    assert!(
        head.starts_with(status.as_bytes()),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

/// Whether `n` visitor connections are parked now (`relay_visitor_connections_parked`): a check
/// for `testkit::eventually`.
async fn parked(metrics: &relay_server::Metrics, n: usize) -> Result<(), String> {
    let now = metrics
        .visitors_parked
        .load(std::sync::atomic::Ordering::Relaxed);
    if now == n {
        Ok(())
    } else {
        Err(format!("{now} parked"))
    }
}

/// An idle keep-alive HTTP/1 connection is parked (hyper and its 8 KiB read buffer let go, the
/// stream kept: `relay_visitor_connections_parked`), and the visitor's next request on it is
/// served as before: whole or in pieces, after a request with a body, over plain HTTP and TLS.
/// A parked connection is closed quietly at the header read timeout and at once at shutdown; its
/// next head must be complete within what was left of that timeout (408 otherwise). A head cut
/// between two pipelined reads, or a WebSocket idle for longer, is never parked.
#[tokio::test]
async fn idle_http1_connections_are_parked_and_served_again() {
    let (relay, _backend, _conn) = parking_relay().await;
    let metrics = relay.view.metrics();
    let wait = Duration::from_secs(3);
    let ok = b"GET /relay/acme/app/status/200 HTTP/1.1\r\nHost: a\r\n\r\n";

    let mut s = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    s.write_all(ok).await.unwrap();
    assert_eq!(response(&mut s).await, "200");
    testkit::eventually(wait, "the idle connection parked", || parked(metrics, 1)).await;

    // The next request, its head in two writes: served by a new hyper connection.
    s.write_all(b"GET /relay/acme/app/status/201 HTTP/1.1\r\n")
        .await
        .unwrap();
    testkit::eventually(wait, "the connection served again", || parked(metrics, 0)).await;
    s.write_all(b"Host: a\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut s).await, "201");

    // Pipelined: a whole head and the start of the next in one write, the rest much later. hyper
    // holds the start: parking then would lose it.
    s.write_all(b"GET /relay/acme/app/status/203 HTTP/1.1\r\nHost: a\r\n\r\nGET /relay/acme/app/status/204 HT")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "203");
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"TP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    expect_head(&mut s, "HTTP/1.1 204").await;

    // A head begun and left unfinished past the parking delay is not parked: the rest comes.
    s.write_all(b"GET /relay/acme/app/status/202 HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"Host: a\r\n\r\n").await.unwrap();
    assert_eq!(response(&mut s).await, "202");

    // A request with a body, an idle pause, then one without: both served, and then parked.
    s.write_all(b"POST /relay/acme/app/sink HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "200");
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(ok).await.unwrap();
    assert_eq!(response(&mut s).await, "200");
    let idle_since = std::time::Instant::now();
    testkit::eventually(wait, "the idle connection parked again", || {
        parked(metrics, 1)
    })
    .await;

    // HTTP/1.1 over TLS parks and serves again the same way.
    let mut tls = tls_to(&relay, Some("http/1.1")).await;
    let ok_tls = b"GET /relay/acme/app/status/200 HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(ok_tls).await.unwrap();
    assert_eq!(response(&mut tls).await, "200");
    testkit::eventually(wait, "the TLS connection parked", || parked(metrics, 2)).await;
    tls.write_all(ok_tls).await.unwrap();
    assert_eq!(response(&mut tls).await, "200");
    // Closed by the visitor, it goes: only `s` is left parked.
    drop(tls);
    testkit::eventually(wait, "the TLS connection gone", || parked(metrics, 1)).await;

    // A WebSocket idle for longer than the parking delay still carries bytes.
    let mut ws = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    ws.write_all(b"GET /relay/acme/app/upgrade-echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut ws).await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    ws.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), ws.read_exact(&mut echo))
        .await
        .expect("the echo after an idle pause")
        .unwrap();
    assert_eq!(&echo, b"ping");

    // At the header read timeout the parked connection is closed, without an answer.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest))
        .await
        .expect("the relay closes the parked connection")
        .unwrap();
    let held = idle_since.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        held >= Duration::from_millis(3500),
        "closed early: {held:?}"
    );
    testkit::eventually(wait, "no parked connection left", || parked(metrics, 0)).await;

    // A parked connection's next head must be complete within what is left of the header read
    // timeout since it went idle, not within a whole new one: 408 when it is not.
    let mut late = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    late.write_all(ok).await.unwrap();
    assert_eq!(response(&mut late).await, "200");
    // Over TLS, bytes that give hyper nothing (a part of a record) wake a parked connection too;
    // they must not buy it a new timeout either.
    let mut junk = tls_to(&relay, Some("http/1.1")).await;
    junk.write_all(ok_tls).await.unwrap();
    assert_eq!(response(&mut junk).await, "200");
    let idle_since = std::time::Instant::now();
    testkit::eventually(wait, "the connections parked", || parked(metrics, 2)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    late.write_all(b"GET /relay/acme/app/status/200 HTTP/1.1\r\n")
        .await
        .unwrap();
    junk.get_mut().0.write_all(&[0x17]).await.unwrap();
    // Read below TLS: the relay closes without a close_notify.
    let junk_closed = closed_at(junk.into_inner().0);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(8), late.read_to_end(&mut answer))
        .await
        .expect("the relay answers and closes")
        .unwrap();
    let held = idle_since.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        held < Duration::from_millis(5500),
        "a whole new timeout: {held:?}"
    );
    let (at, _) = tokio::time::timeout(Duration::from_secs(8), junk_closed)
        .await
        .expect("the relay closes the TLS connection")
        .unwrap();
    let held = at.duration_since(idle_since);
    assert!(
        held < Duration::from_millis(5500),
        "a new timeout for a part of a record: {held:?}"
    );

    // The shutdown closes a parked connection at once, not at its idle timeout (4 s).
    testkit::eventually(Duration::from_secs(8), "the others closed", || {
        parked(metrics, 0)
    })
    .await;
    let mut last = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();
    last.write_all(ok).await.unwrap();
    assert_eq!(response(&mut last).await, "200");
    testkit::eventually(wait, "the last connection parked", || parked(metrics, 1)).await;
    let closed = closed_at(last);
    let stopped = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(15), relay.stop())
        .await
        .expect("the relay stops")
        .unwrap();
    let (at, _) = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the parked connection is closed")
        .unwrap();
    let took = at.saturating_duration_since(stopped);
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    drop(ws);
}

/// After a request with a `Content-Length` body, an idle HTTP/1 connection parks too, once the
/// bytes read end exactly where that request ended (its head's end plus its length): whether the
/// body came with its head or in pieces, and whatever its bytes look like. Where hyper may hold
/// the start of a next head (pipelined after a body, or after a head whose lines end in a bare
/// `\n`, which hides where it ended), it does not park, and that start is not lost.
#[tokio::test]
async fn idle_http1_connections_park_after_request_bodies() {
    use std::sync::atomic::Ordering::Relaxed;
    let (relay, _backend, _conn) = parking_relay().await;
    let metrics = relay.view.metrics();
    let wait = Duration::from_secs(3);
    let post = |length: usize| {
        format!("POST /relay/acme/app/sink HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n")
            .into_bytes()
    };
    let mut s = tokio::net::TcpStream::connect(relay.http_addr.unwrap())
        .await
        .unwrap();

    // Head and body in one write.
    s.write_all(&[post(5), b"hello".to_vec()].concat())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "200");
    testkit::eventually(wait, "parked after a body", || parked(metrics, 1)).await;

    // The head alone, then a body holding a head's end, in two more writes.
    s.write_all(&post(6)).await.unwrap();
    testkit::eventually(wait, "the connection served again", || parked(metrics, 0)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"a\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"\r\nb").await.unwrap();
    assert_eq!(response(&mut s).await, "200");
    testkit::eventually(wait, "parked after a body in pieces", || parked(metrics, 1)).await;

    // A body and the start of a pipelined head in one write: hyper holds that start, so the
    // connection must not park; the rest, much later, completes the head.
    s.write_all(&[post(5), b"helloGET /relay/acme/app/status/204 HT".to_vec()].concat())
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "200");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(metrics.visitors_parked.load(Relaxed), 0);
    s.write_all(b"TP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    expect_head(&mut s, "HTTP/1.1 204").await;
    testkit::eventually(wait, "parked after the pipelined request", || {
        parked(metrics, 1)
    })
    .await;

    // Lines ending in a bare `\n`: the head's end cannot be told from the bytes (the first
    // `\r\n\r\n` is in the body here, five bytes later), so the five bytes of a next head read
    // with the body must not be taken for nothing.
    s.write_all(
        b"POST /relay/acme/app/sink HTTP/1.1\nHost: a\nContent-Length: 5\n\na\r\n\r\nGET /",
    )
    .await
    .unwrap();
    assert_eq!(response(&mut s).await, "200");
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"relay/acme/app/status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    expect_head(&mut s, "HTTP/1.1 204").await;

    // A chunked body is not followed; the connection serves on, and parks after a bodiless one.
    s.write_all(b"POST /relay/acme/app/sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "200");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Not parked: a chunked body's end is not followed (its last bytes may end in `\r\n\r\n`
    // mid-body, so they prove nothing).
    assert_eq!(metrics.visitors_parked.load(Relaxed), 0);
    s.write_all(b"GET /relay/acme/app/status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, "200");
    testkit::eventually(wait, "parked after a bodiless request", || {
        parked(metrics, 1)
    })
    .await;
}
