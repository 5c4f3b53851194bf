//! The visitor's stream as hyper sees it: the 408 for a request head that does not arrive in
//! time, and idle HTTP/1 connections parked without hyper.
//!
//! hyper enforces `limits.header_read_timeout` on HTTP/1 but reports it as a connection error
//! and drops the stream without an answer. [`Watched`] wraps the visitor's stream so that it
//! comes back to [`serve`](crate::ingress) when hyper lets go of it, and records whether bytes
//! of a next request had arrived: only then does the visitor get `408 Request Timeout` (an idle
//! keep-alive connection is closed quietly, as before).
//!
//! **Parking.** hyper keeps an HTTP/1 connection's 8 KiB read buffer and its state for as long
//! as the connection is open, idle or not. A keep-alive connection on which nothing happened
//! for [`PARK_AFTER`], with no request in progress, nothing unread and nothing unsent, is ended
//! as though the visitor had closed it (a read returns end of stream, which hyper takes quietly
//! between requests); the stream comes back to its slot, and the ingress waits for the
//! visitor's next bytes without hyper, then serves them with a new hyper connection. nginx
//! frees an idle keep-alive connection's buffers the same way.
//!
//! "Nothing unread" is proven from the bytes read: either the last four end a head and the last
//! request had no body, or the stream's position is exactly where the last request ended (its
//! head's end, found by scanning the head's bytes as they are read, plus its `Content-Length`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::{error_message, ProxyError};

/// How long writing the 408 may take before the connection is just closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an HTTP/1 connection idles before it is parked: long enough that a visitor sending
/// requests one after another never pays for a new hyper connection, short enough that an idle
/// one gives its buffers back soon. Looked at lazily, so a connection parks between one and two
/// of these after its last request ended.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// [`ConnState::length`] when hyper may still be reading for the last request: a body of no
/// known length (chunked), which may not have been read to its end, or a connection handed over
/// (`101 Switching Protocols`, `CONNECT`). Such a connection is not parked.
const UNKNOWN: u64 = u64::MAX;

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
    /// The last request's body length (`Content-Length`, 0 without a body), or [`UNKNOWN`].
    length: AtomicU64,
    /// Ended by parking, not by the visitor: the stream in the slot is to be served again.
    parked: AtomicBool,
}

impl ConnState {
    /// Whether the visitor has sent anything yet: a connection that has not can be dropped at
    /// shutdown at once, as there is nothing of it to finish.
    pub(crate) fn spoke(&self) -> bool {
        self.spoke.load(Ordering::Relaxed)
    }

