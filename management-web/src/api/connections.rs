//! `/api/v1/tenants/{name}/connections`: the tenant's live connector sessions on every node.

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use relay_store::SessionRecord;
use serde_json::{json, Value};

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
    let list = actions::sessions::live(&state, &t.name).await?;
    let items: Vec<Value> = list.iter().map(|(s, n)| connection_json(s, *n)).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

fn connection_json(s: &SessionRecord, in_flight: Option<usize>) -> Value {
    json!({
        "id": s.id,
        "transport": s.transport,
        "remote_addr": s.remote_addr,
        "connector_id": s.connector_id,
        "connector_version": s.connector_version,
        "connected_at": rfc3339(s.connected_at),
        "relay_node": s.relay_node,
        "in_flight_streams": in_flight,
    })
}
