//! The dashboard: tenants, live sessions, and the last hour's requests and error rate.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use relay_store::now_ms;

use super::{render, Chrome, PageResult};
use crate::auth::Admin;
use crate::view;
use crate::AppState;

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

pub(super) async fn show(State(state): State<AppState>, admin: Admin) -> PageResult {
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
