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
/// of its own. The prefix is also sent when `b` finishes without a byte; when `b` is reset first,
/// only the reset is passed on.
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;
    use crate::mux::tests::SECS5;
    use crate::mux::Connection;

    fn connections() -> (Connection, Connection) {
        crate::mux::tests::pair(crate::mux::tests::cfg(), crate::mux::tests::cfg())
    }

    /// A pipe at work: the request has crossed it and the outer end has finished sending.
    struct Piped {
        /// The outer caller's receive side (a visitor's node link, say).
        outer_recv: RecvHalf,
        /// The inner server's send side (a connector stream, say).
        inner_send: SendHalf,
        task: JoinHandle<(PipeEnd, PipeEnd)>,
        /// Kept alive for the test's length.
        _keep: (SendHalf, RecvHalf, [Connection; 4]),
    }

    /// outer → [a … pipe … b] → inner: the outer end sends "request" and finishes; the pipe joins
    /// the stream it arrives on to a new stream towards the inner end, with `prefix` ahead of the
    /// answer; the inner end has read the request.
    async fn piped(prefix: &'static [u8]) -> Piped {
        let (outer_conn, a_conn) = connections();
        let (b_conn, inner_conn) = connections();
        let (mut outer_send, outer_recv) = outer_conn.open_bi().await.unwrap();
        outer_send.write_all(b"request").await.unwrap();
        let a = timeout(SECS5, a_conn.accept_bi()).await.unwrap().unwrap();
        let b = b_conn.open_bi().await.unwrap();
        let task = tokio::spawn(pipe_with_prefix(
            (a.0.into(), a.1.into()),
            (b.0.into(), b.1.into()),
            Bytes::from_static(prefix),
        ));
        let (inner_send, inner_recv) = timeout(SECS5, inner_conn.accept_bi())
            .await
            .unwrap()
            .unwrap();
        let mut inner_recv = RecvHalf::from(inner_recv);
        let mut got = [0; 7];
        timeout(SECS5, inner_recv.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"request");
        let mut outer_send = SendHalf::from(outer_send);
        outer_send.finish();
        Piped {
            outer_recv: outer_recv.into(),
            inner_send: inner_send.into(),
            task,
            _keep: (
                outer_send,
                inner_recv,
                [outer_conn, a_conn, b_conn, inner_conn],
            ),
        }
    }

    impl Piped {
        /// What the outer end reads to the end of the stream (or the error that ends it), and
        /// how each direction of the pipe ended.
        async fn outcome(mut self) -> (Result<Vec<u8>, std::io::Error>, (PipeEnd, PipeEnd)) {
            let mut got = Vec::new();
            let read = timeout(SECS5, self.outer_recv.read_to_end(&mut got))
                .await
                .unwrap();
            let ends = timeout(SECS5, self.task).await.unwrap().unwrap();
            (read.map(|_| got), ends)
        }
    }

    #[tokio::test]
    async fn prefix_rides_ahead_of_the_first_bytes() {
        let mut p = piped(b"ACCEPTED;").await;
        p.inner_send.write_all(b"response").await.unwrap();
        p.inner_send.finish();
        let (got, ends) = p.outcome().await;
        assert_eq!(got.unwrap(), b"ACCEPTED;response");
        assert_eq!(ends, (PipeEnd::Finished, PipeEnd::Finished));
    }

    #[tokio::test]
    async fn prefix_arrives_when_the_answer_is_empty() {
        let mut p = piped(b"ACCEPTED;").await;
        p.inner_send.finish();
        let (got, ends) = p.outcome().await;
        assert_eq!(got.unwrap(), b"ACCEPTED;");
        assert_eq!(ends, (PipeEnd::Finished, PipeEnd::Finished));
    }

    #[tokio::test]
    async fn a_reset_passes_through() {
        let mut p = piped(b"ACCEPTED;").await;
        p.inner_send.reset(ErrorCode(7));
        let (got, ends) = p.outcome().await;
        let err = got.unwrap_err();
        assert_eq!(reset_code(&err), Some(ErrorCode(7)));
        assert_eq!(ends, (PipeEnd::Finished, PipeEnd::Reset(ErrorCode(7))));
    }

    #[tokio::test]
    async fn a_stop_passes_back_to_the_writer() {
        let mut p = piped(b"").await;
        // The outer reader goes away: the inner writer learns of it with the same code.
        p.outer_recv.stop(ErrorCode(9));
        let code = timeout(SECS5, p.inner_send.stopped()).await.unwrap();
        assert_eq!(code, Some(ErrorCode(9)));
        let ends = timeout(SECS5, p.task).await.unwrap().unwrap();
        assert_eq!(ends, (PipeEnd::Finished, PipeEnd::Stopped(ErrorCode(9))));
    }
}
