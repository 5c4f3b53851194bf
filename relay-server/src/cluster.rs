//! Forwarding between relay nodes that share one PostgreSQL database.
//!
//! ```text
//! visitor ──► node A: no session of the tenant here ──directory──► node B holds one
//!                │                                                     ▲
//!                └──── node link (QUIC, ALPN relay-node/1) ── stream ──┘──► session ══ connector
//! ```
//!
//! - **Directory.** Where a tenant's sessions are: `connector_sessions` rows of live, active nodes
//!   (with the targets each connector announced), cached per tenant for [`DIRECTORY_TTL`]. A
//!   refusal from the peer (its sessions moved) drops the entry at once.
//! - **Links.** One QUIC connection per peer node, opened on first use from this node's own QUIC
//!   endpoint to the peer's advertised address (the HTTPS port number), and kept alive. Both sides
//!   prove they hold the cluster's `keys/` with an HMAC over the connection's TLS exporter (see
//!   `tunnel_protocol::node`); no certificate is checked, since the proof binds the connection. A
//!   peer that cannot be reached is skipped for [`PEER_BACKOFF`].
//! - **Serving.** The owning node admits a forwarded request as one of its own (tenant stream cap,
//!   a session serving the target), answers `Accepted`, then joins the link stream to the
//!   connector stream byte for byte ([`tunnel_session::pipe`]). It never forwards it again: one
//!   hop, no loops.
//!
//! The node the visitor reached keeps everything visitor-facing — limits on the request, timeouts,
//! the response, upgrades, the audit record (naming both nodes) — exactly as for a local session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{TransportConfig, VarInt};
use relay_store::{RemoteSessions, Store, Tenant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use tunnel_protocol::node::{
    NodeMessage, MAX_NODE_MESSAGE_LEN, NODE_ALPN, NODE_EXPORTER_LABEL, NODE_HEADER_LEN,
};
use tunnel_protocol::ErrorCode;
use tunnel_session::transport::{RecvHalf, SendHalf};

use crate::registry::Pick;
use crate::Relay;

/// How long the directory's answer for a tenant is reused.
const DIRECTORY_TTL: Duration = Duration::from_secs(1);
/// How long an answer that found no session elsewhere is reused. Nodes announce every new session
/// (`NOTIFY relay_sessions`), which drops the tenant's entry at once, so this only bounds how
/// long a lost announcement is missed — while requests for tenants without any connector (a
/// flood of them, say) cost no query each.
const DIRECTORY_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long a directory query may take before the request is answered without it.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long opening and authenticating a link may take.
const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer that could not be reached is skipped.
const PEER_BACKOFF: Duration = Duration::from_secs(2);
/// Streams a peer may have open on a link towards this node (each is one forwarded request; the
/// tenant's stream cap still applies to each).
const LINK_STREAMS: u32 = 4096;
/// How long the owning node waits for a forwarded stream's first message.
const FORWARD_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping node still takes forwarded requests on its open links.
const LINK_LINGER: Duration = Duration::from_secs(2);
/// The TLS server name a link connects with (certificates are not checked; see the module doc).
const LINK_SERVER_NAME: &str = "relay-node";

/// A tenant's sessions on other nodes, and when the directory was asked.
type Found = (Instant, Arc<Vec<RemoteSessions>>);

/// Which side of a link a proof is for.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The node that opened the link (and forwards requests over it).
    Client,
    /// The node that accepted it (and serves them).
    Server,
}

