//! The relay's command line: `run`, `quickstart`, `migrate` and the provisioning commands.
//! `main` parses and dispatches here; everything returns `anyhow` errors or a config error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use connector::layered::{ConfigError, EnvSource};
use relay_store::{SecretHasher, Store};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keys::{self, Keys};
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
    /// Manage admin users.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Listener flags.
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
}

/// `tenant …`
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant.
    Create { name: String },
    /// List tenants.
    List,
    /// Show one tenant.
    Show { name: String },
    /// Enable a tenant.
    Enable { name: String },
    /// Disable a tenant (its visitors get 404, its sessions close).
    Disable { name: String },
    /// Delete a tenant and its credentials.
    Delete { name: String },
    /// Change a tenant's settings and limits (unset flags keep their values).
    Set {
        name: String,
        /// A name for people.
        #[arg(long)]
        display_name: Option<String>,
        /// Free text for admins.
        #[arg(long)]
        description: Option<String>,
        /// Keep query strings in this tenant's audit records (true/false; default false).
        #[arg(long, value_name = "BOOL")]
        audit_query_strings: Option<bool>,
        /// Largest request body in bytes (overrides the relay's limits.max_body_bytes).
        #[arg(long, value_name = "BYTES")]
        max_body_bytes: Option<u64>,
        /// Streams in flight at once across the tenant's sessions.
        #[arg(long, value_name = "N")]
        max_concurrent_streams: Option<u32>,
        /// Wait for the response head, e.g. 30s.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        request_timeout: Option<std::time::Duration>,
        /// Remove the tenant's own limits (the relay's defaults apply), before applying the above.
        #[arg(long)]
        clear_limits: bool,
    },
    /// Manage a tenant's connector credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Manage the hostnames a tenant owns.
    #[command(subcommand)]
    Hostname(HostnameCommand),
}

/// `tenant hostname …`
#[derive(Subcommand, Debug)]
pub enum HostnameCommand {
    /// Route a hostname (e.g. app.contoso.example) to one of the tenant's targets.
    Add {
        tenant: String,
        hostname: String,
        #[arg(long)]
        target: String,
    },
    /// List a tenant's hostnames.
    List { tenant: String },
    /// Remove a hostname.
    Remove { tenant: String, hostname: String },
}

