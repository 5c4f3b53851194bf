//! Persistence for tenants, hostnames, connector credentials, admin users and API tokens, login
//! sessions, the connector session history, the request audit log and the admin-action log.
//!
//! Callers hold a [`Store`]; `Store::connect(url)` picks the backend from the URL scheme and runs
//! its migrations: `sqlite://` (the embedded default, one relay node) or `postgres://` (production,
//! shared by several relays and a standalone management web; catalog changes are announced with
//! `NOTIFY relay_catalog`). One schema in two migration folders, one set of methods; where the SQL
//! differs, both bodies sit side by side, and the store test-suite runs against both. Relays never
//! query the store per visitor request: they load a [`Snapshot`] and reload it when
//! [`Store::revision`] changes.
//!
//! Non-goals: no caching, no network protocol, no HTTP. Secrets are never stored: credentials keep
//! an HMAC of the secret ([`SecretHasher`]), admin passwords an argon2id hash.

mod admin;
mod api_token;
mod audit;
mod certificate;
mod credential;
mod hostname;
mod name;
mod node;
mod pairing;
mod pairing_cluster;
mod password;
#[cfg(test)]
mod plans;
mod policy;
mod queue;
mod secret;
mod session_log;
mod tenant;
mod web;

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::AnyPool;
use sqlx::Executor;

pub use admin::AdminUser;
pub use api_token::{AdminAction, ApiToken, NewApiToken};
pub use audit::{AuditFilter, AuditRecord, MinuteStats};
pub use certificate::{
    check_certificate, AcmeHostname, CertificateInfo, CertificateKey, CertificateSource,
    CheckedCertificate, IssuanceLock, LoadedCertificate, MAX_CHAIN_PEM_BYTES, MAX_KEY_PEM_BYTES,
};
pub use credential::{Credential, CredentialId, CredentialRecord, NewCredential};
pub use hostname::{canonical_hostname, valid_label, Hostname, HostnameError};
pub use name::{ascii_lowercase, canonical_name, validate_name, NameError};
pub use node::{NodeRecord, NodeState, SingleNodeLock};
pub use pairing::{
    parse_pairing_token, NewPairingToken, PairingAccess, PairingMode, PairingToken, MAX_PEER_ID_LEN,
};
pub use pairing_cluster::HeldElsewhere;
pub use password::{password_hash_permits, M_COST_KIB};
pub use policy::{
    hash_password, parse_api_key, parse_cidr, verify_password, ApiKey, ApiKeyRecord, ApiKeyRule,
    BasicRule, CorsRule, JwtKey, JwtRule, NewApiKey, PolicyRecord, PolicyRules, PolicyScope,
    RateLimitRule, Rule, DEFAULT_API_KEY_HEADER, JWT_ALGORITHMS, MAX_JWT_LEEWAY_SECS,
};
pub use queue::{
    decode_headers, encode_headers, BodyPreview, Cancelled, Discarded, Enqueued, Finish,
    MessagePreview, NewMessage, QueueCounts, QueueMessage, QueueQuota, QueueSettings, QueueState,
    StoredHeader, StoredResponse, PREVIEW_BYTES,
};
pub use secret::{parse_secret, SecretHasher};
pub use session_log::{RemoteSessions, SessionRecord};
pub use tenant::{Tenant, TenantId, TenantLimits, TenantSettings};
pub use web::{NewWebSession, WebSession};

static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/postgres");

/// How long a writer waits for SQLite's lock before failing (the data plane never waits on it).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the SQLite pool: one writer at a time anyway; a few readers.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// Connections in the PostgreSQL pool of one process.
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// How long to wait for a pooled connection before the operation fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every SQLite connection's settings, the pool's and the audit log's own (`audit::DirectAudit`):
/// enforce foreign keys, wait (bounded) for the writer lock, and let readers run beside the
/// writer. NORMAL syncs at WAL checkpoints instead of every commit: a power cut may lose the
/// newest records but never corrupts the file, and session history and audit batches stop
/// waiting on an fsync each (measured: 10 000 sessions ramp).
fn sqlite_pragmas() -> String {
    format!(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = NORMAL;",
        SQLITE_BUSY_TIMEOUT.as_millis()
    )
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: production, several relay nodes.
    Postgres,
    /// SQLite: the embedded default for one node.
    Sqlite,
}

