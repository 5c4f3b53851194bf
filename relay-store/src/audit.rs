//! The request audit log: one row per visitor request, inserted in batches by the relay's audit
//! writer (never on the request path), read by admins, purged by retention.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::{Backend, Error, Store};

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The id visitors see in `x-relay-request-id`.
    pub request_id: String,
    /// Tenant name (empty when the request matched no tenant).
    pub tenant: String,
    /// Target name (empty when unknown).
    pub target: String,
    /// HTTP method.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Status sent to the visitor.
    pub status: i64,
    /// `ok`, `visitor-aborted`, `backend-error`, `timeout` or `refused`.
    pub outcome: String,
    /// Request body bytes received.
    pub bytes_in: i64,
    /// Response body bytes sent.
    pub bytes_out: i64,
    /// From arrival to the end of the response, in milliseconds.
    pub duration_ms: i64,
    /// The visitor's address.
    pub visitor: String,
    /// The session that carried it (empty when none).
    pub session_id: String,
    /// The relay node the visitor reached.
    pub relay_node: String,
    /// The node holding the session that served it, when the request was forwarded there.
    pub session_node: Option<String>,
    /// Arrival time, ms since the epoch.
    pub created_at: i64,
}

/// Which records to read, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this tenant (canonicalised to lowercase).
    pub tenant: Option<String>,
    /// Only statuses in `lo..=hi` (a class like 5xx is `500..=599`).
    pub status: Option<(i64, i64)>,
    /// Only records that arrived at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Only records that arrived before this time (ms since the epoch).
    pub until: Option<i64>,
    /// At most this many (capped at 1000).
    pub limit: u32,
    /// Skip this many (paging).
    pub offset: u64,
}

/// Requests and errors in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteStats {
    /// The minute's start, ms since the epoch.
    pub minute: i64,
    /// Requests that arrived in it.
    pub requests: i64,
    /// Of those, answered with a 5xx status.
    pub errors: i64,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    request_id: String,
    tenant: String,
    target: String,
    method: String,
    path: String,
    status: i64,
    outcome: String,
    bytes_in: i64,
    bytes_out: i64,
    duration_ms: i64,
    visitor: String,
    session_id: String,
    relay_node: String,
    session_node: Option<String>,
    created_at: i64,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> AuditRecord {
        AuditRecord {
            request_id: r.request_id,
            tenant: r.tenant,
            target: r.target,
            method: r.method,
            path: r.path,
            status: r.status,
            outcome: r.outcome,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            duration_ms: r.duration_ms,
            visitor: r.visitor,
            session_id: r.session_id,
            relay_node: r.relay_node,
            session_node: r.session_node,
            created_at: r.created_at,
        }
    }
}

impl Store {
    /// Inserts a batch in one transaction: all of it or, on an error, none of it.
    pub async fn insert_audit(&self, records: Vec<AuditRecord>) -> Result<(), Error> {
        if let Some(direct) = &self.direct_audit {
            let direct = direct.clone();
            return tokio::task::spawn_blocking(move || direct.insert(&records))
                .await
                .map_err(|_| Error::Database(sqlx::Error::WorkerCrashed))?;
        }
        let mut tx = self.pool.begin().await?;
        let rows = audit_rows(self.backend);
        for chunk in records.chunks(rows) {
            let partial;
            let sql = if chunk.len() == rows {
                full_audit_insert(self.backend)
            } else {
                partial = insert_audit_sql(self.backend, chunk.len());
                &partial
            };
            // The arguments are gathered in one buffer sized up front (binding them one by one
            // on a `Query` grows its buffer a dozen times per statement and moves the query
            // for every value), and the strings are lent, not cloned: PostgreSQL encodes them
            // straight from the records.
            let mut args = sqlx::any::AnyArguments::default();
            sqlx::Arguments::reserve(&mut args, chunk.len() * AUDIT_COLUMNS, 0);
            for r in chunk {
                audit_values(r, &mut args).map_err(sqlx::Error::Encode)?;
            }
            sqlx::query_with(sql, args).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest records (of one tenant, or all), at most `limit` (capped at 1000).
    pub async fn audit(&self, tenant: Option<&str>, limit: u32) -> Result<Vec<AuditRecord>, Error> {
        self.audit_query(&AuditFilter {
            tenant: tenant.map(str::to_string),
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// The records `filter` selects, newest first.
    pub async fn audit_query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        let sql = audit_query_sql(filter);
        let mut q = sqlx::query_as::<_, AuditRow>(&sql);
        if let Some(t) = &filter.tenant {
            q = q.bind(t.to_ascii_lowercase());
        }
        if let Some((lo, hi)) = filter.status {
            q = q.bind(lo).bind(hi);
        }
        if let Some(s) = filter.since {
            q = q.bind(s);
        }
        if let Some(u) = filter.until {
            q = q.bind(u);
        }
        let offset = i64::try_from(filter.offset).unwrap_or(i64::MAX);
        let rows = q
            .bind(i64::from(filter.limit.min(1000)))
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(AuditRecord::from).collect())
    }

    /// Requests and 5xx answers per minute since `since_ms` (minutes without requests omitted),
    /// oldest first.
    pub async fn audit_per_minute(&self, since_ms: i64) -> Result<Vec<MinuteStats>, Error> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT (created_at / 60000) * 60000 AS minute, COUNT(*) AS requests, \
             COALESCE(SUM(CASE WHEN status >= 500 THEN 1 ELSE 0 END), 0) AS errors \
             FROM audit_requests WHERE created_at >= $1 GROUP BY created_at / 60000 ORDER BY minute",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(minute, requests, errors)| MinuteStats {
                minute,
                requests,
                errors,
            })
            .collect())
    }

    /// Deletes records older than `before_ms`; returns how many.
    pub async fn purge_audit(&self, before_ms: i64) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM audit_requests WHERE created_at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The SELECT of [`Store::audit_query`] for `filter`: its placeholders in the order it binds them