    /// A request head was parsed; the returned guard, kept by its response body, ends it.
    /// `length`: its body's length (0 without one), or `None` when that is not known (a chunked
    /// body) or the request asks to take the connection over (`CONNECT`).
    pub(crate) fn request(self: &Arc<Self>, length: Option<u64>) -> Active {
        self.length
            .store(length.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        // Only the connection's own task begins requests: no read-modify-write needed.
        let begun = self.begun.load(Ordering::Relaxed);
        self.begun.store(begun.wrapping_add(1), Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
        self.requested.store(true, Ordering::Relaxed);
        Active(self.clone())
    }

    /// The connection was handed over to another protocol (an upgrade): it is never parked.
    pub(crate) fn upgraded(&self) {
        self.length.store(UNKNOWN, Ordering::Relaxed);
    }

    /// Whether the connection ended by parking (and forgets it).
    pub(crate) fn take_parked(&self) -> bool {
        self.parked.swap(false, Ordering::Relaxed)
    }

    /// Whether hyper is between requests with nothing of the next one read: no request active,
    /// none begun but unfinished, no byte arrived since the last one ended.
    fn idle(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
            && self.active.load(Ordering::Relaxed) == 0
            && !self.pending.load(Ordering::Relaxed)
            && self.length.load(Ordering::Relaxed) != UNKNOWN
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

impl Active {
    /// The request's answer hands the connection over (an upgrade): it is never parked.
    pub(crate) fn upgraded(&self) {
        self.0.upgraded();
    }
}

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
    back: Slot<S>,
    first_bytes: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    /// After a parked connection is served again: when its next request must have begun (what
    /// is left of the header read timeout since it went idle), and the requests begun before.
    head_by: Option<(Pin<Box<tokio::time::Sleep>>, u32)>,
    /// Parking (HTTP/1 only).
    park: Park,
    /// The last four bytes read. After a request without a body, when they end a head
    /// (`\r\n\r\n`) hyper holds no part of a next one; otherwise it may (a pipelined head cut
    /// between two reads), and the connection is not parked, which would lose that part.
    tail: [u8; 4],
    /// Where the requests on this stream begin and end, from the bytes read (see [`Framing`]).
    framing: Framing,
    /// Everything hyper wrote was flushed: it holds nothing unsent (hyper flushes its own
    /// buffer to the stream before it flushes the stream).
    flushed: bool,
}

/// Where the stream's requests begin and end, followed from the bytes read: a request with a
/// body parks only when the stream's position is exactly its end, so that hyper holds no byte of
/// the next. The end is its head's end plus its `Content-Length`; the head's end is the first
/// `\r\n\r\n` from where it began, which the reads scan for (head bytes only: a body's bytes are
/// counted, not looked at). Anything this cannot follow (a bare `\n` line end, empty lines
/// before a head, pipelined requests read before their start was known, a chunked body) loses
/// the track for the rest of the hyper connection: not parked after a body then.
#[derive(Debug)]
struct Framing {
    /// Bytes read from the stream.
    pos: u64,
    /// Where the next request's head begins, when known.
    next_head: Option<u64>,
    /// Where that head ended, once the scan found it.
    head_end: Option<u64>,
    /// [`ConnState::begun`] when last looked at.
    begun: u32,
}

impl Framing {
    fn new(begun: u32) -> Framing {
        Framing {
            pos: 0,
            next_head: Some(0),
            head_end: None,
            begun,
        }
    }

    /// Takes note of requests begun since the last look: the next head begins where the one
    /// just begun ends.
    fn sync(&mut self, state: &ConnState) {
        let begun = state.begun.load(Ordering::Relaxed);
        if begun == self.begun {
            return;
        }
        self.begun = begun;
        let length = state.length.load(Ordering::Relaxed);
        self.next_head = match self.head_end.take() {
            // Bytes past its end were read before it was known: they were not scanned (so are
            // the heads of any requests begun after it since the last look).
            Some(end) if length != UNKNOWN => {
                end.checked_add(length).filter(|&next| next >= self.pos)
            }
            _ => None,
        };
    }

    /// Scans `read`, the bytes just read after `tail` (the four before them), for the end of
    /// the head being read, and advances the position.
    fn read(&mut self, read: &[u8], tail: &[u8; 4]) {
        let at = self.pos;
        self.pos = at.saturating_add(read.len() as u64);
        let (Some(start), None) = (self.next_head, self.head_end) else {
            return;
        };
        if self.pos <= start {
            return;
        }
        // The byte at stream position `p`, if it is of this head (at or after `start`).
        let byte = |p: u64| -> Option<u8> {
            if p < start {
                None
            } else if p >= at {
                read.get(usize::try_from(p - at).ok()?).copied()
            } else {
                // One of the four bytes before this read.
                tail.get(usize::try_from(4u64.checked_sub(at - p)?).ok()?)
                    .copied()
            }
        };
        let from = usize::try_from(start.saturating_sub(at)).unwrap_or(read.len());
        if matches!(byte(start), Some(b'\r' | b'\n')) {
            // Empty lines before the request line, which hyper skips: the first `\r\n\r\n`
            // would be theirs, not the head's end. Taken for the end, a request's end would be
            // placed inside its body, and the connection could park with hyper mid-body.
            self.next_head = None;
            return;
        }
        for i in memchr::memchr_iter(b'\n', read.get(from..).unwrap_or_default()) {
            let p = at + (from + i) as u64;
            if p == 0 || byte(p - 1) != Some(b'\r') {
                // A bare `\n` (which hyper accepts as a line end): its head's end cannot be
                // told by this scan.
                self.next_head = None;
                return;
            }
            if p >= 3 && byte(p - 3) == Some(b'\r') && byte(p - 2) == Some(b'\n') {
                self.head_end = Some(p + 1);
                return;
            }
        }
    }

    /// Whether everything read ends the last request: hyper holds nothing of a next one.
    fn at_boundary(&self) -> bool {
        self.next_head == Some(self.pos)
    }
}

/// An HTTP/1 connection's idle watch.
enum Park {
    /// Not parked (HTTP/2, and connections whose protocol hyper-util tells).
    Off,
    /// No read has found the connection idle yet.
    Unarmed,
    /// A timer, looked at when a read finds nothing, and the requests begun when it was armed.
    Armed(Pin<Box<tokio::time::Sleep>>, u32),
}

/// Where a [`Watched`] stream returns to.
pub(crate) type Slot<S> = Arc<Mutex<Option<S>>>;

impl<S> Watched<S> {
    /// Wraps `stream`, whose first `until` bytes must arrive within `limit`; it lands in the
    /// returned slot once hyper drops it. `park`: parked when idle (HTTP/1).
    pub(crate) fn new(
        stream: S,
        state: Arc<ConnState>,
        limit: Duration,
        until: usize,
        park: bool,
    ) -> (Watched<S>, Slot<S>) {
        let back = Arc::new(Mutex::new(None));
        let mut watched = Watched::again(stream, state, back.clone(), park, None);
        watched.first_bytes = Some((Box::pin(tokio::time::sleep(limit)), until));
        (watched, back)
    }

    /// Wraps a parked connection's stream again, when its visitor sent more: its next request
    /// must begin by `head_by` (what is left of the header read timeout since the connection went
    /// idle, as hyper's timer would have allowed had it not been parked).
    pub(crate) fn again(
        stream: S,
        state: Arc<ConnState>,
        back: Slot<S>,
        park: bool,
        head_by: Option<tokio::time::Instant>,
    ) -> Watched<S> {
        let begun = state.begun.load(Ordering::Relaxed);
        Watched {
            inner: Some(stream),
            state,
            back,
            first_bytes: None,
            head_by: head_by.map(|at| (Box::pin(tokio::time::sleep_until(at)), begun)),
            park: if park { Park::Unarmed } else { Park::Off },
            tail: *HEAD_END,
            framing: Framing::new(begun),
            flushed: true,
        }
    }

    /// Called when a read found nothing: whether the connection has idled long enough to park
    /// (then it is marked parked). Arms the timer at the first idle read, and again when it
    /// fires after a request began.
    fn should_park(&mut self, cx: &mut Context<'_>) -> bool {
        // Not again before the next request began after the last unpark: bytes that wake the
        // wait but give hyper nothing (a part of a TLS record) would otherwise start a whole new
        // wait each time, and a visitor could hold the connection for good.
        if matches!(self.park, Park::Off)
            || self.head_by.is_some()
            || !self.flushed
            || !self.state.idle()
        {
            return false;
        }
        self.framing.sync(&self.state);
        let bodiless = self.state.length.load(Ordering::Relaxed) == 0;
        if !(self.framing.at_boundary() || (bodiless && self.tail == *HEAD_END)) {
            return false;
        }
        let begun = self.state.begun.load(Ordering::Relaxed);
        if matches!(self.park, Park::Unarmed) {
            let mut sleep = Box::pin(tokio::time::sleep(PARK_AFTER));
            // The first poll registers the timer and this task's waker, which it wakes when it
            // fires; later reads only look whether it has (a poll per read cost 300
            // instructions per request under load).
            register(sleep.as_mut(), cx);
            self.park = Park::Armed(sleep, begun);
            return false;
        }
        let Park::Armed(sleep, seen) = &mut self.park else {
            return false;
        };
        if !sleep.is_elapsed() {
            return false;
        }
        if *seen == begun {
            self.state.parked.store(true, Ordering::Relaxed);
            return true;
        }
        *seen = begun;
        sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + PARK_AFTER);
        register(sleep.as_mut(), cx);
        false
    }
}

/// The end of a request head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// Polls `sleep` once so that it registers with the timer and wakes this task: outside tokio's
/// task budget, which would otherwise make the poll return before registering anything when a
/// busy task has used its budget up.
fn register(sleep: Pin<&mut tokio::time::Sleep>, cx: &mut Context<'_>) {
    let _ = Pin::new(&mut tokio::task::unconstrained(sleep)).poll(cx);
}

/// The error a read fails with when a parked connection's next request head is not complete
/// in time: the visitor gets `408` (`is_head_timeout`), as from hyper's own timer.
#[derive(Debug)]
struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head not complete within the header read timeout")
    }
}

