//! Certificates per hostname (docs/certificates.md): uploaded ones and those the relays obtain
//! from an ACME CA, the shared ACME issuance state and account credentials. Private keys and
//! account credentials are sealed with AES-256-GCM under the relays' certificate key
//! ([`CertificateKey`], `keys/certificate-key`); the database never holds them in the clear.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{canonical_hostname, now_ms, Backend, Error, Store};

/// Largest certificate chain accepted, in PEM bytes (a chain of a few certificates is ~5 KiB).
pub const MAX_CHAIN_PEM_BYTES: usize = 64 * 1024;
/// Largest private key accepted, in PEM bytes (an RSA-4096 key is ~3.3 KiB).
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// Most certificates in one chain.
const MAX_CHAIN_LEN: usize = 10;
/// The advisory lock key of ACME issuance (PostgreSQL): any constant the other locks do not use.
const ISSUANCE_LOCK: i64 = 0x7265_6c61_7961_636d; // "relayacm"

/// Seals and opens private keys at rest: AES-256-GCM under 32 bytes kept in the relays' `keys/`
/// (shared by the nodes, never in the database). The associated data binds each sealed value to
/// its row (the hostname or the ACME directory URL), so values cannot be swapped between rows.
pub struct CertificateKey {
    key: LessSafeKey,
}

impl CertificateKey {
    /// A key from exactly 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<CertificateKey, Error> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::CertificateKey("the certificate key must be 32 bytes".into()))?;
        Ok(CertificateKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// `nonce || ciphertext || tag` of `plaintext`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| Error::CertificateKey("random failed".into()))?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| Error::CertificateKey("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    /// The plaintext of a value sealed for `context`; fails for another key or context.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, Error> {
        let wrong = || {
            Error::CertificateKey(format!(
                "cannot open the sealed key of {context}: keys/certificate-key differs from the \
                 one it was sealed with"
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut in_out = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

impl std::fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateKey(***)")
    }
}

/// Where a hostname's certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateSource {
    /// Obtained by the relays from the ACME CA.
    Acme,
    /// Uploaded by an admin (CLI, API, web).
    Upload,
}

impl CertificateSource {
    /// `acme` or `upload`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateSource::Acme => "acme",
            CertificateSource::Upload => "upload",
        }
    }

    fn parse(s: &str) -> CertificateSource {
        if s == "acme" {
            CertificateSource::Acme
        } else {
            CertificateSource::Upload
        }
    }
}

/// A hostname's certificate as listed (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The hostname.
    pub hostname: String,
    /// Upload or ACME.
    pub source: CertificateSource,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// Validity start, ms since the epoch.
    pub not_before: i64,
    /// Expiry, ms since the epoch.
    pub not_after: i64,
    /// When it was stored, ms since the epoch.
    pub updated_at: i64,
}

/// A stored certificate with its opened key, for the relay's resolver.
pub struct LoadedCertificate {
    /// What is listed about it.
    pub info: CertificateInfo,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for LoadedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCertificate")
            .field("info", &self.info)
            .field("chain", &self.chain.len())
            .field("key", &"***")
            .finish()
    }
}

/// A certificate and key that passed [`check_certificate`].
pub struct CheckedCertificate {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// Validity start, ms since the epoch.
    pub not_before: i64,
    /// Expiry, ms since the epoch.
    pub not_after: i64,
}

