//! `/api/v1`: the management REST API (JSON, `Authorization: Bearer rat_…`).
//!
//! The route table [`ROUTES`] is the single source: the router is built from it and
//! `/api/v1/openapi.json` is generated from it, so the document cannot drift from the routes.
//! Errors are RFC 9457 problem documents. A request body must be a JSON object of the
//! documented shape: arrays (where serde would fill a struct by position), unknown fields and
//! wrong types get 422, unparsable JSON 400. Query parameters that are unknown, malformed or out
//! of the documented range get 400.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Json, Router};
use relay_store::{
    AuditFilter, AuditRecord, Credential, SessionRecord, Tenant, TenantLimits, TenantSettings,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::auth::ApiAdmin;
use crate::error::{ApiError, Error};
use crate::AppState;

/// One API operation.
#[derive(Debug)]
pub struct ApiRoute {
    /// Lowercase HTTP method.
    pub method: &'static str,
    /// The path, with `{param}` segments.
    pub path: &'static str,
    /// The OpenAPI operation id.
    pub operation: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// The request body's schema, if any.
    pub request: Option<&'static str>,
    /// The success status and its body's schema, if any.
    pub response: (u16, Option<&'static str>),
    /// Query parameters: (name, schema type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
}

/// Largest `limit` of a listing.
pub(crate) const MAX_LIMIT: u32 = 1000;
/// Largest `offset` (the store counts in signed 64 bits).
const MAX_OFFSET: u64 = i64::MAX as u64;
/// Largest value of a byte or millisecond limit (the store keeps signed 64 bits).
const MAX_LIMIT_VALUE: u64 = i64::MAX as u64;

/// Tenant and target names as requests may give them: the naming rule, case-insensitive (they
/// are stored lowercase); see `relay_store::validate_name`.
pub(crate) const NAME_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$";
/// Tenant and target names as answers show them (canonical, lowercase).
pub(crate) const CANONICAL_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// Hostnames as requests may give them: two or more labels of 1–63 letters, digits and `-`
/// (not first or last), case-insensitive, one optional trailing dot; at most 253 characters
/// without it. See `relay_store::canonical_hostname`.
pub(crate) const HOSTNAME_PATTERN: &str = r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.?$";
/// Hostnames as answers show them (canonical: lowercase, no trailing dot).
pub(crate) const CANONICAL_HOSTNAME_PATTERN: &str =
    r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";
/// A status filter: one status (`502`) or a class (`5xx`).
const STATUS_PATTERN: &str = "^([1-5][0-9][0-9]|[1-5][xX][xX])$";

const PAGING: &[(&str, &str, &str)] = &[
    (
        "q",
        "string",
        "only tenants whose name or display name contains this",
    ),
    ("offset", "integer", "skip this many (default 0)"),
    (
        "limit",
        "integer",
        "at most this many (default 50, at most 1000)",
    ),
];

const REQUEST_FILTERS: &[(&str, &str, &str)] = &[
    ("tenant", "string", "only this tenant"),
    ("status", "string", "a status (`502`) or a class (`5xx`)"),
    (
        "since",
        "string",
        "RFC 3339 time or ms since the epoch; records at or after it",
    ),
    (
        "until",
        "string",
        "RFC 3339 time or ms since the epoch; records before it",
    ),
    (
        "limit",
        "integer",
        "at most this many (default 100, at most 1000)",
    ),
    ("offset", "integer", "skip this many (default 0)"),
];

/// Every route of the API.
pub static ROUTES: &[ApiRoute] = &[
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants",
        operation: "listTenants",
        summary: "List tenants (paged, by name)",
        request: None,
        response: (200, Some("TenantList")),
        query: PAGING,
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants",
        operation: "createTenant",
        summary: "Create a tenant",
        request: Some("NewTenant"),
        response: (201, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}",
        operation: "getTenant",
        summary: "Read a tenant",
        request: None,
        response: (200, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "patch",
        path: "/api/v1/tenants/{name}",
        operation: "updateTenant",
        summary: "Enable or disable a tenant, change its settings and limits",
        request: Some("TenantPatch"),
        response: (200, Some("Tenant")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}",
        operation: "deleteTenant",
        summary: "Delete a tenant with its credentials and hostnames; its sessions close",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/credentials",
        operation: "listCredentials",
        summary: "List a tenant's connector credentials (never their secrets)",
        request: None,
        response: (200, Some("CredentialList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/credentials",
        operation: "createCredential",
        summary: "Create a connector credential; the secret appears only in this response",
        request: Some("NewCredential"),
        response: (201, Some("CreatedCredential")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/credentials/{id}",
        operation: "revokeCredential",
        summary: "Revoke a credential; sessions using it close",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/hostnames",
        operation: "listHostnames",
        summary: "List a tenant's hostnames",
        request: None,
        response: (200, Some("HostnameList")),
        query: &[],
    },
    ApiRoute {
        method: "post",
        path: "/api/v1/tenants/{name}/hostnames",
        operation: "addHostname",
        summary: "Route a hostname to one of the tenant's targets",
        request: Some("NewHostname"),
        response: (201, Some("Hostname")),
        query: &[],
    },
    ApiRoute {
        method: "delete",
        path: "/api/v1/tenants/{name}/hostnames/{hostname}",
        operation: "removeHostname",
        summary: "Remove a hostname",
        request: None,
        response: (204, None),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/tenants/{name}/connections",
        operation: "listConnections",
        summary: "The tenant's live connector sessions on every relay node",
        request: None,
        response: (200, Some("ConnectionList")),
        query: &[],
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/requests",
        operation: "listRequests",
        summary: "Audit records, newest first",
        request: None,
        response: (200, Some("RequestList")),
        query: REQUEST_FILTERS,
    },
    ApiRoute {
        method: "get",
        path: "/api/v1/openapi.json",
        operation: "openapi",
        summary: "This document",
        request: None,
        response: (200, None),
        query: &[],
    },
];

/// The handler of an operation (the table above names them).
fn handler(operation: &str) -> MethodRouter<AppState> {
    match operation {
        "listTenants" => get(list_tenants),
        "createTenant" => post(create_tenant),
        "getTenant" => get(get_tenant),
        "updateTenant" => patch(update_tenant),
        "deleteTenant" => delete(delete_tenant),
        "listCredentials" => get(list_credentials),
        "createCredential" => post(create_credential),
        "revokeCredential" => delete(revoke_credential),
        "listHostnames" => get(list_hostnames),
        "addHostname" => post(add_hostname),
        "removeHostname" => delete(remove_hostname),
        "listConnections" => get(list_connections),
        "listRequests" => get(list_requests),
        "openapi" => get(openapi),
        other => unreachable!("route table names an unknown operation {other}"),
    }
}

/// The API's router, built from [`ROUTES`].
pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for r in ROUTES {
        router = router.route(r.path, handler(r.operation));
    }
    router
}

type ApiResult = Result<Response, ApiError>;

/// A JSON object body. A wrong content type (415), unparsable JSON (400) and a body that is not
/// an object, or not of `T`'s shape (422), become problem documents. Nested objects are
/// checked by [`object`].
pub(crate) struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, ApiError> {
        let value = match Json::<Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(e) => return Err(Error::Rejected(e.status(), e.body_text()).into()),
        };
        if !value.is_object() {
            return Err(Error::Validation("the body must be a JSON object".into()).into());
        }
        T::deserialize(value)
            .map(Body)
            .map_err(|e| Error::Validation(e.to_string()).into())
    }
}

/// A nested object field: a JSON object or `null`, never an array. (serde fills a struct from
/// a sequence by position, so `{"limits": [5, null]}` would otherwise set a limit.)
fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let map = Option::<serde_json::Map<String, Value>>::deserialize(d)?;
    map.map(|m| T::deserialize(Value::Object(m)).map_err(serde::de::Error::custom))
        .transpose()
}

/// A listing's `limit` (default `default`) and `offset`, refused outside 1..=1000 and
/// 0..=2^63-1.
fn paging(limit: Option<u32>, offset: u64, default: u32) -> Result<u32, String> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(format!("limit {limit}: give 1 to {MAX_LIMIT}"));
    }
    if offset > MAX_OFFSET {
        return Err(format!("offset {offset}: at most {MAX_OFFSET}"));
    }
    Ok(limit)
}

