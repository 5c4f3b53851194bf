//! `/api/v1/tenants/{name}/queue` (settings and counts, and changing the settings),
//! `/api/v1/tenants/{name}/queue/messages` and `/api/v1/queue/messages/{id}` (a message's
//! detail, retry, discard).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Json;
use relay_store::{BodyPreview, Discarded, QueueMessage, QueueState, PREVIEW_BYTES};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{nullable, Body, Params};
use super::ApiResult;
use crate::actions::queue::{stored_headers, Detail, Overview, SettingsChange};
use crate::actions::{self, paging};
use crate::auth::ApiAdmin;
use crate::view::rfc3339;
use crate::AppState;

pub(super) async fn read(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
) -> ApiResult {
    let o = actions::queue::overview(&state, &name).await?;
    Ok(Json(overview_json(&o)).into_response())
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum Order {
    Ordered,
    Parallel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueuePatch {
    order: Option<Order>,
    #[serde(default, deserialize_with = "nullable")]
    ttl_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_messages: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    max_bytes: Option<Option<u64>>,
}

pub(super) async fn update(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(name): Path<String>,
    Body(body): Body<QueuePatch>,
) -> ApiResult {
    let change = SettingsChange {
        ordered: body.order.map(|o| matches!(o, Order::Ordered)),
        ttl: body.ttl_ms.map(|v| v.map(Duration::from_millis)),
        max_messages: body.max_messages,
        max_bytes: body.max_bytes,
    };
    let o = actions::queue::set_settings(&state, &admin.actor(), &name, change).await?;
    Ok(Json(overview_json(&o)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagesQuery {
    #[serde(default)]
    state: String,
    limit: Option<u32>,
}

pub(super) async fn messages(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(name): Path<String>,
    Params(q): Params<MessagesQuery>,
) -> ApiResult {
    let limit = paging(q.limit, 0, 50)?;
    let filter = actions::queue::parse_state(&q.state)?;
    let (_, list) = actions::queue::messages(&state, &name, filter, limit).await?;
    let items: Vec<Value> = list.iter().map(message_json).collect();
    Ok(Json(json!({ "items": items, "limit": limit })).into_response())
}

pub(super) async fn message(
    State(state): State<AppState>,
    _: ApiAdmin,
    Path(id): Path<String>,
) -> ApiResult {
    let d = actions::queue::detail(&state, &id).await?;
    Ok(Json(detail_json(&d)).into_response())
}

pub(super) async fn retry(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(id): Path<String>,
) -> ApiResult {
    let m = actions::queue::retry(&state, &admin.actor(), &id).await?;
    Ok(Json(message_json(&m)).into_response())
}

pub(super) async fn discard(
    State(state): State<AppState>,
    admin: ApiAdmin,
    Path(id): Path<String>,
) -> ApiResult {
    let (done, now) = actions::queue::discard(&state, &admin.actor(), &id).await?;
    let result = match done {
        Discarded::Cancelled => "cancelled",
        _ => "deleted",
    };
    Ok(Json(json!({
        "id": id,
        "result": result,
        "message": now.as_ref().map(message_json),
    }))
    .into_response())
}

fn overview_json(o: &Overview) -> Value {
    let s = &o.settings;
    let counts: serde_json::Map<String, Value> = QueueState::ALL
        .iter()
        .map(|st| {
            let n = o.counts.by_state.get(st).copied().unwrap_or(0);
            (st.as_str().to_string(), json!(n))
        })
        .collect();
    json!({
        "tenant": o.tenant.name,
        "settings": {
            "order": if s.ordered { "ordered" } else { "parallel" },
            "ttl_ms": s.ttl_ms,
            "max_messages": s.max_messages,
            "max_bytes": s.max_bytes,
        },
        "counts": counts,
        "oldest_queued_at": o.counts.oldest_queued_at.map(rfc3339),
        "oldest_queued_age_ms": o.oldest_age_ms,
    })
}

/// A message's status fields, as lists show them.
pub(super) fn message_json(m: &QueueMessage) -> Value {
    json!({
        "id": m.id,
        "tenant": m.tenant,
        "target": m.target,
        "method": m.method,
        "path": m.path,
        "state": m.state.as_str(),
        "attempts": m.attempts,
        "last_error": m.last_error,
        "body_bytes": m.body_bytes,
        "idempotency_key": m.idempotency_key,
        "created_at": rfc3339(m.created_at),
        "expires_at": rfc3339(m.expires_at),
        "next_attempt_at": (m.state == QueueState::Queued).then(|| rfc3339(m.next_attempt_at)),
        "finished_at": m.finished_at.map(rfc3339),
        "response_status": m.response_status,
        "response_truncated": m.response_truncated,
        "purged": m.purged,
    })
}

fn detail_json(d: &Detail) -> Value {
    let m = &d.message;
    let mut v = message_json(m);
    let p = d.preview.as_ref();
    v["retryable"] = json!(d.retryable());
    v["request"] = json!({
        "headers": p.map(|p| headers_json(&p.headers)).unwrap_or_default(),
        "body": p.and_then(|p| p.body.as_deref()).map(|b| body_json(b, Some(m.body_bytes))),
    });
    v["response"] = match m.response_status {
        Some(status) => json!({
            "status": status,
            "truncated": m.response_truncated,
            "headers": p.and_then(|p| p.response_headers.as_deref()).map(headers_json).unwrap_or_default(),
            "body": p.and_then(|p| p.response_body.as_deref()).map(|b| body_json(b, None)),
        }),
        None => Value::Null,
    };
    v
}

fn headers_json(encoded: &str) -> Vec<Value> {
    stored_headers(encoded)
        .into_iter()
        .map(|h| {
            if h.base64 {
                json!({"name": h.name, "value_base64": h.value})
            } else {
                json!({"name": h.name, "value": h.value})
            }
        })
        .collect()
}

/// The start of a body (`total` bytes long, when known).
fn body_json(start: &[u8], total: Option<i64>) -> Value {
    let complete = match total {
        Some(n) => n == start.len() as i64,
        None => start.len() < PREVIEW_BYTES,
    };
    let (encoding, data) = match BodyPreview::of(start) {
        BodyPreview::Text(s) => ("text", s),
        BodyPreview::Base64(s) => ("base64", s),
    };
    json!({"encoding": encoding, "data": data, "bytes": start.len(), "complete": complete})
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::super::extract::parse;
    use super::*;

    #[tokio::test]
    async fn queue_patches_take_known_fields_of_the_right_type() {
        for bad in [
            r#"{"order": "random"}"#,
            r#"{"ttl_ms": "1h"}"#,
            r#"{"max_bytes": -1}"#,
            r#"{"quota": 1}"#,
        ] {
            assert_eq!(
                parse::<QueuePatch>(bad).await.err(),
                Some(StatusCode::UNPROCESSABLE_ENTITY),
                "{bad}"
            );
        }
        let p = parse::<QueuePatch>(r#"{"order": "ordered", "ttl_ms": null}"#)
            .await
            .unwrap();
        assert!(matches!(p.order, Some(Order::Ordered)));
        assert_eq!(p.ttl_ms, Some(None));
        assert_eq!(p.max_messages, None);
    }

    #[test]
    fn bodies_are_text_or_base64_and_say_when_cut() {
        let v = body_json(b"hello", Some(5));
        assert_eq!(
            v,
            json!({"encoding": "text", "data": "hello", "bytes": 5, "complete": true})
        );
        let v = body_json(&[0xff, 0x00], Some(2048));
        assert_eq!(v["encoding"], "base64");
        assert_eq!(v["data"], "/wA=");
        assert_eq!(v["complete"], false);
    }
}
