//! Calls to backends: pooled connections per target, with that target's TLS trust (HTTP/1.1
//! through [`crate::pool`], HTTP/2 through hyper-util's client), or an in-process service of the
//! application that embeds the connector.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use http::uri::{PathAndQuery, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::warn;

use crate::config::{Target, DEFAULT_CONNECT_TIMEOUT};
use crate::inspector::{Inspector, Tap};
use crate::pool::{H1Pool, PoolError, Pooled};
use process_setup::layered::ConfigError;
use tunnel_session::framing::{RecvError, TunnelBody};

/// How long an idle pooled backend connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle pooled connections per backend host.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// Why a requested path is not sent to a backend.
#[derive(Debug, thiserror::Error)]
pub enum BadPath {
    /// It breaks the path guarantee.
    #[error("{0}")]
    Path(tunnel_protocol::path::PathError),
    /// It is not a valid URI path and query.
    #[error("{0}")]
    Uri(String),
}

/// Boxed errors, as tower and hyper pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request to a backend: the visitor's, read from the tunnel as the backend reads
/// it, or (a replay from the inspector) one held in memory.
///
/// For the tunnel's body, a guard is dropped (signalling its receiver) when the backend is done
/// with the body, which starts the response timeout.
#[derive(Debug)]
pub struct Body {
    inner: BodyInner,
    tap: Option<Tap>,
}

#[derive(Debug)]
enum BodyInner {
    Tunnel(TunnelBody<tokio::sync::oneshot::Sender<()>>),
    Full(Option<Bytes>),
}

/// The request body type sent to backends.
pub type BackendBody = Body;

impl Body {
    pub(crate) fn tunnel(body: TunnelBody<tokio::sync::oneshot::Sender<()>>) -> Body {
        Body {
            inner: BodyInner::Tunnel(body),
            tap: None,
        }
    }

    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            inner: BodyInner::Full((!bytes.is_empty()).then_some(bytes)),
            tap: None,
        }
    }

    /// Records what passes through into the inspector.
    pub(crate) fn tapped(mut self, tap: Option<Tap>) -> Body {
        self.tap = tap;
        self
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            BodyInner::Tunnel(b) => Pin::new(b).poll_frame(cx),
            BodyInner::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Some(tap), Poll::Ready(r)) = (&this.tap, &polled) {
            tap.saw(r);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Tunnel(b) => b.is_end_stream(),
            BodyInner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::Tunnel(b) => b.size_hint(),
            BodyInner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The body of a backend's response: from an HTTP backend or an in-process service.
pub struct ResponseBody {
    inner: ResponseInner,
    tap: Option<Tap>,
}

enum ResponseInner {
    Http(hyper::body::Incoming),
    Pooled(Pooled),
    Local(UnsyncBoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            ResponseInner::Http(_) | ResponseInner::Pooled(_) => "ResponseBody::Http",
            ResponseInner::Local(_) => "ResponseBody::Local",
        })
    }
}

impl ResponseBody {
    /// Records what passes through into the inspector.
    pub(crate) fn tapped(mut self, tap: Option<Tap>) -> ResponseBody {
        self.tap = tap;
        self
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            ResponseInner::Http(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            ResponseInner::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            ResponseInner::Local(b) => Pin::new(b).poll_frame(cx),
        };
        if let (Some(tap), Poll::Ready(r)) = (&this.tap, &polled) {
            tap.saw(r);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Http(b) => b.is_end_stream(),
            ResponseInner::Pooled(b) => b.is_end_stream(),
            ResponseInner::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Http(b) => b.size_hint(),
            ResponseInner::Pooled(b) => b.size_hint(),
            ResponseInner::Local(b) => b.size_hint(),
        }
    }
}

type LocalFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, BoxError>> + Send>>;

/// An in-process target: a tower `Service` of the embedding application, type-erased.
#[derive(Clone)]
pub struct LocalService(Arc<dyn Fn(http::Request<Body>) -> LocalFuture + Send + Sync>);

impl std::fmt::Debug for LocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalService")
    }
}

