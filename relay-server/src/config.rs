//! The relay's configuration: file, `RELAY_*` environment, flags → one typed [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use process_setup::layered::{self, ConfigError, EnvSource};
use serde::Deserialize;

mod acme;

pub use acme::{Acme, AcmeFile, Challenge, LETS_ENCRYPT};

/// The file/env shape. Every field is optional; [`Config::from_file`] fills defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's name (logs, session placement). Default: the host name.
    pub node_name: Option<String>,
    /// Where the relay keeps its keys, generated certificate and SQLite database.
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH`; default `sqlite://{data_dir}/relay.db`.
    pub database_url: Option<String>,
    /// The public base URL visitors use, for printed URLs (default from the listener).
    pub public_url: Option<String>,
    /// Listeners.
    #[serde(default)]
    pub listen: ListenFile,
    /// Certificate and key for the HTTPS ingress and the QUIC endpoint.
    #[serde(default)]
    pub tls: TlsFile,
    /// Visitor-side limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// Connector-session settings.
    #[serde(default)]
    pub tunnel: TunnelFile,
    /// Shutdown settings.
    #[serde(default)]
    pub shutdown: ShutdownFile,
    /// Hostname routing.
    #[serde(default)]
    pub routing: RoutingFile,
    /// `[audit]`
    #[serde(default)]
    pub audit: AuditFile,
    /// `[catalog]`
    #[serde(default)]
    pub catalog: CatalogFile,
    /// `[cluster]`
    #[serde(default)]
    pub cluster: ClusterFile,
    /// `[queue]`
    #[serde(default)]
    pub queue: QueueFile,
    /// `[pairing]`
    #[serde(default)]
    pub pairing: PairingFile,
    /// `[acme]`
    #[serde(default)]
    pub acme: AcmeFile,
}

/// `[pairing]`: peer introductions and WebSocket pairing on `/pair/{tenant}/…` (docs/pairing.md).
/// Each limit is enforced with a WebSocket close code listed there.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingFile {
    /// Introduction sockets (peers online) per tenant and node. Default 1000.
    pub max_peers: Option<u32>,
    /// Connection sockets (held or piped) per tenant and node. Default 2000.
    pub max_connections: Option<u32>,
    /// Document ids one peer may have joined at once. Default 100.
    pub max_document_ids: Option<u32>,
    /// Largest WebSocket message (after reassembly). Default 1 MiB, at most 64 MiB.
    pub max_frame_bytes: Option<u32>,
    /// Bytes buffered for a connection whose partner has not arrived. Default 1 MiB.
    pub max_held_bytes: Option<u32>,
    /// How long a connection waits for its partner. Default 30 s.
    #[serde(default, with = "humantime_serde")]
    pub hold_timeout: Option<Duration>,
    /// A socket that sends nothing (not even a pong to the relay's pings) for this long is
    /// closed. Default 120 s (the npm client heartbeats every 55 s).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// How often open sockets are checked against the tenant's mode and tokens (a revoked
    /// token or pairing turned off closes them). Default 5 s, at least 10 ms.
    #[serde(default, with = "humantime_serde")]
    pub recheck_interval: Option<Duration>,
}

/// `[queue]`: queue mode (`/queue/…` and `Prefer: respond-async`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Largest request body accepted into the queue. Default 1 MiB, at most 64 MiB.
    pub max_body_bytes: Option<u64>,
    /// Largest response body kept for pickup (longer ones are cut and marked). Default 1 MiB.
    pub max_response_bytes: Option<u64>,
    /// Time to live of a message unless its tenant sets one. Default 24 h.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Longest time to live a tenant may set. Default 30 days.
    #[serde(default, with = "humantime_serde")]
    pub max_ttl: Option<Duration>,
    /// How long final messages and their responses are kept. Default 7 days.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// How long a node owns a message it is delivering; after that another node may. Default 60 s.
    #[serde(default, with = "humantime_serde")]
    pub lease: Option<Duration>,
    /// How often a node looks for due messages without being woken. Default 1 s.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Deliveries in flight per tenant and node (parallel tenants). Default 16.
    pub parallel: Option<u32>,
    /// Waiting messages per tenant unless it sets its own quota. Default 100000.
    pub max_messages: Option<u64>,
    /// Waiting body bytes per tenant unless it sets its own quota. Default 1 GiB.
    pub max_bytes: Option<u64>,
    /// First retry delay (doubling per attempt, each delay between half and all of it). Default 1 s.
    #[serde(default, with = "humantime_serde")]
    pub retry_base: Option<Duration>,
    /// Longest retry delay. Default 5 min.
    #[serde(default, with = "humantime_serde")]
    pub retry_cap: Option<Duration>,
}

