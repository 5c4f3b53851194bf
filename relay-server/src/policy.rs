//! Visitor access policies (docs/policies.md, ADR 0005): checked before anything of a request
//! reaches a connector — IP allow/deny lists, a per-address token bucket, then credentials (an
//! API key, HTTP Basic or a JWT bearer token; any one configured kind admits).
//!
//! Policies come compiled with the catalog snapshot (no store query per request). For each rule
//! kind the most specific scope that sets it wins: hostname, then target, then tenant.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;
use relay_store::{ApiKeyRecord, PolicyRecord, PolicyScope, RateLimitRule, Rule, SecretHasher};
use tracing::{debug, warn};

use crate::audit::Draft;
use crate::error::ProxyError;
use crate::forwarded::Cidr;
use crate::proxy::Visitor;
use crate::Relay;

mod jwt;

/// Most visitor addresses with a token bucket at once. Beyond it the buckets that are full again
/// are dropped, and if none is, an arbitrary one (its address starts afresh): memory stays
/// bounded (about 100 bytes per entry) whatever the number of addresses.
const MAX_TRACKED: usize = 100_000;
/// Most successful Basic checks remembered (a browser sends the header on every request, and each
/// argon2id check costs 19 MiB and tens of milliseconds).
const MAX_BASIC_CACHE: usize = 10_000;
/// How long a successful Basic check is remembered.
const BASIC_CACHE_TTL: Duration = Duration::from_secs(60);
/// Longest `Authorization` or API key value looked at.
const MAX_CREDENTIAL_LEN: usize = 8192;

/// A policy's answer when it refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denial {
    /// 401: credentials missing or bad; the `WWW-Authenticate` challenges.
    Unauthorized(Vec<HeaderValue>),
    /// 403: the policy refuses this visitor.
    Forbidden,
    /// 429: the visitor's address ran out of tokens; `Retry-After` seconds.
    RateLimited(u32),
    /// Not a refusal: a CORS preflight the relay answers itself (204 with these headers).
    Preflight(HeaderMap),
}

/// What an admitted request carries on: the CORS headers for its response, if any.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    pub(crate) cors: Option<HeaderMap>,
}

/// The relay's policy state that is not in the catalog: rate-limit buckets and the Basic cache.
#[derive(Debug)]
pub(crate) struct Policies {
    hasher: SecretHasher,
    buckets: Mutex<Buckets>,
    basic_ok: Mutex<HashMap<[u8; 32], Instant>>,
    /// JWKS documents of JWT rules with a `jwks_url`.
    jwks: jwt::JwksCache,
}

type BucketKey = (String, String, IpAddr);

#[derive(Debug)]
struct Buckets {
    map: HashMap<BucketKey, Bucket>,
    /// When the full table was last swept: at most once per [`SWEEP_EVERY`], so a flood of new
    /// addresses costs one eviction each, not a scan of the table each.
    swept: Instant,
}

/// Least time between two sweeps of a full bucket table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One stored scope's rules, parsed once per snapshot.
#[derive(Debug)]
pub(crate) struct Compiled {
    scope: PolicyScope,
    allow_ip: Option<Vec<Cidr>>,
    deny_ip: Option<Vec<Cidr>>,
    api_key: Option<Option<HeaderName>>,
    basic: Option<Option<Basic>>,
    jwt: Option<Option<jwt::Jwt>>,
    rate_limit: Option<Option<RateLimitRule>>,
    cors: Option<Option<Cors>>,
    /// Something did not parse (a key, a block): the scope refuses every visitor (403).
    broken: bool,
}

struct Basic {
    challenge: HeaderValue,
    users: BTreeMap<String, String>,
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("users", &self.users.len())
            .finish()
    }
}

#[derive(Debug)]
struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<String>,
    any_header: bool,
    headers: Vec<String>,
    credentials: bool,
    max_age: u32,
}

impl Cors {
    fn compile(c: &relay_store::CorsRule) -> Cors {
        Cors {
            any_origin: c.allow_origins.iter().any(|o| o == "*"),
            origins: c
                .allow_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            methods: c
                .allow_methods
                .iter()
                .map(|m| m.to_ascii_uppercase())
                .collect(),
            any_header: c.allow_headers.iter().any(|h| h == "*"),
            headers: c
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            credentials: c.allow_credentials,
            max_age: c.max_age_secs,
        }
    }

