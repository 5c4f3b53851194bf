//! `/api/v1`: the management REST API (JSON, `Authorization: Bearer rat_…`).
//!
//! The route table [`ROUTES`] is the single source: the router is built from it and
//! `/api/v1/openapi.json` is generated from it, so the document cannot drift from the routes.
//! Errors are RFC 9457 problem documents; request bodies with unknown fields are refused.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::{Json, Router};
use relay_store::{
    AuditFilter, AuditRecord, Credential, Error, SessionRecord, Tenant, TenantLimits,
    TenantSettings,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::auth::ApiAdmin;
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
    router.fallback(|| async { problem(StatusCode::NOT_FOUND, "not found", "no such API route") })
}

/// An RFC 9457 problem document.
pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

/// A store error as the API tells it (internals are logged, not shown).
pub(crate) fn store_problem(e: Error) -> Response {
    match e {
        Error::TenantExists(_)
        | Error::HostnameTaken(_)
        | Error::ApiTokenExists(_)
        | Error::AdminUserExists(_) => problem(StatusCode::CONFLICT, "conflict", &e.to_string()),
        Error::TenantNotFound(_)
        | Error::CredentialNotFound(_)
        | Error::HostnameNotFound(_)
        | Error::ApiTokenNotFound(_) => problem(StatusCode::NOT_FOUND, "not found", &e.to_string()),
        Error::InvalidName(_) | Error::InvalidHostname(_) => {
            problem(StatusCode::BAD_REQUEST, "invalid value", &e.to_string())
        }
        Error::Database(_) => {
            tracing::warn!(error = %e, "store failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
                "the database did not answer; try again",
            )
        }
        e => {
            tracing::error!(error = %e, "store failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                "see the server log",
            )
        }
    }
}

type ApiResult = Result<Response, Response>;

/// A JSON body; unknown fields, bad JSON and a wrong content type become problem documents.
pub(crate) struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, Response> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(problem(e.status(), "invalid request body", &e.body_text())),
        }
    }
}

/// Query parameters; unknown or malformed ones become a 400 problem.
pub(crate) struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Params<T>, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(problem(
                StatusCode::BAD_REQUEST,
                "invalid query",
                &e.body_text(),
            )),
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

/// A status filter: `502` or `5xx`.
pub(crate) fn parse_status(s: &str) -> Result<(i64, i64), String> {
    let err = || format!("status {s:?}: give a status like 502 or a class like 5xx");
    let lower = s.to_ascii_lowercase();
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
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let (tenants, total) = state
        .store()
        .tenants_page(&p.q, p.offset, limit)
        .await
        .map_err(store_problem)?;
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
    let t = store
        .create_tenant(&body.name)
        .await
        .map_err(store_problem)?;
    if body.display_name.is_some() || body.description.is_some() {
        let settings = TenantSettings {
            display_name: body.display_name,
            description: body.description,
            audit_query_strings: None,
        };
        store
            .set_tenant_settings(&t.name, &settings)
            .await
            .map_err(store_problem)?;
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
    limits: Option<LimitsPatch>,
}

/// Limits must be positive when set (null restores the relay's default).
fn check_limits(l: &TenantLimits) -> Result<(), Response> {
    let zero = l.max_body_bytes == Some(0)
        || l.max_concurrent_streams == Some(0)
        || l.request_timeout_ms == Some(0);
    if zero {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid limits",
            "limits must be positive; use null for the relay's default",
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
        store
            .set_tenant_settings(&t.name, &settings)
            .await
            .map_err(store_problem)?;
    }
    if let Some(l) = &limits {
        store
            .set_tenant_limits(&t.name, l)
            .await
            .map_err(store_problem)?;
    }
    if let Some(enabled) = body.enabled {
        store
            .set_tenant_enabled(&t.name, enabled)
            .await
            .map_err(store_problem)?;
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
    state
        .store()
        .delete_tenant(&name)
        .await
        .map_err(store_problem)?;
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
    let creds = state
        .store()
        .credentials(&t.name)
        .await
        .map_err(store_problem)?;
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
        .await
        .map_err(store_problem)?;
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
    state
        .store()
        .revoke_credential(&name, &id)
        .await
        .map_err(store_problem)?;
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
    let hosts = state
        .store()
        .hostnames(&t.name)
        .await
        .map_err(store_problem)?;
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
        .await
        .map_err(store_problem)?;
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
    state
        .store()
        .remove_hostname(&name, &hostname)
        .await
        .map_err(store_problem)?;
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
) -> Result<Vec<(SessionRecord, Option<usize>)>, Error> {
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
    let list = connections(&state, &t.name).await.map_err(store_problem)?;
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
            limit: self.limit.unwrap_or(default_limit).clamp(1, 1000),
            offset: self.offset,
        })
    }
}

