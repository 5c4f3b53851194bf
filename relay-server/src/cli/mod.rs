//! The relay's command line: `run`, `quickstart`, `migrate`, `config check` and the provisioning
//! commands, one module per command group (`tenant`, `admin`, `node`, `queue`, `config`,
//! `quickstart`). `main` parses and dispatches here; everything returns `anyhow` errors or a config
//! error.

mod admin;
mod config;
mod node;
mod policy;
mod queue;
#[cfg(feature = "quickstart")]
mod quickstart;
mod tenant;

pub use admin::{AdminCommand, AdminTokenCommand, AdminUserCommand};
pub use config::{check as check_config, mask_database_url, ConfigCommand};
pub use node::NodeCommand;
pub use policy::{ApiKeyCommand, IpArgs, PolicyCommand, PolicySetArgs, ScopeArgs};
pub use queue::{QueueCommand, TenantQueueArgs};
pub use tenant::{CertCommand, CredentialCommand, HostnameCommand, TenantCommand};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use process_setup::layered::{ConfigError, EnvSource};
use relay_store::{SecretHasher, Store};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keys::Keys;
use crate::{run, Listeners};

/// The relay of the tunnel: HTTPS ingress for visitors, QUIC endpoint for connectors.
/// Settings come from --config FILE, RELAY_* variables and flags.
#[derive(Parser, Debug)]
#[command(name = "relay-server", version, about)]
pub struct Cli {
    /// TOML config file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (keys, generated certificate, SQLite database).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL, e.g. sqlite://relay-data/relay.db.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log format: text (default) or json. Level from RUST_LOG.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    pub log_format: String,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve visitors and connectors until stopped.
    Run(ListenArgs),
    /// Start a relay, a demo tenant and an in-process connector with an echo target.
    Quickstart(ListenArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Admin users, API tokens for the management API, and the admin-action log.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The relay nodes sharing this database.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Queue mode's messages: list a tenant's, show, retry or discard one.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Check the configuration: print the effective settings (secrets masked) and exit 0, or the
    /// error and exit 64.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// The flags of `run` (and `quickstart`, `config check`): listeners and the TLS certificate.
#[derive(Args, Debug, Default)]
pub struct ListenArgs {
    /// HTTPS (TCP) and QUIC (UDP) address.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Plain-HTTP ingress address.
    #[arg(long, value_name = "ADDR")]
    pub listen_http: Option<String>,
    /// Admin listener address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// PEM certificate chain for the HTTPS ingress and QUIC (sets tls.cert; give --tls-key too,
    /// unless the config file sets it).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate (sets tls.key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl Cli {
    /// The layered config for this invocation.
    pub fn load_config(&self, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let mut flags = toml::Table::new();
        if let Some(d) = &self.data_dir {
            flags.insert(
                "data_dir".into(),
                toml::Value::String(d.display().to_string()),
            );
        }
        if let Some(u) = &self.database_url {
            flags.insert("database_url".into(), toml::Value::String(u.clone()));
        }
        let listen = match &self.command {
            Some(Command::Run(l))
            | Some(Command::Quickstart(l))
            | Some(Command::Config(ConfigCommand::Check(l))) => Some(l),
            _ => None,
        };
        let mut table = toml::Table::new();
        let mut tls = toml::Table::new();
        if let Some(l) = listen {
            for (key, v) in [
                ("https", &l.listen),
                ("http", &l.listen_http),
                ("admin", &l.admin),
            ] {
                if let Some(v) = v {
                    table.insert(key.into(), toml::Value::String(v.clone()));
                }
            }
            for (key, v) in [("cert", &l.tls_cert), ("key", &l.tls_key)] {
                if let Some(v) = v {
                    tls.insert(key.into(), toml::Value::String(v.display().to_string()));
                }
            }
        }
        if !table.is_empty() {
            flags.insert("listen".into(), toml::Value::Table(table));
        }
        if !tls.is_empty() {
            flags.insert("tls".into(), toml::Value::Table(tls));
        }
        // The quickstart listens on loopback with an admin listener unless told otherwise.
        let mut defaults = toml::Table::new();
        if matches!(self.command, Some(Command::Quickstart(_))) {
            let mut listen = toml::Table::new();
            listen.insert("https".into(), toml::Value::String("127.0.0.1:8443".into()));
            listen.insert("admin".into(), toml::Value::String("127.0.0.1:9090".into()));
            defaults.insert("listen".into(), toml::Value::Table(listen));
        }
        Config::load_with_defaults(defaults, self.config.as_deref(), env, flags)
    }
}

/// Runs a parsed command with a loaded config.
pub async fn dispatch(
    command: Command,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => {
            let store = open_store(&config).await?;
            let listeners = Listeners::bind(&config).await?;
            run(config, store, listeners, shutdown, None).await
        }
        #[cfg(feature = "quickstart")]
        Command::Quickstart(_) => quickstart::quickstart(config, shutdown).await,
        #[cfg(not(feature = "quickstart"))]
        Command::Quickstart(_) => anyhow::bail!(
            "this relay-server was built without the `quickstart` feature (no in-process connector)"
        ),
        Command::Migrate => {
            open_store(&config).await?;
            println!(
                "database is up to date: {}",
                mask_database_url(&config.database_url)
            );
            Ok(())
        }
        Command::Tenant(cmd) => tenant::tenant(cmd, &config).await,
        Command::Admin(cmd) => admin::admin(cmd, &config).await,
        Command::Node(cmd) => node::node(cmd, &config).await,
        Command::Queue(cmd) => queue::queue(cmd, &config).await,
        Command::Config(ConfigCommand::Check(_)) => {
            print!("{}", check_config(&config)?);
            Ok(())
        }
    }
}

/// The actor recorded for changes made with this CLI.
const CLI_ACTOR: &str = "cli";

/// `2026-11-23T17:42:24Z` from ms since the epoch.
fn format_ms(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    Store::connect(&config.database_url).await.with_context(|| {
        format!(
            "opening database {}",
            mask_database_url(&config.database_url)
        )
    })
}

fn hasher(config: &Config) -> anyhow::Result<SecretHasher> {
    let keys = Keys::load_or_create(&config.data_dir)?;
    Ok(SecretHasher::new(&keys.pepper))
}

/// A random URL-safe string of `bytes` random bytes.
fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).expect("system random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
