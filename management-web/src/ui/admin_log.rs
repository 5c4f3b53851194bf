//! The admin-action log: who changed what, from the pages (`user:NAME`), the API
//! (`token:NAME`) or the CLI (`cli`).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;

use super::{render, Chrome, PageResult};
use crate::auth::Admin;
use crate::view;
use crate::AppState;

#[derive(Template)]
#[template(path = "actions.html")]
struct ActionsPage {
    chrome: Chrome,
    rows: Vec<(String, String, String, String)>,
}

pub(super) async fn show(State(state): State<AppState>, admin: Admin) -> PageResult {
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