impl std::fmt::Debug for CheckedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCertificate")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Checks a PEM chain (leaf first) and key for `hostname` at `now_ms`: both parse, the key is the
/// leaf's, the leaf names the hostname (exactly or by a `*.` wildcard of one label) and has not
/// expired. The error says which check failed, never the key.
pub fn check_certificate(
    chain_pem: &str,
    key_pem: &str,
    hostname: &str,
    now_ms: i64,
) -> Result<CheckedCertificate, Error> {
    let invalid = |m: String| Error::InvalidCertificate(m);
    if chain_pem.len() > MAX_CHAIN_PEM_BYTES {
        return Err(invalid(format!(
            "the certificate chain is over {MAX_CHAIN_PEM_BYTES} bytes"
        )));
    }
    if key_pem.len() > MAX_KEY_PEM_BYTES {
        return Err(invalid(format!(
            "the private key is over {MAX_KEY_PEM_BYTES} bytes"
        )));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .take(MAX_CHAIN_LEN + 1)
        .collect::<Result<_, _>>()
        .map_err(|_| invalid("the certificate is not valid PEM".into()))?;
    if chain.is_empty() {
        return Err(invalid(
            "no certificate found (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(invalid(format!(
            "more than {MAX_CHAIN_LEN} certificates in the chain"
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        invalid(
            "no private key found (expected PEM: -----BEGIN PRIVATE KEY----- or an RSA or EC key)"
                .into(),
        )
    })?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|_| invalid("the private key is of a kind the relay cannot use".into()))?;
    match rustls::sign::CertifiedKey::new(chain.clone(), signing).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(invalid(
                "the private key does not belong to the certificate".into(),
            ))
        }
    }
    let (serial, not_before, not_after) = leaf_facts(&chain[0], hostname, now_ms)?;
    Ok(CheckedCertificate {
        chain,
        key,
        serial,
        not_before,
        not_after,
    })
}

