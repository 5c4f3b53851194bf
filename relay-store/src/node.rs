//! Relay nodes sharing the database: who is up, where peers reach them, and whether they drain.
//! Each relay process registers a row under a fresh id at start, refreshes its heartbeat while it
//! runs and deletes the row when it stops; rows whose heartbeat is stale are ignored by readers
//! and deleted by any node after a while (a node killed with -9 leaves its row behind).

use std::collections::HashMap;

use crate::{now_ms, Error, Store};

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Serving.
    Active,
    /// Asked to drain: it answers `/readyz` with 503, moves its connectors and finishes what is in
    /// flight.
    Draining,
}

impl NodeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
        }
    }

    fn parse(s: &str) -> NodeState {
        match s {
            "draining" => NodeState::Draining,
            _ => NodeState::Active,
        }
    }
}

/// One relay node as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Fresh for every start of a relay process.
    pub id: String,
    /// The configured `node_name` (the host name by default).
    pub name: String,
    /// The address peers reach it on (`[cluster] advertise`), if any.
    pub advertise: Option<String>,
    /// The address connectors may dial it on directly (`[cluster] public_address`), if any.
    pub public_address: Option<String>,
    /// Active or draining.
    pub state: NodeState,
    /// When the process started, ms since the epoch.
    pub started_at: i64,
    /// Its last heartbeat, ms since the epoch.
    pub heartbeat_at: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    advertise: Option<String>,
    public_address: Option<String>,
    state: String,
    started_at: i64,
    heartbeat_at: i64,
}

impl From<Row> for NodeRecord {
    fn from(r: Row) -> NodeRecord {
        NodeRecord {
            id: r.id,
            name: r.name,
            advertise: r.advertise,
            public_address: r.public_address,
            state: NodeState::parse(&r.state),
            started_at: r.started_at,
            heartbeat_at: r.heartbeat_at,
        }
    }
}

const SELECT: &str =
    "SELECT id, name, advertise, public_address, state, started_at, heartbeat_at FROM relay_nodes";

impl Store {
    /// Registers (or, after its row was removed as stale, registers again) a node, heartbeat now.
    pub async fn register_node(&self, node: &NodeRecord) -> Result<(), Error> {
        sqlx::query("DELETE FROM relay_nodes WHERE id = $1")
            .bind(&node.id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO relay_nodes (id, name, advertise, public_address, state, started_at, \
             heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(&node.advertise)
        .bind(&node.public_address)
        .bind(node.state.as_str())
        .bind(node.started_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refreshes node `id`'s heartbeat; its current state, or `None` when its row is gone (removed
    /// as stale while the node could not reach the database): the caller registers again.
    pub async fn heartbeat_node(&self, id: &str) -> Result<Option<NodeState>, Error> {
        let state: Option<(String,)> = sqlx::query_as(
            "UPDATE relay_nodes SET heartbeat_at = $1 WHERE id = $2 RETURNING state",
        )
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(state.map(|(s,)| NodeState::parse(&s)))
    }

    /// The nodes whose heartbeat is at most `fresh_ms` old, by name.
    pub async fn nodes(&self, fresh_ms: i64) -> Result<Vec<NodeRecord>, Error> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE heartbeat_at >= $1 ORDER BY name, started_at"
        ))
        .bind(now_ms().saturating_sub(fresh_ms))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(NodeRecord::from).collect())
    }

    /// How many connector sessions each relay node holds (rows of the session history not yet
    /// ended), by node id; nodes without any are absent, and so are rows without a node id
    /// (written before nodes registered).
    pub async fn node_session_counts(&self) -> Result<HashMap<String, u64>, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT node_id, COUNT(*) FROM connector_sessions \
             WHERE disconnected_at IS NULL AND node_id IS NOT NULL GROUP BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| (id, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Deletes the rows whose heartbeat is older than `stale_ms`; how many.
    pub async fn remove_stale_nodes(&self, stale_ms: i64) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM relay_nodes WHERE heartbeat_at < $1")
            .bind(now_ms().saturating_sub(stale_ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes node `id`'s row (it stops).
    pub async fn remove_node(&self, id: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM relay_nodes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the state of the live node named or identified by `node` (a name must be unique
    /// among live nodes); the node applies it at its next heartbeat.
    pub async fn set_node_state(
        &self,
        node: &str,
        state: NodeState,
        fresh_ms: i64,
    ) -> Result<NodeRecord, Error> {
        let live = self.nodes(fresh_ms).await?;
        let matches: Vec<&NodeRecord> = live
            .iter()
            .filter(|n| n.id == node || n.name == node)
            .collect();
        let target = match matches.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(Error::NodeNotFound(node.to_string())),
            _ => return Err(Error::NodeAmbiguous(node.to_string())),
        };
        sqlx::query("UPDATE relay_nodes SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(&target.id)
            .execute(&self.pool)
            .await?;
        Ok(NodeRecord { state, ..target })
    }
}

/// Holds an SQLite database for one serving relay process: an exclusive lock on `PATH.lock`
/// beside the database file, released when dropped or when the process dies (even with -9).
/// SQLite serves one relay node; PostgreSQL needs no such lock.
#[derive(Debug)]
pub struct SingleNodeLock {
    _file: Option<std::fs::File>,
}

impl Store {
    /// Takes the single-node lock of an SQLite database (a no-op on PostgreSQL), or says which
    /// file another relay process holds.
    pub fn lock_single_node(&self) -> Result<SingleNodeLock, Error> {
        let Some(path) = self.sqlite_path() else {
            return Ok(SingleNodeLock { _file: None });
        };
        let mut lock_path = path.into_os_string();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Lock(format!("{}: {e}", lock_path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(SingleNodeLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(Error::SqliteInUse(lock_path.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::Lock(format!("{}: {e}", lock_path.display())))
            }
        }
    }
}
