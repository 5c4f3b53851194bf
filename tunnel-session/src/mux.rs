//! The stream multiplexer over a tokio byte stream (TLS over TCP where UDP is blocked): the
//! reader and writer tasks, wakers and timers around the sans-io state machine
//! [`tunnel_protocol::mux`], which holds the wire format and every stream's state. What it gives
//! each stream is what QUIC gives it (bidirectional streams, FIN, RESET and STOP with codes,
//! credit-based flow control, a stream limit); this module adds keep-alive pings, an idle
//! timeout, and handles that behave like quinn's.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadBuf,
};
use tokio::sync::Notify;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tunnel_protocol::mux::{
    Chunk, Header, Mux, ProtocolError, Recv, Sent, StopState, Wake, HEADER_LEN, MAX_FRAME_PAYLOAD,
};
use tunnel_protocol::ErrorCode;

use crate::wake::WhenWoken;

pub use tunnel_protocol::mux::{Role, StreamError};

/// The writer stops gathering frames into one write at this size.
const BATCH_SIZE: usize = 64 * 1024;
/// Read buffer of the reader task.
const READ_BUFFER: usize = 64 * 1024;
/// How long the writer may take to flush the CLOSE frame and shut down once closed.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection parameters.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many streams the peer may have open concurrently (sent in SETTINGS).
    pub max_streams: u32,
    /// Interval between PINGs (clamped to 10 ms ..= 1 day).
    pub keep_alive: Duration,
    /// The connection closes when no frame arrives for this long, or when one batch of writes
    /// takes this long. Must be well above the peer's `keep_alive`.
    pub idle_timeout: Duration,
}

fn stream_error(e: StreamError) -> io::Error {
    io::Error::other(e)
}

/// The tasks waiting on a stream.
#[derive(Default)]
struct StreamWakers {
    send: Option<Waker>,
    stopped: Option<Waker>,
    recv: Option<Waker>,
}

/// The state machine and who waits on it, under one lock.
struct State {
    mux: Mux,
    streams: rustc_hash::FxHashMap<u64, StreamWakers>,
    send_credit: Vec<Waker>,
    open: Vec<Waker>,
    accept: Vec<Waker>,
}

impl State {
    fn stream(&mut self, id: u64) -> &mut StreamWakers {
        self.streams.entry(id).or_default()
    }

    /// Wakes whom a state change may unblock (a peer's CLOSE is the caller's to handle).
    fn wake(&mut self, wake: &Wake) {
        match *wake {
            Wake::Nothing | Wake::PeerClosed(_) => {}
            Wake::Recv(id) => {
                if let Some(w) = self.streams.get_mut(&id) {
                    wake_one(&mut w.recv);
                }
            }
            Wake::Send(id) => {
                if let Some(w) = self.streams.get_mut(&id) {
                    wake_one(&mut w.send);
                }
            }
            Wake::SendAndStopped(id) => {
                if let Some(w) = self.streams.get_mut(&id) {
                    wake_one(&mut w.send);
                    wake_one(&mut w.stopped);
                }
            }
            Wake::SendCredit => wake_all(&mut self.send_credit),
            Wake::Open => wake_all(&mut self.open),
            Wake::Accept => wake_all(&mut self.accept),
        }
    }

    /// Forgets a stream's wakers once the state machine has removed it.
    fn forget(&mut self, id: u64) {
        if !self.mux.has_stream(id) {
            self.streams.remove(&id);
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Cancelled once the connection is closed.
    closed: CancellationToken,
    /// Cancelled once the writer task has finished.
    drained: CancellationToken,
    /// Frames were queued: the writer has work.
    outgoing: Notify,
    remote: SocketAddr,
}

/// The lock, with the writer told about frames queued while it was held.
struct Locked<'a> {
    guard: MutexGuard<'a, State>,
    outgoing: &'a Notify,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.guard.mux.has_transmit() {
            self.outgoing.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            outgoing: &self.outgoing,
        }
    }

    /// Closes the connection once: queues `frame` as CLOSE (if any), records `reason`, fails every
    /// stream and waiter, and stops the tasks.
    fn close(&self, reason: String, frame: Option<(u32, String)>) {
        self.shut(|mux| mux.close(reason, frame));
    }

    /// Closes the connection for a protocol error by the peer (CLOSE with PROTOCOL_ERROR).
    fn protocol_error(&self, error: &ProtocolError) {
        tracing::debug!(error = %error, "mux protocol error");
        self.shut(|mux| mux.protocol_error(error));
    }

    /// Runs `close` on the state machine; if that closed the connection, wakes every waiter (to
    /// fail) and stops the tasks.
    fn shut(&self, close: impl FnOnce(&mut Mux) -> bool) {
        let mut state = self.lock();
        if !close(&mut state.mux) {
            return;
        }
        let mut wakers = Vec::new();
        wakers.append(&mut state.send_credit);
        wakers.append(&mut state.open);
        wakers.append(&mut state.accept);
        for w in state.streams.values_mut() {
            wakers.extend(w.send.take());
            wakers.extend(w.stopped.take());
            wakers.extend(w.recv.take());
        }
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        self.closed.cancel();
    }

    /// Handles one frame from the peer.
    fn on_frame(&self, header: Header, payload: BytesMut) -> Result<(), ProtocolError> {
        let mut state = self.lock();
        let wake = state.mux.handle(header, payload)?;
        if let Wake::PeerClosed(reason) = wake {
            drop(state);
            self.close(reason, None);
            return Ok(());
        }
        state.wake(&wake);
        Ok(())
    }

    /// Sends (part of) `data` on stream `id` as one DATA frame, waiting for credit.
    fn poll_send(&self, id: u64, data: &mut Bytes, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        match state.mux.send(id, data) {
            Ok(Sent::Progress) => Poll::Ready(Ok(())),
            Ok(Sent::Blocked { conn }) => {
                // Registered on the stream too, so that STOP wakes a writer blocked on
                // connection credit.
                set_waker(&mut state.stream(id).send, cx);
                if conn {
                    register(&mut state.send_credit, cx);
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(stream_error(e))),
        }
    }
}