/// The leaf's serial (hex), validity start and end (ms), after checking that it names
/// `hostname` and has not expired at `now_ms`.
fn leaf_facts(
    leaf: &CertificateDer<'_>,
    hostname: &str,
    now_ms: i64,
) -> Result<(String, i64, i64), Error> {
    let invalid = |m: String| Error::InvalidCertificate(m);
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|_| invalid("the first certificate does not parse as X.509".into()))?;
    let names: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if !names.iter().any(|n| name_covers(n, hostname)) {
        return Err(invalid(format!(
            "the certificate does not cover {hostname} (its names: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    let validity = leaf.validity();
    let not_before = validity.not_before.timestamp().saturating_mul(1000);
    let not_after = validity.not_after.timestamp().saturating_mul(1000);
    if not_after <= now_ms {
        return Err(invalid(format!(
            "the certificate expired at {}",
            validity.not_after
        )));
    }
    Ok((
        leaf.raw_serial_as_string().replace(':', ""),
        not_before,
        not_after,
    ))
}

/// Whether a certificate name (`app.example.com`, `*.example.com`) covers `hostname`.
fn name_covers(name: &str, hostname: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match name.strip_prefix("*.") {
        Some(suffix) => hostname
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => name == hostname,
    }
}

/// An ACME hostname with what decides whether it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeHostname {
    /// The hostname.
    pub hostname: String,
    /// The stored certificate's validity (ms), if any, and its source.
    pub certificate: Option<(CertificateSource, i64, i64)>,
    /// Failed attempts since the last success.
    pub failures: i64,
    /// No attempt before this (ms since the epoch; 0: any time).
    pub next_attempt_at: i64,
    /// An admin asked for a renewal.
    pub renew_requested: bool,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
}

/// The issuance lock: held while one node talks to the ACME CA; [`IssuanceLock::release`] ends it.
#[derive(Debug)]
pub struct IssuanceLock {
    tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

impl IssuanceLock {
    /// Releases the lock now by ending its transaction. Dropping it releases it too, but only
    /// once the pool uses that connection again (sqlx queues the rollback until then).
    pub async fn release(mut self) -> Result<(), Error> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await?;
        }
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
struct InfoRow {
    hostname: String,
    source: String,
    serial: String,
    not_before: i64,
    not_after: i64,
    updated_at: i64,
}

impl From<InfoRow> for CertificateInfo {
    fn from(r: InfoRow) -> CertificateInfo {
        CertificateInfo {
            hostname: r.hostname,
            source: CertificateSource::parse(&r.source),
            serial: r.serial,
            not_before: r.not_before,
            not_after: r.not_after,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    hostname: String,
    source: String,
    serial: String,
    not_before: i64,
    not_after: i64,
    updated_at: i64,
    chain_pem: String,
    key_sealed: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct AcmeRow {
    hostname: String,
    source: Option<String>,
    not_before: Option<i64>,
    not_after: Option<i64>,
    failures: Option<i64>,
    next_attempt_at: Option<i64>,
    renew_requested: Option<i64>,
    last_error: Option<String>,
}

const INFO_COLUMNS: &str =
    "c.hostname, c.source, c.serial, c.not_before, c.not_after, c.updated_at";

impl Store {
    /// Stores an uploaded certificate for a hostname of `tenant`, after [`check_certificate`];
    /// it replaces any earlier one and turns ACME off for the hostname.
    pub async fn set_certificate(
        &self,
        tenant: &str,
        hostname: &str,
        chain_pem: &str,
        key_pem: &str,
        key: &CertificateKey,
    ) -> Result<CertificateInfo, Error> {
        let hostname = self.tenant_hostname(tenant, hostname).await?;
        let checked = check_certificate(chain_pem, key_pem, &hostname, now_ms())?;
        let info = self
            .put_certificate(
                &hostname,
                CertificateSource::Upload,
                chain_pem,
                key_pem,
                &checked,
                key,
            )
            .await?;
        sqlx::query("UPDATE hostnames SET acme = 0 WHERE hostname = $1 AND acme <> 0")
            .bind(&hostname)
            .execute(&self.pool)
            .await?;
        Ok(info)
    }

    /// Stores a certificate the relay obtained from the ACME CA (checked like an upload) and
    /// clears the hostname's failures and renewal request.
    pub async fn store_acme_certificate(
        &self,
        hostname: &str,
        chain_pem: &str,
        key_pem: &str,
        key: &CertificateKey,
    ) -> Result<CertificateInfo, Error> {
        let checked = check_certificate(chain_pem, key_pem, hostname, now_ms())?;
        let info = self
            .put_certificate(
                hostname,
                CertificateSource::Acme,
                chain_pem,
                key_pem,
                &checked,
                key,
            )
            .await?;
        sqlx::query("DELETE FROM acme_status WHERE hostname = $1")
            .bind(hostname)
            .execute(&self.pool)
            .await?;
        Ok(info)
    }

    async fn put_certificate(
        &self,
        hostname: &str,
        source: CertificateSource,
        chain_pem: &str,
        key_pem: &str,
        checked: &CheckedCertificate,
        key: &CertificateKey,
    ) -> Result<CertificateInfo, Error> {
        let sealed = key.seal(key_pem.as_bytes(), hostname)?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO certificates (hostname, source, chain_pem, key_sealed, serial, not_before, not_after, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (hostname) DO UPDATE SET source = excluded.source, chain_pem = excluded.chain_pem, \
             key_sealed = excluded.key_sealed, serial = excluded.serial, not_before = excluded.not_before, \
             not_after = excluded.not_after, updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(source.as_str())
        .bind(chain_pem)
        .bind(sealed)
        .bind(&checked.serial)
        .bind(checked.not_before)
        .bind(checked.not_after)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(CertificateInfo {
            hostname: hostname.to_string(),
            source,
            serial: checked.serial.clone(),
            not_before: checked.not_before,
            not_after: checked.not_after,
            updated_at: now,
        })
    }

    /// Removes a hostname's certificate (the relay's own serves it again; an ACME hostname gets
    /// a new one at the next check).
    pub async fn remove_certificate(&self, tenant: &str, hostname: &str) -> Result<(), Error> {
        let hostname = self.tenant_hostname(tenant, hostname).await?;
        let done = sqlx::query("DELETE FROM certificates WHERE hostname = $1")
            .bind(&hostname)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::CertificateNotFound(hostname));
        }
        Ok(())
    }

    /// The certificates of a tenant's hostnames (never the keys).
    pub async fn certificates(&self, tenant: &str) -> Result<Vec<CertificateInfo>, Error> {
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        let rows = sqlx::query_as::<_, InfoRow>(&format!(
            "SELECT {INFO_COLUMNS} FROM certificates c JOIN hostnames h ON h.hostname = c.hostname \
             WHERE h.tenant_id = $1 ORDER BY c.hostname"
        ))
        .bind(&t.id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(CertificateInfo::from).collect())
    }

    /// Every stored certificate with its key opened, for the relay's resolver. A row whose key
    /// cannot be opened or whose PEM no longer parses comes back as an error beside its hostname.
    pub async fn load_certificates(
        &self,
        key: &CertificateKey,
    ) -> Result<Vec<(String, Result<LoadedCertificate, Error>)>, Error> {
        let rows = sqlx::query_as::<_, SealedRow>(&format!(
            "SELECT {INFO_COLUMNS}, c.chain_pem, c.key_sealed FROM certificates c ORDER BY c.hostname"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let hostname = r.hostname.clone();
                (hostname, open_row(r, key))
            })
            .collect())
    }

    /// Marks a hostname of `tenant` for ACME (or not). Turning it on asks for a certificate at
    /// the next check, replacing an uploaded one once issued.
    pub async fn set_hostname_acme(
        &self,
        tenant: &str,
        hostname: &str,
        on: bool,
    ) -> Result<(), Error> {
        let hostname = self.tenant_hostname(tenant, hostname).await?;
        sqlx::query("UPDATE hostnames SET acme = $1 WHERE hostname = $2")
            .bind(i64::from(on))
            .bind(&hostname)
            .execute(&self.pool)
            .await?;
        if on {
            self.request_renewal(tenant, &hostname).await?;
        }
        Ok(())
    }

    /// Asks the relays to obtain a new ACME certificate for the hostname at their next check,
    /// whatever the current one's age (and without waiting out a failure's backoff).
    pub async fn request_renewal(&self, tenant: &str, hostname: &str) -> Result<(), Error> {
        let hostname = self.tenant_hostname(tenant, hostname).await?;
        let acme: Option<(i64,)> = sqlx::query_as("SELECT acme FROM hostnames WHERE hostname = $1")
            .bind(&hostname)
            .fetch_optional(&self.pool)
            .await?;
        if acme.map(|(a,)| a) != Some(1) {
            return Err(Error::NotAcme(hostname));
        }
        sqlx::query(
            "INSERT INTO acme_status (hostname, failures, next_attempt_at, renew_requested, updated_at) \
             VALUES ($1, 0, 0, 1, $2) ON CONFLICT (hostname) DO UPDATE SET next_attempt_at = 0, \
             renew_requested = 1, updated_at = excluded.updated_at",
        )
        .bind(&hostname)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        // Touch the hostname so the revision moves: the relays look for work at once.
        sqlx::query("UPDATE hostnames SET acme = 1 WHERE hostname = $1")
            .bind(&hostname)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every hostname marked for ACME with its certificate's validity and issuance state.
    pub async fn acme_hostnames(&self) -> Result<Vec<AcmeHostname>, Error> {
        let rows = sqlx::query_as::<_, AcmeRow>(
            "SELECT h.hostname, c.source, c.not_before, c.not_after, s.failures, s.next_attempt_at, \
             s.renew_requested, s.last_error FROM hostnames h \
             LEFT JOIN certificates c ON c.hostname = h.hostname \
             LEFT JOIN acme_status s ON s.hostname = h.hostname \
             WHERE h.acme = 1 ORDER BY h.hostname",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AcmeHostname {
                hostname: r.hostname,
                certificate: match (r.source, r.not_before, r.not_after) {
                    (Some(s), Some(b), Some(a)) => Some((CertificateSource::parse(&s), b, a)),
                    _ => None,
                },
                failures: r.failures.unwrap_or(0),
                next_attempt_at: r.next_attempt_at.unwrap_or(0),
                renew_requested: r.renew_requested.unwrap_or(0) != 0,
                last_error: r.last_error,
            })
            .collect())
    }

    /// Records a failed issuance: the error (shown to admins, no secrets) and when to try next.
    pub async fn record_acme_failure(
        &self,
        hostname: &str,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), Error> {
        let error: String = error.chars().take(1000).collect();
        sqlx::query(
            "INSERT INTO acme_status (hostname, failures, next_attempt_at, renew_requested, last_error, updated_at) \
             VALUES ($1, 1, $2, 0, $3, $4) ON CONFLICT (hostname) DO UPDATE SET \
             failures = acme_status.failures + 1, next_attempt_at = excluded.next_attempt_at, \
             renew_requested = 0, last_error = excluded.last_error, updated_at = excluded.updated_at",
        )
        .bind(hostname)
        .bind(next_attempt_at)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The ACME account credentials (instant-acme's JSON) for a CA directory URL, if any.
    pub async fn acme_account(
        &self,
        directory: &str,
        key: &CertificateKey,
    ) -> Result<Option<Vec<u8>>, Error> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT credentials_sealed FROM acme_accounts WHERE directory = $1")
                .bind(directory)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(sealed,)| key.open(&sealed, directory))
            .transpose()
    }

    /// Keeps new ACME account credentials unless another node stored some first (then theirs
    /// are returned and the new account is left unused).
    pub async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &[u8],
        key: &CertificateKey,
    ) -> Result<Vec<u8>, Error> {
        let sealed = key.seal(credentials, directory)?;
        sqlx::query(
            "INSERT INTO acme_accounts (directory, credentials_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (directory) DO NOTHING",
        )
        .bind(directory)
        .bind(sealed)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.acme_account(directory, key)
            .await?
            .ok_or_else(|| Error::CertificateKey("the ACME account was not stored".into()))
    }

    /// The ACME issuance lock, if no other node holds it: on PostgreSQL an advisory lock held
    /// by an open transaction (released when the lock is dropped, or when the connection dies);
    /// on SQLite, which serves one node, always granted.
    pub async fn try_issuance_lock(&self) -> Result<Option<IssuanceLock>, Error> {
        match self.backend {
            Backend::Sqlite => Ok(Some(IssuanceLock { tx: None })),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(ISSUANCE_LOCK)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(got.then_some(IssuanceLock { tx: Some(tx) }))
            }
        }
    }

    /// The canonical hostname, if it belongs to `tenant`.
    async fn tenant_hostname(&self, tenant: &str, hostname: &str) -> Result<String, Error> {
        let hostname = canonical_hostname(hostname)?;
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT h.hostname FROM hostnames h JOIN tenants t ON t.id = h.tenant_id \
             WHERE h.hostname = $1 AND t.name = $2",
        )
        .bind(&hostname)
        .bind(tenant.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        found.map(|(h,)| h).ok_or(Error::HostnameNotFound(hostname))
    }
}

fn open_row(r: SealedRow, key: &CertificateKey) -> Result<LoadedCertificate, Error> {
    let key_pem = key.open(&r.key_sealed, &r.hostname)?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(r.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| Error::InvalidCertificate("the stored chain does not parse".into()))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| Error::InvalidCertificate("the stored key does not parse".into()))?;
    Ok(LoadedCertificate {
        info: CertificateInfo {
            hostname: r.hostname,
            source: CertificateSource::parse(&r.source),
            serial: r.serial,
            not_before: r.not_before,
            not_after: r.not_after,
            updated_at: r.updated_at,
        },
        chain,
        key: private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn accepts_a_matching_certificate_and_refuses_the_rest() {
        let (chain, key) = cert(&["app.example.test"]);
        let ok = check_certificate(&chain, &key, "app.example.test", now_ms()).unwrap();
        assert!(ok.not_after > now_ms());
        let (_, other_key) = cert(&["app.example.test"]);
        let e = check_certificate(&chain, &other_key, "app.example.test", now_ms()).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let e = check_certificate(&chain, &key, "other.example.test", now_ms()).unwrap_err();
        assert!(e.to_string().contains("does not cover"), "{e}");
        let e = check_certificate("junk", &key, "app.example.test", now_ms()).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = check_certificate(&chain, "junk", "app.example.test", now_ms()).unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        let far = ok.not_after + 1;
        let e = check_certificate(&chain, &key, "app.example.test", far).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(!e.to_string().contains("PRIVATE KEY-----\n"));
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.test", "app.example.test"));
        assert!(!name_covers("*.example.test", "a.b.example.test"));
        assert!(!name_covers("*.example.test", "example.test"));
        assert!(name_covers("app.example.test", "app.example.test"));
    }

    #[test]
    fn sealed_keys_open_only_with_their_key_and_context() {
        let k = CertificateKey::new(&[7u8; 32]).unwrap();
        let sealed = k.seal(b"secret", "a.test").unwrap();
        assert_eq!(k.open(&sealed, "a.test").unwrap(), b"secret");
        assert!(k.open(&sealed, "b.test").is_err());
        let other = CertificateKey::new(&[8u8; 32]).unwrap();
        assert!(other.open(&sealed, "a.test").is_err());
        assert!(CertificateKey::new(&[0u8; 16]).is_err());
    }
}