/// This node's part in the cluster.
pub(crate) struct Cluster {
    /// PostgreSQL: nodes share the database. SQLite is one node: nothing to forward to.
    enabled: bool,
    node_id: String,
    node_name: String,
    link_key: hmac::Key,
    client: quinn::ClientConfig,
    /// Set at start, cleared at shutdown (the UDP socket must be free for a restart).
    endpoint: Mutex<Option<quinn::Endpoint>>,
    store: Store,
    fresh_ms: i64,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    directory: Mutex<HashMap<String, Found>>,
    /// One directory query at a time: requests that miss together wait for the same answer.
    refreshing: tokio::sync::Mutex<()>,
    /// The other active nodes connectors may dial directly (from the last heartbeat).
    /// Watched by every session: a change is sent to its connector (`Nodes`).
    public_nodes: tokio::sync::watch::Sender<Vec<tunnel_protocol::NodeAddress>>,
    /// The tenants with a session on another node: read at every heartbeat, extended at once by
    /// the other nodes' announcements. Only these are looked up in the directory, so requests for
    /// tenants without any connector (a flood of them, say) cost no query.
    elsewhere: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("enabled", &self.enabled)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Another node this one forwards to.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) node_id: String,
    pub(crate) node_name: String,
    advertise: String,
    link: Mutex<Option<quinn::Connection>>,
    connecting: tokio::sync::Mutex<()>,
    down_until: Mutex<Option<Instant>>,
    /// Requests in flight through this peer (the least busy candidate is chosen).
    pub(crate) in_flight: AtomicUsize,
}

/// Where a request for a tenant without a local session can go.
pub(crate) enum Located {
    /// Forward it to this peer, over this link.
    Peer(Arc<Peer>, quinn::Connection),
    /// The tenant's sessions elsewhere serve other targets only (404).
    NoTarget,
    /// No live node holds a usable session of the tenant (503).
    NoSession,
}

