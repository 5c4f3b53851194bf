//! `/api/v1/requests`: the audit log, newest first, filtered (`actions::audit`).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use relay_store::AuditRecord;
use serde_json::{json, Value};

use super::extract::Params;
use super::ApiResult;
use crate::actions::audit::RequestQuery;
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn list(
    State(state): State<AppState>,
    _: ApiAdmin,
    Params(q): Params<RequestQuery>,
) -> ApiResult {
    let filter = q.filter(100)?;
    let records = state.store().audit_query(&filter).await?;
    let items: Vec<Value> = records.iter().map(request_json).collect();
    Ok(
        Json(json!({"items": items, "offset": filter.offset, "limit": filter.limit}))
            .into_response(),
    )
}

fn request_json(r: &AuditRecord) -> Value {
    json!({
        "request_id": r.request_id,
        "tenant": r.tenant,
        "target": r.target,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "outcome": r.outcome,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "duration_ms": r.duration_ms,
        "visitor": r.visitor,
        "session_id": r.session_id,
        "relay_node": r.relay_node,
        "created_at": rfc3339(r.created_at),
    })
}
