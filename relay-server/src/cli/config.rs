//! `relay-server config check`: the effective configuration (file, `RELAY_*`, flags and defaults),
//! printed as TOML in the file's shape with secrets masked. A configuration that does not load never
//! gets here (`main` prints the error and exits 64); [`check`] adds what loading does not look at,
//! the configured certificate and key files.

use std::time::Duration;

use clap::Subcommand;
use process_setup::layered::ConfigError;
use toml::{Table, Value};

use super::ListenArgs;
use crate::config::Config;

/// `config …`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Load the configuration as `run` would (same flags) and print the effective settings, with
    /// secrets masked. Exit 0, or 64 with the error.
    Check(ListenArgs),
}

/// What a masked secret reads as.
const MASK: &str = "***";

/// Query parameters of a database URL that carry secrets (libpq and sqlx spellings).
const SECRET_PARAMS: [&str; 3] = ["password", "sslpassword", "passfile"];

/// `database_url` with the password (in the user info, or as a query parameter) replaced by
/// `***`, for output, logs and errors. A URL without one is returned unchanged.
pub fn mask_database_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                        format!("{k}={MASK}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `config check` on a loaded configuration: the configured certificate chain and key must be
/// readable PEM (a generated self-signed pair is not made here), then the effective settings as
/// [`render`] prints them. Nothing is written, no database or socket is opened.
pub fn check(config: &Config) -> Result<String, ConfigError> {
    if config.tls.is_some() {
        crate::keys::tls_material(&config.data_dir, config.tls.as_ref())
            .map_err(|e| ConfigError::new(format!("tls: {e}")))?;
    }
    Ok(render(config))
}

/// The effective configuration as TOML in the config file's shape (every default filled in),
/// with `database_url` masked. Unmasked, it loads back into the same configuration.
pub(super) fn render(config: &Config) -> String {
    let c = config;
    let mut top = Table::new();
    top.insert("node_name".into(), string(&c.node_name));
    top.insert("data_dir".into(), string(c.data_dir.display()));
    top.insert(
        "database_url".into(),
        string(mask_database_url(&c.database_url)),
    );
    if let Some(u) = &c.public_url {
        top.insert("public_url".into(), string(u));
    }

    let mut listen = Table::new();
    listen.insert("https".into(), string(c.listen_https));
    if let Some(a) = c.listen_http {
        listen.insert("http".into(), string(a));
    }
    if let Some(a) = c.listen_admin {
        listen.insert("admin".into(), string(a));
    }
    listen.insert("admin_hosts".into(), strings(&c.admin_hosts));
    top.insert("listen".into(), Value::Table(listen));

    let mut tls = Table::new();
    if let Some((cert, key)) = &c.tls {
        tls.insert("cert".into(), string(cert.display()));
        tls.insert("key".into(), string(key.display()));
    }
    top.insert("tls".into(), Value::Table(tls));

    let l = &c.limits;
    let limits = Table::from_iter([
        ("max_body_bytes".into(), int(l.max_body_bytes)),
        ("request_timeout".into(), duration(l.request_timeout)),
        (
            "max_concurrent_streams".into(),
            int(l.max_concurrent_streams),
        ),
        (
            "header_read_timeout".into(),
            duration(l.header_read_timeout),
        ),
        ("body_idle_timeout".into(), duration(l.body_idle_timeout)),
        ("max_headers".into(), int(l.max_headers)),
        ("max_uri_bytes".into(), int(l.max_uri_bytes)),
        (
            "h2_max_concurrent_streams".into(),
            int(l.h2_max_concurrent_streams),
        ),
        (
            "h2_stream_window_bytes".into(),
            int(l.h2_stream_window_bytes),
        ),
        (
            "h2_connection_window_bytes".into(),
            int(l.h2_connection_window_bytes),
        ),
        (
            "stream_idle_timeout".into(),
            duration(l.stream_idle_timeout),
        ),
        ("max_connections".into(), int(l.max_connections)),
        (
            "max_connections_per_ip".into(),
            int(l.max_connections_per_ip),
        ),
        (
            "tls_handshake_timeout".into(),
            duration(l.tls_handshake_timeout),
        ),
    ]);
    top.insert("limits".into(), Value::Table(limits));

    let t = &c.tunnel;
    let tunnel = Table::from_iter([
        ("idle_timeout".into(), duration(t.idle_timeout)),
        ("auth_timeout".into(), duration(t.auth_timeout)),
        ("token_ttl".into(), duration(t.token_ttl)),
        (
            "secret_check_concurrency".into(),
            int(t.secret_check_concurrency),
        ),
        (
            "max_pending_handshakes".into(),
            int(t.max_pending_handshakes),
        ),
        ("issuer".into(), string(&t.issuer)),
    ]);
    top.insert("tunnel".into(), Value::Table(tunnel));

    let mut routing = Table::new();
    if let Some(d) = &c.base_domain {
        routing.insert("base_domain".into(), string(d));
    }
    let proxies: Vec<String> = c.trusted_proxies.iter().map(|p| p.to_string()).collect();
    routing.insert("trusted_proxies".into(), strings(&proxies));
    top.insert("routing".into(), Value::Table(routing));

    let audit = Table::from_iter([
        ("enabled".into(), Value::Boolean(c.audit.enabled)),
        ("retention".into(), duration(c.audit.retention)),
        ("queue".into(), int(c.audit.queue)),
    ]);
    top.insert("audit".into(), Value::Table(audit));

    let catalog = Table::from_iter([("poll_interval".into(), duration(c.catalog_poll_interval))]);
    top.insert("catalog".into(), Value::Table(catalog));

    let shutdown = Table::from_iter([("grace".into(), duration(c.shutdown_grace))]);
    top.insert("shutdown".into(), Value::Table(shutdown));

    let mut cluster = Table::new();
    if let Some(a) = &c.cluster.advertise {
        cluster.insert("advertise".into(), string(a));
    }
    if let Some(a) = &c.cluster.public_address {
        cluster.insert("public_address".into(), string(a));
    }
    cluster.insert(
        "heartbeat_interval".into(),
        duration(c.cluster.heartbeat_interval),
    );
    cluster.insert("node_timeout".into(), duration(c.cluster.node_timeout));
    top.insert("cluster".into(), Value::Table(cluster));

    let q = &c.queue;
    let queue = Table::from_iter([
        ("max_body_bytes".into(), int(q.max_body_bytes)),
        ("max_response_bytes".into(), int(q.max_response_bytes)),
        ("ttl".into(), duration(q.ttl)),
        ("max_ttl".into(), duration(q.max_ttl)),
        ("retention".into(), duration(q.retention)),
        ("lease".into(), duration(q.lease)),
        ("poll_interval".into(), duration(q.poll_interval)),
        ("parallel".into(), int(q.parallel)),
        ("max_messages".into(), int(q.max_messages)),
        ("max_bytes".into(), int(q.max_bytes)),
        ("retry_base".into(), duration(q.retry_base)),
        ("retry_cap".into(), duration(q.retry_cap)),
    ]);
    top.insert("queue".into(), Value::Table(queue));

    let p = &c.pairing;
    let pairing = Table::from_iter([
        ("max_peers".into(), int(p.max_peers)),
        ("max_connections".into(), int(p.max_connections)),
        ("max_document_ids".into(), int(p.max_document_ids)),
        ("max_frame_bytes".into(), int(p.max_frame_bytes)),
        ("max_held_bytes".into(), int(p.max_held_bytes)),
        ("hold_timeout".into(), duration(p.hold_timeout)),
        ("idle_timeout".into(), duration(p.idle_timeout)),
        ("recheck_interval".into(), duration(p.recheck_interval)),
    ]);
    top.insert("pairing".into(), Value::Table(pairing));

    let mut acme = Table::from_iter([("enabled".into(), Value::Boolean(c.acme.is_some()))]);
    if let Some(a) = &c.acme {
        acme.insert("directory".into(), string(&a.directory));
        acme.insert("contact".into(), strings(&a.contact));
        if let Some((path, _)) = &a.root_ca {
            acme.insert("root_ca".into(), string(path.display()));
        }
        let names: Vec<String> = a.challenges.iter().map(|c| c.as_str().into()).collect();
        acme.insert("challenge".into(), strings(&names));
        acme.insert("check_interval".into(), duration(a.check_interval));
        acme.insert("retry_initial".into(), duration(a.retry_initial));
        acme.insert("request_timeout".into(), duration(a.request_timeout));
    }
    top.insert("acme".into(), Value::Table(acme));

    let mut out = String::from(
        "# relay-server: the effective configuration (config file, RELAY_* environment, flags and\n\
         # defaults); secrets are shown as ***.\n",
    );
    if c.tls.is_none() {
        out.push_str(
            "# [tls] has no cert and key: a self-signed certificate for localhost is used \
             (data_dir/tls/).\n",
        );
    }
    out.push_str(&toml::to_string(&top).unwrap_or_else(|e| format!("# cannot render: {e}\n")));
    out
}

fn string(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().map(string).collect())
}

