//! The `connector` command line: clap's definitions, the flags turned into a config table, and
//! `config check`'s rendering of the effective configuration. Part of the binary only; the help
//! test (`tests/help.rs`) includes this file to walk the command tree.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use connector::config::TransportMode;
use connector::Config;
use process_setup::layered::{ConfigError, ProcessEnv};
use toml::{Table, Value};

/// The on-premises agent of the relay tunnel: dials out to the relay and forwards its requests to
/// local backends. Settings come from --config FILE, CONNECTOR_* variables and these flags.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Connect to the relay and serve requests until stopped.
    Run(RunArgs),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Register the connector with the service manager (systemd on Linux, the Service Control
    /// Manager on Windows).
    #[command(subcommand)]
    Service(ServiceCommand),
}

/// `config …`
#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Load the configuration as `run` would (same flags) and print the effective settings with
    /// secrets masked. Exit 0, or 64 with the error.
    Check(RunArgs),
}

/// `service …`
#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCommand {
    /// Install the service: on Linux a systemd unit running `connector run --config FILE`,
    /// enabled and started; on Windows an auto-start service restarted on failure.
    Install {
        /// The config file the service runs with (checked now). Required on Linux; on Windows
        /// %ProgramData%\relay-connector\connector.toml unless given.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Service (unit) name; also the Event Log source on Windows.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
        /// Linux: where to write the unit.
        #[arg(long, value_name = "DIR", default_value = connector::service::SYSTEM_UNIT_DIR)]
        unit_dir: PathBuf,
        /// Only register the service; do not start it (Linux: do not call systemctl).
        #[arg(long)]
        no_start: bool,
    },
    /// Stop the service (waiting for its drain) and remove it.
    Uninstall {
        /// Service (unit) name.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
        /// Linux: where the unit is.
        #[arg(long, value_name = "DIR", default_value = connector::service::SYSTEM_UNIT_DIR)]
        unit_dir: PathBuf,
        /// Linux: only remove the unit file; do not call systemctl.
        #[arg(long)]
        no_stop: bool,
    },
    /// Start the service.
    Start {
        /// Service (unit) name.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
    },
    /// Stop the service; in-flight requests finish first.
    Stop {
        /// Service (unit) name.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
    },
    /// Show the service's state.
    Status {
        /// Service (unit) name.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
    },
    /// Windows: the entry point the Service Control Manager starts (not for consoles).
    #[command(hide = true)]
    Run {
        /// The config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The service name.
        #[arg(long, value_name = "NAME", default_value = connector::service::DEFAULT_NAME)]
        name: String,
    },
}

/// The settings of `run` (and `config check`).
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// The relay, e.g. https://relay.example.com (port 443 unless given).
    #[arg(long, value_name = "URL")]
    pub(crate) server: Option<String>,
    /// The tenant this connector serves.
    #[arg(long, value_name = "NAME")]
    pub(crate) tenant: Option<String>,
    /// A file holding the tenant credential secret.
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// A backend the relay may send requests to, repeatable:
    /// NAME=URL[,OPTION]… with the options timeout=DURATION (wait for the response head),
    /// ca-cert=FILE (extra roots for an https backend), insecure (skip its certificate check),
    /// http2 (HTTP/2 to the backend: h2c or ALPN h2, e.g. for gRPC), preserve-host (send the
    /// visitor's Host instead of the target's), upgrade=PROTOCOL (allow this Upgrade, repeatable;
    /// websocket by default), no-upgrades.
    #[arg(long = "target", value_name = "NAME=URL[,OPTION]…")]
    pub(crate) targets: Vec<String>,
    /// Extra PEM roots to verify the relay's certificate.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// auto (default: QUIC, falling back to TLS over TCP on the same port), quic or tcp.
    #[arg(long, value_name = "MODE")]
    pub(crate) transport: Option<String>,
    /// HTTP CONNECT proxy, http://[user:password@]host:port (default: HTTPS_PROXY unless NO_PROXY
    /// matches the relay).
    #[arg(long, value_name = "URL")]
    pub(crate) proxy: Option<String>,
    /// A file holding user:password for the proxy.
    #[arg(long, value_name = "FILE")]
    pub(crate) proxy_credentials_file: Option<PathBuf>,
    /// Default backend response timeout for targets without their own, e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    pub(crate) timeout: Option<String>,
    /// Serve the local request inspector (page and JSON API: recent requests, replay) on this
    /// address, e.g. 127.0.0.1:4040. Off by default; loopback only unless inspect.allow_remote.
    #[arg(long, value_name = "ADDR")]
    pub(crate) inspect: Option<String>,
    /// Log format: text (default) or json. Level from RUST_LOG; colour only on a terminal and
    /// never with NO_COLOR set.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub(crate) log_format: String,
}

