//! Queue mode's messages: requests accepted for a tenant, stored durably, claimed by a relay node
//! that holds one of the tenant's sessions (a lease: a node that dies mid-delivery loses the
//! message to another after `lease_until`), delivered at least once, and their responses kept for
//! pickup until the retention period ends.
//!
//! Claiming on PostgreSQL takes rows with `FOR UPDATE SKIP LOCKED`, so nodes claiming at once
//! never take the same message; SQLite serves one node (its writes are serialised anyway). Every
//! change after a claim is fenced by the attempt number: a node whose lease expired and was
//! claimed again cannot overwrite the newer attempt's outcome.

use std::collections::BTreeMap;

use crate::{now_ms, Backend, Error, Store};

/// A header of a stored request or response: its name and its value as text, or as base64 when
/// the value is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHeader {
    /// The header name.
    pub name: String,
    /// The value: text, or base64 when `base64`.
    pub value: String,
    /// Whether `value` is base64 (the value was not UTF-8).
    pub base64: bool,
}

impl StoredHeader {
    /// The value's bytes; `None` for base64 that does not decode.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        if self.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(&self.value)
                .ok()
        } else {
            Some(self.value.as_bytes().to_vec())
        }
    }
}

/// Headers as stored with queued messages and their responses: `[{"n": name, "v": value}]`,
/// with `"b"` (base64) instead of `"v"` for a value that is not UTF-8. The one encoding: the
/// relay writes it, the relay, the management web and the CLI read it with [`decode_headers`].
pub fn encode_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    use base64::Engine as _;
    let list: Vec<serde_json::Value> = headers
        .into_iter()
        .map(|(n, v)| match std::str::from_utf8(v) {
            Ok(s) => serde_json::json!({"n": n, "v": s}),
            Err(_) => serde_json::json!({
                "n": n,
                "b": base64::engine::general_purpose::STANDARD.encode(v),
            }),
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Reads [`encode_headers`]' form; anything else reads as no headers, entries without a name or
/// value are skipped.
pub fn decode_headers(encoded: &str) -> Vec<StoredHeader> {
    let list: Vec<serde_json::Value> = serde_json::from_str(encoded).unwrap_or_default();
    list.iter()
        .filter_map(|h| {
            let name = h["n"].as_str()?.to_string();
            let (value, base64) = match (h["v"].as_str(), h["b"].as_str()) {
                (Some(v), _) => (v.to_string(), false),
                (None, Some(b)) => (b.to_string(), true),
                _ => return None,
            };
            Some(StoredHeader {
                name,
                value,
                base64,
            })
        })
        .collect()
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueState {
    /// Waiting for a connector (or for its next attempt).
    Queued,
    /// Claimed by a node, being delivered.
    Delivering,
    /// The backend answered with a final response (1xx to 3xx).
    Delivered,
    /// Given up: the backend answered with a final error (a 4xx that is not retried; its response
    /// is kept), or the stored request cannot be sent.
    Failed,
    /// Its time to live ran out before it could be delivered.
    Expired,
    /// Cancelled by the visitor (`DELETE`) or an admin before delivery.
    Cancelled,
}

impl QueueState {
    /// Every state, in display order.
    pub const ALL: [QueueState; 6] = [
        QueueState::Queued,
        QueueState::Delivering,
        QueueState::Delivered,
        QueueState::Failed,
        QueueState::Expired,
        QueueState::Cancelled,
    ];

    /// The stored (and API) name.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Delivering => "delivering",
            QueueState::Delivered => "delivered",
            QueueState::Failed => "failed",
            QueueState::Expired => "expired",
            QueueState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<QueueState> {
        QueueState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing will happen to the message any more.
    pub fn is_final(self) -> bool {
        !matches!(self, QueueState::Queued | QueueState::Delivering)
    }
}

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The unguessable id (≥ 128 random bits).
    pub id: String,
    /// The tenant's id and name.
    pub tenant_id: String,
    /// The tenant's canonical name.
    pub tenant: String,
    /// The target name.
    pub target: String,
    /// The HTTP method.
    pub method: String,
    /// The path below the target, with the query.
    pub path: String,
    /// The end-to-end request headers, encoded by the caller (opaque here).
    pub headers: String,
    /// The request body.
    pub body: Vec<u8>,
    /// The visitor's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Time to live from now, in ms.
    pub ttl_ms: i64,
}

/// Limits on what a tenant may have waiting (`queued` or `delivering`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueQuota {
    /// Most messages waiting.
    pub max_messages: Option<u64>,
    /// Most body bytes waiting.
    pub max_bytes: Option<u64>,
}

/// What [`Store::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored (committed) as a new message.
    New(QueueMessage),
    /// A message with the same idempotency key is still known: that one.
    Existing(QueueMessage),
    /// The tenant's waiting messages would exceed its quota of messages.
    TooManyMessages,
    /// The tenant's waiting bytes would exceed its quota of bytes.
    TooManyBytes,
}

/// A stored message (the request body only when claimed for delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// Order of acceptance.
    pub seq: i64,
    /// The unguessable id.
    pub id: String,
    /// The tenant's id.
    pub tenant_id: String,
    /// The tenant's name.
    pub tenant: String,
    /// The target name.
    pub target: String,
    /// The HTTP method.
    pub method: String,
    /// The path below the target, with the query.
    pub path: String,
    /// The encoded request headers.
    pub headers: String,
    /// The request body (claims only).
    pub body: Option<Vec<u8>>,
    /// Its length.
    pub body_bytes: i64,
    /// The visitor's idempotency key.
    pub idempotency_key: Option<String>,
    /// Where it is.
    pub state: QueueState,
    /// Claims so far (the current attempt's number while delivering).
    pub attempts: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Accepted, ms since the epoch.
    pub created_at: i64,
    /// Expires, ms since the epoch.
    pub expires_at: i64,
    /// Due, ms since the epoch.
    pub next_attempt_at: i64,
    /// Reached a final state, ms since the epoch.
    pub finished_at: Option<i64>,
    /// The stored response's status, when there is one.
    pub response_status: Option<i64>,
    /// The stored response body was cut at the limit.
    pub response_truncated: bool,
    /// Bodies and response dropped after the retention period.
    pub purged: bool,
}

/// A backend response kept for pickup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Its status.
    pub status: u16,
    /// Its headers, encoded by the caller.
    pub headers: String,
    /// Its body (up to the relay's limit).
    pub body: Vec<u8>,
    /// The body was cut at the limit.
    pub truncated: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A final response: `delivered`.
    Delivered(StoredResponse),
    /// A final failure: `failed`, with the response when the backend gave one.
    Failed {
        /// Why.
        error: String,
        /// The backend's answer, if any.
        response: Option<StoredResponse>,
    },
    /// Try again at `at` (ms since the epoch): `queued`.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// When the next attempt is due.
        at: i64,
    },
}

/// What [`Store::cancel_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting and is now `cancelled`.
    Done,
    /// It is being delivered or is final already: in this state.
    Too(QueueState),
    /// No such message.
    NotFound,
}

/// A tenant's queue settings; `None` fields use the relay's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSettings {
    /// Per target, a message waits until the one before it is final.
    pub ordered: bool,
    /// Time to live of its messages.
    pub ttl_ms: Option<i64>,
    /// Quota of waiting messages.
    pub max_messages: Option<i64>,
    /// Quota of waiting body bytes.
    pub max_bytes: Option<i64>,
}

/// Messages by state, and the oldest waiting one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// How many in each state.
    pub by_state: BTreeMap<QueueState, u64>,
    /// When the oldest `queued` message was accepted, ms since the epoch.
    pub oldest_queued_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    id: String,
    tenant_id: String,
    tenant: String,
    target: String,
    method: String,
    path: String,
    headers: String,
    body_bytes: i64,
    idempotency_key: Option<String>,
    state: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
    expires_at: i64,
    next_attempt_at: i64,
    finished_at: Option<i64>,
    response_status: Option<i64>,
    response_truncated: i64,
    purged: i64,
}

