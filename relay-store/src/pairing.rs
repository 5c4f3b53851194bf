//! Pairing settings per tenant (off, open, token) and pairing tokens, stored as keyed hashes like
//! connector credentials. The relay's `/pair/{tenant}/…` endpoints read them (docs/pairing.md).

use std::fmt;

use crate::{now_ms, secret, Error, SecretHasher, Store};

/// The prefix of pairing tokens: `rpt_{id}_{256 random bits, base64url}` (URL-safe as a path
/// segment, so browsers can put it in the base URL).
const TOKEN_PREFIX: &str = "rpt_";
/// Longest peer id a token may be bound to (the relay refuses longer peer ids anyway).
pub const MAX_PEER_ID_LEN: usize = 128;

/// Who may use a tenant's pairing endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PairingMode {
    /// Pairing is off: every socket is refused (the default).
    #[default]
    Off,
    /// Anyone who knows the tenant's base URL.
    Open,
    /// Only with one of the tenant's pairing tokens in the base URL.
    Token,
}

impl PairingMode {
    /// The stored and printed name: `off`, `open`, `token`.
    pub fn as_str(self) -> &'static str {
        match self {
            PairingMode::Off => "off",
            PairingMode::Open => "open",
            PairingMode::Token => "token",
        }
    }
}

impl fmt::Display for PairingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PairingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<PairingMode, String> {
        match s {
            "off" => Ok(PairingMode::Off),
            "open" => Ok(PairingMode::Open),
            "token" => Ok(PairingMode::Token),
            other => Err(format!("unknown pairing mode {other:?} (off, open, token)")),
        }
    }
}

/// A pairing token as listed to admins: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingToken {
    /// Its id (32 hex digits, also inside the token).
    pub id: String,
    /// The owning tenant's name.
    pub tenant: String,
    /// The one peer id it admits, or `None` for any.
    pub peer_id: Option<String>,
    /// A free-form label.
    pub label: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Revocation time, ms since the epoch.
    pub revoked_at: Option<i64>,
}

/// A pairing token just created: the only time its value exists outside the app.
pub struct NewPairingToken {
    /// The stored token.
    pub token: PairingToken,
    /// The value for the base URL, shown once.
    pub value: String,
}

impl fmt::Debug for NewPairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewPairingToken")
            .field("token", &self.token)
            .field("value", &"***")
            .finish()
    }
}

/// What the relay needs to admit a socket: the tenant's mode and, when a well-formed token was
/// offered, that token's stored hash and peer binding (if it exists and is not revoked).
#[derive(Clone, PartialEq, Eq)]
pub struct PairingAccess {
    /// The tenant's mode.
    pub mode: PairingMode,
    /// `(HMAC-SHA-256(pepper, token), bound peer id)` of the offered token's id.
    pub token: Option<(Vec<u8>, Option<String>)>,
}

impl fmt::Debug for PairingAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingAccess")
            .field("mode", &self.mode)
            .field("token", &self.token.as_ref().map(|(_, peer)| peer))
            .finish()
    }
}

/// The token id inside a well-formed pairing token; `None` for anything else.
pub fn parse_pairing_token(value: &str) -> Option<&str> {
    secret::parse_with(TOKEN_PREFIX, value)
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    tenant: String,
    peer_id: Option<String>,
    label: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<TokenRow> for PairingToken {
    fn from(r: TokenRow) -> PairingToken {
        PairingToken {
            id: r.id,
            tenant: r.tenant,
            peer_id: r.peer_id,
            label: r.label,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

const SELECT_LISTED: &str = "SELECT p.id, t.name AS tenant, p.peer_id, p.label, p.created_at, \
     p.revoked_at FROM pairing_tokens p JOIN tenants t ON t.id = p.tenant_id";

impl Store {
    /// A tenant's pairing mode (`Off` when never set).
    pub async fn pairing_mode(&self, tenant_id: &str) -> Result<PairingMode, Error> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT mode FROM tenant_pairing WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        // An unknown stored value (a newer build's mode) reads as off: fail closed.
        Ok(row
            .and_then(|(m,)| m.parse().ok())
            .unwrap_or(PairingMode::Off))
    }

    /// Sets a tenant's pairing mode (by tenant name); returns the previous one.
    pub async fn set_pairing_mode(
        &self,
        tenant: &str,
        mode: PairingMode,
    ) -> Result<PairingMode, Error> {
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        let old = self.pairing_mode(&t.id.0).await?;
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM tenant_pairing WHERE tenant_id = $1")
            .bind(&t.id.0)
            .execute(&mut *tx)
            .await?;
        if mode != PairingMode::Off {
            sqlx::query("INSERT INTO tenant_pairing (tenant_id, mode) VALUES ($1, $2)")
                .bind(&t.id.0)
                .bind(mode.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(old)
    }

    /// The tenant's mode and, for a well-formed `token`, its active record: one round trip's
    /// worth of reads for each socket the relay admits.
    pub async fn pairing_access(
        &self,
        tenant_id: &str,
        token: Option<&str>,
    ) -> Result<PairingAccess, Error> {
        let mode = self.pairing_mode(tenant_id).await?;
        let id = token.and_then(parse_pairing_token);
        let token = match (mode, id) {
            (PairingMode::Token, Some(id)) => {
                let row: Option<(Vec<u8>, Option<String>)> = sqlx::query_as(
                    "SELECT token_hash, peer_id FROM pairing_tokens \
                     WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
                row
            }
            _ => None,
        };
        Ok(PairingAccess { mode, token })
    }

    /// The ids of a tenant's active (not revoked) pairing tokens: relays check open sockets
    /// against them.
    pub async fn active_pairing_tokens(&self, tenant_id: &str) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM pairing_tokens WHERE tenant_id = $1 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Creates a pairing token for tenant `tenant`, optionally bound to one peer id; the
    /// returned value is never stored.
    pub async fn create_pairing_token(
        &self,
        tenant: &str,
        peer_id: Option<&str>,
        label: &str,
        hasher: &SecretHasher,
    ) -> Result<NewPairingToken, Error> {
        let t = self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?;
        if let Some(p) = peer_id {
            if p.is_empty() || p.len() > MAX_PEER_ID_LEN {
                return Err(Error::InvalidPeerId(p.to_string()));
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let value = secret::generate_with(TOKEN_PREFIX, &id);
        sqlx::query(
            "INSERT INTO pairing_tokens (id, tenant_id, token_hash, peer_id, label, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&t.id.0)
        .bind(hasher.hash(&value))
        .bind(peer_id)
        .bind(label)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query_as::<_, TokenRow>(&format!("{SELECT_LISTED} WHERE p.id = $1"))
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::PairingTokenNotFound(id.clone()))?;
        Ok(NewPairingToken {
            token: row.into(),
            value,
        })
    }

    /// A tenant's pairing tokens, newest first, revoked ones included.
    pub async fn pairing_tokens(&self, tenant: &str) -> Result<Vec<PairingToken>, Error> {
        if self.tenant(tenant).await?.is_none() {
            return Err(Error::TenantNotFound(tenant.to_string()));
        }
        let rows = sqlx::query_as::<_, TokenRow>(&format!(
            "{SELECT_LISTED} WHERE t.name = $1 ORDER BY p.created_at DESC, p.id"
        ))
        .bind(tenant.to_ascii_lowercase())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(PairingToken::from).collect())
    }

    /// Revokes a pairing token: new sockets with it are refused.
    pub async fn revoke_pairing_token(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if !self.revoke_row("pairing_tokens", tenant, id).await? {
            return Err(Error::PairingTokenNotFound(id.to_string()));
        }
        Ok(())
    }
}
