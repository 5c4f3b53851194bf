//! The connector's configuration: file, `CONNECTOR_*` environment, flags → one typed [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use process_setup::layered::{self, ConfigError, EnvSource, Secret};

/// Default per-target wait for the backend's response head.
pub const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connect timeout to a backend (TCP + TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The file/env shape (every field optional so flags and env can complete it).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The relay, `https://host[:port]` (port 443 by default).
    pub server: Option<String>,
    /// The tenant name.
    pub tenant: Option<String>,
    /// A file holding the credential secret (preferred).
    pub secret_file: Option<PathBuf>,
    /// The credential secret inline (prefer `secret_file`: environments and files leak less).
    pub secret: Option<Secret>,
    /// Extra PEM roots for the relay's certificate (or a TLS-inspecting proxy's CA).
    pub ca_cert: Option<PathBuf>,
    /// `auto` (default: QUIC, falling back to TLS over TCP), `quic` or `tcp`.
    pub transport: Option<String>,
    /// An HTTP CONNECT proxy URL, `http://[user:password@]host:port`. Default: `HTTPS_PROXY`
    /// (or `https_proxy`) unless `NO_PROXY` matches the relay's host.
    pub proxy: Option<String>,
    /// A file holding `user:password` for the proxy (instead of putting them in the URL).
    pub proxy_credentials_file: Option<PathBuf>,
    /// Targets by name.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetFile>,
    /// Default timeout for targets without their own.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Session tuning.
    #[serde(default)]
    pub session: SessionFile,
    /// The local request inspector (off unless `listen` is set).
    #[serde(default)]
    pub inspect: InspectFile,
}

/// `[inspect]`: the local request inspector.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectFile {
    /// Where the inspector's page and JSON API listen, e.g. `127.0.0.1:4040` (`--inspect`).
    pub listen: Option<String>,
    /// Allow a listen address other than loopback (the inspector shows request contents).
    #[serde(default)]
    pub allow_remote: bool,
    /// How many requests are kept (default 100, at most 10 000).
    pub entries: Option<usize>,
    /// How much of each body is kept (default 16 KiB, at most 1 MiB).
    pub body_bytes: Option<usize>,
    /// Header names whose values are never recorded, besides `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and `Set-Cookie`.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// One target in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    /// The backend base URL, `http://` or `https://`.
    pub url: String,
    /// How long to wait for the backend's response head.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Extra PEM roots to verify an `https` backend.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate verification for an `https` backend (explicit opt-in; logged loudly).
    #[serde(default)]
    pub insecure: bool,
    /// Speak HTTP/2 to the backend: h2c (prior knowledge) for `http://`, ALPN `h2` for `https://`.
    /// Needed for gRPC backends.
    #[serde(default)]
    pub http2: bool,
    /// Send the visitor's `Host` (as the relay saw it: `X-Forwarded-Host`) instead of the
    /// target's own, for backends that route or build links by host name.
    #[serde(default)]
    pub preserve_host: bool,
    /// The protocols a visitor may switch to with `Upgrade` (default `["websocket"]`; `[]` for
    /// none). `h2c` is refused: it would take visitors past the relay's routing and audit.
    pub upgrades: Option<Vec<String>>,
}