impl Row {
    fn into_message(self, body: Option<Vec<u8>>) -> QueueMessage {
        QueueMessage {
            seq: self.seq,
            id: self.id,
            tenant_id: self.tenant_id,
            tenant: self.tenant,
            target: self.target,
            method: self.method,
            path: self.path,
            headers: self.headers,
            body,
            body_bytes: self.body_bytes,
            idempotency_key: self.idempotency_key,
            state: QueueState::parse(&self.state).unwrap_or(QueueState::Failed),
            attempts: self.attempts,
            last_error: self.last_error,
            created_at: self.created_at,
            expires_at: self.expires_at,
            next_attempt_at: self.next_attempt_at,
            finished_at: self.finished_at,
            response_status: self.response_status,
            response_truncated: self.response_truncated != 0,
            purged: self.purged != 0,
        }
    }
}

/// The INSERT of new messages up to its VALUES (one row, or a group: [`Store::write_group`]).
macro_rules! insert_into {
    () => {
        "INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, headers, body, \
         body_bytes, idempotency_key, state, created_at, expires_at, next_attempt_at) VALUES "
    };
}

/// Bodies up to this size go into a group commit; larger ones are inserted on their own.
const GROUP_MAX_BODY: usize = 256 * 1024;
/// Body bytes per group commit at most.
const GROUP_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Group commit for plain accepts (no idempotency key, no quota): accepts that arrive while one
/// INSERT is at the database wait and then go together in the next one, a single multi-row
/// statement that commits on its own. Each accept is answered only once its row is committed, as
/// before; what is shared is the round trip, the statement and the commit. No task runs in the
/// background: whoever holds the writer's turn writes what is waiting.
#[derive(Default)]
pub(crate) struct GroupCommit {
    pending: std::sync::Mutex<std::collections::VecDeque<Waiting>>,
    turn: tokio::sync::Mutex<()>,
}

struct Waiting {
    message: NewMessage,
    now: i64,
    done: tokio::sync::oneshot::Sender<Result<QueueMessage, Error>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

/// The tenants with messages due ([`Store::due_tenants`]); `$1` and `$2` are now.
const DUE_TENANTS: &str = "WITH RECURSIVE t(id) AS ( \
       SELECT MIN(tenant_id) FROM queue_messages \
       UNION ALL \
       SELECT (SELECT MIN(q.tenant_id) FROM queue_messages q WHERE q.tenant_id > t.id) \
       FROM t WHERE t.id IS NOT NULL) \
     SELECT t.id FROM t WHERE t.id IS NOT NULL AND ( \
       (SELECT MIN(m.next_attempt_at) FROM queue_messages m \
        WHERE m.tenant_id = t.id AND m.state = 'queued') <= $1 \
       OR (SELECT MIN(m.lease_until) FROM queue_messages m \
           WHERE m.tenant_id = t.id AND m.state = 'delivering') < $2)";

/// Claimable: the lease of a delivery ran out (its node died mid-delivery): the state, and the
/// condition on `m` with `$4` = now.
const LEASE_RAN_OUT: (&str, &str) = ("delivering", "+m.lease_until < $4");
/// Claimable: waiting and due.
const DUE: (&str, &str) = ("queued", "+m.next_attempt_at <= $4");
/// The claim of up to `$6` of tenant `$3`'s messages in `(state, due)` ([`LEASE_RAN_OUT`] or
/// [`DUE`]) for node `$2` until `$1`, oldest first; `$5` is now (expired messages are not
/// claimed).
///
/// Unordered: the claim walks the index `(tenant_id, state, seq)` in order and stops at its
/// limit, so it costs its limit, not the depth of the queue. The unary `+`s keep SQLite off the
/// index on `(state, expires_at)`, which matches every tenant's messages, and off
/// `queue_messages_due_by_tenant` `(tenant_id, next_attempt_at)`: either would have to read all of
/// the tenant's due messages and sort them by `seq` (on PostgreSQL they keep those indexes out of
/// the plan too, which is what is wanted). With one `OR` over both states in one query, each claim
/// scanned and sorted every waiting message, and the delivery rate fell with the queue's depth.
///
/// Ordered, waiting messages: only the first unfinished (waiting or delivering) message of a
/// target may go, and only while none of the target is being delivered, so the claim looks at
/// those heads alone: a skip scan over the tenant's targets and one lookup of each target's head,
/// both on the partial index `queue_messages_heads` (migration 0016), which holds unfinished
/// messages only, and a look at the tenant's deliveries in flight. Its cost is the number of
/// targets and of deliveries, not the depth of the queue. It walked all of the tenant's waiting
/// messages before, checking each for an earlier one: about 200 ms per claim at 36 000 waiting
/// messages of one target, and a backlog drained in time that grew with the square of its depth.
/// A head that is not claimable (waiting for a retry, expired) holds its target back and no
/// other. The check for a delivery in flight matters when the head is not the oldest: a failed
/// message put back by an admin ("retry now") keeps its place in the order, ahead of a message
/// of its target that may be under way; and on PostgreSQL a message can commit after a later
/// one (`seq` is taken at insert).
///
/// Ordered, deliveries whose lease ran out: as unordered, each the oldest delivery of its target
/// (two of one target, left by an older build, come back one at a time). They were in flight
/// already, and each must be claimed again even where the head is now another message, or its
/// target would wait for it for good.
fn claim_sql(backend: Backend, (state, due): (&str, &str), ordered: bool) -> String {
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    // On PostgreSQL the claimed keys are an array computed first, then their rows are updated by
    // key. As `seq IN (…)`, a generic plan (the limit unknown) joined them against the whole table
    // read sequentially.
    let (open, close) = match backend {
        Backend::Postgres => ("= ANY (ARRAY(", "))"),
        Backend::Sqlite => ("IN (", ")"),
    };
    let (which, state) = match ordered && state == DUE.0 {
        false => {
            // Ordered: only the oldest delivery of its target.
            let older = match ordered {
                true => {
                    " AND NOT EXISTS (SELECT 1 FROM queue_messages e \
                     WHERE e.tenant_id = m.tenant_id AND e.state = 'delivering' \
                     AND e.target = m.target AND e.seq < m.seq)"
                }
                false => "",
            };
            (
                format!("m.tenant_id = $3{older}"),
                format!("m.state = '{state}'"),
            )
        }
        // The heads' keys, then their rows by key. On PostgreSQL as an array computed first, so
        // that the plan cannot turn it into a join that reads every waiting message (a hash join
        // over them was chosen on a table without statistics). Each lookup is an `ORDER BY ..
        // LIMIT 1` on the index, not a `MIN`, which PostgreSQL's planner may aggregate over the
        // whole range instead. `k` names the tenant once: every parameter is used once and in
        // order (migrations/README.md).
        true => {
            let heads = format!(
                "m.seq {open}WITH RECURSIVE k(tenant) AS (SELECT $3), \
                 t(target) AS ( \
                   SELECT (SELECT q.target FROM queue_messages q \
                           WHERE q.tenant_id = (SELECT tenant FROM k) AND q.{UNFINISHED} \
                           ORDER BY q.target LIMIT 1) \
                   UNION ALL \
                   SELECT (SELECT q.target FROM queue_messages q \
                           WHERE q.tenant_id = (SELECT tenant FROM k) AND q.{UNFINISHED} \
                           AND q.target > t.target ORDER BY q.target LIMIT 1) \
                   FROM t WHERE t.target IS NOT NULL) \
                 SELECT (SELECT h.seq FROM queue_messages h \
                         WHERE h.tenant_id = (SELECT tenant FROM k) AND h.target = t.target \
                         AND h.{UNFINISHED} ORDER BY h.seq LIMIT 1) \
                 FROM t WHERE t.target IS NOT NULL AND NOT EXISTS ( \
                   SELECT 1 FROM queue_messages d WHERE d.tenant_id = (SELECT tenant FROM k) \
                   AND d.state = 'delivering' AND d.target = t.target){close}"
            );
            // Compared as an expression, so that no index on the state competes with the
            // heads' keys (SQLite chose one, and read every waiting message).
            (heads, format!("m.state || '' = '{state}'"))
        }
    };
    format!(
        "UPDATE queue_messages SET state = 'delivering', attempts = attempts + 1, \
         lease_until = $1, lease_node = $2 WHERE seq {open} \
           SELECT m.seq FROM queue_messages m WHERE {which} AND {state} \
           AND {due} AND +m.expires_at > $5 ORDER BY m.seq LIMIT $6 {lock}{close} \
         RETURNING {COLUMNS}, body"
    )
}

/// Takes the tenant's ordered-claim lock for the transaction on `conn` (PostgreSQL), if no other
/// node holds it. The transaction reads committed data whatever the server's default (each
/// statement must see the last holder's claim), and a holder that stalls in it (a frozen
/// machine) is cut by the server after 10 s, which frees the lock.
async fn take_claim_lock(conn: &mut sqlx::AnyConnection, tenant_id: &str) -> Result<bool, Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    let (_, got): (String, bool) = sqlx::query_as(
        "SELECT set_config('idle_in_transaction_session_timeout', '10s', true), \
         pg_try_advisory_xact_lock($1)",
    )
    .bind(crate::advisory_key(&["ordered queue claim", tenant_id]))
    .fetch_one(&mut *conn)
    .await?;
    Ok(got)
}

