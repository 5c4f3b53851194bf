//! A session's connection, whichever transport carries it: QUIC (quinn), or TLS over TCP with the
//! [`mux`] multiplexer on top. Both give streams the same semantics — independent
//! directions, FIN, reset and stop with a code, flow control — so everything above this module
//! (framing, control stream, proxying) is written once.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tunnel_protocol::ErrorCode;

use crate::mux;

/// Which transport carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP (possibly through an HTTP CONNECT proxy) with the stream multiplexer.
    Tcp,
}

impl Transport {
    /// `quic` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One session's connection.
#[derive(Debug, Clone)]
pub enum Conn {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// A multiplexed TLS-over-TCP connection.
    Tcp(mux::Connection),
}

impl Conn {
    /// The transport in use.
    pub fn transport(&self) -> Transport {
        match self {
            Conn::Quic(_) => Transport::Quic,
            Conn::Tcp(_) => Transport::Tcp,
        }
    }

    /// Opens a bidirectional stream (waits for the peer's stream limit).
    pub async fn open_bi(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Conn::Quic(c) => {
                let (s, r) = c.open_bi().await.map_err(io::Error::from)?;
                Ok((SendHalf::Quic(s), RecvHalf::Quic(r)))
            }
            Conn::Tcp(c) => {
                let (s, r) = c.open_bi().await?;
                Ok((SendHalf::Tcp(s), RecvHalf::Tcp(r)))
            }
        }
    }

    /// Accepts the next stream the peer opens; fails once the connection is closed.
    pub async fn accept_bi(&self) -> io::Result<(SendHalf, RecvHalf)> {
        match self {
            Conn::Quic(c) => {
                let (s, r) = c.accept_bi().await.map_err(io::Error::from)?;
                Ok((SendHalf::Quic(s), RecvHalf::Quic(r)))
            }
            Conn::Tcp(c) => {
                let (s, r) = c.accept_bi().await?;
                Ok((SendHalf::Tcp(s), RecvHalf::Tcp(r)))
            }
        }
    }

    /// Closes at once with a code and a short reason; every stream fails.
    pub fn close(&self, code: ErrorCode, reason: &[u8]) {
        match self {
            Conn::Quic(c) => c.close(quinn::VarInt::from_u32(code.0), reason),
            Conn::Tcp(c) => c.close(code.0, reason),
        }
    }

    /// Resolves once the connection is closed, by either side or by failure.
    pub async fn closed(&self) {
        match self {
            Conn::Quic(c) => {
                c.closed().await;
            }
            Conn::Tcp(c) => c.closed().await,
        }
    }

    /// After [`Conn::close`]: resolves once the close has been sent (bounded; QUIC's endpoint
    /// does this itself).
    pub async fn drained(&self) {
        if let Conn::Tcp(c) = self {
            c.drained().await;
        }
    }

    /// Why the connection closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<String> {
        match self {
            Conn::Quic(c) => c.close_reason().map(|r| r.to_string()),
            Conn::Tcp(c) => c.close_reason(),
        }
    }

    /// The peer's address (for a proxied TCP session: the address dialled).
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Conn::Quic(c) => c.remote_address(),
            Conn::Tcp(c) => c.remote_address(),
        }
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub enum SendHalf {
    /// QUIC.
    Quic(quinn::SendStream),
    /// Multiplexed TCP.
    Tcp(mux::SendStream),
}

impl From<quinn::SendStream> for SendHalf {
    fn from(s: quinn::SendStream) -> SendHalf {
        SendHalf::Quic(s)
    }
}

impl From<mux::SendStream> for SendHalf {
    fn from(s: mux::SendStream) -> SendHalf {
        SendHalf::Tcp(s)
    }
}

