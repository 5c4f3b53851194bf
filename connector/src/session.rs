//! One session to the relay: connect (QUIC, or TLS over TCP on the HTTPS port, directly or
//! through a CONNECT proxy), authenticate on the control stream, then serve the streams the relay
//! opens until the session ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnel_protocol::{ControlFrame, Credential, ErrorCode, Hello, ALPN};

use crate::backend::{load_certs, Backends};
use crate::config::{Config, TransportMode};
use crate::{State, StateTx};
use process_setup::layered::ConfigError;
use tunnel_session::control::{ControlError, ControlStream};
use tunnel_session::mux;
use tunnel_session::transport::{Conn, Transport};

/// Deadline for the QUIC handshake to the relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the relay to answer `Hello`.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token with less life left than this is not presented; the secret is used instead.
const TOKEN_MIN_LIFE: Duration = Duration::from_secs(60);
/// How long in-flight streams may finish after a drain request or shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// How long a session the relay asked to move must have taken no new stream before it closes.
const LINGER_QUIET: Duration = Duration::from_secs(1);
/// How long a slot tries a relay address that asked it to move (drain) after the others.
const AVOID_DRAINED: Duration = Duration::from_secs(30);
/// When a new session first checks whether it should move to another relay node, and how often
/// after that.
const SPREAD_FIRST_CHECK: Duration = Duration::from_secs(1);
const SPREAD_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Deadline for resolving another node's address from the `Welcome` list.
const RESOLVE_NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ended, for the reconnect loop.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The relay asked us to move (shutdown, drain): reconnect promptly.
    Drained,
    /// The session failed after being established.
    Lost(String),
    /// We are shutting down.
    Shutdown,
}

/// A session that is up and authenticated.
#[derive(Debug)]
pub(crate) struct Established {
    conn: Conn,
    control: ControlStream,
    session_id: String,
    expires_in: Duration,
    /// The relay node holding it.
    node: String,
}

/// How `serve` ended: the session is over, or it was replaced by a better one (TCP → QUIC) that
/// the slot serves next while the old one drains in the background.
enum Served {
    Ended(Ended),
    Replaced(Box<Established>),
}

/// Why an attempt to establish a session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("QUIC connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS-over-TCP connect to {0} failed: {1}")]
    ConnectTcp(String, String),
    #[error(transparent)]
    Proxy(#[from] crate::http_proxy::ProxyError),
    #[error("relay refused authentication: {message} ({code})")]
    Refused {
        code: ErrorCode,
        message: String,
        retry_after: Duration,
    },
    #[error("control stream failed during authentication: {0}")]
    Control(#[from] ControlError),
    #[error("relay did not answer authentication within {0:?}")]
    AuthTimeout(Duration),
    #[error("relay sent {0} instead of Welcome")]
    Unexpected(&'static str),
    #[error("cannot open a UDP socket: {0}")]
    Udp(String),
    #[error("shutting down")]
    Shutdown,
}

impl AttemptError {
    /// The relay's hint of when to retry.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            AttemptError::Refused { retry_after, .. } => *retry_after,
            _ => Duration::ZERO,
        }
    }
}

/// A token the relay issued, kept across sessions.
#[derive(Debug, Default)]
struct TokenCache(Option<(String, Instant)>);

/// What sessions share: config, TLS, token. Each session slot runs on its own thread (see
/// [`crate::Connector::run`]) and has its own UDP endpoint and backend connection pools, so a
/// request never leaves the thread that read it from the tunnel.
#[derive(Debug)]
pub(crate) struct Dialer {
    slots: Vec<Slot>,
    client_config: quinn::ClientConfig,
    /// Sessions finishing their streams after their slot moved on.
    lingering: TaskTracker,
    tls: Arc<rustls::ClientConfig>,
    /// In `auto` mode, after QUIC failed: use TCP directly until then (then probe QUIC again).
    quic_blocked_until: Mutex<Option<Instant>>,
    config: Config,
    token: Mutex<TokenCache>,
    connector_id: String,
    /// The other relay nodes the last `Welcome` listed (a cluster with addresses per node).
    nodes: Mutex<Vec<tunnel_protocol::NodeAddress>>,
}

