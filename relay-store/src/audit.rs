//! The request audit log: one row per visitor request, inserted in batches by the relay's audit
//! writer (never on the request path), read by admins, purged by retention.

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
    /// Inserts a batch in one transaction, many rows per statement.
    pub async fn insert_audit(&self, records: &[AuditRecord]) -> Result<(), Error> {
        // Rows per INSERT, 15 parameters each (SQLite's parameters are anonymous: binding them
        // costs no name lookups, see `push_rows`). One JSON parameter per batch read with
        // json_each cost far more: SQLite translated each row's value back to text for every
        // column (150k instead of 106k instructions per request in the relay).
        let rows = 50;
        let full = insert_audit_sql(self.backend, rows);
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(rows) {
            let partial;
            let sql = if chunk.len() == rows {
                &full
            } else {
                partial = insert_audit_sql(self.backend, chunk.len());
                &partial
            };
            let mut q = sqlx::query(sql);
            for r in chunk {
                q = q
                    .bind(&r.request_id)
                    .bind(&r.tenant)
                    .bind(&r.target)
                    .bind(&r.method)
                    .bind(&r.path)
                    .bind(r.status)
                    .bind(&r.outcome)
                    .bind(r.bytes_in)
                    .bind(r.bytes_out)
                    .bind(r.duration_ms)
                    .bind(&r.visitor)
                    .bind(&r.session_id)
                    .bind(&r.relay_node)
                    .bind(&r.session_node)
                    .bind(r.created_at);
            }
            q.execute(&mut *tx).await?;
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
        if filter.status.is_some() {
            sql.push_str(&format!(
                " AND status >= {} AND status <= {}",
                next(),
                next()
            ));
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
