//! The audit log: filtered, paged records, and the CSV export (streamed, formulas
//! neutralised).

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use relay_store::now_ms;

use super::{enc, render, req_row, Chrome, PageResult, Query, ReqRow};
use crate::actions::audit::RequestQuery;
use crate::auth::Admin;
use crate::view;
use crate::AppState;

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

pub(super) async fn show(
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

pub(super) async fn csv(
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
    fn local_times_are_utc() {
        assert_eq!(local_to_utc("2026-11-23T10:00"), "2026-11-23T10:00:00Z");
        assert_eq!(local_to_utc("2026-11-23T10:00:05"), "2026-11-23T10:00:05Z");
        assert_eq!(local_to_utc("1700000000000"), "1700000000000");
        assert_eq!(local_to_utc(""), "");
    }
}
