//! `/api/v1/tenants/{name}/pairing` (mode and tokens, changing the mode) and
//! `/api/v1/tenants/{name}/pairing/tokens` (create: the token appears only in this answer;
//! revoke).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use relay_store::{PairingMode, PairingToken};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Body;
use super::ApiResult;
use crate::actions;
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn read(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let (tenant, mode, tokens) = actions::pairing::overview(&state, &name).await?;
    Ok(Json(pairing_json(&tenant, mode, &tokens)).into_response())
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum Mode {
    Off,
    Open,
    Token,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PairingPatch {
    mode: Mode,
}

pub(super) async fn update(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<PairingPatch>,
) -> ApiResult {
    let mode = match body.mode {
        Mode::Off => PairingMode::Off,
        Mode::Open => PairingMode::Open,
        Mode::Token => PairingMode::Token,
    };
    actions::pairing::set_mode(&state, &admin.actor(), &name, mode).await?;
    let (tenant, mode, tokens) = actions::pairing::overview(&state, &name).await?;
    Ok(Json(pairing_json(&tenant, mode, &tokens)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewPairingToken {
    #[serde(default)]
    peer_id: Option<String>,
    #[serde(default)]
    label: String,
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewPairingToken>,
) -> ApiResult {
    let created = actions::pairing::create_token(
        &state,
        &admin.actor(),
        &name,
        body.peer_id.as_deref(),
        &body.label,
    )
    .await?;
    let mut out = token_json(&created.token);
    out["token"] = Value::String(created.value);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    actions::pairing::revoke_token(&state, &admin.actor(), &name, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn pairing_json(tenant: &str, mode: PairingMode, tokens: &[PairingToken]) -> Value {
    json!({
        "tenant": tenant,
        "mode": mode.as_str(),
        "tokens": tokens.iter().map(token_json).collect::<Vec<_>>(),
    })
}

fn token_json(t: &PairingToken) -> Value {
    json!({
        "id": t.id,
        "peer_id": t.peer_id,
        "label": t.label,
        "created_at": rfc3339(t.created_at),
        "revoked_at": t.revoked_at.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::extract::parse;
    use super::*;

    #[tokio::test]
    async fn bodies_name_a_known_mode() {
        let unprocessable = Some(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            parse::<PairingPatch>(r#"{"mode":"sometimes"}"#).await.err(),
            unprocessable
        );
        assert_eq!(parse::<PairingPatch>("{}").await.err(), unprocessable);
        assert!(parse::<PairingPatch>(r#"{"mode":"token"}"#).await.is_ok());
        assert_eq!(
            parse::<NewPairingToken>(r#"{"peer":"x"}"#).await.err(),
            unprocessable
        );
    }
}
