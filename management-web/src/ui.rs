//! The admin pages (askama templates, server-rendered; JavaScript only enhances).
//!
//! Every page needs a login session; every POST also needs the session's CSRF token and a
//! same-origin request (see `auth`). After a change the browser is redirected (303) to a page
//! that says what happened, chosen from a fixed list: nothing a visitor typed is reflected.

use std::collections::HashMap;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Form, Router};
use relay_store::{now_ms, AuditRecord, TenantSettings};
use serde::Deserialize;

use crate::actions;
use crate::actions::audit::RequestQuery;
use crate::actions::tenants::{LimitsChange, NewTenant, TenantChange};
use crate::auth::{self, Admin, PeerIp, Served};
use crate::error::{Error, PageError};
use crate::view;
use crate::AppState;

/// Every page route: (method, path). The router is built from this list, and the tests walk it
/// to prove that each one refuses a request without a session.
pub static ROUTES: &[(&str, &str)] = &[
    ("get", "/login"),
    ("post", "/login"),
    ("post", "/logout"),
    ("get", "/"),
    ("get", "/tenants"),
    ("post", "/tenants"),
    ("get", "/tenants/{name}"),
    ("get", "/tenants/{name}/sessions"),
    ("post", "/tenants/{name}/settings"),
    ("post", "/tenants/{name}/state"),
    ("get", "/tenants/{name}/delete"),
    ("post", "/tenants/{name}/delete"),
    ("post", "/tenants/{name}/credentials"),
    ("post", "/tenants/{name}/credentials/{id}/revoke"),
    ("post", "/tenants/{name}/hostnames"),
    ("post", "/tenants/{name}/hostnames/{hostname}/remove"),
    ("get", "/audit"),
    ("get", "/audit.csv"),
    ("get", "/actions"),
    ("get", "/tokens"),
    ("post", "/tokens"),
    ("post", "/tokens/{id}/revoke"),
    ("get", "/static/app.css"),
    ("get", "/static/app.js"),
];

fn handler(method: &str, path: &str) -> MethodRouter<AppState> {
    match (method, path) {
        ("get", "/login") => get(login_page),
        ("post", "/login") => post(login),
        ("post", "/logout") => post(logout),
        ("get", "/") => get(dashboard),
        ("get", "/tenants") => get(tenants),
        ("post", "/tenants") => post(create_tenant),
        ("get", "/tenants/{name}") => get(tenant),
        ("get", "/tenants/{name}/sessions") => get(tenant_sessions),
        ("post", "/tenants/{name}/settings") => post(tenant_settings),
        ("post", "/tenants/{name}/state") => post(tenant_state),
        ("get", "/tenants/{name}/delete") => get(delete_page),
        ("post", "/tenants/{name}/delete") => post(delete_tenant),
        ("post", "/tenants/{name}/credentials") => post(create_credential),
        ("post", "/tenants/{name}/credentials/{id}/revoke") => post(revoke_credential),
        ("post", "/tenants/{name}/hostnames") => post(add_hostname),
        ("post", "/tenants/{name}/hostnames/{hostname}/remove") => post(remove_hostname),
        ("get", "/audit") => get(audit),
        ("get", "/audit.csv") => get(audit_csv),
        ("get", "/actions") => get(actions),
        ("get", "/tokens") => get(tokens),
        ("post", "/tokens") => post(create_token),
        ("post", "/tokens/{id}/revoke") => post(revoke_token),
        ("get", "/static/app.css") => get(css),
        ("get", "/static/app.js") => get(js),
        other => unreachable!("page route table names an unknown route {other:?}"),
    }
}

pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for (method, path) in ROUTES {
        router = router.route(path, handler(method, path));
    }
    router
}

/// What every page's frame shows.
struct Chrome {
    user: String,
    csrf: String,
    nav: &'static str,
    notice: String,
    error: String,
}

impl Chrome {
    fn new(admin: &Admin, nav: &'static str) -> Chrome {
        Chrome {
            user: admin.session.user.username.clone(),
            csrf: admin.session.csrf.clone(),
            nav,
            notice: String::new(),
            error: String::new(),
        }
    }
}

type PageResult = Result<Response, PageError>;

fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => Error::Internal(format!("template failed: {e}")).page(),
    }
}