/// The condition of the partial index `queue_messages_heads`, written as there (SQLite uses a
/// partial index only for a query that repeats its condition).
const UNFINISHED: &str = "state IN ('queued', 'delivering')";

/// Outcomes per [`FinishGroup`] statement at most (nine parameters each).
const FINISH_ROWS: usize = 64;

/// Group commit for final delivery outcomes, as [`GroupCommit`] is for accepts: outcomes that
/// arrive while one UPDATE is at the database go together in the next one. Each caller is
/// answered once its own row is written, and learns whether its attempt was still current.
#[derive(Default)]
pub(crate) struct FinishGroup {
    pending: std::sync::Mutex<std::collections::VecDeque<Finishing>>,
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for FinishGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinishGroup")
    }
}

/// A final outcome waiting for its group's UPDATE.
struct Finishing {
    id: String,
    attempt: i64,
    now: i64,
    state: QueueState,
    error: Option<String>,
    response: Option<StoredResponse>,
    done: tokio::sync::oneshot::Sender<Result<bool, Error>>,
}

/// The next group from `pending`, oldest first: up to `rows` entries and [`GROUP_MAX_BYTES`] of
/// bodies (`size`), and always the first entry whatever its size.
fn take_group<W>(
    pending: &mut std::collections::VecDeque<W>,
    rows: usize,
    size: impl Fn(&W) -> usize,
) -> Vec<W> {
    let (mut taken, mut bytes) = (Vec::new(), 0);
    while let Some(w) = pending.front() {
        let n = size(w);
        if taken.len() == rows || (!taken.is_empty() && bytes + n > GROUP_MAX_BYTES) {
            break;
        }
        bytes += n;
        taken.extend(pending.pop_front());
    }
    taken
}

/// Waits for `rx`'s answer, writing what is waiting whenever it holds the writer's turn: the
/// turn's holder takes a batch (`take`) and writes it (`write`, on a task of its own, so that a
/// caller who goes away does not cancel the others' write).
async fn group_turn<T, W, F>(
    turn: &tokio::sync::Mutex<()>,
    mut rx: tokio::sync::oneshot::Receiver<Result<T, Error>>,
    take: impl Fn() -> Vec<W>,
    write: impl Fn(Vec<W>) -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let held = turn.lock().await;
        match rx.try_recv() {
            Ok(result) => return result,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                return Err(Error::Database(sqlx::Error::Protocol(
                    "queue group commit abandoned".into(),
                )))
            }
        }
        let batch = take();
        if !batch.is_empty() {
            let _ = tokio::spawn(write(batch)).await;
        }
        drop(held);
    }
}

impl Store {
    async fn enqueue_grouped(&self, message: NewMessage, now: i64) -> Result<QueueMessage, Error> {
        let (done, rx) = tokio::sync::oneshot::channel();
        let group = self.group_commit.clone();
        lock(&group.pending).push_back(Waiting { message, now, done });
        // Rows per group: 64 (13 parameters each).
        let take = || take_group(&mut lock(&group.pending), 64, |w| w.message.body.len());
        let write = |batch| {
            let store = self.clone();
            async move { store.write_group(batch).await }
        };
        group_turn(&group.turn, rx, take, write).await
    }

    /// One multi-row INSERT for `batch`; when it fails, each row on its own, so one bad row
    /// (or a statement the database refuses) fails only its own accept.
    async fn write_group(&self, batch: Vec<Waiting>) {
        if batch.is_empty() {
            return;
        }
        if batch.len() > 1 {
            let mut sql = String::from(insert_into!());
            crate::push_rows(
                &mut sql,
                self.backend,
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                batch.len(),
            );
            // Only what the database chose: the rest of each row is what was inserted. Returning
            // every column cost more than the insert itself (each value of each row converted
            // through sqlx's `Any` row).
            sql.push_str(" RETURNING seq, id");
            let mut q = sqlx::query_as::<_, (i64, String)>(&sql);
            for w in &batch {
                q = bind_message(q, &w.message, w.now);
            }
            if let Ok(rows) = q.fetch_all(&self.pool).await {
                // RETURNING's order is not promised: rows are matched by their message id.
                let mut by_id: std::collections::HashMap<String, i64> =
                    rows.into_iter().map(|(seq, id)| (id, seq)).collect();
                let mut missing = Vec::new();
                for w in batch {
                    match by_id.remove(&w.message.id) {
                        Some(seq) => {
                            let _ = w.done.send(Ok(inserted(w.message, seq, w.now)));
                        }
                        None => missing.push(w),
                    }
                }
                for w in missing {
                    self.write_one(w).await;
                }
                return;
            }
        }
        for w in batch {
            self.write_one(w).await;
        }
    }

    async fn write_one(&self, w: Waiting) {
        let row: Result<Row, sqlx::Error> = insert_message(&w.message, w.now)
            .fetch_one(&self.pool)
            .await;
        let _ = w
            .done
            .send(row.map(|r| r.into_message(None)).map_err(Error::Database));
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The INSERT of a new message, returning its row.
fn insert_message<'q>(
    m: &'q NewMessage,
    now: i64,
) -> sqlx::query::QueryAs<'q, sqlx::Any, Row, sqlx::any::AnyArguments<'q>> {
    bind_message(sqlx::query_as(INSERT_MESSAGE), m, now)
}

/// The stored row of `m`, inserted at `now` as number `seq`: the columns the insert leaves to
/// their defaults, and the values it was given.
fn inserted(m: NewMessage, seq: i64, now: i64) -> QueueMessage {
    QueueMessage {
        seq,
        body_bytes: m.body.len() as i64,
        id: m.id,
        tenant_id: m.tenant_id,
        tenant: m.tenant,
        target: m.target,
        method: m.method,
        path: m.path,
        headers: m.headers,
        body: None,
        idempotency_key: m.idempotency_key,
        state: QueueState::Queued,
        attempts: 0,
        last_error: None,
        created_at: now,
        expires_at: now.saturating_add(m.ttl_ms),
        next_attempt_at: now,
        finished_at: None,
        response_status: None,
        response_truncated: false,
        purged: false,
    }
}

/// Binds a new message's 13 values, in the order of [`INSERT_MESSAGE`]'s columns.
fn bind_message<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    m: &'q NewMessage,
    now: i64,
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    q.bind(&m.id)
        .bind(&m.tenant_id)
        .bind(&m.tenant)
        .bind(&m.target)
        .bind(&m.method)
        .bind(&m.path)
        .bind(&m.headers)
        .bind(&m.body)
        .bind(m.body.len() as i64)
        .bind(&m.idempotency_key)
        .bind(now)
        .bind(now.saturating_add(m.ttl_ms))
        .bind(now)
}

/// The columns every reader selects (and the insert returns), written once.
macro_rules! columns {
    () => {
        "seq, id, tenant_id, tenant, target, method, path, headers, body_bytes, \
         idempotency_key, state, attempts, last_error, created_at, expires_at, next_attempt_at, \
         finished_at, response_status, response_truncated, purged"
    };
}

const INSERT_MESSAGE: &str = concat!(
    insert_into!(),
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12, $13) RETURNING ",
    columns!()
);

const COLUMNS: &str = columns!();

#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    row: Row,
    body: Option<Vec<u8>>,
}

