//! `connector`: CLI → config → tracing → run until Ctrl-C/SIGTERM → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use connector::{Config, Connector};
use process_setup::layered::{ConfigError, ProcessEnv, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;

/// The on-premises agent of the relay tunnel: dials out to the relay and forwards its requests to
/// local backends. Settings come from --config FILE, CONNECTOR_* variables and these flags.
#[derive(Parser, Debug)]
#[command(name = "connector", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the relay and serve requests until stopped.
    Run(RunArgs),
    /// Register the connector with the service manager (systemd on Linux).
    #[command(subcommand)]
    Service(ServiceCommand),
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Write a systemd unit that runs `connector run --config FILE`, then enable and start it.
    Install {
        /// The config file the service runs with (validated now).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Unit name.
        #[arg(long, default_value = "relay-connector")]
        name: String,
        /// Where to write the unit.
        #[arg(long, value_name = "DIR", default_value = connector::service::SYSTEM_UNIT_DIR)]
        unit_dir: PathBuf,
        /// Only write the unit; do not call systemctl.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop, disable and remove the unit.
    Uninstall {
        #[arg(long, default_value = "relay-connector")]
        name: String,
        #[arg(long, value_name = "DIR", default_value = connector::service::SYSTEM_UNIT_DIR)]
        unit_dir: PathBuf,
        /// Only remove the unit file; do not call systemctl.
        #[arg(long)]
        no_stop: bool,
    },
    /// Start the service.
    Start {
        #[arg(long, default_value = "relay-connector")]
        name: String,
    },
    /// Stop the service.
    Stop {
        #[arg(long, default_value = "relay-connector")]
        name: String,
    },
    /// Show the service's state.
    Status {
        #[arg(long, default_value = "relay-connector")]
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The relay, e.g. https://relay.example.com (port 443 unless given).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The tenant this connector serves.
    #[arg(long, value_name = "NAME")]
    tenant: Option<String>,
    /// A file holding the tenant credential secret.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// A target: NAME=URL[,timeout=30s][,ca-cert=FILE][,insecure][,http2][,preserve-host]
    /// [,upgrade=PROTOCOL]…[,no-upgrades]. Repeatable.
    #[arg(long = "target", value_name = "NAME=URL")]
    targets: Vec<String>,
    /// Extra PEM roots to verify the relay's certificate.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// auto (default: QUIC, falling back to TLS over TCP on the same port), quic or tcp.
    #[arg(long, value_name = "MODE")]
    transport: Option<String>,
    /// HTTP CONNECT proxy, http://[user:password@]host:port (default: HTTPS_PROXY unless NO_PROXY
    /// matches the relay).
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// A file holding user:password for the proxy.
    #[arg(long, value_name = "FILE")]
    proxy_credentials_file: Option<PathBuf>,
    /// Default backend response timeout for targets without their own, e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Log format: text (default) or json. Level from RUST_LOG.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Service(cmd) => return service(cmd),
    };
    process_setup::init_tracing(&args.log_format, "info,quinn=warn,rustls=warn");
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connector: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("connector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let connector = match Connector::new(config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connector: configuration error: {e}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(process_setup::cancel_on_signal(shutdown.clone()));
        connector.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

fn service(cmd: ServiceCommand) -> ExitCode {
    use connector::service::{self, Unit};
    let result = match cmd {
        ServiceCommand::Install {
            config,
            name,
            unit_dir,
            no_start,
        } => {
            // The unit must not point at a config that would fail at every restart.
            if let Err(e) = Config::load(
                Some(&config),
                &process_setup::layered::ProcessEnv,
                toml::Table::new(),
            ) {
                eprintln!(
                    "connector: configuration error in {}: {e}",
                    config.display()
                );
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            let exe = std::env::current_exe().and_then(|p| p.canonicalize());
            let config = config.canonicalize();
            match (exe, config) {
                (Ok(exe), Ok(config)) => {
                    service::install(&Unit { name, exe, config }, &unit_dir, !no_start)
                        .map(|p| format!("installed {}", p.display()))
                }
                (Err(e), _) | (_, Err(e)) => Err(service::ServiceError::Io(PathBuf::from("."), e)),
            }
        }
        ServiceCommand::Uninstall {
            name,
            unit_dir,
            no_stop,
        } => service::uninstall(&name, &unit_dir, !no_stop)
            .map(|p| format!("removed {}", p.display())),
        ServiceCommand::Start { name } => service::control("start", &name),
        ServiceCommand::Stop { name } => service::control("stop", &name),
        ServiceCommand::Status { name } => service::control("status", &name),
    };
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("connector: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut flags = toml::Table::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            flags.insert(k.to_string(), toml::Value::String(v));
        }
    };
    put("server", args.server.clone());
    put("tenant", args.tenant.clone());
    put(
        "secret_file",
        args.secret_file.as_ref().map(|p| p.display().to_string()),
    );
    put(
        "ca_cert",
        args.ca_cert.as_ref().map(|p| p.display().to_string()),
    );
    put("transport", args.transport.clone());
    put("proxy", args.proxy.clone());
    put(
        "proxy_credentials_file",
        args.proxy_credentials_file
            .as_ref()
            .map(|p| p.display().to_string()),
    );
    put("timeout", args.timeout.clone());
    if !args.targets.is_empty() {
        let mut targets = toml::Table::new();
        for spec in &args.targets {
            let (name, t) = connector::config::parse_target_flag(spec)?;
            let mut entry = toml::Table::new();
            entry.insert("url".into(), toml::Value::String(t.url));
            if let Some(d) = t.timeout {
                entry.insert(
                    "timeout".into(),
                    toml::Value::String(humantime::format_duration(d).to_string()),
                );
            }
            if let Some(p) = t.ca_cert {
                entry.insert(
                    "ca_cert".into(),
                    toml::Value::String(p.display().to_string()),
                );
            }
            for (key, on) in [
                ("insecure", t.insecure),
                ("http2", t.http2),
                ("preserve_host", t.preserve_host),
            ] {
                if on {
                    entry.insert(key.into(), toml::Value::Boolean(true));
                }
            }
            if let Some(list) = t.upgrades {
                let list = list.into_iter().map(toml::Value::String).collect();
                entry.insert("upgrades".into(), toml::Value::Array(list));
            }
            targets.insert(name, toml::Value::Table(entry));
        }
        flags.insert("targets".into(), toml::Value::Table(targets));
    }
    Config::load(args.config.as_deref(), &ProcessEnv, flags)
}