/// A form page's status and message: 200 and none, or what went wrong with the form's input.
fn failure(failed: Option<&Error>) -> (StatusCode, String) {
    match failed {
        Some(e) => (e.outcome().status, e.detail()),
        None => (StatusCode::OK, String::new()),
    }
}

/// The checks of every state-changing form.
fn guard(headers: &HeaderMap, admin: &Admin, csrf: &str) -> Result<(), Error> {
    auth::same_origin(headers, admin.origin.as_deref())?;
    if !admin.csrf_ok(csrf) {
        return Err(Error::Forbidden(
            "CSRF check failed: reload the page and try again",
        ));
    }
    Ok(())
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("../static/app.css"))
}

async fn js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Login

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: String,
    username: String,
}

async fn login_page() -> Response {
    render(
        StatusCode::OK,
        &LoginPage {
            error: String::new(),
            username: String::new(),
        },
    )
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    PeerIp(ip): PeerIp,
    Served(served): Served,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    auth::same_origin(&headers, served.as_deref())?;
    let username: String = form.username.trim().chars().take(200).collect();
    let page = |status, error: &str| {
        render(
            status,
            &LoginPage {
                error: error.to_string(),
                username: username.clone(),
            },
        )
    };
    let too_many = |wait: Duration, error: &str| {
        let mut res = page(StatusCode::TOO_MANY_REQUESTS, error);
        // Rounded up: a client that waits exactly this long finds the slot free.
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    };
    if form.password.len() > 1024 {
        return Ok(page(StatusCode::BAD_REQUEST, "That password is too long."));
    }
    // Counted before the check, in the same lock as the limit: concurrent attempts cannot all
    // pass a limit that none of them has reached yet.
    let attempt = match state.limiter().reserve(ip, &username) {
        Ok(attempt) => attempt,
        Err(wait) => {
            return Ok(too_many(
                wait,
                "Too many failed logins. Wait a while and try again.",
            ))
        }
    };
    let user = match state
        .store()
        .verify_admin_password(&username, &form.password)
        .await
    {
        Ok(user) => user,
        Err(relay_store::Error::HashingBusy) => {
            state.limiter().release(attempt);
            return Ok(too_many(
                HASHING_BUSY_RETRY,
                "The server is busy checking other logins. Try again in a moment.",
            ));
        }
        Err(e) => {
            state.limiter().release(attempt);
            return Err(e.into());
        }
    };
    let Some(user) = user else {
        state.limiter().failed(attempt);
        tracing::info!(%ip, "failed admin login");
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "Wrong user name or password.",
        ));
    };
    state.limiter().succeeded(attempt);
    // A new session id at every login; a session the browser still had ends here.
    if let Some(old) = auth::session_cookie(&headers) {
        let _ = state.store().delete_web_session(&old).await;
    }
    let ttl = i64::try_from(auth::SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
    let new = state.store().create_web_session(&user, ttl).await?;
    tracing::info!(user = %user.username, %ip, "admin logged in");
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&new.cookie)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// `Retry-After` when every password-hashing slot stayed busy (the store waited 2 s already).
const HASHING_BUSY_RETRY: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    if let Some(cookie) = auth::session_cookie(&headers) {
        state.store().delete_web_session(&cookie).await?;
    }
    let mut res = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// Dashboard

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    tenants: u64,
    tenants_enabled: u64,
    sessions: u64,
    requests_hour: i64,
    error_rate: String,
    requests_chart: String,
    errors_chart: String,
}

