//! A tenant's Queue page (messages by state, how long the oldest has waited, the settings form,
//! the messages filtered by state) and a message's page (headers, the first KiB of its body,
//! attempts, last error, response), with Retry now and Discard (Cancel for a queued one).

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use relay_store::{BodyPreview, Discarded, QueueMessage, QueueState, PREVIEW_BYTES};
use serde::Deserialize;

use super::{failure, guard, notice, render, Chrome, Form, PageResult, Query};
use crate::actions;
use crate::actions::queue::{stored_headers, Detail, SettingsChange, StoredHeader};
use crate::auth::Admin;
use crate::error::Error;
use crate::view;
use crate::AppState;

/// How many messages the Queue page lists unless asked for more.
const PER_PAGE: u32 = 100;
/// How many characters of a message id the list shows (the full id is in its title and link).
const SHORT_ID: usize = 10;

/// A box of the counts row: a link that filters the list.
struct CountBox {
    state: &'static str,
    n: u64,
    href: String,
    current: bool,
}

struct MsgRow {
    id: String,
    short_id: String,
    state: &'static str,
    badge: &'static str,
    target: String,
    request: String,
    size: String,
    attempts: i64,
    accepted: String,
    note: String,
    retry: bool,
    discard: &'static str,
}

struct SettingsView {
    ordered: bool,
    ttl: String,
    max_messages: String,
    max_bytes: String,
    effective_ttl: String,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    chrome: Chrome,
    tenant: String,
    counts: Vec<CountBox>,
    all_href: String,
    filtered: bool,
    filter: String,
    oldest: String,
    s: SettingsView,
    rows: Vec<MsgRow>,
    limit: u32,
    max_ttl: String,
}

#[derive(Deserialize, Default)]
pub(super) struct QueueQuery {
    #[serde(default)]
    state: String,
    limit: Option<u32>,
    #[serde(default)]
    done: String,
}

async fn queue_page(
    state: &AppState,
    admin: &Admin,
    name: &str,
    q: &QueueQuery,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let filter = actions::queue::parse_state(&q.state)?;
    let limit = actions::paging(q.limit, 0, PER_PAGE)?;
    let o = actions::queue::overview(state, name).await?;
    let (t, list) = actions::queue::messages(state, &o.tenant.name, filter, limit).await?;
    let mut rows = Vec::with_capacity(list.len());
    for m in &list {
        let mut r = row(m);
        // Retry now only where it can work: the request body is still stored.
        if r.retry {
            r.retry = state
                .store()
                .message_preview(&m.id)
                .await?
                .is_some_and(|p| p.body.is_some());
        }
        rows.push(r);
    }
    let base = format!("/tenants/{}/queue", t.name);
    let mut chrome = Chrome::new(admin, "tenants");
    chrome.notice = notice(&q.done).to_string();
    chrome.error = error;
    let s = &o.settings;
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    Ok(render(
        status,
        &QueuePage {
            chrome,
            counts: QueueState::ALL
                .iter()
                .map(|st| CountBox {
                    state: st.as_str(),
                    n: o.counts.by_state.get(st).copied().unwrap_or(0),
                    href: format!("{base}?state={}", st.as_str()),
                    current: filter == Some(*st),
                })
                .collect(),
            all_href: base.clone(),
            filtered: filter.is_some(),
            filter: filter.map(|f| f.as_str()).unwrap_or_default().to_string(),
            oldest: o.oldest_age_ms.map(age).unwrap_or_else(|| "–".into()),
            s: SettingsView {
                ordered: s.ordered,
                ttl: s.ttl_ms.map(|ms| age(ms.max(0))).unwrap_or_default(),
                max_messages: opt(s.max_messages),
                max_bytes: opt(s.max_bytes),
                effective_ttl: humantime::format_duration(actions::queue::ttl_of(state, s))
                    .to_string(),
            },
            rows,
            limit,
            max_ttl: humantime::format_duration(state.queue_ttl().max).to_string(),
            tenant: t.name,
        },
    ))
}

