//! A tenant's queue (queue mode): its settings (order, time to live, quotas), its messages by
//! state, a message's detail, and an operator's retry and discard. Relays read the settings when
//! they accept a message; nothing here talks to a relay (a retried message is due at once; the
//! nodes are woken through the store, `NOTIFY relay_queue` on PostgreSQL, or find it at their
//! next poll, `queue.poll_interval`).
//!
//! Discard means: a `queued` message is cancelled (its status tells the visitor so); a `failed`,
//! `expired` or `cancelled` one is deleted with its body and response (its status URL then
//! answers 404). A message being delivered or delivered is left alone (409).

use std::time::Duration;

use relay_store::{
    Discarded, MessagePreview, QueueCounts, QueueMessage, QueueSettings, QueueState, Tenant,
};

use super::tenants::find;
use super::Actor;
use crate::error::Error;
use crate::AppState;

/// The shortest time to live a tenant may set.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);
/// The largest quota (the store keeps signed 64 bits).
pub(crate) const MAX_QUOTA: u64 = i64::MAX as u64;

/// A tenant's queue at a glance.
#[derive(Debug, Clone)]
pub(crate) struct Overview {
    pub(crate) tenant: Tenant,
    pub(crate) settings: QueueSettings,
    pub(crate) counts: QueueCounts,
    /// How long the oldest `queued` message has waited, ms.
    pub(crate) oldest_age_ms: Option<i64>,
}

/// A change to a tenant's queue settings; what is `None` is kept, `Some(None)` returns to the
/// relay's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SettingsChange {
    pub(crate) ordered: Option<bool>,
    /// 1 s up to the relays' `queue.max_ttl`.
    pub(crate) ttl: Option<Option<Duration>>,
    /// 1 or more.
    pub(crate) max_messages: Option<Option<u64>>,
    /// 1 or more.
    pub(crate) max_bytes: Option<Option<u64>>,
}

/// A message with what operators see beyond its status.
#[derive(Debug, Clone)]
pub(crate) struct Detail {
    pub(crate) message: QueueMessage,
    /// `None` once purged (or if the row went away between the two reads).
    pub(crate) preview: Option<MessagePreview>,
}

impl Detail {
    /// Whether "retry now" can work: failed or expired, with its request body still stored.
    pub(crate) fn retryable(&self) -> bool {
        matches!(self.message.state, QueueState::Failed | QueueState::Expired)
            && self.preview.as_ref().is_some_and(|p| p.body.is_some())
    }
}

/// The tenant named `name` with its queue settings and counts.
pub(crate) async fn overview(state: &AppState, name: &str) -> Result<Overview, Error> {
    let t = find(state, name).await?;
    let store = state.store();
    let settings = store.queue_settings(&t.id.0).await?;
    let counts = store.queue_counts(Some(&t.id.0)).await?;
    let now = relay_store::now_ms();
    Ok(Overview {
        oldest_age_ms: counts
            .oldest_queued_at
            .map(|at| now.saturating_sub(at).max(0)),
        tenant: t,
        settings,
        counts,
    })
}

/// Changes a tenant's queue settings (`queue.settings`; a change of nothing records nothing)
/// and returns its queue as it is now. Values out of range are [`Error::Validation`].
pub(crate) async fn set_settings(
    state: &AppState,
    actor: &Actor,
    name: &str,
    change: SettingsChange,
) -> Result<Overview, Error> {
    let t = find(state, name).await?;
    let store = state.store();
    let old = store.queue_settings(&t.id.0).await?;
    let new = merge(state, old, &change)?;
    if new != old {
        store.set_queue_settings(&t.id.0, &new).await?;
        state.record(actor, "queue.settings", &t.name).await;
    }
    overview(state, &t.name).await
}

/// The settings `change` asks for on top of `old`.
fn merge(
    state: &AppState,
    old: QueueSettings,
    change: &SettingsChange,
) -> Result<QueueSettings, Error> {
    let mut s = old;
    if let Some(ordered) = change.ordered {
        s.ordered = ordered;
    }
    if let Some(ttl) = change.ttl {
        let max = state.queue_ttl().max;
        s.ttl_ms = match ttl {
            None => None,
            Some(d) if d < MIN_TTL || d > max => {
                return Err(Error::Validation(format!(
                    "the time to live must be 1s to {} (the relays' queue.max_ttl)",
                    humantime::format_duration(max)
                )))
            }
            Some(d) => Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        };
    }
    let quota = |what: &str, v: Option<u64>| match v {
        None => Ok(None),
        Some(n) if (1..=MAX_QUOTA).contains(&n) => Ok(Some(n as i64)),
        Some(_) => Err(Error::Validation(format!(
            "{what} must be 1 to {MAX_QUOTA}, or empty for the relay's default"
        ))),
    };
    if let Some(v) = change.max_messages {
        s.max_messages = quota("the quota of waiting messages", v)?;
    }
    if let Some(v) = change.max_bytes {
        s.max_bytes = quota("the quota of waiting bytes", v)?;
    }
    Ok(s)
}

