//! The 408 for a request head that does not arrive in time.
//!
//! hyper enforces `limits.header_read_timeout` on HTTP/1 but reports it as a connection error
//! and drops the stream without an answer. [`Watched`] wraps the visitor's stream so that it
//! comes back to [`serve`](crate::ingress) when hyper lets go of it, and records whether bytes
//! of a next request had arrived: only then does the visitor get `408 Request Timeout` (an idle
//! keep-alive connection is closed quietly, as before).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::{error_message, ProxyError};

/// How long writing the 408 may take before the connection is just closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the connection's reads and its requests tell each other.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests whose responses are still being sent.
    active: AtomicU32,
    /// Bytes arrived while no request was active: the start of a next request head.
    pending: AtomicBool,
    /// Any byte arrived on the connection.
    spoke: AtomicBool,
    /// A request head was parsed: from here on hyper's own timers govern the connection.
    requested: AtomicBool,
    /// Requests begun on the connection, ever (wrapping): an idle watch that sees it unchanged
    /// and none active knows that nothing happened in between.
    begun: AtomicU32,
}

impl ConnState {
    /// Whether the visitor has sent anything yet: a connection that has not can be dropped at
    /// shutdown at once, as there is nothing of it to finish.
    pub(crate) fn spoke(&self) -> bool {
        self.spoke.load(Ordering::Relaxed)
    }

    /// A request head was parsed; the returned guard, kept by its response body, ends it.
    pub(crate) fn request(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        // Only the connection's own task begins requests: no read-modify-write needed.
        let begun = self.begun.load(Ordering::Relaxed);
        self.begun.store(begun.wrapping_add(1), Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
        self.requested.store(true, Ordering::Relaxed);
        Active(self.clone())
    }

    /// What an idle watch compares between two looks: requests begun, and whether one is
    /// still active.
    pub(crate) fn activity(&self) -> (u32, bool) {
        (
            self.begun.load(Ordering::Relaxed),
            self.active.load(Ordering::Relaxed) > 0,
        )
    }
}

/// One request in progress on a watched connection.
#[derive(Debug)]
pub(crate) struct Active(Arc<ConnState>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request (for [`ConnState`]) when hyper drops it.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _active: Active,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, active: Active) -> Tracked<B> {
        Tracked {
            inner,
            _active: active,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The visitor's stream as hyper sees it; dropping it hands the stream back to its slot.
///
/// It also fails a read when the first `until` bytes have not arrived within the header read
/// timeout. hyper's own timer covers a request head once hyper reads one; before that, a
/// connection that never sends anything (TLS, where no peek came first), or where hyper-util
/// reads the first 24 bytes to tell HTTP/1 from HTTP/2 and gets fewer, would otherwise hold its
/// slot for good.
pub(crate) struct Watched<S> {
    inner: Option<S>,
    state: Arc<ConnState>,
    back: Arc<Mutex<Option<S>>>,
    first_bytes: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

/// Where a [`Watched`] stream returns to.
pub(crate) type Slot<S> = Arc<Mutex<Option<S>>>;

impl<S> Watched<S> {
    /// Wraps `stream`, whose first `until` bytes must arrive within `limit`; it lands in the
    /// returned slot once hyper drops it.
    pub(crate) fn new(
        stream: S,
        state: Arc<ConnState>,
        limit: Duration,
        until: usize,
    ) -> (Watched<S>, Slot<S>) {
        let back = Arc::new(Mutex::new(None));
        (
            Watched {
                inner: Some(stream),
                state,
                back: back.clone(),
                first_bytes: Some((Box::pin(tokio::time::sleep(limit)), until)),
            },
            back,
        )
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        if let Some(s) = self.inner.take() {
            *self.back.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        }
    }
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let before = buf.filled().len();
        let r = Pin::new(inner).poll_read(cx, buf);
        if r.is_pending() {
            if this.state.requested.load(Ordering::Relaxed) {
                this.first_bytes = None;
            }
            if let Some((deadline, _)) = this.first_bytes.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header read timeout",
                    )));
                }
            }
        } else if buf.filled().len() > before {
            let n = buf.filled().len() - before;
            if let Some((_, until)) = this.first_bytes.as_mut() {
                *until = until.saturating_sub(n);
                if *until == 0 {
                    this.first_bytes = None;
                }
            }
            this.state.spoke.store(true, Ordering::Relaxed);
            if this.state.active.load(Ordering::Relaxed) == 0 {
                this.state.pending.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

/// Whether hyper ended a connection for its header read timeout.
pub(crate) fn is_head_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

/// After hyper ended the connection on the header read timeout: when a request had begun,
/// answers `408` on the returned stream and closes it.
pub(crate) async fn answer<S: AsyncWrite + Unpin>(
    state: &ConnState,
    slot: &Slot<S>,
    limit: Duration,
) {
    if !state.pending.load(Ordering::Relaxed) {
        return;
    }
    let Some(mut stream) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let request_id = crate::audit::request_id();
    let response = error_message(&ProxyError::HeadTimeout(limit), &request_id);
    let bytes = serialize(response);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// An HTTP/1.1 response with its body, as bytes, closing the connection.
fn serialize(response: http::Response<Bytes>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == http::header::CONNECTION || name == http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}