/// Status, headers, body, truncated.
type ResponseRow = (Option<i64>, Option<String>, Option<Vec<u8>>, i64);
/// Ordered, TTL, message and byte quotas.
type SettingsRow = (i64, Option<i64>, Option<i64>, Option<i64>);

/// Longest error text kept per message.
const MAX_ERROR_LEN: usize = 1000;

/// How long tombstones of purged messages are kept after the retention period (the status then
/// answers 410 rather than 404).
const TOMBSTONE_MS: i64 = 30 * 24 * 3600 * 1000;

impl Store {
    /// Stores a message in one transaction (the caller answers 202 only after this returns), or
    /// returns the live message with the same idempotency key, or refuses it over the quota.
    /// Checking a quota counts the tenant's waiting messages in the transaction; callers that
    /// accept at a high rate check against [`Store::queue_usage`] themselves and pass none.
    pub async fn enqueue(&self, m: &NewMessage, quota: QueueQuota) -> Result<Enqueued, Error> {
        let now = now_ms();
        if m.idempotency_key.is_none() && quota.max_messages.is_none() && quota.max_bytes.is_none()
        {
            // Nothing to look up first: one statement, committed on its own (one round trip
            // instead of BEGIN, INSERT, COMMIT).
            if m.body.len() > GROUP_MAX_BODY {
                let row: Row = insert_message(m, now).fetch_one(&self.pool).await?;
                return Ok(Enqueued::New(row.into_message(None)));
            }
            return self
                .enqueue_grouped(m.clone(), now)
                .await
                .map(Enqueued::New);
        }
        let mut tx = self.write_transaction().await?;
        if let Some(key) = &m.idempotency_key {
            let found: Option<Row> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM queue_messages WHERE tenant_id = $1 AND idempotency_key = $2"
            ))
            .bind(&m.tenant_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = found {
                let live = row.expires_at > now
                    && row.purged == 0
                    && row.state != QueueState::Cancelled.as_str();
                if live {
                    return Ok(Enqueued::Existing(row.into_message(None)));
                }
                // A key is free again once its message's time to live is over, or it was
                // cancelled or purged.
                sqlx::query("UPDATE queue_messages SET idempotency_key = NULL WHERE seq = $1")
                    .bind(row.seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if quota.max_messages.is_some() || quota.max_bytes.is_some() {
            let (count, bytes): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), CAST(SUM(body_bytes) AS BIGINT) FROM queue_messages \
                 WHERE tenant_id = $1 AND state IN ('queued', 'delivering')",
            )
            .bind(&m.tenant_id)
            .fetch_one(&mut *tx)
            .await?;
            let (count, bytes) = (count.max(0) as u64, bytes.unwrap_or(0).max(0) as u64);
            if quota.max_messages.is_some_and(|max| count >= max) {
                return Ok(Enqueued::TooManyMessages);
            }
            if quota
                .max_bytes
                .is_some_and(|max| bytes + m.body.len() as u64 > max)
            {
                return Ok(Enqueued::TooManyBytes);
            }
        }
        let inserted: Result<Row, sqlx::Error> = insert_message(m, now).fetch_one(&mut *tx).await;
        let row = match inserted {
            Ok(row) => row,
            Err(e) => {
                // Two requests with one key at once: the other committed first; answer with it.
                if m.idempotency_key.is_some() {
                    drop(tx);
                    let key = m.idempotency_key.as_deref();
                    if let Some(existing) = self.message_by_key(&m.tenant_id, key).await? {
                        return Ok(Enqueued::Existing(existing));
                    }
                }
                return Err(e.into());
            }
        };
        tx.commit().await?;
        Ok(Enqueued::New(row.into_message(None)))
    }