/// A TOML integer; values beyond `i64` (no setting allows them) saturate.
fn int<T: TryInto<i64>>(v: T) -> Value {
    Value::Integer(v.try_into().unwrap_or(i64::MAX))
}

fn duration(d: Duration) -> Value {
    string(humantime::format_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_database_urls() {
        for (url, masked) in [
            (
                "sqlite://relay-data/relay.db",
                "sqlite://relay-data/relay.db",
            ),
            (
                "postgres://relay:s3cr%40t@db.internal:5432/relay",
                "postgres://relay:***@db.internal:5432/relay",
            ),
            (
                "postgres://relay:p@ss:word@db/relay?sslmode=require",
                "postgres://relay:***@db/relay?sslmode=require",
            ),
            (
                "postgres://relay@db/relay?password=hunter2&sslmode=require",
                "postgres://relay@db/relay?password=***&sslmode=require",
            ),
            (
                "postgres:///relay?host=/run/postgresql&sslpassword=x",
                "postgres:///relay?host=/run/postgresql&sslpassword=***",
            ),
            ("postgres://relay@db/relay", "postgres://relay@db/relay"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(mask_database_url(url), masked, "{url}");
        }
    }

    #[test]
    fn rendering_loads_back_into_the_same_configuration() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/relay-server.example.toml");
        let env = vec![
            (
                "RELAY_ROUTING__TRUSTED_PROXIES".to_string(),
                r#"["10.0.0.0/8", "2001:db8::1"]"#.to_string(),
            ),
            (
                "RELAY_ROUTING__BASE_DOMAIN".to_string(),
                "tunnel.example.com".to_string(),
            ),
            (
                "RELAY_CLUSTER__ADVERTISE".to_string(),
                "10.0.0.5:8443".to_string(),
            ),
            ("RELAY_TLS__CERT".to_string(), "/etc/x/cert.pem".to_string()),
            ("RELAY_TLS__KEY".to_string(), "/etc/x/key.pem".to_string()),
            (
                "RELAY_LIMITS__REQUEST_TIMEOUT".to_string(),
                "1m 30s".to_string(),
            ),
        ];
        let first = Config::load(Some(&path), &env, Table::new()).unwrap();
        let text = render(&first);
        assert!(text.contains("request_timeout = \"1m 30s\""), "{text}");
        assert!(text.contains("\"10.0.0.0/8\""), "{text}");
        let dir = tempfile::tempdir().unwrap();
        let rendered = dir.path().join("effective.toml");
        std::fs::write(&rendered, &text).unwrap();
        let second = Config::load(Some(&rendered), &Vec::new(), Table::new()).unwrap();
        assert_eq!(render(&second), text);
    }
}
