//! The relay nodes sharing the database: heartbeat age, sessions, state, and a Drain or Resume
//! button per node. A node applies its state at its next heartbeat.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use relay_store::NodeState;

use super::{failure, guard, notice, render, Chrome, CsrfForm, DoneQuery, Form, PageResult, Query};
use crate::actions;
use crate::auth::Admin;
use crate::error::Error;
use crate::view;
use crate::AppState;

/// How many characters of a node id the table shows (the full id is in its title): the last
/// ones, since ids (UUIDv7) of nodes started close together share their leading timestamp.
const SHORT_ID: usize = 8;

struct NodeRow {
    id: String,
    short_id: String,
    name: String,
    draining: bool,
    heartbeat: String,
    sessions: u64,
    advertise: String,
    started: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    chrome: Chrome,
    rows: Vec<NodeRow>,
    timeout: String,
}

async fn nodes_page(
    state: &AppState,
    admin: &Admin,
    done: &str,
    failed: Option<&Error>,
) -> PageResult {
    let (status, error) = failure(failed);
    let nodes = actions::nodes::live(state).await?;
    let mut chrome = Chrome::new(admin, "nodes");
    chrome.notice = notice(done).to_string();
    chrome.error = error;
    Ok(render(
        status,
        &NodesPage {
            chrome,
            rows: nodes
                .into_iter()
                .map(|n| NodeRow {
                    short_id: short_id(&n.record.id),
                    id: n.record.id,
                    name: n.record.name,
                    draining: n.record.state == NodeState::Draining,
                    heartbeat: view::millis(n.heartbeat_age_ms),
                    sessions: n.sessions,
                    advertise: n.record.advertise.unwrap_or_else(|| "–".into()),
                    started: view::when(n.record.started_at),
                })
                .collect(),
            timeout: humantime::format_duration(state.node_timeout()).to_string(),
        },
    ))
}

pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    nodes_page(&state, &admin, &q.done, None).await
}

pub(super) async fn drain(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    set_state(state, admin, headers, id, form, NodeState::Draining).await
}

pub(super) async fn resume(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    set_state(state, admin, headers, id, form, NodeState::Active).await
}

async fn set_state(
    state: AppState,
    admin: Admin,
    headers: HeaderMap,
    id: String,
    form: CsrfForm,
    to: NodeState,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    match actions::nodes::set_state(&state, &admin.actor(), &id, to).await {
        Ok(_) => {
            let done = match to {
                NodeState::Active => "node-resumed",
                NodeState::Draining => "node-draining",
            };
            Ok(Redirect::to(&format!("/nodes?done={done}")).into_response())
        }
        Err(e) if e.is_input() => nodes_page(&state, &admin, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

/// The end of a node id, after an ellipsis when cut.
fn short_id(id: &str) -> String {
    let n = id.chars().count();
    if n <= SHORT_ID {
        return id.to_string();
    }
    let tail: String = id.chars().skip(n - SHORT_ID).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_keep_the_random_end() {
        assert_eq!(short_id("0190aaaabbbbcccc"), "…bbbbcccc");
        assert_eq!(short_id("h1"), "h1");
    }
}
