//! The relay: the internet-facing server of the tunnel.
//!
//! ```text
//! visitor ──HTTPS/HTTP──► ingress ──► route ──► proxy ──stream──► session ══QUIC or TLS/TCP══ connector
//!                                      ▲          ▲                  ▲
//!                             catalog (tenants, hostnames)   registry (live sessions)
//! ```
//!
//! It accepts visitors on the HTTPS ingress (and optionally plain HTTP), routes each request by
//! tenant hostname, wildcard base domain or `/relay/{tenant}/{target}/…` (`route.rs`), accepts
//! connector sessions on QUIC on the same port number (or over TLS on the HTTPS port itself, told
//! apart from visitors by ALPN, possibly through a CONNECT proxy), authenticates them against the
//! tenant catalog, and carries each visitor request as one stream on the least-loaded session of
//! its tenant (`proxy.rs`: admit → open the stream and send the head → await the response head →
//! respond). The session machinery both ends share is in `tunnel-session`; the wire format in
//! `tunnel-protocol`.
//!
//! Also here: the admin listener, which mounts `management-web` (UI, `/api/v1`, `/metrics`,
//! health), the request audit log, the CLI ([`cli`]), pairing for local-first apps on
//! `/pair/{tenant}/…` (`pair.rs`, docs/pairing.md) and, behind the default `quickstart` feature,
//! the quickstart with its in-process connector.
//!
//! Certificates are picked by SNI (`certificates.rs`): a hostname's uploaded or ACME certificate
//! (`acme.rs` obtains and renews those), else the relay's own (docs/certificates.md).

mod acme;
mod audit;
mod auth;
mod catalog;
mod certificates;
pub mod cli;
mod cluster;
pub mod config;
#[cfg(feature = "quickstart")]
mod echo;
mod error;
pub mod forwarded;
mod head_timeout;
mod ingress;
pub mod keys;
mod metrics;
mod node;
mod pair;
mod policy;
mod proxy;
mod queue;
mod registry;
mod route;
mod tunnel;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use relay_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;
use tunnel_protocol::ErrorCode;

pub use config::Config;
pub use metrics::Metrics;

use auth::Auth;
use catalog::Catalog;
use registry::{CloseKind, Registry};

/// State shared by every task of one relay.
#[derive(Debug)]
pub(crate) struct Relay {
    config: Config,
    catalog: Arc<Catalog>,
    registry: Registry,
    auth: Auth,
    metrics: Arc<Metrics>,
    audit: audit::AuditLog,
    /// For writes off the request path only (session history); the data plane never waits on it.
    store: Store,
    /// This process's id in the node registry (fresh per start).
    node_id: String,
    /// Forwarding to and from the other nodes sharing the database.
    cluster: cluster::Cluster,
    /// Set while the registry asks this node to drain (`/readyz` answers 503).
    draining: std::sync::atomic::AtomicBool,
    /// Queue mode's delivery state on this node.
    queue: queue::Queue,
    /// Pairing's peers and waiting connections on this node (`/pair/…`).
    pairing: pair::Pairing,
    /// Visitor access policies: rate-limit buckets and checked Basic credentials.
    policies: policy::Policies,
    /// The ingress certificates by SNI and pending ACME challenges.
    certificates: Arc<certificates::Certificates>,
}

/// What the management web learns from this process: streams in flight per session, and the
/// counters for `/metrics`.
struct NodeViewImpl(Arc<Relay>);

impl management_web::NodeView for NodeViewImpl {
    fn in_flight(&self) -> std::collections::HashMap<String, usize> {
        self.0
            .registry
            .all()
            .iter()
            .map(|s| (s.id.clone(), s.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    fn metrics(&self) -> String {
        let mut text = self.0.metrics.render();
        text.push_str(&self.0.certificates.render_metrics());
        text
    }

    fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }
}

/// Sockets the relay serves; binaries bind them, tests pass `127.0.0.1:0` ones.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS ingress (TCP).
    pub https: TcpListener,
    /// QUIC endpoint (UDP), normally on the same port as `https`.
    pub quic: UdpSocket,
    /// Plain-HTTP ingress.
    pub http: Option<TcpListener>,
    /// Admin listener.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the configured addresses (HTTPS and QUIC on the same port).
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let https = TcpListener::bind(config.listen_https)
            .await
            .with_context(|| format!("cannot listen on {} (TCP)", config.listen_https))?;
        let addr = https.local_addr()?;
        let quic =
            UdpSocket::bind(addr).with_context(|| format!("cannot listen on {addr} (UDP)"))?;
        let http = match config.listen_http {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))?,
            ),
            None => None,
        };
        let admin = match config.listen_admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            https,
            quic,
            http,
            admin,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        BoundAddrs {
            https: self.https.local_addr().ok(),
            http: self.http.as_ref().and_then(|l| l.local_addr().ok()),
            admin: self.admin.as_ref().and_then(|l| l.local_addr().ok()),
        }
    }
}