impl std::error::Error for HeadTimedOut {}

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
            if let Some((deadline, before)) = this.head_by.as_mut() {
                if this.state.begun.load(Ordering::Relaxed) != *before {
                    this.head_by = None;
                } else if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)));
                }
            }
            if this.should_park(cx) {
                // The end of the stream, as hyper sees it: nothing was read.
                return Poll::Ready(Ok(()));
            }
        } else if buf.filled().len() > before {
            let n = buf.filled().len() - before;
            let read = &buf.filled()[before..];
            if !matches!(this.park, Park::Off) {
                this.framing.sync(&this.state);
                this.framing.read(read, &this.tail);
            }
            if n >= 4 {
                this.tail.copy_from_slice(&read[n - 4..]);
            } else {
                this.tail.rotate_left(n);
                this.tail[4 - n..].copy_from_slice(read);
            }
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
        self.flushed = false;
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
        self.flushed = false;
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        };
        if matches!(r, Poll::Ready(Ok(()))) {
            self.flushed = true;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parked.load(Ordering::Relaxed) {
            // hyper closes what it took for the visitor's close; the stream stays open.
            return Poll::Ready(Ok(()));
        }
        match self.inner.as_mut() {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

/// Whether hyper ended a connection for its header read timeout.
pub(crate) fn is_head_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        return false;
    };
    error.is_timeout()
        || std::error::Error::source(error)
            .and_then(|e| e.downcast_ref::<io::Error>())
            .and_then(io::Error::get_ref)
            .is_some_and(|e| e.is::<HeadTimedOut>())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` to a fresh [`Framing`] as a stream's reads, with `requests` (the position
    /// after which read each request began, and its body length) noted as hyper would: after
    /// the read that completed its head. Returns whether it ends at a request boundary.
    fn follow(reads: &[&[u8]], requests: &[(usize, Option<u64>)]) -> bool {
        let state = Arc::new(ConnState::default());
        let mut framing = Framing::new(0);
        let mut tail = *HEAD_END;
        let mut actives = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            framing.sync(&state);
            framing.read(read, &tail);
            for b in read.iter() {
                tail.rotate_left(1);
                tail[3] = *b;
            }
            for (_, length) in requests.iter().filter(|(after, _)| *after == i) {
                actives.push(state.request(*length));
            }
        }
        framing.sync(&state);
        framing.at_boundary()
    }

    const HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";

    #[test]
    fn a_request_ends_at_its_head_plus_its_length() {
        assert!(follow(&[&[HEAD, b"hello"].concat()], &[(0, Some(5))]));
        // The body after the head, in pieces; the head cut inside its final `\r\n\r\n`.
        assert!(follow(
            &[&HEAD[..HEAD.len() - 1], b"\nhel", b"lo"],
            &[(1, Some(5))]
        ));
        assert!(follow(
            &[&HEAD[..HEAD.len() - 2], b"\r", b"\nhe", b"llo"],
            &[(2, Some(5))]
        ));
        // A body's bytes are not a head's: `\r\n\r\n` in it changes nothing.
        assert!(follow(&[HEAD, b"\r\n\r\n\n"], &[(0, Some(5))]));
        // Not yet its end, or past it (the start of a pipelined head read with the body).
        assert!(!follow(&[HEAD, b"hell"], &[(0, Some(5))]));
        assert!(!follow(&[&[HEAD, b"helloGET /"].concat()], &[(0, Some(5))]));
        // Two requests one after the other, the second's head read after the first's body.
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(follow(
            &[HEAD, b"hello", get],
            &[(0, Some(5)), (2, Some(0))]
        ));
        assert!(!follow(&[HEAD, b"hello", &get[..10]], &[(0, Some(5))]));
    }

    #[test]
    fn what_cannot_be_followed_is_not_a_boundary() {
        // A bare `\n` line end: the first `\r\n\r\n` is the body's, five bytes later.
        let bare = b"POST / HTTP/1.1\nContent-Length: 5\n\na\r\n\r\nGET /";
        assert!(!follow(&[bare], &[(0, Some(5))]));
        // Empty lines before the head (hyper skips them): their `\r\n\r\n` is not its end,
        // which would put the request's end inside its body (here: where 4 + its length ends).
        let n = 60;
        let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n");
        let early = [b"\r\n\r\n", head.as_bytes(), &[b'x'; 60][..n - head.len()]].concat();
        assert!(!follow(&[&early], &[(0, Some(n as u64))]));
        assert!(!follow(&[b"\r\n", &early[2..]], &[(1, Some(n as u64))]));
        // A body of unknown length.
        assert!(!follow(&[HEAD, b"hello"], &[(0, None)]));
        // Two heads parsed from one read: the second was read before where it began was known.
        let two = b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert!(!follow(&[two], &[(0, Some(0)), (0, Some(0))]));
    }
}
