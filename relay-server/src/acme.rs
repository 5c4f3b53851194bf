//! Certificates from an ACME CA (`[acme]`, docs/certificates.md) for hostnames registered to a
//! tenant and marked for ACME — never on demand from a visitor's SNI. Each check lists the due
//! hostnames (no certificate, an uploaded one, two thirds of the lifetime gone, or a renewal
//! asked for), takes the cluster's issuance lock (one node talks to the CA at a time) and
//! orders one certificate per hostname, trying the configured challenge types in order. Failures
//! back off (doubling from `retry_initial` up to a day), shared through the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use relay_store::{AcmeHostname, CertificateKey, CertificateSource};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Acme, Challenge};
use crate::Relay;

/// Largest response body accepted from the CA (a certificate chain is a few KiB).
const MAX_CA_RESPONSE: usize = 1 << 20;
/// Longest one issuance may take, all requests and polling included.
const ISSUE_DEADLINE: Duration = Duration::from_secs(180);
/// How long to poll an order for its validation, then for its certificate.
const POLL_DEADLINE: Duration = Duration::from_secs(90);
/// Most hostnames issued per check: the lock is not held for hours; the rest wait one interval.
const MAX_PER_CHECK: usize = 20;
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// Checks for due certificates every `check_interval` and on catalog changes, until `shutdown`.
pub(crate) async fn run(
    relay: Arc<Relay>,
    config: Acme,
    key: Arc<CertificateKey>,
    shutdown: CancellationToken,
) {
    let http = match CaClient::new(&config) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "ACME disabled: no HTTPS client for the CA");
            return;
        }
    };
    let mut issuer = Issuer {
        relay,
        config,
        key,
        http,
        account: None,
    };
    info!(directory = %issuer.config.directory, "ACME certificates on");
    loop {
        // Why select: a check may take minutes; shutdown must not wait for it.
        tokio::select! {
            r = issuer.check() => {
                if let Err(e) = r {
                    warn!(error = %e, "ACME check failed");
                }
            }
            _ = shutdown.cancelled() => return,
        }
        // Why select: check again on the interval or when the catalog changes; stop on shutdown.
        tokio::select! {
            _ = tokio::time::sleep(issuer.config.check_interval) => {}
            _ = issuer.relay.certificates.acme_wake() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Whether `h` needs a certificate now (`now` in ms since the epoch).
fn due(h: &AcmeHostname, now: i64) -> bool {
    if h.next_attempt_at > now {
        return false;
    }
    match h.certificate {
        _ if h.renew_requested => true,
        None | Some((CertificateSource::Upload, _, _)) => true,
        Some((CertificateSource::Acme, not_before, not_after)) => {
            let renew_at = not_before.saturating_add(not_after.saturating_sub(not_before) / 3 * 2);
            now >= renew_at
        }
    }
}

/// The wait after the `failures`-th failure in a row: `initial`, doubling, at most a day.
fn backoff(initial: Duration, failures: i64) -> Duration {
    let shift = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    initial.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

struct Issuer {
    relay: Arc<Relay>,
    config: Acme,
    key: Arc<CertificateKey>,
    http: CaClient,
    account: Option<Account>,
}

impl Issuer {
    /// One pass over the due hostnames.
    async fn check(&mut self) -> anyhow::Result<()> {
        let store = self.relay.store.clone();
        let now = relay_store::now_ms();
        if !store.acme_hostnames().await?.iter().any(|h| due(h, now)) {
            return Ok(());
        }
        let Some(lock) = store.try_issuance_lock().await? else {
            debug!("another relay node is issuing certificates");
            return Ok(());
        };
        let issued = self.issue_due(&store).await;
        // Released at once: a dropped lock would end only when its pooled connection is used
        // again, keeping the other nodes from issuing meanwhile.
        if let Err(e) = lock.release().await {
            debug!(error = %e, "issuance lock not released cleanly; its connection will end it");
        }
        issued
    }

    /// Issues what is due, under the issuance lock.
    async fn issue_due(&mut self, store: &relay_store::Store) -> anyhow::Result<()> {
        // Read again under the lock: the node that held it may have just issued these.
        let now = relay_store::now_ms();
        let due: Vec<AcmeHostname> = store
            .acme_hostnames()
            .await?
            .into_iter()
            .filter(|h| due(h, now))
            .take(MAX_PER_CHECK)
            .collect();
        for h in due {
            let hostname = h.hostname.as_str();
            let outcome = tokio::time::timeout(ISSUE_DEADLINE, self.issue(hostname)).await;
            let error = match outcome {
                Ok(Ok((chain, key_pem))) => {
                    match store
                        .store_acme_certificate(hostname, &chain, &key_pem, &self.key)
                        .await
                    {
                        Ok(info) => {
                            info!(%hostname, serial = %info.serial, not_after = info.not_after, "ACME certificate stored");
                            self.relay.certificates.changed();
                            continue;
                        }
                        Err(e) => format!("the issued certificate was not stored: {e}"),
                    }
                }
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("issuance took longer than {ISSUE_DEADLINE:?}"),
            };
            let wait = backoff(self.config.retry_initial, h.failures.saturating_add(1));
            let next = relay_store::now_ms()
                .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            warn!(%hostname, error = %error, retry_in = ?wait, "ACME issuance failed");
            store.record_acme_failure(hostname, &error, next).await?;
        }
        Ok(())
    }

    /// The account, restored from the store or created (and stored) on first use.
    async fn account(&mut self) -> anyhow::Result<Account> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let store = &self.relay.store;
        let directory = &self.config.directory;
        let stored = match store.acme_account(directory, &self.key).await? {
            Some(json) => json,
            None => {
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                let (_, credentials) = Account::builder_with_http(self.http.boxed())
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("creating the ACME account: {e}"))?;
                let json = serde_json::to_vec(&credentials)?;
                info!(%directory, "ACME account created");
                // Another node may have stored one first: everyone uses the stored one.
                store.save_acme_account(directory, &json, &self.key).await?
            }
        };
        let credentials: AccountCredentials = serde_json::from_slice(&stored)
            .map_err(|_| anyhow::anyhow!("the stored ACME account does not parse"))?;
        let account = Account::builder_with_http(self.http.boxed())
            .from_credentials(credentials)
            .await
            .map_err(|e| anyhow::anyhow!("restoring the ACME account: {e}"))?;
        self.account = Some(account.clone());
        Ok(account)
    }

    /// A certificate chain and key PEM for `hostname`, by the first challenge type that works.
    async fn issue(&mut self, hostname: &str) -> anyhow::Result<(String, String)> {
        let account = self.account().await?;
        let mut errors = Vec::new();
        for &challenge in &self.config.challenges.clone() {
            match self.order(&account, hostname, challenge).await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    debug!(%hostname, challenge = challenge.as_str(), error = %e, "ACME order failed");
                    errors.push(format!("{}: {e:#}", challenge.as_str()));
                }
            }
        }
        anyhow::bail!("{}", errors.join("; "))
    }

    /// One order validated by `challenge`.
    async fn order(
        &self,
        account: &Account,
        hostname: &str,
        challenge: Challenge,
    ) -> anyhow::Result<(String, String)> {
        let certificates = &self.relay.certificates;
        let identifiers = [Identifier::Dns(hostname.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| anyhow::anyhow!("new order: {e}"))?;
        // Whatever happens below, the challenge answers go when this does.
        let mut pending = Pending {
            certificates,
            alpn: Vec::new(),
            tokens: Vec::new(),
        };
        let kind = match challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| anyhow::anyhow!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("authorization is {other:?}"),
            }
            let mut ch = authz.challenge(kind.clone()).ok_or_else(|| {
                anyhow::anyhow!("the CA offers no {} challenge", challenge.as_str())
            })?;
            let key_authorization = ch.key_authorization();
            match challenge {
                Challenge::TlsAlpn01 => {
                    let cert = alpn_certificate(hostname, key_authorization.digest().as_ref())?;
                    anyhow::ensure!(
                        certificates.set_alpn(hostname, cert),
                        "too many pending challenges"
                    );
                    pending.alpn.push(hostname.to_string());
                }
                Challenge::Http01 => {
                    let token = ch.token.clone();
                    anyhow::ensure!(
                        certificates.set_http(&token, key_authorization.as_str().to_string()),
                        "too many pending challenges"
                    );
                    pending.tokens.push(token);
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| anyhow::anyhow!("challenge ready: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(POLL_DEADLINE);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| anyhow::anyhow!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            anyhow::bail!(
                "the order is {status:?}{}",
                validation_error(&mut order).await
            );
        }
        drop(pending);
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| anyhow::anyhow!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| anyhow::anyhow!("certificate: {e}"))?;
        Ok((chain, key_pem))
    }
}

