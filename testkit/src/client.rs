//! An HTTP(S) client for visitors in tests: trusts one CA, speaks HTTP/1.1 and HTTP/2.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
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
    inner: hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
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
        Self::build(ca, false)
    }

    /// The same, but HTTP/2 only over TLS.
    pub fn http2(ca: &Path) -> Client {
        Self::build(ca, true)
    }

    fn build(ca: &Path, h2_only: bool) -> Client {
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if h2_only {
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

    /// GET and read the whole answer.
    pub async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        self.request("GET", url, Bytes::new()).await
    }

    /// A request with a small body, read whole.
    pub async fn request(&self, method: &str, url: &str, body: Bytes) -> anyhow::Result<Answer> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(BodyExt::boxed(Full::new(body).map_err(|n| match n {})))?;
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
