//! The socket tasks: an introduction socket's loop, a connection held until its partner
//! arrives, the pipe between two paired connections, and the close handshake.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use relay_store::Tenant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::wire::ClientMessage;
use super::{close, remote, Arrival, ConnectionSlot, LiveGuard, Partner};
use crate::audit::{Draft, Outcome};
use crate::config::Pairing as PairingConfig;
use crate::Relay;

/// Bytes the WebSocket reader allocates up front per socket: small, since most pairing sockets
/// idle (1,000 peers cost 4 MiB here); larger messages grow it up to `max_frame_bytes`.
const READ_BUFFER: usize = 4096;
/// How long one message may take to write before the socket is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each step of the close handshake may take (send ours, await theirs).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// One pairing socket with its audit record.
#[derive(Debug)]
pub(crate) struct Side {
    ws: Ws,
    draft: Draft,
    /// Message bytes written to this socket (audit).
    bytes_out: u64,
    /// Counts a connection socket against the tenant's limit.
    pub(super) slot: Option<ConnectionSlot>,
    /// Keeps an admitted socket in the recheck's view.
    pub(super) live: Option<LiveGuard>,
}

impl Side {
    pub(super) async fn new(upgraded: Upgraded, cfg: &PairingConfig, draft: Draft) -> Side {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(cfg.max_frame_bytes + 64 * 1024)
            .max_message_size(Some(cfg.max_frame_bytes))
            .max_frame_size(Some(cfg.max_frame_bytes));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        Side {
            ws,
            draft,
            bytes_out: 0,
            slot: None,
            live: None,
        }
    }

    /// Closes at once with `code` (a refusal before any exchange).
    pub(super) async fn refuse(self, relay: &Relay, code: u16) {
        debug!(tenant = %self.draft.tenant, code, "pairing socket refused");
        self.finish(relay, Some(code)).await;
    }

    /// Ends the socket: the close handshake with `code` (or, when the peer closed first, just
    /// the reply), then the audit record.
    pub(super) async fn finish(mut self, relay: &Relay, code: Option<u16>) {
        let status = code.unwrap_or(close::NORMAL);
        if (4400..4500).contains(&status)
            || status == close::NOT_READING
            || status == close::TOO_BIG
        {
            relay
                .metrics
                .pairing_refusals
                .fetch_add(1, Ordering::Relaxed);
        }
        match code {
            Some(code) => self.close_with(code).await,
            // The peer closed (or the socket failed): flush the automatic close reply.
            None => {
                let _ = timeout(CLOSE_TIMEOUT, self.ws.close(None)).await;
            }
        }
        let outcome = match status {
            close::IDLE | close::HOLD_TIMEOUT => Outcome::Timeout,
            close::NORMAL | close::GOING_AWAY => Outcome::Ok,
            _ => Outcome::Refused,
        };
        relay
            .audit
            .record(self.draft, status, outcome, self.bytes_out);
    }