/// Query parameters; unknown or malformed ones become a 400 problem.
pub(crate) struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Params<T>, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(Error::BadQuery(e.body_text()).into()),
        }
    }
}

/// A time as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A time given as ms since the epoch or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor ms since the epoch"))
}

/// A status filter: `502` or `5xx` ([`STATUS_PATTERN`]).
pub(crate) fn parse_status(s: &str) -> Result<(i64, i64), String> {
    let err = || format!("status {s:?}: give a status like 502 or a class like 5xx");
    let lower = s.to_ascii_lowercase();
    if lower.len() != 3 || !lower.bytes().all(|b| b.is_ascii_digit() || b == b'x') {
        return Err(err());
    }
    if let Some(d) = lower.strip_suffix("xx") {
        let class: i64 = d.parse().map_err(|_| err())?;
        return if (1..=5).contains(&class) {
            Ok((class * 100, class * 100 + 99))
        } else {
            Err(err())
        };
    }
    let code: i64 = lower.parse().map_err(|_| err())?;
    if (100..=599).contains(&code) {
        Ok((code, code))
    } else {
        Err(err())
    }
}

#[derive(Serialize)]
struct LimitsJson {
    max_body_bytes: Option<u64>,
    max_concurrent_streams: Option<u32>,
    request_timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct TenantJson {
    name: String,
    display_name: String,
    description: String,
    enabled: bool,
    audit_query_strings: bool,
    limits: LimitsJson,
    created_at: String,
}

fn tenant_json(t: &Tenant) -> TenantJson {
    TenantJson {
        name: t.name.clone(),
        display_name: t.display_name.clone(),
        description: t.description.clone(),
        enabled: t.enabled,
        audit_query_strings: t.audit_query_strings,
        limits: LimitsJson {
            max_body_bytes: t.limits.max_body_bytes,
            max_concurrent_streams: t.limits.max_concurrent_streams,
            request_timeout_ms: t.limits.request_timeout_ms,
        },
        created_at: rfc3339(t.created_at),
    }
}

fn credential_json(c: &Credential) -> Value {
    json!({
        "id": c.id.0,
        "label": c.label,
        "created_at": rfc3339(c.created_at),
        "last_used_at": c.last_used_at.map(rfc3339),
        "revoked_at": c.revoked_at.map(rfc3339),
    })
}

pub(crate) fn connection_json(s: &SessionRecord, in_flight: Option<usize>) -> Value {
    json!({
        "id": s.id,
        "transport": s.transport,
        "remote_addr": s.remote_addr,
        "connector_id": s.connector_id,
        "connector_version": s.connector_version,
        "connected_at": rfc3339(s.connected_at),
        "relay_node": s.relay_node,
        "in_flight_streams": in_flight,
    })
}

fn request_json(r: &AuditRecord) -> Value {
    json!({
        "request_id": r.request_id,
        "tenant": r.tenant,
        "target": r.target,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "outcome": r.outcome,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "duration_ms": r.duration_ms,
        "visitor": r.visitor,
        "session_id": r.session_id,
        "relay_node": r.relay_node,
        "created_at": rfc3339(r.created_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Paging {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: u64,
    limit: Option<u32>,
}

async fn list_tenants(
    State(state): State<AppState>,
    _: ApiAdmin,
    Params(p): Params<Paging>,
) -> ApiResult {
    let limit = paging(p.limit, p.offset, 50).map_err(Error::BadQuery)?;
    let (tenants, total) = state.store().tenants_page(&p.q, p.offset, limit).await?;
    let items: Vec<TenantJson> = tenants.iter().map(tenant_json).collect();
    Ok(
        Json(json!({"items": items, "total": total, "offset": p.offset, "limit": limit}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    display_name: Option<String>,
    description: Option<String>,
}

async fn create_tenant(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Body(body): Body<NewTenant>,
) -> ApiResult {
    let store = state.store();
    let t = store.create_tenant(&body.name).await?;
    if body.display_name.is_some() || body.description.is_some() {
        let settings = TenantSettings {
            display_name: body.display_name,
            description: body.description,
            audit_query_strings: None,
        };
        store.set_tenant_settings(&t.name, &settings).await?;
    }
    state.record(&admin.actor(), "tenant.create", &t.name).await;
    let t = state.tenant(&t.name).await?;
    let mut res = (StatusCode::CREATED, Json(tenant_json(&t))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/tenants/{}", t.name)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

async fn get_tenant(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

/// `Some(None)` when the field is `null`, `None` when it is absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsPatch {
    #[serde(default, deserialize_with = "nullable")]
    max_body_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent_streams: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    request_timeout_ms: Option<Option<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    enabled: Option<bool>,
    display_name: Option<String>,
    description: Option<String>,
    audit_query_strings: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    limits: Option<LimitsPatch>,
}

/// Limits must be positive when set (null restores the relay's default), and the byte and
/// millisecond ones fit the store's signed 64 bits.
fn check_limits(l: &TenantLimits) -> Result<(), Error> {
    let zero = l.max_body_bytes == Some(0)
        || l.max_concurrent_streams == Some(0)
        || l.request_timeout_ms == Some(0);
    let big = l.max_body_bytes.is_some_and(|v| v > MAX_LIMIT_VALUE)
        || l.request_timeout_ms.is_some_and(|v| v > MAX_LIMIT_VALUE);
    if zero || big {
        return Err(Error::Validation(
            "limits must be 1 to 2^63-1 (max_concurrent_streams: 1 to 2^32-1); use null for \
             the relay's default"
                .into(),
        ));
    }
    Ok(())
}

async fn update_tenant(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<TenantPatch>,
) -> ApiResult {
    let store = state.store();
    let t = state.tenant(&name).await?;
    let limits = body.limits.map(|p| TenantLimits {
        max_body_bytes: p.max_body_bytes.unwrap_or(t.limits.max_body_bytes),
        max_concurrent_streams: p
            .max_concurrent_streams
            .unwrap_or(t.limits.max_concurrent_streams),
        request_timeout_ms: p.request_timeout_ms.unwrap_or(t.limits.request_timeout_ms),
    });
    if let Some(l) = &limits {
        check_limits(l)?;
    }
    let settings = TenantSettings {
        display_name: body.display_name,
        description: body.description,
        audit_query_strings: body.audit_query_strings,
    };
    if settings != TenantSettings::default() {
        store.set_tenant_settings(&t.name, &settings).await?;
    }
    if let Some(l) = &limits {
        store.set_tenant_limits(&t.name, l).await?;
    }
    if let Some(enabled) = body.enabled {
        store.set_tenant_enabled(&t.name, enabled).await?;
    }
    state.record(&admin.actor(), "tenant.update", &t.name).await;
    let t = state.tenant(&t.name).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

async fn delete_tenant(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    state.store().delete_tenant(&name).await?;
    state
        .record(&admin.actor(), "tenant.delete", &name.to_ascii_lowercase())
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_credentials(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    let creds = state.store().credentials(&t.name).await?;
    let items: Vec<Value> = creds.iter().map(credential_json).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewCredential {
    #[serde(default)]
    label: String,
}

async fn create_credential(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewCredential>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    let label: String = body.label.chars().take(200).collect();
    let created = state
        .store()
        .create_credential(&t.name, &label, state.hasher())
        .await?;
    let c = &created.credential;
    state
        .record(
            &admin.actor(),
            "credential.create",
            &format!("{}/{}", t.name, c.id.0),
        )
        .await;
    let body = json!({
        "id": c.id.0,
        "secret": created.secret,
        "label": c.label,
        "created_at": rfc3339(c.created_at),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_credential(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    state.store().revoke_credential(&name, &id).await?;
    state
        .record(
            &admin.actor(),
            "credential.revoke",
            &format!("{}/{id}", name.to_ascii_lowercase()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_hostnames(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    let hosts = state.store().hostnames(&t.name).await?;
    let items: Vec<Value> = hosts
        .iter()
        .map(|h| json!({"hostname": h.hostname, "target": h.target}))
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHostname {
    hostname: String,
    target: String,
}

async fn add_hostname(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewHostname>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    let h = state
        .store()
        .add_hostname(&t.name, &body.hostname, &body.target)
        .await?;
    state
        .record(
            &admin.actor(),
            "hostname.add",
            &format!("{}/{}", t.name, h.hostname),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hostname": h.hostname, "target": h.target})),
    )
        .into_response())
}

async fn remove_hostname(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
) -> ApiResult {
    state.store().remove_hostname(&name, &hostname).await?;
    state
        .record(
            &admin.actor(),
            "hostname.remove",
            &format!("{}/{hostname}", name.to_ascii_lowercase()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A tenant's live sessions, with streams in flight where this process holds them.
pub(crate) async fn connections(
    state: &AppState,
    tenant: &str,
) -> Result<Vec<(SessionRecord, Option<usize>)>, relay_store::Error> {
    let sessions = state.store().live_sessions(tenant).await?;
    let in_flight = state.node().map(|n| n.in_flight()).unwrap_or_default();
    Ok(sessions
        .into_iter()
        .map(|s| {
            let n = in_flight.get(&s.id).copied();
            (s, n)
        })
        .collect())
}

async fn list_connections(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = state.tenant(&name).await?;
    let list = connections(&state, &t.name).await?;
    let items: Vec<Value> = list.iter().map(|(s, n)| connection_json(s, *n)).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// The audit filters as query parameters (the UI's audit page takes the same).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestQuery {
    #[serde(default)]
    pub(crate) tenant: String,
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    pub(crate) limit: Option<u32>,
    #[serde(default)]
    pub(crate) offset: u64,
}

impl RequestQuery {
    /// The store filter these parameters describe.
    pub(crate) fn filter(&self, default_limit: u32) -> Result<AuditFilter, String> {
        let opt = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        Ok(AuditFilter {
            tenant: opt(&self.tenant).map(|t| t.to_ascii_lowercase()),
            status: opt(&self.status).map(|s| parse_status(&s)).transpose()?,
            since: opt(&self.since).map(|s| parse_time(&s)).transpose()?,
            until: opt(&self.until).map(|s| parse_time(&s)).transpose()?,
            limit: paging(self.limit, self.offset, default_limit)?,
            offset: self.offset,
        })
    }
}

async fn list_requests(
    State(state): State<AppState>,
    _: ApiAdmin,
    Params(q): Params<RequestQuery>,
) -> ApiResult {
    let filter = q.filter(100).map_err(Error::BadQuery)?;
    let records = state.store().audit_query(&filter).await?;
    let items: Vec<Value> = records.iter().map(request_json).collect();
    Ok(
        Json(json!({"items": items, "offset": filter.offset, "limit": filter.limit}))
            .into_response(),
    )
}

async fn openapi(_: ApiAdmin) -> Response {
    Json(openapi_document()).into_response()
}

/// The schema of a path or query parameter, with the ranges and patterns the handlers enforce.
fn parameter_schema(name: &str, ty: &str) -> Value {
    match name {
        "name" => json!({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}),
        "hostname" => json!({"type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 254}),
        "offset" => json!({"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
        "status" => json!({"type": "string", "pattern": STATUS_PATTERN}),
        _ => json!({"type": ty}),
    }
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": parameter_schema(p, "string")}))
            .collect();
        params.extend(r.query.iter().map(|(name, ty, desc)| {
            json!({"name": name, "in": "query", "required": false, "description": desc, "schema": parameter_schema(name, ty)})
        }));
        let (status, schema) = r.response;
        let success = match schema {
            Some(s) => {
                json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}})
            }
            None if r.operation == "openapi" => {
                json!({"description": "this document", "content": {"application/json": {"schema": {"type": "object"}}}})
            }
            None => json!({"description": "done"}),
        };
        let problem_ref = |what: &str| json!({"description": what, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        let mut responses = serde_json::Map::new();
        responses.insert(status.to_string(), success);
        responses.insert("401".into(), problem_ref("no valid API token"));
        if !r.query.is_empty() {
            responses.insert(
                "400".into(),
                problem_ref("a query parameter is unknown, malformed or out of range"),
            );
        }
        if r.request.is_some() {
            responses.insert("400".into(), problem_ref("the body is not JSON"));
            responses.insert(
                "422".into(),
                problem_ref("the body is not an object of the schema (arrays, unknown fields, wrong types) or a value is invalid"),
            );
        }
        responses.insert("default".into(), problem_ref("error"));
        let mut op = json!({
            "operationId": r.operation,
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(req) = r.request {
            op["requestBody"] = json!({"required": true, "description": "a JSON object (never an array)", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let nullable =
        |min: u64, max: u64| json!({"type": ["integer", "null"], "minimum": min, "maximum": max});
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    let name_in = json!({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63, "description": "case-insensitive; stored lowercase"});
    let name_out = json!({"type": "string", "pattern": CANONICAL_NAME_PATTERN, "maxLength": 63});
    let host_in = json!({"type": "string", "pattern": HOSTNAME_PATTERN, "maxLength": 254, "description": "a DNS name, case-insensitive, at most 253 characters without the optional trailing dot; stored lowercase"});
    let host_out =
        json!({"type": "string", "pattern": CANONICAL_HOSTNAME_PATTERN, "maxLength": 253});
    // Answers may show a 0 set through the CLI; requests must give 1 or more.
    let limits = |what: &str, min: u64| {
        json!({"type": "object", "additionalProperties": false, "description": what, "properties": {
            "max_body_bytes": nullable(min, MAX_LIMIT_VALUE),
            "max_concurrent_streams": nullable(min, u64::from(u32::MAX)),
            "request_timeout_ms": nullable(min, MAX_LIMIT_VALUE)}})
    };
    let paging = |items: &str| {
        json!({"type": "object", "properties": {
            "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{items}")}},
            "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}}})
    };
    let mut tenant_list = paging("Tenant");
    tenant_list["properties"]["total"] = json!({"type": "integer", "minimum": 0});
    let mut schemas = serde_json::Map::new();
    schemas.insert("Problem".into(), json!({"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}));
    schemas.insert("Limits".into(), limits("null: the relay's default", 0));
    schemas.insert(
        "LimitsPatch".into(),
        limits(
            "an absent field is kept; null returns to the relay's default; 0 is refused",
            1,
        ),
    );
    schemas.insert("Tenant".into(), json!({"type": "object", "required": ["name", "display_name", "description", "enabled", "audit_query_strings", "limits", "created_at"], "properties": {
                    "name": name_out, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "enabled": {"type": "boolean"}, "audit_query_strings": {"type": "boolean"},
                    "limits": {"$ref": "#/components/schemas/Limits"}, "created_at": time}}));
    schemas.insert("TenantList".into(), tenant_list);
    schemas.insert("NewTenant".into(), json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": name_in, "display_name": {"type": "string"}, "description": {"type": "string"}}}));
    schemas.insert("TenantPatch".into(), json!({"type": "object", "additionalProperties": false, "properties": {
                    "enabled": {"type": "boolean"}, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "audit_query_strings": {"type": "boolean"}, "limits": {"oneOf": [{"$ref": "#/components/schemas/LimitsPatch"}, {"type": "null"}]}}}));
    schemas.insert("Credential".into(), json!({"type": "object", "properties": {"id": {"type": "string"}, "label": {"type": "string"}, "created_at": time, "last_used_at": nullable_time, "revoked_at": nullable_time}}));
    schemas.insert("CredentialList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Credential"}}}}));
    schemas.insert("NewCredential".into(), json!({"type": "object", "additionalProperties": false, "properties": {"label": {"type": "string", "description": "the first 200 characters are kept"}}}));
    schemas.insert("CreatedCredential".into(), json!({"type": "object", "required": ["id", "secret"], "properties": {"id": {"type": "string"}, "secret": {"type": "string"}, "label": {"type": "string"}, "created_at": time}}));
    schemas.insert(
        "Hostname".into(),
        json!({"type": "object", "properties": {"hostname": host_out, "target": name_out}}),
    );
    schemas.insert("HostnameList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Hostname"}}}}));
    schemas.insert("NewHostname".into(), json!({"type": "object", "additionalProperties": false, "required": ["hostname", "target"], "properties": {"hostname": host_in, "target": name_in}}));
    schemas.insert("Connection".into(), json!({"type": "object", "properties": {
                    "id": {"type": "string"}, "transport": {"type": "string", "enum": ["quic", "tcp"]}, "remote_addr": {"type": "string"},
                    "connector_id": {"type": "string"}, "connector_version": {"type": "string"}, "connected_at": time,
                    "relay_node": {"type": "string"}, "in_flight_streams": {"type": ["integer", "null"], "minimum": 0, "description": "known when the answering process is the relay node holding the session"}}}));
    schemas.insert("ConnectionList".into(), json!({"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Connection"}}}}));
    schemas.insert("Request".into(), json!({"type": "object", "properties": {
                    "request_id": {"type": "string"}, "tenant": {"type": "string"}, "target": {"type": "string"}, "method": {"type": "string"},
                    "path": {"type": "string"}, "status": {"type": "integer"}, "outcome": {"type": "string", "enum": ["ok", "visitor-aborted", "backend-error", "timeout", "refused"]},
                    "bytes_in": {"type": "integer", "minimum": 0}, "bytes_out": {"type": "integer", "minimum": 0}, "duration_ms": {"type": "integer", "minimum": 0},
                    "visitor": {"type": "string"}, "session_id": {"type": "string"}, "relay_node": {"type": "string"}, "created_at": time}}));
    schemas.insert("RequestList".into(), paging("Request"));
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Relay management API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an admin API token (rat_…); the scheme name is case-insensitive"}},
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!(parse_status("5xx"), Ok((500, 599)));
        assert_eq!(parse_status("2XX"), Ok((200, 299)));
        assert_eq!(parse_status("502"), Ok((502, 502)));
        assert!(parse_status("6xx").is_err());
        assert!(parse_status("99").is_err());
        assert!(parse_status("abc").is_err());
        assert!(parse_status("+50").is_err());
        assert!(parse_status("5x2").is_err());
        assert!(parse_status("5000").is_err());
    }

    #[test]
    fn paging_out_of_range_is_refused() {
        assert_eq!(paging(None, 0, 50), Ok(50));
        assert_eq!(paging(Some(1), MAX_OFFSET, 50), Ok(1));
        assert_eq!(paging(Some(MAX_LIMIT), 0, 50), Ok(MAX_LIMIT));
        assert!(paging(Some(0), 0, 50).is_err());
        assert!(paging(Some(MAX_LIMIT + 1), 0, 50).is_err());
        assert!(paging(None, MAX_OFFSET + 1, 50).is_err());
    }

    async fn body<T: DeserializeOwned>(json: &str) -> Result<T, StatusCode> {
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(json.to_string()))
            .unwrap();
        Body::<T>::from_request(req, &())
            .await
            .map(|Body(v)| v)
            .map_err(|e| e.0.outcome().status)
    }

    #[tokio::test]
    async fn bodies_must_be_objects_all_the_way_down() {
        let unprocessable = Some(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body::<NewCredential>("[]").await.err(), unprocessable);
        assert_eq!(body::<NewCredential>("[\"x\"]").await.err(), unprocessable);
        assert_eq!(body::<NewCredential>("null").await.err(), unprocessable);
        assert_eq!(
            body::<NewCredential>("{").await.err(),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            body::<NewCredential>("{}").await.ok().map(|c| c.label),
            Some(String::new())
        );
        for bad in [
            r#"{"limits": [5, null]}"#,
            r#"{"limits": [5]}"#,
            r#"{"limits": {"max_body_bytes": [5]}}"#,
            r#"{"limits": {"max_body_bytes": -1}}"#,
            r#"{"limits": {"speed": 1}}"#,
            r#"{"enabled": "yes"}"#,
        ] {
            assert_eq!(body::<TenantPatch>(bad).await.err(), unprocessable, "{bad}");
        }
        let p =
            body::<TenantPatch>(r#"{"limits": {"max_body_bytes": 5, "request_timeout_ms": null}}"#)
                .await
                .unwrap();
        let l = p.limits.expect("limits");
        assert_eq!(l.max_body_bytes, Some(Some(5)));
        assert_eq!(l.request_timeout_ms, Some(None));
        assert_eq!(l.max_concurrent_streams, None);
        let p = body::<TenantPatch>(r#"{"limits": null}"#).await.unwrap();
        assert!(p.limits.is_none());
    }

    #[test]
    fn the_document_states_patterns_and_ranges() {
        let doc = openapi_document();
        let s = &doc["components"]["schemas"];
        assert_eq!(
            s["NewTenant"]["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            s["Tenant"]["properties"]["name"]["pattern"],
            CANONICAL_NAME_PATTERN
        );
        assert_eq!(
            s["NewHostname"]["properties"]["hostname"]["pattern"],
            HOSTNAME_PATTERN
        );
        assert_eq!(
            s["NewHostname"]["properties"]["target"]["pattern"],
            NAME_PATTERN
        );
        assert_eq!(
            s["LimitsPatch"]["properties"]["max_body_bytes"]["minimum"],
            1
        );
        let list = &doc["paths"]["/api/v1/tenants"]["get"]["parameters"];
        let param = |n: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == n)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("offset")["minimum"], 0);
        assert_eq!(param("limit")["minimum"], 1);
        assert_eq!(param("limit")["maximum"], MAX_LIMIT);
    }

    #[test]
    fn times_as_ms_or_rfc3339() {
        assert_eq!(parse_time("1000"), Ok(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(rfc3339(1500), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn every_route_is_in_the_document_once() {
        let doc = openapi_document();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = ROUTES
                    .iter()
                    .find(|r| r.path == path && r.method == method)
                    .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
                assert_eq!(op["operationId"], r.operation);
                n += 1;
            }
        }
        assert_eq!(n, ROUTES.len());
        // Building the router checks that each operation has a handler.
        let _ = router();
    }
}