    async fn message_by_key(
        &self,
        tenant_id: &str,
        key: Option<&str>,
    ) -> Result<Option<QueueMessage>, Error> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM queue_messages WHERE tenant_id = $1 AND idempotency_key = $2"
        ))
        .bind(tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.into_message(None)))
    }

    /// Wakes the delivery loops of all nodes (`NOTIFY relay_queue`; nothing on SQLite). Sent
    /// outside the accepting transactions and coalesced by the caller: PostgreSQL commits
    /// notifying transactions one at a time.
    pub async fn notify_queue(&self) -> Result<(), Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('relay_queue', '')")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The live message with idempotency key `key` of a tenant, if any (see [`Store::enqueue`]).
    pub async fn message_with_key(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<QueueMessage>, Error> {
        let found = self.message_by_key(tenant_id, Some(key)).await?;
        let now = now_ms();
        Ok(found.filter(|m| m.expires_at > now && !m.purged && m.state != QueueState::Cancelled))
    }

    /// A tenant's waiting messages (`queued` or `delivering`) and their body bytes.
    pub async fn queue_usage(&self, tenant_id: &str) -> Result<(u64, u64), Error> {
        let (count, bytes): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), CAST(SUM(body_bytes) AS BIGINT) FROM queue_messages \
             WHERE tenant_id = $1 AND state IN ('queued', 'delivering')",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((count.max(0) as u64, bytes.unwrap_or(0).max(0) as u64))
    }

    /// A message by id (without its body).
    pub async fn message(&self, id: &str) -> Result<Option<QueueMessage>, Error> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM queue_messages WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.into_message(None)))
    }

    /// The tenants that have messages due now (waiting and due, or with an expired lease).
    ///
    /// A skip scan: the recursive part steps from one tenant id to the next on the index
    /// `(tenant_id, state, seq)`, and each tenant is checked with two lookups: its earliest retry
    /// time on the partial index `queue_messages_due_by_tenant` (migration 0017), and its
    /// deliveries in flight. It costs a few index seeks per tenant with messages in the table, not
    /// a read of every due message and a sort (the `DISTINCT` it replaces), nor of every waiting
    /// message of a tenant whose messages all wait for a retry.
    pub async fn due_tenants(&self) -> Result<Vec<String>, Error> {
        let now = now_ms();
        let rows: Vec<(String,)> = sqlx::query_as(DUE_TENANTS)
            .bind(now)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Claims up to `limit` due messages of `tenant_id` for `node` until `lease_ms` from now, in
    /// order; for an ordered tenant only the first unfinished message of each target. Each claim
    /// counts as an attempt. Messages whose time to live ran out are not claimed.
    pub async fn claim(
        &self,
        tenant_id: &str,
        node: &str,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<QueueMessage>, Error> {
        let ordered = self.queue_settings(tenant_id).await?.ordered;
        let args = (tenant_id, node, lease_ms, limit);
        if ordered && self.backend == Backend::Postgres {
            // One ordered claim of a tenant at a time, across nodes. Each statement reads the
            // heads and the deliveries in flight from its own snapshot and locks only the rows it
            // takes: two nodes claiming at once, with a message of a target committing between
            // their snapshots (a lower seq than the head the first took: an accept in progress,
            // or a retry), would each take a different message of that target. Under the lock,
            // the second claim's snapshot is taken after the first one committed. Another node
            // claiming for the tenant right now takes what is due; this one looks
            // again at its next pass, rather than wait on a lock whose holder may have stalled.
            let mut tx = self.pool.begin().await?;
            if !take_claim_lock(&mut tx, tenant_id).await? {
                return Ok(Vec::new());
            }
            // Every error ends the transaction: a lapsed delivery reclaimed by the first
            // statement must not be handed out when the second one failed and the commit rolls
            // both back.
            let claimed = self.claim_both(&mut tx, ordered, args, false).await?;
            tx.commit().await?;
            return Ok(claimed);
        }
        let mut conn = self.pool.acquire().await?;
        self.claim_both(&mut conn, ordered, args, true).await
    }

    /// Messages whose lease ran out first (their node died mid-delivery; they are older than
    /// anything still waiting), then waiting ones that are due.
    ///
    /// With `autocommit`, each statement commits on its own, so what the first one claimed is
    /// returned even when the second fails.
    async fn claim_both(
        &self,
        conn: &mut sqlx::AnyConnection,
        ordered: bool,
        (tenant_id, node, lease_ms, limit): (&str, &str, i64, u32),
        autocommit: bool,
    ) -> Result<Vec<QueueMessage>, Error> {
        let mut claimed = self
            .claim_where(
                conn,
                (LEASE_RAN_OUT, ordered),
                (tenant_id, node, lease_ms, limit),
            )
            .await?;
        let left = limit.saturating_sub(u32::try_from(claimed.len()).unwrap_or(u32::MAX));
        if left > 0 {
            match self
                .claim_where(conn, (DUE, ordered), (tenant_id, node, lease_ms, left))
                .await
            {
                Ok(due) => claimed.extend(due),
                // What the first statement claimed is leased already: it is delivered now, not
                // after its lease runs out again.
                Err(e) if autocommit && !claimed.is_empty() => {
                    tracing::debug!(error = %e, "claim of due queue messages failed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(claimed)
    }

    /// One claim over the tenant's messages in one state ([`claim_sql`]), oldest first.
    async fn claim_where(
        &self,
        conn: &mut sqlx::AnyConnection,
        (state_due, ordered): ((&str, &str), bool),
        (tenant_id, node, lease_ms, limit): (&str, &str, i64, u32),
    ) -> Result<Vec<QueueMessage>, Error> {
        let now = now_ms();
        let sql = claim_sql(self.backend, state_due, ordered);
        let mut rows: Vec<ClaimRow> = sqlx::query_as(&sql)
            .bind(now.saturating_add(lease_ms))
            .bind(node)
            .bind(tenant_id)
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        rows.sort_by_key(|r| r.row.seq);
        Ok(rows
            .into_iter()
            .map(|r| r.row.into_message(r.body))
            .collect())
    }

    /// Records how attempt `attempt` of message `id` ended; `false` when that attempt is no
    /// longer the message's current one (its lease expired and another node claimed it).
    ///
    /// Final outcomes (delivered, failed) of deliveries that end together are written together
    /// ([`FinishGroup`]): one statement and one commit for many.
    pub async fn finish_attempt(
        &self,
        id: &str,
        attempt: i64,
        how: &Finish,
    ) -> Result<bool, Error> {
        let now = now_ms();
        let cut = |e: &str| e.chars().take(MAX_ERROR_LEN).collect::<String>();
        let (state, error, response) = match how {
            Finish::Retry { error, at } => {
                let done = sqlx::query(
                    "UPDATE queue_messages SET state = 'queued', last_error = $1, next_attempt_at = $2, \
                     lease_until = NULL, lease_node = NULL \
                     WHERE id = $3 AND attempts = $4 AND state = 'delivering'",
                )
                .bind(cut(error))
                .bind(*at)
                .bind(id)
                .bind(attempt)
                .execute(&self.pool)
                .await?;
                return Ok(done.rows_affected() == 1);
            }
            Finish::Delivered(r) => (QueueState::Delivered, None, Some(r.clone())),
            Finish::Failed { error, response } => {
                (QueueState::Failed, Some(cut(error)), response.clone())
            }
        };
        let (done, rx) = tokio::sync::oneshot::channel();
        let group = self.finish_group.clone();
        lock(&group.pending).push_back(Finishing {
            id: id.to_string(),
            attempt,
            now,
            state,
            error,
            response,
            done,
        });
        group_turn(
            &group.turn,
            rx,
            || {
                take_group(&mut lock(&group.pending), FINISH_ROWS, |f| {
                    f.response.as_ref().map_or(0, |r| r.body.len())
                })
            },
            |batch| {
                let store = self.clone();
                async move { store.write_finishes(batch).await }
            },
        )
        .await
    }

    /// One UPDATE for a group of final outcomes (of one or more). No row can fail on its own
    /// (no constraint applies to an outcome), so a failure is the database's and fails the
    /// group: each attempt's lease then runs out and the message is delivered again.
    async fn write_finishes(&self, batch: Vec<Finishing>) {
        // `UPDATE … FROM (VALUES …)`: SQLite (3.33+) and PostgreSQL both name the values'
        // columns column1, column2, ….
        let mut sql = String::from(
            "UPDATE queue_messages SET state = v.column3, \
             last_error = COALESCE(v.column4, last_error), finished_at = v.column5, \
             lease_until = NULL, response_status = v.column6, response_headers = v.column7, \
             response_body = v.column8, response_truncated = v.column9, \
             body = CASE WHEN v.column3 = 'delivered' THEN NULL ELSE body END FROM (VALUES ",
        );
        crate::push_rows(
            &mut sql,
            self.backend,
            "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch.len(),
        );
        sql.push_str(
            ") AS v WHERE queue_messages.id = v.column1 AND queue_messages.attempts = v.column2 \
             AND queue_messages.state = 'delivering' \
             RETURNING queue_messages.id, queue_messages.attempts",
        );
        let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
        for f in &batch {
            let r = f.response.as_ref();
            q = q
                .bind(&f.id)
                .bind(f.attempt)
                .bind(f.state.as_str())
                .bind(f.error.as_deref())
                .bind(f.now)
                .bind(r.map(|r| i64::from(r.status)))
                .bind(r.map(|r| r.headers.as_str()))
                .bind(r.map(|r| r.body.as_slice()))
                .bind(i64::from(r.is_some_and(|r| r.truncated)));
        }
        match q.fetch_all(&self.pool).await {
            Ok(rows) => {
                // The attempts still current: their rows were updated.
                let current: std::collections::HashSet<(String, i64)> = rows.into_iter().collect();
                for f in batch {
                    let now_current = current.contains(&(f.id.clone(), f.attempt));
                    let _ = f.done.send(Ok(now_current));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for f in batch {
                    let _ = f
                        .done
                        .send(Err(Error::Database(sqlx::Error::Protocol(format!(
                            "queue outcome not written: {e}"
                        )))));
                }
            }
        }
    }

    /// Keeps attempt `attempt` of message `id` leased to its node for `lease_ms` more (a long
    /// delivery is not claimed again under it); `false` when the attempt is no longer current.
    pub async fn extend_lease(&self, id: &str, attempt: i64, lease_ms: i64) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE queue_messages SET lease_until = $1 \
             WHERE id = $2 AND attempts = $3 AND state = 'delivering'",
        )
        .bind(now_ms().saturating_add(lease_ms))
        .bind(id)
        .bind(attempt)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves waiting messages whose time to live ran out to `expired` (a delivering one only once
    /// its lease ran out too); how many.
    pub async fn expire_messages(&self) -> Result<u64, Error> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE queue_messages SET state = 'expired', finished_at = $1, \
             last_error = COALESCE(last_error, 'time to live ran out') \
             WHERE expires_at <= $2 AND (state = 'queued' \
             OR (state = 'delivering' AND lease_until < $3))",
        )
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The stored response of a message, if it has one and it is not purged.
    pub async fn message_response(&self, id: &str) -> Result<Option<StoredResponse>, Error> {
        let row: Option<ResponseRow> = sqlx::query_as(
            "SELECT response_status, response_headers, response_body, response_truncated \
             FROM queue_messages WHERE id = $1 AND purged = 0",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(status, headers, body, truncated)| {
            Some(StoredResponse {
                status: u16::try_from(status?).ok()?,
                headers: headers.unwrap_or_default(),
                body: body.unwrap_or_default(),
                truncated: truncated != 0,
            })
        }))
    }

    /// Cancels a waiting message.
    pub async fn cancel_message(&self, id: &str) -> Result<Cancelled, Error> {
        let done = sqlx::query(
            "UPDATE queue_messages SET state = 'cancelled', finished_at = $1, body = NULL \
             WHERE id = $2 AND state = 'queued'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Cancelled::Done);
        }
        Ok(match self.message(id).await? {
            Some(m) => Cancelled::Too(m.state),
            None => Cancelled::NotFound,
        })
    }

    /// A failed or expired message goes back to the queue, due now (an admin's "retry now"),
    /// with a fresh time to live of `ttl_ms`; `false` when it is not failed or expired.
    pub async fn requeue_message(&self, id: &str, ttl_ms: i64) -> Result<bool, Error> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE queue_messages SET state = 'queued', next_attempt_at = $1, expires_at = $2, \
             finished_at = NULL WHERE id = $3 AND state IN ('failed', 'expired') AND body IS NOT NULL",
        )
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drops bodies and responses of messages final for longer than `retention_ms` (keeping a
    /// tombstone, so their status answers 410), and deletes tombstones older than
    /// [`TOMBSTONE_MS`] more; how many were purged.
    pub async fn purge_messages(&self, retention_ms: i64) -> Result<u64, Error> {
        let cutoff = now_ms().saturating_sub(retention_ms);
        let done = sqlx::query(
            "UPDATE queue_messages SET purged = 1, body = NULL, response_body = NULL, \
             response_headers = NULL, headers = '' \
             WHERE purged = 0 AND finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM queue_messages WHERE purged = 1 AND finished_at < $1")
            .bind(cutoff.saturating_sub(TOMBSTONE_MS))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// A tenant's messages, newest first, optionally in one state (at most `limit`, capped at
    /// 1000).
    pub async fn messages(
        &self,
        tenant_id: &str,
        state: Option<QueueState>,
        limit: u32,
    ) -> Result<Vec<QueueMessage>, Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM queue_messages WHERE tenant_id = $1 \
             AND ($2 = '' OR state = $3) ORDER BY seq DESC LIMIT $4"
        ))
        .bind(tenant_id)
        .bind(state.map_or("", QueueState::as_str))
        .bind(state.map_or("", QueueState::as_str))
        .bind(i64::from(limit.min(1000)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.into_message(None)).collect())
    }

    /// Messages by state, for one tenant or all, and the oldest waiting one.
    pub async fn queue_counts(&self, tenant_id: Option<&str>) -> Result<QueueCounts, Error> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT state, COUNT(*), MIN(created_at) FROM queue_messages \
             WHERE ($1 = '' OR tenant_id = $2) GROUP BY state",
        )
        .bind(tenant_id.unwrap_or(""))
        .bind(tenant_id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut counts = QueueCounts::default();
        for (state, n, oldest) in rows {
            if let Some(st) = QueueState::parse(&state) {
                counts.by_state.insert(st, n.max(0) as u64);
                if st == QueueState::Queued {
                    counts.oldest_queued_at = oldest;
                }
            }
        }
        Ok(counts)
    }

    /// A tenant's queue settings (defaults when it has none).
    pub async fn queue_settings(&self, tenant_id: &str) -> Result<QueueSettings, Error> {
        let row: Option<SettingsRow> = sqlx::query_as(
            "SELECT ordered, ttl_ms, max_messages, max_bytes FROM tenant_queue_settings \
             WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or(
            QueueSettings::default(),
            |(ordered, ttl_ms, max_messages, max_bytes)| QueueSettings {
                ordered: ordered != 0,
                ttl_ms,
                max_messages,
                max_bytes,
            },
        ))
    }

    /// Replaces a tenant's queue settings.
    pub async fn set_queue_settings(
        &self,
        tenant_id: &str,
        s: &QueueSettings,
    ) -> Result<(), Error> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("DELETE FROM tenant_queue_settings WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tenant_queue_settings (tenant_id, ordered, ttl_ms, max_messages, max_bytes) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant_id)
        .bind(i64::from(s.ordered))
        .bind(s.ttl_ms)
        .bind(s.max_messages)
        .bind(s.max_bytes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// How many bytes of a request or response body [`Store::message_preview`] reads.
pub const PREVIEW_BYTES: usize = 1024;

/// What an operator sees of a message besides its status: the stored request headers and the
/// start of its body, and the same of the stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePreview {
    /// The encoded request headers (empty once purged).
    pub headers: String,
    /// The first [`PREVIEW_BYTES`] of the request body; `None` once it is no longer stored
    /// (dropped when the message became final, or purged).
    pub body: Option<Vec<u8>>,
    /// The stored response's encoded headers.
    pub response_headers: Option<String>,
    /// The first [`PREVIEW_BYTES`] of the stored response body.
    pub response_body: Option<Vec<u8>>,
}

/// What [`Store::discard_message`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discarded {
    /// It was waiting and is now `cancelled` (its status tells the visitor so).
    Cancelled,
    /// It was `failed`, `expired` or `cancelled` and is deleted with its body and response (its
    /// status then answers 404, and its idempotency key is free).
    Deleted,
    /// No such message.
    NotFound,
    /// It is being delivered or was delivered: in this state, nothing done.
    Too(QueueState),
}

/// A body preview as people read it: text when it is UTF-8 (a character cut at the preview's
/// end is dropped), else base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPreview {
    /// Standard base64 of the bytes.
    Base64(String),
    /// UTF-8 text.
    Text(String),
}