/// `[cluster]`: relay nodes sharing one database.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The address other nodes reach this one on (`host:port`). Default: the HTTPS listener's
    /// address when it is not a wildcard.
    pub advertise: Option<String>,
    /// The address connectors may dial this node on directly (`host:port`), when every node has
    /// one of its own: listed to connectors so that each keeps sessions on two nodes. Unset
    /// (behind one load-balanced address): none.
    pub public_address: Option<String>,
    /// How often the node refreshes its row in the node registry. Default 5 s.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// A node whose heartbeat is older than this is not counted as live. Default 15 s; its row is
    /// deleted after twice that.
    #[serde(default, with = "humantime_serde")]
    pub node_timeout: Option<Duration>,
}

/// `[routing]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// A wildcard base domain: `{target}.{tenant}.{base_domain}` routes without provisioning (needs
    /// a wildcard DNS entry and certificate).
    pub base_domain: Option<String>,
    /// Load balancers whose `X-Forwarded-*` headers are believed (addresses or CIDR blocks).
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[listen]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// HTTPS (TCP) and QUIC (UDP) on the same port. Default `0.0.0.0:8443`.
    pub https: Option<SocketAddr>,
    /// Optional plain-HTTP ingress, for running behind a TLS-terminating load balancer.
    pub http: Option<SocketAddr>,
    /// Optional admin listener (`/healthz`, `/readyz`, management web). Keep it on loopback.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers to besides `localhost`, `127.0.0.1`, `[::1]` and
    /// its own address: `name` for a name served through a TLS reverse proxy, `http://name`
    /// for one reached over plain HTTP. Other `Host`s get 421 (DNS-rebinding defence).
    pub admin_hosts: Option<Vec<String>>,
}

/// `[tls]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain. Without cert and key a self-signed one is generated once.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest visitor request body (tenants may override). Default 10 MiB.
    pub max_body_bytes: Option<u64>,
    /// Wait for the connector's response head (tenants may override). Default 30 s.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// Most streams in flight per tenant (tenants may override). Default 256.
    pub max_concurrent_streams: Option<u32>,
    /// Time from a visitor connection's first byte to the end of the request headers. Default 10 s.
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// Longest gap between two reads of a request body. Default 30 s.
    #[serde(default, with = "humantime_serde")]
    pub body_idle_timeout: Option<Duration>,
    /// Most request header fields. Default 100.
    pub max_headers: Option<usize>,
    /// Longest request target (path and query, plus the authority when sent): longer → 414.
    /// Default 8 KiB.
    pub max_uri_bytes: Option<usize>,
    /// Streams one visitor HTTP/2 connection may have open (more are refused). Default 100.
    pub h2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 flow-control window per visitor stream, bytes. Default 64 KiB.
    pub h2_stream_window_bytes: Option<u32>,
    /// HTTP/2 flow-control window per visitor connection, bytes. Default 1 MiB.
    pub h2_connection_window_bytes: Option<u32>,
    /// A response body that delivers nothing for this long while the visitor waits is cut. Default
    /// 300 s (long enough for server-sent events with heartbeats).
    #[serde(default, with = "humantime_serde")]
    pub stream_idle_timeout: Option<Duration>,
    /// Most visitor connections at once, per listener. Default 10 000.
    pub max_connections: Option<usize>,
    /// Most visitor connections at once from one source address, per listener. Default 256.
    pub max_connections_per_ip: Option<usize>,
    /// TLS handshake deadline for visitors. Default 10 s.
    #[serde(default, with = "humantime_serde")]
    pub tls_handshake_timeout: Option<Duration>,
}

