//! `management-web`: serves the management app alone against a relay's database (the relay also
//! serves it on its admin listener).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use process_setup::layered::{self, ConfigError, ProcessEnv, EXIT_CONFIG};
use serde::Deserialize;

/// The relay's management web, standalone: the admin UI, /api/v1 and /healthz, /readyz over the
/// relays' database. Settings come from --config FILE, then MANAGEMENT_* variables, then flags.
#[derive(Parser, Debug)]
#[command(name = "management-web", version, about)]
struct Cli {
    /// TOML configuration file (keys: database_url, data_dir, listen, allowed_hosts, node_timeout,
    /// queue_ttl, queue_max_ttl, log_format).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://./relay-data/relay.db or postgres://relay@db/relay.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// The relays' data directory: its keys/credential-pepper must be the relays' own.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A host name browsers use besides localhost, 127.0.0.1, [::1] and the listen address
    /// (`name` behind a TLS proxy, or `http://name`); repeatable.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// Relay nodes whose heartbeat is older than this are not listed: the relays'
    /// `cluster.node_timeout` (default 15s).
    #[arg(long, value_name = "DURATION")]
    node_timeout: Option<String>,
    /// The relays' `queue.ttl`: what a retried message of a tenant without its own time to live
    /// gets (default 24h).
    #[arg(long, value_name = "DURATION")]
    queue_ttl: Option<String>,
    /// The relays' `queue.max_ttl`: the longest time to live a tenant may be given (default
    /// 30days).
    #[arg(long, value_name = "DURATION")]
    queue_max_ttl: Option<String>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    /// Host names the listener answers to besides the loopback names and its own address.
    allowed_hosts: Option<Vec<String>>,
    /// The relays' `cluster.node_timeout`, e.g. `15s`.
    node_timeout: Option<String>,
    /// The relays' `queue.ttl`, e.g. `24h`.
    queue_ttl: Option<String>,
    /// The relays' `queue.max_ttl`, e.g. `30days`.
    queue_max_ttl: Option<String>,
    log_format: Option<String>,
}

struct Config {
    database_url: String,
    pepper_file: PathBuf,
    listen: SocketAddr,
    allowed_hosts: Vec<String>,
    node_timeout: Duration,
    queue_ttl: management_web::QueueTtl,
    log_format: String,
}

fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let mut flags = toml::Table::new();
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            flags.insert(k.into(), toml::Value::String(v));
        }
    };
    set("database_url", cli.database_url.clone());
    set(
        "data_dir",
        cli.data_dir.as_ref().map(|p| p.display().to_string()),
    );
    set("listen", cli.listen.clone());
    set("node_timeout", cli.node_timeout.clone());
    set("queue_ttl", cli.queue_ttl.clone());
    set("queue_max_ttl", cli.queue_max_ttl.clone());
    set("log_format", cli.log_format.clone());
    if !cli.allowed_hosts.is_empty() {
        let names = cli.allowed_hosts.iter().cloned().map(toml::Value::String);
        flags.insert("allowed_hosts".into(), toml::Value::Array(names.collect()));
    }
    let raw: FileConfig = layered::load(cli.config.as_deref(), "MANAGEMENT_", &ProcessEnv, flags)?;
    let file = cli.config.as_deref();
    let data_dir = layered::relative_to(
        file,
        &raw.data_dir.unwrap_or_else(|| PathBuf::from("relay-data")),
    );
    let database_url = raw
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("relay.db").display()));
    let listen = raw.listen.unwrap_or_else(|| "127.0.0.1:9090".into());
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| ConfigError::new(format!("listen: {listen:?} is not an address:port")))?;
    let allowed_hosts = raw.allowed_hosts.unwrap_or_default();
    management_web::AllowedHosts::loopback(Some(listen))
        .with_names(&allowed_hosts)
        .map_err(|e| ConfigError::new(format!("allowed_hosts: {e}")))?;
    let node_timeout = duration("node_timeout", raw.node_timeout, "15s")?
        .unwrap_or(management_web::DEFAULT_NODE_TIMEOUT);
    let defaults = management_web::QueueTtl::default();
    let queue_ttl = management_web::QueueTtl {
        default: duration("queue_ttl", raw.queue_ttl, "24h")?.unwrap_or(defaults.default),
        max: duration("queue_max_ttl", raw.queue_max_ttl, "30days")?.unwrap_or(defaults.max),
    };
    if queue_ttl.default > queue_ttl.max {
        return Err(ConfigError::new("queue_ttl must not exceed queue_max_ttl"));
    }
    let log_format = raw.log_format.unwrap_or_else(|| "text".into());
    if log_format != "text" && log_format != "json" {
        return Err(ConfigError::new("log_format: use text or json"));
    }
    Ok(Config {
        database_url,
        pepper_file: data_dir.join("keys").join("credential-pepper"),
        listen,
        allowed_hosts,
        node_timeout,
        queue_ttl,
        log_format,
    })
}

/// A positive duration setting, if given (`example` shows the form in the error).
fn duration(key: &str, v: Option<String>, example: &str) -> Result<Option<Duration>, ConfigError> {
    let Some(s) = v else {
        return Ok(None);
    };
    let d = humantime::parse_duration(&s)
        .map_err(|_| ConfigError::new(format!("{key}: {s:?} is not a duration like {example}")))?;
    layered::duration(key, Some(d), d, None).map(Some)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("management-web: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    process_setup::init_tracing(&config.log_format, "info,sqlx=warn");
    let pepper = match std::fs::read(&config.pepper_file) {
        Ok(p) if p.len() >= 32 => p,
        Ok(_) => {
            eprintln!(
                "management-web: {} is shorter than 32 bytes",
                config.pepper_file.display()
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err(e) => {
            eprintln!(
                "management-web: cannot read the relays' pepper {}: {e} (point --data-dir at the relay's data directory, or copy its keys/)",
                config.pepper_file.display()
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let store = match relay_store::Store::connect(&config.database_url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("management-web: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if let Err(e) = store.migrate().await {
        eprintln!("management-web: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("management-web: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, "management web listening");
    // Validated in `load`; the bound address stands in for the configured one (port 0).
    let hosts = match management_web::AllowedHosts::loopback(Some(addr))
        .with_names(&config.allowed_hosts)
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("management-web: allowed_hosts: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let mut state = management_web::AppState::new(
        store.clone(),
        relay_store::SecretHasher::new(&pepper),
        hosts,
    )
    .with_node_timeout(config.node_timeout)
    .with_queue_ttl(config.queue_ttl);
    // Certificate uploads are sealed with the relays' certificate key (keys/, beside the pepper);
    // without it (a relay that predates it) uploads are refused and the rest works.
    let cert_key_file = config.pepper_file.with_file_name("certificate-key");
    match std::fs::read(&cert_key_file) {
        Ok(k) => match relay_store::CertificateKey::new(&k) {
            Ok(k) => state = state.with_certificate_key(std::sync::Arc::new(k)),
            Err(e) => {
                tracing::warn!(file = %cert_key_file.display(), error = %e, "certificate uploads off")
            }
        },
        Err(e) => {
            tracing::warn!(file = %cert_key_file.display(), error = %e, "certificate uploads off")
        }
    }
    let app = management_web::app(state);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(process_setup::cancel_on_signal(stop.clone()));
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await;
    store.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("management-web: {e}");
            ExitCode::FAILURE
        }
    }
}
