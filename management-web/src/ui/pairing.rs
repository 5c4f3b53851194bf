//! A tenant's pairing for local-first apps (docs/pairing.md): its mode (off, open, token) and
//! its pairing tokens (create: the token is shown once; revoke).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use super::{guard, render, Chrome, CsrfForm, Form, PageResult, SecretPage};
use crate::actions;
use crate::auth::Admin;
use crate::error::Error;
use crate::AppState;

#[derive(Deserialize)]
pub(super) struct ModeForm {
    csrf: String,
    mode: String,
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    csrf: String,
    #[serde(default)]
    label: String,
    /// Binds the token to one peer id when not empty.
    #[serde(default)]
    peer_id: String,
}

pub(super) async fn mode(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ModeForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let mode: relay_store::PairingMode = form
        .mode
        .trim()
        .parse()
        .map_err(|_| Error::Validation("pairing mode: use off, open or token".into()))?;
    actions::pairing::set_mode(&state, &admin.actor(), &name, mode).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=pairing")).into_response())
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<TokenForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let peer = form.peer_id.trim();
    let peer = (!peer.is_empty()).then_some(peer);
    let created =
        actions::pairing::create_token(&state, &admin.actor(), &name, peer, form.label.trim())
            .await?;
    let (id, tenant) = (&created.token.id, &created.token.tenant);
    let bound = match &created.token.peer_id {
        Some(p) => format!(" It admits peer id {p} only."),
        None => String::new(),
    };
    Ok(render(
        StatusCode::OK,
        &SecretPage {
            chrome: Chrome::new(&admin, "tenants"),
            title: format!("Pairing token {id} for {tenant}"),
            back: format!("/tenants/{tenant}"),
            secret: created.value.clone(),
            hint: format!(
                "Give it to the app: it goes into the base URL the @localfirst/relay client is \
                 given.{bound}"
            ),
            example: format!("wss://RELAY-HOST/pair/{tenant}/{}", created.value),
        },
    ))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::pairing::revoke_token(&state, &admin.actor(), &name, &id).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=pairing-token-revoked")).into_response())
}