    /// The headers that let `origin` read a response, if it is allowed.
    fn allow(&self, origin: &str) -> Option<HeaderMap> {
        let allowed = self.any_origin
            || self
                .origins
                .iter()
                .any(|o| *o == origin.to_ascii_lowercase());
        if !allowed {
            return None;
        }
        let mut h = HeaderMap::new();
        let value = if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            HeaderValue::from_str(origin).ok()?
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Some(h)
    }

    /// The answer to a preflight, or `None` when origin, method or a header is not allowed.
    fn preflight(&self, origin: &str, method: &str, requested: &str) -> Option<HeaderMap> {
        let mut h = self.allow(origin)?;
        let method = method.trim().to_ascii_uppercase();
        if !self.methods.contains(&method) {
            return None;
        }
        let requested: Vec<String> = requested
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        if !self.any_header && !requested.iter().all(|r| self.headers.contains(r)) {
            return None;
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_str(&self.methods.join(", ")).ok()?,
        );
        if !requested.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_str(&requested.join(", ")).ok()?,
            );
        }
        if self.max_age > 0 {
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(self.max_age),
            );
        }
        h.append(
            header::VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Some(h)
    }
}

/// Adds an admitted request's CORS headers to its response, unless the backend answered CORS
/// itself.
pub(crate) fn add_cors(headers: &mut HeaderMap, cors: HeaderMap) {
    if headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    for (name, value) in cors.iter() {
        headers.append(name.clone(), value.clone());
    }
}

/// A tenant's compiled policies by scope.
#[derive(Debug, Default)]
pub(crate) struct TenantPolicies {
    tenant: Option<std::sync::Arc<Compiled>>,
    targets: HashMap<String, std::sync::Arc<Compiled>>,
    hostnames: HashMap<String, std::sync::Arc<Compiled>>,
}

/// Compiles a snapshot's policies, per tenant id.
pub(crate) fn compile_all(records: Vec<PolicyRecord>) -> HashMap<String, TenantPolicies> {
    let mut out: HashMap<String, TenantPolicies> = HashMap::new();
    for r in records {
        let compiled = std::sync::Arc::new(compile(r.scope.clone(), &r.rules));
        if compiled.broken {
            warn!(tenant_id = %r.tenant_id, scope = %r.scope, "access policy does not compile; it refuses every visitor");
        }
        let entry = out.entry(r.tenant_id.0).or_default();
        match r.scope {
            PolicyScope::Tenant => entry.tenant = Some(compiled),
            PolicyScope::Target(t) => {
                entry.targets.insert(t, compiled);
            }
            PolicyScope::Hostname(h) => {
                entry.hostnames.insert(h, compiled);
            }
        }
    }
    out
}

/// Checks that rules compile as the relay would (PEM keys included): the CLI calls it before
/// storing them.
pub(crate) fn validate(rules: &relay_store::PolicyRules) -> Result<(), String> {
    rules.validate()?;
    if let Some(Rule::On(j)) = &rules.jwt {
        jwt::compile(j)?;
    }
    Ok(())
}

fn compile(scope: PolicyScope, rules: &relay_store::PolicyRules) -> Compiled {
    let mut broken = rules.validate().is_err();
    let mut cidrs = |list: &Option<Vec<String>>| {
        list.as_ref().map(|l| {
            l.iter()
                .filter_map(|c| Cidr::parse(c).map_err(|_| broken = true).ok())
                .collect::<Vec<_>>()
        })
    };
    let allow_ip = cidrs(&rules.allow_ip);
    let deny_ip = cidrs(&rules.deny_ip);
    let api_key = rules.api_key.as_ref().map(|r| {
        r.on()
            .and_then(|k| HeaderName::from_bytes(k.header.as_bytes()).ok())
    });
    let basic = rules.basic.as_ref().map(|r| {
        r.on().and_then(|b| {
            let challenge =
                HeaderValue::from_str(&format!("Basic realm=\"{}\", charset=\"UTF-8\"", b.realm))
                    .map_err(|_| broken = true)
                    .ok()?;
            Some(Basic {
                challenge,
                users: b.users.clone(),
            })
        })
    });
    let jwt = rules.jwt.as_ref().map(|r| {
        r.on()
            .and_then(|j| jwt::compile(j).map_err(|_| broken = true).ok())
    });
    let rate_limit = rules.rate_limit.as_ref().map(|r| r.on().copied());
    let cors = rules.cors.as_ref().map(|r| r.on().map(Cors::compile));
    Compiled {
        scope,
        allow_ip,
        deny_ip,
        api_key,
        basic,
        jwt,
        rate_limit,
        cors,
        broken,
    }
}

