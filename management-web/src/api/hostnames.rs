//! `/api/v1/tenants/{name}/hostnames`: list, add, remove.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
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
    let items: Vec<Value> = hosts
        .iter()
        .map(|h| json!({"hostname": h.hostname, "target": h.target}))
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewHostname {
    hostname: String,
    target: String,
}

pub(super) async fn add(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewHostname>,
) -> ApiResult {
    let h = actions::hostnames::add(&state, &admin.actor(), &name, &body.hostname, &body.target)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"hostname": h.hostname, "target": h.target})),
    )
        .into_response())
}

pub(super) async fn remove(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, hostname)): Path<(String, String)>,
) -> ApiResult {
    actions::hostnames::remove(&state, &admin.actor(), &name, &hostname).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