impl LocalService {
    /// Wraps a tower `Service` (an axum `Router`, a `tower::service_fn`, …). It is cloned per
    /// request, as hyper's servers do.
    pub fn new<S, B>(service: S) -> LocalService
    where
        S: tower_service::Service<http::Request<Body>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        LocalService(Arc::new(move |req| {
            let mut service = service.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                let response = service.call(req).await.map_err(Into::into)?;
                Ok(response.map(|b| ResponseBody {
                    inner: ResponseInner::Local(b.map_err(Into::into).boxed_unsync()),
                    tap: None,
                }))
            })
        }))
    }
}

/// Why a backend call failed before its response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The HTTP/2 backend.
    #[error("{0}")]
    Http(#[source] hyper_util::client::legacy::Error),
    /// The HTTP/1.1 backend.
    #[error("{0}")]
    Pool(#[source] PoolError),
    /// The in-process service.
    #[error("in-process service: {0}")]
    Local(BoxError),
}

impl SendError {
    /// The backend could not be reached at all.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Http(e) => e.is_connect(),
            SendError::Pool(e) => matches!(e, PoolError::Connect(_)),
            SendError::Local(_) => false,
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, BackendBody>;

/// How a target is called.
// A handful per connector: not boxing the client saves an indirection per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Call {
    Http(HttpClient),
    Http1(Arc<H1Pool>),
    Local(LocalService),
}

/// A target ready to be called.
#[derive(Debug)]
pub struct Backend {
    /// The target's settings.
    pub target: Target,
    call: Call,
}

/// All targets of this connector, by name, and the inspector that records their requests.
#[derive(Debug, Clone)]
pub struct Backends {
    map: Arc<BTreeMap<String, Backend>>,
    inspector: Option<Arc<Inspector>>,
}

/// The settings an in-process target runs with: no upgrades, nothing of a URL but a path.
pub(crate) fn in_process_target(timeout: Duration) -> Target {
    Target {
        url: Uri::from_static("/"),
        timeout,
        ca_cert: None,
        insecure: false,
        http2: false,
        preserve_host: true,
        upgrades: Vec::new(),
    }
}

impl Backends {
    /// Builds a client per target; fails on unreadable CA files.
    pub fn new(targets: &BTreeMap<String, Target>) -> Result<Backends, ConfigError> {
        Backends::with_local(targets, &BTreeMap::new(), Duration::from_secs(30), None)
    }

    /// Builds a client per target, and adds the in-process ones (`local`, answering within
    /// `local_timeout`); requests are recorded into `inspector` when there is one.
    pub(crate) fn with_local(
        targets: &BTreeMap<String, Target>,
        local: &BTreeMap<String, LocalService>,
        local_timeout: Duration,
        inspector: Option<Arc<Inspector>>,
    ) -> Result<Backends, ConfigError> {
        let native = native_roots();
        let mut map = BTreeMap::new();
        for (name, service) in local {
            map.insert(
                name.clone(),
                Backend {
                    target: in_process_target(local_timeout),
                    call: Call::Local(service.clone()),
                },
            );
        }
        for (name, target) in targets {
            let tls = tls_config(name, target, &native)?;
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http();
            let call = if target.http2 {
                let https = builder.enable_http2().wrap_connector(http);
                Call::Http(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                        .http2_only(true)
                        .build(https),
                )
            } else {
                let https = builder.enable_http1().wrap_connector(http);
                Call::Http1(Arc::new(H1Pool::new(
                    https,
                    &target.url,
                    POOL_MAX_IDLE_PER_HOST,
                    POOL_IDLE_TIMEOUT,
                )))
            };
            map.insert(
                name.clone(),
                Backend {
                    target: target.clone(),
                    call,
                },
            );
        }
        Ok(Backends {
            map: Arc::new(map),
            inspector,
        })
    }

    /// The backend for a target name.
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.map.get(name)
    }

    /// The target names.
    pub fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// The inspector recording this connector's requests, when it runs.
    pub(crate) fn inspector(&self) -> Option<&Arc<Inspector>> {
        self.inspector.as_ref()
    }
}

