//! What several end-to-end test files share. Each test binary compiles this module itself, so
//! a helper one binary does not use would be dead code there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connector::testing::connector;
use relay_server::testing::RelayHandle;
use testkit::{trace_init, Backend, Client};
use tunnel_protocol::{ControlFrame, Credential, Hello};
use tunnel_session::control::ControlStream;

/// A relay with tenant `acme`, one connector serving target `app` from one backend, a client.
pub(crate) struct Setup {
    pub(crate) relay: relay_server::testing::RelayHandle,
    pub(crate) backend: Backend,
    pub(crate) conn: connector::testing::ConnectorHandle,
    pub(crate) client: Client,
}

/// Starts `builder`'s relay, provisions `acme`, and connects one connector to a fresh backend.
pub(crate) async fn setup(builder: relay_server::testing::Builder) -> Setup {
    trace_init();
    let relay = builder.spawn().await;
    let backend = Backend::spawn().await;
    let conn = connect(&relay, "acme", |c| c.target("app", &backend.url())).await;
    let client = Client::new(&relay.ca_cert());
    Setup {
        relay,
        backend,
        conn,
        client,
    }
}

/// A relay on the PostgreSQL cluster at `url`.
pub(crate) fn on_postgres(url: &str) -> relay_server::testing::Builder {
    let url = url.to_string();
    relay_server::testing::relay().configure(move |f| f.database_url = Some(url))
}

/// Provisions `tenant` on `relay` and connects a connector with the targets `targets` adds.
pub(crate) async fn connect(
    relay: &RelayHandle,
    tenant: &str,
    targets: impl FnOnce(connector::testing::Builder) -> connector::testing::Builder,
) -> connector::testing::ConnectorHandle {
    let cred = relay.provision(tenant).await;
    let builder = connector(&relay.server(), tenant, &cred.secret).ca_cert(relay.ca_cert());
    let mut conn = targets(builder).spawn();
    conn.connected().await;
    conn
}

/// A self-signed certificate for `names` (rcgen, made per run), written into `dir`: (cert, key).
pub(crate) fn certificate(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let c = rcgen::generate_simple_self_signed(names).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// A bare protocol client: QUIC to the relay (trusting its CA), the control stream opened and
/// `Hello` sent; returns the connection, the control stream and the relay's first answer.
pub(crate) async fn hello(
    relay: &RelayHandle,
    tenant: &str,
    credential: Credential,
    targets: &[&str],
) -> (quinn::Connection, ControlStream, ControlFrame) {
    hello_at(relay.addr, &relay.ca_cert(), tenant, credential, targets).await
}

/// [`hello`] to the relay at `addr` (as `localhost`), trusting the CA certificate at `ca`.
pub(crate) async fn hello_at(
    addr: std::net::SocketAddr,
    ca: &Path,
    tenant: &str,
    credential: Credential,
    targets: &[&str],
) -> (quinn::Connection, ControlStream, ControlFrame) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in connector::backend::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![tunnel_protocol::ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut control = ControlStream::new(send, recv);
    control
        .send(&ControlFrame::Hello(Hello {
            tenant: tenant.into(),
            credential,
            connector_version: "test".into(),
            connector_id: "test".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), control.next())
        .await
        .expect("an answer")
        .expect("a frame");
    (conn, control, answer)
}

/// One request on a fresh connection made from `local` (any 127.x.y.z address, so that a test
/// has several client addresses on loopback) to `to`: see [`request_on`].
pub(crate) async fn raw_request(
    local: std::net::IpAddr,
    to: std::net::SocketAddr,
    h2: bool,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<testkit::client::Answer> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    request_on(socket.connect(to).await?, h2, req).await
}

/// One request on the connection `io`: HTTP/1.1 with the headers as given (the URI should be
/// origin-form, with a `host` header), or HTTP/2 with prior knowledge when `h2` (the URI's
/// scheme and authority become `:scheme` and `:authority`). Returns the whole answer.
pub(crate) async fn request_on<S>(
    io: S,
    h2: bool,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<testkit::client::Answer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(io);
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let (parts, body) = resp.into_parts();
    Ok(testkit::client::Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// TLS to the relay's HTTPS listener at `addr`, trusting `ca`, for `localhost`, offering `alpn`
/// (nothing when `None`); checks the relay agreed to it.
pub(crate) async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    alpn: Option<&str>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.map(|a| a.as_bytes().to_vec()).into_iter().collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), alpn.map(str::as_bytes));
    tls
}

/// Starts a `/slow` request and returns its body after the first chunk arrived.
pub(crate) async fn slow_request_in_flight(client: &Client, url: &str) -> hyper::body::Incoming {
    let (first, body) = client.hold(url).await.unwrap();
    assert_eq!(first, bytes::Bytes::from_static(b"first\n"));
    body
}

/// Reads an HTTP/1.1 response head from a raw socket (byte by byte: what follows is the caller's).
pub(crate) async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    try_read_head(s).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`read_head`], with a closed connection (or a read error) as the error.
pub(crate) async fn try_read_head(s: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        anyhow::ensure!(
            s.read(&mut b).await? == 1,
            "connection closed in a response head"
        );
        head.push(b[0]);
    }
    Ok(String::from_utf8(head)?)
}

/// A hand-made connector's read of a request stream the relay opened: the request head, or `None`
/// when the stream ends or carries something else first.
pub(crate) async fn read_request_head(
    recv: &mut quinn::RecvStream,
) -> Option<tunnel_protocol::RequestHead> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match tunnel_protocol::StreamFrame::decode(&mut buf) {
            Ok(Some(tunnel_protocol::StreamFrame::RequestHead(h))) => return Some(h),
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            _ => return None,
        }
    }
}

/// A hand-made connector's stream loop: each stream the relay opens on `conn` is served by
/// `serve` on a task of its own, until the connection closes.
pub(crate) fn serve_streams<F, Fut>(
    conn: &quinn::Connection,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let conn = conn.clone();
    tokio::spawn(async move {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(serve(send, recv));
        }
    })
}