/// Session tuning knobs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    /// Keep-alive interval: QUIC keep-alives or multiplexer pings (default 1 s).
    #[serde(default, with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
    /// Declare the session dead after this much silence (default 3 s).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// First reconnect backoff (default 1 s).
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// Largest reconnect backoff (default 60 s).
    #[serde(default, with = "humantime_serde")]
    pub backoff_cap: Option<Duration>,
    /// Most concurrent request streams the relay may open on a session (default 100).
    pub max_streams: Option<u32>,
    /// With transport `auto`: how long to wait for QUIC before trying TLS over TCP (default 3 s).
    #[serde(default, with = "humantime_serde")]
    pub quic_fallback_after: Option<Duration>,
    /// Sessions this connector keeps to the relay at once (default 2): requests spread over
    /// them, and a lost one is replaced while the others carry on.
    pub count: Option<u32>,
    /// With transport `auto`, after falling back to TCP: how long before QUIC is tried again
    /// (default 5 min).
    #[serde(default, with = "humantime_serde")]
    pub quic_probe_interval: Option<Duration>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Relay host name (for TLS verification) and port.
    pub server_host: String,
    /// Relay port.
    pub server_port: u16,
    /// The tenant.
    pub tenant: String,
    /// The credential secret.
    pub secret: Secret,
    /// Extra roots for the relay's certificate, PEM.
    pub ca_certs: Vec<PathBuf>,
    /// Targets by canonical name.
    pub targets: BTreeMap<String, Target>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Reconnect backoff base.
    pub backoff_base: Duration,
    /// Reconnect backoff cap.
    pub backoff_cap: Duration,
    /// Most concurrent streams per session.
    pub max_streams: u32,
    /// Which transports to use.
    pub transport: TransportMode,
    /// The CONNECT proxy to reach the relay through, if any.
    pub proxy: Option<Proxy>,
    /// How long `auto` waits for QUIC before falling back to TCP.
    pub quic_fallback_after: Duration,
    /// After a fallback, how long `auto` stays on TCP before trying QUIC again.
    pub quic_probe_interval: Duration,
    /// Sessions kept at once.
    pub sessions: u32,
    /// The local inspector, when enabled.
    pub inspect: Option<Inspect>,
}

/// A validated `[inspect]`.
#[derive(Debug, Clone)]
pub struct Inspect {
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Requests kept.
    pub entries: usize,
    /// Bytes kept of each body.
    pub body_bytes: usize,
    /// Lowercase header names never recorded (the defaults included).
    pub redact: Vec<http::HeaderName>,
}

/// Headers the inspector never records, whatever the configuration says.
pub const ALWAYS_REDACTED: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportMode {
    /// QUIC first; TLS over TCP when UDP is blocked or fails.
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// An HTTP CONNECT proxy.
#[derive(Clone)]
pub struct Proxy {
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Basic credentials, `user:password`.
    pub credentials: Option<Secret>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        write!(f, "Proxy({}:{}", self.host, self.port)?;
        if self.credentials.is_some() {
            f.write_str(", with credentials")?;
        }
        f.write_str(")")
    }
}

/// A backend the connector may call.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL: scheme, authority and an optional path prefix.
    pub url: Uri,
    /// Wait for the response head.
    pub timeout: Duration,
    /// Extra roots for an https backend.
    pub ca_cert: Option<PathBuf>,
    /// Skip verification of an https backend.
    pub insecure: bool,
    /// HTTP/2 to the backend.
    pub http2: bool,
    /// Send the visitor's Host to the backend.
    pub preserve_host: bool,
    /// Protocols visitors may upgrade to, lowercase (`websocket` unless configured otherwise).
    pub upgrades: Vec<String>,
}

impl Target {
    /// Whether visitors may switch this target's connection to `protocol` (case-insensitive).
    pub fn allows_upgrade(&self, protocol: &str) -> bool {
        self.upgrades
            .iter()
            .any(|p| p.eq_ignore_ascii_case(protocol))
    }
}

impl Config {
    /// Loads file + `CONNECTOR_*` env + flags (already shaped as a table) and validates.
    pub fn load(
        file: Option<&Path>,
        env: &dyn EnvSource,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        let mut raw: FileConfig = layered::load(file, "CONNECTOR_", env, flags)?;
        if raw.proxy.is_none() {
            raw.proxy = proxy_from_env(&env.vars(), raw.server.as_deref());
        }
        Config::from_file(raw, file)
    }

    /// Validates a parsed file config. `file` anchors relative paths.
    pub fn from_file(raw: FileConfig, file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::with_in_process(raw, file, &[])
    }

