//! The relay nodes sharing the database: the live ones with their sessions, and asking one to
//! drain or to take work again. A node reads its state at each heartbeat
//! (`cluster.heartbeat_interval`) and applies it itself; nothing here talks to a node.

use relay_store::{NodeRecord, NodeState};

use super::Actor;
use crate::error::Error;
use crate::AppState;

/// A live node as the API and the Nodes page show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) record: NodeRecord,
    /// Connector sessions it holds.
    pub(crate) sessions: u64,
    /// How old its heartbeat was when read, ms.
    pub(crate) heartbeat_age_ms: i64,
}

/// The nodes whose heartbeat is within the node timeout, by name, with their sessions.
pub(crate) async fn live(state: &AppState) -> Result<Vec<Node>, Error> {
    let store = state.store();
    let records = store.nodes(state.node_fresh_ms()).await?;
    let counts = store.node_session_counts().await?;
    let now = relay_store::now_ms();
    Ok(records
        .into_iter()
        .map(|record| Node {
            sessions: counts.get(&record.id).copied().unwrap_or(0),
            heartbeat_age_ms: now.saturating_sub(record.heartbeat_at).max(0),
            record,
        })
        .collect())
}

/// Asks the live node named or identified by `node` to drain (`node.drain`) or to take work
/// again (`node.resume`); it applies the state at its next heartbeat. An unknown node is
/// [`Error::NotFound`]; a name several live nodes share is [`Error::Conflict`] (give the id).
/// Setting the state a node has already is done and recorded all the same.
pub(crate) async fn set_state(
    state: &AppState,
    actor: &Actor,
    node: &str,
    to: NodeState,
) -> Result<Node, Error> {
    let store = state.store();
    let record = store
        .set_node_state(node.trim(), to, state.node_fresh_ms())
        .await?;
    let action = match to {
        NodeState::Active => "node.resume",
        NodeState::Draining => "node.drain",
    };
    state
        .record(actor, action, &format!("{}/{}", record.name, record.id))
        .await;
    let sessions = store
        .node_session_counts()
        .await?
        .get(&record.id)
        .copied()
        .unwrap_or(0);
    Ok(Node {
        sessions,
        heartbeat_age_ms: relay_store::now_ms()
            .saturating_sub(record.heartbeat_at)
            .max(0),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::testing::{entry, recorded, state};

    fn node(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            advertise: None,
            public_address: None,
            state: NodeState::Active,
            started_at: relay_store::now_ms(),
            heartbeat_at: 0,
        }
    }

    #[tokio::test]
    async fn drain_and_resume_by_name_or_id_and_record_it() {
        let (_dir, state) = state().await;
        let store = state.store();
        for (id, name) in [("n1", "alpha"), ("n2", "host"), ("n3", "host")] {
            store.register_node(&node(id, name)).await.unwrap();
        }
        let actor = Actor::user("alice");
        let drained = set_state(&state, &actor, "alpha", NodeState::Draining)
            .await
            .unwrap();
        assert_eq!(drained.record.state, NodeState::Draining);
        assert_eq!(drained.sessions, 0);
        let listed = live(&state).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].record.state, NodeState::Draining);
        let resumed = set_state(&state, &actor, "n3", NodeState::Active)
            .await
            .unwrap();
        assert_eq!(resumed.record.name, "host");
        let shared = set_state(&state, &actor, "host", NodeState::Draining)
            .await
            .unwrap_err();
        assert!(matches!(shared, Error::Conflict(_)), "{shared:?}");
        let unknown = set_state(&state, &actor, "nobody", NodeState::Draining)
            .await
            .unwrap_err();
        assert!(matches!(unknown, Error::NotFound(_)), "{unknown:?}");
        assert_eq!(
            recorded(&state).await,
            [
                entry("user:alice", "node.drain", "alpha/n1"),
                entry("user:alice", "node.resume", "host/n3"),
            ]
        );
    }
}
