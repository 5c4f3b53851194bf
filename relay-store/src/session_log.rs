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
    /// The registry id of the relay process holding it (`relay_nodes.id`); `None` in rows written
    /// before nodes registered.
    pub node_id: Option<String>,
    /// The targets the connector announced (empty: it did not say).
    pub targets: Vec<String>,
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
    node_id: Option<String>,
    targets: Option<String>,
}

const SELECT: &str = "SELECT id, tenant, relay_node, connector_id, connector_version, transport, \
     remote_addr, connected_at, disconnected_at, close_code, node_id, targets FROM connector_sessions";

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
            node_id: r.node_id,
            targets: split_targets(r.targets.as_deref()),
        }
    }
}

/// A tenant's sessions on one other relay node, as [`Store::remote_sessions`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSessions {
    /// The node's registry id.
    pub node_id: String,
    /// Its name.
    pub node_name: String,
    /// The address its peers reach it on.
    pub advertise: String,
    /// How many of the tenant's sessions it holds.
    pub sessions: u32,
    /// The targets they serve; `None` when one of them did not say (it may be asked for any).
    pub targets: Option<std::collections::BTreeSet<String>>,
    /// The node was asked to drain: it serves until its connectors have moved; prefer others.
    pub draining: bool,
}

/// Node id, advertise, name, the session's targets, node state.
type DirectoryRow = (String, Option<String>, String, Option<String>, String);

fn split_targets(s: Option<&str>) -> Vec<String> {
    s.unwrap_or_default()
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// Records a session that was just established (`disconnected_at` and `close_code` ignored).
    pub async fn session_opened(&self, s: &SessionRecord) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO connector_sessions (id, tenant, relay_node, connector_id, connector_version, \
             transport, remote_addr, connected_at, node_id, targets) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.relay_node)
        .bind(&s.connector_id)
        .bind(&s.connector_version)
        .bind(&s.transport)
        .bind(&s.remote_addr)
        .bind(s.connected_at)
        .bind(&s.node_id)
        .bind(s.targets.join(" "))
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

    /// Ends the sessions still marked open whose relay process is gone: rows of a node id no
    /// longer registered (its process was killed, or stopped without closing them), and rows
    /// without a node id left open by an earlier run of `relay_node` (written before nodes
    /// registered). Run by each node at start, after registering, and after removing stale nodes.
    pub async fn close_orphaned_sessions(&self, relay_node: &str) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE connector_sessions SET disconnected_at = $1, close_code = 'relay_lost' \
             WHERE disconnected_at IS NULL AND ((node_id IS NULL AND relay_node = $2) \
             OR (node_id IS NOT NULL AND node_id NOT IN (SELECT id FROM relay_nodes)))",
        )
        .bind(now_ms())
        .bind(relay_node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// After node `node_id` registered again (its row had been removed as stale while it could
    /// not reach the database, and its sessions ended in the history): marks the sessions it still
    /// holds as open again, and ends the others it left open.
    pub async fn reopen_sessions(&self, node_id: &str, live: &[String]) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE connector_sessions SET disconnected_at = $1, close_code = 'relay_lost' \
             WHERE node_id = $2 AND disconnected_at IS NULL",
        )
        .bind(now_ms())
        .bind(node_id)
        .execute(&mut *tx)
        .await?;
        for id in live {
            sqlx::query(
                "UPDATE connector_sessions SET disconnected_at = NULL, close_code = NULL \
                 WHERE id = $1 AND node_id = $2",
            )
            .bind(id)
            .bind(node_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The tenants with a live session on a registered node other than `except` whose heartbeat
    /// is at most `fresh_ms` old (the only tenants worth asking [`Store::remote_sessions`] about).
    pub async fn tenants_elsewhere(
        &self,
        except: &str,
        fresh_ms: i64,
    ) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT s.tenant FROM connector_sessions s \
             JOIN relay_nodes n ON n.id = s.node_id \
             WHERE s.disconnected_at IS NULL AND n.id <> $1 AND n.heartbeat_at >= $2",
        )
        .bind(except)
        .bind(now_ms().saturating_sub(fresh_ms))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    /// Where tenant `tenant`'s live sessions are, on registered nodes other than `except` whose
    /// heartbeat is at most `fresh_ms` old: one entry per node, with the union of the targets its
    /// sessions announced and whether it drains.
    pub async fn remote_sessions(
        &self,
        tenant: &str,
        except: &str,
        fresh_ms: i64,
    ) -> Result<Vec<RemoteSessions>, Error> {
        let rows: Vec<DirectoryRow> = sqlx::query_as(
            "SELECT n.id, n.advertise, n.name, s.targets, n.state FROM connector_sessions s \
             JOIN relay_nodes n ON n.id = s.node_id \
             WHERE s.tenant = $1 AND s.disconnected_at IS NULL AND n.id <> $2 \
             AND n.heartbeat_at >= $3 LIMIT 1000",
        )
        .bind(tenant.to_ascii_lowercase())
        .bind(except)
        .bind(now_ms().saturating_sub(fresh_ms))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<RemoteSessions> = Vec::new();
        for (node_id, advertise, name, targets, state) in rows {
            let Some(advertise) = advertise else { continue };
            let targets = split_targets(targets.as_deref());
            match out.iter_mut().find(|r| r.node_id == node_id) {
                Some(r) => {
                    r.sessions += 1;
                    if targets.is_empty() {
                        r.targets = None;
                    } else if let Some(all) = r.targets.as_mut() {
                        all.extend(targets);
                    }
                }
                None => out.push(RemoteSessions {
                    node_id,
                    node_name: name,
                    advertise,
                    sessions: 1,
                    targets: (!targets.is_empty()).then(|| targets.into_iter().collect()),
                    draining: state == "draining",
                }),
            }
        }
        Ok(out)
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