/// A tenant's messages, newest first, in one state or all (at most `limit`).
pub(crate) async fn messages(
    state: &AppState,
    name: &str,
    filter: Option<QueueState>,
    limit: u32,
) -> Result<(Tenant, Vec<QueueMessage>), Error> {
    let t = find(state, name).await?;
    let list = state.store().messages(&t.id.0, filter, limit).await?;
    Ok((t, list))
}

/// A message by id, or [`Error::NotFound`].
pub(crate) async fn message(state: &AppState, id: &str) -> Result<QueueMessage, Error> {
    state
        .store()
        .message(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no queue message has the id {id}")))
}

/// A message with its headers and the first KiB of its body and response.
pub(crate) async fn detail(state: &AppState, id: &str) -> Result<Detail, Error> {
    let message = message(state, id).await?;
    let preview = if message.purged {
        None
    } else {
        state.store().message_preview(&message.id).await?
    };
    Ok(Detail { message, preview })
}

/// Puts a failed or expired message back in the queue, due now, with its tenant's time to live
/// (`queue.retry`, object `tenant/id`). Another state, or a message whose body is gone, is
/// [`Error::Conflict`].
pub(crate) async fn retry(
    state: &AppState,
    actor: &Actor,
    id: &str,
) -> Result<QueueMessage, Error> {
    let m = message(state, id).await?;
    let retryable = |m: &QueueMessage| matches!(m.state, QueueState::Failed | QueueState::Expired);
    if !retryable(&m) {
        return Err(Error::Conflict(format!(
            "message {id} is {}: only failed or expired messages can be retried",
            m.state.as_str()
        )));
    }
    let store = state.store();
    let settings = store.queue_settings(&m.tenant_id).await?;
    let ttl = ttl_of(state, &settings);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    if !store.requeue_message(&m.id, ttl_ms).await? {
        let now = message(state, id).await?;
        return Err(Error::Conflict(if retryable(&now) {
            format!("message {id} cannot be retried: its request body is no longer stored")
        } else {
            format!("message {id} is {} now; nothing done", now.state.as_str())
        }));
    }
    // Nodes delivering for the tenant look now rather than at their next poll (PostgreSQL).
    if let Err(e) = store.notify_queue().await {
        tracing::debug!(error = %e, "queue not notified; the delivery loops poll");
    }
    state
        .record(actor, "queue.retry", &format!("{}/{}", m.tenant, m.id))
        .await;
    message(state, id).await
}

/// Discards a message (see the module docs; `queue.discard`, object `tenant/id`): what was done,
/// and the message as it is now when it still exists. One being delivered or delivered is
/// [`Error::Conflict`].
pub(crate) async fn discard(
    state: &AppState,
    actor: &Actor,
    id: &str,
) -> Result<(Discarded, Option<QueueMessage>), Error> {
    let m = message(state, id).await?;
    let done = state.store().discard_message(&m.id).await?;
    match done {
        Discarded::Cancelled | Discarded::Deleted => {}
        Discarded::Too(s) => {
            return Err(Error::Conflict(format!(
                "message {id} is {}: only queued, failed, expired or cancelled messages can be \
                 discarded",
                s.as_str()
            )))
        }
        Discarded::NotFound => {
            return Err(Error::NotFound(format!("no queue message has the id {id}")))
        }
    }
    state
        .record(actor, "queue.discard", &format!("{}/{}", m.tenant, m.id))
        .await;
    let now = state.store().message(&m.id).await?;
    Ok((done, now))
}

/// The time to live a tenant's messages get: its own (capped by `queue.max_ttl`, as relays cap
/// it when they accept) or the relays' default.
pub(crate) fn ttl_of(state: &AppState, s: &QueueSettings) -> Duration {
    let ttl = state.queue_ttl();
    s.ttl_ms
        .map(|ms| Duration::from_millis(ms.max(1) as u64))
        .unwrap_or(ttl.default)
        .min(ttl.max)
}

/// Stored headers are read the way relays write them (relay-store has the one encoding).
pub(crate) use relay_store::{decode_headers as stored_headers, StoredHeader};

/// A state named in a query (`queued`, …), any case; an empty one is none.
pub(crate) fn parse_state(s: &str) -> Result<Option<QueueState>, Error> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    QueueState::parse(&s.to_ascii_lowercase())
        .map(Some)
        .ok_or_else(|| {
            let all: Vec<&str> = QueueState::ALL.iter().map(|s| s.as_str()).collect();
            Error::BadQuery(format!("state {s}: use one of {}", all.join(", ")))
        })
}

#[cfg(test)]
mod tests {
    use relay_store::{Enqueued, Finish, NewMessage, QueueQuota, StoredResponse};

    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    fn new_message(tenant: &Tenant, id: &str, body: &[u8]) -> NewMessage {
        NewMessage {
            id: id.into(),
            tenant_id: tenant.id.0.clone(),
            tenant: tenant.name.clone(),
            target: "app".into(),
            method: "POST".into(),
            path: "/orders?x=1".into(),
            headers: r#"[{"n":"content-type","v":"text/plain"}]"#.into(),
            body: body.to_vec(),
            idempotency_key: None,
            ttl_ms: 60_000,
        }
    }

