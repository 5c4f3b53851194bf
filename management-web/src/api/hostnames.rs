//! `/api/v1/tenants/{name}/hostnames`: list, add, remove; a hostname's certificate: upload,
//! remove, renew (ACME).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use relay_store::CertificateInfo;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Body;
use super::ApiResult;
use crate::actions;
use crate::auth::ApiAdmin;
use crate::AppState;

pub(super) async fn list(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = actions::tenants::find(&state, &name).await?;
    let hosts = state.store().hostnames(&t.name).await?;
    let certs = state.store().certificates(&t.name).await?;
    let items: Vec<Value> = hosts
        .iter()
        .map(|h| {
            let cert = certs.iter().find(|c| c.hostname == h.hostname);
            json!({"hostname": h.hostname, "target": h.target, "acme": h.acme,
                   "certificate": cert.map(certificate_json)})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// A certificate as the API shows it: never the key.
fn certificate_json(c: &CertificateInfo) -> Value {
    json!({
        "hostname": c.hostname,
        "source": c.source.as_str(),
        "serial": c.serial,
        "not_before": ms_to_rfc3339(c.not_before),
        "not_after": ms_to_rfc3339(c.not_after),
    })
}

fn ms_to_rfc3339(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewHostname {
    hostname: String,
    target: String,
    /// Obtain its certificate from the ACME CA.
    #[serde(default)]
    acme: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateUpload {
    /// PEM chain, leaf first.
    certificate: String,
    /// PEM private key.
    private_key: String,
}

pub(super) async fn add(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewHostname>,
) -> ApiResult {
    let h = actions::hostnames::add(&state, &admin.actor(), &name, &body.hostname, &body.target)
        .await?;
    if body.acme {
        actions::hostnames::set_acme(&state, &admin.actor(), &name, &h.hostname, true).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"hostname": h.hostname, "target": h.target, "acme": body.acme, "certificate": null})),
    )
        .into_response())
}

pub(super) async fn put_certificate(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
    Body(body): Body<CertificateUpload>,
) -> ApiResult {
    let info = actions::hostnames::upload_certificate(
        &state,
        &admin.actor(),
        &name,
        &hostname,
        &body.certificate,
        &body.private_key,
    )
    .await?;
    Ok(Json(certificate_json(&info)).into_response())
}

pub(super) async fn delete_certificate(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
) -> ApiResult {
    actions::hostnames::remove_certificate(&state, &admin.actor(), &name, &hostname).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn renew_certificate(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
) -> ApiResult {
    actions::hostnames::renew_certificate(&state, &admin.actor(), &name, &hostname).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

pub(super) async fn remove(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
) -> ApiResult {
    actions::hostnames::remove(&state, &admin.actor(), &name, &hostname).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