    /// Sends our close and waits (bounded) for the peer's, draining what it still sends:
    /// dropping a socket with unread bytes resets it, which can destroy the close frame before
    /// the peer reads it.
    async fn close_with(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason(code).into(),
        };
        let _ = timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame))).await;
        let clean = timeout(CLOSE_TIMEOUT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(_)) => continue,
                    None => return true,
                    Some(Err(_)) => return false,
                }
            }
        })
        .await;
        if matches!(clean, Ok(false)) {
            // The stream is out of step (e.g. inside an oversized message): drain raw bytes.
            let io = self.ws.get_mut();
            let _ = timeout(CLOSE_TIMEOUT, async {
                let _ = io.shutdown().await;
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Cancelled when the recheck revokes this socket (never, for one not admitted).
    pub(super) fn revoked(&self) -> CancellationToken {
        self.live
            .as_ref()
            .map_or_else(CancellationToken::new, |l| l.live.revoked.clone())
    }

    /// The close code the recheck chose.
    pub(super) fn revoked_code(&self) -> u16 {
        self.live
            .as_ref()
            .map_or(close::NOT_ENABLED, |l| l.live.code())
    }

    /// Writes one message; `false` when the socket failed or stalled.
    async fn send(&mut self, m: Message) -> bool {
        matches!(timeout(SEND_TIMEOUT, self.ws.send(m)).await, Ok(Ok(())))
    }

    /// The next message from the socket (cancel safe).
    pub(super) async fn ws_next(&mut self) -> Option<Result<Message, WsError>> {
        self.ws.next().await
    }

    /// Counts `n` message bytes received from this socket (audit).
    pub(super) fn count_in(&self, n: usize) {
        self.draft.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Writes a data message from the partner, counted for the audit record.
    pub(super) async fn send_counted(&mut self, m: Message) -> bool {
        self.bytes_out += data_len(&m).unwrap_or(0) as u64;
        self.send(m).await
    }

    /// Writes a keepalive ping.
    pub(super) async fn send_ping(&mut self) -> bool {
        self.send(Message::Ping(Bytes::new())).await
    }
}

/// The close code for a read error: an oversized message gets 1009; anything else means the
/// socket is gone (nothing to send).
pub(super) fn read_error(e: &WsError) -> Option<u16> {
    matches!(e, WsError::Capacity(_)).then_some(close::TOO_BIG)
}

fn reason(code: u16) -> &'static str {
    match code {
        close::NORMAL => "peer closed",
        close::GOING_AWAY => "relay shutting down",
        close::NOT_READING => "introductions not read",
        close::TOO_BIG => "message too big",
        close::UNAVAILABLE => "try again later",
        close::BAD_REQUEST => "bad request",
        close::BAD_TOKEN => "bad pairing token",
        close::NOT_ENABLED => "pairing not enabled",
        close::IDLE => "idle timeout",
        close::DUPLICATE => "already connected",
        close::HOLD_TIMEOUT => "peer did not connect",
        close::HELD_BYTES => "too much data before the peer connected",
        close::TOO_MANY => "too many sockets",
        close::TOO_MANY_DOCUMENTS => "too many document ids",
        _ => "",
    }
}

pub(super) fn ping_every(cfg: &PairingConfig) -> tokio::time::Interval {
    let every = (cfg.idle_timeout / 3).max(Duration::from_millis(100));
    let mut i = tokio::time::interval_at(Instant::now() + every, every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// The bytes of a data message, `None` for control frames.
pub(super) fn data_len(m: &Message) -> Option<usize> {
    match m {
        Message::Binary(b) => Some(b.len()),
        Message::Text(t) => Some(t.len()),
        _ => None,
    }
}

// === introduction ===

enum IntroEvent {
    Message(Option<Result<Message, WsError>>),
    Introduction(Option<Bytes>),
    Ping,
    Idle,
    Kick,
    Revoked,
    Stop,
}

/// Serves one peer's introduction socket until it ends.
pub(super) async fn introduction(relay: Arc<Relay>, tenant: Arc<Tenant>, peer: String, side: Side) {
    let tenant_id = tenant.id.0.clone();
    let (serial, mut rx, kick) =
        match relay
            .pairing
            .add_peer(&tenant_id, &peer, relay.config.pairing.max_peers)
        {
            Ok(x) => x,
            Err(code) => return side.refuse(&relay, code).await,
        };
    if remote::shared(&relay) && !remote::claim_peer(&relay, &tenant_id, &peer).await {
        relay.pairing.remove_peer(&tenant_id, &peer, serial);
        return side.refuse(&relay, close::DUPLICATE).await;
    }
    relay.metrics.pairing_peers.fetch_add(1, Ordering::Relaxed);
    debug!(%tenant_id, peer, "pairing peer online");
    let mut side = side;
    let code = introduction_loop(&relay, &tenant_id, &peer, &mut side, (&mut rx, &kick)).await;
    relay.pairing.remove_peer(&tenant_id, &peer, serial);
    if remote::shared(&relay) {
        remote::release_peer(&relay, &tenant_id, &peer).await;
    }
    relay.metrics.pairing_peers.fetch_sub(1, Ordering::Relaxed);
    debug!(%tenant_id, peer, ?code, "pairing peer offline");
    side.finish(&relay, code).await;
}

/// `Some(code)`: close with it; `None`: the peer went away.
async fn introduction_loop(
    relay: &Relay,
    tenant_id: &str,
    peer: &str,
    side: &mut Side,
    (rx, kick): (&mut mpsc::Receiver<Bytes>, &CancellationToken),
) -> Option<u16> {
    let cfg = &relay.config.pairing;
    let mut idle = Instant::now() + cfg.idle_timeout;
    let mut ping = ping_every(cfg);
    let revoked = side.revoked();
    loop {
        // Why select: messages from the peer, introductions for it from other peers' joins,
        // the keepalive ping, its idle deadline, a kick when it does not read, the recheck's
        // revocation, and shutdown.
        // Each branch is cancel safe (stream next, channel recv, timers, token).
        let event = tokio::select! {
            m = side.ws.next() => IntroEvent::Message(m),
            i = rx.recv() => IntroEvent::Introduction(i),
            _ = ping.tick() => IntroEvent::Ping,
            _ = sleep_until(idle) => IntroEvent::Idle,
            _ = kick.cancelled() => IntroEvent::Kick,
            _ = revoked.cancelled() => IntroEvent::Revoked,
            _ = relay.pairing.stop.cancelled() => IntroEvent::Stop,
        };
        match event {
            IntroEvent::Message(None) => return None,
            IntroEvent::Message(Some(Err(e))) => return read_error(&e),
            IntroEvent::Message(Some(Ok(m))) => {
                idle = Instant::now() + cfg.idle_timeout;
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Text(t) => Bytes::from(t),
                    Message::Close(_) => return None,
                    _ => continue,
                };
                side.draft
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                match ClientMessage::decode(&data) {
                    Err(e) => {
                        debug!(%tenant_id, peer, error = %e, "pairing message refused");
                        return Some(close::BAD_REQUEST);
                    }
                    Ok(ClientMessage::Join(ids)) => {
                        let shared = remote::shared(relay).then(|| ids.clone());
                        let joined = relay
                            .pairing
                            .join(tenant_id, peer, ids, cfg.max_document_ids);
                        let mut own = match joined {
                            Ok(own) => own,
                            Err(code) => return Some(code),
                        };
                        if let Some(ids) = shared {
                            let who = (tenant_id, peer);
                            own.extend(remote::documents_changed(relay, who, &ids, true).await);
                        }
                        for intro in own {
                            side.bytes_out += intro.len() as u64;
                            if !side.send(Message::Binary(intro)).await {
                                return None;
                            }
                        }
                    }
                    Ok(ClientMessage::Leave(ids)) => {
                        relay.pairing.leave(tenant_id, peer, &ids);
                        if remote::shared(relay) {
                            remote::documents_changed(relay, (tenant_id, peer), &ids, false).await;
                        }
                    }
                    Ok(ClientMessage::Ignored) => {}
                }
            }
            IntroEvent::Introduction(Some(intro)) => {
                side.bytes_out += intro.len() as u64;
                if !side.send(Message::Binary(intro)).await {
                    return None;
                }
            }
            // The sender lives in the registry entry, which only this task removes.
            IntroEvent::Introduction(None) => return Some(close::NORMAL),
            IntroEvent::Ping => {
                if !side.send(Message::Ping(Bytes::new())).await {
                    return None;
                }
            }
            IntroEvent::Idle => return Some(close::IDLE),
            IntroEvent::Kick => return Some(close::NOT_READING),
            IntroEvent::Revoked => return Some(side.revoked_code()),
            IntroEvent::Stop => return Some(close::GOING_AWAY),
        }
    }
}

// === connection ===

enum HoldEvent {
    Partner(Option<Partner>),
    Message(Option<Result<Message, WsError>>),
    Ping,
    Deadline,
    Revoked,
    Stop,
}

/// Serves one connection socket: hands it to its waiting partner, or holds it until the
/// partner arrives and then pipes both.
pub(super) async fn connection(
    relay: Arc<Relay>,
    tenant: Arc<Tenant>,
    key: (String, String, String),
    side: Side,
) {
    let tenant_id = tenant.id.0.clone();
    let mut arrival = relay.pairing.arrive(&relay, &tenant_id, key.clone(), side);
    if remote::shared(&relay) {
        if let Arrival::Holding(serial, rx, side) = arrival {
            // Waiting here unless the mirror waits on another node: then join it there.
            arrival = match remote::hold_or_find(&relay, &tenant_id, &key).await {
                Some(elsewhere) if relay.pairing.withdraw(&tenant_id, &key, serial) => {
                    match remote::connect(&relay, &tenant_id, &key, &elsewhere, side).await {
                        Ok(()) => return,
                        // That node no longer holds it: wait here after all.
                        Err(side) => {
                            let again = relay.pairing.arrive(&relay, &tenant_id, key.clone(), side);
                            if matches!(again, Arrival::Holding(..)) {
                                remote::hold_or_find(&relay, &tenant_id, &key).await;
                            }
                            again
                        }
                    }
                }
                _ => Arrival::Holding(serial, rx, side),
            };
        }
    }
    match arrival {
        Arrival::Handed => debug!(%tenant_id, a = %key.0, b = %key.1, "pairing connection matched"),
        Arrival::Refused(code, side) => side.refuse(&relay, code).await,
        Arrival::Holding(serial, rx, side) => {
            hold(&relay, &tenant_id, (key.clone(), serial), rx, side).await;
            if remote::shared(&relay) {
                remote::unhold(&relay, &tenant_id, &key).await;
            }
        }
    }
}

async fn hold(
    relay: &Relay,
    tenant_id: &str,
    (key, serial): ((String, String, String), u64),
    mut rx: oneshot::Receiver<Partner>,
    mut side: Side,
) {
    let cfg = &relay.config.pairing;
    let hold_until = Instant::now() + cfg.hold_timeout;
    let mut idle = Instant::now() + cfg.idle_timeout;
    let mut ping = ping_every(cfg);
    let mut held: Vec<Message> = Vec::new();
    let mut held_bytes = 0usize;
    let revoked = side.revoked();
    let code = loop {
        // Why select: the partner's arrival, this side's messages (held for the partner), the
        // keepalive ping, the hold and idle deadlines, and shutdown. All cancel safe.
        let event = tokio::select! {
            p = &mut rx => HoldEvent::Partner(p.ok()),
            m = side.ws.next() => HoldEvent::Message(m),
            _ = ping.tick() => HoldEvent::Ping,
            _ = sleep_until(hold_until.min(idle)) => HoldEvent::Deadline,
            _ = revoked.cancelled() => HoldEvent::Revoked,
            _ = relay.pairing.stop.cancelled() => HoldEvent::Stop,
        };
        match event {
            HoldEvent::Partner(Some(Partner::Local(partner))) => {
                return pipe(relay, side, held, *partner).await;
            }
            HoldEvent::Partner(Some(Partner::Remote(send, recv))) => {
                return remote::pipe(relay, side, held, (send, recv), true).await;
            }
            // The sender is dropped unsent only with the registry entry, which we still hold.
            HoldEvent::Partner(None) => break Some(close::HOLD_TIMEOUT),
            HoldEvent::Message(None) => break None,
            HoldEvent::Message(Some(Err(e))) => break read_error(&e),
            HoldEvent::Message(Some(Ok(m))) => {
                idle = Instant::now() + cfg.idle_timeout;
                if matches!(m, Message::Close(_)) {
                    break None;
                }
                if let Some(n) = data_len(&m) {
                    side.draft.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    held_bytes += n;
                    if held_bytes > cfg.max_held_bytes {
                        break Some(close::HELD_BYTES);
                    }
                    held.push(m);
                }
            }
            HoldEvent::Ping => {
                if !side.send(Message::Ping(Bytes::new())).await {
                    break None;
                }
            }
            HoldEvent::Deadline if Instant::now() >= hold_until => {
                break Some(close::HOLD_TIMEOUT);
            }
            HoldEvent::Deadline => break Some(close::IDLE),
            HoldEvent::Revoked => break Some(side.revoked_code()),
            HoldEvent::Stop => break Some(close::GOING_AWAY),
        }
    };
    if !relay.pairing.withdraw(tenant_id, &key, serial) {
        // A partner took the entry just now: it is in the channel; it ends with us.
        match rx.try_recv() {
            Ok(Partner::Local(partner)) => partner.finish(relay, Some(close::NORMAL)).await,
            Ok(Partner::Remote(mut send, mut recv)) => {
                send.reset(tunnel_protocol::ErrorCode::GOING_AWAY);
                recv.stop(tunnel_protocol::ErrorCode::GOING_AWAY);
            }
            Err(_) => {}
        }
    }
    debug!(%tenant_id, a = %key.0, b = %key.1, ?code, "pairing connection ended unmatched");
    side.finish(relay, code).await;
}

enum PipeEvent {
    Message(usize, Option<Result<Message, WsError>>),
    Ping,
    Idle,
    Revoked(usize),
    Stop,
}

/// Pipes two paired connections: `first` (the one that waited, with its held messages) and
/// `second`. Either side ending closes the other.
async fn pipe(relay: &Relay, first: Side, held: Vec<Message>, second: Side) {
    let cfg = &relay.config.pairing;
    relay
        .metrics
        .pairing_pairings
        .fetch_add(1, Ordering::Relaxed);
    let mut sides = [first, second];
    let mut codes: [Option<u16>; 2] = [Some(close::NORMAL), Some(close::NORMAL)];
    for m in held {
        let n = data_len(&m).unwrap_or(0) as u64;
        sides[1].bytes_out += n;
        relay.metrics.pairing_bytes.fetch_add(n, Ordering::Relaxed);
        if !sides[1].send(m).await {
            let [a, b] = sides;
            tokio::join!(a.finish(relay, Some(close::NORMAL)), b.finish(relay, None));
            return;
        }
    }
    let mut idle = [Instant::now() + cfg.idle_timeout; 2];
    let mut ping = ping_every(cfg);
    let revoked = [sides[0].revoked(), sides[1].revoked()];
    loop {
        let event = {
            let [x, y] = &mut sides;
            // Why select: a message from either side (forwarded to the other), the keepalive
            // pings, the idle deadlines, either side's revocation, and shutdown. All cancel safe.
            tokio::select! {
                m = x.ws.next() => PipeEvent::Message(0, m),
                m = y.ws.next() => PipeEvent::Message(1, m),
                _ = ping.tick() => PipeEvent::Ping,
                _ = sleep_until(idle[0].min(idle[1])) => PipeEvent::Idle,
                _ = revoked[0].cancelled() => PipeEvent::Revoked(0),
                _ = revoked[1].cancelled() => PipeEvent::Revoked(1),
                _ = relay.pairing.stop.cancelled() => PipeEvent::Stop,
            }
        };
        match event {
            PipeEvent::Message(i, Some(Ok(m))) => {
                idle[i] = Instant::now() + cfg.idle_timeout;
                if matches!(m, Message::Close(_)) {
                    codes[i] = None;
                    break;
                }
                let Some(n) = data_len(&m) else { continue };
                let n = n as u64;
                sides[i].draft.bytes_in.fetch_add(n, Ordering::Relaxed);
                sides[1 - i].bytes_out += n;
                relay.metrics.pairing_bytes.fetch_add(n, Ordering::Relaxed);
                if !sides[1 - i].send(m).await {
                    codes[1 - i] = None;
                    break;
                }
            }
            PipeEvent::Message(i, None) => {
                codes[i] = None;
                break;
            }
            PipeEvent::Message(i, Some(Err(e))) => {
                codes[i] = read_error(&e);
                break;
            }
            PipeEvent::Ping => {
                for s in &mut sides {
                    // A failed ping surfaces as a failed read next.
                    let _ = s.send(Message::Ping(Bytes::new())).await;
                }
            }
            PipeEvent::Idle => {
                let now = Instant::now();
                for (i, deadline) in idle.iter().enumerate() {
                    if *deadline <= now {
                        codes[i] = Some(close::IDLE);
                    }
                }
                break;
            }
            PipeEvent::Revoked(i) => {
                codes[i] = Some(sides[i].revoked_code());
                break;
            }
            PipeEvent::Stop => {
                codes = [Some(close::GOING_AWAY); 2];
                break;
            }
        }
    }
    let [a, b] = sides;
    tokio::join!(a.finish(relay, codes[0]), b.finish(relay, codes[1]));
}