impl TenantPolicies {
    /// The effective rules for a request: per kind, the most specific scope that sets it.
    fn effective(&self, target: Option<&str>, hostname: Option<&str>) -> Effective<'_> {
        let chain: Vec<&Compiled> = [
            hostname.and_then(|h| self.hostnames.get(h)),
            target.and_then(|t| self.targets.get(t)),
            self.tenant.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|c| &**c)
        .collect();
        fn pick<'a, T>(
            chain: &[&'a Compiled],
            f: impl Fn(&'a Compiled) -> Option<&'a T>,
        ) -> Option<(&'a Compiled, &'a T)> {
            chain.iter().find_map(|c| f(c).map(|v| (*c, v)))
        }
        Effective {
            broken: chain.iter().find(|c| c.broken).copied(),
            allow_ip: pick(&chain, |c| c.allow_ip.as_ref()),
            deny_ip: pick(&chain, |c| c.deny_ip.as_ref()),
            api_key: pick(&chain, |c| c.api_key.as_ref()),
            basic: pick(&chain, |c| c.basic.as_ref()),
            jwt: pick(&chain, |c| c.jwt.as_ref()),
            rate_limit: pick(&chain, |c| c.rate_limit.as_ref()),
            cors: pick(&chain, |c| c.cors.as_ref()),
        }
    }
}

struct Effective<'a> {
    broken: Option<&'a Compiled>,
    allow_ip: Option<(&'a Compiled, &'a Vec<Cidr>)>,
    deny_ip: Option<(&'a Compiled, &'a Vec<Cidr>)>,
    api_key: Option<(&'a Compiled, &'a Option<HeaderName>)>,
    basic: Option<(&'a Compiled, &'a Option<Basic>)>,
    jwt: Option<(&'a Compiled, &'a Option<jwt::Jwt>)>,
    rate_limit: Option<(&'a Compiled, &'a Option<RateLimitRule>)>,
    cors: Option<(&'a Compiled, &'a Option<Cors>)>,
}

/// The rule behind a refusal: its kind (`ip-deny`, the metric label) and its audit name at a
/// scope (`ip-deny@tenant`, `jwt@target:app`).
struct Refusal {
    kind: &'static str,
    name: String,
}

fn rule(kind: &'static str, c: &Compiled) -> Refusal {
    let name = match &c.scope {
        PolicyScope::Tenant => format!("{kind}@tenant"),
        s => format!("{kind}@{}", s.key()),
    };
    Refusal { kind, name }
}

/// Where a request is going, for picking the policies that apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) tenant_id: &'a str,
    pub(crate) target: Option<&'a str>,
    pub(crate) method: &'a http::Method,
    /// The request's URI and version, to find the tenant hostname it arrived on (looked up only
    /// when the tenant has hostname policies: most requests pay nothing for it).
    pub(crate) request: Option<(&'a http::Uri, http::Version)>,
}

