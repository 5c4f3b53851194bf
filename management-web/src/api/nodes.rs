//! `/api/v1/nodes`: the live relay nodes, and draining or resuming one.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use relay_store::NodeState;
use serde_json::{json, Value};

use super::ApiResult;
use crate::actions;
use crate::actions::nodes::Node;
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn list(State(state): State<AppState>, _: ApiAdmin) -> ApiResult {
    let nodes = actions::nodes::live(&state).await?;
    let items: Vec<Value> = nodes.iter().map(node_json).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

pub(super) async fn drain(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(node): Path<String>,
) -> ApiResult {
    let n = actions::nodes::set_state(&state, &admin.actor(), &node, NodeState::Draining).await?;
    Ok(Json(node_json(&n)).into_response())
}

pub(super) async fn resume(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(node): Path<String>,
) -> ApiResult {
    let n = actions::nodes::set_state(&state, &admin.actor(), &node, NodeState::Active).await?;
    Ok(Json(node_json(&n)).into_response())
}

fn node_json(n: &Node) -> Value {
    let r = &n.record;
    json!({
        "id": r.id,
        "name": r.name,
        "advertise": r.advertise,
        "state": r.state.as_str(),
        "started_at": rfc3339(r.started_at),
        "heartbeat_at": rfc3339(r.heartbeat_at),
        "heartbeat_age_ms": n.heartbeat_age_ms,
        "sessions": n.sessions,
    })
}