/// What the CA said about a failed validation, if it said anything (`: …`).
async fn validation_error(order: &mut instant_acme::Order) -> String {
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(problem) = &c.error {
                return format!(": {problem}");
            }
        }
    }
    String::new()
}

/// The self-signed certificate answering TLS-ALPN-01 (RFC 8737): the hostname as its only name
/// and the key authorization's digest in a critical acmeIdentifier extension.
fn alpn_certificate(hostname: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)?;
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension that this certificate exists for.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// The challenge answers of one order; dropping it withdraws them.
struct Pending<'a> {
    certificates: &'a crate::certificates::Certificates,
    alpn: Vec<String>,
    tokens: Vec<String>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for h in &self.alpn {
            self.certificates.clear_alpn(h);
        }
        for t in &self.tokens {
            self.certificates.clear_http(t);
        }
    }
}

// === impl CaClient ===

/// HTTPS to the CA: the configured roots (or the system's), a deadline on every request and a
/// bound on every response body.
#[derive(Clone)]
struct CaClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl CaClient {
    fn new(config: &Acme) -> anyhow::Result<CaClient> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match &config.root_ca {
            Some((_, roots)) => {
                let mut store = rustls::RootCertStore::empty();
                for r in roots {
                    store.add(r.clone())?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(store)
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)?,
        };
        let connector = builder.https_only().enable_http1().enable_http2().build();
        Ok(CaClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            timeout: config.request_timeout,
        })
    }

    fn boxed(&self) -> Box<dyn HttpClient> {
        Box::new(self.clone())
    }
}