/// (tenant, status range, since, until, limit, offset; each only when the filter has it).
fn audit_query_sql(filter: &AuditFilter) -> String {
    let mut sql = String::from(
        "SELECT request_id, tenant, target, method, path, status, outcome, bytes_in, bytes_out, \
         duration_ms, visitor, session_id, relay_node, session_node, created_at FROM audit_requests WHERE 1 = 1",
    );
    // Placeholders are numbered in the order they are bound (both backends require it).
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if filter.tenant.is_some() {
        sql.push_str(&format!(" AND tenant = {}", next()));
    }
    if let Some((lo, hi)) = filter.status {
        sql.push_str(&format!(
            " AND status >= {} AND status <= {}",
            next(),
            next()
        ));
        let (common_lo, common_hi) = COMMON_STATUS;
        if hi < common_lo || lo > common_hi {
            // Word for word the predicate of the partial index `audit_requests_rare_status`
            // (migration 0018): neither planner can tell from the bound range alone that the
            // index holds every row asked for.
            sql.push_str(&format!(
                " AND status NOT BETWEEN {common_lo} AND {common_hi}"
            ));
        }
    }
    if filter.since.is_some() {
        sql.push_str(&format!(" AND created_at >= {}", next()));
    }
    if filter.until.is_some() {
        sql.push_str(&format!(" AND created_at < {}", next()));
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, request_id DESC LIMIT {} OFFSET {}",
        next(),
        next()
    ));
    sql
}

/// The statuses the index `audit_requests_rare_status` leaves out (migration 0018): nearly every
/// record's, so that a successful request's insert skips it.
const COMMON_STATUS: (i64, i64) = (200, 399);

/// The audit inserts of a SQLite file, on a connection of their own (rusqlite's, beside sqlx's
/// pool on the same file).
///
/// Why not through sqlx: its SQLite driver copies every value twice on the way in (into its
/// `Any` arguments, then into owned ones for its worker thread), and binding, resetting and
/// clearing a 750-parameter statement cost more than SQLite's own inserting; together the
/// audit log was about 30 % of the relay's instructions per request. Here prepared statements
/// are bound straight from the records, in one transaction per batch (see `write_audit`).
/// ADR 0006.
#[derive(Debug)]
pub(crate) struct DirectAudit {
    path: PathBuf,
    /// Opened on first use; dropped after an error, so the next batch starts on a fresh one.
    conn: Mutex<Option<rusqlite::Connection>>,
}

impl DirectAudit {
    /// For a SQLite `url` naming a file (`None` for an in-memory database, which a second
    /// connection would not see, or a read-only one).
    pub(crate) fn for_url(url: &str) -> Option<DirectAudit> {
        use std::str::FromStr;
        if url.contains("mode=memory") || url.contains(":memory:") || url.contains("mode=ro") {
            return None;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename();
        if path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:") {
            return None;
        }
        Some(DirectAudit {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
        })
    }

    fn open(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        // The file exists: the store created and migrated it before this runs.
        let conn = rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The pool's own settings, from the one place they are written.
        conn.execute_batch(&crate::sqlite_pragmas())?;
        Ok(conn)
    }

    /// Blocks: run it on a blocking thread.
    fn insert(&self, records: &[AuditRecord]) -> Result<(), Error> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = match &mut *slot {
            Some(conn) => conn,
            empty => empty.insert(Self::open(&self.path)?),
        };
        let written = write_audit(conn, records);
        if written.is_err() {
            *slot = None;
        }
        Ok(written?)
    }
}