impl BodyPreview {
    /// The preview of `bytes` (the start of a body, possibly cut mid-character).
    pub fn of(bytes: &[u8]) -> BodyPreview {
        use base64::Engine;
        match std::str::from_utf8(bytes) {
            Ok(s) => BodyPreview::Text(s.to_string()),
            // Cut inside a character at the end (at most 3 bytes of it): the rest is text.
            Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => {
                BodyPreview::Text(String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned())
            }
            Err(_) => BodyPreview::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }
}

/// Headers, body start, response headers, response body start.
type PreviewRow = (String, Option<Vec<u8>>, Option<String>, Option<Vec<u8>>);

impl Store {
    /// A message's stored headers and the first [`PREVIEW_BYTES`] of its body and of its stored
    /// response, for operators; `None` when there is no such message.
    pub async fn message_preview(&self, id: &str) -> Result<Option<MessagePreview>, Error> {
        // substr counts bytes on SQLite BLOBs and PostgreSQL bytea alike.
        let n = PREVIEW_BYTES as i32;
        let row: Option<PreviewRow> = sqlx::query_as(
            "SELECT headers, substr(body, 1, $1), response_headers, substr(response_body, 1, $2) \
             FROM queue_messages WHERE id = $3",
        )
        .bind(n)
        .bind(n)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(headers, body, response_headers, response_body)| MessagePreview {
                headers,
                body,
                response_headers,
                response_body,
            },
        ))
    }

    /// An operator's discard: a waiting (`queued`) message is cancelled; a `failed`, `expired` or
    /// `cancelled` one is deleted. One being delivered or delivered is left alone.
    pub async fn discard_message(&self, id: &str) -> Result<Discarded, Error> {
        match self.cancel_message(id).await? {
            Cancelled::Done => return Ok(Discarded::Cancelled),
            Cancelled::NotFound => return Ok(Discarded::NotFound),
            Cancelled::Too(QueueState::Delivering | QueueState::Delivered) => {}
            Cancelled::Too(_) => {
                let done = sqlx::query(
                    "DELETE FROM queue_messages \
                     WHERE id = $1 AND state IN ('failed', 'expired', 'cancelled')",
                )
                .bind(id)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 1 {
                    return Ok(Discarded::Deleted);
                }
            }
        }
        // Changed under us (claimed, requeued) or delivering/delivered: say where it is now.
        Ok(match self.message(id).await? {
            Some(m) => Discarded::Too(m.state),
            None => Discarded::NotFound,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::{pg_filled, pg_plans_both_ways, plan_count, plan_most, sqlite_plan};

    fn message(id: &str, body: &[u8]) -> NewMessage {
        NewMessage {
            id: id.into(),
            tenant_id: "t1".into(),
            tenant: "acme".into(),
            target: "app".into(),
            method: "POST".into(),
            path: "/orders".into(),
            headers: "[]".into(),
            body: body.to_vec(),
            idempotency_key: None,
            ttl_ms: 60_000,
        }
    }

    async fn previews_and_discards(store: Store) {
        let none = QueueQuota::default();
        let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        for (id, body) in [("a", &big[..]), ("b", b"short"), ("c", b"x"), ("d", b"y")] {
            store.enqueue(&message(id, body), none).await.unwrap();
        }
        // The preview: the first KiB of the body, byte for byte.
        let p = store.message_preview("a").await.unwrap().unwrap();
        assert_eq!(p.body.as_deref(), Some(&big[..PREVIEW_BYTES]));
        assert_eq!((p.headers.as_str(), p.response_body), ("[]", None));
        assert!(store.message_preview("nope").await.unwrap().is_none());

        // b fails with a response; c is delivered; d stays queued.
        store.claim("t1", "n1", 60_000, 10).await.unwrap();
        let response = StoredResponse {
            status: 400,
            headers: "[]".into(),
            body: big.clone(),
            truncated: false,
        };
        let failed = Finish::Failed {
            error: "400".into(),
            response: Some(response.clone()),
        };
        assert!(store.finish_attempt("b", 1, &failed).await.unwrap());
        let delivered = Finish::Delivered(response);
        assert!(store.finish_attempt("c", 1, &delivered).await.unwrap());
        let retry = Finish::Retry {
            error: "no connector".into(),
            at: 0,
        };
        assert!(store.finish_attempt("d", 1, &retry).await.unwrap());
        let p = store.message_preview("b").await.unwrap().unwrap();
        assert_eq!(p.response_body.as_deref(), Some(&big[..PREVIEW_BYTES]));
        assert_eq!(p.response_headers.as_deref(), Some("[]"));

        // Discard: queued → cancelled, then deleted; failed → deleted; delivered → left alone.
        assert_eq!(
            store.discard_message("d").await.unwrap(),
            Discarded::Cancelled
        );
        assert_eq!(
            store.discard_message("d").await.unwrap(),
            Discarded::Deleted
        );
        assert!(store.message("d").await.unwrap().is_none());
        assert_eq!(
            store.discard_message("b").await.unwrap(),
            Discarded::Deleted
        );
        assert_eq!(
            store.discard_message("c").await.unwrap(),
            Discarded::Too(QueueState::Delivered)
        );
        assert_eq!(
            store.discard_message("nope").await.unwrap(),
            Discarded::NotFound
        );
    }

    #[tokio::test]
    async fn previews_and_discards_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        previews_and_discards(Store::connect(&url).await.unwrap()).await;
    }

    #[tokio::test]
    async fn previews_and_discards_on_postgres() {
        let cluster = testkit::PgCluster::start();
        previews_and_discards(Store::connect(&cluster.url()).await.unwrap()).await;
    }

    /// Whether a SQLite plan reads the messages whole (a `SCAN` of the table under any of the
    /// queries' names for it) instead of seeking in them.
    fn scans_messages(plan: &[String]) -> bool {
        let scans = ["SCAN queue_messages", "SCAN m", "SCAN q", "SCAN h"];
        plan.iter().any(|d| scans.iter().any(|s| d.starts_with(s)))
    }

    /// An unordered claim walks one tenant's messages in order on `(tenant_id, state, seq)` and
    /// stops at its limit: no sort, and no index over every tenant's messages (the cost would grow
    /// with the queue's depth).
    #[tokio::test]
    async fn unordered_claims_walk_the_tenants_messages_in_order() {
        // An ordered tenant's deliveries whose lease ran out are claimed the same way.
        for (state_due, ordered) in [(LEASE_RAN_OUT, false), (DUE, false), (LEASE_RAN_OUT, true)] {
            let plan = sqlite_plan(&claim_sql(Backend::Sqlite, state_due, ordered), 6).await;
            let what = format!("{state_due:?}: {plan:?}");
            assert!(
                plan.iter()
                    .any(|d| d.starts_with("SEARCH m USING INDEX queue_messages_tenant")),
                "{what}"
            );
            // Ordered: whether an older delivery of the target is in flight, one lookup.
            assert_eq!(
                plan.iter().any(|d| d.starts_with("SEARCH e USING")
                    && d.contains(
                        "INDEX queue_messages_in_flight (tenant_id=? AND target=? AND seq<?)"
                    )),
                ordered,
                "{what}"
            );
            assert!(
                !plan
                    .iter()
                    .any(|d| d.starts_with("SCAN ") || d.contains("TEMP B-TREE")),
                "{what}"
            );
        }
    }

    /// An ordered claim reads each target's head alone: the targets by a skip scan and each head
    /// by one lookup, on the partial index of unfinished messages; the head's own row by its key.
    /// Nothing walks the tenant's waiting messages (that cost grew with the queue's depth); the
    /// only sort is of the heads, one per target.
    #[tokio::test]
    async fn ordered_claims_read_only_each_targets_head() {
        let plan = sqlite_plan(&claim_sql(Backend::Sqlite, DUE, true), 6).await;
        let what = format!("{plan:?}");
        // The tenant's deliveries in flight, on their own index.
        assert!(
            plan.iter().any(|d| d.starts_with("SEARCH d USING")
                && d.contains("INDEX queue_messages_in_flight (tenant_id=? AND target=?)")),
            "{what}"
        );
        let heads = plan
            .iter()
            .filter(|d| d.contains("INDEX queue_messages_heads ("))
            .count();
        // The first target, each next target, and each target's head.
        assert_eq!(heads, 3, "{what}");
        assert!(
            plan.iter()
                .any(|d| d.starts_with("SEARCH m USING INTEGER PRIMARY KEY")),
            "{what}"
        );
        assert!(!scans_messages(&plan), "{what}");
    }

    /// On PostgreSQL too the ordered claim reads the heads by key, on a table whose statistics
    /// were never gathered (the case that made the planner read every waiting message through a
    /// hash join): the partial index finds the heads, the primary key their rows, and no step
    /// scans the messages.
    #[tokio::test]
    async fn ordered_claims_on_postgres_read_only_each_targets_head() {
        let (_cluster, store) = pg_filled("queue_messages", &[
            "INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, headers, \
             body_bytes, state, created_at, expires_at, next_attempt_at) \
             SELECT 'm' || i, 't1', 'acme', 'app' || (i % 3), 'POST', '/', '[]', 0, 'queued', \
             0, 9000000000000, 0 FROM generate_series(1, 3000) AS i",
            // Deliveries in flight: one target held back, and the in-flight index not empty.
            "UPDATE queue_messages SET state = 'delivering', lease_until = 9000000000000 \
             WHERE id IN ('m3', 'm6')",
        ])
        .await;
        let claim = claim_sql(Backend::Postgres, DUE, true);
        let args = format!("{}, 'n1', 't1', 1, 1, 16", i64::MAX / 2);
        for (what, plan) in pg_plans_both_ways(&store, "queue_messages", &claim, &args).await {
            let what = format!("{what}:\n{}", plan.join("\n"));
            let count = |s: &str| plan_count(&plan, s);
            // The first target, each next target, and each target's head.
            assert_eq!(
                count("Index Only Scan using queue_messages_heads"),
                3,
                "{what}"
            );
            // The heads' rows, then the claimed rows, by key (an index scan or a bitmap of keys).
            assert_eq!(count("Index Cond: (seq = ANY ("), 2, "{what}");
            // The tenant's deliveries in flight, by an index that holds them by state
            // (with statistics the planner may take either).
            let deliveries = count("Scan using queue_messages_in_flight on queue_messages d");
            let by_state = count("Scan using queue_messages_tenant on queue_messages d");
            assert_eq!(deliveries + by_state, 1, "{what}");
            assert_eq!(count("queue_messages_tenant"), by_state, "{what}");
            // Nothing read in bulk, nor read and thrown away (3,000 messages are waiting).
            assert!(plan_most(&plan, "Rows Removed by Filter: ") <= 10, "{what}");
            assert!(plan_most(&plan, "actual rows=") <= 10, "{what}");
            for never in ["Seq Scan", "Hash Join", "Merge Join", "Semi Join"] {
                assert_eq!(count(never), 0, "{never}: {what}");
            }
        }
    }

    /// On PostgreSQL an unordered claim walks the tenant's messages in order and stops at its
    /// limit too, in the generic plan as well (where the limit is not known): 3,000 messages due,
    /// 16 read.
    #[tokio::test]
    async fn unordered_claims_on_postgres_stop_at_their_limit() {
        let (_cluster, store) = pg_filled("queue_messages", &[
            "INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, headers, \
             body_bytes, state, created_at, expires_at, next_attempt_at, lease_until) \
             SELECT 'm' || i, 't1', 'acme', 'app', 'POST', '/', '[]', 0, \
             CASE WHEN i % 2 = 0 THEN 'queued' ELSE 'delivering' END, 0, 9000000000000, 0, 0 \
             FROM generate_series(1, 6000) AS i",
        ])
        .await;
        for state_due in [DUE, LEASE_RAN_OUT] {
            let claim = claim_sql(Backend::Postgres, state_due, false);
            let args = format!("{}, 'n1', 't1', 1, 1, 16", i64::MAX / 2);
            for (what, plan) in pg_plans_both_ways(&store, "queue_messages", &claim, &args).await {
                let what = format!("{state_due:?}, {what}:\n{}", plan.join("\n"));
                // In seq order, on the tenant's index or (with statistics that show one tenant)
                // on the primary key, skipping the other state's rows in between; then the
                // claimed rows by key. (An index counts the row versions that the earlier runs,
                // rolled back, left behind.)
                assert_eq!(plan_count(&plan, "Index Cond: (seq = ANY ("), 1, "{what}");
                assert!(plan_most(&plan, "actual rows=") <= 16 * 8, "{what}");
                assert!(
                    plan_most(&plan, "Rows Removed by Filter: ") <= 16 * 8,
                    "{what}"
                );
                for never in ["Seq Scan", "Sort", "Hash Join", "Semi Join"] {
                    assert_eq!(plan_count(&plan, never), 0, "{never}: {what}");
                }
            }
        }
    }

    /// On PostgreSQL too, the scan for due tenants checks a tenant whose waiting messages all
    /// wait for a retry with one seek: 3,000 of them are not read through, with or without
    /// statistics, in either plan (an `EXISTS` form was turned into a hash of every waiting
    /// message in the generic plan).
    #[tokio::test]
    async fn due_tenants_on_postgres_do_not_read_messages_waiting_for_a_retry() {
        let (_cluster, store) = pg_filled("queue_messages", &[
            // t1: 3,000 waiting for a retry; t2: one due.
            "INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, headers, \
             body_bytes, state, created_at, expires_at, next_attempt_at) \
             SELECT 'm' || i, CASE WHEN i = 0 THEN 't2' ELSE 't1' END, 'acme', 'app', 'POST', \
             '/', '[]', 0, 'queued', 0, 9000000000000, CASE WHEN i = 0 THEN 0 ELSE 8000000000000 \
             END FROM generate_series(0, 3000) AS i",
        ])
        .await;
        assert_eq!(store.due_tenants().await.unwrap(), ["t2"]);
        for (what, plan) in
            pg_plans_both_ways(&store, "queue_messages", DUE_TENANTS, "1000, 1000").await
        {
            let what = format!("{what}:\n{}", plan.join("\n"));
            let index = "using queue_messages_due_by_tenant on queue_messages m";
            assert!(plan_count(&plan, index) > 0, "{what}");
            assert!(plan_most(&plan, "Rows Removed by Filter: ") <= 10, "{what}");
            assert!(plan_most(&plan, "actual rows=") <= 10, "{what}");
            assert_eq!(plan_count(&plan, "Seq Scan"), 0, "{what}");
        }
        assert_eq!(store.due_tenants().await.unwrap(), ["t2"]);
    }

    /// On PostgreSQL the claims of one ordered tenant take turns across nodes. The race they
    /// close: message A of a target is being accepted (inserted, not committed) when B, after it,
    /// commits; node 1 claims B; A commits; node 2 claims while node 1 has not committed. Node 2
    /// saw A as the head, and no delivery in flight, and took it: two in flight on one target.
    /// Now node 2 finds the tenant's lock taken and claims nothing, and once node 1 has
    /// committed it sees B in flight.
    #[tokio::test]
    async fn ordered_claims_on_postgres_take_turns() {
        let cluster = testkit::PgCluster::start();
        let store = Store::connect(&cluster.url()).await.unwrap();
        let ordered = QueueSettings {
            ordered: true,
            ..Default::default()
        };
        store.set_queue_settings("t1", &ordered).await.unwrap();
        let insert = |id: &'static str, tenant_id: &'static str| {
            sqlx::query(
                "INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, \
                 headers, body, body_bytes, state, created_at, expires_at, next_attempt_at) \
                 VALUES ($1, $2, 'acme', 'app', 'POST', '/', '[]', '', 0, 'queued', 0, \
                 9000000000000, 0)",
            )
            .bind(id)
            .bind(tenant_id)
        };
        let ids =
            |claimed: Vec<QueueMessage>| claimed.into_iter().map(|m| m.id).collect::<Vec<_>>();
        let mut accepting_a = store.pool.begin().await.unwrap();
        insert("a", "t1").execute(&mut *accepting_a).await.unwrap();
        insert("b", "t1").execute(&store.pool).await.unwrap();
        // Node 1 claims B (A is not committed yet) and has not committed.
        let mut node1 = store.pool.begin().await.unwrap();
        assert!(take_claim_lock(&mut node1, "t1").await.unwrap());
        let args = ("t1", "n1", 60_000, 10);
        let took = store
            .claim_both(&mut node1, true, args, false)
            .await
            .unwrap();
        assert_eq!(ids(took), ["b"]);
        accepting_a.commit().await.unwrap();
        let node2 = || store.claim("t1", "n2", 60_000, 10);
        // Node 2, meanwhile: nothing.
        assert!(node2().await.unwrap().is_empty());
        node1.commit().await.unwrap();
        // And after node 1's commit: B is in flight, so nothing either.
        assert!(node2().await.unwrap().is_empty());
        // An unordered tenant's claim takes no such lock.
        insert("c", "t2").execute(&store.pool).await.unwrap();
        let mut other = store.pool.begin().await.unwrap();
        assert!(take_claim_lock(&mut other, "t2").await.unwrap());
        let took = store.claim("t2", "n2", 60_000, 10).await.unwrap();
        assert_eq!(ids(took), ["c"]);
        other.rollback().await.unwrap();
    }

    /// Which tenants have messages due is a skip scan over the tenants: no read of the whole
    /// table or of every due message, and no sort. A tenant's waiting messages are checked by
    /// their earliest retry time, the first entry of its range of the index (the plan does not
    /// show that `MIN` reads one entry: see the next test).
    #[tokio::test]
    async fn due_tenants_seek_from_tenant_to_tenant() {
        let plan = sqlite_plan(DUE_TENANTS, 2).await;
        let seeks = plan
            .iter()
            .filter(|d| d.starts_with("SEARCH ") && d.contains("queue_messages_tenant"))
            .count();
        assert_eq!(seeks, 3, "{plan:?}");
        assert!(
            plan.iter()
                .any(|d| d
                    == "SEARCH m USING COVERING INDEX queue_messages_due_by_tenant (tenant_id=?)"),
            "{plan:?}"
        );
        assert!(!scans_messages(&plan), "{plan:?}");
        assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// On SQLite the scan for due tenants costs as many steps of SQLite's virtual machine with
    /// 3,000 messages waiting for a retry as with 30: `MIN` reads one entry of the tenant's range
    /// (36,000 such messages took 2.3–3.4 ms per scan when they were read through, 0.1 ms now).
    #[tokio::test]
    async fn due_tenants_on_sqlite_read_no_message_waiting_for_a_retry() {
        let mut steps = Vec::new();
        for waiting in [30, 3000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("relay.db");
            let store = Store::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
                 INSERT INTO queue_messages (id, tenant_id, tenant, target, method, path, \
                 headers, body_bytes, state, created_at, expires_at, next_attempt_at) \
                 SELECT 'm' || i, 't1', 'acme', 'app', 'POST', '/', '[]', 0, 'queued', 0, \
                 9000000000000, 8000000000000 FROM n",
            )
            .bind(waiting)
            .execute(&store.pool)
            .await
            .unwrap();
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut scan = conn.prepare(DUE_TENANTS).unwrap();
            let due = scan.query_map((1000_i64, 1000_i64), |_| Ok(())).unwrap();
            assert_eq!(due.count(), 0);
            steps.push(scan.get_status(rusqlite::StatementStatus::VmStep));
        }
        assert_eq!(steps[0], steps[1], "{steps:?}");
    }

    #[test]
    fn body_previews_are_text_unless_they_are_not_utf8() {
        assert_eq!(BodyPreview::of(b"hi"), BodyPreview::Text("hi".into()));
        // "é" cut after its first byte: the text before it.
        assert_eq!(
            BodyPreview::of(&[b'a', 0xc3]),
            BodyPreview::Text("a".into())
        );
        assert_eq!(
            BodyPreview::of(&[0xff, 0xfe]),
            BodyPreview::Base64("//4=".into())
        );
    }
}