impl HttpClient for CaClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.inner.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let exchange = async {
                let response = response
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_CA_RESPONSE)
                    .collect()
                    .await
                    .map_err(instant_acme::Error::Other)?
                    .to_bytes();
                Ok(BytesResponse::from(http::Response::from_parts(
                    parts,
                    Full::new(body),
                )))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(instant_acme::Error::Other(
                    format!("the CA did not answer within {timeout:?}").into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(certificate: Option<(CertificateSource, i64, i64)>) -> AcmeHostname {
        AcmeHostname {
            hostname: "a.test".into(),
            certificate,
            failures: 0,
            next_attempt_at: 0,
            renew_requested: false,
            last_error: None,
        }
    }

    #[test]
    fn due_at_two_thirds_of_the_lifetime_or_when_asked() {
        let acme = Some((CertificateSource::Acme, 0, 90_000));
        assert!(due(&host(None), 1));
        assert!(due(&host(Some((CertificateSource::Upload, 0, 90_000))), 1));
        assert!(!due(&host(acme), 59_999));
        assert!(due(&host(acme), 60_000));
        let mut asked = host(acme);
        asked.renew_requested = true;
        assert!(due(&asked, 1));
        asked.next_attempt_at = 10;
        assert!(!due(&asked, 9), "a failure's backoff holds even a request");
    }

    #[test]
    fn backoff_doubles_up_to_a_day() {
        let m = Duration::from_secs(60);
        assert_eq!(backoff(m, 1), m);
        assert_eq!(backoff(m, 2), m * 2);
        assert_eq!(backoff(m, 4), m * 8);
        assert_eq!(backoff(m, 1000), MAX_BACKOFF);
    }
}
