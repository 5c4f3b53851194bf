//! The history of connector sessions: one row per session, opened and closed by the relay that
//! held it.

use crate::{now_ms, Error, Store};

/// One connector session as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id (as in logs and `Welcome`).
    pub id: String,
    /// Tenant name.
    pub tenant: String,
    /// The relay node that held it.
    pub relay_node: String,
    /// The connector process's id.
    pub connector_id: String,
    /// The connector's version string.
    pub connector_version: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// The connector's address as the relay saw it.
    pub remote_addr: String,
    /// ms since the epoch.
    pub connected_at: i64,
    /// ms since the epoch, once ended.
    pub disconnected_at: Option<i64>,
    /// How it ended (an error code name), once ended.
    pub close_code: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    tenant: String,
    relay_node: String,
    connector_id: String,
    connector_version: String,
    transport: String,
    remote_addr: String,
    connected_at: i64,
    disconnected_at: Option<i64>,
    close_code: Option<String>,
}

const SELECT: &str = "SELECT id, tenant, relay_node, connector_id, connector_version, transport, \
     remote_addr, connected_at, disconnected_at, close_code FROM connector_sessions";

impl From<Row> for SessionRecord {
    fn from(r: Row) -> SessionRecord {
        SessionRecord {
            id: r.id,
            tenant: r.tenant,
            relay_node: r.relay_node,
            connector_id: r.connector_id,
            connector_version: r.connector_version,
            transport: r.transport,
            remote_addr: r.remote_addr,
            connected_at: r.connected_at,
            disconnected_at: r.disconnected_at,
            close_code: r.close_code,
        }
    }
}

impl Store {
    /// Records a session that was just established (`disconnected_at` and `close_code` ignored).
    pub async fn session_opened(&self, s: &SessionRecord) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO connector_sessions (id, tenant, relay_node, connector_id, connector_version, \
             transport, remote_addr, connected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.relay_node)
        .bind(&s.connector_id)
        .bind(&s.connector_version)
        .bind(&s.transport)
        .bind(&s.remote_addr)
        .bind(s.connected_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the end of session `id`.
    pub async fn session_closed(&self, id: &str, close_code: &str) -> Result<(), Error> {
        sqlx::query(
            "UPDATE connector_sessions SET disconnected_at = $1, close_code = $2 \
             WHERE id = $3 AND disconnected_at IS NULL",
        )
        .bind(now_ms())
        .bind(close_code)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At a relay's start: its sessions still marked open (it crashed) are ended now.
    pub async fn close_stale_sessions(&self, relay_node: &str) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE connector_sessions SET disconnected_at = $1, close_code = 'relay_restarted' \
             WHERE relay_node = $2 AND disconnected_at IS NULL",
        )
        .bind(now_ms())
        .bind(relay_node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A tenant's sessions not yet ended, on any relay node, newest first (at most 1000).
    pub async fn live_sessions(&self, tenant: &str) -> Result<Vec<SessionRecord>, Error> {
        let rows = sqlx::query_as::<_, Row>(&format!(
            "{SELECT} WHERE tenant = $1 AND disconnected_at IS NULL \
             ORDER BY connected_at DESC, id DESC LIMIT 1000"
        ))
        .bind(tenant.to_ascii_lowercase())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }

    /// How many sessions are not yet ended, on every relay node.
    pub async fn live_session_count(&self) -> Result<u64, Error> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM connector_sessions WHERE disconnected_at IS NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// A tenant's sessions, newest first, at most `limit` (capped at 1000).
    pub async fn session_history(
        &self,
        tenant: &str,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, Error> {
        let rows = sqlx::query_as::<_, Row>(&format!(
            "{SELECT} WHERE tenant = $1 ORDER BY connected_at DESC, id DESC LIMIT $2"
        ))
        .bind(tenant.to_ascii_lowercase())
        .bind(i64::from(limit.min(1000)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SessionRecord::from).collect())
    }
}
