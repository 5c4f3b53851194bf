//! `session-sim`: the benchmark's connector-session simulator.
//!
//! `provision` creates tenants with one credential each in a relay's database (with the relay's
//! pepper). `run` opens many authenticated QUIC sessions to one relay from this one process over
//! one UDP socket, holds them, and reconnects each one that ends with the connector's full-jitter
//! backoff; it prints a JSON line with the number of sessions up every 100 ms, which
//! bench/sessions.py turns into "RSS per session" and "time until all are back" figures.
//!
//! Not a connector: the sessions answer pings and nothing else (no streams are served).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, TransportConfig, VarInt};
use tunnel_protocol::{ControlFrame, Credential, Hello, ALPN};
use tunnel_session::control::ControlStream;

#[derive(Parser, Debug)]
#[command(name = "session-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create `tenants` tenants `sim-N` with one credential each; print `tenant secret` lines.
    Provision {
        /// The relay's database URL.
        #[arg(long)]
        database_url: String,
        /// The relay's data directory (its keys/credential-pepper is used).
        #[arg(long)]
        data_dir: PathBuf,
        /// How many tenants.
        #[arg(long, default_value_t = 100)]
        tenants: usize,
    },
    /// Open `sessions` sessions spread over the credentials in `creds` and hold them.
    Run {
        /// The relay's QUIC address, e.g. 127.0.0.1:8443.
        #[arg(long)]
        server: std::net::SocketAddr,
        /// The relay's certificate (self-signed in the benchmark).
        #[arg(long)]
        ca_cert: PathBuf,
        /// `tenant secret` lines from `provision`.
        #[arg(long)]
        creds: PathBuf,
        /// Sessions to hold.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 120)]
        duration: u64,
        /// First reconnect backoff, ms (the connector's default is 1000).
        #[arg(long, default_value_t = 1000)]
        backoff_base_ms: u64,
        /// Largest reconnect backoff, ms (the connector's default is 60 000).
        #[arg(long, default_value_t = 60_000)]
        backoff_cap_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Provision {
            database_url,
            data_dir,
            tenants,
        } => provision(&database_url, &data_dir, tenants).await,
        Cmd::Run {
            server,
            ca_cert,
            creds,
            sessions,
            duration,
            backoff_base_ms,
            backoff_cap_ms,
        } => {
            run(
                server,
                &ca_cert,
                &creds,
                sessions,
                Duration::from_secs(duration),
                (
                    Duration::from_millis(backoff_base_ms),
                    Duration::from_millis(backoff_cap_ms),
                ),
            )
            .await
        }
    }
}

async fn provision(url: &str, data_dir: &std::path::Path, tenants: usize) -> anyhow::Result<()> {
    let store = relay_store::Store::connect(url).await?;
    let keys = relay_server::keys::Keys::load_or_create(data_dir)?;
    let hasher = relay_store::SecretHasher::new(&keys.pepper);
    for i in 0..tenants {
        let name = format!("sim-{i}");
        if store.tenant(&name).await?.is_none() {
            store.create_tenant(&name).await?;
        }
        let c = store
            .create_credential(&name, "session-sim", &hasher)
            .await?;
        println!("{name} {}", c.secret);
    }
    store.close().await;
    Ok(())
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
}

