//! This relay's row in the node registry (`relay_nodes`): registered under a fresh id at start,
//! refreshed every `cluster.heartbeat_interval`, deleted at a clean stop. Any node deletes rows whose
//! heartbeat is older than twice `cluster.node_timeout` (a node killed with -9); readers count only
//! rows fresher than `cluster.node_timeout`. A node that cannot reach the database keeps serving
//! (fail static) and registers again once it can, if its row was removed meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use relay_store::{NodeRecord, NodeState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_protocol::ErrorCode;

use crate::registry::CloseKind;
use crate::Relay;

/// How long a clean stop waits for the database to delete the node's row.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// This node as it registers: a fresh id, its name and the address peers reach it on.
pub(crate) fn record(
    name: &str,
    advertise: Option<String>,
    public_address: Option<String>,
) -> NodeRecord {
    NodeRecord {
        id: uuid::Uuid::now_v7().simple().to_string(),
        name: name.to_string(),
        advertise,
        public_address,
        state: NodeState::Active,
        started_at: relay_store::now_ms(),
        heartbeat_at: 0,
    }
}

/// Keeps `node` registered until `stop`, then deletes its row.
pub(crate) async fn run(
    relay: Arc<Relay>,
    node: NodeRecord,
    (stopping, stop): (CancellationToken, CancellationToken),
) {
    let store = relay.store.clone();
    let (interval, node_timeout) = (
        relay.config.cluster.heartbeat_interval,
        relay.config.cluster.node_timeout,
    );
    let stale_ms = i64::try_from(2 * node_timeout.as_millis()).unwrap_or(i64::MAX);
    let fresh_ms = i64::try_from(node_timeout.as_millis()).unwrap_or(i64::MAX);
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
    let mut announced_stop = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = stopping.cancelled(), if !announced_stop => {
                // Shutting down: other nodes stop forwarding here at their next directory read.
                announced_stop = true;
                let draining = store.set_node_state(&node.id, NodeState::Draining, i64::MAX / 2);
                if let Ok(Err(e)) = tokio::time::timeout(UNREGISTER_TIMEOUT, draining).await {
                    tracing::debug!(error = %e, "stop not announced in the registry");
                }
                continue;
            }
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
                    apply(&relay, state);
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
                        let live: Vec<String> =
                            relay.registry.all().iter().map(|s| s.id.clone()).collect();
                        if let Err(e) = store.reopen_sessions(&node.id, &live).await {
                            warn!(error = %e, "session history not restored");
                        }
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
        match store.remove_stale_nodes(stale_ms).await {
            // A node vanished: its sessions are gone with it.
            Ok(n) if n > 0 => {
                if let Err(e) = store.close_orphaned_sessions(&relay.config.node_name).await {
                    tracing::debug!(error = %e, "sessions of vanished nodes not closed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "stale nodes not removed"),
        }
        relay.cluster.refresh_elsewhere().await;
        if let Ok(nodes) = store.nodes(fresh_ms).await {
            relay.metrics.nodes.store(nodes.len(), Ordering::Relaxed);
            let live: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
            relay.cluster.retain_peers(&live);
            // What connectors are told in `Welcome`: the other active nodes they may dial.
            let others = nodes
                .iter()
                .filter(|n| n.id != node.id && n.state == NodeState::Active)
                .filter_map(|n| {
                    Some(tunnel_protocol::NodeAddress {
                        name: n.name.clone(),
                        address: n.public_address.clone()?,
                    })
                })
                .take(tunnel_protocol::MAX_WELCOME_NODES)
                .collect();
            relay.cluster.set_public_nodes(others);
        }
    }
    match tokio::time::timeout(UNREGISTER_TIMEOUT, store.remove_node(&node.id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "node row not removed; it expires by itself"),
        Err(_) => warn!("node row not removed in time; it expires by itself"),
    }
}

/// Applies a state the registry asked for.
fn apply(relay: &Relay, state: NodeState) {
    match state {
        NodeState::Draining => {
            info!("draining: /readyz answers 503, connectors are asked to move");
            relay.draining.store(true, Ordering::Release);
            relay
                .registry
                .close_all(CloseKind::Drain(ErrorCode::GOING_AWAY));
        }
        NodeState::Active => {
            info!("active again: taking new sessions");
            relay.draining.store(false, Ordering::Release);
            relay.registry.reopen();
        }
    }
}
