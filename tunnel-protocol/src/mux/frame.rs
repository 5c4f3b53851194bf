//! The multiplexer's frames: the numbers of the wire format, frame encoding and header
//! decoding (the table in the parent module's docs).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of a frame header: type (1), stream id (8), payload length (4).
pub const HEADER_LEN: usize = 13;
/// Largest payload a frame may declare.
pub const MAX_FRAME_PAYLOAD: usize = 65536;
/// Largest DATA payload this side sends.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Initial credit of each direction of each stream.
pub const STREAM_WINDOW: u64 = 1 << 20;
/// Initial credit of each direction of the connection.
pub const CONN_WINDOW: u64 = 16 << 20;
/// Longest CLOSE reason, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Frame type numbers (the table above).
pub mod frame_type {
    /// SETTINGS.
    pub const SETTINGS: u8 = 0;
    /// OPEN.
    pub const OPEN: u8 = 1;
    /// DATA.
    pub const DATA: u8 = 2;
    /// FIN.
    pub const FIN: u8 = 3;
    /// RESET.
    pub const RESET: u8 = 4;
    /// STOP.
    pub const STOP: u8 = 5;
    /// WINDOW.
    pub const WINDOW: u8 = 6;
    /// STREAMS.
    pub const STREAMS: u8 = 7;
    /// PING.
    pub const PING: u8 = 8;
    /// PONG.
    pub const PONG: u8 = 9;
    /// CLOSE.
    pub const CLOSE: u8 = 10;
}
use frame_type::*;

/// Which end of the byte stream this side is; decides the parity of the stream ids it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed; opens odd stream ids.
    Dialer,
    /// The side that accepted; opens even stream ids.
    Acceptor,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset its sending direction with this code.
    #[error("stream reset by peer with code {0:#x}")]
    Reset(u32),
    /// The peer asked us to stop sending (writes), or we stopped reading (reads), with this code.
    #[error("stream stopped by peer with code {0:#x}")]
    Stopped(u32),
    /// The connection is closed; the reason.
    #[error("connection closed: {0}")]
    Closed(String),
    /// A write or finish after this side finished or reset the stream.
    #[error("stream already finished or reset")]
    Finished,
}

/// A protocol violation by the peer: the connection must close with
/// [`crate::ErrorCode::PROTOCOL_ERROR`] and this text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// One frame, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `max_streams` the peer may open concurrently.
    Settings(u32),
    /// The sender opens stream `id`.
    Open(u64),
    /// Stream bytes.
    Data(u64, Bytes),
    /// The sender's direction ends cleanly.
    Fin(u64),
    /// The sender abandons its direction with a code.
    Reset(u64, u32),
    /// The receiver asks the sender to stop, with a code.
    Stop(u64, u32),
    /// More send credit (stream 0: the connection).
    Window(u64, u32),
    /// The peer may open that many more streams.
    Streams(u32),
    /// Keep-alive probe.
    Ping([u8; 8]),
    /// Answer to a PING.
    Pong([u8; 8]),
    /// The connection ends: code and reason.
    Close(u32, String),
}

impl Frame {
    /// Appends the frame's wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        fn put(out: &mut BytesMut, ty: u8, id: u64, payload: &[u8]) {
            out.put_u8(ty);
            out.put_u64(id);
            out.put_u32(payload.len() as u32);
            out.put_slice(payload);
        }
        match self {
            Frame::Settings(n) => put(out, SETTINGS, 0, &n.to_be_bytes()),
            Frame::Open(id) => put(out, OPEN, *id, &[]),
            Frame::Data(id, data) => put(out, DATA, *id, data),
            Frame::Fin(id) => put(out, FIN, *id, &[]),
            Frame::Reset(id, code) => put(out, RESET, *id, &code.to_be_bytes()),
            Frame::Stop(id, code) => put(out, STOP, *id, &code.to_be_bytes()),
            Frame::Window(id, inc) => put(out, WINDOW, *id, &inc.to_be_bytes()),
            Frame::Streams(inc) => put(out, STREAMS, 0, &inc.to_be_bytes()),
            Frame::Ping(p) => put(out, PING, 0, p),
            Frame::Pong(p) => put(out, PONG, 0, p),
            Frame::Close(code, reason) => {
                out.put_u8(CLOSE);
                out.put_u64(0);
                out.put_u32(4 + reason.len() as u32);
                out.put_u32(*code);
                out.put_slice(reason.as_bytes());
            }
        }
    }
}

/// A frame header as read: type, stream id, payload length (checked against the limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: u8,
    /// Stream id (0 for connection frames).
    pub id: u64,
    /// Payload length, at most [`MAX_FRAME_PAYLOAD`].
    pub len: usize,
}

impl Header {
    /// Decodes a header; an unknown type or an oversized payload is a protocol error.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
        let mut h = &bytes[..];
        let (ty, id, len) = (h.get_u8(), h.get_u64(), h.get_u32() as usize);
        if ty > CLOSE {
            return Err(ProtocolError(format!("unknown frame type {ty:#x}")));
        }
        if len > MAX_FRAME_PAYLOAD {
            return Err(ProtocolError(format!(
                "frame payload of {len} bytes exceeds {MAX_FRAME_PAYLOAD}"
            )));
        }
        Ok(Header { ty, id, len })
    }
}

/// `reason` cut to [`MAX_REASON_LEN`] bytes at a character boundary.
pub fn truncate_reason(reason: &[u8]) -> String {
    let text = String::from_utf8_lossy(reason);
    let mut end = text.len().min(MAX_REASON_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
