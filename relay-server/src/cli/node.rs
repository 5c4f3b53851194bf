//! `relay-server node …`: the relay nodes sharing this database.

use clap::Subcommand;

use super::{format_ms, open_store};
use crate::config::Config;

/// `node …`
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the live relay nodes (heartbeat within `cluster.node_timeout`).
    List,
}

/// Runs a `node` command.
pub(super) async fn node(cmd: NodeCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        NodeCommand::List => {
            let fresh = i64::try_from(config.cluster.node_timeout.as_millis()).unwrap_or(i64::MAX);
            let now = relay_store::now_ms();
            println!(
                "{:<20} {:<32} {:<9} {:>9} {:<24} STARTED (UTC)",
                "NAME", "ID", "STATE", "HEARTBEAT", "ADVERTISE"
            );
            for n in store.nodes(fresh).await? {
                let age = now.saturating_sub(n.heartbeat_at).max(0) as f64 / 1000.0;
                println!(
                    "{:<20} {:<32} {:<9} {:>8.1}s {:<24} {}",
                    n.name,
                    n.id,
                    n.state.as_str(),
                    age,
                    n.advertise.as_deref().unwrap_or("-"),
                    format_ms(n.started_at)
                );
            }
        }
    }
    Ok(())
}