async fn run(
    server: std::net::SocketAddr,
    ca_cert: &std::path::Path,
    creds: &std::path::Path,
    sessions: usize,
    duration: Duration,
    backoff: (Duration, Duration),
) -> anyhow::Result<()> {
    let creds: Vec<(String, String)> = std::fs::read_to_string(creds)
        .with_context(|| format!("reading {}", creds.display()))?
        .lines()
        .filter_map(|l| {
            let (t, s) = l.split_once(' ')?;
            Some((t.to_string(), s.trim().to_string()))
        })
        .collect();
    anyhow::ensure!(!creds.is_empty(), "no credentials");
    let mut roots = rustls::RootCertStore::empty();
    for cert in connector::backend::load_certs(ca_cert).map_err(anyhow::Error::msg)? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut transport = TransportConfig::default();
    // The connector's defaults (`session.keep_alive`, `session.idle_timeout`), so that the relay
    // sees the keep-alive traffic real sessions bring.
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into()?));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(16));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.receive_window(VarInt::from_u32(256 * 1024));
    transport.stream_receive_window(VarInt::from_u32(64 * 1024));
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    client.transport_config(Arc::new(transport));
    // One UDP socket for every session.
    let mut endpoint = Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client);

    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let stop = start + duration;
    for i in 0..sessions {
        let (tenant, secret) = creds[i % creds.len()].clone();
        let endpoint = endpoint.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            hold(endpoint, server, tenant, secret, i, counters, stop, backoff).await;
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < stop {
        tick.tick().await;
        println!(
            "{}",
            serde_json::json!({
                "t_ms": start.elapsed().as_millis() as u64,
                "up": counters.up.load(Ordering::Relaxed),
                "established": counters.established.load(Ordering::Relaxed),
                "failed": counters.failed.load(Ordering::Relaxed),
            })
        );
    }
    endpoint.close(VarInt::from_u32(0), b"done");
    Ok(())
}

/// Keeps one session up until `stop`: connect, authenticate, wait for the end, back off, again.
#[allow(clippy::too_many_arguments)]
async fn hold(
    endpoint: Endpoint,
    server: std::net::SocketAddr,
    tenant: String,
    secret: String,
    index: usize,
    counters: Arc<Counters>,
    stop: Instant,
    (base, cap): (Duration, Duration),
) {
    let mut attempt = 0u32;
    // The first connections spread over a second, as a fleet of connectors starting would.
    tokio::time::sleep(connector::backoff(
        Duration::from_millis(1000),
        Duration::from_millis(1000),
        0,
    ))
    .await;
    while Instant::now() < stop {
        match session(&endpoint, server, &tenant, &secret, index).await {
            Ok((conn, control)) => {
                attempt = 0;
                counters.established.fetch_add(1, Ordering::Relaxed);
                counters.up.fetch_add(1, Ordering::Relaxed);
                let remaining = stop.saturating_duration_since(Instant::now());
                let drained = serve(&conn, control, remaining).await;
                counters.up.fetch_sub(1, Ordering::Relaxed);
                if drained {
                    // A relay that asks us to move is shutting down or draining: come back soon,
                    // spread over a second (as the connector does).
                    tokio::time::sleep(connector::backoff(
                        Duration::from_millis(1000),
                        Duration::from_millis(1000),
                        0,
                    ))
                    .await;
                    continue;
                }
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wait = connector::backoff(base, cap, attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

async fn session(
    endpoint: &Endpoint,
    server: std::net::SocketAddr,
    tenant: &str,
    secret: &str,
    index: usize,
) -> anyhow::Result<(quinn::Connection, ControlStream)> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(server, "localhost")?,
    )
    .await??;
    let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.open_bi()).await??;
    let mut control = ControlStream::new(send, recv);
    control
        .send(&ControlFrame::Hello(Hello {
            tenant: tenant.to_string(),
            credential: Credential::Secret(secret.to_string()),
            connector_version: "session-sim/0".into(),
            connector_id: format!("sim-{index}"),
            targets: vec!["app".into()],
        }))
        .await?;
    match tokio::time::timeout(Duration::from_secs(10), control.next()).await?? {
        ControlFrame::Welcome(_) => Ok((conn, control)),
        other => anyhow::bail!("relay answered {other:?}"),
    }
}

/// Holds a session: answers pings, returns when it ends (`true` when the relay asked us to move).
async fn serve(conn: &quinn::Connection, mut control: ControlStream, within: Duration) -> bool {
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        // Why select: the session ends on a control frame, the connection closing, or the end.
        tokio::select! {
            frame = control.next() => match frame {
                Ok(ControlFrame::Ping(n)) => {
                    if control.send(&ControlFrame::Pong(n)).await.is_err() {
                        return false;
                    }
                }
                Ok(ControlFrame::GoAway(_)) => return true,
                Ok(_) => {}
                Err(_) => return true,
            },
            _ = conn.closed() => return true,
            _ = &mut deadline => return false,
        }
    }
}