/// `[tunnel]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// A silent session is dead after this (the relay pings every third of it). Default 3 s, so a
    /// connector that died without a goodbye is noticed in seconds.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Deadline from handshake to `Hello`. Default 10 s.
    #[serde(default, with = "humantime_serde")]
    pub auth_timeout: Option<Duration>,
    /// Lifetime of issued tokens (at most 15 min). Default 10 min.
    #[serde(default, with = "humantime_serde")]
    pub token_ttl: Option<Duration>,
    /// Secret checks running at once. Default 8.
    pub secret_check_concurrency: Option<usize>,
    /// QUIC handshakes pending at once. Default 1024.
    pub max_pending_handshakes: Option<u32>,
    /// The JWT issuer and audience prefix. Default `relay`.
    pub issuer: Option<String>,
}

/// `[catalog]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// How often the relay checks the store for tenant, credential and hostname changes.
    /// Default 500 ms. On PostgreSQL changes are also pushed at once (LISTEN/NOTIFY).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
}

/// Membership in the node registry.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The address peers reach this node on, as configured (unset: the bound HTTPS address when
    /// it is not a wildcard).
    pub advertise: Option<String>,
    /// The address connectors may dial this node on directly, if any.
    pub public_address: Option<String>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Heartbeats older than this are stale.
    pub node_timeout: Duration,
}

/// `[audit]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Record every visitor request. Default true.
    pub enabled: Option<bool>,
    /// Records older than this are purged. Default 30 days.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Records waiting to be written, at most; beyond it they are dropped and counted.
    /// Default 10000.
    pub queue: Option<usize>,
}

/// `[shutdown]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    /// How long in-flight requests may finish after a stop signal. Default 30 s.
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name.
    pub node_name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL.
    pub database_url: String,
    /// Public base URL, if configured.
    pub public_url: Option<String>,
    /// HTTPS + QUIC address.
    pub listen_https: SocketAddr,
    /// Plain-HTTP address.
    pub listen_http: Option<SocketAddr>,
    /// Admin address.
    pub listen_admin: Option<SocketAddr>,
    /// Extra host names of the admin listener (validated).
    pub admin_hosts: Vec<String>,
    /// Certificate + key files, or `None` for the generated self-signed pair.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Limits.
    pub limits: Limits,
    /// Tunnel settings.
    pub tunnel: Tunnel,
    /// Drain grace on shutdown.
    pub shutdown_grace: Duration,
    /// Wildcard base domain for `{target}.{tenant}.{base}` hostnames.
    pub base_domain: Option<String>,
    /// Peers whose forwarding headers are kept and extended.
    pub trusted_proxies: Vec<crate::forwarded::Cidr>,
    /// The audit log.
    pub audit: Audit,
    /// How often the catalog is checked for changes.
    pub catalog_poll_interval: Duration,
    /// `[cluster]`
    pub cluster: Cluster,
    /// `[queue]`
    pub queue: Queue,
    /// `[pairing]`
    pub pairing: Pairing,
    /// `[acme]`: `None` when disabled.
    pub acme: Option<Acme>,
}

/// `[pairing]`, validated.
#[derive(Debug, Clone)]
pub struct Pairing {
    /// Peers online per tenant and node.
    pub max_peers: usize,
    /// Connection sockets per tenant and node.
    pub max_connections: usize,
    /// Document ids per peer.
    pub max_document_ids: usize,
    /// Largest WebSocket message.
    pub max_frame_bytes: usize,
    /// Bytes held for an unmatched connection.
    pub max_held_bytes: usize,
    /// Wait for the partner.
    pub hold_timeout: Duration,
    /// Idle timeout of every pairing socket.
    pub idle_timeout: Duration,
    /// Period of the open sockets' recheck.
    pub recheck_interval: Duration,
}