/// Where the listeners ended up.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// HTTPS and QUIC.
    pub https: Option<SocketAddr>,
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

/// One live connector session, as the management API lists it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// The connector process's id (sessions of one connector share it).
    pub connector_id: String,
    /// The connector's version string.
    pub connector_version: String,
    /// The connector's address as seen by the relay.
    pub remote: SocketAddr,
    /// `quic` or `tcp`.
    pub transport: &'static str,
    /// When the session was established.
    pub connected_at: std::time::SystemTime,
    /// Streams in flight.
    pub in_flight: usize,
    /// The relay node holding it.
    pub node: String,
}

/// A relay's live view, for callers that embed it (quickstart, tests).
#[derive(Debug, Clone)]
pub struct RelayView {
    relay: Arc<Relay>,
}

impl RelayView {
    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.relay.metrics
    }

    /// Live sessions of a tenant (by name).
    pub fn sessions(&self, tenant: &str) -> Vec<SessionInfo> {
        let Some(t) = self.relay.catalog.enabled_tenant(tenant) else {
            return Vec::new();
        };
        self.relay
            .registry
            .of_tenant(&t.id)
            .iter()
            .map(|s| SessionInfo {
                id: s.id.clone(),
                connector_id: s.connector_id.clone(),
                connector_version: s.connector_version.clone(),
                remote: s.remote,
                transport: s.conn.transport().as_str(),
                connected_at: s.connected_at,
                in_flight: s.in_flight.load(Ordering::Relaxed),
                node: self.relay.config.node_name.clone(),
            })
            .collect()
    }

    /// The token signer, for tests that need a token (`test-util`).
    #[cfg(feature = "test-util")]
    pub fn issue_token_for(&self, tenant: &str, credential_id: &str) -> Option<String> {
        let tenant = self.relay.catalog.enabled_tenant(tenant)?;
        let identity = auth::Identity {
            tenant,
            credential_id: relay_store::CredentialId(credential_id.to_string()),
        };
        self.relay.auth.issue(&identity).ok()
    }
}

