//! JWT bearer tokens: a pinned issuer, audience and asymmetric algorithms, keys from PEM or from a
//! JWKS URL. A JWKS document is fetched on first use and cached; it is fetched again after
//! [`JWKS_TTL`], or when a token names an unknown `kid` — never more often than every
//! [`JWKS_MIN_INTERVAL`] per URL, and one fetch at a time, so visitors cannot make the relay hammer
//! an identity provider. A failed fetch keeps the keys it had.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use tracing::{debug, warn};

/// How long a fetched JWKS document is used before it is fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);
/// Least time between two fetches of one URL (an unknown `kid` asks for one).
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// How long a fetch may take, connection included.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const JWKS_MAX_BYTES: usize = 256 * 1024;
/// Most keys taken from one document.
const JWKS_MAX_KEYS: usize = 100;
/// Most JWKS URLs cached (they come from policies, not from visitors; the cap is a backstop).
const JWKS_MAX_URLS: usize = 1000;

/// One verification key.
pub(super) struct Key {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// A compiled JWT rule.
pub(super) struct Jwt {
    validation: Validation,
    keys: Vec<Key>,
    jwks_url: Option<String>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("keys", &self.keys.len())
            .field("jwks_url", &self.jwks_url)
            .finish()
    }
}

fn family_of(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

/// Parses a rule: algorithms, PEM keys (each for the families of the pinned algorithms).
pub(super) fn compile(j: &relay_store::JwtRule) -> Result<Jwt, String> {
    let algorithms: Vec<Algorithm> = j
        .algorithms
        .iter()
        .map(|a| {
            a.parse::<Algorithm>()
                .map_err(|_| format!("unknown algorithm {a}"))
        })
        .collect::<Result<_, _>>()?;
    let first = *algorithms.first().ok_or("no algorithm")?;
    let mut families: Vec<AlgorithmFamily> = Vec::new();
    for a in &algorithms {
        if !families.contains(&family_of(*a)) {
            families.push(family_of(*a));
        }
    }
    let mut keys = Vec::new();
    for k in &j.keys {
        let before = keys.len();
        // A key serves the algorithms of its family only: an RSA key never checks an HS256 MAC.
        for family in &families {
            let key = match family {
                AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(k.pem.as_bytes()),
                AlgorithmFamily::Ec => DecodingKey::from_ec_pem(k.pem.as_bytes()),
                AlgorithmFamily::Ed => DecodingKey::from_ed_pem(k.pem.as_bytes()),
                _ => continue,
            };
            if let Ok(key) = key {
                keys.push(Key {
                    kid: k.kid.clone(),
                    family: *family,
                    key,
                });
            }
        }
        if keys.len() == before {
            return Err(format!(
                "a JWT key{} is not a PEM public key for {}",
                k.kid
                    .as_deref()
                    .map(|k| format!(" ({k})"))
                    .unwrap_or_default(),
                j.algorithms.join(", ")
            ));
        }
    }
    let mut validation = Validation::new(first);
    validation.algorithms = algorithms;
    validation.set_issuer(&[&j.issuer]);
    validation.set_audience(&j.audience);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = j.leeway_secs.min(relay_store::MAX_JWT_LEEWAY_SECS);
    validation.validate_nbf = true;
    Ok(Jwt {
        validation,
        keys,
        jwks_url: j.jwks_url.clone(),
    })
}

/// Checks a bearer token; `Err` says why (for the debug log, never the token).
pub(super) async fn verify(j: &Jwt, jwks: &JwksCache, token: &str) -> Result<(), &'static str> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
    if !j.validation.algorithms.contains(&header.alg) {
        return Err("algorithm not allowed");
    }
    let fetched = match &j.jwks_url {
        Some(url) => jwks.keys(url, header.kid.as_deref()).await,
        None => Arc::new(Vec::new()),
    };
    let all = || j.keys.iter().chain(fetched.iter());
    let any_kid = all().any(|k| k.kid.is_some());
    let family = family_of(header.alg);
    let candidates = all().filter(|k| {
        k.family == family && (!any_kid || header.kid.is_none() || k.kid == header.kid)
    });
    let mut seen = false;
    for k in candidates {
        seen = true;
        let mut validation = j.validation.clone();
        validation.algorithms = vec![header.alg];
        match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &validation) {
            Ok(_) => return Ok(()),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => continue,
                    K::ExpiredSignature => return Err("expired"),
                    K::ImmatureSignature => return Err("not yet valid"),
                    K::InvalidAudience => return Err("wrong audience"),
                    K::InvalidIssuer => return Err("wrong issuer"),
                    K::MissingRequiredClaim(_) => return Err("missing claim"),
                    _ => return Err("invalid token"),
                }
            }
        }
    }
    Err(if seen {
        "bad signature"
    } else {
        "unknown key id"
    })
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// JWKS documents by URL, shared by every policy of the relay.
#[derive(Default)]
pub(crate) struct JwksCache {
    entries: Mutex<HashMap<String, Entry>>,
    /// One fetch at a time (per relay): a burst of tokens with unknown ids waits for one answer.
    fetching: tokio::sync::Mutex<()>,
    client: OnceLock<Option<HttpsClient>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

struct Entry {
    keys: Arc<Vec<Key>>,
    fetched_at: Option<Instant>,
    attempted_at: Instant,
}

impl JwksCache {
    /// The keys of `url`, fetched first when missing, stale, or without `kid` (bounded as the
    /// module says).
    async fn keys(&self, url: &str, kid: Option<&str>) -> Arc<Vec<Key>> {
        if let Ok(keys) = self.cached(url, kid) {
            return keys;
        }
        let _one = self.fetching.lock().await;
        // Someone else may have fetched while this one waited.
        match self.cached(url, kid) {
            Ok(keys) => return keys,
            Err(()) => self.attempt(url),
        }
        let fetched = tokio::time::timeout(JWKS_FETCH_TIMEOUT, self.fetch(url)).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get_mut(url);
        match (fetched, entry) {
            (Ok(Ok(keys)), Some(e)) => {
                debug!(url, keys = keys.len(), "JWKS fetched");
                e.keys = Arc::new(keys);
                e.fetched_at = Some(Instant::now());
                e.keys.clone()
            }
            (Ok(Err(why)), e) => {
                warn!(url, why, "JWKS fetch failed; keeping the keys it had");
                e.map(|e| e.keys.clone()).unwrap_or_default()
            }
            (Err(_), e) => {
                warn!(url, "JWKS fetch timed out; keeping the keys it had");
                e.map(|e| e.keys.clone()).unwrap_or_default()
            }
            (Ok(Ok(_)), None) => Arc::new(Vec::new()),
        }
    }

