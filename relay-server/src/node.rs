//! This relay's row in the node registry (`relay_nodes`): registered under a fresh id at start,
//! refreshed every `cluster.heartbeat_interval`, deleted at a clean stop. Any node deletes rows whose
//! heartbeat is older than twice `cluster.node_timeout` (a node killed with -9); readers count only
//! rows fresher than `cluster.node_timeout`. A node that cannot reach the database keeps serving
//! (fail static) and registers again once it can, if its row was removed meanwhile.

use std::time::Duration;

use relay_store::{NodeRecord, NodeState, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a clean stop waits for the database to delete the node's row.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// This node as it registers: a fresh id, its name and the address peers reach it on.
pub(crate) fn record(name: &str, advertise: Option<String>) -> NodeRecord {
    NodeRecord {
        id: uuid::Uuid::now_v7().simple().to_string(),
        name: name.to_string(),
        advertise,
        state: NodeState::Active,
        started_at: relay_store::now_ms(),
        heartbeat_at: 0,
    }
}

/// Keeps `node` registered until `stop`, then deletes its row.
pub(crate) async fn run(
    store: Store,
    node: NodeRecord,
    (interval, node_timeout): (Duration, Duration),
    stop: CancellationToken,
) {
    let stale_ms = i64::try_from(2 * node_timeout.as_millis()).unwrap_or(i64::MAX);
    let mut registered = match store.register_node(&node).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "cannot register this node; serving anyway, retrying");
            false
        }
    };
    let mut state = node.state;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let beat = match registered {
            true => store.heartbeat_node(&node.id).await,
            false => Ok(None),
        };
        match beat {
            Ok(Some(now)) => {
                if now != state {
                    info!(state = now.as_str(), "node state changed in the registry");
                    state = now;
                }
            }
            // Removed as stale (the database was out of reach for long), or never registered.
            Ok(None) => match store
                .register_node(&NodeRecord {
                    state,
                    ..node.clone()
                })
                .await
            {
                Ok(()) => {
                    if registered {
                        info!("registered this node again");
                    }
                    registered = true;
                }
                Err(e) => warn!(error = %e, "cannot register this node"),
            },
            Err(e) => {
                if registered {
                    warn!(error = %e, "node heartbeat failed; serving anyway");
                }
            }
        }
        if let Err(e) = store.remove_stale_nodes(stale_ms).await {
            tracing::debug!(error = %e, "stale nodes not removed");
        }
    }
    match tokio::time::timeout(UNREGISTER_TIMEOUT, store.remove_node(&node.id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "node row not removed; it expires by itself"),
        Err(_) => warn!("node row not removed in time; it expires by itself"),
    }
}