async fn dashboard(State(state): State<AppState>, admin: Admin) -> PageResult {
    let store = state.store();
    let (tenants, tenants_enabled) = store.tenant_counts().await?;
    let sessions = store.live_session_count().await?;
    const MINUTES: i64 = 60;
    let this_minute = now_ms() / 60_000 * 60_000;
    let start = this_minute - (MINUTES - 1) * 60_000;
    let stats = store.audit_per_minute(start).await?;
    let mut requests = vec![0.0; MINUTES as usize];
    let mut errors = vec![0.0; MINUTES as usize];
    let (mut total_requests, mut total_errors) = (0, 0);
    for s in &stats {
        let i = (s.minute - start) / 60_000;
        if let Ok(i) = usize::try_from(i) {
            if i < requests.len() {
                requests[i] = s.requests as f64;
                errors[i] = if s.requests > 0 {
                    100.0 * s.errors as f64 / s.requests as f64
                } else {
                    0.0
                };
                total_requests += s.requests;
                total_errors += s.errors;
            }
        }
    }
    let error_rate = if total_requests > 0 {
        format!(
            "{:.1}%",
            100.0 * total_errors as f64 / total_requests as f64
        )
    } else {
        "–".into()
    };
    Ok(render(
        StatusCode::OK,
        &DashboardPage {
            chrome: Chrome::new(&admin, "dashboard"),
            tenants,
            tenants_enabled,
            sessions,
            requests_hour: total_requests,
            error_rate,
            requests_chart: view::bar_chart(&requests, false, "", "Requests per minute"),
            errors_chart: view::bar_chart(&errors, true, "err", "Error rate per minute"),
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Tenants

struct TenantRow {
    name: String,
    display_name: String,
    enabled: bool,
    created: String,
}

#[derive(Template)]
#[template(path = "tenants.html")]
struct TenantsPage {
    chrome: Chrome,
    q: String,
    rows: Vec<TenantRow>,
    total: u64,
    page: u64,
    pages: u64,
    prev: String,
    next: String,
}

#[derive(Deserialize, Default)]
struct TenantsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    done: String,
}

const PER_PAGE: u32 = 25;

/// A query-string value, percent-encoded.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn tenants_page(
    state: &AppState,
    admin: &Admin,
    q: TenantsQuery,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let page = q.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(u64::from(PER_PAGE));
    let (tenants, total) = state.store().tenants_page(&q.q, offset, PER_PAGE).await?;
    let pages = total.div_ceil(u64::from(PER_PAGE)).max(1);
    let link = |p: u64| format!("/tenants?q={}&page={p}", enc(&q.q));
    let mut chrome = Chrome::new(admin, "tenants");
    chrome.notice = notice(&q.done).to_string();
    chrome.error = error;
    Ok(render(
        status,
        &TenantsPage {
            chrome,
            rows: tenants
                .iter()
                .map(|t| TenantRow {
                    name: t.name.clone(),
                    display_name: t.display_name.clone(),
                    enabled: t.enabled,
                    created: view::when(t.created_at),
                })
                .collect(),
            total,
            page,
            pages,
            prev: if page > 1 {
                link(page - 1)
            } else {
                String::new()
            },
            next: if page < pages {
                link(page + 1)
            } else {
                String::new()
            },
            q: q.q,
        },
    ))
}

async fn tenants(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<TenantsQuery>,
) -> PageResult {
    tenants_page(&state, &admin, q, None).await
}

#[derive(Deserialize)]
struct NewTenantForm {
    csrf: String,
    name: String,
}

async fn create_tenant(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<NewTenantForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let new = NewTenant {
        name: form.name.trim().to_string(),
        ..Default::default()
    };
    match actions::tenants::create(&state, &admin.actor(), new).await {
        Ok(t) => Ok(Redirect::to(&format!("/tenants/{}?done=created", t.name)).into_response()),
        Err(e) if e.is_input() => {
            tenants_page(&state, &admin, TenantsQuery::default(), Some(&e)).await
        }
        Err(e) => Err(e.into()),
    }
}

struct TenantView {
    name: String,
    display_name: String,
    description: String,
    enabled: bool,
    audit_query_strings: bool,
    created: String,
    max_body_bytes: String,
    max_concurrent_streams: String,
    request_timeout_ms: String,
}

struct CredRow {
    id: String,
    label: String,
    created: String,
    last_used: String,
    revoked: String,
}

struct HostRow {
    hostname: String,
    target: String,
}

pub(crate) struct SessRow {
    id: String,
    transport: String,
    remote: String,
    version: String,
    since: String,
    node: String,
    in_flight: String,
}

struct ReqRow {
    id: String,
    when: String,
    tenant: String,
    method: String,
    path: String,
    status: i64,
    class: i64,
    outcome: String,
    duration: String,
    bytes_in: String,
    bytes_out: String,
    visitor: String,
}

fn req_row(r: &AuditRecord) -> ReqRow {
    ReqRow {
        id: r.request_id.clone(),
        when: view::when(r.created_at),
        tenant: r.tenant.clone(),
        method: r.method.clone(),
        path: r.path.clone(),
        status: r.status,
        class: (r.status / 100).clamp(1, 5),
        outcome: r.outcome.clone(),
        duration: view::millis(r.duration_ms),
        bytes_in: view::bytes(r.bytes_in),
        bytes_out: view::bytes(r.bytes_out),
        visitor: r.visitor.clone(),
    }
}

#[derive(Template)]
#[template(path = "tenant.html")]
struct TenantPage {
    chrome: Chrome,
    t: TenantView,
    credentials: Vec<CredRow>,
    hostnames: Vec<HostRow>,
    sessions: Vec<SessRow>,
    requests: Vec<ReqRow>,
}

#[derive(Template)]
#[template(path = "session_rows.html")]
struct SessionRows {
    sessions: Vec<SessRow>,
}

async fn session_rows(state: &AppState, tenant: &str) -> Result<Vec<SessRow>, Error> {
    let list = actions::sessions::live(state, tenant).await?;
    Ok(list
        .into_iter()
        .map(|(s, n)| SessRow {
            id: s.id,
            transport: s.transport,
            remote: s.remote_addr,
            version: s.connector_version,
            since: view::when(s.connected_at),
            node: s.relay_node,
            in_flight: n.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
        })
        .collect())
}

/// What a `done=` code says.
fn notice(done: &str) -> &'static str {
    match done {
        "created" => "Tenant created. Create a credential for its connector below.",
        "settings" => "Settings saved.",
        "enabled" => "Tenant enabled.",
        "disabled" => "Tenant disabled: its URLs answer 404 and its connectors are disconnected.",
        "revoked" => "Credential revoked: connectors using it are disconnected.",
        "hostname-added" => "Hostname added.",
        "hostname-removed" => "Hostname removed.",
        "deleted" => "Tenant deleted.",
        "token-revoked" => "API token revoked.",
        _ => "",
    }
}

async fn tenant_page(
    state: &AppState,
    admin: &Admin,
    name: &str,
    done: &str,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let store = state.store();
    let t = actions::tenants::find(state, name).await?;
    let credentials = store.credentials(&t.name).await?;
    let hostnames = store.hostnames(&t.name).await?;
    let sessions = session_rows(state, &t.name).await?;
    let requests = store
        .audit_query(&relay_store::AuditFilter {
            tenant: Some(t.name.clone()),
            limit: 20,
            ..Default::default()
        })
        .await?;
    let mut chrome = Chrome::new(admin, "tenants");
    chrome.notice = notice(done).to_string();
    chrome.error = error;
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    Ok(render(
        status,
        &TenantPage {
            chrome,
            t: TenantView {
                display_name: if t.display_name.is_empty() {
                    t.name.clone()
                } else {
                    t.display_name.clone()
                },
                name: t.name.clone(),
                description: t.description.clone(),
                enabled: t.enabled,
                audit_query_strings: t.audit_query_strings,
                created: view::when(t.created_at),
                max_body_bytes: opt(t.limits.max_body_bytes),
                max_concurrent_streams: opt(t.limits.max_concurrent_streams.map(u64::from)),
                request_timeout_ms: opt(t.limits.request_timeout_ms),
            },
            credentials: credentials
                .iter()
                .map(|c| CredRow {
                    id: c.id.0.clone(),
                    label: c.label.clone(),
                    created: view::when(c.created_at),
                    last_used: view::when_opt(c.last_used_at),
                    revoked: c.revoked_at.map(view::when).unwrap_or_default(),
                })
                .collect(),
            hostnames: hostnames
                .iter()
                .map(|h| HostRow {
                    hostname: h.hostname.clone(),
                    target: h.target.clone(),
                })
                .collect(),
            sessions,
            requests: requests.iter().map(req_row).collect(),
        },
    ))
}

#[derive(Deserialize, Default)]
struct DoneQuery {
    #[serde(default)]
    done: String,
}

async fn tenant(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    tenant_page(&state, &admin, &name, &q.done, None).await
}

async fn tenant_sessions(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> PageResult {
    let t = actions::tenants::find(&state, &name).await?;
    let sessions = session_rows(&state, &t.name).await?;
    Ok(render(StatusCode::OK, &SessionRows { sessions }))
}

#[derive(Deserialize)]
struct SettingsForm {
    csrf: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    max_body_bytes: String,
    #[serde(default)]
    max_concurrent_streams: String,
    #[serde(default)]
    request_timeout_ms: String,
    #[serde(default)]
    audit_query_strings: Option<String>,
}

/// An optional positive number from a form field (empty = the relay's default); the action
/// checks the range.
fn limit_field(label: &str, v: &str) -> Result<Option<u64>, Error> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(Error::Validation(format!(
            "{label} must be a positive whole number, or empty for the relay's default"
        ))),
    }
}