    /// Validates a parsed config whose targets also include `in_process` ones (names of
    /// services an embedding application serves itself, see [`crate::Builder`]).
    pub(crate) fn with_in_process(
        raw: FileConfig,
        file: Option<&Path>,
        in_process: &[String],
    ) -> Result<Config, ConfigError> {
        let server = raw
            .server
            .ok_or_else(|| ConfigError::new("missing setting: server (--server URL)"))?;
        let (server_host, server_port) = parse_server(&server)?;
        let tenant = raw
            .tenant
            .ok_or_else(|| ConfigError::new("missing setting: tenant (--tenant NAME)"))?;
        let tenant = canonical_name(&tenant, "tenant")?;
        let secret = match (raw.secret, raw.secret_file) {
            (Some(s), None) => s,
            (None, Some(path)) => {
                let path = layered::relative_to(file, &path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(format!("cannot read secret file {}: {e}", path.display()))
                })?;
                let s = text.trim();
                if s.is_empty() {
                    return Err(ConfigError::new(format!(
                        "secret file {} is empty",
                        path.display()
                    )));
                }
                Secret::new(s)
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "set either secret or secret_file, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "missing setting: secret_file (--secret-file FILE)",
                ))
            }
        };
        let transport = match raw.transport.as_deref() {
            None | Some("auto") => TransportMode::Auto,
            Some("quic") => TransportMode::Quic,
            Some("tcp") => TransportMode::Tcp,
            Some(other) => {
                return Err(ConfigError::new(format!(
                    "transport {other:?}: use auto, quic or tcp"
                )))
            }
        };
        let proxy = match &raw.proxy {
            None => None,
            Some(url) => Some(parse_proxy(
                url,
                raw.proxy_credentials_file.as_deref(),
                file,
            )?),
        };
        if proxy.is_some() && transport == TransportMode::Quic {
            return Err(ConfigError::new(
                "proxy: a CONNECT proxy carries TCP only; use transport auto or tcp with it",
            ));
        }
        if raw.targets.is_empty() && in_process.is_empty() {
            return Err(ConfigError::new("no targets: add --target NAME=URL"));
        }
        let default_timeout = raw.timeout.unwrap_or(DEFAULT_TARGET_TIMEOUT);
        let mut targets = BTreeMap::new();
        for (name, t) in raw.targets {
            let canonical = canonical_name(&name, "target")?;
            let url: Uri = t.url.parse().map_err(|e| {
                ConfigError::new(format!("target {name}: invalid URL {:?}: {e}", t.url))
            })?;
            match url.scheme_str() {
                Some("http") | Some("https") => {}
                _ => {
                    return Err(ConfigError::new(format!(
                        "target {name}: URL {:?} must start with http:// or https://",
                        t.url
                    )))
                }
            }
            if url.authority().is_none() {
                return Err(ConfigError::new(format!(
                    "target {name}: URL {:?} has no host",
                    t.url
                )));
            }
            if url.query().is_some() {
                return Err(ConfigError::new(format!(
                    "target {name}: URL {:?} must not have a query",
                    t.url
                )));
            }
            let timeout = t.timeout.unwrap_or(default_timeout);
            if timeout.is_zero() {
                return Err(ConfigError::new(format!(
                    "target {name}: timeout must be above zero"
                )));
            }
            let target = Target {
                url,
                timeout,
                ca_cert: t.ca_cert.map(|p| layered::relative_to(file, &p)),
                insecure: t.insecure,
                http2: t.http2,
                preserve_host: t.preserve_host,
                upgrades: upgrades(&name, t.upgrades)?,
            };
            if targets.insert(canonical.clone(), target).is_some()
                || in_process.contains(&canonical)
            {
                return Err(ConfigError::new(format!(
                    "target {canonical} is defined twice"
                )));
            }
        }
        let inspect = inspect(raw.inspect)?;
        let s = raw.session;
        let backoff_base = s.backoff_base.unwrap_or(Duration::from_secs(1));
        let backoff_cap = s.backoff_cap.unwrap_or(Duration::from_secs(60));
        if backoff_base.is_zero() || backoff_cap < backoff_base {
            return Err(ConfigError::new(
                "session: backoff_base must be > 0 and <= backoff_cap",
            ));
        }
        // A relay that died without a goodbye is noticed within `idle_timeout`.
        let keep_alive = s.keep_alive.unwrap_or(Duration::from_secs(1));
        let idle_timeout = s.idle_timeout.unwrap_or(Duration::from_secs(3));
        if keep_alive.is_zero() || keep_alive >= idle_timeout {
            return Err(ConfigError::new(
                "session: keep_alive must be > 0 and below idle_timeout",
            ));
        }
        Ok(Config {
            server_host,
            server_port,
            tenant,
            secret,
            ca_certs: raw
                .ca_cert
                .map(|p| layered::relative_to(file, &p))
                .into_iter()
                .collect(),
            targets,
            keep_alive,
            idle_timeout,
            backoff_base,
            backoff_cap,
            max_streams: s.max_streams.unwrap_or(100).clamp(1, 10_000),
            transport,
            proxy,
            quic_fallback_after: layered::duration(
                "session.quic_fallback_after",
                s.quic_fallback_after,
                Duration::from_secs(4),
                None,
            )?,
            sessions: s.count.unwrap_or(2).clamp(1, 16),
            quic_probe_interval: layered::duration(
                "session.quic_probe_interval",
                s.quic_probe_interval,
                Duration::from_secs(300),
                None,
            )?,
            inspect,
        })
    }
}