async fn list_requests(
    State(state): State<AppState>,
    _: ApiAdmin,
    Params(q): Params<RequestQuery>,
) -> ApiResult {
    let filter = q
        .filter(100)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, "invalid query", &e))?;
    let records = state
        .store()
        .audit_query(&filter)
        .await
        .map_err(store_problem)?;
    let items: Vec<Value> = records.iter().map(request_json).collect();
    Ok(
        Json(json!({"items": items, "offset": filter.offset, "limit": filter.limit}))
            .into_response(),
    )
}

async fn openapi(_: ApiAdmin) -> Response {
    Json(openapi_document()).into_response()
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().map(|(name, ty, desc)| {
            json!({"name": name, "in": "query", "required": false, "description": desc, "schema": {"type": ty}})
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
        let problem_ref = json!({"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
        let mut responses = serde_json::Map::new();
        responses.insert(status.to_string(), success);
        responses.insert("401".into(), problem_ref.clone());
        responses.insert("default".into(), problem_ref);
        let mut op = json!({
            "operationId": r.operation,
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(req) = r.request {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}});
        }
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    let nullable_int = json!({"type": ["integer", "null"], "minimum": 1});
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Relay management API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an admin API token (rat_…)"}},
            "schemas": {
                "Problem": {"type": "object", "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}},
                "Limits": {"type": "object", "additionalProperties": false, "properties": {"max_body_bytes": nullable_int, "max_concurrent_streams": nullable_int, "request_timeout_ms": nullable_int}},
                "Tenant": {"type": "object", "required": ["name", "display_name", "description", "enabled", "audit_query_strings", "limits", "created_at"], "properties": {
                    "name": {"type": "string"}, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "enabled": {"type": "boolean"}, "audit_query_strings": {"type": "boolean"},
                    "limits": {"$ref": "#/components/schemas/Limits"}, "created_at": time}},
                "TenantList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Tenant"}}, "total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}},
                "NewTenant": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                    "name": {"type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$"}, "display_name": {"type": "string"}, "description": {"type": "string"}}},
                "TenantPatch": {"type": "object", "additionalProperties": false, "properties": {
                    "enabled": {"type": "boolean"}, "display_name": {"type": "string"}, "description": {"type": "string"},
                    "audit_query_strings": {"type": "boolean"}, "limits": {"$ref": "#/components/schemas/Limits"}}},
                "Credential": {"type": "object", "properties": {"id": {"type": "string"}, "label": {"type": "string"}, "created_at": time, "last_used_at": nullable_time, "revoked_at": nullable_time}},
                "CredentialList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Credential"}}}},
                "NewCredential": {"type": "object", "additionalProperties": false, "properties": {"label": {"type": "string"}}},
                "CreatedCredential": {"type": "object", "required": ["id", "secret"], "properties": {"id": {"type": "string"}, "secret": {"type": "string"}, "label": {"type": "string"}, "created_at": time}},
                "Hostname": {"type": "object", "properties": {"hostname": {"type": "string"}, "target": {"type": "string"}}},
                "HostnameList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Hostname"}}}},
                "NewHostname": {"type": "object", "additionalProperties": false, "required": ["hostname", "target"], "properties": {"hostname": {"type": "string"}, "target": {"type": "string"}}},
                "Connection": {"type": "object", "properties": {
                    "id": {"type": "string"}, "transport": {"type": "string", "enum": ["quic", "tcp"]}, "remote_addr": {"type": "string"},
                    "connector_id": {"type": "string"}, "connector_version": {"type": "string"}, "connected_at": time,
                    "relay_node": {"type": "string"}, "in_flight_streams": {"type": ["integer", "null"], "description": "known when the answering process is the relay node holding the session"}}},
                "ConnectionList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Connection"}}}},
                "Request": {"type": "object", "properties": {
                    "request_id": {"type": "string"}, "tenant": {"type": "string"}, "target": {"type": "string"}, "method": {"type": "string"},
                    "path": {"type": "string"}, "status": {"type": "integer"}, "outcome": {"type": "string", "enum": ["ok", "visitor-aborted", "backend-error", "timeout", "refused"]},
                    "bytes_in": {"type": "integer"}, "bytes_out": {"type": "integer"}, "duration_ms": {"type": "integer"},
                    "visitor": {"type": "string"}, "session_id": {"type": "string"}, "relay_node": {"type": "string"}, "created_at": time}},
                "RequestList": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Request"}}, "offset": {"type": "integer"}, "limit": {"type": "integer"}}},
            }
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
