//! Pairing across the nodes of a cluster (PostgreSQL): the introduction registry in the
//! database with `NOTIFY relay_pairing` for joins, and connections whose partner waits on
//! another node joined over a node-link stream (`NodeMessage::PairConnect`, then pairing
//! frames: `kind: u8 | len: u32 | payload`, kinds 1 text, 2 binary, 3 close with a `u16` code).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use relay_store::HeldElsewhere;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};
use tunnel_protocol::node::NodeMessage;
use tunnel_protocol::ErrorCode;
use tunnel_session::transport::{RecvHalf, SendHalf};

use super::socket::{data_len, ping_every, Side};
use super::{close, wire, Partner};
use crate::Relay;

/// How long a database step of pairing may take before it is skipped (pairing then works as
/// on one node for that socket).
pub(super) const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a link stream and reading the holder's answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pairing frame may take to write to a link stream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pairing frames read ahead from a link stream (each at most `max_frame_bytes`).
const READ_AHEAD: usize = 4;
/// Join announcements from other nodes waiting to be handled (each a few ids); more are dropped
/// with a warning (the peers are introduced at their next join).
const ANNOUNCEMENTS: usize = 1024;

const FRAME_TEXT: u8 = 1;
const FRAME_BINARY: u8 = 2;
const FRAME_CLOSE: u8 = 3;

type Key = (String, String, String);

/// Whether pairing state is shared through the database (a cluster on PostgreSQL).
pub(super) fn shared(relay: &Relay) -> bool {
    relay.cluster.enabled()
}

// === introductions ===

/// Records a new peer in the shared registry. `false`: it is online on another node.
pub(super) async fn claim_peer(relay: &Relay, tenant_id: &str, peer: &str) -> bool {
    let claim =
        relay
            .store
            .claim_pairing_peer(tenant_id, peer, &relay.node_id, relay.cluster.fresh_ms());
    match timeout(STORE_TIMEOUT, claim).await {
        Ok(Ok(claimed)) => claimed,
        Ok(Err(e)) => {
            warn!(%tenant_id, error = %e, "pairing registry unavailable; peer known here only");
            true
        }
        Err(_) => {
            warn!(%tenant_id, "pairing registry did not answer; peer known here only");
            true
        }
    }
}

/// Forgets a peer that went offline here.
pub(super) async fn release_peer(relay: &Relay, tenant_id: &str, peer: &str) {
    let release = relay
        .store
        .release_pairing_peer(tenant_id, peer, &relay.node_id);
    if !matches!(timeout(STORE_TIMEOUT, release).await, Ok(Ok(()))) {
        debug!(%tenant_id, peer, "pairing peer not released (purged with the node later)");
    }
}

/// After a local `Join` or `Leave`: records the document ids, and for a join returns the
/// introductions of peers on other nodes for this peer, and tells the other nodes (which
/// introduce their peers to this one).
pub(super) async fn documents_changed(
    relay: &Relay,
    (tenant_id, peer): (&str, &str),
    ids: &[String],
    join: bool,
) -> Vec<Bytes> {
    let who = (tenant_id, peer, relay.node_id.as_str());
    let set = relay.store.set_pairing_documents(who, ids, join);
    let set = timeout(STORE_TIMEOUT, set).await;
    if !matches!(set, Ok(Ok(()))) {
        warn!(%tenant_id, peer, ?set, "pairing documents not recorded for the cluster");
        return Vec::new();
    }
    if !join {
        return Vec::new();
    }
    let matches = relay
        .store
        .remote_pairing_matches(who, relay.cluster.fresh_ms());
    let matches = match timeout(STORE_TIMEOUT, matches).await {
        Ok(Ok(m)) => m,
        _ => Vec::new(),
    };
    debug!(%tenant_id, peer, matches = matches.len(), "pairing: matches on other nodes");
    let mine = relay.pairing.documents_of(tenant_id, peer);
    let mut by_peer: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (other, doc) in matches {
        by_peer.entry(other).or_default().push(doc);
    }
    let own = by_peer
        .into_iter()
        .map(|(other, docs)| {
            let common: Vec<String> = mine.iter().filter(|d| docs.contains(d)).cloned().collect();
            Bytes::from(wire::introduction(&other, &common))
        })
        .collect();
    let payload = format!("{tenant_id}\t{peer}\t{}", relay.node_id);
    let _ = timeout(STORE_TIMEOUT, relay.store.announce_pairing(&payload)).await;
    own
}

