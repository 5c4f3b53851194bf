//! The certificate the HTTPS ingress presents, picked by SNI: a hostname's own (uploaded or from
//! ACME, loaded from the store and reloaded when the catalog changes), else the relay's own
//! (`[tls]` or the generated one). Also the pending ACME challenges: TLS-ALPN-01 certificates
//! answered to `acme-tls/1` ClientHellos and HTTP-01 key authorizations for the plain listener.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use relay_store::{CertificateKey, Store};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::proxy::ProxyBody;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// The path prefix of HTTP-01 validation (RFC 8555 §8.3).
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// Pending challenges at once: issuance runs one hostname at a time, so a handful is plenty.
const MAX_PENDING_CHALLENGES: usize = 64;
/// Reload from the store at least this often, in case a change notification was missed.
const RELOAD_FALLBACK: Duration = Duration::from_secs(300);

/// Picks certificates by SNI; cheap to read on every handshake.
pub(crate) struct Certificates {
    own: Arc<CertifiedKey>,
    loaded: RwLock<Arc<Loaded>>,
    /// TLS-ALPN-01 certificates by hostname, while a validation is pending.
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token, while a validation is pending.
    http_challenges: Mutex<HashMap<String, String>>,
    /// Wakes the reload task (catalog changes, a new certificate from this node).
    reload: Notify,
    /// Wakes the ACME task (catalog changes: a hostname marked, a renewal requested).
    acme: Notify,
}

/// One load of the stored certificates.
#[derive(Default)]
struct Loaded {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// (hostname, source, not_after in ms) for the metrics, sorted by hostname.
    expiry: Vec<(String, &'static str, i64)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("hostnames", &self.current().by_name.len())
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// The relay's own certificate serves names without one of their own.
    pub(crate) fn new(own: Arc<CertifiedKey>) -> Certificates {
        Certificates {
            own,
            loaded: RwLock::new(Arc::default()),
            alpn_challenges: Mutex::default(),
            http_challenges: Mutex::default(),
            reload: Notify::new(),
            acme: Notify::new(),
        }
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the reload task to read the store again, and the ACME task to look for work.
    pub(crate) fn changed(&self) {
        self.reload.notify_one();
        self.acme.notify_one();
    }

    /// Resolves at the next [`Certificates::changed`] (cancel safe).
    pub(crate) async fn acme_wake(&self) {
        self.acme.notified().await
    }

    /// Replaces the hostname certificates with what the store holds now. Rows that cannot be
    /// used (a key sealed with another certificate key, a chain that no longer parses) are
    /// skipped with a warning: those hostnames get the relay's own certificate.
    pub(crate) async fn load(
        &self,
        store: &Store,
        key: &CertificateKey,
    ) -> Result<(), relay_store::Error> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let mut loaded = Loaded::default();
        for (hostname, row) in store.load_certificates(key).await? {
            let c = match row {
                Ok(c) => c,
                Err(e) => {
                    warn!(%hostname, error = %e, "stored certificate not usable; serving the relay's own");
                    continue;
                }
            };
            match CertifiedKey::from_der(c.chain, c.key, &provider) {
                Ok(ck) => {
                    loaded.expiry.push((
                        hostname.clone(),
                        c.info.source.as_str(),
                        c.info.not_after,
                    ));
                    loaded.by_name.insert(hostname, Arc::new(ck));
                }
                Err(e) => {
                    warn!(%hostname, error = %e, "stored certificate not usable; serving the relay's own")
                }
            }
        }
        debug!(
            hostnames = loaded.by_name.len(),
            "hostname certificates loaded"
        );
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Answers TLS-ALPN-01 for `hostname` with `cert` until [`Certificates::clear_alpn`].
    pub(crate) fn set_alpn(&self, hostname: &str, cert: Arc<CertifiedKey>) -> bool {
        let mut map = self
            .alpn_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING_CHALLENGES && !map.contains_key(hostname) {
            return false;
        }
        map.insert(hostname.to_string(), cert);
        true
    }

    /// Stops answering TLS-ALPN-01 for `hostname`.
    pub(crate) fn clear_alpn(&self, hostname: &str) {
        self.alpn_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hostname);
    }

    /// Answers HTTP-01 for `token` with `key_authorization` until [`Certificates::clear_http`].
    pub(crate) fn set_http(&self, token: &str, key_authorization: String) -> bool {
        let mut map = self
            .http_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING_CHALLENGES && !map.contains_key(token) {
            return false;
        }
        map.insert(token.to_string(), key_authorization);
        true
    }

    /// Stops answering HTTP-01 for `token`.
    pub(crate) fn clear_http(&self, token: &str) {
        self.http_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// The key authorization for an HTTP-01 request path, if one is pending.
    pub(crate) fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// `relay_certificate_expiry_timestamp_seconds{hostname,source}` in Prometheus text.
    pub(crate) fn render_metrics(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP relay_certificate_expiry_timestamp_seconds When a hostname's certificate expires (Unix time)."
        );
        let _ = writeln!(
            out,
            "# TYPE relay_certificate_expiry_timestamp_seconds gauge"
        );
        for (hostname, source, not_after) in &self.current().expiry {
            let _ = writeln!(
                out,
                "relay_certificate_expiry_timestamp_seconds{{hostname=\"{hostname}\",source=\"{source}\"}} {}",
                not_after / 1000
            );
        }
        out
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if let (true, Some(name)) = (acme, &name) {
            // Only for a validation this relay started; any other acme-tls/1 hello gets the
            // usual certificate and the connection is closed after the handshake.
            let pending = self
                .alpn_challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name.as_str())
                .cloned();
            if pending.is_some() {
                return pending;
            }
        }
        let own = name.and_then(|n| self.current().by_name.get(&n).cloned());
        Some(own.unwrap_or_else(|| self.own.clone()))
    }
}

/// The answer to an HTTP-01 validation request: the key authorization as text.
pub(crate) fn http01_response(key_authorization: String) -> http::Response<ProxyBody> {
    let mut response = http::Response::new(Either::Left(Full::new(Bytes::from(key_authorization))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Reloads the certificates whenever [`Certificates::changed`] is called (catalog changes, a
/// certificate issued here), and every few minutes regardless, until `shutdown`.
pub(crate) async fn run_reload(
    certificates: Arc<Certificates>,
    store: Store,
    key: Arc<CertificateKey>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        // Why select: reload on a change or the fallback interval; stop on shutdown.
        tokio::select! {
            _ = certificates.reload.notified() => {}
            _ = tokio::time::sleep(RELOAD_FALLBACK) => {}
            _ = shutdown.cancelled() => return,
        }
        match certificates.load(&store, &key).await {
            Ok(()) if failing => {
                info!("hostname certificates reloaded");
                failing = false;
            }
            Ok(()) => {}
            // Fail static: the last loaded certificates keep serving.
            Err(e) if !failing => {
                warn!(error = %e, "cannot reload hostname certificates; serving the last loaded");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
