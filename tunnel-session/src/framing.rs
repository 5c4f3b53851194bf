//! The tokio side of the stream protocol: reading [`StreamFrame`]s from a receive stream (QUIC or
//! multiplexed TCP),
//! writing them to a send stream, and a [`TunnelBody`] that turns the frames after a head into an
//! HTTP body. Shared by the connector and the relay (the relay depends on this crate).
//!
//! Memory per stream is bounded: the read buffer holds at most one frame (≤ 64 KiB of data), and
//! writes wait for the transport's flow control instead of queueing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use tunnel_protocol::{DecodeError, ErrorCode, StreamFrame, FRAME_HEADER_LEN, MAX_DATA_FRAME_LEN};

/// The most a stream asks of the transport per read: one full data frame plus its header.
const READ_CHUNK: usize = MAX_DATA_FRAME_LEN + FRAME_HEADER_LEN;
/// What a stream asks for first: a head and a small body fit, and the allocation is small enough
/// for the allocator's per-thread cache. Reserving [`READ_CHUNK`] up front gave every stream a
/// 64 KiB block on each side for as long as it lived, whatever it carried.
const FIRST_READ: usize = 1024;

/// Why reading a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The peer reset the stream with this code.
    #[error("stream reset by peer: {0}")]
    Reset(ErrorCode),
    /// The peer sent bytes we will not accept.
    #[error("protocol violation: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame, or before the frame we needed.
    #[error("stream ended early")]
    Truncated,
    /// A frame that is not allowed at this point of the stream.
    #[error("unexpected frame on stream")]
    Unexpected,
    /// The connection failed or closed.
    #[error("connection lost: {0}")]
    Connection(io::Error),
    /// No frame arrived within the body's idle timeout while its reader was waiting.
    #[error("stream idle for {0:?}")]
    Idle(std::time::Duration),
}

impl RecvError {
    fn from_io(err: io::Error) -> RecvError {
        if let Some(code) = reset_code(&err) {
            return RecvError::Reset(code);
        }
        RecvError::Connection(err)
    }
}

pub use crate::transport::reset_code;
use crate::transport::{RecvHalf, SendHalf};

/// A receive stream that yields frames, and stops the peer's sending (with a code) when dropped
/// before the stream ended.
#[derive(Debug)]
pub struct FramedRecv {
    io: RecvHalf,
    buf: BytesMut,
    /// The room asked for before the next read: from [`FIRST_READ`], doubled each time a read
    /// fills it, up to [`READ_CHUNK`] (a bulk body soon reads whole frames at a time).
    read_size: usize,
    done: bool,
    stop_code: ErrorCode,
}

impl FramedRecv {
    /// Wraps a stream; `stop_code` is sent to the peer if this is dropped early.
    pub fn new(io: impl Into<RecvHalf>, stop_code: ErrorCode) -> FramedRecv {
        FramedRecv {
            io: io.into(),
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            done: false,
            stop_code,
        }
    }

    /// Polls for the next frame; `Ready(Ok(None))` at a clean end of stream.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<StreamFrame>, RecvError>> {
        loop {
            if let Some(frame) = StreamFrame::decode(&mut self.buf)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.done {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RecvError::Truncated)
                });
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Reads more bytes into the buffer; at the end of the stream, marks it done.
    /// A frame whose header is already buffered has had room made for its whole length by the
    /// decoder, so a read never asks for less than the frame under way still needs.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))
        .map_err(RecvError::from_io)?;
        if n == 0 {
            self.done = true;
        } else if n == room {
            self.read_size = (self.read_size * 2).min(READ_CHUNK);
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the stream ends here: `true` once the peer's FIN arrives with no byte after what
    /// was already decoded, `false` as soon as any byte of another frame is there. Nothing is
    /// consumed. Cancel safe.
    pub async fn at_end(&mut self) -> Result<bool, RecvError> {
        std::future::poll_fn(|cx| loop {
            if !self.buf.is_empty() {
                return Poll::Ready(Ok(false));
            }
            if self.done {
                return Poll::Ready(Ok(true));
            }
            ready!(self.poll_fill(cx))?;
        })
        .await
    }

    /// The next frame; `Ok(None)` at a clean end of stream. Cancel safe.
    pub async fn next(&mut self) -> Result<Option<StreamFrame>, RecvError> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Tells the peer to stop sending (e.g. the consumer went away).
    pub fn stop(&mut self, code: ErrorCode) {
        if !self.done {
            self.done = true;
            self.io.stop(code);
        }
    }
}

impl Drop for FramedRecv {
    fn drop(&mut self) {
        self.stop(self.stop_code);
    }
}

/// A send stream that writes frames and resets the stream (with a code) when dropped unfinished,
/// so that an abort is never mistaken for a complete message.
#[derive(Debug)]
pub struct FramedSend {
    io: SendHalf,
    buf: BytesMut,
    finished: bool,
    drop_code: ErrorCode,
}

