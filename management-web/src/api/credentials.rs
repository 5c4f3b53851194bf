//! `/api/v1/tenants/{name}/credentials`: list (never secrets), create (the secret appears only
//! in this answer), revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use relay_store::Credential;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Body;
use super::ApiResult;
use crate::actions;
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn list(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = actions::tenants::find(&state, &name).await?;
    let creds = state.store().credentials(&t.name).await?;
    let items: Vec<Value> = creds.iter().map(credential_json).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCredential {
    #[serde(default)]
    label: String,
}

pub(super) async fn create(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewCredential>,
) -> ApiResult {
    let created = actions::credentials::create(&state, &admin.actor(), &name, &body.label).await?;
    let c = &created.credential;
    let body = json!({
        "id": c.id.0,
        "secret": created.secret,
        "label": c.label,
        "created_at": rfc3339(c.created_at),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    actions::credentials::revoke(&state, &admin.actor(), &name, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn credential_json(c: &Credential) -> Value {
    json!({
        "id": c.id.0,
        "label": c.label,
        "created_at": rfc3339(c.created_at),
        "last_used_at": c.last_used_at.map(rfc3339),
        "revoked_at": c.revoked_at.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::extract::parse;
    use super::*;

    #[tokio::test]
    async fn bodies_must_be_objects() {
        let unprocessable = Some(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(parse::<NewCredential>("[]").await.err(), unprocessable);
        assert_eq!(parse::<NewCredential>("[\"x\"]").await.err(), unprocessable);
        assert_eq!(parse::<NewCredential>("null").await.err(), unprocessable);
        assert_eq!(
            parse::<NewCredential>("{").await.err(),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            parse::<NewCredential>("{}").await.ok().map(|c| c.label),
            Some(String::new())
        );
    }
}
