//! The audit write path: one record per visitor request, queued without waiting and inserted in
//! batches by a background task, so a slow or unreachable store never delays a request.
//!
//! The queue is bounded (`audit.queue`): when it is full, or a batch cannot be written, the
//! records are dropped and counted (`relay_audit_dropped_total`), never retried into memory.
//! A purge task deletes records older than `audit.retention`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_store::{now_ms, AuditRecord, Store};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Records per insert transaction.
const BATCH: usize = 500;
/// How long a partial batch may wait for more records.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// How often the retention purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// A new request id: a UUIDv7 in 32 lowercase hex digits. Its first 48 bits are the time in ms,
/// so ids sort by time and an id's record is found through the audit's time index. The 74
/// random bits come from the thread's CSPRNG (`rand`'s, seeded from the operating system and
/// reseeded by it): `Uuid::now_v7` made a `getrandom` system call for every id, 1.3 system
/// calls per request with the ids of queue deliveries and answers made by the ingress.
pub(crate) fn request_id() -> String {
    let ms = u64::try_from(now_ms()).unwrap_or(0);
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand::random()).into_uuid();
    let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
    id.simple().encode_lower(&mut hex).to_owned()
}

/// What the proxy knows about a request when it arrives; completed into an [`AuditRecord`].
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) request_id: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) visitor: String,
    pub(crate) tenant: String,
    pub(crate) target: String,
    pub(crate) session_id: String,
    /// The node holding the session, when the request was forwarded to another node.
    pub(crate) session_node: Option<String>,
    /// The access-policy rule that refused the request (`ip-deny@tenant`, …); a refusal's
    /// outcome then reads `policy:{rule}`.
    pub(crate) policy: Option<String>,
    /// Request body bytes, counted by the upload pump.
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) started: Instant,
    pub(crate) created_at: i64,
}

/// `s` cut to at most `chars` characters, without collecting it char by char: a path shorter in
/// bytes than the limit (nearly every one) is copied as it is.
pub(crate) fn truncated(s: &str, chars: usize) -> String {
    if s.len() <= chars {
        return s.to_string();
    }
    match s.char_indices().nth(chars) {
        Some((end, _)) => s[..end].to_string(),
        None => s.to_string(),
    }
}

impl Draft {
    pub(crate) fn new(request_id: String, method: &str, path: &str, visitor: String) -> Draft {
        Draft {
            request_id,
            method: method.to_string(),
            // Never the query string: it often carries secrets.
            path: truncated(path, 2048),
            visitor,
            tenant: String::new(),
            target: String::new(),
            session_id: String::new(),
            session_node: None,
            policy: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            created_at: now_ms(),
        }
    }

    /// The finished record.
    pub(crate) fn finish(
        self,
        status: u16,
        outcome: Outcome,
        bytes_out: u64,
        node: &str,
    ) -> AuditRecord {
        AuditRecord {
            request_id: self.request_id,
            tenant: self.tenant,
            target: self.target,
            method: self.method,
            path: self.path,
            status: i64::from(status),
            outcome: match self.policy {
                Some(rule) if outcome == Outcome::Refused => format!("policy:{rule}"),
                _ => outcome.as_str().to_string(),
            },
            bytes_in: i64::try_from(self.bytes_in.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            bytes_out: i64::try_from(bytes_out).unwrap_or(i64::MAX),
            duration_ms: i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
            visitor: self.visitor,
            session_id: self.session_id,
            relay_node: node.to_string(),
            session_node: self.session_node,
            created_at: self.created_at,
        }
    }
}

/// How a request ended, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    VisitorAborted,
    BackendError,
    Timeout,
    Refused,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::VisitorAborted => "visitor-aborted",
            Outcome::BackendError => "backend-error",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
        }
    }

    /// The outcome of a response the relay answered itself (no body streamed).
    pub(crate) fn of_status(status: u16) -> Outcome {
        match status {
            100..=399 => Outcome::Ok,
            408 | 504 => Outcome::Timeout,
            502 => Outcome::BackendError,
            _ => Outcome::Refused,
        }
    }
}

/// The sending side, held by the relay; cheap to use from any request task.
#[derive(Debug)]
pub(crate) struct AuditLog {
    tx: Option<mpsc::Sender<AuditRecord>>,
    /// Wakes the writer early: a whole batch is queued.
    full: Arc<Notify>,
    metrics: Arc<Metrics>,
    node: String,
}

impl AuditLog {
    /// A log that records nothing (audit disabled).
    pub(crate) fn disabled(metrics: Arc<Metrics>, node: String) -> AuditLog {
        AuditLog {
            tx: None,
            full: Arc::default(),
            metrics,
            node,
        }
    }

    /// Starts the writer and purge tasks; they end when `stop` is cancelled (after flushing what
    /// is queued, bounded by the store's own timeouts).
    pub(crate) fn start(
        store: Store,
        metrics: Arc<Metrics>,
        node: String,
        queue: usize,
        retention: Duration,
        stop: CancellationToken,
    ) -> (AuditLog, tokio::task::JoinHandle<()>) {
        tokio::spawn(purge(store.clone(), retention, stop.clone()));
        AuditLog::with_writer(store, (metrics, node), (queue, BATCH_WAIT), stop)
    }