fn wake_one(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

fn wake_all(list: &mut Vec<Waker>) {
    list.drain(..).for_each(Waker::wake);
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

/// Closes the connection when dropped, so that a task ending in any way (even a panic or a
/// runtime shutdown) never leaves the connection looking open. A no-op after a normal close.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close("connection lost: task stopped".into(), None);
    }
}

enum ReadError {
    Io(io::Error),
    Protocol(ProtocolError),
}

async fn read_frame<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<(Header, BytesMut), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await.map_err(ReadError::Io)?;
    let header = Header::decode(&header).map_err(ReadError::Protocol)?;
    debug_assert!(header.len <= MAX_FRAME_PAYLOAD);
    // Copied out of the read buffer into memory not written before: `read_exact` wants the
    // payload zeroed first (a pass over every byte received, 2 % of the relay's CPU in a
    // download), and would read a whole 64 KiB frame past the buffer, straight from TLS, which
    // zeroes its destination itself.
    let mut payload = BytesMut::with_capacity(header.len);
    while payload.len() < header.len {
        let chunk = r.fill_buf().await.map_err(ReadError::Io)?;
        if chunk.is_empty() {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let n = chunk.len().min(header.len - payload.len());
        payload.extend_from_slice(&chunk[..n]);
        r.consume(n);
    }
    Ok((header, payload))
}

async fn reader_task<R: AsyncRead + Unpin>(r: R, shared: Arc<Shared>, idle: Duration) {
    let _guard = CloseOnDrop(shared.clone());
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let closed = std::pin::pin!(shared.closed.cancelled());
    let mut closed = WhenWoken::new(closed);
    loop {
        let res = tokio::select! {
            () = &mut closed => return,
            res = timeout(idle, read_frame(&mut r)) => res,
        };
        let error = match res {
            Err(_) => "idle timeout".to_owned(),
            Ok(Err(ReadError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                "connection lost: unexpected EOF".to_owned()
            }
            Ok(Err(ReadError::Io(e))) => format!("connection lost: {e}"),
            Ok(Err(ReadError::Protocol(e))) => return shared.protocol_error(&e),
            Ok(Ok((header, payload))) => match shared.on_frame(header, payload) {
                Ok(()) if shared.closed.is_cancelled() => return,
                Ok(()) => continue,
                Err(e) => return shared.protocol_error(&e),
            },
        };
        shared.close(error, None);
        return;
    }
}

/// Moves queued frames into `batch`, up to `limit` bytes (all of them without a limit).
fn drain(shared: &Shared, batch: &mut BytesMut, limit: Option<usize>) {
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    while limit.is_none_or(|l| batch.len() < l) {
        match state.mux.poll_transmit() {
            Some(frame) => frame.encode(batch),
            None => break,
        }
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: W,
    shared: Arc<Shared>,
    keep_alive: Duration,
    write_timeout: Duration,
) {
    let _drained = shared.drained.clone().drop_guard();
    let _guard = CloseOnDrop(shared.clone());
    let mut batch = BytesMut::with_capacity(BATCH_SIZE + HEADER_LEN + MAX_FRAME_PAYLOAD);
    let mut ping = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_seq = 0u64;
    let closed = std::pin::pin!(shared.closed.cancelled());
    let mut closed = WhenWoken::new(closed);
    loop {
        drain(&shared, &mut batch, Some(BATCH_SIZE));
        if batch.is_empty() {
            // `select!` because a quiet connection must still send PINGs, and a close must stop
            // the wait; all three branches are cancel safe. A frame queued since the drain above
            // left a permit in `outgoing`, so nothing is missed.
            tokio::select! {
                biased;
                () = &mut closed => break,
                () = shared.outgoing.notified() => {}
                _ = ping.tick() => {
                    ping_seq += 1;
                    shared.lock().mux.ping(ping_seq.to_be_bytes());
                }
            }
            continue;
        }
        // `write_all_buf` advances `batch` by what was written, so after a close interrupts it
        // the rest is still written below, keeping the framing intact.
        let write = timeout(write_timeout, async {
            w.write_all_buf(&mut batch).await?;
            w.flush().await
        });
        let reason = tokio::select! {
            biased;
            () = &mut closed => break,
            res = write => match res {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => format!("connection lost: {e}"),
                Err(_) => "connection lost: write timed out".to_owned(),
            },
        };
        shared.close(reason, None);
        return;
    }
    // Closed: write what was queued before the close (CLOSE last, if we send one), then shut
    // down the write side, all bounded in time.
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, async {
        drain(&shared, &mut batch, None);
        w.write_all_buf(&mut batch).await?;
        w.flush().await?;
        w.shutdown().await
    })
    .await;
}

/// A handle keeping the connection open; the last one dropped closes it (like quinn).
struct ConnRef {
    shared: Arc<Shared>,
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        self.shared.close(
            "closed locally: all handles dropped".into(),
            Some((ErrorCode::NO_ERROR.0, String::new())),
        );
    }
}