/// What one session slot keeps to itself, living on the slot's runtime.
#[derive(Debug)]
struct Slot {
    /// Bound on the slot's first QUIC attempt, inside the slot's runtime (quinn runs the
    /// endpoint's driver on the runtime that creates it).
    endpoint: Mutex<Option<Endpoint>>,
    /// Backend clients: their pooled connections' tasks run where they were opened.
    backends: Backends,
    /// The relay node this slot's session is on, while it has one.
    on_node: Mutex<Option<String>>,
    /// An address that asked this slot to move (drain), tried last until the instant.
    avoid: Mutex<Option<(SocketAddr, Instant)>>,
}

impl Dialer {
    pub(crate) fn new(config: Config, extras: &crate::Extras) -> Result<Dialer, ConfigError> {
        let tls = tls_config(&config)?;
        let client_config = client_config(&config, tls.clone())?;
        let slots = (0..config.sessions)
            .map(|_| {
                Ok(Slot {
                    endpoint: Mutex::new(None),
                    backends: extras.backends(&config)?,
                    on_node: Mutex::new(None),
                    avoid: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        // Fail at start, not at the first attempt, where no UDP socket can be opened at all.
        dual_stack(std::net::UdpSocket::bind)
            .map_err(|e| ConfigError::new(format!("cannot open a UDP socket: {e}")))?;
        let connector_id = uuid_like();
        Ok(Dialer {
            slots,
            client_config,
            lingering: TaskTracker::new(),
            tls: Arc::new(tls),
            quic_blocked_until: Mutex::new(None),
            config,
            token: Mutex::new(TokenCache::default()),
            connector_id,
            nodes: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Establishes and authenticates one session for `slot`, then serves it (and any session
    /// that replaces it) until it ends.
    pub(crate) async fn session(
        self: &Arc<Self>,
        slot: usize,
        shutdown: &CancellationToken,
        state: &StateTx,
    ) -> Result<Ended, AttemptError> {
        // Why select: DNS, the handshake or authentication may hang; shutdown must not wait.
        let mut session = tokio::select! {
            r = self.establish(slot) => r?,
            _ = shutdown.cancelled() => return Err(AttemptError::Shutdown),
        };
        loop {
            let session_id = session.session_id.clone();
            *lock(&self.slot(slot).on_node) = Some(session.node.clone());
            info!(
                slot,
                session_id = %session_id,
                relay_node = %session.node,
                relay = %session.conn.remote_address(),
                transport = %session.conn.transport(),
                "session established"
            );
            let transport = session.conn.transport();
            state.send_modify(|s| {
                s.sessions += 1;
                s.connected = true;
                s.session_id = Some(session_id.clone());
                s.transport = Some(transport);
                s.sessions_established += 1;
            });
            let served = self.serve(slot, session, shutdown).await;
            state.send_modify(|s| {
                s.sessions = s.sessions.saturating_sub(1);
                s.connected = s.sessions > 0;
                if s.session_id.as_deref() == Some(session_id.as_str()) {
                    s.session_id = None;
                    s.transport = None;
                }
            });
            match served {
                Served::Replaced(next) => {
                    info!(session_id = %session_id, "session replaced; the old one drains");
                    session = *next;
                }
                Served::Ended(ended) => {
                    info!(session_id = %session_id, ?ended, "session ended");
                    *lock(&self.slot(slot).on_node) = None;
                    return Ok(ended);
                }
            }
        }
    }

    async fn establish(&self, slot: usize) -> Result<Established, AttemptError> {
        let conn = match self.config.transport {
            TransportMode::Quic => self.connect_quic(slot, CONNECT_TIMEOUT).await?,
            TransportMode::Tcp => self.connect_tcp(slot).await?,
            // A CONNECT proxy carries TCP only.
            TransportMode::Auto if self.config.proxy.is_some() => self.connect_tcp(slot).await?,
            TransportMode::Auto => {
                let blocked = self
                    .quic_blocked_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|until| Instant::now() < until);
                if blocked {
                    self.connect_tcp(slot).await?
                } else {
                    match self
                        .connect_quic(slot, self.config.quic_fallback_after)
                        .await
                    {
                        Ok(c) => c,
                        Err(AttemptError::Resolve(h, e)) => {
                            return Err(AttemptError::Resolve(h, e))
                        }
                        Err(e) => {
                            warn!(error = %e, "QUIC failed; falling back to TLS over TCP");
                            *self
                                .quic_blocked_until
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) =
                                Some(Instant::now() + self.config.quic_probe_interval);
                            self.connect_tcp(slot).await?
                        }
                    }
                }
            }
        };
        let remote = conn.remote_address();
        match self.authenticate(conn).await {
            Ok(established) => Ok(established),
            Err(e) => {
                if matches!(&e, AttemptError::Refused { code, .. } if *code == ErrorCode::GOING_AWAY)
                {
                    self.avoid(slot, remote);
                }
                Err(e)
            }
        }
    }

    /// The relay nodes the other slots are on.
    fn taken(&self, slot: usize) -> Vec<String> {
        (0..self.slots.len())
            .filter(|&i| i != slot)
            .filter_map(|i| lock(&self.slot(i).on_node).clone())
            .collect()
    }

    /// Whether slot `slot`, on `node`, should move: another slot is on the same node, and the
    /// cluster lists a node no slot is on. Slot 0 stays where the configured address took it.
    fn should_spread(&self, slot: usize, node: &str) -> bool {
        if slot == 0 {
            return false;
        }
        let taken = self.taken(slot);
        taken.iter().any(|n| n == node)
            && lock(&self.nodes)
                .iter()
                .any(|n| n.name != node && !taken.contains(&n.name))
    }

    /// Tries `addr` last for a while: it asked this slot to move.
    fn avoid(&self, slot: usize, addr: SocketAddr) {
        *lock(&self.slot(slot).avoid) = Some((addr, Instant::now() + AVOID_DRAINED));
    }

    /// Where slot `slot` dials, in order: the configured relay's addresses, and the other nodes
    /// the cluster listed (see [`dial_order`]).
    async fn resolve(&self, slot: usize) -> Result<Vec<SocketAddr>, AttemptError> {
        let primary = self.resolve_server(slot).await?;
        let nodes = lock(&self.nodes).clone();
        if nodes.is_empty() {
            return Ok(primary);
        }
        let taken = self.taken(slot);
        let mut others = Vec::with_capacity(nodes.len());
        for n in nodes {
            let found = tokio::time::timeout(
                RESOLVE_NODE_TIMEOUT,
                tokio::net::lookup_host(n.address.as_str()),
            )
            .await;
            match found {
                Ok(Ok(addrs)) => others.push((n.name, addrs.collect::<Vec<_>>())),
                _ => debug!(node = %n.name, address = %n.address, "cannot resolve a cluster node"),
            }
        }
        let avoid = lock(&self.slot(slot).avoid)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(a, _)| a);
        Ok(dial_order(slot, primary, &others, &taken, avoid))
    }

    /// The relay's addresses, IPv4 first, rotated by `slot` so that the sessions of one connector
    /// spread over the addresses DNS returns (each falls back to the others).
    async fn resolve_server(&self, slot: usize) -> Result<Vec<SocketAddr>, AttemptError> {
        let host = &self.config.server_host;
        let port = self.config.server_port;
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| AttemptError::Resolve(format!("{host}:{port}"), e))?
            .collect();
        if addrs.is_empty() {
            return Err(AttemptError::Resolve(
                format!("{host}:{port}"),
                std::io::Error::other("no addresses"),
            ));
        }
        // IPv4 first: a relay bound to 0.0.0.0 is the common case, and a failed v6 attempt
        // would cost a full handshake timeout.
        addrs.sort_by_key(|a| a.is_ipv6());
        let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
        if v4 > 1 {
            addrs[..v4].rotate_left(slot % v4);
        }
        Ok(addrs)
    }

    /// A QUIC connection to the first relay address that answers within `timeout` each.
    async fn connect_quic(&self, slot: usize, timeout: Duration) -> Result<Conn, AttemptError> {
        let mut last = None;
        for addr in self.resolve(slot).await? {
            match self.connect(slot, addr, timeout).await {
                Ok(c) => return Ok(Conn::Quic(c)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(AttemptError::Unexpected("no address")))
    }

    /// Slot `slot` (`Connector::run` numbers them from 0 below `session.count`).
    fn slot(&self, slot: usize) -> &Slot {
        &self.slots[slot.min(self.slots.len() - 1)]
    }

    /// The slot's endpoint, bound on first use (on the slot's runtime).
    fn endpoint(&self, slot: usize) -> Result<Endpoint, AttemptError> {
        let mut cell = self
            .slot(slot)
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = cell.as_ref() {
            return Ok(e.clone());
        }
        let mut endpoint = dual_stack(tunnel_session::udp::client_endpoint)
            .map_err(|e| AttemptError::Udp(e.to_string()))?;
        endpoint.set_default_client_config(self.client_config.clone());
        *cell = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The slot's backend clients.
    fn backends(&self, slot: usize) -> &Backends {
        &self.slot(slot).backends
    }

    async fn connect(
        &self,
        slot: usize,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, AttemptError> {
        let connecting = self
            .endpoint(slot)?
            .connect(addr, &self.config.server_host)
            .map_err(|e| AttemptError::Connect(addr, e.to_string()))?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(AttemptError::Connect(addr, e.to_string())),
            Err(_) => Err(AttemptError::Connect(
                addr,
                format!("no answer within {timeout:?} (UDP blocked?)"),
            )),
        }
    }

    /// TLS over TCP to the relay's HTTPS port (through the proxy when one is configured), with
    /// the tunnel's ALPN, and the multiplexer on top.
    async fn connect_tcp(&self, slot: usize) -> Result<Conn, AttemptError> {
        let host = self.config.server_host.clone();
        let port = self.config.server_port;
        let (tcp, remote) = match &self.config.proxy {
            Some(proxy) => {
                let tcp = crate::http_proxy::connect(proxy, &host, port, CONNECT_TIMEOUT).await?;
                let remote = tcp.peer_addr().map_err(|e| {
                    AttemptError::ConnectTcp(format!("{host}:{port}"), e.to_string())
                })?;
                (tcp, remote)
            }
            None => {
                let mut last = None;
                let mut found = None;
                for addr in self.resolve(slot).await? {
                    match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    {
                        Ok(Ok(tcp)) => {
                            found = Some((tcp, addr));
                            break;
                        }
                        Ok(Err(e)) => {
                            last = Some(AttemptError::ConnectTcp(addr.to_string(), e.to_string()))
                        }
                        Err(_) => {
                            last = Some(AttemptError::ConnectTcp(
                                addr.to_string(),
                                format!("no answer within {CONNECT_TIMEOUT:?}"),
                            ))
                        }
                    }
                }
                match found {
                    Some(f) => f,
                    None => return Err(last.unwrap_or(AttemptError::Unexpected("no address"))),
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| AttemptError::ConnectTcp(host.clone(), e.to_string()))?;
        let tls = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(AttemptError::ConnectTcp(
                    format!("{host}:{port}"),
                    format!("TLS: {e}"),
                ))
            }
            Err(_) => {
                return Err(AttemptError::ConnectTcp(
                    format!("{host}:{port}"),
                    format!("TLS handshake not done within {CONNECT_TIMEOUT:?}"),
                ))
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(AttemptError::ConnectTcp(
                format!("{host}:{port}"),
                "the server does not accept tunnel sessions over TLS/TCP (no ALPN agreement): \
                 is this the relay's HTTPS port?"
                    .into(),
            ));
        }
        let config = mux::Config {
            max_streams: self.config.max_streams,
            keep_alive: self.config.keep_alive,
            idle_timeout: self.config.idle_timeout,
        };
        Ok(Conn::Tcp(mux::Connection::new(
            tls,
            mux::Role::Dialer,
            config,
            remote,
        )))
    }

    /// Authenticates on a new connection.
    async fn authenticate(&self, conn: Conn) -> Result<Established, AttemptError> {
        let (send, recv) = tokio::time::timeout(AUTH_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| AttemptError::AuthTimeout(AUTH_TIMEOUT))?
            .map_err(|e| AttemptError::Control(ControlError::Io(e)))?;
        let mut control = ControlStream::new(send, recv);
        let credential = self.credential();
        let used_token = matches!(credential, Credential::Token(_));
        control
            .send(&ControlFrame::Hello(Hello {
                tenant: self.config.tenant.clone(),
                credential,
                connector_version: concat!("connector/", env!("CARGO_PKG_VERSION")).to_string(),
                connector_id: self.connector_id.clone(),
                targets: self.backends(0).names(),
            }))
            .await?;
        let answer = tokio::time::timeout(AUTH_TIMEOUT, control.next())
            .await
            .map_err(|_| AttemptError::AuthTimeout(AUTH_TIMEOUT))??;
        match answer {
            ControlFrame::Welcome(w) => {
                let expires_in = Duration::from_secs(u64::from(w.expires_in_secs));
                if !w.token.is_empty() {
                    self.store_token(w.token, expires_in);
                }
                if !w.nodes.is_empty() {
                    debug!(nodes = ?w.nodes, "cluster nodes");
                }
                *lock(&self.nodes) = w.nodes;
                Ok(Established {
                    conn,
                    control,
                    session_id: w.session_id,
                    expires_in,
                    node: w.relay_node,
                })
            }
            ControlFrame::Refused(r) => {
                if used_token {
                    // The token is no good any more (expired, key rotated): use the secret next.
                    self.token.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
                }
                conn.close(r.code, b"refused");
                Err(AttemptError::Refused {
                    code: r.code,
                    message: r.message,
                    retry_after: if used_token {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(u64::from(r.retry_after_secs))
                    },
                })
            }
            _ => Err(AttemptError::Unexpected("another frame")),
        }
    }

    fn credential(&self) -> Credential {
        let cache = self.token.lock().unwrap_or_else(|p| p.into_inner());
        match &cache.0 {
            Some((token, expires))
                if expires.saturating_duration_since(Instant::now()) > TOKEN_MIN_LIFE =>
            {
                Credential::Token(token.clone())
            }
            _ => Credential::Secret(self.config.secret.expose().to_string()),
        }
    }

    fn store_token(&self, token: String, life: Duration) {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).0 =
            Some((token, Instant::now() + life));
    }

    /// Serves streams and the control stream until the session ends or is replaced.
    async fn serve(
        self: &Arc<Self>,
        slot: usize,
        session: Established,
        shutdown: &CancellationToken,
    ) -> Served {
        let Established {
            conn,
            mut control,
            expires_in,
            node,
            ..
        } = session;
        let streams = TaskTracker::new();
        let mut renew_at = tokio::time::Instant::now() + renew_delay(expires_in);
        // On TCP in `auto` mode (no proxy), try QUIC again now and then, in the background.
        let probing = conn.transport() == Transport::Tcp
            && self.config.transport == TransportMode::Auto
            && self.config.proxy.is_none();
        let mut probe_at = tokio::time::Instant::now() + self.config.quic_probe_interval;
        let mut probe: Option<tokio::task::JoinHandle<Result<Established, AttemptError>>> = None;
        // Whether the probe under way is a move to another node (else: back to QUIC).
        let mut spreading = false;
        // Where the cluster lists other nodes, a slot that shares its node with another slot
        // moves to a node no slot is on, so that a node loss never takes every session.
        let mut spread_at = tokio::time::Instant::now() + SPREAD_FIRST_CHECK;
        // Set when the relay refused the session (credential revoked, tenant disabled): then
        // nothing more is served on it, not even the streams in flight.
        let mut refused = false;
        let ended = loop {
            // Why select: the session is driven by whichever comes first — a new stream from the
            // relay, a control frame, the renewal deadline, a QUIC probe, the connection closing,
            // or shutdown.
            tokio::select! {
                incoming = conn.accept_bi() => match incoming {
                    Ok((send, recv)) => {
                        let backends = self.backends(slot).clone();
                        // Boxed: the request's future is large, and the task would copy it
                        // by value twice more (into the task cell, and out when it ends).
                        streams.spawn(Box::pin(crate::stream::serve(send, recv, backends)));
                    }
                    Err(e) => break Ended::Lost(e.to_string()),
                },
                frame = control.next() => match frame {
                    Ok(ControlFrame::Renewed(r)) => {
                        let life = Duration::from_secs(u64::from(r.expires_in_secs));
                        self.store_token(r.token, life);
                        renew_at = tokio::time::Instant::now() + renew_delay(life);
                        debug!("session renewed");
                    }
                    Ok(ControlFrame::Nodes(nodes)) => {
                        // A node joined, left or drained: the spread check uses the new list.
                        debug!(nodes = ?nodes, "cluster nodes changed");
                        *lock(&self.nodes) = nodes;
                        spread_at = spread_at.min(tokio::time::Instant::now() + SPREAD_FIRST_CHECK);
                    }
                    Ok(ControlFrame::GoAway(g)) => {
                        info!(code = %g.code, reason = %g.message, "relay asked this session to move");
                        // Reconnect elsewhere first when the cluster has other nodes.
                        self.avoid(slot, conn.remote_address());
                        // The slot reconnects at once; this session finishes its streams meanwhile.
                        self.lingering.spawn(linger(conn, control, streams, self.backends(slot).clone(), Linger::Asked));
                        return Served::Ended(Ended::Drained);
                    }
                    Ok(ControlFrame::Ping(n)) => {
                        if control.send(&ControlFrame::Pong(n)).await.is_err() {
                            break Ended::Lost("control stream failed".into());
                        }
                    }
                    Ok(ControlFrame::Refused(r)) => {
                        warn!(code = %r.code, reason = %r.message, "relay ended the session");
                        self.token.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
                        refused = true;
                        break Ended::Lost(format!("refused: {}", r.message));
                    }
                    Ok(_) => {}
                    Err(e) => break Ended::Lost(e.to_string()),
                },
                _ = tokio::time::sleep_until(renew_at) => {
                    let secret = Credential::Secret(self.config.secret.expose().to_string());
                    if control.send(&ControlFrame::Renew(secret)).await.is_err() {
                        break Ended::Lost("control stream failed".into());
                    }
                    // Until the answer arrives, do not ask again for a while.
                    renew_at = tokio::time::Instant::now() + Duration::from_secs(30);
                }
                _ = tokio::time::sleep_until(spread_at), if probe.is_none() => {
                    spread_at = tokio::time::Instant::now() + SPREAD_CHECK_INTERVAL;
                    if self.should_spread(slot, &node) {
                        let dialer = self.clone();
                        spreading = true;
                        probe = Some(tokio::spawn(async move { dialer.establish(slot).await }));
                    }
                }
                _ = tokio::time::sleep_until(probe_at), if probing && probe.is_none() => {
                    let dialer = self.clone();
                    spreading = false;
                    probe = Some(tokio::spawn(async move {
                        let conn = dialer.connect_quic(slot, dialer.config.quic_fallback_after).await?;
                        dialer.authenticate(conn).await
                    }));
                }
                result = async { probe.as_mut().expect("guarded by the condition").await }, if probe.is_some() => {
                    probe = None;
                    probe_at = tokio::time::Instant::now() + self.config.quic_probe_interval;
                    match result {
                        // A spread attempt that landed on a node a slot is already on: keep the
                        // session there is.
                        Ok(Ok(next)) if spreading && (next.node == node || self.taken(slot).contains(&next.node)) => {
                            debug!(node = %next.node, "no other relay node reachable for this slot; staying");
                            let Established { conn: extra, mut control, .. } = next;
                            control.finish();
                            extra.close(ErrorCode::NO_ERROR, b"not needed");
                        }
                        Ok(Ok(next)) => {
                            if spreading {
                                info!(from = %node, to = %next.node, "moving this session to another relay node");
                            } else {
                                info!("QUIC reachable again: moving this session from TLS/TCP to QUIC");
                            }
                            if next.conn.transport() == Transport::Quic {
                                *self.quic_blocked_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            }
                            // The relay stops routing here and closes once our streams are done;
                            // until then this session keeps serving what arrives.
                            let go_away = ControlFrame::GoAway(tunnel_protocol::GoAway {
                                code: ErrorCode::NO_ERROR,
                                message: "moving".into(),
                            });
                            let _ = control.send(&go_away).await;
                            self.lingering.spawn(linger(conn, control, streams, self.backends(slot).clone(), Linger::Moving));
                            return Served::Replaced(Box::new(next));
                        }
                        Ok(Err(e)) => debug!(error = %e, "QUIC still unavailable; staying on TLS/TCP"),
                        Err(e) => debug!(error = %e, "QUIC probe failed"),
                    }
                }
                _ = shutdown.cancelled() => break Ended::Shutdown,
            }
        };
        if let Some(p) = probe {
            p.abort();
        }
        // Let the streams in flight finish (bounded), then close the connection; after a
        // refusal, close at once, which aborts them (a revoked credential serves nothing more).
        streams.close();
        if refused {
            debug!(
                left = streams.len(),
                "session refused; streams in flight are cut"
            );
        } else if tokio::time::timeout(DRAIN_GRACE, streams.wait())
            .await
            .is_err()
        {
            warn!(
                left = streams.len(),
                "streams still in flight after the drain grace; cutting them"
            );
        }
        let code = match ended {
            Ended::Shutdown => ErrorCode::CONNECTOR_SHUTDOWN,
            Ended::Drained => ErrorCode::NO_ERROR,
            Ended::Lost(_) => ErrorCode::INTERNAL,
        };
        control.finish();
        conn.close(code, code.name().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.drained()).await;
        Served::Ended(ended)
    }

    /// Waits (bounded) for lingering sessions to finish and for close frames to be sent before
    /// the endpoint goes away.
    pub(crate) async fn close(&self) {
        self.lingering.close();
        let _ = tokio::time::timeout(DRAIN_GRACE, self.lingering.wait()).await;
        let endpoints: Vec<Endpoint> = self
            .slots
            .iter()
            .filter_map(|s| s.endpoint.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        let idle = futures_util::future::join_all(endpoints.iter().map(Endpoint::wait_idle));
        let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
    }
}

/// Why a session lingers after its slot moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// The relay sent `GoAway` (it drains): close once our streams are done.
    Asked,
    /// We sent `GoAway` (moving to QUIC): the relay closes once nothing is in flight there.
    Moving,
}

/// A session its slot has moved away from: it keeps serving the streams the relay still opens
/// (one may have been opened just before the `GoAway`), and closes when its work is done, bounded
/// by the drain grace.
async fn linger(
    conn: Conn,
    mut control: ControlStream,
    streams: TaskTracker,
    backends: Backends,
    why: Linger,
) {
    let mut last_stream = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(DRAIN_GRACE);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // Why select: accept until the relay closes the connection, our streams are done (when
        // the relay asked), or the grace is over.
        tokio::select! {
            incoming = conn.accept_bi() => match incoming {
                Ok((send, recv)) => {
                    last_stream = tokio::time::Instant::now();
                    streams.spawn(Box::pin(crate::stream::serve(send, recv, backends.clone())));
                }
                Err(_) => break,
            },
            _ = tick.tick() => {
                // Quiet for a while: the relay has moved its new requests elsewhere (it uses a
                // draining session only while the tenant has no other), so closing now cannot
                // cut a stream it is about to open.
                if why == Linger::Asked
                    && streams.is_empty()
                    && last_stream.elapsed() >= LINGER_QUIET
                {
                    break;
                }
            }
            _ = &mut deadline => break,
        }
    }
    streams.close();
    let _ = tokio::time::timeout(DRAIN_GRACE, streams.wait()).await;
    control.finish();
    conn.close(ErrorCode::NO_ERROR, ErrorCode::NO_ERROR.name().as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.drained()).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The order in which slot `slot` tries relay addresses. Slot 0 starts with the configured relay;
/// the others start with another node of the cluster that no other slot is on (so that a node
/// loss never takes every session), taking turns by slot number. Everything else follows as a
/// fallback, each address once; an address that just asked this slot to move comes last.
fn dial_order(
    slot: usize,
    primary: Vec<SocketAddr>,
    others: &[(String, Vec<SocketAddr>)],
    taken: &[String],
    avoid: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let free: Vec<&(String, Vec<SocketAddr>)> = others
        .iter()
        .filter(|(name, addrs)| !taken.contains(name) && !addrs.is_empty())
        .collect();
    let mut order: Vec<SocketAddr> = Vec::new();
    if slot > 0 && !free.is_empty() {
        order.extend(&free[(slot - 1) % free.len()].1);
    }
    order.extend(primary);
    for (_, addrs) in others {
        order.extend(addrs);
    }
    let mut seen = std::collections::HashSet::new();
    order.retain(|a| seen.insert(*a));
    if let Some(a) = avoid {
        if let Some(i) = order.iter().position(|x| *x == a) {
            let a = order.remove(i);
            order.push(a);
        }
    }
    order
}

/// Renew at two thirds of the token's life.
fn renew_delay(life: Duration) -> Duration {
    (life * 2 / 3).max(Duration::from_secs(1))
}

/// Binds a UDP socket with `bind` on an ephemeral port: dual-stack first, IPv4-only where IPv6
/// is disabled.
fn dual_stack<T>(bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> std::io::Result<T> {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
    bind(any6).or_else(|_| bind(any4))
}

/// The TLS client config for both transports: TLS 1.3, the tunnel's ALPN, system roots plus
/// `--ca-cert`.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for path in &config.ca_certs {
        for cert in load_certs(path).map_err(ConfigError::new)? {
            roots
                .add(cert)
                .map_err(|e| ConfigError::new(format!("CA {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError::new(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    Ok(tls)
}

fn client_config(
    config: &Config,
    tls: rustls::ClientConfig,
) -> Result<quinn::ClientConfig, ConfigError> {
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| ConfigError::new(format!("QUIC TLS setup: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(config)?));
    Ok(client)
}

/// QUIC limits, all set explicitly (quinn's connection receive window is unbounded by default).
fn transport_config(config: &Config) -> Result<TransportConfig, ConfigError> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .map_err(|_| ConfigError::new("session.idle_timeout is too large"))?,
    ));
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.stream_receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(8 * 1024 * 1024);
    t.mtu_discovery_config(Some(tunnel_session::udp::mtu_discovery()));
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    tunnel_protocol::hex(&bytes)
}

/// The shared status a caller can watch.
pub(crate) fn set_error(state: &StateTx, err: &str) {
    state.send_modify(|s: &mut State| s.last_error = Some(err.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn slots_spread_over_the_nodes_and_fall_back_to_everything() {
        let others = vec![
            ("beta".to_string(), vec![a(2)]),
            ("gamma".to_string(), vec![a(3)]),
        ];
        // Slot 0: the configured relay first.
        assert_eq!(
            dial_order(0, vec![a(1)], &others, &[], None),
            [a(1), a(2), a(3)]
        );
        // Slots 1, 2: another node each, in turn.
        assert_eq!(
            dial_order(1, vec![a(1)], &others, &[], None),
            [a(2), a(1), a(3)]
        );
        assert_eq!(
            dial_order(2, vec![a(1)], &others, &[], None),
            [a(3), a(1), a(2)]
        );
        // A node another slot is on is not preferred.
        let taken = ["beta".to_string()];
        assert_eq!(
            dial_order(1, vec![a(1)], &others, &taken, None),
            [a(3), a(1), a(2)]
        );
        // The listed nodes include the configured one (one address, listed by name): once.
        let with_self = vec![
            ("alpha".to_string(), vec![a(1)]),
            ("beta".to_string(), vec![a(2)]),
        ];
        assert_eq!(
            dial_order(0, vec![a(1)], &with_self, &[], None),
            [a(1), a(2)]
        );
    }

    #[test]
    fn an_address_that_asked_to_move_comes_last() {
        let others = vec![("beta".to_string(), vec![a(2)])];
        assert_eq!(
            dial_order(0, vec![a(1)], &others, &[], Some(a(1))),
            [a(2), a(1)]
        );
        // Alone, it is still tried.
        assert_eq!(dial_order(0, vec![a(1)], &[], &[], Some(a(1))), [a(1)]);
    }
}