impl FramedSend {
    /// Wraps a stream; `drop_code` resets it if this is dropped before [`FramedSend::finish`].
    pub fn new(io: impl Into<SendHalf>, drop_code: ErrorCode) -> FramedSend {
        FramedSend {
            io: io.into(),
            buf: BytesMut::new(),
            finished: false,
            drop_code,
        }
    }

    /// Writes one non-data frame. Waits for flow control.
    pub async fn send(&mut self, frame: &StreamFrame) -> io::Result<()> {
        self.buf.clear();
        frame.encode(&mut self.buf);
        self.io.write_all(&self.buf).await
    }

    /// Writes frames already encoded (several at once leave in one write). Waits for flow
    /// control.
    pub async fn send_encoded(&mut self, frames: &[u8]) -> io::Result<()> {
        self.io.write_all(frames).await
    }

    /// Writes one non-data frame and ends the stream: both leave together.
    pub async fn send_last(&mut self, frame: &StreamFrame) -> io::Result<()> {
        self.send(frame).await?;
        self.finish();
        Ok(())
    }

    /// Writes body bytes as data frames without copying them. Waits for flow control.
    pub async fn send_data(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME_LEN));
            let mut header = [0u8; FRAME_HEADER_LEN];
            header[1..].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
            self.io
                .write_header_and(Bytes::copy_from_slice(&header), chunk)
                .await?;
        }
        Ok(())
    }

    /// Writes trailer fields.
    pub async fn send_trailers(&mut self, trailers: HeaderMap) -> io::Result<()> {
        self.send(&StreamFrame::Trailers(trailers)).await
    }

    /// Ends the stream cleanly (FIN).
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.io.finish();
        }
    }

    /// Aborts the stream with `code`.
    pub fn reset(&mut self, code: ErrorCode) {
        if !self.finished {
            self.finished = true;
            self.io.reset(code);
        }
    }

    /// Resolves when the peer asks us to stop sending, with its code. Cancel safe.
    pub async fn stopped(&mut self) -> Option<ErrorCode> {
        self.io.stopped().await
    }
}

impl Drop for FramedSend {
    fn drop(&mut self) {
        self.reset(self.drop_code);
    }
}

/// The body that follows a head on a stream: `Data` and `Trailers` frames until the FIN.
///
/// A reset or any protocol violation becomes a body error, which hyper turns into an aborted
/// message (connection close on HTTP/1.1, RST_STREAM on HTTP/2) instead of a truncated one.
#[derive(Debug)]
pub struct TunnelBody<G = ()> {
    recv: Option<FramedRecv>,
    size: Option<u64>,
    idle: Option<Idle>,
    _guard: G,
}

