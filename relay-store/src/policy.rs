//! Visitor access policies (docs/policies.md): rules per tenant, overridable per target and per
//! hostname, and the tenant's visitor API keys (stored as keyed hashes like connector
//! credentials). Relays keep both in their catalog snapshot; nothing here runs per request.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{now_ms, password, secret, Error, SecretHasher, Store, TenantId};

/// The prefix of visitor API keys: `rak_{id}_{256 random bits, base64url}`.
const KEY_PREFIX: &str = "rak_";
/// The header an API key is read from unless a rule names another.
pub const DEFAULT_API_KEY_HEADER: &str = "x-relay-key";
/// Largest clock skew a JWT rule may allow, in seconds.
pub const MAX_JWT_LEEWAY_SECS: u64 = 300;
/// Most entries in one IP list, users in one Basic rule, keys in one JWT rule.
pub(crate) const MAX_LIST: usize = 1000;

/// Where a policy applies: the tenant as a whole, one of its targets, or one of its hostnames.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyScope {
    /// Every request to the tenant.
    Tenant,
    /// Requests to one target (by `/relay/`, `/queue/` or a hostname routed to it).
    Target(String),
    /// Requests that arrive on one of the tenant's hostnames.
    Hostname(String),
}

impl PolicyScope {
    /// The stored form: `""`, `target:{name}`, `host:{hostname}`.
    pub fn key(&self) -> String {
        match self {
            PolicyScope::Tenant => String::new(),
            PolicyScope::Target(t) => format!("target:{t}"),
            PolicyScope::Hostname(h) => format!("host:{h}"),
        }
    }

    /// Reads the stored form; `None` for anything else (a newer build's scope).
    pub fn from_key(key: &str) -> Option<PolicyScope> {
        if key.is_empty() {
            return Some(PolicyScope::Tenant);
        }
        if let Some(t) = key.strip_prefix("target:") {
            return Some(PolicyScope::Target(t.to_string()));
        }
        key.strip_prefix("host:")
            .map(|h| PolicyScope::Hostname(h.to_string()))
    }
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyScope::Tenant => f.write_str("tenant"),
            PolicyScope::Target(t) => write!(f, "target {t}"),
            PolicyScope::Hostname(h) => write!(f, "hostname {h}"),
        }
    }
}

/// A rule kind at one scope: turned off explicitly (overriding a less specific scope), or on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule<T> {
    /// Off at this scope, whatever a less specific scope says.
    Off,
    /// On, with these settings.
    On(T),
}

impl<T> Rule<T> {
    /// The settings when on.
    pub fn on(&self) -> Option<&T> {
        match self {
            Rule::Off => None,
            Rule::On(t) => Some(t),
        }
    }
}

/// The rules of one scope. `None` inherits the kind from the less specific scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRules {
    /// Only these CIDR blocks may pass (empty: no allow-list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ip: Option<Vec<String>>,
    /// These CIDR blocks are refused (empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_ip: Option<Vec<String>>,
    /// One of the tenant's API keys in a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Rule<ApiKeyRule>>,
    /// HTTP Basic against argon2id hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<Rule<BasicRule>>,
    /// A JWT bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Rule<JwtRule>>,
    /// A token bucket per visitor address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rule<RateLimitRule>>,
    /// CORS: the relay answers preflights and adds the allow headers to responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Rule<CorsRule>>,
}

/// CORS for browser clients: preflights (`OPTIONS` with `Access-Control-Request-Method`) are
/// answered by the relay, before credentials are asked for (browsers never send them on a
/// preflight); responses to allowed origins get `Access-Control-Allow-Origin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsRule {
    /// Allowed origins (`https://app.example`, exact), or `*` for any.
    pub allow_origins: Vec<String>,
    /// Allowed methods for preflights.
    pub allow_methods: Vec<String>,
    /// Allowed request headers for preflights (case-insensitive); `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Whether browsers may send cookies and credentials (`*` origins are then echoed).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer, in seconds (at most 86 400).
    #[serde(default)]
    pub max_age_secs: u32,
}

/// An API key is required in `header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRule {
    /// The request header carrying the key (lowercase); stripped before the backend.
    pub header: String,
}

/// HTTP Basic: user name → argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicRule {
    /// The realm in the challenge.
    pub realm: String,
    /// User name → argon2id hash of the password.
    pub users: BTreeMap<String, String>,
}