    /// `Ok(keys)` when no fetch is due (or allowed yet); `Err` when one should run.
    fn cached(&self, url: &str, kid: Option<&str>) -> Result<Arc<Vec<Key>>, ()> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get(url) else {
            return Err(());
        };
        let stale = e.fetched_at.is_none_or(|t| t.elapsed() >= JWKS_TTL);
        let unknown = kid.is_some_and(|k| !e.keys.iter().any(|x| x.kid.as_deref() == Some(k)));
        if (stale || unknown) && e.attempted_at.elapsed() >= JWKS_MIN_INTERVAL {
            return Err(());
        }
        Ok(e.keys.clone())
    }

    fn attempt(&self, url: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= JWKS_MAX_URLS && !entries.contains_key(url) {
            entries.clear();
        }
        let e = entries.entry(url.to_string()).or_insert_with(|| Entry {
            keys: Arc::new(Vec::new()),
            fetched_at: None,
            attempted_at: Instant::now(),
        });
        e.attempted_at = Instant::now();
    }

    fn client(&self) -> Option<&HttpsClient> {
        self.client
            .get_or_init(|| {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                match hyper_rustls::HttpsConnectorBuilder::new()
                    .with_provider_and_native_roots(provider)
                {
                    Ok(b) => Some(
                        Client::builder(TokioExecutor::new())
                            .build(b.https_or_http().enable_http1().build()),
                    ),
                    Err(e) => {
                        warn!(error = %e, "no system root certificates; JWKS URLs cannot be fetched");
                        None
                    }
                }
            })
            .as_ref()
    }

    async fn fetch(&self, url: &str) -> Result<Vec<Key>, &'static str> {
        let client = self.client().ok_or("no HTTPS client")?;
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| "bad URL")?;
        let resp = client.request(req).await.map_err(|_| "request failed")?;
        if resp.status() != http::StatusCode::OK {
            return Err("status other than 200");
        }
        let body = Limited::new(resp.into_body(), JWKS_MAX_BYTES)
            .collect()
            .await
            .map_err(|_| "body too large or cut")?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|_| "not a JWK set")?;
        let mut keys = Vec::new();
        for jwk in set.keys.iter().take(JWKS_MAX_KEYS) {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                // Symmetric ("oct") keys are never taken: a JWKS is public.
                _ => continue,
            };
            if let Some(alg) = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            {
                if family_of(alg) != family {
                    continue;
                }
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    family,
                    key,
                });
            }
        }
        Ok(keys)
    }
}
