//! Connector credentials: a tenant's long-lived secrets, stored as keyed hashes.

use std::fmt;

use crate::{now_ms, secret, Error, SecretHasher, Store, TenantId};

/// A credential's id (32 hex digits); it is also embedded in the secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(pub String);

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A credential as listed to admins: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its id.
    pub id: CredentialId,
    /// The owning tenant's name.
    pub tenant: String,
    /// A free-form label.
    pub label: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last successful use, ms since the epoch.
    pub last_used_at: Option<i64>,
    /// Revocation time, ms since the epoch.
    pub revoked_at: Option<i64>,
}

/// A credential just created: the only time its secret exists outside the connector.
pub struct NewCredential {
    /// The stored credential.
    pub credential: Credential,
    /// The secret, to show once.
    pub secret: String,
}

impl fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCredential")
            .field("credential", &self.credential)
            .field("secret", &"***")
            .finish()
    }
}

/// What a relay keeps in memory to verify a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    /// Its id.
    pub id: CredentialId,
    /// The owning tenant.
    pub tenant_id: TenantId,
    /// HMAC-SHA-256(pepper, secret).
    pub secret_hash: Vec<u8>,
}

impl fmt::Debug for CredentialRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RecordRow {
    id: String,
    tenant_id: String,
    secret_hash: Vec<u8>,
}

pub(crate) const SELECT_ACTIVE: &str =
    "SELECT id, tenant_id, secret_hash FROM credentials WHERE revoked_at IS NULL";

impl From<RecordRow> for CredentialRecord {
    fn from(r: RecordRow) -> CredentialRecord {
        CredentialRecord {
            id: CredentialId(r.id),
            tenant_id: TenantId(r.tenant_id),
            secret_hash: r.secret_hash,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    id: String,
    tenant: String,
    label: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<CredentialRow> for Credential {
    fn from(r: CredentialRow) -> Credential {
        Credential {
            id: CredentialId(r.id),
            tenant: r.tenant,
            label: r.label,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

const SELECT_LISTED: &str = "SELECT c.id, t.name AS tenant, c.label, c.created_at, \
     c.last_used_at, c.revoked_at FROM credentials c JOIN tenants t ON t.id = c.tenant_id";

impl Store {
    /// Creates a credential for tenant `tenant`; the returned secret is never stored.
    pub async fn create_credential(
        &self,
        tenant: &str,
        label: &str,
        hasher: &SecretHasher,
    ) -> Result<NewCredential, Error> {
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = secret::generate(&id);
        sqlx::query(
            "INSERT INTO credentials (id, tenant_id, label, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(&t.id.0)
        .bind(label)
        .bind(hasher.hash(&secret))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let credential = self
            .credential(&t.name, &id)
            .await?
            .ok_or_else(|| Error::CredentialNotFound(id.clone()))?;
        Ok(NewCredential { credential, secret })
    }

    /// One credential of a tenant.
    pub async fn credential(&self, tenant: &str, id: &str) -> Result<Option<Credential>, Error> {
        let row = sqlx::query_as::<_, CredentialRow>(&format!(
            "{SELECT_LISTED} WHERE t.name = $1 AND c.id = $2"
        ))
        .bind(tenant.to_ascii_lowercase())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Credential::from))
    }

    /// A tenant's credentials, newest first, revoked ones included.
    pub async fn credentials(&self, tenant: &str) -> Result<Vec<Credential>, Error> {
        if self.tenant(tenant).await?.is_none() {
            return Err(Error::TenantNotFound(tenant.to_string()));
        }
        let rows = sqlx::query_as::<_, CredentialRow>(&format!(
            "{SELECT_LISTED} WHERE t.name = $1 ORDER BY c.created_at DESC"
        ))
        .bind(tenant.to_ascii_lowercase())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Credential::from).collect())
    }

    /// Revokes a credential; relays close the sessions that use it.
    pub async fn revoke_credential(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if !self.revoke_row("credentials", tenant, id).await? {
            return Err(Error::CredentialNotFound(id.to_string()));
        }
        Ok(())
    }

    /// Sets `revoked_at` on row `id` of `table` — a tenant's credentials, pairing tokens and
    /// API keys share the shape — when the row is `tenant`'s and not revoked yet; whether it was.
    pub(crate) async fn revoke_row(
        &self,
        table: &'static str,
        tenant: &str,
        id: &str,
    ) -> Result<bool, Error> {
        let done = sqlx::query(&format!(
            "UPDATE {table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
             AND tenant_id = (SELECT id FROM tenants WHERE name = $3)"
        ))
        .bind(now_ms())
        .bind(id)
        .bind(tenant.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a successful use (best effort; it does not bump the revision).
    pub async fn touch_credential(&self, id: &CredentialId) -> Result<(), Error> {
        sqlx::query("UPDATE credentials SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(&id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
