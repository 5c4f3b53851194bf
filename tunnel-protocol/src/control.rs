//! Frames on the control stream: authentication, token renewal, liveness and drain.

use bytes::BytesMut;

use crate::codec::{truncate_str, Reader};
use crate::frame::{split_frame, MAX_CONTROL_FRAME_LEN};
use crate::stream::encode_payload;
use crate::{DecodeError, ErrorCode, VERSION};

const HELLO: u8 = 0x10;
const WELCOME: u8 = 0x11;
const REFUSED: u8 = 0x12;
const RENEW: u8 = 0x13;
const RENEWED: u8 = 0x14;
const PING: u8 = 0x15;
const PONG: u8 = 0x16;
const GO_AWAY: u8 = 0x17;
const NODES: u8 = 0x18;
/// Control frame types up to here that this build does not know are skipped, not fatal: a
/// newer peer may send them (`0x19..=0x1f`, [`ControlFrame::Unknown`]).
const LAST_RESERVED: u8 = 0x1f;

/// Longest free-text message carried in a frame; longer ones are truncated when encoded.
const MAX_MESSAGE_LEN: usize = 1024;

/// One frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlFrame {
    /// Relay → connector: stop taking new streams on this session and reconnect; the relay
    /// finishes the streams in flight, then closes.
    GoAway(GoAway),
    /// Connector → relay, first frame: who it is and how it authenticates.
    Hello(Hello),
    /// Liveness probe with an opaque nonce, either direction.
    Ping(u64),
    /// The answer to a `Ping`, with its nonce.
    Pong(u64),
    /// Relay → connector: authentication failed; the relay closes the session after it.
    Refused(Refused),
    /// Connector → relay: re-authenticate the live session before its token expires.
    Renew(Credential),
    /// Relay → connector: a fresh token after `Renew`.
    Renewed(Renewed),
    /// Relay → connector: authenticated; the session may carry streams.
    Welcome(Welcome),
    /// Relay → connector: the cluster's other nodes changed (a node joined, left or drained);
    /// the whole list, as in `Welcome`. Sent only once a list was non-empty, so that a single
    /// node never sends it.
    Nodes(Vec<NodeAddress>),
    /// A control frame type reserved for later versions (`0x19..=0x1f`): its payload was
    /// skipped; the receiver ignores it.
    Unknown(u8),
}

/// The connector's introduction.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// The tenant the connector serves.
    pub tenant: String,
    /// The secret or a token obtained earlier.
    pub credential: Credential,
    /// The connector build, e.g. `connector/0.1.0`.
    pub connector_version: String,
    /// A random id per connector process: sessions with the same id belong to one connector.
    pub connector_id: String,
    /// The target names the connector serves (informational: routing asks the connector).
    pub targets: Vec<String>,
}

/// How a connector proves it belongs to a tenant.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// The long-lived tenant credential secret (exchanged for a token).
    Secret(String),
    /// A short-lived token the relay issued before.
    Token(String),
}

/// A fresh token after renewal.
#[derive(Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The new token.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in_secs: u32,
}

/// A successful authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session's id (logs, management API).
    pub session_id: String,
    /// The relay node's name.
    pub relay_node: String,
    /// A fresh token when the connector authenticated with its secret; empty otherwise.
    pub token: String,
    /// Seconds until the session's authentication expires and must be renewed.
    pub expires_in_secs: u32,
    /// The other relay nodes of the cluster a connector may also connect to (at most
    /// [`MAX_WELCOME_NODES`]), so that its sessions sit on more than one node. Empty on a single
    /// node, or when nodes publish no address of their own (one load-balanced address). Optional
    /// on the wire: a `Welcome` without it decodes with none.
    pub nodes: Vec<NodeAddress>,
}

/// Most nodes one `Welcome` lists.
pub const MAX_WELCOME_NODES: usize = 64;

/// A relay node as connectors may reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The node's name (as in `Welcome::relay_node`).
    pub name: String,
    /// `host:port` to dial; the connector keeps the configured server name for TLS.
    pub address: String,
}