/// Appends `rows` copies of `row` (one row of a multi-row `VALUES`, each `?` one parameter),
/// comma-separated, to `sql`. PostgreSQL gets `$1, $2, …` numbered across the rows. SQLite gets
/// bare `?`, which it numbers in order without a name: a named parameter (`$N`) is looked up by a
/// linear scan of all names, and sqlx looks every one up when it binds, so a statement of n named
/// parameters cost O(n²) (5 % of the relay's instructions per request in audit inserts).
pub(crate) fn push_rows(sql: &mut String, backend: Backend, row: &str, rows: usize) {
    use std::fmt::Write;
    let mut n = 0;
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        match backend {
            Backend::Sqlite => sql.push_str(row),
            Backend::Postgres => {
                for (k, part) in row.split('?').enumerate() {
                    if k > 0 {
                        n += 1;
                        let _ = write!(sql, "${n}");
                    }
                    sql.push_str(part);
                }
            }
        }
    }
}

/// A store failure, in the store's vocabulary: callers never see SQL error codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tenant with that name exists already.
    #[error("tenant {0} already exists")]
    TenantExists(String),
    /// No tenant with that name.
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    /// No such credential for that tenant.
    #[error("credential {0} not found")]
    CredentialNotFound(String),
    /// No such visitor API key for that tenant.
    #[error("API key {0} not found")]
    ApiKeyNotFound(String),
    /// Access policy rules that cannot be stored.
    #[error("invalid access policy: {0}")]
    InvalidPolicy(String),
    /// No such pairing token for that tenant.
    #[error("pairing token {0} not found")]
    PairingTokenNotFound(String),
    /// A peer id a pairing token cannot be bound to (empty or too long).
    #[error("invalid peer id {0:?} (1 to 128 bytes)")]
    InvalidPeerId(String),
    /// The hostname belongs to a tenant already.
    #[error("hostname {0} is taken")]
    HostnameTaken(String),
    /// No such hostname for that tenant.
    #[error("hostname {0} not found")]
    HostnameNotFound(String),
    /// The hostname has no stored certificate.
    #[error("hostname {0} has no certificate")]
    CertificateNotFound(String),
    /// The hostname is not marked for ACME certificates.
    #[error("hostname {0} does not get certificates from ACME (turn it on first)")]
    NotAcme(String),
    /// An uploaded (or issued) certificate that cannot be served: the message says why.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A private key could not be sealed or opened with the relays' certificate key.
    #[error("certificate key: {0}")]
    CertificateKey(String),
    /// A hostname is not a valid DNS name.
    #[error(transparent)]
    InvalidHostname(#[from] HostnameError),
    /// An admin user with that name exists already.
    #[error("admin user {0} already exists")]
    AdminUserExists(String),
    /// An API token with that name exists already.
    #[error("API token {0} already exists")]
    ApiTokenExists(String),
    /// No API token with that id or name.
    #[error("API token {0} not found")]
    ApiTokenNotFound(String),
    /// Another relay process serves from this SQLite database (it holds the lock file named).
    #[error(
        "another relay process is serving from this SQLite database (it holds {0}); SQLite serves \
         one relay node: stop the other process, or use PostgreSQL (database_url = \
         \"postgres://…\") to run several nodes"
    )]
    SqliteInUse(String),
    /// The single-node lock file could not be created or locked.
    #[error("cannot lock {0}")]
    Lock(String),
    /// No live relay node has that name or id.
    #[error("no live relay node has the name or id {0}")]
    NodeNotFound(String),
    /// Several live relay nodes have that name: use the node id.
    #[error("several live relay nodes are named {0}; use the node id")]
    NodeAmbiguous(String),
    /// A name does not follow the naming rule.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The database URL's scheme is not one this build supports.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// The database holds a schema newer than this binary knows.
    #[error("the database schema is newer than this build (migration {0} is unknown); upgrade the binary")]
    SchemaTooNew(i64),
    /// Every password-hashing slot stayed busy for 2 s: try again shortly (logins answer 429).
    #[error("password hashing is busy; try again")]
    HashingBusy,
    /// Hashing a password failed.
    #[error("password hashing failed")]
    PasswordHash,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite file failed on the audit log's own connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Migrating failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The tenants and credentials a relay needs in memory, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The revision this snapshot reflects.
    pub revision: i64,
    /// Every tenant, enabled or not.
    pub tenants: Vec<Tenant>,
    /// Every credential that is not revoked.
    pub credentials: Vec<CredentialRecord>,
    /// Every hostname route.
    pub hostnames: Vec<Hostname>,
    /// Every visitor access policy.
    pub policies: Vec<PolicyRecord>,
    /// Every visitor API key that is not revoked.
    pub api_keys: Vec<ApiKeyRecord>,
}