/// `tenant credential …`
#[derive(Subcommand, Debug)]
pub enum CredentialCommand {
    /// Create a credential and print its secret (shown only this once).
    Create {
        tenant: String,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List a tenant's credentials (never their secrets).
    List { tenant: String },
    /// Revoke a credential; sessions using it close.
    Revoke { tenant: String, id: String },
}

/// `admin …`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Manage admin users.
    #[command(subcommand)]
    User(AdminUserCommand),
    /// Manage API tokens for the management API.
    #[command(subcommand)]
    Token(AdminTokenCommand),
    /// Show the newest admin actions (who changed what).
    Log {
        /// How many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `admin token …`
#[derive(Subcommand, Debug)]
pub enum AdminTokenCommand {
    /// Create an API token; it is printed once.
    Create { name: String },
    /// List API tokens (never their values).
    List,
    /// Revoke an API token by id or name.
    Revoke { token: String },
}

/// `admin user …`
#[derive(Subcommand, Debug)]
pub enum AdminUserCommand {
    /// Create an admin user; a password is generated and printed unless --password-file is given.
    Create {
        username: String,
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
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
            Some(Command::Run(l)) | Some(Command::Quickstart(l)) => Some(l),
            _ => None,
        };
        let mut table = toml::Table::new();
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
        }
        if !table.is_empty() {
            flags.insert("listen".into(), toml::Value::Table(table));
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
        Command::Quickstart(_) => quickstart(config, shutdown).await,
        Command::Migrate => {
            open_store(&config).await?;
            println!("database is up to date: {}", config.database_url);
            Ok(())
        }
        Command::Tenant(cmd) => tenant(cmd, &config).await,
        Command::Admin(AdminCommand::User(AdminUserCommand::Create {
            username,
            password_file,
        })) => {
            let store = open_store(&config).await?;
            let (password, generated) = match password_file {
                Some(p) => (
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim()
                        .to_string(),
                    false,
                ),
                None => (random_token(18), true),
            };
            anyhow::ensure!(
                password.len() >= 12,
                "the password must have at least 12 characters"
            );
            store.create_admin_user(&username, &password).await?;
            store
                .record_admin_action(CLI_ACTOR, "admin_user.create", &username)
                .await?;
            println!("admin user {username} created");
            if generated {
                println!("password (shown once): {password}");
            }
            Ok(())
        }
        Command::Admin(AdminCommand::Token(cmd)) => {
            let store = open_store(&config).await?;
            match cmd {
                AdminTokenCommand::Create { name } => {
                    let t = store.create_api_token(&name, &hasher(&config)?).await?;
                    store
                        .record_admin_action(CLI_ACTOR, "api_token.create", &t.token.name)
                        .await?;
                    println!("API token {} created (id {})", t.token.name, t.token.id);
                    println!("token (shown once; send it as `Authorization: Bearer <token>`):");
                    println!("{}", t.value);
                }
                AdminTokenCommand::List => {
                    println!("{:<34} {:<8} NAME", "ID", "STATE");
                    for t in store.api_tokens().await? {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!("{:<34} {:<8} {}", t.id, state, t.name);
                    }
                }
                AdminTokenCommand::Revoke { token } => {
                    let t = store.revoke_api_token(&token).await?;
                    store
                        .record_admin_action(CLI_ACTOR, "api_token.revoke", &t.name)
                        .await?;
                    println!("API token {} revoked", t.name);
                }
            }
            Ok(())
        }
        Command::Admin(AdminCommand::Log { limit }) => {
            let store = open_store(&config).await?;
            println!(
                "{:<24} {:<12} {:<22} OBJECT",
                "WHEN (UTC)", "ACTOR", "ACTION"
            );
            for a in store.admin_actions(limit).await? {
                println!(
                    "{:<24} {:<12} {:<22} {}",
                    format_ms(a.created_at),
                    a.actor,
                    a.action,
                    a.object
                );
            }
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
    Store::connect(&config.database_url)
        .await
        .with_context(|| format!("opening database {}", config.database_url))
}

async fn tenant(cmd: TenantCommand, config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    match cmd {
        TenantCommand::Create { name } => {
            let t = store.create_tenant(&name).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.create", &t.name)
                .await?;
            println!("tenant {} created (id {})", t.name, t.id);
        }
        TenantCommand::List => {
            println!("{:<32} {:<8} ID", "NAME", "ENABLED");
            for t in store.tenants().await? {
                println!("{:<32} {:<8} {}", t.name, t.enabled, t.id);
            }
        }
        TenantCommand::Show { name } => {
            let t = store
                .tenant(&name)
                .await?
                .ok_or_else(|| relay_store::Error::TenantNotFound(name.clone()))?;
            println!(
                "name:     {}\nid:       {}\nenabled:  {}\nlimits:   {:?}\ndisplay:  {}\nabout:    {}\naudit query strings: {}",
                t.name,
                t.id,
                t.enabled,
                t.limits,
                t.display_name,
                t.description,
                t.audit_query_strings
            );
            for c in store.credentials(&t.name).await? {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("credential {} {state} {}", c.id, c.label);
            }
        }
        TenantCommand::Enable { name } => {
            store.set_tenant_enabled(&name, true).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.enable", &name)
                .await?;
            println!("tenant {name} enabled");
        }
        TenantCommand::Disable { name } => {
            store.set_tenant_enabled(&name, false).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.disable", &name)
                .await?;
            println!("tenant {name} disabled");
        }
        TenantCommand::Set {
            name,
            display_name,
            description,
            audit_query_strings,
            max_body_bytes,
            max_concurrent_streams,
            request_timeout,
            clear_limits,
        } => {
            let settings = relay_store::TenantSettings {
                display_name,
                description,
                audit_query_strings,
            };
            let t = store.set_tenant_settings(&name, &settings).await?;
            let mut limits = if clear_limits {
                relay_store::TenantLimits::default()
            } else {
                t.limits.clone()
            };
            if let Some(v) = max_body_bytes {
                limits.max_body_bytes = Some(v);
            }
            if let Some(v) = max_concurrent_streams {
                anyhow::ensure!(v > 0, "--max-concurrent-streams must be at least 1");
                limits.max_concurrent_streams = Some(v);
            }
            if let Some(d) = request_timeout {
                anyhow::ensure!(!d.is_zero(), "--request-timeout must be above zero");
                limits.request_timeout_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
            if limits != t.limits {
                store.set_tenant_limits(&t.name, &limits).await?;
            }
            store
                .record_admin_action(CLI_ACTOR, "tenant.update", &t.name)
                .await?;
            println!("tenant {} updated", t.name);
        }
        TenantCommand::Delete { name } => {
            store.delete_tenant(&name).await?;
            store
                .record_admin_action(CLI_ACTOR, "tenant.delete", &name)
                .await?;
            println!("tenant {name} deleted");
        }
        TenantCommand::Credential(CredentialCommand::Create { tenant, label }) => {
            let hasher = hasher(config)?;
            let c = store.create_credential(&tenant, &label, &hasher).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "credential.create",
                    &format!("{}/{}", c.credential.tenant, c.credential.id),
                )
                .await?;
            println!(
                "credential {} created for tenant {}",
                c.credential.id, c.credential.tenant
            );
            println!("secret (shown once, store it in the connector's --secret-file):");
            println!("{}", c.secret);
        }
        TenantCommand::Credential(CredentialCommand::List { tenant }) => {
            println!("{:<34} {:<8} LABEL", "ID", "STATE");
            for c in store.credentials(&tenant).await? {
                let state = if c.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{:<34} {:<8} {}", c.id, state, c.label);
            }
        }
        TenantCommand::Hostname(HostnameCommand::Add {
            tenant,
            hostname,
            target,
        }) => {
            let h = store.add_hostname(&tenant, &hostname, &target).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "hostname.add",
                    &format!("{tenant}/{}", h.hostname),
                )
                .await?;
            println!("{} -> tenant {tenant}, target {}", h.hostname, h.target);
        }
        TenantCommand::Hostname(HostnameCommand::List { tenant }) => {
            println!("{:<40} TARGET", "HOSTNAME");
            for h in store.hostnames(&tenant).await? {
                println!("{:<40} {}", h.hostname, h.target);
            }
        }
        TenantCommand::Hostname(HostnameCommand::Remove { tenant, hostname }) => {
            store.remove_hostname(&tenant, &hostname).await?;
            store
                .record_admin_action(
                    CLI_ACTOR,
                    "hostname.remove",
                    &format!("{tenant}/{hostname}"),
                )
                .await?;
            println!("hostname {hostname} removed");
        }
        TenantCommand::Credential(CredentialCommand::Revoke { tenant, id }) => {
            store.revoke_credential(&tenant, &id).await?;
            store
                .record_admin_action(CLI_ACTOR, "credential.revoke", &format!("{tenant}/{id}"))
                .await?;
            println!("credential {id} revoked; its sessions close within a second");
        }
    }
    Ok(())
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

/// The quickstart: relay + demo tenant + in-process connector with the echo target.
async fn quickstart(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let dir = config.data_dir.join("quickstart");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if store.tenant("demo").await?.is_none() {
        store.create_tenant("demo").await?;
    }
    let secret_path = dir.join("demo-connector.secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let c = store
                .create_credential("demo", "quickstart", &hasher(&config)?)
                .await?;
            write_private(&secret_path, &c.secret)?;
            c.secret
        }
    };
    let password_path = dir.join("admin-password");
    let password = match std::fs::read_to_string(&password_path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ if store.admin_user_exists("admin").await? => {
            "(set earlier; not stored here)".to_string()
        }
        _ => {
            let p = random_token(18);
            store.create_admin_user("admin", &p).await?;
            write_private(&password_path, &p)?;
            p
        }
    };

    let listeners = Listeners::bind(&config).await?;
    let addrs = listeners.addrs();
    let https = addrs.https.context("no HTTPS address")?;
    let host = if https.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        https.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{host}:{}", https.port()));
    let self_signed = config.tls.is_none();
    let cert_path = keys::self_signed_cert_path(&config.data_dir);

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(run(
        config.clone(),
        store,
        listeners,
        relay_shutdown.clone(),
        Some(started_tx),
    ));
    let _view = started_rx.await.context("relay failed to start")?;

    let backend_stop = CancellationToken::new();
    let echo = crate::echo::spawn(backend_stop.clone()).await?;
    let mut file = connector::config::FileConfig {
        server: Some(format!("https://{host}:{}", https.port())),
        tenant: Some("demo".into()),
        secret: Some(connector::layered::Secret::new(secret)),
        ..Default::default()
    };
    if self_signed {
        file.ca_cert = Some(cert_path.clone());
    }
    file.targets.insert(
        "echo".into(),
        connector::config::TargetFile {
            url: format!("http://{echo}"),
            ..Default::default()
        },
    );
    let conn_config =
        connector::Config::from_file(file, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let conn = connector::Connector::new(conn_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut state = conn.watch();
    let conn_shutdown = CancellationToken::new();
    let conn_task = tokio::spawn(conn.run(conn_shutdown.clone()));
    // The watch guard must not outlive this statement: it would block the connector's updates.
    let connected = matches!(
        tokio::time::timeout(Duration::from_secs(15), state.wait_for(|s| s.connected)).await,
        Ok(Ok(_))
    );
    if !connected {
        tracing::warn!("the demo connector is not connected yet; requests get 503 until it is");
    }

    let cacert = if self_signed {
        format!("--cacert {} ", display_path(&cert_path))
    } else {
        String::new()
    };
    println!();
    println!(
        "Relay is running (data in {}).",
        display_path(&config.data_dir)
    );
    println!();
    println!("  Public URL:      {base}/relay/demo/echo/");
    println!("  Try it:          curl {cacert}{base}/relay/demo/echo/hello");
    if let Some(admin) = addrs.admin {
        println!("  Management web:  http://{admin}/   (login: admin / {password})");
    }
    println!("  Connector:       tenant \"demo\", target \"echo\" -> built-in echo backend");
    println!();
    println!("Press Ctrl-C to stop.");

    shutdown.cancelled().await;
    conn_shutdown.cancel();
    relay_shutdown.cancel();
    let _ = conn_task.await;
    let result = relay.await.context("relay task panicked")?;
    backend_stop.cancel();
    result
}

fn display_path(p: &Path) -> String {
    p.display().to_string()
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
