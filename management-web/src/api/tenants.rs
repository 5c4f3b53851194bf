//! `/api/v1/tenants` and `/api/v1/tenants/{name}`: list, create, read, change, delete.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use relay_store::{Tenant, TenantSettings};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::{nullable, object, Body, Params};
use super::ApiResult;
use crate::actions::tenants::{LimitsChange, NewTenant, TenantChange};
use crate::actions::{self, paging};
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Paging {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: u64,
    limit: Option<u32>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    _: ApiAdmin,
    Params(p): Params<Paging>,
) -> ApiResult {
    let limit = paging(p.limit, p.offset, 50)?;
    let (tenants, total) = state.store().tenants_page(&p.q, p.offset, limit).await?;
    let items: Vec<TenantJson> = tenants.iter().map(tenant_json).collect();
    Ok(
        Json(json!({"items": items, "total": total, "offset": p.offset, "limit": limit}))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTenantBody {
    name: String,
    display_name: Option<String>,
    description: Option<String>,
}

pub(super) async fn create(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Body(body): Body<NewTenantBody>,
) -> ApiResult {
    let new = NewTenant {
        name: body.name,
        display_name: body.display_name,
        description: body.description,
    };
    let t = actions::tenants::create(&state, &admin.actor(), new).await?;
    let mut res = (StatusCode::CREATED, Json(tenant_json(&t))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/tenants/{}", t.name)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

pub(super) async fn read(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let t = actions::tenants::find(&state, &name).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsPatch {
    #[serde(default, deserialize_with = "nullable")]
    pub(super) max_body_bytes: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) max_concurrent_streams: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(super) request_timeout_ms: Option<Option<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantPatch {
    enabled: Option<bool>,
    display_name: Option<String>,
    description: Option<String>,
    audit_query_strings: Option<bool>,
    #[serde(default, deserialize_with = "object")]
    pub(super) limits: Option<LimitsPatch>,
}

pub(super) async fn update(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<TenantPatch>,
) -> ApiResult {
    let change = TenantChange {
        enabled: body.enabled,
        settings: TenantSettings {
            display_name: body.display_name,
            description: body.description,
            audit_query_strings: body.audit_query_strings,
        },
        limits: body.limits.map(|l| LimitsChange {
            max_body_bytes: l.max_body_bytes,
            max_concurrent_streams: l.max_concurrent_streams.map(|v| v.map(u64::from)),
            request_timeout_ms: l.request_timeout_ms,
        }),
    };
    let t = actions::tenants::update(&state, &admin.actor(), &name, change).await?;
    Ok(Json(tenant_json(&t)).into_response())
}

pub(super) async fn delete(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    actions::tenants::delete(&state, &admin.actor(), &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize)]
struct LimitsJson {
    max_body_bytes: Option<u64>,
    max_concurrent_streams: Option<u32>,
    request_timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct TenantJson {
    name: String,
    display_name: String,
    description: String,
    enabled: bool,
    audit_query_strings: bool,
    limits: LimitsJson,
    created_at: String,
}

fn tenant_json(t: &Tenant) -> TenantJson {
    TenantJson {
        name: t.name.clone(),
        display_name: t.display_name.clone(),
        description: t.description.clone(),
        enabled: t.enabled,
        audit_query_strings: t.audit_query_strings,
        limits: LimitsJson {
            max_body_bytes: t.limits.max_body_bytes,
            max_concurrent_streams: t.limits.max_concurrent_streams,
            request_timeout_ms: t.limits.request_timeout_ms,
        },
        created_at: rfc3339(t.created_at),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::extract::parse;
    use super::*;

    #[tokio::test]
    async fn patches_must_be_objects_all_the_way_down() {
        let unprocessable = Some(StatusCode::UNPROCESSABLE_ENTITY);
        for bad in [
            r#"{"limits": [5, null]}"#,
            r#"{"limits": [5]}"#,
            r#"{"limits": {"max_body_bytes": [5]}}"#,
            r#"{"limits": {"max_body_bytes": -1}}"#,
            r#"{"limits": {"speed": 1}}"#,
            r#"{"enabled": "yes"}"#,
            "[true]",
        ] {
            assert_eq!(
                parse::<TenantPatch>(bad).await.err(),
                unprocessable,
                "{bad}"
            );
        }
        let p = parse::<TenantPatch>(
            r#"{"limits": {"max_body_bytes": 5, "request_timeout_ms": null}}"#,
        )
        .await
        .unwrap();
        let l = p.limits.expect("limits");
        assert_eq!(l.max_body_bytes, Some(Some(5)));
        assert_eq!(l.request_timeout_ms, Some(None));
        assert_eq!(l.max_concurrent_streams, None);
        let p = parse::<TenantPatch>(r#"{"limits": null}"#).await.unwrap();
        assert!(p.limits.is_none());
    }
}