/// `[queue]`, validated.
#[derive(Debug, Clone)]
pub struct Queue {
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Largest response body kept.
    pub max_response_bytes: u64,
    /// Default time to live.
    pub ttl: Duration,
    /// Longest time to live.
    pub max_ttl: Duration,
    /// Retention of final messages.
    pub retention: Duration,
    /// Delivery lease.
    pub lease: Duration,
    /// Poll period.
    pub poll_interval: Duration,
    /// Deliveries in flight per tenant and node.
    pub parallel: u32,
    /// Default quota of waiting messages.
    pub max_messages: u64,
    /// Default quota of waiting bytes.
    pub max_bytes: u64,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_cap: Duration,
}

/// `[audit]`, validated.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Record requests at all.
    pub enabled: bool,
    /// Age after which records are purged.
    pub retention: Duration,
    /// Queue bound.
    pub queue: usize,
}

/// Visitor-side limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Default body limit.
    pub max_body_bytes: u64,
    /// Default response-head wait.
    pub request_timeout: Duration,
    /// Default per-tenant stream cap.
    pub max_concurrent_streams: u32,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Body idle timeout.
    pub body_idle_timeout: Duration,
    /// Header count.
    pub max_headers: usize,
    /// Request-target length.
    pub max_uri_bytes: usize,
    /// HTTP/2 streams per visitor connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 stream window.
    pub h2_stream_window_bytes: u32,
    /// HTTP/2 connection window.
    pub h2_connection_window_bytes: u32,
    /// Response body idle timeout.
    pub stream_idle_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Per-address connection cap.
    pub max_connections_per_ip: usize,
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
}

/// Tunnel settings.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Auth deadline.
    pub auth_timeout: Duration,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Concurrent secret checks.
    pub secret_check_concurrency: usize,
    /// Pending QUIC handshakes.
    pub max_pending_handshakes: u32,
    /// JWT issuer.
    pub issuer: String,
}

/// Longest token lifetime accepted in configuration.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

impl Config {
    /// Loads file + `RELAY_*` env + flags and validates.
    pub fn load(
        file: Option<&Path>,
        env: &dyn EnvSource,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        Config::load_with_defaults(toml::Table::new(), file, env, flags)
    }

    /// Like [`Config::load`], with a mode's defaults below the file.
    pub fn load_with_defaults(
        defaults: toml::Table,
        file: Option<&Path>,
        env: &dyn EnvSource,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        let raw: FileConfig = layered::load_with_defaults(defaults, file, "RELAY_", env, flags)?;
        Config::from_file(raw, file)
    }

