//! Pairing: peer introductions and WebSocket pairing per tenant, wire-compatible with the
//! `@localfirst/relay` 4.2 client (docs/pairing.md).
//!
//! ```text
//! /pair/{tenant}[/{token}]/introduction/{peerId}        Join/Leave/Heartbeat in, Introduction out
//! /pair/{tenant}[/{token}]/connection/{A}/{B}/{doc}     held until {B}/{A}/{doc} arrives, then piped
//! ```
//!
//! State lives on this node, keyed by tenant id: peers of different tenants never meet. Every
//! socket is bounded (message size, held bytes, hold time, idle time) and every refusal is a
//! WebSocket close with a code from [`close`].

mod remote;
mod socket;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use relay_store::{parse_pairing_token, PairingMode, SecretHasher, Tenant, TenantId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::audit::Draft;
use crate::proxy::Visitor;
use crate::Relay;

pub(crate) use remote::{listen, serve_link_stream};
pub(crate) use socket::Side;

/// The close codes the relay sends on pairing sockets (docs/pairing.md lists them).
pub(crate) mod close {
    /// The relay shuts down.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The peer does not read its introductions (its queue of them is full).
    pub(crate) const NOT_READING: u16 = 1008;
    /// A message is larger than `pairing.max_frame_bytes`.
    pub(crate) const TOO_BIG: u16 = 1009;
    /// The relay could not check the tenant's settings (the database did not answer).
    pub(crate) const UNAVAILABLE: u16 = 1013;
    /// The partner closed, or a paired connection ended normally.
    pub(crate) const NORMAL: u16 = 1000;
    /// A malformed path segment (peer id, document id) or message.
    pub(crate) const BAD_REQUEST: u16 = 4400;
    /// Token mode: the token is missing, unknown, revoked, or bound to another peer id.
    pub(crate) const BAD_TOKEN: u16 = 4401;
    /// Unknown or disabled tenant, or pairing is off for it.
    pub(crate) const NOT_ENABLED: u16 = 4404;
    /// Nothing received for `pairing.idle_timeout` (not even a pong).
    pub(crate) const IDLE: u16 = 4408;
    /// The peer id is online already, or the same connection is already waiting.
    pub(crate) const DUPLICATE: u16 = 4409;
    /// The partner did not arrive within `pairing.hold_timeout`.
    pub(crate) const HOLD_TIMEOUT: u16 = 4410;
    /// More than `pairing.max_held_bytes` sent before the partner arrived.
    pub(crate) const HELD_BYTES: u16 = 4413;
    /// The tenant has `pairing.max_peers` peers or `pairing.max_connections` connections here.
    pub(crate) const TOO_MANY: u16 = 4429;
    /// The peer joined more than `pairing.max_document_ids` document ids.
    pub(crate) const TOO_MANY_DOCUMENTS: u16 = 4431;
}

/// Where pairing paths start; `/pair/…` on a tenant's own hostname belongs to its backend.
const PREFIX: &str = "/pair/";
/// Longest peer id accepted in a path.
const MAX_PEER_ID_LEN: usize = relay_store::MAX_PEER_ID_LEN;
/// How long admission may wait for the store (mode and token) before the socket is closed 1013.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the upgrade may take after the 101 before the socket is dropped.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Introductions waiting to be written to one peer: a peer that lets this many pile up does not
/// read and is closed (1008). Each is a few hundred bytes at most (bounded document ids).
const INTRODUCTION_QUEUE: usize = 256;

/// The pairing state of this node.
#[derive(Debug)]
pub(crate) struct Pairing {
    tenants: Mutex<HashMap<String, TenantState>>,
    /// Every admitted socket, for the periodic recheck.
    live: Mutex<HashMap<u64, Arc<Live>>>,
    hasher: SecretHasher,
    next_serial: AtomicU64,
    /// Cancelled when the relay shuts down: every socket closes with 1001.
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// One tenant's peers and waiting connections on this node.
#[derive(Debug, Default)]
struct TenantState {
    peers: HashMap<String, PeerEntry>,
    /// Document id → peers that joined it.
    documents: HashMap<String, HashSet<String>>,
    /// `(A, B, doc)` → the waiting connection of A.
    held: HashMap<(String, String, String), Held>,
    /// Connection sockets, held or piped.
    connections: usize,
}

#[derive(Debug)]
struct PeerEntry {
    serial: u64,
    /// In join order, deduplicated (introductions list common ids in this order).
    documents: Vec<String>,
    introductions: mpsc::Sender<Bytes>,
    /// Closes the peer's socket (1008) when its introductions pile up.
    kick: CancellationToken,
}

#[derive(Debug)]
struct Held {
    serial: u64,
    partner: oneshot::Sender<Partner>,
}

/// What a waiting connection is matched with.
#[derive(Debug)]
pub(crate) enum Partner {
    /// A socket on this node.
    Local(Box<Side>),
    /// A socket on another node, behind this node-link stream (answer `Accepted` first).
    Remote(
        tunnel_session::transport::SendHalf,
        tunnel_session::transport::RecvHalf,
    ),
}

/// An admitted socket as the recheck sees it.
#[derive(Debug)]
pub(crate) struct Live {
    tenant_id: String,
    /// The token it was admitted with, by id (token mode only).
    token_id: Option<String>,
    /// The close code the recheck chose, set before `revoked` is cancelled.
    code: AtomicU16,
    revoked: CancellationToken,
}

impl Live {
    /// The code to close with once `revoked` fired.
    pub(crate) fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }

