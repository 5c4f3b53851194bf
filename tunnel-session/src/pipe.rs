//! Two streams joined byte for byte, with their ends carried across: a FIN becomes a FIN, a reset
//! a reset with the same code, a stop a stop. A relay node uses it to join a forwarded request's
//! node-link stream to the connector stream that serves it, without decoding the frames between.
//!
//! Memory is bounded: one buffer of [`PIPE_CHUNK`] bytes per direction; writes wait for the
//! transport's flow control.

use tokio::io::AsyncReadExt;
use tunnel_protocol::ErrorCode;

use crate::transport::{reset_code, stop_code, RecvHalf, SendHalf};

/// Bytes read per direction before they are written on.
pub const PIPE_CHUNK: usize = 64 * 1024;

/// How one direction of a [`pipe`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    /// The source finished and the FIN was passed on.
    Finished,
    /// The source was reset with this code, passed on as a reset.
    Reset(ErrorCode),
    /// The destination's reader asked to stop with this code, passed on as a stop.
    Stopped(ErrorCode),
}

/// Copies `a`'s receive side to `b`'s send side and `b`'s receive side to `a`'s send side until
/// both directions have ended; how each ended (`a → b`, `b → a`).
pub async fn pipe(a: (SendHalf, RecvHalf), b: (SendHalf, RecvHalf)) -> (PipeEnd, PipeEnd) {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    tokio::join!(forward(a_recv, b_send), forward(b_recv, a_send))
}

/// One direction.
async fn forward(mut from: RecvHalf, mut to: SendHalf) -> PipeEnd {
    let mut buf = bytes::BytesMut::with_capacity(PIPE_CHUNK);
    loop {
        buf.clear();
        buf.reserve(PIPE_CHUNK);
        // Why select: while the source is quiet, the destination's reader may go away; its stop
        // must reach the source's writer now, not at the next byte.
        let read = tokio::select! {
            r = from.read_buf(&mut buf) => r,
            code = to.stopped() => {
                let code = code.unwrap_or(ErrorCode::NO_ERROR);
                from.stop(code);
                return PipeEnd::Stopped(code);
            }
        };
        match read {
            Ok(0) => {
                to.finish();
                return PipeEnd::Finished;
            }
            Ok(_) => {
                if let Err(e) = to.write_all(&buf).await {
                    let code = stop_code(&e).unwrap_or(ErrorCode::INTERNAL);
                    from.stop(code);
                    return PipeEnd::Stopped(code);
                }
            }
            Err(e) => {
                let code = reset_code(&e).unwrap_or(ErrorCode::INTERNAL);
                to.reset(code);
                return PipeEnd::Reset(code);
            }
        }
    }
}