/// A multiplexed connection. Cheap to clone. When every clone and every stream handle is
/// dropped, the connection closes with code 0.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnRef>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("remote", &self.inner.shared.remote)
            .field("close_reason", &self.close_reason())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts a connection over `io`: queues SETTINGS, spawns the reader and writer tasks
    /// (`tokio::spawn`) and returns at once.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new<IO>(io: IO, role: Role, config: Config, remote: SocketAddr) -> Connection
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mux: Mux::new(role, config.max_streams),
                streams: rustc_hash::FxHashMap::default(),
                send_credit: Vec::new(),
                open: Vec::new(),
                accept: Vec::new(),
            }),
            closed: CancellationToken::new(),
            drained: CancellationToken::new(),
            outgoing: Notify::new(),
            remote,
        });
        let (r, w) = tokio::io::split(io);
        let keep_alive = config
            .keep_alive
            .clamp(Duration::from_millis(10), Duration::from_secs(86_400));
        tokio::spawn(reader_task(r, shared.clone(), config.idle_timeout));
        tokio::spawn(writer_task(
            w,
            shared.clone(),
            keep_alive,
            config.idle_timeout,
        ));
        Connection {
            inner: Arc::new(ConnRef { shared }),
        }
    }

    fn handles(&self, id: u64) -> (SendStream, RecvStream) {
        let send = SendStream {
            conn: self.inner.clone(),
            id,
        };
        let recv = RecvStream {
            conn: self.inner.clone(),
            id,
        };
        (send, recv)
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit is reached (and for
    /// the peer's SETTINGS). Cancel safe. Fails once the connection is closed.
    pub async fn open_bi(&self) -> io::Result<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| {
            let mut state = self.inner.shared.lock();
            match state.mux.open() {
                Ok(Some(id)) => Poll::Ready(Ok(id)),
                Ok(None) => {
                    register(&mut state.open, cx);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(stream_error(e))),
            }
        })
        .await?;
        Ok(self.handles(id))
    }

    /// Waits for the next stream the peer opens. Cancel safe. Fails once the connection is closed.
    pub async fn accept_bi(&self) -> io::Result<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| {
            let mut state = self.inner.shared.lock();
            match state.mux.accept() {
                Ok(Some(id)) => Poll::Ready(Ok(id)),
                Ok(None) => {
                    register(&mut state.accept, cx);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(stream_error(e))),
            }
        })
        .await?;
        Ok(self.handles(id))
    }

    /// Closes the connection: queues CLOSE with `code` and `reason` (truncated to 256 bytes,
    /// best effort) and fails every stream and waiter at once. Idempotent.
    pub fn close(&self, code: u32, reason: &[u8]) {
        let text = tunnel_protocol::mux::truncate_reason(reason);
        let local = format!("closed locally: {code:#x} {text}")
            .trim_end()
            .to_owned();
        self.inner.shared.close(local, Some((code, text)));
    }

    /// Resolves once the connection is closed, locally, by the peer or by an error.
    pub async fn closed(&self) {
        self.inner.shared.closed.cancelled().await;
    }

    /// Resolves once the connection is closed and its writer has finished: the CLOSE frame (if
    /// any) flushed and the write side shut down, or given up after 2 seconds.
    pub async fn drained(&self) {
        self.inner.shared.drained.cancelled().await;
    }

    /// Why the connection closed (`None` while open), e.g. `closed by peer: 0x40 going away`,
    /// `closed locally: 0x0`, `connection lost: unexpected EOF`, `idle timeout` or
    /// `protocol error: …`.
    pub fn close_reason(&self) -> Option<String> {
        self.inner
            .shared
            .lock()
            .mux
            .close_reason()
            .map(str::to_owned)
    }

    /// The peer's address, as given to [`Connection::new`].
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.shared.remote
    }
}

