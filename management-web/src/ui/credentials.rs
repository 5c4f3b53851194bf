//! A tenant's connector credentials: create (the secret is shown once) and revoke.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use super::{guard, render, Chrome, CsrfForm, Form, PageResult, SecretPage};
use crate::actions;
use crate::auth::Admin;
use crate::AppState;

#[derive(Deserialize)]
pub(super) struct CredentialForm {
    csrf: String,
    #[serde(default)]
    label: String,
}

pub(super) async fn create(
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

pub(super) async fn revoke(
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