/// A handle on the database; cheap to clone.
///
/// One schema, two backends: every query is written once with `$n` placeholders (which SQLite
/// also understands, in order) and runs through sqlx's `Any` driver; the migrations differ per
/// backend only in types and triggers.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: Url,
    /// Queue accepts waiting for, or in, a shared INSERT.
    group_commit: std::sync::Arc<queue::GroupCommit>,
    finish_group: std::sync::Arc<queue::FinishGroup>,
    /// A SQLite file's audit inserts, on a connection of their own (`None`: through the pool).
    direct_audit: Option<std::sync::Arc<audit::DirectAudit>>,
}

/// The database URL, kept for the PostgreSQL change listener; never printed (it may hold a
/// password).
#[derive(Clone)]
struct Url(std::sync::Arc<str>);

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Url(***)")
    }
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH`, created when missing, or `postgres://…`)
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::UnsupportedUrl(url.to_string()));
        };
        let (url, max) = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}mode=rwc"), SQLITE_MAX_CONNECTIONS)
            }
            Backend::Sqlite => (url.to_string(), SQLITE_MAX_CONNECTIONS),
            Backend::Postgres => (url.to_string(), POSTGRES_MAX_CONNECTIONS),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(&*sqlite_pragmas()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Store {
            pool,
            backend,
            url: Url(url.as_str().into()),
            group_commit: std::sync::Arc::default(),
            finish_group: std::sync::Arc::default(),
            direct_audit: match backend {
                Backend::Sqlite => audit::DirectAudit::for_url(&url).map(std::sync::Arc::new),
                Backend::Postgres => None,
            },
        };
        store.migrate().await?;
        Ok(store)
    }

    /// PostgreSQL only: calls `on_change` each time any process changes tenants, credentials or
    /// hostnames (the triggers' `NOTIFY relay_catalog`), reconnecting after failures; runs until
    /// the task is dropped. Returns at once on SQLite, where one process makes the changes.
    pub async fn listen_for_changes(&self, on_change: impl Fn() + Send) {
        self.listen("relay_catalog", move |_| on_change()).await
    }

    /// On PostgreSQL, calls `on_session(tenant)` whenever a node records a new connector session
    /// of `tenant` ([`Store::announce_session`]), and `on_session(None)` after every (re)connect
    /// (sessions may have opened unheard); never returns. On SQLite it returns at once.
    pub async fn listen_for_sessions(&self, on_session: impl Fn(Option<&str>) + Send) {
        self.listen("relay_sessions", on_session).await
    }

    /// Tells the other nodes that `tenant` has a new session (`NOTIFY relay_sessions`; nothing on
    /// SQLite).
    pub async fn announce_session(&self, tenant: &str) -> Result<(), Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('relay_sessions', $1)")
                .bind(tenant)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// On PostgreSQL, calls `on_message` whenever a node accepts a queue message (`NOTIFY
    /// relay_queue`), and once after every (re)connect; never returns. On SQLite it returns at
    /// once: the one node wakes itself.
    pub async fn listen_for_queue(&self, on_message: impl Fn() + Send) {
        self.listen("relay_queue", move |_| on_message()).await
    }

    async fn listen(&self, channel: &str, on_change: impl Fn(Option<&str>) + Send) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut failures: u32 = 0;
        loop {
            let error = match sqlx::postgres::PgListener::connect(&self.url.0).await {
                Ok(mut listener) => match listener.listen(channel).await {
                    Ok(()) => {
                        failures = 0;
                        // Changes made while (re)connecting were not heard: let the caller check.
                        on_change(None);
                        loop {
                            match listener.recv().await {
                                Ok(n) => on_change(Some(n.payload())),
                                Err(e) => break e,
                            }
                        }
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            if failures == 1 {
                tracing::warn!(error = %error, channel, "change listener failed; polling meanwhile");
            }
            // Bounded backoff (0.5 s to 10 s); the revision poll covers the gap.
            let wait = Duration::from_millis(500u64.saturating_mul(u64::from(failures.min(20))));
            tokio::time::sleep(wait).await;
        }
    }

    /// A transaction that will write: on SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so that a read followed by a write cannot fail with "database is locked" when
    /// another connection wrote in between (a deferred transaction cannot upgrade then).
    pub(crate) async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, Error> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Which backend this store uses.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite database file, if this store is one (not for `:memory:`).
    fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let rest = self.url.0.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or_default();
        (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
    }

    fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Postgres => &POSTGRES,
            Backend::Sqlite => &SQLITE,
        }
    }

    /// Applies pending migrations; refuses a database migrated by a newer build.
    pub async fn migrate(&self) -> Result<(), Error> {
        let known: Vec<i64> = self.migrator().iter().map(|m| m.version).collect();
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        if let Some((v,)) = applied.iter().find(|(v,)| !known.contains(v)) {
            return Err(Error::SchemaTooNew(*v));
        }
        self.migrator().run(&self.pool).await?;
        Ok(())
    }

    /// A counter that every tenant or credential change increases.
    pub async fn revision(&self) -> Result<i64, Error> {
        let (v,): (i64,) = sqlx::query_as("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }

    /// Reads everything a relay caches, consistently.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        let mut tx = self.pool.begin().await?;
        let (revision,): (i64,) = sqlx::query_as("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let tenants = sqlx::query_as::<_, tenant::TenantRow>(tenant::SELECT_ALL)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(Tenant::from)
            .collect();
        let credentials = sqlx::query_as::<_, credential::RecordRow>(credential::SELECT_ACTIVE)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(CredentialRecord::from)
            .collect();
        let hostnames = sqlx::query_as::<_, hostname::HostnameRow>(hostname::SELECT_ALL)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(Hostname::from)
            .collect();
        let policies = sqlx::query_as::<_, policy::PolicyRow>(policy::SELECT_POLICIES)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(policy::PolicyRow::into_record)
            .collect();
        let api_keys = sqlx::query_as::<_, policy::KeyRecordRow>(policy::SELECT_ACTIVE_KEYS)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(ApiKeyRecord::from)
            .collect();
        tx.commit().await?;
        Ok(Snapshot {
            revision,
            tenants,
            credentials,
            hostnames,
            policies,
            api_keys,
        })
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A PostgreSQL advisory lock key for `parts`: the first 64 bits of a SHA-256 over them, each
/// prefixed with its length (so no two lists of parts share a key by concatenation).
pub(crate) fn advisory_key(parts: &[&str]) -> i64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// Milliseconds since the Unix epoch, the store's timestamp unit.
pub fn now_ms() -> i64 {
    unix_ms(std::time::SystemTime::now())
}

/// `t` in milliseconds since the Unix epoch (0 before it, saturating far after it).
pub fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        let mut pg = String::from("VALUES ");
        push_rows(&mut pg, Backend::Postgres, "(?, 'x', ?)", 3);
        assert_eq!(pg, "VALUES ($1, 'x', $2), ($3, 'x', $4), ($5, 'x', $6)");
        let mut lite = String::from("VALUES ");
        push_rows(&mut lite, Backend::Sqlite, "(?, 'x', ?)", 2);
        assert_eq!(lite, "VALUES (?, 'x', ?), (?, 'x', ?)");
    }
}