impl Policies {
    pub(crate) fn new(hasher: SecretHasher) -> Policies {
        Policies {
            hasher,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            basic_ok: Mutex::new(HashMap::new()),
            jwks: jwt::JwksCache::default(),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` until the next one when the bucket is empty.
    fn take_token(&self, key: BucketKey, rule: RateLimitRule, now: Instant) -> Result<(), u32> {
        let rate = f64::from(rule.per_minute) / 60.0;
        let burst = f64::from(rule.burst);
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Buckets {
            map: buckets,
            swept,
        } = &mut *guard;
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
            // Drop the buckets that have refilled (they behave like new ones; at most once a
            // second), then, if the table is still full, one arbitrary entry.
            if now.saturating_duration_since(*swept) >= SWEEP_EVERY {
                *swept = now;
                buckets.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
                });
            }
            if buckets.len() >= MAX_TRACKED {
                if let Some(k) = buckets.keys().next().cloned() {
                    buckets.remove(&k);
                }
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / rate).ceil();
            Err(wait.clamp(1.0, 3600.0) as u32)
        }
    }

    fn basic_cached(&self, fingerprint: &[u8; 32]) -> bool {
        let cache = self.basic_ok.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(fingerprint)
            .is_some_and(|at| at.elapsed() < BASIC_CACHE_TTL)
    }

    fn remember_basic(&self, fingerprint: [u8; 32]) {
        let mut cache = self.basic_ok.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_BASIC_CACHE {
            cache.retain(|_, at| at.elapsed() < BASIC_CACHE_TTL);
            if cache.len() >= MAX_BASIC_CACHE {
                cache.clear();
            }
        }
        cache.insert(fingerprint, Instant::now());
    }
}

/// The visitor's address as the trusted-proxy rules make it: the TCP peer, or behind a trusted
/// load balancer the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn visitor_ip(relay: &Relay, headers: &HeaderMap, conn: &Visitor) -> IpAddr {
    let trusted = &relay.config.trusted_proxies;
    if !crate::forwarded::trusted(trusted, conn.peer.ip()) {
        return conn.peer.ip();
    }
    let values: Vec<&str> = headers
        .get_all(&crate::proxy::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    crate::forwarded::client(trusted, conn.peer.ip(), &crate::forwarded::chain(&values))
}

/// The tenant hostname a request arrived on (for hostname-scoped policies), if it names one.
fn hostname_of(
    relay: &Relay,
    headers: &HeaderMap,
    uri: &http::Uri,
    version: http::Version,
) -> Option<String> {
    let host = crate::route::request_host(headers, uri, version).ok()??;
    relay
        .catalog
        .hostname(&host)
        .is_some()
        .then(|| host.into_owned())
}

/// Applies the tenant's policies to a request. On success the API key header (when an API key
/// rule applies) is removed from `headers`; `Authorization` is left as it is. A refusal names
/// its rule in `draft.policy`.
pub(crate) async fn check(
    relay: &Relay,
    scope: Scope<'_>,
    headers: &mut HeaderMap,
    conn: &Visitor,
    draft: &mut Draft,
) -> Result<Admission, ProxyError> {
    let Some(policies) = relay.catalog.policies(scope.tenant_id) else {
        return Ok(Admission::default());
    };
    // Boxed: the checks' state (1.7 KiB, a JWT's key fetch among them) would otherwise be part of
    // every request's future, allocated and moved whole per request, with policies or not.
    Box::pin(check_policies(
        relay,
        &policies,
        scope,
        headers,
        (conn, draft),
    ))
    .await
}

/// [`check`] for a tenant that has policies.
async fn check_policies(
    relay: &Relay,
    policies: &TenantPolicies,
    scope: Scope<'_>,
    headers: &mut HeaderMap,
    (conn, draft): (&Visitor, &mut Draft),
) -> Result<Admission, ProxyError> {
    let hostname = match scope.request {
        Some((uri, version)) if !policies.hostnames.is_empty() => {
            hostname_of(relay, headers, uri, version)
        }
        _ => None,
    };
    let eff = policies.effective(scope.target, hostname.as_deref());
    let deny = |draft: &mut Draft, r: Refusal, d: Denial| {
        debug!(
            request_id = draft.request_id,
            rule = r.name,
            "request refused by policy"
        );
        draft.policy = Some(r.name);
        let err = ProxyError::Policy(d);
        let status = err.outcome().1.as_u16();
        relay.metrics.policy_refusal(r.kind, status);
        Err(err)
    };
    if let Some(c) = eff.broken {
        return deny(draft, rule("invalid-policy", c), Denial::Forbidden);
    }
    let ip = visitor_ip(relay, headers, conn);
    // The audit shows the address the policy judged (a refusal never reaches visitor_headers).
    draft.visitor = ip.to_string();
    if let Some((c, list)) = eff.deny_ip {
        if list.iter().any(|b| b.contains(ip)) {
            return deny(draft, rule("ip-deny", c), Denial::Forbidden);
        }
    }
    if let Some((c, list)) = eff.allow_ip {
        if !list.is_empty() && !list.iter().any(|b| b.contains(ip)) {
            return deny(draft, rule("ip-allow", c), Denial::Forbidden);
        }
    }
    if let Some((c, Some(limit))) = eff.rate_limit {
        let key = (scope.tenant_id.to_string(), c.scope.key(), bucket_ip(ip));
        if let Err(secs) = relay.policies.take_token(key, *limit, Instant::now()) {
            return deny(draft, rule("rate-limit", c), Denial::RateLimited(secs));
        }
    }
    // CORS: a preflight is answered here, before credentials (browsers never send them on one).
    let mut admission = Admission::default();
    if let Some((c, Some(cors))) = eff.cors {
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(origin) = text(header::ORIGIN) {
            let request_method = text(header::ACCESS_CONTROL_REQUEST_METHOD);
            if let (true, Some(method)) = (scope.method == http::Method::OPTIONS, request_method) {
                let requested = text(header::ACCESS_CONTROL_REQUEST_HEADERS).unwrap_or_default();
                return match cors.preflight(&origin, &method, &requested) {
                    Some(answer) => Err(ProxyError::Policy(Denial::Preflight(answer))),
                    None => deny(draft, rule("cors", c), Denial::Forbidden),
                };
            }
            admission.cors = cors.allow(&origin);
        }
    }
    let api_key = eff.api_key.and_then(|(c, h)| h.as_ref().map(|h| (c, h)));
    let basic = eff.basic.and_then(|(c, b)| b.as_ref().map(|b| (c, b)));
    let jwt = eff.jwt.and_then(|(c, j)| j.as_ref().map(|j| (c, j)));
    if api_key.is_none() && basic.is_none() && jwt.is_none() {
        return Ok(admission);
    }
    // Any one configured credential admits; the first bad one is what the audit names.
    let mut failed: Option<Refusal> = None;
    let mut bearer_error = None;
    if let Some((c, name)) = api_key {
        let offered = headers.get(name).map(|v| v.as_bytes().to_vec());
        headers.remove(name);
        if let Some(value) = offered {
            if api_key_ok(relay, scope.tenant_id, &value) {
                return Ok(admission);
            }
            failed.get_or_insert(rule("api-key", c));
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_CREDENTIAL_LEN)
        .map(str::to_string);
    let (scheme, credentials) = match authorization.as_deref().map(str::trim) {
        Some(a) => match a.split_once(' ') {
            Some((s, rest)) => (s.to_ascii_lowercase(), rest.trim()),
            None => (a.to_ascii_lowercase(), ""),
        },
        None => (String::new(), ""),
    };
    if let Some((c, j)) = jwt {
        if scheme == "bearer" {
            match jwt::verify(j, &relay.policies.jwks, credentials).await {
                Ok(()) => return Ok(admission),
                Err(why) => {
                    debug!(request_id = draft.request_id, why, "bearer token refused");
                    bearer_error = Some(why);
                    failed.get_or_insert(rule("jwt", c));
                }
            }
        }
    }
    if let Some((c, b)) = basic {
        if scheme == "basic" {
            match basic_ok(relay, b, credentials).await {
                Ok(true) => return Ok(admission),
                Ok(false) => {
                    failed.get_or_insert(rule("basic", c));
                }
                Err(relay_store::Error::HashingBusy) => {
                    return deny(draft, rule("basic-busy", c), Denial::RateLimited(2));
                }
                Err(_) => {
                    failed.get_or_insert(rule("basic", c));
                }
            }
        }
    }
    let mut challenges = Vec::new();
    if let Some((_, b)) = basic {
        challenges.push(b.challenge.clone());
    }
    if jwt.is_some() {
        let value = match bearer_error {
            Some(_) => "Bearer realm=\"relay\", error=\"invalid_token\"",
            None => "Bearer realm=\"relay\"",
        };
        challenges.push(HeaderValue::from_static(value));
    }
    if let Some((_, name)) = api_key {
        if let Ok(v) = HeaderValue::from_str(&format!("ApiKey header=\"{name}\"")) {
            challenges.push(v);
        }
    }
    let name = failed.unwrap_or_else(|| {
        let c = api_key
            .map(|(c, _)| c)
            .or(jwt.map(|(c, _)| c))
            .or(basic.map(|(c, _)| c));
        c.map(|c| rule("credentials-missing", c))
            .unwrap_or_else(|| Refusal {
                kind: "credentials-missing",
                name: "credentials-missing".into(),
            })
    });
    deny(draft, name, Denial::Unauthorized(challenges))
}

/// A pairing socket's check, before the upgrade: the tenant-scope policies of an enabled tenant
/// (unknown tenants are left to pairing's own refusal). A refusal is answered and audited here.
pub(crate) async fn check_pairing(
    relay: &Relay,
    tenant: Option<&str>,
    req: &mut http::Request<hyper::body::Incoming>,
    conn: &Visitor,
    mut draft: Draft,
) -> Result<Draft, http::Response<http_body_util::Full<bytes::Bytes>>> {
    let Some(tenant) = tenant.and_then(|t| relay.catalog.enabled_tenant(&t.to_ascii_lowercase()))
    else {
        return Ok(draft);
    };
    let method = req.method().clone();
    let scope = Scope {
        tenant_id: &tenant.id.0,
        target: None,
        method: &method,
        request: None,
    };
    match check(relay, scope, req.headers_mut(), conn, &mut draft).await {
        Ok(_) => Ok(draft),
        Err(e) => {
            draft.tenant = tenant.name.clone();
            let response = crate::error::error_response(&e, &draft.request_id);
            let status = response.status().as_u16();
            relay
                .audit
                .record(draft, status, crate::audit::Outcome::of_status(status), 0);
            Err(response)
        }
    }
}

/// IPv6 visitors are limited per /64 (one subscriber's block), IPv4 per address.
fn bucket_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

fn api_key_ok(relay: &Relay, tenant_id: &str, value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let Some(id) = relay_store::parse_api_key(value.trim()) else {
        return false;
    };
    let Some(record): Option<ApiKeyRecord> = relay.catalog.api_key(id) else {
        return false;
    };
    record.tenant_id.0 == tenant_id && relay.policies.hasher.verify(value.trim(), &record.key_hash)
}

async fn basic_ok(relay: &Relay, b: &Basic, credentials: &str) -> Result<bool, relay_store::Error> {
    let Some(decoded) = STANDARD
        .decode(credentials)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Ok(false);
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return Ok(false);
    };
    let Some(phc) = b.users.get(user) else {
        // The same work as for a real user: timing does not tell which names exist.
        if let Some(other) = b.users.values().next() {
            let _ = relay_store::verify_password(password, other).await?;
        }
        return Ok(false);
    };
    let fingerprint: [u8; 32] = {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(phc.as_bytes());
        ctx.update(&[0]);
        ctx.update(decoded.as_bytes());
        let d = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    };
    if relay.policies.basic_cached(&fingerprint) {
        return Ok(true);
    }
    let ok = relay_store::verify_password(password, phc).await?;
    if ok {
        relay.policies.remember_basic(fingerprint);
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_stay_bounded() {
        let p = Policies::new(SecretHasher::new(b"pepper"));
        let rule = RateLimitRule {
            per_minute: 60,
            burst: 2,
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let key = || ("t".to_string(), String::new(), ip);
        let t0 = Instant::now();
        assert!(p.take_token(key(), rule, t0).is_ok());
        assert!(p.take_token(key(), rule, t0).is_ok());
        assert_eq!(p.take_token(key(), rule, t0), Err(1));
        assert!(p
            .take_token(key(), rule, t0 + Duration::from_millis(1100))
            .is_ok());
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = p.take_token(("t".into(), String::new(), ip), rule, t0);
        }
        assert!(p.buckets.lock().unwrap().map.len() <= MAX_TRACKED);
    }

    #[test]
    fn ipv6_visitors_share_a_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_ip(a), bucket_ip(b));
        assert_ne!(bucket_ip(a), bucket_ip(c));
    }
}