impl fmt::Debug for BasicRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicRule")
            .field("realm", &self.realm)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A JWT bearer token, checked against pinned settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRule {
    /// The required `iss`.
    pub issuer: String,
    /// `aud` must name one of these.
    pub audience: Vec<String>,
    /// The accepted `alg` values (asymmetric only: RS*, PS*, ES*, EdDSA).
    pub algorithms: Vec<String>,
    /// Verification keys (PEM public keys); a token's `kid` picks one when keys have ids.
    #[serde(default)]
    pub keys: Vec<JwtKey>,
    /// A JWKS document to take keys from as well (`https://`, or `http://` on loopback only),
    /// fetched and cached by the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Allowed clock skew for `exp` and `nbf`, at most [`MAX_JWT_LEEWAY_SECS`].
    pub leeway_secs: u64,
}

/// One JWT verification key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// Its `kid`, if tokens name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The public key, PEM.
    pub pem: String,
}

/// A token bucket per visitor address: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Sustained requests per minute.
    pub per_minute: u32,
    /// Bucket size.
    pub burst: u32,
}

/// The JWT algorithms a rule may pin: asymmetric only, so a public key can never be used as an
/// HMAC secret (HS/RS confusion).
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl PolicyRules {
    /// Whether nothing is set (the scope inherits everything).
    pub fn is_empty(&self) -> bool {
        *self == PolicyRules::default()
    }

    /// Checks what can be checked without the relay: CIDR syntax, header names, algorithms,
    /// bounds. PEM keys are parsed by the relay (`relay-server tenant policy` refuses bad ones).
    pub fn validate(&self) -> Result<(), String> {
        for list in [&self.allow_ip, &self.deny_ip].into_iter().flatten() {
            if list.len() > MAX_LIST {
                return Err(format!("at most {MAX_LIST} CIDR blocks per list"));
            }
            for c in list {
                parse_cidr(c)?;
            }
        }
        if let Some(Rule::On(k)) = &self.api_key {
            let ok = !k.header.is_empty()
                && k.header.len() <= 64
                && k.header
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok || ["authorization", "host", "cookie"].contains(&k.header.as_str()) {
                return Err(format!("{:?} cannot carry API keys", k.header));
            }
        }
        if let Some(Rule::On(b)) = &self.basic {
            if b.users.is_empty() || b.users.len() > MAX_LIST {
                return Err(format!("a Basic rule needs 1 to {MAX_LIST} users"));
            }
            if b.realm.contains(['"', '\\']) || b.realm.len() > 100 {
                return Err("the realm may not contain quotes or backslashes".into());
            }
            for (user, hash) in &b.users {
                if user.is_empty() || user.contains(':') || user.len() > 128 {
                    return Err(format!("invalid Basic user name {user:?}"));
                }
                if !hash.starts_with("$argon2id$") {
                    return Err(format!("the hash of {user:?} is not argon2id"));
                }
            }
        }
        if let Some(Rule::On(j)) = &self.jwt {
            if j.issuer.is_empty() || j.audience.is_empty() {
                return Err("a JWT rule needs an issuer and at least one audience".into());
            }
            if j.algorithms.is_empty()
                || j.algorithms
                    .iter()
                    .any(|a| !JWT_ALGORITHMS.contains(&a.as_str()))
            {
                return Err(format!(
                    "JWT algorithms must be among {}",
                    JWT_ALGORITHMS.join(", ")
                ));
            }
            if (j.keys.is_empty() && j.jwks_url.is_none()) || j.keys.len() > MAX_LIST {
                return Err("a JWT rule needs a PEM key or a JWKS URL".into());
            }
            if let Some(url) = &j.jwks_url {
                let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                    .iter()
                    .any(|p| {
                        url.strip_prefix(p)
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
                    });
                let ok = url.len() <= 2048
                    && (url.starts_with("https://") || loopback)
                    && url.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(format!(
                        "{url:?}: a JWKS URL is https:// (http:// only on loopback)"
                    ));
                }
            }
            if j.leeway_secs > MAX_JWT_LEEWAY_SECS {
                return Err(format!("JWT clock skew is at most {MAX_JWT_LEEWAY_SECS} s"));
            }
        }
        if let Some(Rule::On(c)) = &self.cors {
            if c.allow_origins.is_empty() || c.allow_methods.is_empty() {
                return Err("a CORS rule needs at least one origin and one method".into());
            }
            let token = |s: &str| {
                !s.is_empty()
                    && s.len() <= 256
                    && s.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b',' && b != b'"')
            };
            for o in &c.allow_origins {
                let ok = o == "*"
                    || ((o.starts_with("https://") || o.starts_with("http://")) && token(o));
                if !ok {
                    return Err(format!(
                        "{o:?} is not an origin (scheme://host[:port]) or *"
                    ));
                }
            }
            if !c
                .allow_methods
                .iter()
                .chain(&c.allow_headers)
                .all(|m| token(m))
            {
                return Err("CORS methods and headers are single tokens".into());
            }
            if c.max_age_secs > 86_400 {
                return Err("CORS max_age_secs is at most 86400".into());
            }
        }
        if let Some(Rule::On(r)) = &self.rate_limit {
            if r.per_minute == 0 || r.burst == 0 {
                return Err("a rate limit needs per_minute and burst above 0".into());
            }
        }
        Ok(())
    }
}