fn write_audit(conn: &mut rusqlite::Connection, records: &[AuditRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        // Full chunks through the multi-row INSERT (SQLite keeps its cursors positioned from row
        // to row; a single-row INSERT per record cost half as much again in SQLite), the rest
        // through the single-row one.
        let chunks = records.chunks_exact(audit_rows(Backend::Sqlite));
        let rest = chunks.remainder();
        if chunks.len() > 0 {
            let mut full = tx.prepare_cached(full_audit_insert(Backend::Sqlite))?;
            for chunk in chunks {
                bind_audit_rows(&mut full, chunk)?;
                full.raw_execute()?;
            }
        }
        if !rest.is_empty() {
            let mut one = tx.prepare_cached(single_audit_insert())?;
            for r in rest {
                bind_audit_rows(&mut one, std::slice::from_ref(r))?;
                one.raw_execute()?;
            }
        }
    }
    // Dropped without a commit (an error above), the transaction rolls back.
    tx.commit()
}

/// Binds `rows` to a statement of as many rows, [`AUDIT_COLUMNS`] parameters each.
fn bind_audit_rows(
    stmt: &mut rusqlite::Statement<'_>,
    rows: &[AuditRecord],
) -> rusqlite::Result<()> {
    let mut params = Params { stmt, at: 0 };
    rows.iter().try_for_each(|r| audit_values(r, &mut params))
}

/// A statement's parameters, bound in order.
struct Params<'a, 'conn> {
    stmt: &'a mut rusqlite::Statement<'conn>,
    at: usize,
}

impl Params<'_, '_> {
    fn bind(&mut self, value: impl rusqlite::ToSql) -> rusqlite::Result<()> {
        self.at += 1;
        self.stmt.raw_bind_parameter(self.at, value)
    }
}

impl<'r> AuditSink<'r> for Params<'_, '_> {
    type Error = rusqlite::Error;
    fn text(&mut self, v: &'r str) -> rusqlite::Result<()> {
        self.bind(v)
    }
    fn int(&mut self, v: i64) -> rusqlite::Result<()> {
        self.bind(v)
    }
    fn optional_text(&mut self, v: Option<&'r str>) -> rusqlite::Result<()> {
        self.bind(v)
    }
}

impl<'q> AuditSink<'q> for sqlx::any::AnyArguments<'q> {
    type Error = sqlx::error::BoxDynError;
    fn text(&mut self, v: &'q str) -> Result<(), Self::Error> {
        sqlx::Arguments::add(self, v)
    }
    fn int(&mut self, v: i64) -> Result<(), Self::Error> {
        sqlx::Arguments::add(self, v)
    }
    fn optional_text(&mut self, v: Option<&'q str>) -> Result<(), Self::Error> {
        sqlx::Arguments::add(self, v)
    }
}

/// Where a record's values go, in the INSERT's column order: sqlx's arguments or a rusqlite
/// statement's parameters.
trait AuditSink<'r> {
    type Error;
    fn text(&mut self, v: &'r str) -> Result<(), Self::Error>;
    fn int(&mut self, v: i64) -> Result<(), Self::Error>;
    fn optional_text(&mut self, v: Option<&'r str>) -> Result<(), Self::Error>;
}

/// One record's [`AUDIT_COLUMNS`] values, in the order of [`insert_audit_sql`]'s columns: the one
/// place that order is written down for both stores.
fn audit_values<'r, S: AuditSink<'r>>(r: &'r AuditRecord, sink: &mut S) -> Result<(), S::Error> {
    sink.text(&r.request_id)?;
    sink.text(&r.tenant)?;
    sink.text(&r.target)?;
    sink.text(&r.method)?;
    sink.text(&r.path)?;
    sink.int(r.status)?;
    sink.text(&r.outcome)?;
    sink.int(r.bytes_in)?;
    sink.int(r.bytes_out)?;
    sink.int(r.duration_ms)?;
    sink.text(&r.visitor)?;
    sink.text(&r.session_id)?;
    sink.text(&r.relay_node)?;
    sink.optional_text(r.session_node.as_deref())?;
    sink.int(r.created_at)
}

/// Rows per audit INSERT (SQLite's parameters are anonymous: binding them costs no name lookups,
/// see `push_rows`). One JSON parameter per batch read with json_each cost far more: SQLite
/// translated each row's value back to text for every column (150k instead of 106k instructions
/// per request in the relay).
///
/// On SQLite, ten: it copies every bound text (nine per row), into its per-connection allocator
/// while that has room (93 small slots by default) and through malloc and a process-wide mutex
/// once it has not. Fifty rows ran out of room from the eleventh on: 13.7k instructions per
/// record in SQLite against 11.6k at ten (20 rows 12.7k, 8 rows 12.0k, 5 rows 12.7k; callgrind,
/// 30,000 records). On PostgreSQL, fifty: there each statement is a round trip.
const fn audit_rows(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 10,
        Backend::Postgres => 50,
    }
}
/// Parameters per audit row.
const AUDIT_COLUMNS: usize = 15;