/// Runs the relay on `listeners` until `shutdown` is cancelled, then drains and returns.
/// `started` receives a view once everything is serving.
pub async fn run(
    config: Config,
    store: Store,
    listeners: Listeners,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<RelayView>>,
) -> anyhow::Result<()> {
    let addrs = listeners.addrs();
    // SQLite serves one relay node: a second process on the same file stops here, saying so.
    let _single_node = store.lock_single_node()?;
    let keys = keys::Keys::load_or_create(&config.data_dir)?;
    // Peers reach this node on `cluster.advertise`, or on the HTTPS address when it is not a
    // wildcard (two nodes on one host need no more configuration).
    let advertise = config.cluster.advertise.clone().or_else(|| {
        addrs
            .https
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| a.to_string())
    });
    let node = node::record(
        &config.node_name,
        advertise,
        config.cluster.public_address.clone(),
    );
    let (certs, key) = keys::tls_material(&config.data_dir, config.tls.as_ref())?;
    let catalog = Arc::new(Catalog::load(&store).await.context("loading tenants")?);
    // Sessions this node left open in the history when it last stopped without closing them.
    match store.close_orphaned_sessions(&config.node_name).await {
        Ok(0) => {}
        Ok(n) => info!(sessions = n, "marked sessions of an earlier run as ended"),
        Err(e) => tracing::warn!(error = %e, "cannot update the session history"),
    }
    let auth = Auth::new(
        catalog.clone(),
        store.clone(),
        &keys,
        &config.tunnel.issuer,
        config.tunnel.token_ttl,
        config.tunnel.secret_check_concurrency,
    );
    let own = rustls::sign::CertifiedKey::from_der(
        certs.clone(),
        key.clone_key(),
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
    .context("TLS setup: the [tls] key does not match its certificate")?;
    let certificates = Arc::new(certificates::Certificates::new(Arc::new(own)));
    let certificate_key = Arc::new(keys.certificate_key());
    // Bounded: a slow database does not hold up the start (the reload task tries again).
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        certificates.load(&store, &certificate_key),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot load hostname certificates yet"),
        Err(_) => tracing::warn!("hostname certificates not loaded within 10 s; loading later"),
    }
    let acceptor = ingress::tls_acceptor(certificates.clone()).context("TLS setup")?;
    let quic_config = tunnel::server_config(certs, key, &config).context("QUIC setup")?;
    match tunnel_session::udp::size_buffers(&listeners.quic) {
        Some(granted) if tunnel_session::udp::buffer_capped(granted) => tracing::info!(
            granted,
            wanted = tunnel_session::udp::SOCKET_BUFFER_BYTES,
            "the UDP receive buffer is capped by net.core.rmem_max; QUIC sessions drop datagrams \
             under load (see docs/operations.md, \"UDP buffers\")"
        ),
        _ => {}
    }
    let endpoint = quinn::Endpoint::new(
        tunnel_session::udp::endpoint_config(),
        Some(quic_config),
        listeners.quic,
        Arc::new(quinn::TokioRuntime),
    )
    .context("QUIC endpoint")?;
    let cluster = cluster::Cluster::new(
        store.backend() == relay_store::Backend::Postgres,
        (node.id.clone(), config.node_name.clone()),
        &keys.pepper,
        (config.tunnel.idle_timeout, config.cluster.node_timeout),
        store.clone(),
    )
    .context("node link setup")?;
    cluster.set_endpoint(Some(endpoint.clone()));
    let metrics = Arc::new(Metrics::default());
    // The audit writer outlives the ingress: it flushes what the last requests queued.
    let audit_stop = CancellationToken::new();
    let (audit, audit_task) = if config.audit.enabled {
        let (log, task) = audit::AuditLog::start(
            store.clone(),
            metrics.clone(),
            config.node_name.clone(),
            config.audit.queue,
            config.audit.retention,
            audit_stop.clone(),
        );
        (log, Some(task))
    } else {
        (
            audit::AuditLog::disabled(metrics.clone(), config.node_name.clone()),
            None,
        )
    };
    let relay = Arc::new(Relay {
        config,
        catalog: catalog.clone(),
        registry: Registry::default(),
        auth,
        metrics,
        audit,
        store: store.clone(),
        node_id: node.id.clone(),
        cluster,
        draining: std::sync::atomic::AtomicBool::new(false),
        queue: queue::Queue::default(),
        pairing: pair::Pairing::new(relay_store::SecretHasher::new(&keys.pepper)),
        policies: policy::Policies::new(relay_store::SecretHasher::new(&keys.pepper)),
        certificates: certificates.clone(),
    });

    // Visitors stop being accepted first; sessions are told to move after that.
    let stop_accepting = shutdown.child_token();
    let background = CancellationToken::new();
    let sessions = TaskTracker::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(ingress::serve(
        relay.clone(),
        listeners.https,
        Some(acceptor),
        stop_accepting.clone(),
        sessions.clone(),
    ));
    if let Some(http) = listeners.http {
        tasks.spawn(ingress::serve(
            relay.clone(),
            http,
            None,
            stop_accepting.clone(),
            sessions.clone(),
        ));
    }
    if let Some(admin) = listeners.admin {
        // The names were validated with the config; the bound address stands in for port 0.
        let hosts = management_web::AllowedHosts::loopback(admin.local_addr().ok())
            .with_names(&relay.config.admin_hosts)
            .map_err(|e| anyhow::anyhow!("listen.admin_hosts: {e}"))?;
        let state = management_web::AppState::with_node(
            store.clone(),
            relay_store::SecretHasher::new(&keys.pepper),
            Arc::new(NodeViewImpl(relay.clone())),
            hosts,
        )
        .with_node_timeout(relay.config.cluster.node_timeout)
        .with_certificate_key(Arc::new(keys.certificate_key()))
        .with_queue_ttl(management_web::QueueTtl {
            default: relay.config.queue.ttl,
            max: relay.config.queue.max_ttl,
        });
        let app = management_web::app(state);
        let stop = stop_accepting.clone();
        tasks.spawn(async move {
            let _ = axum::serve(
                admin,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        });
    }
    let quic_task = tokio::spawn(tunnel::serve(
        relay.clone(),
        endpoint.clone(),
        stop_accepting.clone(),
        sessions.clone(),
    ));
    let refresh_relay = relay.clone();
    // PostgreSQL pushes changes (LISTEN relay_catalog); the poll is the fallback and the only
    // path on SQLite.
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener = {
        let (store, wake) = (store.clone(), wake.clone());
        tokio::spawn(async move { store.listen_for_changes(move || wake.notify_one()).await })
    };
    // New sessions on other nodes: the session directory's answer for that tenant is stale.
    let sessions_listener = {
        let (store, relay) = (store.clone(), relay.clone());
        tokio::spawn(async move {
            store
                .listen_for_sessions(move |tenant| match tenant {
                    Some(t) => relay.cluster.session_elsewhere(t),
                    None => relay.cluster.forget_all(),
                })
                .await
        })
    };
    tokio::spawn(certificates::run_reload(
        certificates.clone(),
        store.clone(),
        certificate_key.clone(),
        background.clone(),
    ));
    if let Some(acme) = relay.config.acme.clone() {
        tokio::spawn(acme::run(
            relay.clone(),
            acme,
            certificate_key,
            background.clone(),
        ));
    }
    tokio::spawn(catalog::run_refresh(
        catalog,
        store,
        (relay.config.catalog_poll_interval, wake),
        background.clone(),
        move || {
            close_invalid_sessions(&refresh_relay);
            refresh_relay.certificates.changed();
        },
    ));
    let node_id = node.id.clone();
    // Queue deliveries run on this node's sessions; they stop with the sessions' drain.
    let deliveries = TaskTracker::new();
    let queue_stop = CancellationToken::new();
    let queue_task = tokio::spawn(queue::run(
        relay.clone(),
        queue_stop.clone(),
        deliveries.clone(),
    ));
    // Open pairing sockets against revoked tokens and pairing turned off; ends with the pairing
    // shutdown.
    tokio::spawn(pair::recheck(relay.clone()));
    // Other nodes' pairing joins (PostgreSQL only); ends with the pairing shutdown.
    tokio::spawn(pair::listen(relay.clone()));
    if relay.cluster.enabled() && node.advertise.is_none() {
        tracing::warn!(
            "the HTTPS listener is a wildcard address and [cluster] advertise is not set: other \
             relay nodes cannot forward requests to this one"
        );
    }
    // A node that joins forwards to tenants whose sessions are on other nodes from its first
    // request on, not from its first heartbeat (bounded: a slow database does not hold it up).
    let first_read = relay.cluster.refresh_elsewhere();
    if tokio::time::timeout(std::time::Duration::from_secs(5), first_read)
        .await
        .is_err()
    {
        tracing::warn!(
            "sessions on other nodes not read within 5 s; reading at the next heartbeat"
        );
    }
    let membership = tokio::spawn(node::run(
        relay.clone(),
        node,
        (shutdown.clone(), background.clone()),
    ));
    info!(node = %relay.config.node_name, node_id = %node_id, "relay serving");
    if let Some(a) = addrs.https {
        info!(https = %a, "listening (HTTPS and connectors over TLS/TCP, connectors over QUIC/UDP)");
    }
    if let Some(a) = addrs.http {
        info!(http = %a, "listening (plain HTTP)");
    }
    if let Some(a) = addrs.admin {
        info!(admin = %a, "listening (admin)");
    }
    if let Some(tx) = started {
        let _ = tx.send(RelayView {
            relay: relay.clone(),
        });
    }

    shutdown.cancelled().await;
    info!("shutting down: no new visitors; asking connectors to move");
    // The ingress tasks drain their in-flight requests within the grace period.
    // Sessions whose handshake is still under way are drained as soon as they are established.
    relay
        .registry
        .close_all(CloseKind::Drain(ErrorCode::GOING_AWAY));
    // Pairing sockets are upgraded connections the ingress no longer tracks: close them (1001).
    relay
        .pairing
        .shutdown(
            relay
                .config
                .shutdown_grace
                .min(std::time::Duration::from_secs(5)),
        )
        .await;
    while tasks.join_next().await.is_some() {}
    let _ = quic_task.await;
    // No new deliveries; those in flight finish with the sessions (or their lease runs out).
    queue_stop.cancel();
    let _ = queue_task.await;
    deliveries.close();
    let _ = tokio::time::timeout(relay.config.shutdown_grace, deliveries.wait()).await;
    sessions.close();
    if tokio::time::timeout(relay.config.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    relay.cluster.set_endpoint(None);
    endpoint.close(
        quinn::VarInt::from_u32(ErrorCode::GOING_AWAY.0),
        b"going_away",
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    background.cancel();
    let _ = membership.await;
    listener.abort();
    sessions_listener.abort();
    audit_stop.cancel();
    if let Some(task) = audit_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    info!(
        requests = relay.metrics.requests.load(Ordering::Relaxed),
        "relay stopped"
    );
    Ok(())
}

/// After a catalog change: close sessions whose credential was revoked or tenant disabled.
fn close_invalid_sessions(relay: &Relay) {
    for s in relay.registry.all() {
        if let Err(code) = relay.auth.still_valid(&s.identity) {
            info!(session_id = %s.id, code = %code, "closing session after a catalog change");
            s.request_close(CloseKind::Kill(code));
        }
    }
}

#[cfg(feature = "test-util")]
pub mod testing;