    fn revoke(&self, code: u16) {
        self.code.store(code, Ordering::Release);
        self.revoked.cancel();
    }
}

/// Keeps a socket in the recheck's view until dropped.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    relay: Arc<Relay>,
    serial: u64,
    pub(crate) live: Arc<Live>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.relay
            .pairing
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.serial);
    }
}

/// A socket the tenant's settings admit.
#[derive(Debug)]
struct Admitted {
    tenant: Arc<Tenant>,
    target: Target,
    token_id: Option<String>,
}

/// What a pairing path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Introduction { peer: String },
    Connection { a: String, b: String, doc: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PairPath {
    tenant: String,
    token: Option<String>,
    /// `None`: a segment did not decode or is too long (closed 4400).
    target: Option<Target>,
}

impl Pairing {
    pub(crate) fn new(hasher: SecretHasher) -> Pairing {
        Pairing {
            tenants: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            hasher,
            next_serial: AtomicU64::new(1),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Closes every pairing socket (1001) and waits up to `grace` for them.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `req` is for the pairing endpoints.
pub(crate) fn is_pairing(relay: &Relay, req: &Request<Incoming>) -> bool {
    req.uri().path().starts_with(PREFIX)
        && !crate::route::tenant_host(relay, req.headers(), req.uri(), req.version())
}

/// Answers a pairing request: 101 and a socket task, or 426 for a request that is not a
/// WebSocket handshake. Refusals happen on the socket (a close code), since browsers do not show
/// a failed handshake's status to scripts.
pub(crate) async fn handle(
    relay: Arc<Relay>,
    mut req: Request<Incoming>,
    conn: Arc<Visitor>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let Some(accept) = websocket_accept(&req) else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"a WebSocket handshake (HTTP/1.1, Upgrade: websocket, version 13) is required\n",
        )));
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return r;
    };
    let path = parse_path(req.uri().path());
    let draft = Draft::new(
        request_id.to_string(),
        "GET",
        &audit_path(&path),
        conn.peer_ip.clone(),
    );
    // Access policies answer over HTTP, before the upgrade (401 challenges, 403, 429).
    let tenant = path.as_ref().map(|p| p.tenant.as_str());
    let mut draft = match crate::policy::check_pairing(&relay, tenant, &mut req, &conn, draft).await
    {
        Ok(draft) => draft,
        Err(refused) => return refused,
    };
    let admitted = admit(&relay, &path, &mut draft).await;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let peer_addr = conn.peer;
    let pairing_relay = relay.clone();
    relay.pairing.tasks.spawn(async move {
        let relay = pairing_relay;
        let upgraded = match tokio::time::timeout(UPGRADE_TIMEOUT, on_upgrade).await {
            Ok(Ok(u)) => u,
            _ => {
                debug!(%peer_addr, "pairing upgrade did not complete");
                return;
            }
        };
        let mut side = Side::new(upgraded, &relay.config.pairing, draft).await;
        let admitted = match admitted {
            Ok(a) => a,
            Err(code) => return side.refuse(&relay, code).await,
        };
        side.live = Some(register(&relay, &admitted.tenant.id.0, admitted.token_id));
        match admitted.target {
            Target::Introduction { peer } => {
                socket::introduction(relay, admitted.tenant, peer, side).await
            }
            Target::Connection { a, b, doc } => {
                socket::connection(relay, admitted.tenant, (a, b, doc), side).await
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// Decides whether a socket may use the tenant's pairing: the tenant's mode and token, then the
/// path's own validity. `Err` is the close code.
async fn admit(relay: &Relay, path: &Option<PairPath>, draft: &mut Draft) -> Result<Admitted, u16> {
    let Some(path) = path else {
        return Err(close::BAD_REQUEST);
    };
    let Some(tenant) = relay.catalog.enabled_tenant(&path.tenant) else {
        return Err(close::NOT_ENABLED);
    };
    draft.tenant = tenant.name.clone();
    let access = tokio::time::timeout(
        STORE_TIMEOUT,
        relay
            .store
            .pairing_access(&tenant.id.0, path.token.as_deref()),
    )
    .await;
    let access = match access {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(tenant_id = %tenant.id, error = %e, "pairing settings unreadable");
            return Err(close::UNAVAILABLE);
        }
        Err(_) => {
            tracing::warn!(tenant_id = %tenant.id, "pairing settings: the store did not answer");
            return Err(close::UNAVAILABLE);
        }
    };
    let mut token_id = None;
    let target = match access.mode {
        PairingMode::Off => return Err(close::NOT_ENABLED),
        PairingMode::Open => path.target.clone().ok_or(close::BAD_REQUEST)?,
        PairingMode::Token => {
            let (Some(token), Some((hash, bound))) = (path.token.as_deref(), access.token) else {
                return Err(close::BAD_TOKEN);
            };
            if !relay.pairing.hasher.verify(token, &hash) {
                return Err(close::BAD_TOKEN);
            }
            let target = path.target.clone().ok_or(close::BAD_REQUEST)?;
            let own = match &target {
                Target::Introduction { peer } => peer,
                Target::Connection { a, .. } => a,
            };
            if bound.is_some_and(|b| &b != own) {
                return Err(close::BAD_TOKEN);
            }
            token_id = parse_pairing_token(token).map(str::to_string);
            target
        }
    };
    draft.target = match target {
        Target::Introduction { .. } => "introduction",
        Target::Connection { .. } => "connection",
    }
    .to_string();
    Ok(Admitted {
        tenant,
        target,
        token_id,
    })
}

/// Puts an admitted socket in the recheck's view.
fn register(relay: &Arc<Relay>, tenant_id: &str, token_id: Option<String>) -> LiveGuard {
    let serial = relay.pairing.serial();
    let live = Arc::new(Live {
        tenant_id: tenant_id.to_string(),
        token_id,
        code: AtomicU16::new(0),
        revoked: CancellationToken::new(),
    });
    relay
        .pairing
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(serial, live.clone());
    LiveGuard {
        relay: relay.clone(),
        serial,
        live,
    }
}

/// Checks open sockets against their tenant every `pairing.recheck_interval` until shutdown:
/// a disabled tenant or pairing turned off closes them with 4404; in token mode, a socket
/// whose token was revoked (or that came without one, in open mode) closes with 4401. When
/// the store does not answer, sockets stay (fail static, like the catalog).
pub(crate) async fn recheck(relay: Arc<Relay>) {
    let every = relay.config.pairing.recheck_interval;
    loop {
        // Why select: the period, or shutdown.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = relay.pairing.stop.cancelled() => return,
        }
        if relay.cluster.enabled() {
            let purge = relay.store.purge_pairing(relay.cluster.fresh_ms());
            let _ = tokio::time::timeout(STORE_TIMEOUT, purge).await;
        }
        let live: Vec<Arc<Live>> = relay
            .pairing
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut by_tenant: HashMap<&str, Vec<&Arc<Live>>> = HashMap::new();
        for l in &live {
            by_tenant.entry(l.tenant_id.as_str()).or_default().push(l);
        }
        for (tenant_id, sockets) in by_tenant {
            let enabled = relay
                .catalog
                .enabled_tenant_by_id(&TenantId(tenant_id.to_string()))
                .is_some();
            let mode = if enabled {
                match tokio::time::timeout(STORE_TIMEOUT, relay.store.pairing_mode(tenant_id)).await
                {
                    Ok(Ok(m)) => m,
                    _ => continue,
                }
            } else {
                PairingMode::Off
            };
            let active = match mode {
                PairingMode::Token => {
                    let ids = tokio::time::timeout(
                        STORE_TIMEOUT,
                        relay.store.active_pairing_tokens(tenant_id),
                    )
                    .await;
                    match ids {
                        Ok(Ok(ids)) => ids,
                        _ => continue,
                    }
                }
                _ => Vec::new(),
            };
            for s in sockets {
                let code = match mode {
                    PairingMode::Off => Some(close::NOT_ENABLED),
                    PairingMode::Open => None,
                    PairingMode::Token => match &s.token_id {
                        Some(id) if active.contains(id) => None,
                        _ => Some(close::BAD_TOKEN),
                    },
                };
                if let Some(code) = code {
                    debug!(%tenant_id, code, "pairing socket revoked by the recheck");
                    s.revoke(code);
                }
            }
        }
    }
}

/// `Sec-WebSocket-Accept` for a valid HTTP/1.1 WebSocket handshake, else `None`.
fn websocket_accept(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let ok = req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && h.get("sec-websocket-version").map(|v| v.as_bytes()) == Some(b"13");
    let key = h.get("sec-websocket-key")?;
    ok.then(|| tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// Parses `/pair/{tenant}[/{token}]/introduction/{peer}` or `…/connection/{A}/{B}/{doc}`.
/// `None`: not a pairing path at all (wrong shape); a path of the right shape whose segments do
/// not decode gives `target: None`.
fn parse_path(path: &str) -> Option<PairPath> {
    let rest = path.strip_prefix(PREFIX)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (tenant, rest) = segments.split_first()?;
    let (token, rest) = match rest.first() {
        Some(&"introduction") | Some(&"connection") => (None, rest),
        Some(t) => (Some(*t), &rest[1..]),
        None => return None,
    };
    let target = match rest {
        ["introduction", peer] => Some(peer_id(peer).map(|peer| Target::Introduction { peer })),
        ["connection", a, b, doc] => Some((|| {
            Some(Target::Connection {
                a: peer_id(a)?,
                b: peer_id(b)?,
                doc: decode(doc, wire::MAX_DOCUMENT_ID_LEN)?,
            })
        })()),
        _ => None,
    }?;
    Some(PairPath {
        tenant: tenant.to_ascii_lowercase(),
        token: token.map(str::to_string),
        target,
    })
}

fn peer_id(s: &str) -> Option<String> {
    decode(s, MAX_PEER_ID_LEN)
}

/// Percent-decodes one path segment: UTF-8, 1 to `max` bytes, no control characters.
fn decode(s: &str, max: usize) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)).then_some(s)
}

/// The path kept in the audit log: never the token.
fn audit_path(path: &Option<PairPath>) -> String {
    match path {
        Some(PairPath {
            tenant,
            target: Some(Target::Introduction { peer }),
            ..
        }) => format!("{PREFIX}{tenant}/introduction/{peer}"),
        Some(PairPath {
            tenant,
            target: Some(Target::Connection { a, b, doc }),
            ..
        }) => format!("{PREFIX}{tenant}/connection/{a}/{b}/{doc}"),
        Some(PairPath { tenant, .. }) => format!("{PREFIX}{tenant}/…"),
        None => PREFIX.to_string(),
    }
}

// === impl Pairing: the introduction registry ===

impl Pairing {
    /// Registers a peer's introduction socket. `Err`: the close code.
    fn add_peer(
        &self,
        tenant_id: &str,
        peer: &str,
        max_peers: usize,
    ) -> Result<(u64, mpsc::Receiver<Bytes>, CancellationToken), u16> {
        let mut all = self.state();
        let state = all.entry(tenant_id.to_string()).or_default();
        if state.peers.contains_key(peer) {
            return Err(close::DUPLICATE);
        }
        if state.peers.len() >= max_peers {
            return Err(close::TOO_MANY);
        }
        let (tx, rx) = mpsc::channel(INTRODUCTION_QUEUE);
        let serial = self.serial();
        let kick = CancellationToken::new();
        state.peers.insert(
            peer.to_string(),
            PeerEntry {
                serial,
                documents: Vec::new(),
                introductions: tx,
                kick: kick.clone(),
            },
        );
        Ok((serial, rx, kick))
    }

    /// Removes a peer (when its socket ends) and the document ids it joined.
    fn remove_peer(&self, tenant_id: &str, peer: &str, serial: u64) {
        let mut all = self.state();
        let Some(state) = all.get_mut(tenant_id) else {
            return;
        };
        if state.peers.get(peer).is_some_and(|p| p.serial == serial) {
            if let Some(entry) = state.peers.remove(peer) {
                for d in entry.documents {
                    unlink(&mut state.documents, &d, peer);
                }
            }
        }
        if state.is_empty() {
            all.remove(tenant_id);
        }
    }

    /// Adds document ids to a peer and introduces it to every other peer sharing any of its
    /// ids (both ways, with all the ids they share), as the published server does on each
    /// `Join`. Returns the introductions for the joining peer itself; `Err` is the close code.
    fn join(
        &self,
        tenant_id: &str,
        peer: &str,
        ids: Vec<String>,
        max_documents: usize,
    ) -> Result<Vec<Bytes>, u16> {
        let mut all = self.state();
        let Some(state) = all.get_mut(tenant_id) else {
            return Ok(Vec::new());
        };
        let Some(entry) = state.peers.get_mut(peer) else {
            return Ok(Vec::new());
        };
        for id in ids {
            if !entry.documents.contains(&id) {
                if entry.documents.len() >= max_documents {
                    return Err(close::TOO_MANY_DOCUMENTS);
                }
                entry.documents.push(id.clone());
                state
                    .documents
                    .entry(id)
                    .or_default()
                    .insert(peer.to_string());
            }
        }
        let mine = entry.documents.clone();
        let mut others: Vec<&String> = mine
            .iter()
            .filter_map(|d| state.documents.get(d))
            .flatten()
            .filter(|p| p.as_str() != peer)
            .collect();
        others.sort();
        others.dedup();
        let mut own = Vec::new();
        for other in others {
            let Some(b) = state.peers.get(other.as_str()) else {
                continue;
            };
            let common: Vec<String> = mine
                .iter()
                .filter(|d| b.documents.contains(d))
                .cloned()
                .collect();
            if common.is_empty() {
                continue;
            }
            own.push(Bytes::from(wire::introduction(other, &common)));
            if b.introductions
                .try_send(Bytes::from(wire::introduction(peer, &common)))
                .is_err()
            {
                b.kick.cancel();
            }
        }
        Ok(own)
    }

    /// A local peer's document ids, in join order.
    fn documents_of(&self, tenant_id: &str, peer: &str) -> Vec<String> {
        let all = self.state();
        all.get(tenant_id)
            .and_then(|s| s.peers.get(peer))
            .map(|p| p.documents.clone())
            .unwrap_or_default()
    }

    /// Whether this node has sockets of the tenant.
    fn has_tenant(&self, tenant_id: &str) -> bool {
        self.state().contains_key(tenant_id)
    }

    /// A peer on another node joined `docs`: introduces it to this node's peers sharing any.
    fn introduce_remote(&self, tenant_id: &str, remote: &str, docs: &[String]) {
        let all = self.state();
        let Some(state) = all.get(tenant_id) else {
            return;
        };
        let mut local: Vec<&String> = docs
            .iter()
            .filter_map(|d| state.documents.get(d))
            .flatten()
            .filter(|p| p.as_str() != remote)
            .collect();
        local.sort();
        local.dedup();
        for peer in local {
            let Some(entry) = state.peers.get(peer.as_str()) else {
                continue;
            };
            let common: Vec<String> = docs
                .iter()
                .filter(|d| entry.documents.contains(d))
                .cloned()
                .collect();
            if entry
                .introductions
                .try_send(Bytes::from(wire::introduction(remote, &common)))
                .is_err()
            {
                entry.kick.cancel();
            }
        }
    }

    /// Removes document ids from a peer (it is introduced for them no more).
    fn leave(&self, tenant_id: &str, peer: &str, ids: &[String]) {
        let mut all = self.state();
        let Some(state) = all.get_mut(tenant_id) else {
            return;
        };
        let Some(entry) = state.peers.get_mut(peer) else {
            return;
        };
        entry.documents.retain(|d| !ids.contains(d));
        for d in ids {
            unlink(&mut state.documents, d, peer);
        }
    }
}

fn unlink(documents: &mut HashMap<String, HashSet<String>>, doc: &str, peer: &str) {
    if let Some(set) = documents.get_mut(doc) {
        set.remove(peer);
        if set.is_empty() {
            documents.remove(doc);
        }
    }
}

impl TenantState {
    fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.held.is_empty() && self.connections == 0
    }
}

// === impl Pairing: connections ===

/// What happened when a connection socket arrived.
#[derive(Debug)]
enum Arrival {
    /// The partner was waiting: it now owns this side and pipes both.
    Handed,
    /// This side waits; the partner is sent through the receiver.
    Holding(u64, oneshot::Receiver<Partner>, Side),
    /// Refused with this close code.
    Refused(u16, Side),
}

/// Counts one connection socket of a tenant until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    relay: Arc<Relay>,
    tenant_id: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut all = self.relay.pairing.state();
        if let Some(state) = all.get_mut(&self.tenant_id) {
            state.connections = state.connections.saturating_sub(1);
            if state.is_empty() {
                all.remove(&self.tenant_id);
            }
        }
        self.relay
            .metrics
            .pairing_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pairing {
    /// Matches a connection `(A, B, doc)` with a waiting `(B, A, doc)`, or holds it.
    fn arrive(
        &self,
        relay: &Arc<Relay>,
        tenant_id: &str,
        key: (String, String, String),
        mut side: Side,
    ) -> Arrival {
        let mut all = self.state();
        let state = all.entry(tenant_id.to_string()).or_default();
        if state.connections >= relay.config.pairing.max_connections {
            return Arrival::Refused(close::TOO_MANY, side);
        }
        state.connections += 1;
        relay
            .metrics
            .pairing_connections
            .fetch_add(1, Ordering::Relaxed);
        side.slot = Some(ConnectionSlot {
            relay: relay.clone(),
            tenant_id: tenant_id.to_string(),
        });
        let (a, b, doc) = key;
        let reverse = (b.clone(), a.clone(), doc.clone());
        if let Some(held) = state.held.remove(&reverse) {
            // Sent under the lock: a holder that finds its entry gone knows its partner is in
            // the channel already.
            match held.partner.send(Partner::Local(Box::new(side))) {
                Ok(()) => return Arrival::Handed,
                Err(Partner::Local(back)) => side = *back,
                // Invariant: `send` hands back exactly what it was given, a local partner.
                Err(Partner::Remote(..)) => unreachable!("sent a local partner"),
            }
        }
        let key = (a, b, doc);
        if state.held.contains_key(&key) {
            return Arrival::Refused(close::DUPLICATE, side);
        }
        let (tx, rx) = oneshot::channel();
        let serial = self.serial();
        state.held.insert(
            key,
            Held {
                serial,
                partner: tx,
            },
        );
        Arrival::Holding(serial, rx, side)
    }

    /// Takes the waiting connection `key` for a partner on another node.
    fn take_held(
        &self,
        tenant_id: &str,
        key: &(String, String, String),
    ) -> Option<oneshot::Sender<Partner>> {
        let mut all = self.state();
        all.get_mut(tenant_id)?.held.remove(key).map(|h| h.partner)
    }

    /// Withdraws a waiting connection. `false`: a partner took it already (it is in the
    /// holder's channel).
    fn withdraw(&self, tenant_id: &str, key: &(String, String, String), serial: u64) -> bool {
        let mut all = self.state();
        let Some(state) = all.get_mut(tenant_id) else {
            return false;
        };
        if state.held.get(key).is_some_and(|h| h.serial == serial) {
            state.held.remove(key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_paths_the_client_builds() {
        let p = parse_path("/pair/Acme/introduction/alice").unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(p.token, None);
        assert_eq!(
            p.target,
            Some(Target::Introduction {
                peer: "alice".into()
            })
        );
        let p = parse_path("/pair/acme/rpt_x/connection/alice/bob/doc%201").unwrap();
        assert_eq!(p.token.as_deref(), Some("rpt_x"));
        assert_eq!(
            p.target,
            Some(Target::Connection {
                a: "alice".into(),
                b: "bob".into(),
                doc: "doc 1".into()
            })
        );
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "/pair/",
            "/pair/acme",
            "/pair/acme/introduction",
            "/pair/acme/introduction/a/b",
            "/pair/acme/connection/a/b",
            "/pair/acme/tok/other/a",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
        for undecodable in [
            "/pair/acme/introduction/%zz",
            "/pair/acme/introduction/%00",
            "/pair/acme/introduction/%ff",
            "/pair/acme/connection/a//doc",
        ] {
            let p = parse_path(undecodable).unwrap();
            assert_eq!(p.target, None, "{undecodable}");
        }
        let long = format!(
            "/pair/acme/introduction/{}",
            "p".repeat(MAX_PEER_ID_LEN + 1)
        );
        assert_eq!(parse_path(&long).unwrap().target, None);
    }

    #[test]
    fn audit_paths_never_hold_the_token() {
        let p = parse_path("/pair/acme/rpt_secret/introduction/alice");
        assert_eq!(audit_path(&p), "/pair/acme/introduction/alice");
    }

    #[test]
    fn introduces_peers_sharing_a_document_both_ways() {
        let pairing = Pairing::new(SecretHasher::new(b"pepper"));
        let (_, mut rx_a, _) = pairing.add_peer("t1", "alice", 10).unwrap();
        let (_, _rx_c, _) = pairing.add_peer("t2", "carol", 10).unwrap();
        assert!(pairing
            .join("t1", "alice", vec!["d".into(), "e".into()], 10)
            .unwrap()
            .is_empty());
        // Another tenant's peer with the same id: no introduction.
        assert!(pairing
            .join("t2", "carol", vec!["d".into()], 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            pairing.add_peer("t1", "alice", 10).unwrap_err(),
            close::DUPLICATE
        );
        let (_, _rx_b, _) = pairing.add_peer("t1", "bob", 10).unwrap();
        let own = pairing.join("t1", "bob", vec!["e".into()], 10).unwrap();
        assert_eq!(
            own,
            vec![Bytes::from(wire::introduction("alice", &["e".into()]))]
        );
        assert_eq!(
            rx_a.try_recv().unwrap(),
            Bytes::from(wire::introduction("bob", &["e".into()]))
        );
        assert_eq!(
            pairing.join("t1", "bob", vec!["x".into(), "y".into()], 2),
            Err(close::TOO_MANY_DOCUMENTS)
        );
    }
}