    /// The log and its writer task, which lets a batch fill for up to `wait`.
    fn with_writer(
        store: Store,
        (metrics, node): (Arc<Metrics>, String),
        (queue, wait): (usize, Duration),
        stop: CancellationToken,
    ) -> (AuditLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let full = Arc::new(Notify::new());
        let writer = tokio::spawn(write(
            store,
            (rx, full.clone(), wait),
            metrics.clone(),
            stop,
        ));
        let log = AuditLog {
            tx: Some(tx),
            full,
            metrics,
            node,
        };
        (log, writer)
    }

    /// Queues a finished request; never waits.
    pub(crate) fn record(&self, draft: Draft, status: u16, outcome: Outcome, bytes_out: u64) {
        let Some(tx) = &self.tx else { return };
        let record = draft.finish(status, outcome, bytes_out, &self.node);
        if tx.try_send(record).is_err() {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
        // The writer sleeps while a batch fills; a whole batch (or half the queue, when that is
        // less) wakes it before its time, so the queue does not fill at any request rate the
        // store keeps up with.
        let queued = tx.max_capacity() - tx.capacity();
        if queued >= BATCH.min(tx.max_capacity() / 2).max(1) {
            self.full.notify_one();
        }
    }
}

async fn write(
    store: Store,
    (mut rx, full, wait): (mpsc::Receiver<AuditRecord>, Arc<Notify>, Duration),
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_warning: Option<Instant> = None;
    loop {
        // Why select: wait for the first record of a batch, or for shutdown (then drain).
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = stop.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        batch.push(first);
        // Let the batch fill, then take it whole: one transaction per many records, and no
        // wake-up of this task per record (waiting on the queue record by record re-armed a
        // timer and woke this task for each one).
        // Why select: the batch's time is up, a whole batch is queued, or shutdown (write now).
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = full.notified() => {}
            () = stop.cancelled() => {}
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let n = batch.len();
        match store
            .insert_audit(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
            .await
        {
            Ok(()) => {
                metrics.audit_written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.audit_dropped.fetch_add(n as u64, Ordering::Relaxed);
                // One warning per minute at most: an outage must not flood the log.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warn!(error = %e, dropped = n, "audit batch not written; records dropped");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
    debug!("audit writer stopped");
}

async fn purge(store: Store, retention: Duration, stop: CancellationToken) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        // Why select: the purge waits an hour between runs; shutdown must not.
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        let before =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match store.purge_audit(before).await {
            Ok(0) => {}
            Ok(n) => debug!(deleted = n, "audit records past retention purged"),
            Err(e) => warn!(error = %e, "audit purge failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_time_ordered_version_7_uuids() {
        let before = u64::try_from(now_ms()).unwrap();
        let ids: Vec<String> = (0..1000).map(|_| request_id()).collect();
        let after = u64::try_from(now_ms()).unwrap();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&ms),
                "{id}: {ms} not in {before}..={after}"
            );
        }
        // The random part differs from id to id, not only a counter's low bits.
        let tails: std::collections::HashSet<&str> = ids.iter().map(|id| &id[20..]).collect();
        assert_eq!(tails.len(), ids.len());
    }

    /// A log whose writer waits `wait` for a batch to fill, on a fresh SQLite store.
    async fn log(
        queue: usize,
        wait: Duration,
    ) -> (
        tempfile::TempDir,
        Store,
        AuditLog,
        tokio::task::JoinHandle<()>,
        CancellationToken,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let store = Store::connect(&url).await.unwrap();
        let stop = CancellationToken::new();
        let (log, writer) = AuditLog::with_writer(
            store.clone(),
            (Arc::default(), "n1".into()),
            (queue, wait),
            stop.clone(),
        );
        (dir, store, log, writer, stop)
    }

    fn send(log: &AuditLog, n: usize) {
        for i in 0..n {
            let draft = Draft::new(format!("r{i}"), "GET", "/", "127.0.0.1".into());
            log.record(draft, 200, Outcome::Ok, 0);
        }
    }

    async fn written(store: &Store, n: usize) -> bool {
        for _ in 0..100 {
            if store.audit(None, 1000).await.unwrap().len() == n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The writer waits for a batch to fill without a wake-up per record, so a queue that holds
    /// a batch's worth must wake it before its time: here the wait is a minute, and half the
    /// queue is written within seconds.
    #[tokio::test]
    async fn half_a_queue_wakes_the_writer_early() {
        let (_dir, store, log, _writer, _stop) = log(10, Duration::from_secs(60)).await;
        send(&log, 4);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.audit(None, 1000).await.unwrap().is_empty(),
            "a partial batch waits"
        );
        // The writer holds the first record; five more are half the queue.
        send(&log, 2);
        assert!(
            written(&store, 6).await,
            "half the queue was not written early"
        );
        assert_eq!(log.metrics.audit_dropped.load(Ordering::Relaxed), 0);
    }

    /// Shutdown writes what is queued at once, however long the batch would have waited.
    #[tokio::test]
    async fn shutdown_writes_what_is_queued() {
        let (_dir, store, log, writer, stop) = log(1000, Duration::from_secs(60)).await;
        send(&log, 3);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.audit(None, 1000).await.unwrap().len(), 3);
        assert_eq!(log.metrics.audit_written.load(Ordering::Relaxed), 3);
    }
}