fn row(m: &QueueMessage) -> MsgRow {
    let note = match (&m.last_error, m.response_status) {
        (Some(e), Some(s)) if m.state != QueueState::Delivered => format!("{e} (response {s})"),
        (_, Some(s)) => format!("response {s}"),
        (Some(e), None) => e.clone(),
        (None, None) => String::new(),
    };
    MsgRow {
        short_id: short_id(&m.id),
        id: m.id.clone(),
        state: m.state.as_str(),
        badge: badge(m.state),
        target: m.target.clone(),
        request: format!("{} {}", m.method, m.path),
        size: view::bytes(m.body_bytes),
        attempts: m.attempts,
        accepted: view::when(m.created_at),
        note,
        // Checked against the stored body by the caller.
        retry: matches!(m.state, QueueState::Failed | QueueState::Expired) && !m.purged,
        discard: discard_label(m.state),
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Query(q): Query<QueueQuery>,
) -> PageResult {
    queue_page(&state, &admin, &name, &q, None).await
}

#[derive(Deserialize)]
pub(super) struct SettingsForm {
    csrf: String,
    #[serde(default)]
    order: String,
    #[serde(default)]
    ttl: String,
    #[serde(default)]
    max_messages: String,
    #[serde(default)]
    max_bytes: String,
}

pub(super) async fn settings(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<SettingsForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let done = match settings_change(&form) {
        Ok(change) => actions::queue::set_settings(&state, &admin.actor(), &name, change).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(o) => Ok(Redirect::to(&format!(
            "/tenants/{}/queue?done=queue-settings",
            o.tenant.name
        ))
        .into_response()),
        Err(e) if e.is_input() => {
            queue_page(&state, &admin, &name, &QueueQuery::default(), Some(&e)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The form's fields as a change of every setting (an empty field is the relay's default).
fn settings_change(form: &SettingsForm) -> Result<SettingsChange, Error> {
    let ordered = match form.order.as_str() {
        "ordered" => true,
        "parallel" | "" => false,
        _ => {
            return Err(Error::Validation(
                "order must be parallel or ordered".into(),
            ))
        }
    };
    let ttl = match form.ttl.trim() {
        "" => None,
        t => Some(humantime::parse_duration(t).map_err(|_| {
            Error::Validation(format!(
                "time to live {t:?} is not a duration like 2h or 7days; empty for the relay's \
                 default"
            ))
        })?),
    };
    let number = |label: &str, v: &str| -> Result<Option<u64>, Error> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u64>().map(Some).map_err(|_| {
            Error::Validation(format!(
                "{label} must be a whole number, or empty for the relay's default"
            ))
        })
    };
    Ok(SettingsChange {
        ordered: Some(ordered),
        ttl: Some(ttl),
        max_messages: Some(number("Max waiting messages", &form.max_messages)?),
        max_bytes: Some(number("Max waiting bytes", &form.max_bytes)?),
    })
}

struct HeaderRow {
    name: String,
    value: String,
    base64: bool,
}

/// The start of a body as the page shows it.
struct BodyView {
    text: String,
    base64: bool,
    caption: String,
}

struct MessageView {
    id: String,
    state: &'static str,
    badge: &'static str,
    target: String,
    method: String,
    path: String,
    size: String,
    attempts: i64,
    last_error: String,
    accepted: String,
    expires: String,
    next_attempt: String,
    finished: String,
    idempotency_key: String,
    purged: bool,
}

struct ResponseView {
    status: i64,
    truncated: bool,
    headers: Vec<HeaderRow>,
    body: Option<BodyView>,
}

#[derive(Template)]
#[template(path = "queue_message.html")]
struct MessagePage {
    chrome: Chrome,
    tenant: String,
    m: MessageView,
    headers: Vec<HeaderRow>,
    body: Option<BodyView>,
    response: Option<ResponseView>,
    retry: bool,
    retry_blocked: String,
    discard: &'static str,
}

#[derive(Deserialize, Default)]
pub(super) struct DoneOnly {
    #[serde(default)]
    done: String,
}

async fn message_page(
    state: &AppState,
    admin: &Admin,
    name: &str,
    id: &str,
    done: &str,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let (t, d) = tenant_message(state, name, id).await?;
    let mut chrome = Chrome::new(admin, "tenants");
    chrome.notice = notice(done).to_string();
    chrome.error = error;
    let m = &d.message;
    let p = d.preview.as_ref();
    let retry_blocked =
        if matches!(m.state, QueueState::Failed | QueueState::Expired) && !d.retryable() {
            "Its request body is no longer stored, so it cannot be retried; the visitor can send \
             it again."
        } else {
            ""
        };
    Ok(render(
        status,
        &MessagePage {
            chrome,
            tenant: t,
            headers: p.map(|p| header_rows(&p.headers)).unwrap_or_default(),
            body: p
                .and_then(|p| p.body.as_deref())
                .map(|b| body_view(b, Some(m.body_bytes))),
            response: m.response_status.map(|status| ResponseView {
                status,
                truncated: m.response_truncated,
                headers: p
                    .and_then(|p| p.response_headers.as_deref())
                    .map(header_rows)
                    .unwrap_or_default(),
                body: p
                    .and_then(|p| p.response_body.as_deref())
                    .map(|b| body_view(b, None)),
            }),
            retry: d.retryable(),
            retry_blocked: retry_blocked.to_string(),
            discard: discard_label(m.state),
            m: MessageView {
                id: m.id.clone(),
                state: m.state.as_str(),
                badge: badge(m.state),
                target: m.target.clone(),
                method: m.method.clone(),
                path: m.path.clone(),
                size: view::bytes(m.body_bytes),
                attempts: m.attempts,
                last_error: m.last_error.clone().unwrap_or_default(),
                accepted: view::when(m.created_at),
                expires: view::when(m.expires_at),
                next_attempt: if m.state == QueueState::Queued {
                    view::when(m.next_attempt_at)
                } else {
                    String::new()
                },
                finished: view::when_opt(m.finished_at),
                idempotency_key: m.idempotency_key.clone().unwrap_or_default(),
                purged: m.purged,
            },
        },
    ))
}

/// The tenant's canonical name and the message, which must be one of its own (else 404).
async fn tenant_message(state: &AppState, name: &str, id: &str) -> Result<(String, Detail), Error> {
    let t = actions::tenants::find(state, name).await?;
    let d = actions::queue::detail(state, id).await?;
    if d.message.tenant_id != t.id.0 {
        return Err(Error::NotFound(format!(
            "tenant {} has no queue message with the id {id}",
            t.name
        )));
    }
    Ok((t.name, d))
}

pub(super) async fn message(
    State(state): State<AppState>,
    admin: Admin,
    Path((name, id)): Path<(String, String)>,
    Query(q): Query<DoneOnly>,
) -> PageResult {
    message_page(&state, &admin, &name, &id, &q.done, None).await
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: String,
    /// `list`: go back to the Queue page afterwards (else the message's page).
    #[serde(default)]
    from: String,
}

pub(super) async fn retry(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let (t, _) = tenant_message(&state, &name, &id).await?;
    match actions::queue::retry(&state, &admin.actor(), &id).await {
        Ok(_) if form.from == "list" => {
            Ok(Redirect::to(&format!("/tenants/{t}/queue?done=queue-retried")).into_response())
        }
        Ok(_) => Ok(
            Redirect::to(&format!("/tenants/{t}/queue/{id}?done=queue-retried")).into_response(),
        ),
        Err(e) if e.is_input() => message_page(&state, &admin, &t, &id, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn discard(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let (t, _) = tenant_message(&state, &name, &id).await?;
    match actions::queue::discard(&state, &admin.actor(), &id).await {
        Ok((Discarded::Cancelled, _)) if form.from != "list" => Ok(Redirect::to(&format!(
            "/tenants/{t}/queue/{id}?done=queue-cancelled"
        ))
        .into_response()),
        Ok((Discarded::Cancelled, _)) => {
            Ok(Redirect::to(&format!("/tenants/{t}/queue?done=queue-cancelled")).into_response())
        }
        Ok(_) => {
            Ok(Redirect::to(&format!("/tenants/{t}/queue?done=queue-discarded")).into_response())
        }
        Err(e) if e.is_input() => message_page(&state, &admin, &t, &id, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

fn header_rows(encoded: &str) -> Vec<HeaderRow> {
    stored_headers(encoded)
        .into_iter()
        .map(
            |StoredHeader {
                 name,
                 value,
                 base64,
             }| HeaderRow {
                name,
                value,
                base64,
            },
        )
        .collect()
}

/// The start of a body (`total` bytes long, when known).
fn body_view(start: &[u8], total: Option<i64>) -> BodyView {
    let whole = match total {
        Some(n) => n == start.len() as i64,
        None => start.len() < PREVIEW_BYTES,
    };
    let caption = if whole {
        format!("the whole body, {}", view::bytes(start.len() as i64))
    } else {
        match total {
            Some(n) => format!(
                "the first {} of {}",
                view::bytes(start.len() as i64),
                view::bytes(n)
            ),
            None => format!("the first {}", view::bytes(start.len() as i64)),
        }
    };
    let (text, base64) = match BodyPreview::of(start) {
        BodyPreview::Text(s) => (s, false),
        BodyPreview::Base64(s) => (s, true),
    };
    BodyView {
        text,
        base64,
        caption,
    }
}

/// The badge class of a state.
fn badge(s: QueueState) -> &'static str {
    match s {
        QueueState::Delivered => "ok",
        QueueState::Delivering | QueueState::Expired => "warn",
        QueueState::Failed => "s5",
        QueueState::Queued | QueueState::Cancelled => "off",
    }
}

/// What the discard button says in a state, or nothing when there is none.
fn discard_label(s: QueueState) -> &'static str {
    match s {
        QueueState::Queued => "Cancel",
        QueueState::Failed | QueueState::Expired | QueueState::Cancelled => "Discard",
        QueueState::Delivering | QueueState::Delivered => "",
    }
}

/// An age or duration in ms, to the second (`2h 5m 3s`).
fn age(ms: i64) -> String {
    let secs = (ms.max(0) / 1000) as u64;
    if secs == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The start of a message id, with an ellipsis.
fn short_id(id: &str) -> String {
    if id.chars().count() <= SHORT_ID {
        return id.to_string();
    }
    let head: String = id.chars().take(SHORT_ID).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(order: &str, ttl: &str, n: &str) -> SettingsForm {
        SettingsForm {
            csrf: String::new(),
            order: order.into(),
            ttl: ttl.into(),
            max_messages: n.into(),
            max_bytes: String::new(),
        }
    }

    #[test]
    fn the_settings_form_sets_every_field() {
        let c = settings_change(&form("ordered", "2h", "10")).unwrap();
        assert_eq!(
            c,
            SettingsChange {
                ordered: Some(true),
                ttl: Some(Some(Duration::from_secs(7200))),
                max_messages: Some(Some(10)),
                max_bytes: Some(None),
            }
        );
        assert_eq!(settings_change(&form("", "", "")).unwrap().ttl, Some(None));
        for bad in [
            form("random", "", ""),
            form("parallel", "soon", ""),
            form("parallel", "", "-1"),
        ] {
            assert!(matches!(settings_change(&bad), Err(Error::Validation(_))));
        }
    }

    #[test]
    fn ages_and_ids_read_well() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(3_723_400), "1h 2m 3s");
        assert_eq!(short_id("0123456789abcdef"), "0123456789…");
        assert_eq!(short_id("abc"), "abc");
    }
}