    /// Validates and fills defaults. `file` anchors relative paths.
    pub fn from_file(raw: FileConfig, file: Option<&Path>) -> Result<Config, ConfigError> {
        let data_dir = layered::relative_to(
            file,
            &raw.data_dir.unwrap_or_else(|| PathBuf::from("relay-data")),
        );
        let database_url = raw
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("relay.db").display()));
        let tls = match (raw.tls.cert, raw.tls.key) {
            (Some(c), Some(k)) => Some((
                layered::relative_to(file, &c),
                layered::relative_to(file, &k),
            )),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new(
                    "tls: set both cert and key ([tls] in the file, RELAY_TLS__CERT and \
                     RELAY_TLS__KEY, or --tls-cert and --tls-key), or neither (self-signed)",
                ))
            }
        };
        let l = raw.limits;
        let limits = Limits {
            max_body_bytes: l.max_body_bytes.unwrap_or(10 * 1024 * 1024),
            request_timeout: positive("limits.request_timeout", l.request_timeout, 30)?,
            max_concurrent_streams: l.max_concurrent_streams.unwrap_or(256).max(1),
            header_read_timeout: positive("limits.header_read_timeout", l.header_read_timeout, 10)?,
            body_idle_timeout: positive("limits.body_idle_timeout", l.body_idle_timeout, 30)?,
            max_headers: l.max_headers.unwrap_or(100).clamp(1, 1000),
            max_uri_bytes: l.max_uri_bytes.unwrap_or(8192).clamp(256, 65_000),
            h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(100).clamp(1, 1000),
            // Windows bound what a visitor may send ahead; below 16 KiB uploads crawl, and RFC 9113
            // caps them at 2^31 - 1.
            h2_stream_window_bytes: l
                .h2_stream_window_bytes
                .unwrap_or(64 * 1024)
                .clamp(16 * 1024, (1 << 31) - 1),
            h2_connection_window_bytes: l
                .h2_connection_window_bytes
                .unwrap_or(1024 * 1024)
                .clamp(64 * 1024, (1 << 31) - 1),
            stream_idle_timeout: positive(
                "limits.stream_idle_timeout",
                l.stream_idle_timeout,
                300,
            )?,
            max_connections: l.max_connections.unwrap_or(10_000).max(1),
            max_connections_per_ip: l.max_connections_per_ip.unwrap_or(256).max(1),
            tls_handshake_timeout: positive(
                "limits.tls_handshake_timeout",
                l.tls_handshake_timeout,
                10,
            )?,
        };
        let t = raw.tunnel;
        let token_ttl = positive("tunnel.token_ttl", t.token_ttl, 600)?;
        if token_ttl > MAX_TOKEN_TTL {
            return Err(ConfigError::new("tunnel.token_ttl: at most 15m"));
        }
        let tunnel = Tunnel {
            idle_timeout: positive("tunnel.idle_timeout", t.idle_timeout, 3)?,
            auth_timeout: positive("tunnel.auth_timeout", t.auth_timeout, 10)?,
            token_ttl,
            secret_check_concurrency: t.secret_check_concurrency.unwrap_or(8).max(1),
            max_pending_handshakes: t.max_pending_handshakes.unwrap_or(1024).max(1),
            issuer: t.issuer.unwrap_or_else(|| "relay".to_string()),
        };
        // The admin listener has no authentication yet: it must not be reachable from outside.
        if let Some(a) = raw.listen.admin {
            if !a.ip().is_loopback() {
                return Err(ConfigError::new(format!(
                    "listen.admin = {a}: the admin listener (health, readiness, metrics) has no \
                     authentication in this build; bind it to a loopback address"
                )));
            }
        }
        let admin_hosts = raw.listen.admin_hosts.clone().unwrap_or_default();
        management_web::AllowedHosts::loopback(raw.listen.admin)
            .with_names(&admin_hosts)
            .map_err(|e| ConfigError::new(format!("listen.admin_hosts: {e}")))?;
        let node_name = raw.node_name.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "relay".to_string())
        });
        let audit = Audit {
            enabled: raw.audit.enabled.unwrap_or(true),
            retention: positive("audit.retention", raw.audit.retention, 30 * 24 * 3600)?,
            queue: raw.audit.queue.unwrap_or(10_000).clamp(1, 1_000_000),
        };
        let catalog_poll_interval = layered::duration(
            "catalog.poll_interval",
            raw.catalog.poll_interval,
            Duration::from_millis(500),
            Some(Duration::from_millis(10)),
        )?;
        let listen_https = raw
            .listen
            .https
            .unwrap_or_else(|| "0.0.0.0:8443".parse().expect("literal"));
        let heartbeat_interval = layered::duration(
            "cluster.heartbeat_interval",
            raw.cluster.heartbeat_interval,
            Duration::from_secs(5),
            Some(Duration::from_millis(50)),
        )?;
        let node_timeout = positive("cluster.node_timeout", raw.cluster.node_timeout, 15)?;
        if node_timeout <= heartbeat_interval {
            return Err(ConfigError::new(
                "cluster.node_timeout must be longer than cluster.heartbeat_interval",
            ));
        }
        let host_port = |key: &str, v: Option<String>| match v {
            Some(a) if a.trim().is_empty() || !a.contains(':') => Err(ConfigError::new(format!(
                "{key} = {a:?}: expected host:port"
            ))),
            a => Ok(a.map(|a| a.trim().to_string())),
        };
        // Unset: the bound HTTPS address when it is not a wildcard, decided at start.
        let advertise = host_port("cluster.advertise", raw.cluster.advertise)?;
        let public_address = host_port("cluster.public_address", raw.cluster.public_address)?;
        let q = &raw.queue;
        let max_body_bytes = q.max_body_bytes.unwrap_or(1 << 20);
        if max_body_bytes > 64 << 20 {
            return Err(ConfigError::new(format!(
                "queue.max_body_bytes = {max_body_bytes}: at most 64 MiB (67108864)"
            )));
        }
        let max_ttl = positive("queue.max_ttl", q.max_ttl, 30 * 24 * 3600)?;
        let ttl = positive("queue.ttl", q.ttl, 24 * 3600)?;
        if ttl > max_ttl {
            return Err(ConfigError::new("queue.ttl must not exceed queue.max_ttl"));
        }
        let queue = Queue {
            max_body_bytes,
            max_response_bytes: q.max_response_bytes.unwrap_or(1 << 20).min(64 << 20),
            ttl,
            max_ttl,
            retention: positive("queue.retention", q.retention, 7 * 24 * 3600)?,
            lease: positive("queue.lease", q.lease, 60)?,
            poll_interval: layered::duration(
                "queue.poll_interval",
                q.poll_interval,
                Duration::from_secs(1),
                Some(Duration::from_millis(10)),
            )?,
            parallel: q.parallel.unwrap_or(16).clamp(1, 1024),
            max_messages: q.max_messages.unwrap_or(100_000),
            max_bytes: q.max_bytes.unwrap_or(1 << 30),
            retry_base: positive("queue.retry_base", q.retry_base, 1)?,
            retry_cap: positive("queue.retry_cap", q.retry_cap, 300)?,
        };
        let p = &raw.pairing;
        let max_frame_bytes = p.max_frame_bytes.unwrap_or(1 << 20);
        if !(1024..=64 << 20).contains(&max_frame_bytes) {
            return Err(ConfigError::new(format!(
                "pairing.max_frame_bytes = {max_frame_bytes}: between 1 KiB and 64 MiB"
            )));
        }
        let pairing = Pairing {
            max_peers: p.max_peers.unwrap_or(1000).max(1) as usize,
            max_connections: p.max_connections.unwrap_or(2000).max(1) as usize,
            max_document_ids: p.max_document_ids.unwrap_or(100).max(1) as usize,
            max_frame_bytes: max_frame_bytes as usize,
            max_held_bytes: p.max_held_bytes.unwrap_or(1 << 20) as usize,
            hold_timeout: positive("pairing.hold_timeout", p.hold_timeout, 30)?,
            idle_timeout: positive("pairing.idle_timeout", p.idle_timeout, 120)?,
            recheck_interval: layered::duration(
                "pairing.recheck_interval",
                p.recheck_interval,
                Duration::from_secs(5),
                Some(Duration::from_millis(10)),
            )?,
        };
        let acme = Acme::from_file(raw.acme, file, raw.listen.http.is_some())?;
        Ok(Config {
            acme,
            audit,
            queue,
            pairing,
            catalog_poll_interval,
            cluster: Cluster {
                advertise,
                public_address,
                heartbeat_interval,
                node_timeout,
            },
            node_name,
            data_dir,
            database_url,
            public_url: raw.public_url.map(|u| u.trim_end_matches('/').to_string()),
            listen_https,
            listen_http: raw.listen.http,
            listen_admin: raw.listen.admin,
            admin_hosts,
            tls,
            limits,
            tunnel,
            shutdown_grace: positive("shutdown.grace", raw.shutdown.grace, 30)?,
            trusted_proxies: raw
                .routing
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    crate::forwarded::Cidr::parse(s)
                        .map_err(|e| ConfigError::new(format!("routing.trusted_proxies: {e}")))
                })
                .collect::<Result<_, _>>()?,
            base_domain: raw
                .routing
                .base_domain
                .map(|d| {
                    relay_store::canonical_hostname(&d)
                        .map_err(|e| ConfigError::new(format!("routing.base_domain: {e}")))
                })
                .transpose()?,
        })
    }
}