impl Cluster {
    pub(crate) fn new(
        enabled: bool,
        (node_id, node_name): (String, String),
        pepper: &[u8],
        (idle_timeout, fresh): (Duration, Duration),
        store: Store,
    ) -> anyhow::Result<Cluster> {
        // A key of its own, derived from the shared pepper: a proof never doubles as a credential
        // hash or the other way round.
        let derive = hmac::Key::new(hmac::HMAC_SHA256, pepper);
        let link_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&derive, b"relay-node-link/1").as_ref(),
        );
        Ok(Cluster {
            enabled,
            node_id,
            node_name,
            link_key,
            client: client_config(idle_timeout)?,
            endpoint: Mutex::new(None),
            store,
            fresh_ms: i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX),
            peers: Mutex::new(HashMap::new()),
            directory: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            public_nodes: tokio::sync::watch::Sender::new(Vec::new()),
            elsewhere: std::sync::RwLock::new(std::collections::HashSet::new()),
        })
    }

    /// Whether nodes share a database (PostgreSQL): forwarding is on.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The QUIC endpoint links are opened from (the relay's own, so peers see its port).
    pub(crate) fn set_endpoint(&self, endpoint: Option<quinn::Endpoint>) {
        *self.endpoint.lock().unwrap_or_else(|p| p.into_inner()) = endpoint;
    }

    /// Forgets peers that are no longer registered (restarted nodes come back under new ids).
    pub(crate) fn retain_peers(&self, live: &[String]) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.retain(|id, _| live.contains(id));
    }

    /// Sets the other nodes connectors are told about; sessions hear of a change.
    pub(crate) fn set_public_nodes(&self, nodes: Vec<tunnel_protocol::NodeAddress>) {
        self.public_nodes.send_if_modified(|current| {
            let changed = *current != nodes;
            if changed {
                *current = nodes;
            }
            changed
        });
    }

    /// The other active nodes connectors may dial directly, and a receiver of later changes.
    pub(crate) fn public_nodes(
        &self,
    ) -> (
        Vec<tunnel_protocol::NodeAddress>,
        tokio::sync::watch::Receiver<Vec<tunnel_protocol::NodeAddress>>,
    ) {
        let mut rx = self.public_nodes.subscribe();
        let now = rx.borrow_and_update().clone();
        (now, rx)
    }

    /// A node with a live session of `tenant` serving `target`, with a link to it.
    pub(crate) async fn locate(&self, tenant: &Tenant, target: &str) -> Located {
        if !self.enabled {
            return Located::NoSession;
        }
        let maybe = self
            .elsewhere
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&tenant.name);
        if !maybe {
            return Located::NoSession;
        }
        let remote = self.directory(&tenant.name).await;
        let mut candidates: Vec<&RemoteSessions> = remote
            .iter()
            .filter(|r| r.targets.as_ref().is_none_or(|t| t.contains(target)))
            .collect();
        if candidates.is_empty() {
            return if remote.is_empty() {
                Located::NoSession
            } else {
                Located::NoTarget
            };
        }
        let peers: Vec<Arc<Peer>> = {
            let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            candidates
                .drain(..)
                .map(|r| {
                    map.entry(r.node_id.clone())
                        .or_insert_with(|| Arc::new(Peer::new(r)))
                        .clone()
                })
                .collect()
        };
        let mut usable: Vec<Arc<Peer>> = peers.into_iter().filter(|p| !p.is_down()).collect();
        // A draining node still serves until its connectors have moved; active ones first.
        usable.sort_by_key(|p| {
            let draining = remote.iter().any(|r| r.node_id == p.node_id && r.draining);
            (draining, p.in_flight.load(Ordering::Relaxed))
        });
        for peer in usable {
            match peer.connection(self).await {
                Ok(link) => return Located::Peer(peer, link),
                Err(e) => {
                    warn!(peer = %peer.node_name, peer_id = %peer.node_id, addr = %peer.advertise, error = %e, "cannot reach relay node");
                    peer.mark_down();
                }
            }
        }
        Located::NoSession
    }

    /// Forgets what the directory said about `tenant` (a peer refused: its sessions moved; a
    /// node announced a new session), or about every tenant.
    pub(crate) fn forget(&self, tenant: &str) {
        self.directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// Another node announced a session of `tenant`.
    pub(crate) fn session_elsewhere(&self, tenant: &str) {
        self.elsewhere
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_string());
        self.forget(tenant);
    }

    /// Reads which tenants have sessions on other nodes.
    pub(crate) async fn refresh_elsewhere(&self) {
        if !self.enabled {
            return;
        }
        match self
            .store
            .tenants_elsewhere(&self.node_id, self.fresh_ms)
            .await
        {
            Ok(list) => {
                *self.elsewhere.write().unwrap_or_else(|p| p.into_inner()) =
                    list.into_iter().collect();
            }
            Err(e) => debug!(error = %e, "tenants on other nodes not read"),
        }
    }

    /// How old a node's heartbeat may be for the node to count as live, in ms.
    pub(crate) fn fresh_ms(&self) -> i64 {
        self.fresh_ms
    }

    /// A link to node `node_id` at `advertise`, opened on first use (pairing: the node holding
    /// a connection's partner).
    pub(crate) async fn link_to(
        &self,
        (node_id, node_name, advertise): (&str, &str, &str),
    ) -> anyhow::Result<quinn::Connection> {
        let peer = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .entry(node_id.to_string())
                .or_insert_with(|| {
                    Arc::new(Peer {
                        node_id: node_id.to_string(),
                        node_name: node_name.to_string(),
                        advertise: advertise.to_string(),
                        link: Mutex::new(None),
                        connecting: tokio::sync::Mutex::new(()),
                        down_until: Mutex::new(None),
                        in_flight: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        peer.connection(self).await
    }

    /// Forgets everything the directory said (the announcements may have been missed).
    pub(crate) fn forget_all(&self) {
        self.directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    async fn directory(&self, tenant: &str) -> Arc<Vec<RemoteSessions>> {
        if let Some(hit) = self.cached(tenant) {
            return hit;
        }
        let _one = self.refreshing.lock().await;
        if let Some(hit) = self.cached(tenant) {
            return hit;
        }
        let found = match tokio::time::timeout(
            DIRECTORY_TIMEOUT,
            self.store
                .remote_sessions(tenant, &self.node_id, self.fresh_ms),
        )
        .await
        {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                debug!(error = %e, "session directory not available");
                Vec::new()
            }
            Err(_) => {
                debug!("session directory query timed out");
                Vec::new()
            }
        };
        let found = Arc::new(found);
        let mut map = self.directory.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: entries of tenants nobody asked for lately go first.
        if map.len() > 10_000 {
            map.retain(|_, (at, _)| at.elapsed() < DIRECTORY_TTL);
        }
        map.insert(tenant.to_string(), (Instant::now(), found.clone()));
        found
    }

    fn cached(&self, tenant: &str) -> Option<Arc<Vec<RemoteSessions>>> {
        let map = self.directory.lock().unwrap_or_else(|p| p.into_inner());
        map.get(tenant)
            .filter(|(at, v)| {
                let ttl = match v.is_empty() {
                    true => DIRECTORY_NEGATIVE_TTL,
                    false => DIRECTORY_TTL,
                };
                at.elapsed() < ttl
            })
            .map(|(_, v)| v.clone())
    }

    /// This side's proof for a link connection.
    fn proof(&self, conn: &quinn::Connection, role: Role) -> Option<hmac::Tag> {
        let mut exported = [0u8; 32];
        conn.export_keying_material(&mut exported, NODE_EXPORTER_LABEL, b"")
            .ok()?;
        let mut ctx = hmac::Context::with_key(&self.link_key);
        ctx.update(match role {
            Role::Client => b"client",
            Role::Server => b"server",
        });
        ctx.update(&exported);
        Some(ctx.sign())
    }

    fn verify(&self, conn: &quinn::Connection, role: Role, proof: &[u8]) -> bool {
        let mut exported = [0u8; 32];
        if conn
            .export_keying_material(&mut exported, NODE_EXPORTER_LABEL, b"")
            .is_err()
        {
            return false;
        }
        let mut msg = Vec::with_capacity(6 + exported.len());
        msg.extend_from_slice(match role {
            Role::Client => b"client",
            Role::Server => b"server",
        });
        msg.extend_from_slice(&exported);
        hmac::verify(&self.link_key, &msg, proof).is_ok()
    }

    fn hello(&self, conn: &quinn::Connection, role: Role) -> anyhow::Result<NodeMessage> {
        let proof = self
            .proof(conn, role)
            .ok_or_else(|| anyhow::anyhow!("no TLS exporter on the link"))?;
        Ok(NodeMessage::Hello {
            node_id: self.node_id.clone(),
            node_name: self.node_name.clone(),
            proof: Bytes::copy_from_slice(proof.as_ref()),
        })
    }
}

impl Peer {
    fn new(r: &RemoteSessions) -> Peer {
        Peer {
            node_id: r.node_id.clone(),
            node_name: r.node_name.clone(),
            advertise: r.advertise.clone(),
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            down_until: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn is_down(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + PEER_BACKOFF);
    }

    fn open_link(&self) -> Option<quinn::Connection> {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner());
        link.as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The open link, or a new one (one connect at a time per peer).
    async fn connection(&self, cluster: &Cluster) -> anyhow::Result<quinn::Connection> {
        if let Some(c) = self.open_link() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.open_link() {
            return Ok(c);
        }
        // The attempt before ours failed: do not spend another connect timeout on it.
        if self.is_down() {
            anyhow::bail!("unreachable a moment ago");
        }
        let conn = tokio::time::timeout(LINK_CONNECT_TIMEOUT, self.connect(cluster))
            .await
            .map_err(|_| anyhow::anyhow!("no link within {LINK_CONNECT_TIMEOUT:?}"))??;
        info!(peer = %self.node_name, peer_id = %self.node_id, addr = %self.advertise, "node link open");
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    async fn connect(&self, cluster: &Cluster) -> anyhow::Result<quinn::Connection> {
        let endpoint = cluster
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no QUIC endpoint (stopping)"))?;
        let addr = tokio::net::lookup_host(&self.advertise)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", self.advertise))?;
        let conn = endpoint
            .connect_with(cluster.client.clone(), addr, LINK_SERVER_NAME)?
            .await?;
        let (mut send, recv) = conn.open_bi().await?;
        let mut buf = BytesMut::new();
        cluster.hello(&conn, Role::Client)?.encode(&mut buf);
        send.write_all(&buf).await?;
        let _ = send.finish();
        let mut recv = RecvHalf::from(recv);
        match read_message(&mut recv).await? {
            NodeMessage::Hello { node_id, proof, .. } => {
                if !cluster.verify(&conn, Role::Server, &proof) {
                    conn.close(VarInt::from_u32(ErrorCode::AUTH_FAILED.0), b"auth_failed");
                    anyhow::bail!("the node at {addr} does not hold this cluster's keys");
                }
                if node_id != self.node_id {
                    conn.close(VarInt::from_u32(ErrorCode::NO_ERROR.0), b"wrong node");
                    anyhow::bail!("another relay process answers at {addr} (restarted?)");
                }
                Ok(conn)
            }
            other => anyhow::bail!("unexpected link answer {other:?}"),
        }
    }
}

/// Reads one node message (bounded), without reading past it.
pub(crate) async fn read_message(recv: &mut RecvHalf) -> anyhow::Result<NodeMessage> {
    let mut header = [0u8; NODE_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = NodeMessage::payload_len(header)?;
    debug_assert!(len <= MAX_NODE_MESSAGE_LEN);
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(NodeMessage::decode(header, Bytes::from(payload))?)
}

async fn write_message(send: &mut SendHalf, msg: &NodeMessage) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    msg.encode(&mut buf);
    send.write_all(&buf).await
}

/// Whether an accepted QUIC connection asked for a node link.
pub(crate) fn is_link(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == NODE_ALPN)
}

/// Serves a link another node opened: authenticates it, then serves each stream as one forwarded
/// request until the link closes — or, once this node shuts down, [`LINK_LINGER`] later (peers
/// stop forwarding here within their directory's lifetime; what is in flight finishes).
pub(crate) async fn serve_link(
    relay: Arc<Relay>,
    conn: quinn::Connection,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let cluster = &relay.cluster;
    if !cluster.enabled {
        debug!("node link refused: this relay is not part of a cluster (SQLite)");
        conn.close(VarInt::from_u32(ErrorCode::PROTOCOL_ERROR.0), b"no cluster");
        return;
    }
    let peer = tokio::time::timeout(relay.config.tunnel.auth_timeout, async {
        let (send, recv) = conn.accept_bi().await?;
        let (mut send, mut recv) = (SendHalf::from(send), RecvHalf::from(recv));
        let NodeMessage::Hello {
            node_id,
            node_name,
            proof,
        } = read_message(&mut recv).await?
        else {
            anyhow::bail!("the link did not start with Hello");
        };
        if !cluster.verify(&conn, Role::Client, &proof) {
            anyhow::bail!("node {node_name} ({node_id}) does not hold this cluster's keys");
        }
        write_message(&mut send, &cluster.hello(&conn, Role::Server)?).await?;
        send.finish();
        anyhow::Ok((node_id, node_name))
    })
    .await;
    let (peer_id, peer_name) = match peer {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!(peer_addr = %conn.remote_address(), error = %e, "node link refused");
            conn.close(VarInt::from_u32(ErrorCode::AUTH_FAILED.0), b"auth_failed");
            return;
        }
        Err(_) => {
            conn.close(VarInt::from_u32(ErrorCode::AUTH_TIMEOUT.0), b"auth_timeout");
            return;
        }
    };
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(LINK_STREAMS));
    let span = info_span!("node_link", peer = %peer_name, peer_id = %peer_id);
    async {
        info!("node link accepted");
        let linger = async {
            shutdown.cancelled().await;
            tokio::time::sleep(LINK_LINGER).await;
        };
        tokio::pin!(linger);
        loop {
            // Why select: streams arrive until the link closes, or until shutdown has lingered.
            let (send, recv) = tokio::select! {
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
                () = &mut linger => break,
            };
            let relay = relay.clone();
            tracker.spawn(
                serve_forwarded(relay, SendHalf::from(send), RecvHalf::from(recv))
                    .in_current_span(),
            );
        }
        debug!(reason = ?conn.close_reason(), "node link done");
    }
    .instrument(span)
    .await;
}

/// One forwarded request: admitted here as if the visitor had come here, then joined to a
/// connector stream.
async fn serve_forwarded(relay: Arc<Relay>, mut send: SendHalf, mut recv: RecvHalf) {
    let forward = match tokio::time::timeout(FORWARD_HEAD_TIMEOUT, read_message(&mut recv)).await {
        Ok(Ok(NodeMessage::Forward {
            tenant_id,
            target,
            request_id,
        })) => (tenant_id, target, request_id),
        Ok(Ok(NodeMessage::PairConnect {
            tenant_id,
            a,
            b,
            document_id,
        })) => {
            crate::pair::serve_link_stream(&relay, (send, recv), &tenant_id, (a, b, document_id));
            return;
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            send.reset(ErrorCode::PROTOCOL_ERROR);
            recv.stop(ErrorCode::PROTOCOL_ERROR);
            return;
        }
    };
    let (tenant_id, target, request_id) = forward;
    let refuse = |code: ErrorCode, message: &str| NodeMessage::Refused {
        code,
        message: message.to_string(),
    };
    let placed = place(&relay, &tenant_id, &target).map_err(|(c, m)| refuse(c, m));
    let (session, guard) = match placed {
        Ok(p) => p,
        Err(msg) => {
            debug!(request_id, "forwarded request refused: {msg:?}");
            let _ = write_message(&mut send, &msg).await;
            send.finish();
            recv.stop(ErrorCode::NO_ERROR);
            return;
        }
    };
    let opened =
        tokio::time::timeout(crate::proxy::OPEN_STREAM_TIMEOUT, session.conn.open_bi()).await;
    let (to_connector, from_connector) = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            let _ = write_message(
                &mut send,
                &refuse(
                    ErrorCode::GOING_AWAY,
                    "session ended before the stream opened",
                ),
            )
            .await;
            send.finish();
            recv.stop(ErrorCode::NO_ERROR);
            return;
        }
    };
    // The forwarding node reads `Accepted` only before the response head: it leaves in the same
    // write as the connector's first bytes, not in a packet (and a wake-up of that node) of its own.
    let mut accepted = BytesMut::new();
    NodeMessage::Accepted {
        session_id: session.id.clone(),
    }
    .encode(&mut accepted);
    relay.metrics.forwarded_in.fetch_add(1, Ordering::Relaxed);
    let ends = tunnel_session::pipe::pipe_with_prefix(
        (send, recv),
        (to_connector, from_connector),
        accepted.freeze(),
    )
    .await;
    debug!(request_id, ?ends, "forwarded request done");
    drop(guard);
}