/// The single-row INSERT (SQLite).
fn single_audit_insert() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| insert_audit_sql(Backend::Sqlite, 1))
}

/// The INSERT for a full chunk of [`audit_rows`], built once per backend.
fn full_audit_insert(backend: Backend) -> &'static str {
    static SQLITE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static POSTGRES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let cell = match backend {
        Backend::Sqlite => &SQLITE,
        Backend::Postgres => &POSTGRES,
    };
    cell.get_or_init(|| insert_audit_sql(backend, audit_rows(backend)))
}

/// `INSERT INTO audit_requests … VALUES (…), …` for `rows` rows of 15 parameters.
fn insert_audit_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_requests (request_id, tenant, target, method, path, status, outcome, \
         bytes_in, bytes_out, duration_ms, visitor, session_id, relay_node, session_node, created_at) VALUES ",
    );
    crate::push_rows(
        &mut sql,
        backend,
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::{pg_filled, pg_plans_both_ways, plan_count, plan_most, sqlite_plan};

    fn status_filter(lo: i64, hi: i64) -> AuditFilter {
        AuditFilter {
            status: Some((lo, hi)),
            limit: 50,
            ..AuditFilter::default()
        }
    }

    /// A filter for errors, refusals or upgrades reads the partial index of the rare statuses;
    /// one for successes cannot (and need not: they are the newest records' bulk).
    #[tokio::test]
    async fn rare_status_filters_use_their_partial_index_on_sqlite() {
        for (lo, hi, rare) in [
            (500, 599, true),
            (404, 404, true),
            (100, 199, true),
            (200, 299, false),
        ] {
            let plan = sqlite_plan(&audit_query_sql(&status_filter(lo, hi)), 4).await;
            assert_eq!(
                plan.iter()
                    .any(|d| d.contains("INDEX audit_requests_rare_status")),
                rare,
                "{lo}..={hi}: {plan:?}"
            );
        }
    }

    /// On PostgreSQL, in the plan for the values and in the generic plan, with and without
    /// statistics: a 5xx filter among 20,000 successes reads the 20 errors from the partial index,
    /// not the successes.
    #[tokio::test]
    async fn rare_status_filters_use_their_partial_index_on_postgres() {
        let (_cluster, store) = pg_filled(
            "audit_requests",
            &["INSERT INTO audit_requests (request_id, tenant, target, method, path, status, outcome, \
             bytes_in, bytes_out, duration_ms, visitor, session_id, relay_node, created_at) \
             SELECT 'r' || i, 'acme', 'app', 'GET', \
             '/', CASE WHEN i % 1000 = 0 THEN 502 ELSE 200 END, 'ok', 0, 0, 1, '127.0.0.1', 's1', \
             'node-a', i \
             FROM generate_series(1, 20000) AS i"],
        )
        .await;
        let sql = audit_query_sql(&status_filter(500, 599));
        let plans = pg_plans_both_ways(&store, "audit_requests", &sql, "500, 599, 50, 0").await;
        for (what, plan) in plans {
            let what = format!("{what}: {plan:#?}");
            assert!(
                plan_count(&plan, "audit_requests_rare_status") > 0,
                "{what}"
            );
            assert!(plan_most(&plan, "actual rows=") <= 20, "{what}");
            // Nothing read and thrown away (a walk of the time index would drop the successes).
            assert_eq!(plan_most(&plan, "Rows Removed by Filter: "), 0, "{what}");
            assert_eq!(plan_count(&plan, "Seq Scan"), 0, "{what}");
        }
    }

    #[test]
    fn audit_inserts_go_direct_only_for_a_writable_file() {
        let direct = |url: &str| DirectAudit::for_url(url).map(|d| d.path);
        assert_eq!(
            direct("sqlite:///var/lib/relay/relay.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/relay/relay.db"))
        );
        assert_eq!(
            direct("sqlite://data/relay.db"),
            Some(PathBuf::from("data/relay.db"))
        );
        // A second connection would see another, empty, in-memory database.
        assert_eq!(direct("sqlite::memory:"), None);
        assert_eq!(direct("sqlite://?mode=memory"), None);
        assert_eq!(direct("sqlite://relay.db?mode=ro"), None);
    }
}