impl SendHalf {
    /// Writes all of `buf`, waiting for flow control.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_all(buf).await.map_err(io::Error::from),
            SendHalf::Tcp(s) => s.write_all(buf).await,
        }
    }

    /// Writes a small header and a body chunk without copying the chunk.
    pub async fn write_header_and(&mut self, header: Bytes, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => {
                let mut chunks = [header, data];
                s.write_all_chunks(&mut chunks)
                    .await
                    .map_err(io::Error::from)
            }
            SendHalf::Tcp(s) => {
                s.write_bytes(header).await?;
                s.write_bytes(data).await
            }
        }
    }

    /// Writes `data` without copying it.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::Tcp(s) => s.write_bytes(data).await,
        }
    }

    /// Ends the direction cleanly.
    pub fn finish(&mut self) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.finish();
            }
            SendHalf::Tcp(s) => {
                let _ = s.finish();
            }
        }
    }

    /// Abandons the direction with `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        match self {
            SendHalf::Quic(s) => {
                let _ = s.reset(code.0.into());
            }
            SendHalf::Tcp(s) => s.reset(code.0),
        }
    }

    /// Resolves when the peer asks us to stop sending (`Some(code)`), or when the direction is
    /// done (`None`); a lost connection reads as `Some(INTERNAL)`. Cancel safe.
    pub async fn stopped(&mut self) -> Option<ErrorCode> {
        let r = match self {
            SendHalf::Quic(s) => s
                .stopped()
                .await
                .map(|c| c.map(|c| u32::try_from(c.into_inner()).unwrap_or(u32::MAX)))
                .map_err(|_| ()),
            SendHalf::Tcp(s) => s.stopped().await.map_err(|_| ()),
        };
        match r {
            Ok(code) => code.map(ErrorCode),
            Err(()) => Some(ErrorCode::INTERNAL),
        }
    }
}

/// The receiving half of a stream.
#[derive(Debug)]
pub enum RecvHalf {
    /// QUIC.
    Quic(quinn::RecvStream),
    /// Multiplexed TCP.
    Tcp(mux::RecvStream),
}

impl From<quinn::RecvStream> for RecvHalf {
    fn from(r: quinn::RecvStream) -> RecvHalf {
        RecvHalf::Quic(r)
    }
}

impl From<mux::RecvStream> for RecvHalf {
    fn from(r: mux::RecvStream) -> RecvHalf {
        RecvHalf::Tcp(r)
    }
}

impl RecvHalf {
    /// Asks the peer to stop sending; later data is discarded.
    pub fn stop(&mut self, code: ErrorCode) {
        match self {
            RecvHalf::Quic(r) => {
                let _ = r.stop(code.0.into());
            }
            RecvHalf::Tcp(r) => {
                let _ = r.stop(code.0);
            }
        }
    }

    /// The next chunk as the transport holds it (at most `max` bytes), without a copy; `None` at
    /// the end of the stream. Cancel safe: a chunk is taken only when it is returned.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self {
            RecvHalf::Quic(r) => match r.read_chunk(max, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(io::Error::from(e)),
            },
            RecvHalf::Tcp(r) => r.read_chunk(max).await,
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvHalf::Quic(r) => Pin::new(r).poll_read(cx, buf),
            RecvHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The reset code inside an I/O error produced by a stream read, if the peer reset the stream.
pub fn reset_code(err: &io::Error) -> Option<ErrorCode> {
    let inner = err.get_ref()?;
    if let Some(quinn::ReadError::Reset(code)) = inner.downcast_ref::<quinn::ReadError>() {
        return Some(ErrorCode(
            u32::try_from(code.into_inner()).unwrap_or(u32::MAX),
        ));
    }
    match inner.downcast_ref::<mux::StreamError>() {
        Some(mux::StreamError::Reset(code)) => Some(ErrorCode(*code)),
        _ => None,
    }
}

/// The stop code inside an I/O error produced by a stream write, if the peer asked to stop.
pub fn stop_code(err: &io::Error) -> Option<ErrorCode> {
    let inner = err.get_ref()?;
    if let Some(quinn::WriteError::Stopped(code)) = inner.downcast_ref::<quinn::WriteError>() {
        return Some(ErrorCode(
            u32::try_from(code.into_inner()).unwrap_or(u32::MAX),
        ));
    }
    match inner.downcast_ref::<mux::StreamError>() {
        Some(mux::StreamError::Stopped(code)) => Some(ErrorCode(*code)),
        _ => None,
    }
}
