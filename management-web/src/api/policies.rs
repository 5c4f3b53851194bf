//! `/api/v1/tenants/{name}/policies` (visitor access policies by scope, docs/policies.md) and
//! `/api/v1/tenants/{name}/api-keys` (visitor API keys: the key appears only in the create
//! answer; revoke).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use relay_store::{ApiKey, PolicyRules, Rule};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Body;
use super::ApiResult;
use crate::actions::policies::{self, parse_scope, scope_key};
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn read(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let (tenant, all) = policies::overview(&state, &name).await?;
    let items: Vec<Value> = all
        .iter()
        .map(|(scope, rules)| json!({"scope": scope_key(scope), "rules": rules_json(rules)}))
        .collect();
    Ok(Json(json!({"tenant": tenant, "policies": items})).into_response())
}

/// `PUT …/policies/{scope}`: replaces one scope's rules; `{}` removes them.
pub(super) async fn replace(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, scope)): Path<(String, String)>,
    Body(rules): Body<PolicyRules>,
) -> ApiResult {
    let scope = parse_scope(&scope)?;
    policies::set(&state, &admin.actor(), &name, &scope, &rules).await?;
    Ok(Json(json!({"scope": scope_key(&scope), "rules": rules_json(&rules)})).into_response())
}

pub(super) async fn list_keys(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let keys = policies::keys(&state, &name).await?;
    let items: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NewApiKey {
    #[serde(default)]
    label: String,
}

pub(super) async fn create_key(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<NewApiKey>,
) -> ApiResult {
    let created = policies::create_key(&state, &admin.actor(), &name, &body.label).await?;
    let mut out = key_json(&created.key);
    out["key"] = Value::String(created.value);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(super) async fn revoke_key(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    policies::revoke_key(&state, &admin.actor(), &name, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The rules as stored, with Basic password hashes left out (user names only).
fn rules_json(rules: &PolicyRules) -> Value {
    let mut v = serde_json::to_value(rules).unwrap_or_else(|_| json!({}));
    if let Some(Rule::On(b)) = &rules.basic {
        v["basic"] = json!({"on": {"realm": b.realm, "users": b.users.keys().collect::<Vec<_>>()}});
    }
    v
}

fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "label": k.label,
        "created_at": rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::super::extract::parse;
    use super::*;

    #[tokio::test]
    async fn bodies_and_scopes_are_checked() {
        let unprocessable = Some(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            parse::<PolicyRules>(r#"{"allow":["10.0.0.0/8"]}"#)
                .await
                .err(),
            unprocessable
        );
        assert!(
            parse::<PolicyRules>(r#"{"allow_ip":["10.0.0.0/8"],"api_key":"off"}"#)
                .await
                .is_ok()
        );
    }

    #[test]
    fn basic_hashes_are_not_shown() {
        let rules = PolicyRules {
            basic: Some(Rule::On(relay_store::BasicRule {
                realm: "r".into(),
                users: [("alice".to_string(), "$argon2id$secret".to_string())]
                    .into_iter()
                    .collect(),
            })),
            ..PolicyRules::default()
        };
        let v = rules_json(&rules).to_string();
        assert!(v.contains("alice") && !v.contains("argon2id"), "{v}");
    }
}