/// A failed authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What failed.
    pub code: ErrorCode,
    /// A human-readable reason for the connector's log.
    pub message: String,
    /// Do not retry before this many seconds (0: the connector's own backoff applies).
    pub retry_after_secs: u32,
}

/// A drain request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Why ([`ErrorCode::GOING_AWAY`], [`ErrorCode::CREDENTIAL_REVOKED`], ...).
    pub code: ErrorCode,
    /// A human-readable reason.
    pub message: String,
}

impl ControlFrame {
    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ControlFrame::Hello(h) => encode_payload(dst, HELLO, |w| {
                w.u8(VERSION);
                w.str(&h.tenant);
                match &h.credential {
                    Credential::Secret(s) => {
                        w.u8(0);
                        w.str(s);
                    }
                    Credential::Token(t) => {
                        w.u8(1);
                        w.str(t);
                    }
                }
                w.str(&h.connector_version);
                w.str(&h.connector_id);
                let count = h.targets.len().min(u16::MAX as usize);
                w.u16(count as u16);
                for t in h.targets.iter().take(count) {
                    w.str(t);
                }
            }),
            ControlFrame::Welcome(m) => encode_payload(dst, WELCOME, |w| {
                w.str(&m.session_id);
                w.str(&m.relay_node);
                w.str(&m.token);
                w.u32(m.expires_in_secs);
                // Only when there is one: a single node's Welcome stays what older connectors read.
                if !m.nodes.is_empty() {
                    let count = m.nodes.len().min(MAX_WELCOME_NODES);
                    w.u16(count as u16);
                    for n in m.nodes.iter().take(count) {
                        w.str(&n.name);
                        w.str(&n.address);
                    }
                }
            }),
            ControlFrame::Refused(r) => encode_payload(dst, REFUSED, |w| {
                w.u32(r.code.0);
                w.str(truncate_str(&r.message, MAX_MESSAGE_LEN));
                w.u32(r.retry_after_secs);
            }),
            ControlFrame::Renew(c) => encode_payload(dst, RENEW, |w| match c {
                Credential::Secret(s) => {
                    w.u8(0);
                    w.str(s);
                }
                Credential::Token(t) => {
                    w.u8(1);
                    w.str(t);
                }
            }),
            ControlFrame::Renewed(r) => encode_payload(dst, RENEWED, |w| {
                w.str(&r.token);
                w.u32(r.expires_in_secs);
            }),
            ControlFrame::Ping(n) => encode_payload(dst, PING, |w| w.u64(*n)),
            ControlFrame::Pong(n) => encode_payload(dst, PONG, |w| w.u64(*n)),
            ControlFrame::GoAway(g) => encode_payload(dst, GO_AWAY, |w| {
                w.u32(g.code.0);
                w.str(truncate_str(&g.message, MAX_MESSAGE_LEN));
            }),
            ControlFrame::Nodes(nodes) => encode_payload(dst, NODES, |w| {
                let count = nodes.len().min(MAX_WELCOME_NODES);
                w.u16(count as u16);
                for n in nodes.iter().take(count) {
                    w.str(&n.name);
                    w.str(&n.address);
                }
            }),
            ControlFrame::Unknown(t) => encode_payload(dst, *t, |_| {}),
        }
    }

    /// Decodes one frame from the front of `src`; `Ok(None)` when more bytes are needed.
    pub fn decode(src: &mut BytesMut) -> Result<Option<ControlFrame>, DecodeError> {
        let Some((frame_type, payload)) = split_frame(src, |t| {
            (HELLO..=LAST_RESERVED)
                .contains(&t)
                .then_some(MAX_CONTROL_FRAME_LEN)
        })?
        else {
            return Ok(None);
        };
        let frame = match frame_type {
            HELLO => {
                let mut r = Reader::new(payload, "hello");
                let version = r.u8()?;
                if version != VERSION {
                    return Err(DecodeError::UnsupportedVersion(version));
                }
                let tenant = r.string()?;
                let credential = credential(&mut r)?;
                let connector_version = r.string()?;
                let connector_id = r.string()?;
                let count = r.u16()? as usize;
                // Each target costs at least 2 bytes, so `count` is bounded by the payload.
                let mut targets = Vec::with_capacity(count.min(256));
                for _ in 0..count {
                    targets.push(r.string()?);
                }
                r.finish()?;
                ControlFrame::Hello(Hello {
                    tenant,
                    credential,
                    connector_version,
                    connector_id,
                    targets,
                })
            }
            WELCOME => {
                let mut r = Reader::new(payload, "welcome");
                let frame = ControlFrame::Welcome(Welcome {
                    session_id: r.string()?,
                    relay_node: r.string()?,
                    token: r.string()?,
                    expires_in_secs: r.u32()?,
                    nodes: Vec::new(),
                });
                let mut frame = frame;
                if !r.is_empty() {
                    let count = r.u16()? as usize;
                    if count > MAX_WELCOME_NODES {
                        return Err(DecodeError::Malformed("welcome"));
                    }
                    if let ControlFrame::Welcome(w) = &mut frame {
                        for _ in 0..count {
                            w.nodes.push(NodeAddress {
                                name: r.string()?,
                                address: r.string()?,
                            });
                        }
                    }
                }
                r.finish()?;
                frame
            }
            REFUSED => {
                let mut r = Reader::new(payload, "refused");
                let frame = ControlFrame::Refused(Refused {
                    code: ErrorCode(r.u32()?),
                    message: r.string()?,
                    retry_after_secs: r.u32()?,
                });
                r.finish()?;
                frame
            }
            RENEW => {
                let mut r = Reader::new(payload, "renew");
                let c = credential(&mut r)?;
                r.finish()?;
                ControlFrame::Renew(c)
            }
            RENEWED => {
                let mut r = Reader::new(payload, "renewed");
                let frame = ControlFrame::Renewed(Renewed {
                    token: r.string()?,
                    expires_in_secs: r.u32()?,
                });
                r.finish()?;
                frame
            }
            PING | PONG => {
                let mut r = Reader::new(payload, "ping");
                let n = r.u64()?;
                r.finish()?;
                if frame_type == PING {
                    ControlFrame::Ping(n)
                } else {
                    ControlFrame::Pong(n)
                }
            }
            GO_AWAY => {
                let mut r = Reader::new(payload, "go-away");
                let frame = ControlFrame::GoAway(GoAway {
                    code: ErrorCode(r.u32()?),
                    message: r.string()?,
                });
                r.finish()?;
                frame
            }
            NODES => {
                let mut r = Reader::new(payload, "nodes");
                let count = r.u16()? as usize;
                if count > MAX_WELCOME_NODES {
                    return Err(DecodeError::Malformed("nodes"));
                }
                let mut nodes = Vec::with_capacity(count);
                for _ in 0..count {
                    nodes.push(NodeAddress {
                        name: r.string()?,
                        address: r.string()?,
                    });
                }
                r.finish()?;
                ControlFrame::Nodes(nodes)
            }
            other if other <= LAST_RESERVED => ControlFrame::Unknown(other),
            other => return Err(DecodeError::UnexpectedFrame(other)),
        };
        Ok(Some(frame))
    }
}

fn credential(r: &mut Reader) -> Result<Credential, DecodeError> {
    match r.u8()? {
        0 => Ok(Credential::Secret(r.string()?)),
        1 => Ok(Credential::Token(r.string()?)),
        _ => Err(DecodeError::Malformed("credential")),
    }
}

// Secrets and tokens never reach a log through `Debug`.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(***)"),
            Credential::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("tenant", &self.tenant)
            .field("credential", &self.credential)
            .field("connector_version", &self.connector_version)
            .field("connector_id", &self.connector_id)
            .field("targets", &self.targets)
            .finish()
    }
}

impl std::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Welcome")
            .field("session_id", &self.session_id)
            .field("relay_node", &self.relay_node)
            .field("token", &"***")
            .field("expires_in_secs", &self.expires_in_secs)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl std::fmt::Debug for Renewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewed")
            .field("token", &"***")
            .field("expires_in_secs", &self.expires_in_secs)
            .finish()
    }
}
