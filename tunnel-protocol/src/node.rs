//! The node link: how one relay node forwards a visitor request to another node of the same
//! cluster (the one holding the tenant's connector session).
//!
//! A link is a QUIC connection with ALPN [`NODE_ALPN`] to the peer's HTTPS port number. The node
//! that forwards opens the first bidirectional stream and sends [`NodeMessage::Hello`]; the peer
//! answers with its own `Hello`. Each `proof` is an HMAC, under a key both nodes derive from the
//! shared `keys/`, of a TLS exporter of this very connection ([`NODE_EXPORTER_LABEL`]) and the
//! side's role: only nodes holding the keys can produce it, and a machine in the middle (two TLS
//! sessions, two exporters) cannot pass one side's proof on to the other.
//!
//! Every later stream carries one request: [`NodeMessage::Forward`] (which tenant, target and
//! request), then exactly the [`crate::StreamFrame`]s a connector would receive. The peer answers
//! [`NodeMessage::Accepted`] (then the connector's frames, byte for byte) or
//! [`NodeMessage::Refused`] (then FIN). A forwarded request is never forwarded again.
//!
//! A stream may instead start with [`NodeMessage::PairConnect`]: a pairing connection that
//! arrived on the sending node and whose partner waits on the receiving one. The receiver answers
//! `Accepted` (with an empty session id) and both ends then carry the two WebSockets' messages as
//! pairing frames (see the relay's `pair/remote.rs`), or `Refused` when nothing waits there.
//!
//! Messages are `[kind: u8][len: u16][payload]`, payload fields as in the other frames.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Reader, Writer};
use crate::{DecodeError, ErrorCode};

/// The ALPN protocol id of a node link.
pub const NODE_ALPN: &[u8] = b"relay-node/1";

/// The TLS exporter label whose output each side's proof covers.
pub const NODE_EXPORTER_LABEL: &[u8] = b"EXPORTER-relay-node-link/1";

/// Bytes of a message header: kind and payload length.
pub const NODE_HEADER_LEN: usize = 3;

/// The largest payload of a node message.
pub const MAX_NODE_MESSAGE_LEN: usize = 4096;

const KIND_HELLO: u8 = 1;
const KIND_FORWARD: u8 = 2;
const KIND_ACCEPTED: u8 = 3;
const KIND_REFUSED: u8 = 4;
const KIND_PAIR_CONNECT: u8 = 5;

/// A message on a node link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMessage {
    /// Each side's introduction on the link's first stream.
    Hello {
        /// The sender's id in the node registry.
        node_id: String,
        /// The sender's name.
        node_name: String,
        /// HMAC-SHA256 over the role and the connection's exporter.
        proof: Bytes,
    },
    /// First message of a forwarded request.
    Forward {
        /// The tenant's id.
        tenant_id: String,
        /// The target name.
        target: String,
        /// The request id the visitor was given.
        request_id: String,
    },
    /// The peer serves the request from one of its sessions.
    Accepted {
        /// The session carrying it.
        session_id: String,
    },
    /// The peer cannot serve it.
    Refused {
        /// Why: `GOING_AWAY` (no session here), `UNKNOWN_TARGET`, `RATE_LIMITED` (the tenant's
        /// stream cap), `TENANT_DISABLED`.
        code: ErrorCode,
        /// For logs.
        message: String,
    },
    /// First message of a pairing connection whose partner waits on the receiving node.
    PairConnect {
        /// The tenant's id.
        tenant_id: String,
        /// The waiting connection's key: its own peer id, …
        a: String,
        /// … its partner's, …
        b: String,
        /// … and the document id.
        document_id: String,
    },
}