async fn tenant_settings(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<SettingsForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let limits = (|| -> Result<[Option<u64>; 3], Error> {
        Ok([
            limit_field("Max request body", &form.max_body_bytes)?,
            limit_field("Max concurrent requests", &form.max_concurrent_streams)?,
            limit_field("Response timeout", &form.request_timeout_ms)?,
        ])
    })();
    let change = limits.map(|limits| TenantChange {
        enabled: None,
        settings: TenantSettings {
            display_name: Some(form.display_name.trim().to_string()),
            description: Some(form.description.trim().to_string()),
            audit_query_strings: Some(form.audit_query_strings.is_some()),
        },
        limits: Some(LimitsChange::all(limits)),
    });
    let done = match change {
        Ok(change) => actions::tenants::update(&state, &admin.actor(), &name, change).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(t) => Ok(Redirect::to(&format!("/tenants/{}?done=settings", t.name)).into_response()),
        Err(e) if e.is_input() => tenant_page(&state, &admin, &name, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct StateForm {
    csrf: String,
    enabled: bool,
}

async fn tenant_state(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<StateForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let change = TenantChange {
        enabled: Some(form.enabled),
        ..Default::default()
    };
    let t = actions::tenants::update(&state, &admin.actor(), &name, change).await?;
    let done = if form.enabled { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/tenants/{}?done={done}", t.name)).into_response())
}

#[derive(Template)]
#[template(path = "delete.html")]
struct DeletePage {
    chrome: Chrome,
    name: String,
}

async fn delete_page(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> PageResult {
    let t = actions::tenants::find(&state, &name).await?;
    Ok(render(
        StatusCode::OK,
        &DeletePage {
            chrome: Chrome::new(&admin, "tenants"),
            name: t.name,
        },
    ))
}

#[derive(Deserialize)]
struct DeleteForm {
    csrf: String,
    confirm: String,
}

async fn delete_tenant(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let t = actions::tenants::find(&state, &name).await?;
    if !form.confirm.trim().eq_ignore_ascii_case(&t.name) {
        let e = Error::Validation("The name did not match; nothing was deleted.".into());
        let (status, error) = failure(Some(&e));
        let mut chrome = Chrome::new(&admin, "tenants");
        chrome.error = error;
        return Ok(render(
            status,
            &DeletePage {
                chrome,
                name: t.name,
            },
        ));
    }
    actions::tenants::delete(&state, &admin.actor(), &t.name).await?;
    Ok(Redirect::to("/tenants?done=deleted").into_response())
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    chrome: Chrome,
    title: String,
    back: String,
    secret: String,
    hint: String,
    example: String,
}

#[derive(Deserialize)]
struct CredentialForm {
    csrf: String,
    #[serde(default)]
    label: String,
}

async fn create_credential(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CredentialForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let created =
        actions::credentials::create(&state, &admin.actor(), &name, form.label.trim()).await?;
    let (id, tenant) = (&created.credential.id.0, &created.credential.tenant);
    Ok(render(
        StatusCode::OK,
        &SecretPage {
            chrome: Chrome::new(&admin, "tenants"),
            title: format!("Credential {id} for {tenant}"),
            back: format!("/tenants/{tenant}"),
            secret: created.secret.clone(),
            hint: "Save it in a file readable only by the connector's user, then run:".into(),
            example: format!(
                "connector run --server https://RELAY-HOST --tenant {tenant} --secret-file /etc/relay-connector/secret --target app=http://127.0.0.1:8080",
            ),
        },
    ))
}

async fn revoke_credential(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::credentials::revoke(&state, &admin.actor(), &name, &id).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=revoked")).into_response())
}

#[derive(Deserialize)]
struct HostnameForm {
    csrf: String,
    hostname: String,
    target: String,
}

async fn add_hostname(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<HostnameForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let (host, target) = (form.hostname.trim(), form.target.trim());
    match actions::hostnames::add(&state, &admin.actor(), &name, host, target).await {
        Ok(_) => {
            let tenant = name.to_ascii_lowercase();
            Ok(Redirect::to(&format!("/tenants/{tenant}?done=hostname-added")).into_response())
        }
        Err(e) if e.is_input() => tenant_page(&state, &admin, &name, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

async fn remove_hostname(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, hostname)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::hostnames::remove(&state, &admin.actor(), &name, &hostname).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=hostname-removed")).into_response())
}

// ---------------------------------------------------------------------------------------------
// Audit log

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    f_tenant: String,
    f_status: String,
    f_since: String,
    f_until: String,
    status_options: Vec<(String, String)>,
    requests: Vec<ReqRow>,
    page: u64,
    prev: String,
    next: String,
    csv: String,
}

const AUDIT_PER_PAGE: u32 = 50;

/// `datetime-local` values are UTC here; the API's parser wants a zone.
fn local_to_utc(v: &str) -> String {
    let v = v.trim();
    if v.is_empty() || v.ends_with('Z') || v.parse::<i64>().is_ok() {
        v.to_string()
    } else if v.len() == 16 {
        format!("{v}:00Z")
    } else {
        format!("{v}Z")
    }
}

/// The audit page's and the CSV export's filters (the form's times are UTC).
fn audit_filters(q: &mut HashMap<String, String>) -> RequestQuery {
    RequestQuery {
        tenant: q.remove("tenant").unwrap_or_default(),
        status: q.remove("status").unwrap_or_default(),
        since: local_to_utc(&q.remove("since").unwrap_or_default()),
        until: local_to_utc(&q.remove("until").unwrap_or_default()),
        ..Default::default()
    }
}

fn audit_query_string(q: &RequestQuery) -> String {
    format!(
        "tenant={}&status={}&since={}&until={}",
        enc(&q.tenant),
        enc(&q.status),
        enc(&q.since),
        enc(&q.until)
    )
}

async fn audit(
    State(state): State<AppState>,
    admin: Admin,
    Query(mut q): Query<HashMap<String, String>>,
) -> PageResult {
    let mut rq = audit_filters(&mut q);
    let page = q
        .remove("page")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    rq.limit = Some(AUDIT_PER_PAGE + 1);
    rq.offset = (page - 1).saturating_mul(u64::from(AUDIT_PER_PAGE));
    let mut chrome = Chrome::new(&admin, "audit");
    let mut records = match rq.filter(AUDIT_PER_PAGE) {
        Ok(filter) => state.store().audit_query(&filter).await?,
        Err(e) => {
            chrome.error = e.detail();
            Vec::new()
        }
    };
    let more = records.len() > AUDIT_PER_PAGE as usize;
    records.truncate(AUDIT_PER_PAGE as usize);
    let qs = audit_query_string(&rq);
    let status_options = [
        ("", "any"),
        ("2xx", "2xx success"),
        ("3xx", "3xx redirect"),
        ("4xx", "4xx client error"),
        ("5xx", "5xx server error"),
    ]
    .iter()
    .map(|(v, l)| (v.to_string(), l.to_string()))
    .collect();
    Ok(render(
        StatusCode::OK,
        &AuditPage {
            chrome,
            f_tenant: rq.tenant.clone(),
            f_status: rq.status.clone(),
            f_since: rq.since.trim_end_matches('Z').to_string(),
            f_until: rq.until.trim_end_matches('Z').to_string(),
            status_options,
            requests: records.iter().map(req_row).collect(),
            page,
            prev: if page > 1 {
                format!("/audit?{qs}&page={}", page - 1)
            } else {
                String::new()
            },
            next: if more {
                format!("/audit?{qs}&page={}", page + 1)
            } else {
                String::new()
            },
            csv: format!("/audit.csv?{qs}"),
        },
    ))
}

/// One CSV field: quoted when needed, and a leading `= + - @` (or tab/CR) neutralised so that
/// a spreadsheet does not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Most rows one export holds.
const CSV_MAX_ROWS: u64 = 100_000;

async fn audit_csv(
    State(state): State<AppState>,
    _admin: Admin,
    Query(mut q): Query<HashMap<String, String>>,
) -> PageResult {
    let mut rq = audit_filters(&mut q);
    rq.limit = Some(1000);
    let mut filter = rq.filter(1000)?;
    // Pinned to now, so that pages do not shift while new records arrive.
    filter.until = Some(filter.until.unwrap_or(now_ms() + 1));
    let store = state.store().clone();
    // Streamed page by page: an export of a busy log does not sit in memory.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        let header = "time,request_id,tenant,target,method,path,status,outcome,duration_ms,bytes_in,bytes_out,visitor,session_id,relay_node\n";
        if tx.send(Ok(header.to_string())).await.is_err() {
            return;
        }
        while filter.offset < CSV_MAX_ROWS {
            let rows = match store.audit_query(&filter).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "CSV export failed");
                    let _ = tx.send(Err(std::io::Error::other("store failed"))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for r in &rows {
                let fields = [
                    view::rfc3339(r.created_at),
                    r.request_id.clone(),
                    r.tenant.clone(),
                    r.target.clone(),
                    r.method.clone(),
                    r.path.clone(),
                    r.status.to_string(),
                    r.outcome.clone(),
                    r.duration_ms.to_string(),
                    r.bytes_in.to_string(),
                    r.bytes_out.to_string(),
                    r.visitor.clone(),
                    r.session_id.clone(),
                    r.relay_node.clone(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                chunk.push_str(&line.join(","));
                chunk.push('\n');
            }
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            if rows.len() < filter.limit as usize {
                return;
            }
            filter.offset += rows.len() as u64;
        }
    });
    let stream = futures_stream(rx);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"relay-audit.csv\"",
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// A receiver as a stream of body chunks.
fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ---------------------------------------------------------------------------------------------
// Admin actions and API tokens

#[derive(Template)]
#[template(path = "actions.html")]
struct ActionsPage {
    chrome: Chrome,
    rows: Vec<(String, String, String, String)>,
}

async fn actions(State(state): State<AppState>, admin: Admin) -> PageResult {
    let list = state.store().admin_actions(500).await?;
    Ok(render(
        StatusCode::OK,
        &ActionsPage {
            chrome: Chrome::new(&admin, "actions"),
            rows: list
                .into_iter()
                .map(|a| (view::when(a.created_at), a.actor, a.action, a.object))
                .collect(),
        },
    ))
}

struct TokenRow {
    id: String,
    name: String,
    created: String,
    last_used: String,
    revoked: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    rows: Vec<TokenRow>,
}

async fn tokens_page(
    state: &AppState,
    admin: &Admin,
    done: &str,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let list = state.store().api_tokens().await?;
    let mut chrome = Chrome::new(admin, "tokens");
    chrome.notice = notice(done).to_string();
    chrome.error = error;
    Ok(render(
        status,
        &TokensPage {
            chrome,
            rows: list
                .into_iter()
                .map(|k| TokenRow {
                    id: k.id,
                    name: k.name,
                    created: view::when(k.created_at),
                    last_used: view::when_opt(k.last_used_at),
                    revoked: k.revoked_at.map(view::when).unwrap_or_default(),
                })
                .collect(),
        },
    ))
}

async fn tokens(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    tokens_page(&state, &admin, &q.done, None).await
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
}

async fn create_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    match actions::tokens::create(&state, &admin.actor(), form.name.trim()).await {
        Ok(new) => Ok(render(
            StatusCode::OK,
            &SecretPage {
                chrome: Chrome::new(&admin, "tokens"),
                title: format!("API token {}", new.token.name),
                back: "/tokens".into(),
                secret: new.value,
                hint: "Use it as a bearer token:".into(),
                example:
                    "curl -H \"Authorization: Bearer $TOKEN\" http://ADMIN-HOST/api/v1/tenants"
                        .into(),
            },
        )),
        Err(e) if e.is_input() => tokens_page(&state, &admin, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

async fn revoke_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::tokens::revoke(&state, &admin.actor(), &id).await?;
    Ok(Redirect::to("/tokens?done=token-revoked").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_neutralised() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-1+2"), "'-1+2");
        assert_eq!(csv_field("@x,y"), "\"'@x,y\"");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(enc("x-y_z.~"), "x-y_z.~");
    }

    #[test]
    fn local_times_are_utc() {
        assert_eq!(local_to_utc("2026-11-23T10:00"), "2026-11-23T10:00:00Z");
        assert_eq!(local_to_utc("2026-11-23T10:00:05"), "2026-11-23T10:00:05Z");
        assert_eq!(local_to_utc("1700000000000"), "1700000000000");
        assert_eq!(local_to_utc(""), "");
    }
}
