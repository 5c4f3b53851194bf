//! Calls to backends: one pooled hyper client per target, with that target's TLS trust.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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
use process_setup::layered::ConfigError;
use tunnel_session::framing::TunnelBody;

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

/// The request body type sent to backends; the sender is dropped (signalling its receiver) when
/// hyper is done with the body, which starts the response timeout.
pub type BackendBody = TunnelBody<tokio::sync::oneshot::Sender<()>>;
type HttpClient = Client<HttpsConnector<HttpConnector>, BackendBody>;

/// A target ready to be called.
#[derive(Debug)]
pub struct Backend {
    /// The target's settings.
    pub target: Target,
    client: HttpClient,
}

/// All targets of this connector, by name.
#[derive(Debug, Clone)]
pub struct Backends(Arc<BTreeMap<String, Backend>>);

impl Backends {
    /// Builds a client per target; fails on unreadable CA files.
    pub fn new(targets: &BTreeMap<String, Target>) -> Result<Backends, ConfigError> {
        let native = native_roots();
        let mut map = BTreeMap::new();
        for (name, target) in targets {
            let tls = tls_config(name, target, &native)?;
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http();
            let https = if target.http2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.enable_http1().wrap_connector(http)
            };
            let client = Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                .http2_only(target.http2)
                .build(https);
            map.insert(
                name.clone(),
                Backend {
                    target: target.clone(),
                    client,
                },
            );
        }
        Ok(Backends(Arc::new(map)))
    }

    /// The backend for a target name.
    pub fn get(&self, name: &str) -> Option<&Backend> {
        self.0.get(name)
    }

    /// The target names.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl Backend {
    /// The backend URI for a path and query below the target's base URL. The path must keep the
    /// edge's guarantee ([`tunnel_protocol::path`]): the relay checked it already, and the
    /// connector does not take a relay's word for what reaches its backends.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, BadPath> {
        let path = path_and_query.split('?').next().unwrap_or_default();
        tunnel_protocol::path::check(path).map_err(BadPath::Path)?;
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
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
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
        let out = Arc::try_unwrap(b.0).unwrap();
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
