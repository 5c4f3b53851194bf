//! Tenants: the list (search, paging, create), a tenant's page (sessions, credentials,
//! hostnames, its queue in one line, settings, enable/disable) and deleting one.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use relay_store::TenantSettings;
use serde::Deserialize;

use super::{
    enc, failure, guard, notice, render, req_row, Chrome, DoneQuery, Form, PageResult, Query,
    ReqRow,
};
use crate::actions;
use crate::actions::tenants::{LimitsChange, NewTenant, TenantChange};
use crate::auth::Admin;
use crate::error::Error;
use crate::view;
use crate::AppState;

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
pub(super) struct TenantsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    done: String,
}

const PER_PAGE: u32 = 25;

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

pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<TenantsQuery>,
) -> PageResult {
    tenants_page(&state, &admin, q, None).await
}

#[derive(Deserialize)]
pub(super) struct NewTenantForm {
    csrf: String,
    name: String,
}

pub(super) async fn create(
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
    /// Whether the relays obtain its certificate from ACME.
    acme: bool,
    /// Whether it has a stored certificate (uploaded or ACME).
    has_certificate: bool,
    /// Its certificate in words: where from and when it expires.
    certificate: String,
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

#[derive(Template)]
#[template(path = "tenant.html")]
struct TenantPage {
    chrome: Chrome,
    t: TenantView,
    credentials: Vec<CredRow>,
    hostnames: Vec<HostRow>,
    sessions: Vec<SessRow>,
    requests: Vec<ReqRow>,
    /// Its queue in one line: the non-empty states with their counts.
    queue: String,
    /// Pairing for local-first apps: `off`, `open` or `token`.
    pairing_mode: String,
    pairing_tokens: Vec<PairRow>,
}

struct PairRow {
    id: String,
    label: String,
    peer: String,
    created: String,
    revoked: String,
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

pub(super) async fn tenant_page(
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
    let certificates = store.certificates(&t.name).await?;
    let sessions = session_rows(state, &t.name).await?;
    let requests = store
        .audit_query(&relay_store::AuditFilter {
            tenant: Some(t.name.clone()),
            limit: 20,
            ..Default::default()
        })
        .await?;
    let counts = store.queue_counts(Some(&t.id.0)).await?;
    let (_, pairing_mode, pairing_tokens) = actions::pairing::overview(state, &t.name).await?;
    let queue: Vec<String> = counts
        .by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
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
                .map(|h| {
                    let cert = certificates.iter().find(|c| c.hostname == h.hostname);
                    HostRow {
                        hostname: h.hostname.clone(),
                        target: h.target.clone(),
                        acme: h.acme,
                        has_certificate: cert.is_some(),
                        certificate: certificate_words(cert, h.acme),
                    }
                })
                .collect(),
            sessions,
            requests: requests.iter().map(req_row).collect(),
            queue: if queue.is_empty() {
                "no messages".into()
            } else {
                queue.join(", ")
            },
            pairing_mode: pairing_mode.as_str().to_string(),
            pairing_tokens: pairing_tokens
                .iter()
                .map(|p| PairRow {
                    id: p.id.clone(),
                    label: p.label.clone(),
                    peer: p.peer_id.clone().unwrap_or_default(),
                    created: view::when(p.created_at),
                    revoked: p.revoked_at.map(view::when).unwrap_or_default(),
                })
                .collect(),
        },
    ))
}

pub(super) async fn show(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    tenant_page(&state, &admin, &name, &q.done, None).await
}

pub(super) async fn sessions(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> PageResult {
    let t = actions::tenants::find(&state, &name).await?;
    let sessions = session_rows(&state, &t.name).await?;
    Ok(render(StatusCode::OK, &SessionRows { sessions }))
}

#[derive(Deserialize)]
pub(super) struct SettingsForm {
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

pub(super) async fn settings(
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
pub(super) struct StateForm {
    csrf: String,
    enabled: bool,
}

pub(super) async fn state(
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

pub(super) async fn delete_page(
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
pub(super) struct DeleteForm {
    csrf: String,
    confirm: String,
}

pub(super) async fn delete(
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

/// "ACME, expires 2027-03-01 12:00 UTC", "uploaded, expires …", "ACME, pending" or "the relay's".
fn certificate_words(cert: Option<&relay_store::CertificateInfo>, acme: bool) -> String {
    match (cert, acme) {
        (Some(c), _) => {
            let source = match c.source {
                relay_store::CertificateSource::Acme => "ACME",
                relay_store::CertificateSource::Upload => "uploaded",
            };
            let expired = if c.not_after <= relay_store::now_ms() {
                " (expired)"
            } else {
                ""
            };
            format!("{source}, expires {}{expired}", view::when(c.not_after))
        }
        (None, true) => "ACME, pending".into(),
        (None, false) => "the relay's own".into(),
    }
}