    #[tokio::test]
    async fn settings_are_checked_merged_and_recorded_once() {
        let (_dir, state) = state().await;
        let state = state.with_queue_ttl(crate::QueueTtl {
            default: Duration::from_secs(3600),
            max: Duration::from_secs(7200),
        });
        state.store().create_tenant("acme").await.unwrap();
        let actor = Actor::user("alice");
        let change = SettingsChange {
            ordered: Some(true),
            ttl: Some(Some(Duration::from_secs(600))),
            max_messages: Some(Some(10)),
            ..Default::default()
        };
        let o = set_settings(&state, &actor, "ACME", change).await.unwrap();
        assert_eq!(
            o.settings,
            QueueSettings {
                ordered: true,
                ttl_ms: Some(600_000),
                max_messages: Some(10),
                max_bytes: None,
            }
        );
        // Absent fields are kept; None returns to the default; nothing changed records nothing.
        let o = set_settings(
            &state,
            &actor,
            "acme",
            SettingsChange {
                ttl: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!((o.settings.ordered, o.settings.ttl_ms), (true, None));
        set_settings(&state, &actor, "acme", SettingsChange::default())
            .await
            .unwrap();
        for bad in [
            SettingsChange {
                ttl: Some(Some(Duration::from_secs(7201))),
                ..Default::default()
            },
            SettingsChange {
                ttl: Some(Some(Duration::from_millis(999))),
                ..Default::default()
            },
            SettingsChange {
                max_bytes: Some(Some(0)),
                ..Default::default()
            },
        ] {
            let e = set_settings(&state, &actor, "acme", bad).await.unwrap_err();
            assert!(matches!(e, Error::Validation(_)), "{e:?}");
        }
        let e = set_settings(&state, &actor, "nobody", SettingsChange::default())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        let settings = entry("user:alice", "queue.settings", "acme");
        assert_eq!(recorded(&state).await, [settings.clone(), settings]);
    }

    #[tokio::test]
    async fn discard_cancels_waiting_messages_and_deletes_final_ones() {
        let (_dir, state) = state().await;
        let store = state.store();
        let t = store.create_tenant("acme").await.unwrap();
        for id in ["m1", "m2", "m3"] {
            let e = store
                .enqueue(&new_message(&t, id, b"hello"), QueueQuota::default())
                .await
                .unwrap();
            assert!(matches!(e, Enqueued::New(_)));
        }
        // m2 fails with the backend's 400; m3 is delivered.
        let claimed = store.claim(&t.id.0, "n1", 60_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let response = |status| StoredResponse {
            status,
            headers: "[]".into(),
            body: b"answer".to_vec(),
            truncated: false,
        };
        store
            .finish_attempt(
                "m2",
                1,
                &Finish::Failed {
                    error: "the backend answered 400".into(),
                    response: Some(response(400)),
                },
            )
            .await
            .unwrap();
        store
            .finish_attempt("m3", 1, &Finish::Delivered(response(200)))
            .await
            .unwrap();
        store
            .finish_attempt(
                "m1",
                1,
                &Finish::Retry {
                    error: "no connector online".into(),
                    at: 0,
                },
            )
            .await
            .unwrap();

        let d = detail(&state, "m1").await.unwrap();
        let p = d.preview.clone().expect("a preview");
        assert_eq!(p.body.as_deref(), Some(&b"hello"[..]));
        assert_eq!(stored_headers(&p.headers)[0].name, "content-type");
        assert!(!d.retryable(), "queued");

        let actor = Actor::token("ops");
        let (done, now) = discard(&state, &actor, "m1").await.unwrap();
        assert_eq!(done, Discarded::Cancelled);
        assert_eq!(now.map(|m| m.state), Some(QueueState::Cancelled));
        let (done, now) = discard(&state, &actor, "m2").await.unwrap();
        assert_eq!((done, now), (Discarded::Deleted, None));
        let e = discard(&state, &actor, "m3").await.unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e:?}");
        let e = discard(&state, &actor, "nope").await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        // Retry: only failed or expired messages.
        let e = retry(&state, &actor, "m3").await.unwrap_err();
        assert!(e.detail().contains("only failed or expired"), "{e:?}");
        assert_eq!(
            recorded(&state).await,
            [
                entry("token:ops", "queue.discard", "acme/m1"),
                entry("token:ops", "queue.discard", "acme/m2"),
            ]
        );
    }

    #[test]
    fn headers_and_states_read_back() {
        let h = stored_headers(r#"[{"n":"a","v":"1"},{"n":"b","b":"6Xg="},{"x":1}]"#);
        assert_eq!(h.len(), 2);
        assert!(!h[0].base64 && h[1].base64);
        assert!(stored_headers("nope").is_empty());
        assert_eq!(parse_state(" Failed ").unwrap(), Some(QueueState::Failed));
        assert_eq!(parse_state("").unwrap(), None);
        assert!(matches!(parse_state("lost"), Err(Error::BadQuery(_))));
    }
}