impl Backend {
    /// The backend URI for a path and query below the target's base URL. The path must keep the
    /// edge's guarantee ([`tunnel_protocol::path`]): the relay checked it already, and the
    /// connector does not take a relay's word for what reaches its backends.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, BadPath> {
        let path = path_and_query.split('?').next().unwrap_or_default();
        tunnel_protocol::path::check(path).map_err(BadPath::Path)?;
        if let Call::Local(_) = self.call {
            // In process: the origin form, as a server hands it to its handlers.
            return path_and_query
                .parse()
                .map_err(|e: http::uri::InvalidUri| BadPath::Uri(e.to_string()));
        }
        let base = &self.target.url;
        let prefix = base.path().trim_end_matches('/');
        let pq: PathAndQuery = format!("{prefix}{path_and_query}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| BadPath::Uri(e.to_string()))?;
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).map_err(|e| BadPath::Uri(e.to_string()))
    }

    /// Sends a request; the caller applies the target's timeout (from the end of the body).
    pub async fn send(
        &self,
        req: http::Request<BackendBody>,
    ) -> Result<http::Response<ResponseBody>, SendError> {
        match &self.call {
            Call::Http(client) => {
                let response = client.request(req).await.map_err(SendError::Http)?;
                Ok(response.map(|b| ResponseBody {
                    inner: ResponseInner::Http(b),
                    tap: None,
                }))
            }
            Call::Http1(pool) => {
                let response = pool.send(req).await.map_err(SendError::Pool)?;
                Ok(response.map(|p| ResponseBody {
                    inner: ResponseInner::Pooled(p),
                    tap: None,
                }))
            }
            Call::Local(service) => (service.0)(req).await.map_err(SendError::Local),
        }
    }
}

fn native_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    roots
}

fn tls_config(
    name: &str,
    target: &Target,
    native: &RootCertStore,
) -> Result<rustls::ClientConfig, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("target {name}: TLS setup: {e}")))?;
    // hyper-rustls sets ALPN itself (and refuses a config that already has it).
    let config = if target.insecure {
        warn!(
            target = name,
            "certificate verification is OFF for this target (insecure = true)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = native.clone();
        if let Some(path) = &target.ca_cert {
            for cert in
                load_certs(path).map_err(|e| ConfigError::new(format!("target {name}: {e}")))?
            {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(format!("target {name}: CA {}: {e}", path.display()))
                })?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// Reads every certificate from a PEM file.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("invalid PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Accepts any certificate: only for targets configured with `insecure = true`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str) -> Backend {
        let target = Target {
            url: url.parse().unwrap(),
            timeout: Duration::from_secs(1),
            ca_cert: None,
            insecure: false,
            http2: false,
            preserve_host: false,
            upgrades: vec!["websocket".into()],
        };
        let mut m = BTreeMap::new();
        m.insert("t".to_string(), target);
        let b = Backends::new(&m).unwrap();
        let out = Arc::try_unwrap(b.map).unwrap();
        out.into_values().next().unwrap()
    }

    #[test]
    fn joins_base_path_and_request_path() {
        assert_eq!(
            backend("http://h:1").uri("/a?b=1").unwrap(),
            "http://h:1/a?b=1"
        );
        assert_eq!(
            backend("http://h:1/api/").uri("/x%2Fy?q").unwrap(),
            "http://h:1/api/x%2Fy?q"
        );
        assert_eq!(backend("https://h/api").uri("/").unwrap(), "https://h/api/");
        // A query may hold anything; only the path is checked.
        assert_eq!(
            backend("http://h/api").uri("/a?x=/../..").unwrap(),
            "http://h/api/a?x=/../.."
        );
    }

    #[test]
    fn paths_that_leave_the_prefix_are_refused() {
        let b = backend("http://h:1/public");
        for bad in [
            "/..%2fsecret.txt",
            "/x/..%2f..%2fsecret",
            "/..%5csecret",
            "/..\\secret",
            "/../secret",
            "/%252e%252e/secret",
            "@evil.example/x",
            "",
        ] {
            assert!(b.uri(bad).is_err(), "{bad:?}");
        }
    }
}