/// Validates `[inspect]`: loopback only unless `allow_remote`; bounded sizes.
fn inspect(raw: InspectFile) -> Result<Option<Inspect>, ConfigError> {
    let Some(listen) = raw.listen else {
        return Ok(None);
    };
    let listen: std::net::SocketAddr = listen.parse().map_err(|e| {
        ConfigError::new(format!(
            "inspect.listen {listen:?}: {e} (an address and port, e.g. 127.0.0.1:4040)"
        ))
    })?;
    if !listen.ip().is_loopback() && !raw.allow_remote {
        return Err(ConfigError::new(format!(
            "inspect.listen {listen}: the inspector shows request contents; listen on loopback \
             (127.0.0.1 or [::1]) or set inspect.allow_remote = true"
        )));
    }
    let entries = raw.entries.unwrap_or(100);
    if !(1..=10_000).contains(&entries) {
        return Err(ConfigError::new("inspect.entries: use 1 to 10000"));
    }
    let body_bytes = raw.body_bytes.unwrap_or(16 * 1024);
    if body_bytes > 1024 * 1024 {
        return Err(ConfigError::new(
            "inspect.body_bytes: at most 1048576 (1 MiB)",
        ));
    }
    let mut redact: Vec<http::HeaderName> = ALWAYS_REDACTED
        .iter()
        .map(|n| http::HeaderName::from_static(n))
        .collect();
    for name in raw.redact {
        let header = http::HeaderName::try_from(name.trim()).map_err(|_| {
            ConfigError::new(format!("inspect.redact: {name:?} is not a header name"))
        })?;
        if !redact.contains(&header) {
            redact.push(header);
        }
    }
    Ok(Some(Inspect {
        listen,
        entries,
        body_bytes,
        redact,
    }))
}

/// `HTTPS_PROXY` / `https_proxy`, unless `NO_PROXY` / `no_proxy` covers the relay's host.
fn proxy_from_env(vars: &[(String, String)], server: Option<&str>) -> Option<String> {
    let get = |names: [&str; 2]| {
        names.iter().find_map(|n| {
            vars.iter()
                .find(|(k, v)| k == n && !v.trim().is_empty())
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let proxy = get(["HTTPS_PROXY", "https_proxy"])?;
    let host = server
        .and_then(|s| parse_server(s).ok())
        .map(|(h, _)| h.to_ascii_lowercase())
        .unwrap_or_default();
    if let Some(no_proxy) = get(["NO_PROXY", "no_proxy"]) {
        if no_proxy_matches(&no_proxy, &host) {
            return None;
        }
    }
    Some(proxy)
}

/// `NO_PROXY` semantics as curl has them: `*`, exact hosts, and domain suffixes (`example.com`
/// and `.example.com` both cover `relay.example.com`). Ports in entries are ignored.
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let entry = match entry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => {
                h.to_string()
            }
            _ => entry,
        };
        let entry = entry.trim_start_matches('.').trim_end_matches('.');
        if entry.is_empty() {
            return false;
        }
        entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
    })
}

