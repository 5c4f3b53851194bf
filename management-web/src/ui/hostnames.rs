//! A tenant's hostnames: add (a taken or invalid one is shown on the tenant page) and remove;
//! a hostname's certificate: upload (a refused one is shown on the tenant page), remove, renew.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use super::tenants::tenant_page;
use super::{guard, CsrfForm, Form, PageResult};
use crate::actions;
use crate::auth::Admin;
use crate::AppState;

#[derive(Deserialize)]
pub(super) struct HostnameForm {
    csrf: String,
    hostname: String,
    target: String,
    /// A checkbox: present (`on`) when ticked.
    acme: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct CertificateForm {
    csrf: String,
    certificate: String,
    private_key: String,
}

pub(super) async fn add(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<HostnameForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let (host, target) = (form.hostname.trim(), form.target.trim());
    let added = match actions::hostnames::add(&state, &admin.actor(), &name, host, target).await {
        Ok(h) if form.acme.is_some() => {
            actions::hostnames::set_acme(&state, &admin.actor(), &name, &h.hostname, true)
                .await
                .map(|()| h)
        }
        other => other,
    };
    match added {
        Ok(_) => {
            let tenant = name.to_ascii_lowercase();
            Ok(Redirect::to(&format!("/tenants/{tenant}?done=hostname-added")).into_response())
        }
        Err(e) if e.is_input() => tenant_page(&state, &admin, &name, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn remove(
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

pub(super) async fn upload_certificate(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, hostname)): Path<(String, String)>,
    Form(form): Form<CertificateForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    let uploaded = actions::hostnames::upload_certificate(
        &state,
        &admin.actor(),
        &name,
        &hostname,
        &form.certificate,
        &form.private_key,
    )
    .await;
    match uploaded {
        Ok(_) => {
            let tenant = name.to_ascii_lowercase();
            Ok(
                Redirect::to(&format!("/tenants/{tenant}?done=certificate-uploaded"))
                    .into_response(),
            )
        }
        Err(e) if e.is_input() => tenant_page(&state, &admin, &name, "", Some(&e)).await,
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn remove_certificate(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, hostname)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::hostnames::remove_certificate(&state, &admin.actor(), &name, &hostname).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=certificate-removed")).into_response())
}

pub(super) async fn renew_certificate(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Path((name, hostname)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    guard(&headers, &admin, &form.csrf)?;
    actions::hostnames::renew_certificate(&state, &admin.actor(), &name, &hostname).await?;
    let tenant = name.to_ascii_lowercase();
    Ok(Redirect::to(&format!("/tenants/{tenant}?done=certificate-renew")).into_response())
}