impl RunArgs {
    /// File, `CONNECTOR_*` environment and these flags, validated.
    pub(crate) fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), &ProcessEnv, self.flags()?)
    }

    /// The flags as a table in the config file's shape.
    fn flags(&self) -> Result<Table, ConfigError> {
        let mut flags = Table::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                flags.insert(k.to_string(), Value::String(v));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        put("server", self.server.clone());
        put("tenant", self.tenant.clone());
        put("secret_file", path(&self.secret_file));
        put("ca_cert", path(&self.ca_cert));
        put("transport", self.transport.clone());
        put("proxy", self.proxy.clone());
        put("proxy_credentials_file", path(&self.proxy_credentials_file));
        put("timeout", self.timeout.clone());
        if let Some(listen) = &self.inspect {
            let mut inspect = Table::new();
            inspect.insert("listen".into(), Value::String(listen.clone()));
            flags.insert("inspect".into(), Value::Table(inspect));
        }
        if !self.targets.is_empty() {
            let mut targets = Table::new();
            for spec in &self.targets {
                let (name, t) = connector::config::parse_target_flag(spec)?;
                let mut entry = Table::new();
                entry.insert("url".into(), Value::String(t.url));
                if let Some(d) = t.timeout {
                    entry.insert("timeout".into(), duration(d));
                }
                if let Some(p) = t.ca_cert {
                    entry.insert("ca_cert".into(), Value::String(p.display().to_string()));
                }
                for (key, on) in [
                    ("insecure", t.insecure),
                    ("http2", t.http2),
                    ("preserve_host", t.preserve_host),
                ] {
                    if on {
                        entry.insert(key.into(), Value::Boolean(true));
                    }
                }
                if let Some(list) = t.upgrades {
                    let list = list.into_iter().map(Value::String).collect();
                    entry.insert("upgrades".into(), Value::Array(list));
                }
                targets.insert(name, Value::Table(entry));
            }
            flags.insert("targets".into(), Value::Table(targets));
        }
        Ok(flags)
    }
}

/// The effective configuration as TOML in the config file's shape, every default filled in, the
/// secret and proxy credentials shown as `***`.
pub(crate) fn render(config: &Config) -> String {
    let mut top = Table::new();
    let mut put = |k: &str, v: Value| {
        top.insert(k.to_string(), v);
    };
    put(
        "server",
        Value::String(format!(
            "https://{}:{}",
            bracket_v6(&config.server_host),
            config.server_port
        )),
    );
    put("tenant", Value::String(config.tenant.clone()));
    put("secret", Value::String(MASK.into()));
    match config.ca_certs.as_slice() {
        [] => {}
        [one] => put("ca_cert", Value::String(one.display().to_string())),
        many => put(
            "ca_cert",
            Value::Array(
                many.iter()
                    .map(|p| Value::String(p.display().to_string()))
                    .collect(),
            ),
        ),
    }
    let transport = match config.transport {
        TransportMode::Auto => "auto",
        TransportMode::Quic => "quic",
        TransportMode::Tcp => "tcp",
    };
    put("transport", Value::String(transport.into()));
    if let Some(p) = &config.proxy {
        let auth = if p.credentials.is_some() { "***@" } else { "" };
        put(
            "proxy",
            Value::String(format!("http://{auth}{}:{}", bracket_v6(&p.host), p.port)),
        );
    }
    let mut session = Table::new();
    for (k, d) in [
        ("keep_alive", config.keep_alive),
        ("idle_timeout", config.idle_timeout),
        ("backoff_base", config.backoff_base),
        ("backoff_cap", config.backoff_cap),
        ("quic_fallback_after", config.quic_fallback_after),
        ("quic_probe_interval", config.quic_probe_interval),
    ] {
        session.insert(k.into(), duration(d));
    }
    session.insert(
        "max_streams".into(),
        Value::Integer(config.max_streams.into()),
    );
    session.insert("count".into(), Value::Integer(config.sessions.into()));
    let mut targets = Table::new();
    for (name, t) in &config.targets {
        let mut entry = Table::new();
        entry.insert("url".into(), Value::String(t.url.to_string()));
        entry.insert("timeout".into(), duration(t.timeout));
        if let Some(p) = &t.ca_cert {
            entry.insert("ca_cert".into(), Value::String(p.display().to_string()));
        }
        entry.insert("insecure".into(), Value::Boolean(t.insecure));
        entry.insert("http2".into(), Value::Boolean(t.http2));
        entry.insert("preserve_host".into(), Value::Boolean(t.preserve_host));
        let upgrades = t.upgrades.iter().cloned().map(Value::String).collect();
        entry.insert("upgrades".into(), Value::Array(upgrades));
        targets.insert(name.clone(), Value::Table(entry));
    }
    if let Some(i) = &config.inspect {
        let mut inspect = Table::new();
        inspect.insert("listen".into(), Value::String(i.listen.to_string()));
        inspect.insert("entries".into(), Value::Integer(i.entries as i64));
        inspect.insert("body_bytes".into(), Value::Integer(i.body_bytes as i64));
        let redact = i
            .redact
            .iter()
            .map(|h| Value::String(h.to_string()))
            .collect();
        inspect.insert("redact".into(), Value::Array(redact));
        top.insert("inspect".into(), Value::Table(inspect));
    }
    top.insert("session".into(), Value::Table(session));
    top.insert("targets".into(), Value::Table(targets));
    toml::to_string(&top).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// What a masked secret reads as.
const MASK: &str = "***";

fn duration(d: std::time::Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
