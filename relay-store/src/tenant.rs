//! Tenants: the isolation boundary owning targets, connectors and limits.

use std::fmt;

use crate::{is_unique_violation, now_ms, validate_name, Error, Store};

/// A tenant's id (a UUID), distinct from its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub String);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-tenant overrides of the relay's defaults; `None` means "use the relay's default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Largest request body accepted from a visitor.
    pub max_body_bytes: Option<u64>,
    /// Most streams in flight for the tenant across its sessions.
    pub max_concurrent_streams: Option<u32>,
    /// How long the relay waits for the connector's response head.
    pub request_timeout_ms: Option<u64>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Its canonical (lowercase) name, used in relay URLs.
    pub name: String,
    /// A name for people.
    pub display_name: String,
    /// Free text for admins.
    pub description: String,
    /// Whether audit records keep the query string of this tenant's requests (off by default:
    /// query strings often carry secrets).
    pub audit_query_strings: bool,
    /// Disabled tenants look exactly like unknown ones to visitors, and their sessions close.
    pub enabled: bool,
    /// Its limits.
    pub limits: TenantLimits,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

/// Changes to a tenant's descriptive and audit settings; `None` leaves a value as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSettings {
    /// A name for people (at most 200 characters kept).
    pub display_name: Option<String>,
    /// Free text (at most 2000 characters kept).
    pub description: Option<String>,
    /// Keep query strings in this tenant's audit records.
    pub audit_query_strings: Option<bool>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: String,
    name: String,
    display_name: String,
    description: String,
    audit_query_strings: i64,
    enabled: i64,
    max_body_bytes: Option<i64>,
    max_concurrent_streams: Option<i64>,
    request_timeout_ms: Option<i64>,
    created_at: i64,
}

pub(crate) const SELECT_ALL: &str =
    "SELECT id, name, display_name, description, audit_query_strings, enabled, max_body_bytes, \
     max_concurrent_streams, request_timeout_ms, created_at FROM tenants ORDER BY name";

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Tenant {
        Tenant {
            id: TenantId(r.id),
            name: r.name,
            display_name: r.display_name,
            description: r.description,
            audit_query_strings: r.audit_query_strings != 0,
            enabled: r.enabled != 0,
            limits: TenantLimits {
                max_body_bytes: r.max_body_bytes.and_then(|v| u64::try_from(v).ok()),
                max_concurrent_streams: r
                    .max_concurrent_streams
                    .and_then(|v| u32::try_from(v).ok()),
                request_timeout_ms: r.request_timeout_ms.and_then(|v| u64::try_from(v).ok()),
            },
            created_at: r.created_at,
        }
    }
}