/// The local session for a forwarded request, under the tenant's stream cap.
fn place(
    relay: &Arc<Relay>,
    tenant_id: &str,
    target: &str,
) -> Result<(Arc<crate::registry::SessionEntry>, crate::proxy::InFlight), (ErrorCode, &'static str)>
{
    let tenant_id = relay_store::TenantId(tenant_id.to_string());
    let Some(tenant) = relay.catalog.enabled_tenant_by_id(&tenant_id) else {
        return Err((ErrorCode::TENANT_DISABLED, "no such enabled tenant here"));
    };
    let permit = crate::proxy::cap_permit(relay, &tenant)
        .map_err(|_| (ErrorCode::RATE_LIMITED, "tenant stream cap reached"))?;
    let session = match relay.registry.pick(&tenant.id, target) {
        Pick::Session(s) => s,
        Pick::NoTarget => return Err((ErrorCode::UNKNOWN_TARGET, "no session serves the target")),
        // Its connector is moving away from this node; its old session still takes streams.
        Pick::NoSession => match relay.registry.pick_draining(&tenant.id, target) {
            Some(s) => s,
            None => return Err((ErrorCode::GOING_AWAY, "no session of the tenant here")),
        },
    };
    let guard = crate::proxy::InFlight::local(session.clone(), relay.clone(), Some(permit));
    Ok((session, guard))
}

/// The QUIC client config of links: TLS 1.3, the node ALPN, any certificate (the HMAC proof over
/// the exporter authenticates the peer), keep-alives for the tunnel's liveness budget.
fn client_config(idle_timeout: Duration) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![NODE_ALPN.to_vec()];
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(idle_timeout / 3));
    t.max_idle_timeout(Some(idle_timeout.try_into()?));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(32 * 1024 * 1024));
    t.stream_receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.mtu_discovery_config(Some(tunnel_session::udp::mtu_discovery()));
    t.datagram_receive_buffer_size(None);
    client.transport_config(Arc::new(t));
    Ok(client)
}

/// Accepts any server certificate, but still checks the handshake signatures against it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