/// The sending half of a stream. Dropping it without `finish` or `reset` finishes it.
pub struct SendStream {
    conn: Arc<ConnRef>,
    id: u64,
}

impl fmt::Debug for SendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SendStream {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Writes all of `buf` (copied), waiting for flow-control credit.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_bytes(Bytes::copy_from_slice(buf)).await
    }

    /// Writes all of `data` without copying, in DATA frames of at most 32 KiB, waiting for
    /// flow-control credit. If cancelled, a prefix of `data` may have been sent.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        let (shared, id) = (&self.conn.shared, self.id);
        loop {
            poll_fn(|cx| shared.poll_send(id, &mut data, cx)).await?;
            if data.is_empty() {
                return Ok(());
            }
        }
    }

    /// Ends this direction cleanly (FIN). Fails if already finished, reset or stopped.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut state = self.conn.shared.lock();
        state.mux.finish(self.id).map_err(stream_error)?;
        wake_one(&mut state.stream(self.id).stopped);
        Ok(())
    }

    /// Abandons this direction with `code` (RESET). A no-op if already finished or reset.
    pub fn reset(&mut self, code: u32) {
        let mut state = self.conn.shared.lock();
        if state.mux.reset(self.id, code) {
            wake_one(&mut state.stream(self.id).stopped);
        }
    }

    /// `Ok(Some(code))` once the peer sent STOP, `Ok(None)` once this side finished or reset,
    /// `Err` if the connection closed first. Cancel safe.
    pub async fn stopped(&mut self) -> io::Result<Option<u32>> {
        poll_fn(|cx| {
            let mut state = self.conn.shared.lock();
            match state.mux.stop_state(self.id) {
                Ok(StopState::Stopped(code)) => Poll::Ready(Ok(Some(code))),
                Ok(StopState::Done) => Poll::Ready(Ok(None)),
                Ok(StopState::Sending) => {
                    set_waker(&mut state.stream(self.id).stopped, cx);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(stream_error(e))),
            }
        })
        .await
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut state = self.conn.shared.lock();
        state.mux.drop_send(self.id);
        state.forget(self.id);
    }
}

/// The receiving half of a stream, read through [`AsyncRead`]. Dropping it before the end of the
/// stream stops it with code 0.
pub struct RecvStream {
    conn: Arc<ConnRef>,
    id: u64,
}

impl fmt::Debug for RecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RecvStream {
    /// The stream id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks the peer to stop sending (STOP with `code`, once) and discards buffered and future
    /// data; later reads fail with [`StreamError::Stopped`]. Fails only if the connection closed.
    pub fn stop(&mut self, code: u32) -> io::Result<()> {
        let mut state = self.conn.shared.lock();
        state.mux.stop(self.id, code).map_err(stream_error)?;
        wake_one(&mut state.stream(self.id).recv);
        Ok(())
    }

    /// The next buffered chunk (at most `max` bytes) as it arrived, without a copy; `None` at
    /// the end of the stream.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        poll_fn(|cx| {
            let id = self.id;
            let mut state = self.conn.shared.lock();
            match state.mux.read_chunk(id, max) {
                Ok(Chunk::Data(b)) => Poll::Ready(Ok(Some(b))),
                Ok(Chunk::End) => Poll::Ready(Ok(None)),
                Ok(Chunk::Blocked) => {
                    set_waker(&mut state.stream(id).recv, cx);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(stream_error(e))),
            }
        })
        .await
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut state = self.conn.shared.lock();
        let max = buf.remaining();
        match state.mux.read(id, max, |chunk| buf.put_slice(chunk)) {
            Ok(Recv::Data(_) | Recv::End) => Poll::Ready(Ok(())),
            Ok(Recv::Blocked) => {
                set_waker(&mut state.stream(id).recv, cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(stream_error(e))),
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut state = self.conn.shared.lock();
        state.mux.drop_recv(self.id);
        state.forget(self.id);
    }
}

#[cfg(test)]
pub(crate) mod tests;
