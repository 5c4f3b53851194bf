//! A tenant's live connector sessions, on every relay node sharing the database.

use relay_store::SessionRecord;

use crate::error::Error;
use crate::AppState;

/// The live sessions of tenant `tenant` (its canonical name), each with its streams in flight
/// when this process is the relay node holding it (the [`crate::NodeView`]), else `None`.
pub(crate) async fn live(
    state: &AppState,
    tenant: &str,
) -> Result<Vec<(SessionRecord, Option<usize>)>, Error> {
    let sessions = state.store().live_sessions(tenant).await?;
    let in_flight = state.node().map(|n| n.in_flight()).unwrap_or_default();
    Ok(sessions
        .into_iter()
        .map(|s| {
            let n = in_flight.get(&s.id).copied();
            (s, n)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use relay_store::{SecretHasher, Store};

    use super::*;
    use crate::{AllowedHosts, NodeView};

    struct Node;

    impl NodeView for Node {
        fn in_flight(&self) -> HashMap<String, usize> {
            HashMap::from([("s1".to_string(), 3)])
        }
        fn metrics(&self) -> String {
            String::new()
        }
    }

    fn session(id: &str, tenant: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            tenant: tenant.into(),
            relay_node: "n1".into(),
            connector_id: "c".into(),
            connector_version: "1".into(),
            transport: "quic".into(),
            remote_addr: "192.0.2.1:1".into(),
            connected_at: relay_store::now_ms(),
            disconnected_at: None,
            close_code: None,
            node_id: None,
            targets: Vec::new(),
        }
    }

    #[tokio::test]
    async fn in_flight_streams_are_known_for_this_nodes_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.create_tenant("acme").await.unwrap();
        for id in ["s1", "s2"] {
            store.session_opened(&session(id, "acme")).await.unwrap();
        }
        store.session_opened(&session("s3", "other")).await.unwrap();
        let hasher = SecretHasher::new(b"a test pepper of thirty-two bytes");
        let state =
            AppState::with_node(store, hasher, Arc::new(Node), AllowedHosts::loopback(None));
        let mut list: Vec<_> = live(&state, "acme")
            .await
            .unwrap()
            .into_iter()
            .map(|(s, n)| (s.id, n))
            .collect();
        list.sort();
        assert_eq!(
            list,
            [("s1".to_string(), Some(3)), ("s2".to_string(), None)]
        );
    }
}