/// Parses `ADDR` or `ADDR/PREFIX` into the address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        None => max,
    };
    Ok((addr, prefix))
}

/// One stored policy, as the relay's snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// The owning tenant.
    pub tenant_id: TenantId,
    /// Where it applies.
    pub scope: PolicyScope,
    /// Its rules.
    pub rules: PolicyRules,
}

/// A visitor API key as listed to admins: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (32 hex digits, also inside the key).
    pub id: String,
    /// The owning tenant's name.
    pub tenant: String,
    /// A free-form label.
    pub label: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Revocation time, ms since the epoch.
    pub revoked_at: Option<i64>,
}

/// An API key just created: the only time its value exists outside the visitor.
pub struct NewApiKey {
    /// The stored key.
    pub key: ApiKey,
    /// The value to send in the header, shown once.
    pub value: String,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key", &self.key)
            .field("value", &"***")
            .finish()
    }
}

/// An active API key as the relay's snapshot holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Its id.
    pub id: String,
    /// The owning tenant.
    pub tenant_id: TenantId,
    /// HMAC-SHA-256(pepper, key).
    pub key_hash: Vec<u8>,
}

impl fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

/// The key id inside a well-formed API key; `None` for anything else.
pub fn parse_api_key(value: &str) -> Option<&str> {
    secret::parse_with(KEY_PREFIX, value)
}

/// A new argon2id hash for a Basic rule's password (bounded like admin passwords).
pub async fn hash_password(password: &str) -> Result<String, Error> {
    password::hash(password).await
}

/// Whether `password` matches an argon2id hash (bounded like admin logins: at most a few at
/// once, [`Error::HashingBusy`] after 2 s of waiting).
pub async fn verify_password(password: &str, phc: &str) -> Result<bool, Error> {
    password::verify(password, phc).await
}

#[derive(sqlx::FromRow)]
pub(crate) struct PolicyRow {
    tenant_id: String,
    scope: String,
    rules: String,
}

pub(crate) const SELECT_POLICIES: &str = "SELECT tenant_id, scope, rules FROM access_policies";

