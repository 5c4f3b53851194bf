//! An HTTP(S) client for visitors in tests: trusts one CA, speaks HTTP/1.1 and HTTP/2.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body type: anything streaming.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A visitor client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<HttpConnector<Resolver>>,
        Body,
    >,
}

/// Name resolution for test clients: the system's, or every name to 127.0.0.1 (like
/// `curl --resolve`), so hostname routing can be tested with real SNI and no DNS.
#[derive(Debug, Clone)]
enum Resolver {
    System(GaiResolver),
    Loopback,
}

type Addrs = std::vec::IntoIter<std::net::SocketAddr>;

impl tower_service::Service<Name> for Resolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        match self {
            Resolver::System(g) => g.poll_ready(cx),
            Resolver::Loopback => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self {
            Resolver::System(g) => {
                let fut = g.call(name);
                Box::pin(async move { Ok(fut.await?.collect::<Vec<_>>().into_iter()) })
            }
            Resolver::Loopback => Box::pin(async {
                Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))].into_iter())
            }),
        }
    }
}

/// A fully read response.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// A client trusting the PEM certificate(s) at `ca`.
    pub fn new(ca: &Path) -> Client {
        Self::build(ca, false, Resolver::System(GaiResolver::new()))
    }

    /// The same, but HTTP/2 only over TLS.
    pub fn http2(ca: &Path) -> Client {
        Self::build(ca, true, Resolver::System(GaiResolver::new()))
    }

    /// An HTTP/1.1 client that resolves every host name to 127.0.0.1 (URL ports are kept): the
    /// URL's host is the TLS server name, and a `Host` header set on a request is sent as is.
    pub fn loopback(ca: &Path) -> Client {
        Self::build(ca, false, Resolver::Loopback)
    }

    fn build(ca: &Path, h2_only: bool, resolver: Resolver) -> Client {
        let http1_only = matches!(resolver, Resolver::Loopback);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if http1_only {
            b.enable_http1().wrap_connector(http)
        } else if h2_only {
            b.enable_http2().wrap_connector(http)
        } else {
            b.enable_all_versions().wrap_connector(http)
        };
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder.http2_only(h2_only).pool_max_idle_per_host(256);
        Client {
            inner: builder.build(connector),
        }
    }

    /// Sends a request with any body; returns the streaming response.
    pub async fn send(&self, req: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        Ok(self.inner.request(req).await?)
    }

    /// GET `url`, expect 200, and read the first body frame: returns its data and the rest of the
    /// body — a response held in flight (e.g. the backend's `/slow`, until `Backend::release`).
    pub async fn hold(&self, url: &str) -> anyhow::Result<(Bytes, Incoming)> {
        let resp = self.send(Request::get(url).body(Body::default())?).await?;
        anyhow::ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
        let mut body = resp.into_body();
        let first = body
            .frame()
            .await
            .ok_or_else(|| anyhow::anyhow!("the body ended before its first frame"))??;
        Ok((first.into_data().unwrap_or_default(), body))
    }

    /// GET and read the whole answer.
    pub async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        self.request("GET", url, Bytes::new()).await
    }

    /// A request with a small body, read whole.
    pub async fn request(&self, method: &str, url: &str, body: Bytes) -> anyhow::Result<Answer> {
        self.request_with(method, url, &[], body).await
    }

    /// GET with `Authorization: Bearer token`, read whole.
    pub async fn get_bearer(&self, url: &str, token: &str) -> anyhow::Result<Answer> {
        let auth = format!("Bearer {token}");
        self.request_with("GET", url, &[("authorization", &auth)], Bytes::new())
            .await
    }

    /// A request with extra headers and a small body, read whole.
    pub async fn request_with(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(BodyExt::boxed(Full::new(body).map_err(|n| match n {})))?;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The end of the body arrived.
    Clean,
    /// The body failed (reset, connection cut): an aborted response.
    Aborted,
}

/// Reads `body` to its end, counting data bytes; panics if it has not ended `within` (tests only).
pub async fn body_end(body: &mut Incoming, within: std::time::Duration) -> (u64, BodyEnd) {
    let mut bytes = 0u64;
    let read = async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
                Some(Err(_)) => return BodyEnd::Aborted,
                None => return BodyEnd::Clean,
            }
        }
    };
    match tokio::time::timeout(within, read).await {
        Ok(end) => (bytes, end),
        Err(_) => panic!("the body did not end within {within:?}"),
    }
}
