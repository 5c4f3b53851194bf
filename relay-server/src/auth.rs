//! Connector authentication: a credential secret is checked against its keyed hash and exchanged
//! for a short-lived token (EdDSA JWT, algorithm pinned by this code, never by the token); the
//! token then authenticates reconnects and renewals cheaply. Secret checks run behind a
//! semaphore so that a reconnect storm queues instead of exhausting CPU or memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use relay_store::{parse_secret, CredentialId, SecretHasher, Store, Tenant, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tunnel_protocol::{Credential, ErrorCode};

use crate::catalog::Catalog;
use crate::keys::Keys;

/// Clock skew tolerated on `exp`/`nbf`.
const LEEWAY_SECS: u64 = 30;
/// How long a secret check may wait for a free slot before the attempt is told to come back.
const SECRET_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Who a session belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) credential_id: CredentialId,
}

/// A successful authentication.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) identity: Identity,
    /// A new token when a secret was presented.
    pub(crate) token: Option<String>,
    /// When this authentication stops being valid.
    pub(crate) expires_in: Duration,
}

/// A refusal, as sent to the connector.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: &'static str,
    pub(crate) retry_after_secs: u32,
}

const AUTH_FAILED: Refusal = Refusal {
    code: ErrorCode::AUTH_FAILED,
    message: "credential rejected: unknown tenant, or unknown, wrong or revoked credential",
    retry_after_secs: 0,
};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    /// The credential id.
    sub: String,
    /// The tenant name.
    tenant: String,
    /// The tenant id.
    tid: String,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Verifies secrets and tokens against the catalog.
pub(crate) struct Auth {
    catalog: Arc<Catalog>,
    store: Store,
    hasher: SecretHasher,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    audience: String,
    ttl: Duration,
    secret_checks: Semaphore,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        store: Store,
        keys: &Keys,
        issuer: &str,
        ttl: Duration,
        concurrency: usize,
    ) -> Auth {
        let kid = {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &keys.verifying_key);
            tunnel_protocol::hex(&digest.as_ref()[..8])
        };
        Auth {
            catalog,
            store,
            hasher: SecretHasher::new(&keys.pepper),
            encoding: EncodingKey::from_ed_der(&keys.signing_pkcs8),
            decoding: DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(&keys.verifying_key))
                .expect("a 32-byte key encodes to valid base64url"),
            kid,
            issuer: issuer.to_string(),
            audience: format!("{issuer}-connector"),
            ttl,
            secret_checks: Semaphore::new(concurrency),
        }
    }

    /// Authenticates a `Hello` (or a `Renew`) for tenant `tenant`.
    pub(crate) async fn authenticate(
        &self,
        tenant: &str,
        credential: &Credential,
    ) -> Result<Granted, Refusal> {
        match credential {
            Credential::Secret(secret) => self.check_secret(tenant, secret).await,
            Credential::Token(token) => self.check_token(tenant, token),
        }
    }

    /// Whether a session's identity still holds (credential active, tenant enabled).
    pub(crate) fn still_valid(&self, identity: &Identity) -> Result<(), ErrorCode> {
        if self
            .catalog
            .enabled_tenant_by_id(&identity.tenant.id)
            .is_none()
        {
            return Err(ErrorCode::TENANT_DISABLED);
        }
        match self.catalog.credential(&identity.credential_id.0) {
            Some(c) if c.tenant_id == identity.tenant.id => Ok(()),
            _ => Err(ErrorCode::CREDENTIAL_REVOKED),
        }
    }

    async fn check_secret(&self, tenant: &str, secret: &str) -> Result<Granted, Refusal> {
        let _permit = tokio::time::timeout(SECRET_QUEUE_WAIT, self.secret_checks.acquire())
            .await
            .map_err(|_| Refusal {
                code: ErrorCode::RATE_LIMITED,
                message: "too many authentications in progress; retry later",
                retry_after_secs: 5,
            })?
            .map_err(|_| AUTH_FAILED)?;
        let id = parse_secret(secret).ok_or(AUTH_FAILED)?;
        let record = self.catalog.credential(id).ok_or(AUTH_FAILED)?;
        let tenant = self
            .catalog
            .enabled_tenant_by_id(&record.tenant_id)
            .filter(|t| t.name == tenant.to_ascii_lowercase())
            .ok_or(AUTH_FAILED)?;
        if !self.hasher.verify(secret, &record.secret_hash) {
            return Err(AUTH_FAILED);
        }
        let identity = Identity {
            tenant,
            credential_id: record.id.clone(),
        };
        let token = self.issue(&identity).map_err(|_| Refusal {
            code: ErrorCode::INTERNAL,
            message: "token issuing failed",
            retry_after_secs: 5,
        })?;
        // Best effort, off the handshake path.
        let store = self.store.clone();
        tokio::spawn(async move {
            let _ = store.touch_credential(&record.id).await;
        });
        Ok(Granted {
            identity,
            token: Some(token),
            expires_in: self.ttl,
        })
    }

    fn check_token(&self, tenant: &str, token: &str) -> Result<Granted, Refusal> {
        let invalid = Refusal {
            code: ErrorCode::TOKEN_INVALID,
            message: "token rejected: bad signature, key, issuer, audience or tenant",
            retry_after_secs: 0,
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal { ..invalid })?;
        // The key is looked up by exact match only; jku/x5u/jwk headers are never consulted.
        if header.alg != Algorithm::EdDSA || header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(invalid);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "aud", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let data = match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(d) => d,
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                return Err(Refusal {
                    code: ErrorCode::TOKEN_EXPIRED,
                    message: "token expired; authenticate with the secret",
                    retry_after_secs: 0,
                })
            }
            Err(_) => return Err(invalid),
        };
        let claims = data.claims;
        if claims.tenant != tenant.to_ascii_lowercase()
            || claims.exp > claims.iat + self.ttl.as_secs() + LEEWAY_SECS
        {
            return Err(invalid);
        }
        let tenant = self
            .catalog
            .enabled_tenant_by_id(&TenantId(claims.tid))
            .ok_or(AUTH_FAILED)?;
        if tenant.name != claims.tenant {
            return Err(invalid);
        }
        let identity = Identity {
            tenant,
            credential_id: CredentialId(claims.sub),
        };
        self.still_valid(&identity).map_err(|_| AUTH_FAILED)?;
        let left = claims.exp.saturating_sub(now_secs());
        Ok(Granted {
            identity,
            token: None,
            expires_in: Duration::from_secs(left.max(1)),
        })
    }

    /// Signs a token for `identity`.
    pub(crate) fn issue(&self, identity: &Identity) -> Result<String, jsonwebtoken::errors::Error> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: identity.credential_id.0.clone(),
            tenant: identity.tenant.name.clone(),
            tid: identity.tenant.id.0.clone(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