impl NodeMessage {
    /// Appends the encoded message.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut payload = BytesMut::new();
        let mut w = Writer(&mut payload);
        let kind = match self {
            NodeMessage::Hello {
                node_id,
                node_name,
                proof,
            } => {
                w.str(node_id);
                w.str(node_name);
                w.bytes(proof);
                KIND_HELLO
            }
            NodeMessage::Forward {
                tenant_id,
                target,
                request_id,
            } => {
                w.str(tenant_id);
                w.str(target);
                w.str(request_id);
                KIND_FORWARD
            }
            NodeMessage::Accepted { session_id } => {
                w.str(session_id);
                KIND_ACCEPTED
            }
            NodeMessage::Refused { code, message } => {
                w.u32(code.0);
                w.str(crate::codec::truncate_str(message, 1024));
                KIND_REFUSED
            }
            NodeMessage::PairConnect {
                tenant_id,
                a,
                b,
                document_id,
            } => {
                w.str(tenant_id);
                w.str(a);
                w.str(b);
                w.str(document_id);
                KIND_PAIR_CONNECT
            }
        };
        // Every field above is bounded well below the limit except caller-supplied names, which
        // are cut rather than encoded into a message the peer would refuse.
        payload.truncate(MAX_NODE_MESSAGE_LEN);
        dst.put_u8(kind);
        dst.put_u16(payload.len() as u16);
        dst.extend_from_slice(&payload);
    }

    /// The payload length a header announces, or an error for a kind or length out of range.
    pub fn payload_len(header: [u8; NODE_HEADER_LEN]) -> Result<usize, DecodeError> {
        let len = u16::from_be_bytes([header[1], header[2]]) as usize;
        if !(KIND_HELLO..=KIND_PAIR_CONNECT).contains(&header[0]) {
            return Err(DecodeError::UnexpectedFrame(header[0]));
        }
        if len > MAX_NODE_MESSAGE_LEN {
            return Err(DecodeError::FrameTooLarge {
                frame_type: header[0],
                len,
                limit: MAX_NODE_MESSAGE_LEN,
            });
        }
        Ok(len)
    }

    /// Decodes a message from its header and its whole payload.
    pub fn decode(
        header: [u8; NODE_HEADER_LEN],
        payload: Bytes,
    ) -> Result<NodeMessage, DecodeError> {
        let len = NodeMessage::payload_len(header)?;
        if payload.len() != len {
            return Err(DecodeError::Malformed("node message"));
        }
        let mut r = Reader::new(payload, "node message");
        let msg = match header[0] {
            KIND_HELLO => NodeMessage::Hello {
                node_id: r.string()?,
                node_name: r.string()?,
                proof: r.bytes()?,
            },
            KIND_FORWARD => NodeMessage::Forward {
                tenant_id: r.string()?,
                target: r.string()?,
                request_id: r.string()?,
            },
            KIND_ACCEPTED => NodeMessage::Accepted {
                session_id: r.string()?,
            },
            KIND_REFUSED => NodeMessage::Refused {
                code: ErrorCode(r.u32()?),
                message: r.string()?,
            },
            _ => NodeMessage::PairConnect {
                tenant_id: r.string()?,
                a: r.string()?,
                b: r.string()?,
                document_id: r.string()?,
            },
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: NodeMessage) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let header = [buf[0], buf[1], buf[2]];
        let payload = buf.split_off(NODE_HEADER_LEN).freeze();
        assert_eq!(NodeMessage::decode(header, payload).unwrap(), msg);
    }

    #[test]
    fn messages_round_trip() {
        round_trip(NodeMessage::Hello {
            node_id: "0190".into(),
            node_name: "relay-1".into(),
            proof: Bytes::from_static(&[7; 32]),
        });
        round_trip(NodeMessage::Forward {
            tenant_id: "t1".into(),
            target: "app".into(),
            request_id: "r1".into(),
        });
        round_trip(NodeMessage::Accepted {
            session_id: "s1".into(),
        });
        round_trip(NodeMessage::Refused {
            code: ErrorCode::UNKNOWN_TARGET,
            message: "no".into(),
        });
        round_trip(NodeMessage::PairConnect {
            tenant_id: "t1".into(),
            a: "alice".into(),
            b: "bob".into(),
            document_id: "doc".into(),
        });
    }

    #[test]
    fn bad_headers_and_payloads_are_refused() {
        assert!(NodeMessage::payload_len([9, 0, 0]).is_err());
        assert!(NodeMessage::payload_len([0, 0, 0]).is_err());
        assert!(NodeMessage::payload_len([KIND_HELLO, 0xff, 0xff]).is_err());
        // A payload with bytes left over, or cut short.
        let mut buf = BytesMut::new();
        NodeMessage::Accepted {
            session_id: "s".into(),
        }
        .encode(&mut buf);
        let header = [buf[0], buf[1], buf[2]];
        let mut long = buf.split_off(NODE_HEADER_LEN);
        long.put_u8(0);
        assert!(NodeMessage::decode(header, long.freeze()).is_err());
        let header = [KIND_ACCEPTED, 0, 1];
        assert!(NodeMessage::decode(header, Bytes::from_static(&[0])).is_err());
    }
}
