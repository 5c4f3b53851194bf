//! Admin API tokens for the management API (`Authorization: Bearer rat_…`), and the record of
//! admin actions.
//!
//! A token reads `rat_<id>_<43 base64url chars>` (256 random bits), is shown once, and is stored
//! only as an HMAC with the relay's pepper ([`SecretHasher`]); verifying it is one lookup by id
//! and a constant-time comparison.

use crate::secret::{self, SecretHasher, TOKEN_PREFIX};
use crate::{is_unique_violation, now_ms, validate_name, Error, Store};

/// A token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id (also inside the token).
    pub id: String,
    /// A name for humans, unique.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last successful use, ms since the epoch.
    pub last_used_at: Option<i64>,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

/// A token just created: the only time its value exists outside the holder's hands.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// The listed record.
    pub token: ApiToken,
    /// The bearer value, to show once.
    pub value: String,
}

/// One admin action: who did what to which object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAction {
    /// `cli`, `user:NAME` or `token:NAME`.
    pub actor: String,
    /// E.g. `tenant.create`, `credential.revoke`.
    pub action: String,
    /// The object, e.g. the tenant name or `tenant/credential-id`.
    pub object: String,
    /// When, ms since the epoch.
    pub created_at: i64,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<TokenRow> for ApiToken {
    fn from(r: TokenRow) -> ApiToken {
        ApiToken {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ActionRow {
    actor: String,
    action: String,
    object: String,
    created_at: i64,
}

const SELECT_TOKEN: &str = "SELECT id, name, created_at, last_used_at, revoked_at FROM api_tokens";

impl Store {
    /// Creates a token named `name` (the naming rule of tenants applies).
    pub async fn create_api_token(
        &self,
        name: &str,
        hasher: &SecretHasher,
    ) -> Result<NewApiToken, Error> {
        let name = validate_name(name)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let value = secret::generate_with(TOKEN_PREFIX, &id);
        let now = now_ms();
        let result = sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&name)
        .bind(hasher.hash(&value))
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(NewApiToken {
                token: ApiToken {
                    id,
                    name,
                    created_at: now,
                    last_used_at: None,
                    revoked_at: None,
                },
                value,
            }),
            Err(e) if is_unique_violation(&e) => Err(Error::ApiTokenExists(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// The token a bearer value belongs to, if it is well-formed, matches and is not revoked;
    /// records the use.
    pub async fn verify_api_token(
        &self,
        value: &str,
        hasher: &SecretHasher,
    ) -> Result<Option<ApiToken>, Error> {
        let Some(id) = secret::parse_with(TOKEN_PREFIX, value) else {
            return Ok(None);
        };
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT token_hash FROM api_tokens WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((hash,)) = row else { return Ok(None) };
        if !hasher.verify(value, &hash) {
            return Ok(None);
        }
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query_as::<_, TokenRow>(&format!("{SELECT_TOKEN} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(ApiToken::from))
    }

    /// All tokens, newest first, revoked ones included.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, Error> {
        let rows =
            sqlx::query_as::<_, TokenRow>(&format!("{SELECT_TOKEN} ORDER BY created_at DESC, id"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(ApiToken::from).collect())
    }

    /// Revokes the token `id_or_name`; revoking twice is not an error.
    pub async fn revoke_api_token(&self, id_or_name: &str) -> Result<ApiToken, Error> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE (id = $2 OR name = $3) AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id_or_name)
        .bind(id_or_name.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        let _ = done;
        let row =
            sqlx::query_as::<_, TokenRow>(&format!("{SELECT_TOKEN} WHERE id = $1 OR name = $2"))
                .bind(id_or_name)
                .bind(id_or_name.to_ascii_lowercase())
                .fetch_optional(&self.pool)
                .await?;
        row.map(ApiToken::from)
            .ok_or_else(|| Error::ApiTokenNotFound(id_or_name.to_string()))
    }

    /// Records an admin action.
    pub async fn record_admin_action(
        &self,
        actor: &str,
        action: &str,
        object: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO admin_actions (id, actor, action, object, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(actor)
        .bind(action)
        .bind(object)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest admin actions, at most `limit` (capped at 1000).
    pub async fn admin_actions(&self, limit: u32) -> Result<Vec<AdminAction>, Error> {
        let rows = sqlx::query_as::<_, ActionRow>(
            "SELECT actor, action, object, created_at FROM admin_actions \
             ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit.min(1000)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AdminAction {
                actor: r.actor,
                action: r.action,
                object: r.object,
                created_at: r.created_at,
            })
            .collect())
    }
}