fn positive(name: &str, v: Option<Duration>, default_secs: u64) -> Result<Duration, ConfigError> {
    layered::duration(name, v, Duration::from_secs(default_secs), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_settings_are_checked() {
        let c = Config::from_file(FileConfig::default(), None).unwrap();
        assert_eq!(c.cluster.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.cluster.node_timeout, Duration::from_secs(15));
        assert_eq!(c.cluster.advertise, None);
        let mut f = FileConfig::default();
        f.cluster.advertise = Some("relay-2.internal:8443".into());
        let c = Config::from_file(f, None).unwrap();
        assert_eq!(
            c.cluster.advertise.as_deref(),
            Some("relay-2.internal:8443")
        );
        let mut f = FileConfig::default();
        f.cluster.advertise = Some("no-port".into());
        assert!(Config::from_file(f, None).is_err());
        let mut f = FileConfig::default();
        f.cluster.node_timeout = Some(Duration::from_secs(1));
        f.cluster.heartbeat_interval = Some(Duration::from_secs(2));
        assert!(Config::from_file(f, None).is_err());
    }

    #[test]
    fn defaults_are_production_values() {
        let c = Config::from_file(FileConfig::default(), None).unwrap();
        assert_eq!(c.listen_https.port(), 8443);
        assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.tunnel.token_ttl, Duration::from_secs(600));
        assert!(c.database_url.starts_with("sqlite://"));
    }

    #[test]
    fn the_example_config_parses() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/relay-server.example.toml");
        let c = Config::load(Some(&path), &Vec::new(), toml::Table::new()).unwrap();
        assert_eq!(c.limits.max_headers, 100);
    }

    #[test]
    fn unknown_keys_and_bad_values_stop_the_binary() {
        let env = vec![("RELAY_LIMITS__MAX_BODDY".to_string(), "1".to_string())];
        assert!(Config::load(None, &env, toml::Table::new()).is_err());
        let env = vec![("RELAY_TUNNEL__TOKEN_TTL".to_string(), "1h".to_string())];
        assert!(Config::load(None, &env, toml::Table::new()).is_err());
        let env = vec![("RELAY_TLS__CERT".to_string(), "/x".to_string())];
        assert!(Config::load(None, &env, toml::Table::new()).is_err());
        let env = vec![(
            "RELAY_LISTEN__ADMIN".to_string(),
            "0.0.0.0:9090".to_string(),
        )];
        let err = Config::load(None, &env, toml::Table::new()).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        for bad in [
            "[\"admin.example.com:8443\"]",
            "[\"*.example.com\"]",
            "\"admin\"",
        ] {
            let env = vec![("RELAY_LISTEN__ADMIN_HOSTS".to_string(), bad.to_string())];
            let err = Config::load(None, &env, toml::Table::new()).unwrap_err();
            assert!(err.to_string().contains("admin_hosts"), "{bad}: {err}");
        }
    }

    #[test]
    fn admin_hosts_come_from_the_environment() {
        let env = vec![(
            "RELAY_LISTEN__ADMIN_HOSTS".to_string(),
            r#"["admin.example.com", "http://relay-admin"]"#.to_string(),
        )];
        let c = Config::load(None, &env, toml::Table::new()).unwrap();
        assert_eq!(c.admin_hosts, ["admin.example.com", "http://relay-admin"]);
        let c = Config::from_file(FileConfig::default(), None).unwrap();
        assert!(c.admin_hosts.is_empty());
    }

    #[test]
    fn environment_sets_nested_values() {
        let env = vec![
            (
                "RELAY_DATABASE_URL".to_string(),
                "sqlite:///tmp/x.db".to_string(),
            ),
            (
                "RELAY_LISTEN__HTTPS".to_string(),
                "127.0.0.1:9443".to_string(),
            ),
            (
                "RELAY_LIMITS__REQUEST_TIMEOUT".to_string(),
                "5s".to_string(),
            ),
        ];
        let c = Config::load(None, &env, toml::Table::new()).unwrap();
        assert_eq!(c.database_url, "sqlite:///tmp/x.db");
        assert_eq!(c.listen_https.port(), 9443);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(5));
    }
}
