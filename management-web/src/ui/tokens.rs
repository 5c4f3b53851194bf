//! Admin API tokens: the list, create (the token is shown once) and revoke.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use super::{
    failure, guard, notice, render, Chrome, CsrfForm, DoneQuery, Form, PageResult, Query,
    SecretPage,
};
use crate::actions;
use crate::auth::Admin;
use crate::error::Error;
use crate::view;
use crate::AppState;

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

pub(super) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<DoneQuery>,
) -> PageResult {
    tokens_page(&state, &admin, &q.done, None).await
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    csrf: String,
    name: String,
}

pub(super) async fn create(
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

pub(super) async fn revoke(
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
