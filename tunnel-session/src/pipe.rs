//! Two streams joined byte for byte, with their ends carried across: a FIN becomes a FIN, a reset
//! a reset with the same code, a stop a stop. A relay node uses it to join a forwarded request's
//! node-link stream to the connector stream that serves it, without decoding the frames between.
//!
//! Memory is bounded: at most [`PIPE_CHUNK`] bytes read per direction before they are written on,
//! and writes wait for the transport's flow control. Chunks read from QUIC are passed on as they
//! came, without a copy.

use bytes::Bytes;
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
    pipe_with_prefix(a, b, Bytes::new()).await
}

/// [`pipe`], with `prefix` sent to `a` ahead of `b`'s first bytes, in the same write: a message
/// that only needs to arrive before the answer (a forwarded request's `Accepted`) costs no packet
/// of its own. The prefix is also sent when `b` ends without a byte.
pub async fn pipe_with_prefix(
    a: (SendHalf, RecvHalf),
    b: (SendHalf, RecvHalf),
    prefix: Bytes,
) -> (PipeEnd, PipeEnd) {
    let (a_send, a_recv) = a;
    let (b_send, b_recv) = b;
    tokio::join!(
        forward(a_recv, b_send, Bytes::new()),
        forward(b_recv, a_send, prefix)
    )
}

/// One direction.
async fn forward(mut from: RecvHalf, mut to: SendHalf, mut prefix: Bytes) -> PipeEnd {
    loop {
        // Why select: while the source is quiet, the destination's reader may go away; its stop
        // must reach the source's writer now, not at the next byte.
        let read = tokio::select! {
            r = from.read_chunk(PIPE_CHUNK) => r,
            code = to.stopped() => {
                let code = code.unwrap_or(ErrorCode::NO_ERROR);
                from.stop(code);
                return PipeEnd::Stopped(code);
            }
        };
        let written = match read {
            Ok(Some(chunk)) if prefix.is_empty() => to.write_chunk(chunk).await,
            Ok(Some(chunk)) => {
                to.write_header_and(std::mem::take(&mut prefix), chunk)
                    .await
            }
            Ok(None) => {
                if !prefix.is_empty() && to.write_chunk(prefix).await.is_err() {
                    return PipeEnd::Stopped(ErrorCode::INTERNAL);
                }
                to.finish();
                return PipeEnd::Finished;
            }
            Err(e) => {
                let code = reset_code(&e).unwrap_or(ErrorCode::INTERNAL);
                if !prefix.is_empty() {
                    let _ = to.write_chunk(prefix).await;
                }
                to.reset(code);
                return PipeEnd::Reset(code);
            }
        };
        if let Err(e) = written {
            let code = stop_code(&e).unwrap_or(ErrorCode::INTERNAL);
            from.stop(code);
            return PipeEnd::Stopped(code);
        }
    }
}