impl Store {
    /// Creates an enabled tenant named `name` (canonicalised to lowercase).
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, Error> {
        let name = validate_name(name)?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO tenants (id, name, display_name, enabled, created_at) VALUES ($1, $2, $3, 1, $4)",
        )
        .bind(&id)
        .bind(&name)
        .bind(&name)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(Error::TenantExists(name)),
            Err(e) => return Err(e.into()),
        }
        self.tenant(&name).await?.ok_or(Error::TenantNotFound(name))
    }

    /// The tenant named `name`, if any.
    pub async fn tenant(&self, name: &str) -> Result<Option<Tenant>, Error> {
        let name = name.to_ascii_lowercase();
        let row = sqlx::query_as::<_, TenantRow>(&format!(
            "{} WHERE name = $1",
            SELECT_ALL.trim_end_matches(" ORDER BY name")
        ))
        .bind(&name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Tenant::from))
    }

    /// Every tenant, by name.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, Error> {
        let rows = sqlx::query_as::<_, TenantRow>(SELECT_ALL)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(Tenant::from).collect())
    }

    /// How many tenants there are, and how many of them are enabled.
    pub async fn tenant_counts(&self) -> Result<(u64, u64), Error> {
        let (total, enabled): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(CASE WHEN enabled = 1 THEN 1 END) FROM tenants")
                .fetch_one(&self.pool)
                .await?;
        Ok((
            u64::try_from(total).unwrap_or(0),
            u64::try_from(enabled).unwrap_or(0),
        ))
    }

    /// One page of tenants by name whose name or display name contains `search`
    /// (case-insensitive; empty matches all), and how many match in all.
    pub async fn tenants_page(
        &self,
        search: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<Tenant>, u64), Error> {
        // LIKE's own wildcards in the search are taken literally.
        let escaped: String = search
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let pattern = format!("%{escaped}%");
        let filter =
            "WHERE (LOWER(name) LIKE $1 ESCAPE '\\' OR LOWER(display_name) LIKE $2 ESCAPE '\\')";
        let (total,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM tenants {filter}"))
            .bind(&pattern)
            .bind(&pattern)
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query_as::<_, TenantRow>(&format!(
            "{} {filter} ORDER BY name LIMIT $3 OFFSET $4",
            SELECT_ALL.trim_end_matches(" ORDER BY name")
        ))
        .bind(&pattern)
        .bind(&pattern)
        .bind(i64::from(limit.min(1000)))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok((
            rows.into_iter().map(Tenant::from).collect(),
            u64::try_from(total).unwrap_or(0),
        ))
    }

    /// Enables or disables a tenant. Relays close a disabled tenant's sessions.
    pub async fn set_tenant_enabled(&self, name: &str, enabled: bool) -> Result<(), Error> {
        let done = sqlx::query("UPDATE tenants SET enabled = $1 WHERE name = $2")
            .bind(i64::from(enabled))
            .bind(name.to_ascii_lowercase())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::TenantNotFound(name.to_string()));
        }
        Ok(())
    }

    /// Sets a tenant's limits (all three at once; `None` restores the relay default).
    pub async fn set_tenant_limits(&self, name: &str, limits: &TenantLimits) -> Result<(), Error> {
        let done = sqlx::query(
            "UPDATE tenants SET max_body_bytes = $1, max_concurrent_streams = $2, \
             request_timeout_ms = $3 WHERE name = $4",
        )
        .bind(limits.max_body_bytes.map(|v| v.min(i64::MAX as u64) as i64))
        .bind(limits.max_concurrent_streams.map(i64::from))
        .bind(
            limits
                .request_timeout_ms
                .map(|v| v.min(i64::MAX as u64) as i64),
        )
        .bind(name.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::TenantNotFound(name.to_string()));
        }
        Ok(())
    }

    /// Deletes a tenant and its credentials.
    /// Sets the descriptive and audit settings of a tenant (`None` keeps a value).
    pub async fn set_tenant_settings(
        &self,
        name: &str,
        settings: &TenantSettings,
    ) -> Result<Tenant, Error> {
        let t = self
            .tenant(name)
            .await?
            .ok_or_else(|| Error::TenantNotFound(name.to_string()))?;
        let display_name = settings.display_name.clone().unwrap_or(t.display_name);
        let description = settings.description.clone().unwrap_or(t.description);
        let audit_query_strings = settings
            .audit_query_strings
            .unwrap_or(t.audit_query_strings);
        sqlx::query(
            "UPDATE tenants SET display_name = $1, description = $2, audit_query_strings = $3 \
             WHERE id = $4",
        )
        .bind(display_name.chars().take(200).collect::<String>())
        .bind(description.chars().take(2000).collect::<String>())
        .bind(i64::from(audit_query_strings))
        .bind(&t.id.0)
        .execute(&self.pool)
        .await?;
        self.tenant(&t.name)
            .await?
            .ok_or_else(|| Error::TenantNotFound(name.to_string()))
    }

    pub async fn delete_tenant(&self, name: &str) -> Result<(), Error> {
        let mut tx = self.write_transaction().await?;
        let id: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE name = $1")
            .bind(name.to_ascii_lowercase())
            .fetch_optional(&mut *tx)
            .await?;
        let Some((id,)) = id else {
            return Err(Error::TenantNotFound(name.to_string()));
        };
        // Its queue goes with it (messages, bodies, responses, settings), its pairing and its
        // access policies and visitor API keys.
        for table in [
            "queue_messages",
            "tenant_queue_settings",
            "tenant_pairing",
            "pairing_tokens",
            "access_policies",
            "policy_api_keys",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM tenants WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