/// Parses `http://[user:password@]host[:port]` (port 80 when absent); the credentials may be
/// percent-encoded, or come from `credentials_file` instead.
fn parse_proxy(
    url: &str,
    credentials_file: Option<&Path>,
    file: Option<&Path>,
) -> Result<Proxy, ConfigError> {
    let bad = |why: &str| ConfigError::new(format!("proxy {:?}: {why}", redact(url)));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("must start with http:// (a CONNECT proxy reached over plain TCP)"))?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if hostport.contains('/') || hostport.is_empty() {
        return Err(bad("expected http://[user:password@]host:port"));
    }
    let authority: http::uri::Authority =
        hostport.parse().map_err(|_| bad("invalid host or port"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // Not `authority.port()`: it reads an out-of-range port as no port at all.
    let port = match authority
        .as_str()
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.contains(']'))
    {
        Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
        None => 80,
    };
    let mut credentials = match userinfo {
        Some(u) => {
            let decoded = percent_decode(u)
                .ok_or_else(|| bad("invalid percent-encoding in the credentials"))?;
            if !decoded.contains(':') {
                return Err(bad("credentials must be user:password"));
            }
            Some(Secret::new(&decoded))
        }
        None => None,
    };
    if let Some(path) = credentials_file {
        if credentials.is_some() {
            return Err(ConfigError::new(
                "proxy: give credentials in the URL or in proxy_credentials_file, not both",
            ));
        }
        let path = layered::relative_to(file, path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new(format!(
                "cannot read proxy credentials file {}: {e}",
                path.display()
            ))
        })?;
        let text = text.trim();
        if !text.contains(':') {
            return Err(ConfigError::new(format!(
                "proxy credentials file {}: expected user:password",
                path.display()
            )));
        }
        credentials = Some(Secret::new(text));
    }
    Ok(Proxy {
        host,
        port,
        credentials,
    })
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A target's upgrade allow-list, checked: protocol names (RFC 9110 tokens), never `h2c`.
fn upgrades(target: &str, configured: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let list = configured.unwrap_or_else(|| vec!["websocket".to_string()]);
    let mut out = Vec::with_capacity(list.len());
    for p in list {
        let token = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError::new(format!(
                "target {target}: upgrades: {p:?} is not a protocol name"
            )));
        }
        if tunnel_session::headers::is_h2c(&p) {
            return Err(ConfigError::new(format!(
                "target {target}: upgrades: h2c is never forwarded: a visitor would speak HTTP/2 \
                 to the backend past the relay's routing, limits and audit"
            )));
        }
        out.push(p.to_ascii_lowercase());
    }
    Ok(out)
}

/// Parses `--target NAME=URL[,timeout=30s][,ca-cert=FILE][,insecure][,http2][,preserve-host]
/// [,upgrade=PROTOCOL]…[,no-upgrades]` into a file-shaped entry.
pub fn parse_target_flag(spec: &str) -> Result<(String, TargetFile), ConfigError> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| ConfigError::new(format!("--target {spec:?}: expected NAME=URL")))?;
    let mut parts = rest.split(',');
    let url = parts.next().unwrap_or_default().to_string();
    let mut target = TargetFile {
        url,
        ..TargetFile::default()
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("timeout", v)) => {
                target.timeout = Some(humantime::parse_duration(v).map_err(|e| {
                    ConfigError::new(format!("--target {name}: timeout {v:?}: {e}"))
                })?)
            }
            Some(("ca-cert", v)) => target.ca_cert = Some(PathBuf::from(v)),
            None if opt == "insecure" => target.insecure = true,
            None if opt == "http2" => target.http2 = true,
            None if opt == "preserve-host" => target.preserve_host = true,
            Some(("upgrade", v)) => target.upgrades.get_or_insert_with(Vec::new).push(v.into()),
            None if opt == "no-upgrades" => target.upgrades = Some(Vec::new()),
            _ => {
                return Err(ConfigError::new(format!(
                    "--target {name}: unknown option {opt:?}"
                )))
            }
        }
    }
    Ok((name.to_string(), target))
}

fn parse_server(server: &str) -> Result<(String, u16), ConfigError> {
    let with_scheme = if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| ConfigError::new(format!("server {server:?}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(ConfigError::new(format!(
            "server {server:?}: the relay is reached over https://"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ConfigError::new(format!("server {server:?}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

pub(crate) fn canonical_name(name: &str, what: &str) -> Result<String, ConfigError> {
    let lower = name.to_ascii_lowercase();
    let b = lower.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(lower)
    } else {
        Err(ConfigError::new(format!(
            "{what} name {name:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests;