/// Handles other nodes' join announcements until shutdown: each introduces this node's peers
/// sharing document ids with the peer that joined there.
pub(crate) async fn listen(relay: Arc<Relay>) {
    if !shared(&relay) {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<String>(ANNOUNCEMENTS);
    let store = relay.store.clone();
    let listener = tokio::spawn(async move {
        store
            .listen_for_pairing(move |payload| {
                if let Some(p) = payload {
                    if tx.try_send(p.to_string()).is_err() {
                        warn!("pairing announcements arrive faster than handled; one dropped");
                    }
                }
            })
            .await
    });
    loop {
        // Why select: the next announcement, or shutdown.
        let payload = tokio::select! {
            p = rx.recv() => p,
            _ = relay.pairing.stop.cancelled() => None,
        };
        let Some(payload) = payload else { break };
        let mut parts = payload.split('\t');
        let (Some(tenant_id), Some(peer), Some(node)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        debug!(%tenant_id, peer, node, "pairing: join announced");
        if node == relay.node_id || !relay.pairing.has_tenant(tenant_id) {
            continue;
        }
        let docs = relay.store.pairing_documents(tenant_id, peer);
        if let Ok(Ok(docs)) = timeout(STORE_TIMEOUT, docs).await {
            relay.pairing.introduce_remote(tenant_id, peer, &docs);
        }
    }
    listener.abort();
}

// === connections ===

/// Records connection `key` as waiting here, unless its mirror waits on another live node:
/// then that node. A database that does not answer leaves it waiting here only.
pub(super) async fn hold_or_find(
    relay: &Relay,
    tenant_id: &str,
    key: &Key,
) -> Option<HeldElsewhere> {
    let k = (tenant_id, key.0.as_str(), key.1.as_str(), key.2.as_str());
    let found = relay
        .store
        .hold_or_find_mirror(k, &relay.node_id, relay.cluster.fresh_ms());
    match timeout(STORE_TIMEOUT, found).await {
        Ok(Ok(found)) => found,
        _ => {
            debug!(%tenant_id, "waiting connection not recorded for the cluster");
            None
        }
    }
}

/// Forgets connection `key` as waiting here.
pub(super) async fn unhold(relay: &Relay, tenant_id: &str, key: &Key) {
    let k = (tenant_id, key.0.as_str(), key.1.as_str(), key.2.as_str());
    let release = relay.store.release_pairing_connection(k, &relay.node_id);
    let _ = timeout(STORE_TIMEOUT, release).await;
}

/// Joins `side` (connection `key`, just arrived here) with its mirror waiting on `held`'s
/// node. `Err` gives the side back when that node no longer holds it.
pub(super) async fn connect(
    relay: &Relay,
    tenant_id: &str,
    key: &Key,
    held: &HeldElsewhere,
    side: Side,
) -> Result<(), Side> {
    let opened = timeout(CONNECT_TIMEOUT, async {
        let link = relay
            .cluster
            .link_to((&held.node_id, &held.node_name, &held.advertise))
            .await?;
        let (send, recv) = link.open_bi().await?;
        let (mut send, mut recv) = (SendHalf::from(send), RecvHalf::from(recv));
        let ask = NodeMessage::PairConnect {
            tenant_id: tenant_id.to_string(),
            a: key.1.clone(),
            b: key.0.clone(),
            document_id: key.2.clone(),
        };
        let mut buf = BytesMut::new();
        ask.encode(&mut buf);
        send.write_all(&buf).await?;
        match crate::cluster::read_message(&mut recv).await? {
            NodeMessage::Accepted { .. } => anyhow::Ok(Some((send, recv))),
            _ => anyhow::Ok(None),
        }
    })
    .await;
    match opened {
        Ok(Ok(Some((send, recv)))) => {
            debug!(%tenant_id, node = %held.node_name, "pairing connection joined across nodes");
            pipe(relay, side, Vec::new(), (send, recv), false).await;
            Ok(())
        }
        Ok(Ok(None)) => Err(side),
        Ok(Err(e)) => {
            debug!(%tenant_id, node = %held.node_name, error = %e, "pairing link failed");
            Err(side)
        }
        Err(_) => Err(side),
    }
}

/// A `PairConnect` stream from another node: hands it to the waiting connection it names, or
/// refuses it when nothing waits here.
pub(crate) fn serve_link_stream(
    relay: &Arc<Relay>,
    (mut send, mut recv): (SendHalf, RecvHalf),
    tenant_id: &str,
    key: Key,
) {
    let Some(held) = relay.pairing.take_held(tenant_id, &key) else {
        relay.pairing.tasks.spawn(async move {
            let refused = NodeMessage::Refused {
                code: ErrorCode::GOING_AWAY,
                message: "no such waiting connection".into(),
            };
            let mut buf = BytesMut::new();
            refused.encode(&mut buf);
            let _ = timeout(WRITE_TIMEOUT, send.write_all(&buf)).await;
            send.finish();
            recv.stop(ErrorCode::NO_ERROR);
        });
        return;
    };
    if let Err(Partner::Remote(mut send, mut recv)) = held.send(Partner::Remote(send, recv)) {
        send.reset(ErrorCode::GOING_AWAY);
        recv.stop(ErrorCode::GOING_AWAY);
    }
}

enum Event {
    Ws(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Link(Option<Frame>),
    Ping,
    Idle,
    Revoked,
    Stop,
}

enum Frame {
    Data(Message),
    Close,
}

/// Pipes a local WebSocket with a link stream to the partner's node: `held` (what the local
/// side sent while it waited) goes first; `accept` answers the `PairConnect` first (the
/// holding node's side).
pub(super) async fn pipe(
    relay: &Relay,
    mut side: Side,
    held: Vec<Message>,
    (mut send, recv): (SendHalf, RecvHalf),
    accept: bool,
) {
    let cfg = &relay.config.pairing;
    if accept {
        relay
            .metrics
            .pairing_pairings
            .fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        NodeMessage::Accepted {
            session_id: String::new(),
        }
        .encode(&mut buf);
        if !matches!(
            timeout(WRITE_TIMEOUT, send.write_all(&buf)).await,
            Ok(Ok(()))
        ) {
            return side.finish(relay, Some(close::NORMAL)).await;
        }
    }
    for m in held {
        if !write_frame(relay, &mut send, &m).await {
            return side.finish(relay, Some(close::NORMAL)).await;
        }
    }
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let reader = tokio::spawn(read_frames(recv, tx, cfg.max_frame_bytes));
    let mut idle = Instant::now() + cfg.idle_timeout;
    let mut ping = ping_every(cfg);
    let revoked = side.revoked();
    let code = loop {
        // Why select: a message from the local socket (to the link), a frame from the link (to
        // the socket), the keepalive ping, the idle deadline, revocation, shutdown. All cancel
        // safe (the link is read by its own task).
        let event = tokio::select! {
            m = side.ws_next() => Event::Ws(m),
            f = rx.recv() => Event::Link(f),
            _ = ping.tick() => Event::Ping,
            _ = sleep_until(idle) => Event::Idle,
            _ = revoked.cancelled() => Event::Revoked,
            _ = relay.pairing.stop.cancelled() => Event::Stop,
        };
        match event {
            Event::Ws(Some(Ok(m))) => {
                idle = Instant::now() + cfg.idle_timeout;
                if matches!(m, Message::Close(_)) {
                    break None;
                }
                if let Some(n) = data_len(&m) {
                    side.count_in(n);
                    if !write_frame(relay, &mut send, &m).await {
                        break Some(close::NORMAL);
                    }
                }
            }
            Event::Ws(None) => break None,
            Event::Ws(Some(Err(e))) => break super::socket::read_error(&e),
            Event::Link(Some(Frame::Data(m))) => {
                if !side.send_counted(m).await {
                    break None;
                }
            }
            Event::Link(Some(Frame::Close) | None) => break Some(close::NORMAL),
            Event::Ping => {
                let _ = side.send_ping().await;
            }
            Event::Idle => break Some(close::IDLE),
            Event::Revoked => break Some(side.revoked_code()),
            Event::Stop => break Some(close::GOING_AWAY),
        }
    };
    // Tell the partner's node (a close frame, then FIN), unless the link ended first.
    let mut buf = BytesMut::new();
    buf.put_u8(FRAME_CLOSE);
    buf.put_u32(2);
    buf.put_u16(close::NORMAL);
    let _ = timeout(Duration::from_secs(2), send.write_all(&buf)).await;
    send.finish();
    reader.abort();
    side.finish(relay, code).await;
}

async fn write_frame(relay: &Relay, send: &mut SendHalf, m: &Message) -> bool {
    let (kind, payload): (u8, &[u8]) = match m {
        Message::Text(t) => (FRAME_TEXT, t.as_bytes()),
        Message::Binary(b) => (FRAME_BINARY, b),
        _ => return true,
    };
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(kind);
    buf.put_u32(payload.len() as u32);
    buf.extend_from_slice(payload);
    relay
        .metrics
        .pairing_bytes
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    matches!(
        timeout(WRITE_TIMEOUT, send.write_all(&buf)).await,
        Ok(Ok(()))
    )
}

/// Reads pairing frames until FIN, an error, a frame over `max` or a close.
async fn read_frames(mut recv: RecvHalf, tx: mpsc::Sender<Frame>, max: usize) {
    loop {
        let mut header = [0u8; 5];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > max {
            return;
        }
        let mut payload = vec![0u8; len];
        if recv.read_exact(&mut payload).await.is_err() {
            return;
        }
        let frame = match header[0] {
            FRAME_TEXT => match String::from_utf8(payload) {
                Ok(t) => Frame::Data(Message::Text(t.into())),
                Err(_) => return,
            },
            FRAME_BINARY => Frame::Data(Message::Binary(payload.into())),
            // The partner's code stays on its node; this side closes normally.
            FRAME_CLOSE => {
                let _ = tx.send(Frame::Close).await;
                return;
            }
            _ => return,
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}