/// The idle timer of a body: it runs only while the body's reader waits for the next frame, so a
/// slow reader (backpressure) is never mistaken for a stalled sender. Made at the first wait: a
/// small body is usually there as soon as it is read, and then no timer is made or registered.
#[derive(Debug)]
struct Idle {
    limit: std::time::Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<G> TunnelBody<G> {
    /// An empty body (the stream stays with the caller, e.g. for an upgrade).
    pub fn empty(guard: G) -> TunnelBody<G> {
        TunnelBody {
            recv: None,
            size: Some(0),
            idle: None,
            _guard: guard,
        }
    }

    /// A body read from `recv`, whose length is `size` when known; `guard` lives as long as the
    /// body (in-flight accounting).
    pub fn new(mut recv: FramedRecv, size: Option<u64>, guard: G) -> TunnelBody<G> {
        let recv = if size == Some(0) {
            // Nothing to read: the peer's FIN follows on its own; no STOP_SENDING needed.
            recv.done = true;
            None
        } else {
            Some(recv)
        };
        TunnelBody {
            recv,
            size,
            idle: None,
            _guard: guard,
        }
    }

    /// Fails the body when no frame arrives for `limit` while it is being read.
    pub fn with_idle_timeout(mut self, limit: std::time::Duration) -> TunnelBody<G> {
        self.idle = Some(Idle {
            limit,
            sleep: None,
            armed: false,
        });
        self
    }
}

impl<G: Unpin> Body for TunnelBody<G> {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let this = &mut *self;
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        let result = match recv.poll_frame(cx) {
            Poll::Ready(r) => {
                if let Some(idle) = this.idle.as_mut() {
                    idle.armed = false;
                }
                r
            }
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                // A wait begins: the limit runs from now.
                let sleep = match (&mut idle.sleep, idle.armed) {
                    (Some(sleep), true) => sleep,
                    (Some(sleep), false) => {
                        sleep
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle.limit);
                        sleep
                    }
                    (slot @ None, _) => slot.insert(Box::pin(tokio::time::sleep(idle.limit))),
                };
                idle.armed = true;
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Err(RecvError::Idle(idle.limit))
            }
        };
        let out = match result {
            Ok(Some(StreamFrame::Data(data))) => {
                if let Some(left) = this.size.as_mut() {
                    *left = left.saturating_sub(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Ok(Some(StreamFrame::Trailers(t))) => Some(Ok(Frame::trailers(t))),
            Ok(Some(StreamFrame::Error(e))) => Some(Err(RecvError::Reset(e.code))),
            Ok(Some(_)) => Some(Err(RecvError::Unexpected)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        if matches!(out, Some(Err(_))) || out.is_none() {
            // Finished or failed: drop the stream now (a clean end needs no STOP_SENDING).
            if let Some(mut r) = this.recv.take() {
                if out.is_none() {
                    r.done = true;
                }
            }
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// How long an upgraded stream may carry no bytes in either direction before it is cut.
pub const UPGRADED_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Bytes read from the upgraded connection per data frame.
const SPLICE_CHUNK: usize = 16 * 1024;

/// Carries raw bytes both ways between an upgraded HTTP connection (after its `101`) and a
/// tunnel stream, until both directions have ended, either side fails, or nothing moved for
/// [`UPGRADED_IDLE_TIMEOUT`]. A failure resets the stream; a clean end finishes it.
pub async fn splice<IO>(io: IO, mut send: FramedSend, mut recv: FramedRecv)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let started = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_secs(), Ordering::Relaxed);
    let (mut reader, mut writer) = tokio::io::split(io);
    let outbound = async {
        let mut buf = BytesMut::with_capacity(SPLICE_CHUNK);
        loop {
            buf.reserve(SPLICE_CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    send.finish();
                    return Ok(());
                }
                Ok(_) => {
                    touch();
                    send.send_data(buf.split().freeze()).await?;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let inbound = async {
        loop {
            match recv.next().await {
                Ok(Some(StreamFrame::Data(data))) => {
                    touch();
                    writer.write_all(&data).await?;
                }
                Ok(None) => {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                Ok(Some(_)) => {
                    return Err(io::Error::other("unexpected frame on an upgraded stream"))
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    };
    let idle = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let quiet = started
                .elapsed()
                .as_secs()
                .saturating_sub(last.load(Ordering::Relaxed));
            if quiet >= UPGRADED_IDLE_TIMEOUT.as_secs() {
                return;
            }
        }
    };
    // Why select: the splice ends when both directions are done, on the first error, or when
    // the connection has been idle too long; dropping the halves then closes everything.
    tokio::select! {
        r = async { tokio::try_join!(outbound, inbound) } => {
            if r.is_err() {
                tracing::debug!("upgraded stream failed");
            }
        }
        _ = idle => tracing::debug!("upgraded stream idle; closing"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::*;
    use crate::mux::tests::{cfg, pair, SECS5};

    /// Frames that arrive in reads of every size come out whole: a head far larger than the
    /// first read, full 64 KiB data frames (the read size grows to one whole frame), small ones.
    #[tokio::test]
    async fn reads_start_small_and_grow_to_whole_frames() {
        let (a, b) = pair(cfg(), cfg());
        let (send, _) = a.open_bi().await.unwrap();
        let mut send = FramedSend::new(send, ErrorCode::BACKEND_ABORTED);
        let mut small = HeaderMap::new();
        small.insert("x-small", "1".parse().unwrap());
        send.send(&StreamFrame::Trailers(small.clone()))
            .await
            .unwrap();
        let (_, recv) = b.accept_bi().await.unwrap();
        let mut recv = FramedRecv::new(recv, ErrorCode::VISITOR_ABORTED);
        let got = timeout(SECS5, recv.next()).await.unwrap().unwrap();
        assert_eq!(got, Some(StreamFrame::Trailers(small)));
        assert_eq!(
            recv.read_size, FIRST_READ,
            "a small frame needs no larger read"
        );

        let mut big = HeaderMap::new();
        big.insert("x-big", "v".repeat(20_000).parse().unwrap());
        let body: Vec<Bytes> = (0..12u8)
            .map(|i| Bytes::from(vec![i; MAX_DATA_FRAME_LEN]))
            .chain([Bytes::from_static(b"tail")])
            .collect();
        let sent = (big.clone(), body.clone());
        let writer = tokio::spawn(async move {
            send.send(&StreamFrame::Trailers(sent.0)).await.unwrap();
            for chunk in sent.1 {
                send.send_data(chunk).await.unwrap();
            }
            send.finish();
            send
        });
        let got = timeout(SECS5, recv.next()).await.unwrap().unwrap();
        assert_eq!(got, Some(StreamFrame::Trailers(big)));
        for want in &body {
            let got = timeout(SECS5, recv.next()).await.unwrap().unwrap();
            assert_eq!(got, Some(StreamFrame::Data(want.clone())));
        }
        assert_eq!(timeout(SECS5, recv.next()).await.unwrap().unwrap(), None);
        assert_eq!(recv.read_size, READ_CHUNK, "a bulk body reads whole frames");
        writer.await.unwrap();
    }
}
