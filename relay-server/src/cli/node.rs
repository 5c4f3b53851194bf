//! `relay-server node …`: the relay nodes sharing this database, and asking one to drain.

use anyhow::Context;
use clap::Subcommand;
use relay_store::{NodeState, Store};

use super::{format_ms, open_store, CLI_ACTOR};
use crate::config::Config;

/// `node …`
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the live relay nodes (heartbeat within `cluster.node_timeout`).
    List,
    /// Ask a live node to drain: it answers /readyz with 503, asks its connectors to move and
    /// finishes what is in flight. It applies this at its next heartbeat.
    Drain {
        /// The node's id, or its name when only one live node has it.
        node: String,
    },
    /// Ask a draining node to take work again (after a drain by mistake).
    Resume {
        /// The node's id, or its name when only one live node has it.
        node: String,
    },
}

/// Runs a `node` command.
pub(super) async fn node(cmd: NodeCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let fresh = i64::try_from(config.cluster.node_timeout.as_millis()).unwrap_or(i64::MAX);
    match cmd {
        NodeCommand::List => list(&store, fresh).await?,
        NodeCommand::Drain { node } => {
            let n = set_state(&store, &node, NodeState::Draining, fresh).await?;
            println!(
                "node {} ({}) is draining: it applies this at its next heartbeat (every {}), then \
                 answers /readyz with 503, asks its connectors to move and finishes what is in \
                 flight. Undo with `relay-server node resume {}`.",
                n.name,
                n.id,
                humantime::format_duration(config.cluster.heartbeat_interval),
                n.id
            );
        }
        NodeCommand::Resume { node } => {
            let n = set_state(&store, &node, NodeState::Active, fresh).await?;
            println!(
                "node {} ({}) is active: it takes new work again from its next heartbeat (every \
                 {}).",
                n.name,
                n.id,
                humantime::format_duration(config.cluster.heartbeat_interval)
            );
        }
    }
    Ok(())
}

async fn list(store: &Store, fresh: i64) -> anyhow::Result<()> {
    let nodes = store.nodes(fresh).await?;
    let sessions = store.node_session_counts().await?;
    let now = relay_store::now_ms();
    println!(
        "{:<20} {:<32} {:<9} {:>9} {:<24} {:>8} STARTED (UTC)",
        "NAME", "ID", "STATE", "HEARTBEAT", "ADVERTISE", "SESSIONS"
    );
    for n in nodes {
        let age = now.saturating_sub(n.heartbeat_at).max(0) as f64 / 1000.0;
        println!(
            "{:<20} {:<32} {:<9} {:>8.1}s {:<24} {:>8} {}",
            n.name,
            n.id,
            n.state.as_str(),
            age,
            n.advertise.as_deref().unwrap_or("-"),
            sessions.get(&n.id).copied().unwrap_or(0),
            format_ms(n.started_at)
        );
    }
    Ok(())
}

/// Sets a live node's state and records it (`node.drain` / `node.resume`, object `name/id`, as
/// the management web does).
async fn set_state(
    store: &Store,
    node: &str,
    to: NodeState,
    fresh: i64,
) -> anyhow::Result<relay_store::NodeRecord> {
    let n = match store.set_node_state(node.trim(), to, fresh).await {
        Ok(n) => n,
        Err(e @ relay_store::Error::NodeNotFound(_)) => anyhow::bail!(
            "{e} (a heartbeat within cluster.node_timeout); `relay-server node list` shows them"
        ),
        Err(e @ relay_store::Error::NodeAmbiguous(_)) => {
            anyhow::bail!("{e} (see `relay-server node list`)")
        }
        Err(e) => return Err(e).context("setting the node's state"),
    };
    let action = match to {
        NodeState::Active => "node.resume",
        NodeState::Draining => "node.drain",
    };
    store
        .record_admin_action(CLI_ACTOR, action, &format!("{}/{}", n.name, n.id))
        .await?;
    Ok(n)
}