impl PolicyRow {
    /// A row this build cannot read (a newer build's scope or rule) is logged and yields a
    /// policy that refuses everything at the tenant: fail closed.
    pub(crate) fn into_record(self) -> PolicyRecord {
        let tenant_id = TenantId(self.tenant_id);
        let parsed = PolicyScope::from_key(&self.scope).and_then(|scope| {
            serde_json::from_str::<PolicyRules>(&self.rules)
                .ok()
                .map(|rules| (scope, rules))
        });
        match parsed {
            Some((scope, rules)) => PolicyRecord {
                tenant_id,
                scope,
                rules,
            },
            None => {
                tracing::warn!(%tenant_id, scope = self.scope, "unreadable access policy; the tenant refuses every visitor");
                PolicyRecord {
                    tenant_id,
                    scope: PolicyScope::Tenant,
                    rules: PolicyRules {
                        deny_ip: Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
                        ..PolicyRules::default()
                    },
                }
            }
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRecordRow {
    id: String,
    tenant_id: String,
    key_hash: Vec<u8>,
}

pub(crate) const SELECT_ACTIVE_KEYS: &str =
    "SELECT id, tenant_id, key_hash FROM policy_api_keys WHERE revoked_at IS NULL";

impl From<KeyRecordRow> for ApiKeyRecord {
    fn from(r: KeyRecordRow) -> ApiKeyRecord {
        ApiKeyRecord {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            key_hash: r.key_hash,
        }
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    tenant: String,
    label: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<KeyRow> for ApiKey {
    fn from(r: KeyRow) -> ApiKey {
        ApiKey {
            id: r.id,
            tenant: r.tenant,
            label: r.label,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

const SELECT_KEYS: &str = "SELECT k.id, t.name AS tenant, k.label, k.created_at, k.revoked_at \
     FROM policy_api_keys k JOIN tenants t ON t.id = k.tenant_id";

impl Store {
    async fn tenant_id_of(&self, tenant: &str) -> Result<TenantId, Error> {
        Ok(self
            .tenant(tenant)
            .await?
            .ok_or_else(|| Error::TenantNotFound(tenant.to_string()))?
            .id)
    }

    /// The rules stored at one scope of a tenant (empty when none).
    pub async fn policy(&self, tenant: &str, scope: &PolicyScope) -> Result<PolicyRules, Error> {
        let id = self.tenant_id_of(tenant).await?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT rules FROM access_policies WHERE tenant_id = $1 AND scope = $2")
                .bind(&id.0)
                .bind(scope.key())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .and_then(|(r,)| serde_json::from_str(&r).ok())
            .unwrap_or_default())
    }

    /// Every policy of a tenant, tenant scope first.
    pub async fn policies(&self, tenant: &str) -> Result<Vec<(PolicyScope, PolicyRules)>, Error> {
        let id = self.tenant_id_of(tenant).await?;
        let rows = sqlx::query_as::<_, PolicyRow>(&format!(
            "{SELECT_POLICIES} WHERE tenant_id = $1 ORDER BY scope"
        ))
        .bind(&id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let r = r.into_record();
                (r.scope, r.rules)
            })
            .collect())
    }

    /// Replaces the rules at one scope (validated first); empty rules delete the scope's row.
    pub async fn set_policy(
        &self,
        tenant: &str,
        scope: &PolicyScope,
        rules: &PolicyRules,
    ) -> Result<(), Error> {
        rules.validate().map_err(Error::InvalidPolicy)?;
        let id = self.tenant_id_of(tenant).await?;
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM access_policies WHERE tenant_id = $1 AND scope = $2")
            .bind(&id.0)
            .bind(scope.key())
            .execute(&mut *tx)
            .await?;
        if !rules.is_empty() {
            let json =
                serde_json::to_string(rules).map_err(|e| Error::InvalidPolicy(e.to_string()))?;
            sqlx::query(
                "INSERT INTO access_policies (tenant_id, scope, rules, updated_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&id.0)
            .bind(scope.key())
            .bind(json)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Creates a visitor API key for `tenant`; the returned value is never stored.
    pub async fn create_api_key(
        &self,
        tenant: &str,
        label: &str,
        hasher: &SecretHasher,
    ) -> Result<NewApiKey, Error> {
        let tenant_id = self.tenant_id_of(tenant).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let value = secret::generate_with(KEY_PREFIX, &id);
        let label: String = label.chars().take(200).collect();
        sqlx::query(
            "INSERT INTO policy_api_keys (id, tenant_id, key_hash, label, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(&tenant_id.0)
        .bind(hasher.hash(&value))
        .bind(&label)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let key = sqlx::query_as::<_, KeyRow>(&format!("{SELECT_KEYS} WHERE k.id = $1"))
            .bind(&id)
            .fetch_one(&self.pool)
            .await?
            .into();
        Ok(NewApiKey { key, value })
    }

    /// A tenant's API keys, newest first, revoked ones included.
    pub async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, Error> {
        let id = self.tenant_id_of(tenant).await?;
        let rows = sqlx::query_as::<_, KeyRow>(&format!(
            "{SELECT_KEYS} WHERE k.tenant_id = $1 ORDER BY k.created_at DESC, k.id"
        ))
        .bind(&id.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ApiKey::from).collect())
    }

    /// Revokes an API key; relays refuse it from their next snapshot on.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<(), Error> {
        if !self.revoke_row("policy_api_keys", tenant, id).await? {
            return Err(Error::ApiKeyNotFound(id.to_string()));
        }
        Ok(())
    }
}
