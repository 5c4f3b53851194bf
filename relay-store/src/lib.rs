//! Persistence for tenants, connector credentials and admin users.
//!
//! Callers hold a [`Store`]; `Store::connect(url)` picks the backend from the URL scheme and runs
//! the migrations. Today the backend is SQLite (the embedded default, one relay node); PostgreSQL
//! slots in behind the same methods. Relays never query the store per visitor request: they load a
//! [`Snapshot`] and reload it when [`Store::revision`] changes.
//!
//! Non-goals: no caching, no network protocol, no HTTP. Secrets are never stored: credentials keep
//! an HMAC of the secret ([`SecretHasher`]), admin passwords an argon2id hash.

mod admin;
mod credential;
mod hostname;
mod name;
mod secret;
mod tenant;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use admin::AdminUser;
pub use credential::{Credential, CredentialId, CredentialRecord, NewCredential};
pub use hostname::{canonical_hostname, Hostname, HostnameError};
pub use name::{validate_name, NameError};
pub use secret::{parse_secret, SecretHasher};
pub use tenant::{Tenant, TenantId, TenantLimits};

static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer waits for SQLite's lock before failing (the data plane never waits on it).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the SQLite pool: one writer at a time anyway; a few readers.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

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
    /// The hostname belongs to a tenant already.
    #[error("hostname {0} is taken")]
    HostnameTaken(String),
    /// No such hostname for that tenant.
    #[error("hostname {0} not found")]
    HostnameNotFound(String),
    /// A hostname is not a valid DNS name.
    #[error(transparent)]
    InvalidHostname(#[from] HostnameError),
    /// An admin user with that name exists already.
    #[error("admin user {0} already exists")]
    AdminUserExists(String),
    /// A name does not follow the naming rule.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The database URL's scheme is not one this build supports.
    #[error("unsupported database URL {0:?}: use sqlite://PATH (PostgreSQL support is not in this build yet)")]
    UnsupportedUrl(String),
    /// The database holds a schema newer than this binary knows.
    #[error("the database schema is newer than this build (migration {0} is unknown); upgrade the binary")]
    SchemaTooNew(i64),
    /// Hashing a password failed.
    #[error("password hashing failed")]
    PasswordHash,
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
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
}

/// A handle on the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating when missing) the database at `url` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, Error> {
        if !(url.starts_with("sqlite:") || url.starts_with("sqlite://")) {
            return Err(Error::UnsupportedUrl(url.to_string()));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        let store = Store { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; refuses a database migrated by a newer build.
    pub async fn migrate(&self) -> Result<(), Error> {
        let known: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        let applied: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        if let Some((v,)) = applied.iter().find(|(v,)| !known.contains(v)) {
            return Err(Error::SchemaTooNew(*v));
        }
        SQLITE.run(&self.pool).await?;
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
        tx.commit().await?;
        Ok(Snapshot {
            revision,
            tenants,
            credentials,
            hostnames,
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

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
