//! A stream multiplexer over one ordered byte stream (TLS over TCP where UDP is blocked), giving
//! each stream the QUIC semantics the session code relies on: bidirectional streams, FIN, RESET
//! and STOP with codes, per-stream and per-connection credit-based flow control, a stream count
//! limit, keep-alive pings, an idle timeout and a connection CLOSE with code and reason.
//!
//! # Wire format
//!
//! Every frame is `type: u8 | stream id: u64 BE | payload length: u32 BE | payload`: a 13-byte
//! header and at most [`MAX_FRAME_PAYLOAD`] (64 KiB) of payload; a larger length is a protocol
//! error. Integers are big-endian.
//!
//! | type | name     | id     | payload                                                        |
//! |------|----------|--------|----------------------------------------------------------------|
//! | 0    | SETTINGS | 0      | `max_streams: u32`: streams the peer may open concurrently     |
//! | 1    | OPEN     | stream | empty: the sender opens the stream                             |
//! | 2    | DATA     | stream | stream bytes, non-empty (sent in frames of at most 32 KiB)     |
//! | 3    | FIN      | stream | empty: the sender's direction ends cleanly                     |
//! | 4    | RESET    | stream | `code: u32`: the sender abandons its direction                 |
//! | 5    | STOP     | stream | `code: u32`: the receiver asks the sender to stop sending      |
//! | 6    | WINDOW   | any    | `increment: u32`: more send credit (id 0: connection level)    |
//! | 7    | STREAMS  | 0      | `increment: u32`: the peer may open that many more streams     |
//! | 8    | PING     | 0      | 8 opaque bytes                                                 |
//! | 9    | PONG     | 0      | the 8 bytes of the PING it answers                             |
//! | 10   | CLOSE    | 0      | `code: u32`, then a UTF-8 reason of at most 256 bytes          |
//!
//! - Each side sends SETTINGS at once, without waiting for the peer's; any other first frame, a
//!   second SETTINGS, an unknown type or a malformed payload is a protocol error.
//! - The dialer opens odd stream ids (1, 3, 5…), the acceptor even ones (2, 4, 6…), each greater
//!   than the previous one it opened. A peer opening more streams than allowed is a protocol error.
//!   The allowance starts at the receiver's `max_streams` and grows by one STREAMS credit each time
//!   the receiver is done with a stream the peer opened (both local handles dropped).
//! - Flow control: each direction of each stream starts with [`STREAM_WINDOW`] (1 MiB) of credit,
//!   each direction of the connection with [`CONN_WINDOW`] (16 MiB). DATA of n bytes consumes n of
//!   both. The receiver returns credit with WINDOW once the application has consumed at least an
//!   eighth of a window since the last update (and returns connection credit for data it discards). Sending
//!   beyond the credit, or granting credit beyond the initial window, is a protocol error.
//! - A STOP is answered by a RESET with the same code. Frames for a stream that was already
//!   removed are ignored (DATA is discarded and credited back); frames for a stream id that was
//!   never opened are a protocol error.
//! - PING is answered by PONG. Each side pings every `keep_alive` and closes the connection when
//!   nothing arrives for `idle_timeout`.
//! - After CLOSE the sender shuts down its write side. On a protocol error a side sends CLOSE with
//!   code [`ErrorCode::PROTOCOL_ERROR`] and a reason, then closes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tunnel_protocol::ErrorCode;

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

const T_SETTINGS: u8 = 0;
const T_OPEN: u8 = 1;
const T_DATA: u8 = 2;
const T_FIN: u8 = 3;
const T_RESET: u8 = 4;
const T_STOP: u8 = 5;
const T_WINDOW: u8 = 6;
const T_STREAMS: u8 = 7;
const T_PING: u8 = 8;
const T_PONG: u8 = 9;
const T_CLOSE: u8 = 10;

/// The writer stops gathering frames into one write at this size.
const BATCH_SIZE: usize = 64 * 1024;
/// Read buffer of the reader task.
const READ_BUFFER: usize = 64 * 1024;
/// How long the writer may take to flush the CLOSE frame and shut down once closed.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// DATA payloads smaller than this are appended to the previous buffered chunk, so that tiny frames
/// cannot make per-chunk overhead dwarf the flow-control bound.
const SMALL_CHUNK: usize = 4096;
/// Small payloads are not appended to a chunk this large or larger.
const MAX_MERGED: usize = 64 * 1024;

/// Which end of the byte stream this side is; decides the parity of the stream ids it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed; opens odd stream ids.
    Dialer,
    /// The side that accepted; opens even stream ids.
    Acceptor,
}

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

/// Why a stream operation failed; carried inside the `io::Error`s of stream methods.
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

fn stream_error(e: StreamError) -> io::Error {
    io::Error::other(e)
}

/// A frame queued for the writer task.
enum Frame {
    Settings(u32),
    Open(u64),
    Data(u64, Bytes),
    Fin(u64),
    Reset(u64, u32),
    Stop(u64, u32),
    Window(u64, u32),
    Streams(u32),
    Ping([u8; 8]),
    Pong([u8; 8]),
    Close(u32, String),
}

impl Frame {
    fn encode(&self, out: &mut BytesMut) {
        fn put(out: &mut BytesMut, ty: u8, id: u64, payload: &[u8]) {
            out.put_u8(ty);
            out.put_u64(id);
            out.put_u32(payload.len() as u32);
            out.put_slice(payload);
        }
        match self {
            Frame::Settings(n) => put(out, T_SETTINGS, 0, &n.to_be_bytes()),
            Frame::Open(id) => put(out, T_OPEN, *id, &[]),
            Frame::Data(id, data) => put(out, T_DATA, *id, data),
            Frame::Fin(id) => put(out, T_FIN, *id, &[]),
            Frame::Reset(id, code) => put(out, T_RESET, *id, &code.to_be_bytes()),
            Frame::Stop(id, code) => put(out, T_STOP, *id, &code.to_be_bytes()),
            Frame::Window(id, inc) => put(out, T_WINDOW, *id, &inc.to_be_bytes()),
            Frame::Streams(inc) => put(out, T_STREAMS, 0, &inc.to_be_bytes()),
            Frame::Ping(p) => put(out, T_PING, 0, p),
            Frame::Pong(p) => put(out, T_PONG, 0, p),
            Frame::Close(code, reason) => {
                out.put_u8(T_CLOSE);
                out.put_u64(0);
                out.put_u32(4 + reason.len() as u32);
                out.put_u32(*code);
                out.put_slice(reason.as_bytes());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    Open,
    Finished,
    Reset,
    /// The peer sent STOP and we answered with RESET.
    Stopped(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvState {
    Open,
    /// FIN received; buffered data may remain.
    Fin,
    Reset(u32),
    /// We stopped reading (STOP sent unless the peer had already finished).
    Stopped(u32),
}

struct StreamState {
    send: SendState,
    send_credit: u64,
    stop_code: Option<u32>,
    send_waker: Option<Waker>,
    stopped_waker: Option<Waker>,
    recv: RecvState,
    recv_buf: VecDeque<BytesMut>,
    recv_buffered: u64,
    recv_received: u64,
    recv_limit: u64,
    recv_unacked: u64,
    recv_waker: Option<Waker>,
    send_handle: bool,
    recv_handle: bool,
}

impl StreamState {
    fn new() -> StreamState {
        StreamState {
            send: SendState::Open,
            send_credit: STREAM_WINDOW,
            stop_code: None,
            send_waker: None,
            stopped_waker: None,
            recv: RecvState::Open,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_received: 0,
            recv_limit: STREAM_WINDOW,
            recv_unacked: 0,
            recv_waker: None,
            send_handle: true,
            recv_handle: true,
        }
    }

    /// The application consumed `n` buffered bytes: return credit when an eighth of a window is due.
    fn consumed(&mut self, id: u64, n: u64, conn: &mut ConnState) {
        self.recv_buffered = self.recv_buffered.saturating_sub(n);
        if self.recv == RecvState::Open {
            self.recv_unacked += n;
            if self.recv_unacked >= STREAM_WINDOW / 8 {
                let inc = u32::try_from(self.recv_unacked).unwrap_or(u32::MAX);
                conn.send(Frame::Window(id, inc));
                self.recv_limit += u64::from(inc);
                self.recv_unacked -= u64::from(inc);
            }
        }
        conn.credit(n);
    }

    /// Drops buffered data, crediting it back at the connection level.
    fn discard_buffer(&mut self, conn: &mut ConnState) {
        self.recv_buf.clear();
        conn.credit(std::mem::take(&mut self.recv_buffered));
    }

    /// Stops the receive side: STOP if the peer may still send, buffer released.
    fn stop(&mut self, id: u64, code: u32, conn: &mut ConnState) {
        if let RecvState::Stopped(_) = self.recv {
            return;
        }
        if self.recv == RecvState::Open {
            conn.send(Frame::Stop(id, code));
        }
        self.recv = RecvState::Stopped(code);
        self.discard_buffer(conn);
        wake(&mut self.recv_waker);
    }

    fn wakers(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.send_waker.take());
        out.extend(self.stopped_waker.take());
        out.extend(self.recv_waker.take());
    }
}

struct ConnState {
    role: Role,
    tx: mpsc::UnboundedSender<Frame>,
    closed: Option<String>,
    got_settings: bool,
    send_credit: u64,
    send_waiters: Vec<Waker>,
    recv_received: u64,
    recv_limit: u64,
    recv_pending: u64,
    next_local_id: u64,
    local_opened: u64,
    local_allowed: u64,
    open_waiters: Vec<Waker>,
    last_peer_id: u64,
    peer_opened: u64,
    peer_allowed: u64,
    accept_queue: VecDeque<u64>,
    accept_waiters: Vec<Waker>,
}

impl ConnState {
    /// Queues a frame unless closed. Called under the lock, so frames follow state changes.
    fn send(&self, frame: Frame) {
        if self.closed.is_none() {
            let _ = self.tx.send(frame);
        }
    }

    /// `n` received bytes left the connection's buffers: return credit when an eighth of the window
    /// is due (as quinn does), so a few unread streams cannot starve the others for long.
    fn credit(&mut self, n: u64) {
        self.recv_pending += n;
        if self.recv_pending >= CONN_WINDOW / 8 {
            let inc = u32::try_from(self.recv_pending).unwrap_or(u32::MAX);
            self.send(Frame::Window(0, inc));
            self.recv_limit += u64::from(inc);
            self.recv_pending -= u64::from(inc);
        }
    }

    fn is_local(&self, id: u64) -> bool {
        (id % 2 == 1) == (self.role == Role::Dialer)
    }

    /// Whether `id` was opened at some point (so frames for it may legitimately still arrive).
    fn seen(&self, id: u64) -> bool {
        id != 0
            && if self.is_local(id) {
                id < self.next_local_id
            } else {
                id <= self.last_peer_id
            }
    }

    fn closed_error(&self) -> io::Error {
        let reason = self.closed.clone().unwrap_or_else(|| "stream gone".into());
        stream_error(StreamError::Closed(reason))
    }
}

struct State {
    streams: HashMap<u64, StreamState>,
    conn: ConnState,
}

impl State {
    /// A handle of stream `id` is gone; removes the stream once both are.
    fn release(&mut self, id: u64, send_side: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if send_side {
            s.send_handle = false;
        } else {
            s.recv_handle = false;
        }
        if !s.send_handle && !s.recv_handle {
            self.streams.remove(&id);
            if !self.conn.is_local(id) {
                self.conn.peer_allowed += 1;
                self.conn.send(Frame::Streams(1));
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Cancelled once the connection is closed.
    closed: CancellationToken,
    /// Cancelled once the writer task has finished.
    drained: CancellationToken,
    pong_pending: AtomicBool,
    remote: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the connection once: queues `frame` as CLOSE (if any), records `reason`, fails every
    /// stream and waiter, and stops the tasks.
    fn close(&self, reason: String, frame: Option<(u32, String)>) {
        let mut guard = self.lock();
        let conn = &mut guard.conn;
        if conn.closed.is_some() {
            return;
        }
        if let Some((code, text)) = frame {
            let _ = conn.tx.send(Frame::Close(code, text));
        }
        conn.closed = Some(reason);
        conn.accept_queue.clear();
        let mut wakers = Vec::new();
        wakers.append(&mut conn.send_waiters);
        wakers.append(&mut conn.open_waiters);
        wakers.append(&mut conn.accept_waiters);
        let mut streams = std::mem::take(&mut guard.streams);
        // A stream whose whole message has arrived (FIN) stays readable: closing right after the
        // peer finished its last response must not truncate what is already here.
        let complete: Vec<u64> = streams
            .iter()
            .filter(|(_, s)| s.recv == RecvState::Fin)
            .map(|(id, _)| *id)
            .collect();
        for id in complete {
            if let Some(mut s) = streams.remove(&id) {
                // Its writers and `stopped` waiters must learn of the close.
                wakers.extend(s.send_waker.take());
                wakers.extend(s.stopped_waker.take());
                guard.streams.insert(id, s);
            }
        }
        drop(guard);
        for s in streams.values_mut() {
            s.wakers(&mut wakers);
        }
        drop(streams);
        wakers.into_iter().for_each(Waker::wake);
        self.closed.cancel();
    }

    /// Handles one frame from the peer. `Err` is a protocol error.
    fn on_frame(&self, frame: RawFrame) -> Result<Next, String> {
        let RawFrame { ty, id, payload } = frame;
        let mut guard = self.lock();
        let State { streams, conn } = &mut *guard;
        if conn.closed.is_some() {
            return Ok(Next::Continue);
        }
        if !conn.got_settings && ty != T_SETTINGS {
            return Err(format!("first frame has type {ty:#x}, not SETTINGS"));
        }
        let conn_frame = matches!(ty, T_SETTINGS | T_STREAMS | T_PING | T_PONG | T_CLOSE);
        if conn_frame && id != 0 {
            return Err(format!("frame type {ty:#x} on stream {id}"));
        }
        if !conn_frame && ty != T_WINDOW && id == 0 {
            return Err(format!("frame type {ty:#x} on stream 0"));
        }
        match ty {
            T_SETTINGS => {
                if conn.got_settings {
                    return Err("second SETTINGS".into());
                }
                conn.local_allowed = u64::from(payload_u32(&payload, "SETTINGS")?);
                conn.got_settings = true;
                wake_all(&mut conn.open_waiters);
            }
            T_OPEN => {
                expect_len(&payload, 0, "OPEN")?;
                if conn.is_local(id) || id <= conn.last_peer_id {
                    return Err(format!("OPEN with invalid stream id {id}"));
                }
                if conn.peer_opened >= conn.peer_allowed {
                    return Err("peer opened more streams than allowed".into());
                }
                conn.last_peer_id = id;
                conn.peer_opened += 1;
                streams.insert(id, StreamState::new());
                conn.accept_queue.push_back(id);
                wake_all(&mut conn.accept_waiters);
            }
            T_DATA => {
                let n = payload.len() as u64;
                if n == 0 {
                    return Err(format!("empty DATA on stream {id}"));
                }
                let stream = lookup(streams, conn, id, "DATA")?;
                if conn.recv_received + n > conn.recv_limit {
                    return Err("flow control: connection window exceeded".into());
                }
                conn.recv_received += n;
                let Some(s) = stream else {
                    conn.credit(n);
                    return Ok(Next::Continue);
                };
                match s.recv {
                    RecvState::Open => {
                        if s.recv_received + n > s.recv_limit {
                            return Err(format!("flow control: stream {id} window exceeded"));
                        }
                        s.recv_received += n;
                        s.recv_buffered += n;
                        match s.recv_buf.back_mut() {
                            Some(back)
                                if payload.len() < SMALL_CHUNK && back.len() < MAX_MERGED =>
                            {
                                back.extend_from_slice(&payload);
                            }
                            _ => s.recv_buf.push_back(payload),
                        }
                        wake(&mut s.recv_waker);
                    }
                    RecvState::Stopped(_) => conn.credit(n),
                    RecvState::Fin | RecvState::Reset(_) => {
                        return Err(format!("DATA after FIN or RESET on stream {id}"));
                    }
                }
            }
            T_FIN => {
                expect_len(&payload, 0, "FIN")?;
                if let Some(s) = lookup(streams, conn, id, "FIN")? {
                    if s.recv == RecvState::Open {
                        s.recv = RecvState::Fin;
                        wake(&mut s.recv_waker);
                    }
                }
            }
            T_RESET => {
                let code = payload_u32(&payload, "RESET")?;
                if let Some(s) = lookup(streams, conn, id, "RESET")? {
                    if matches!(s.recv, RecvState::Open | RecvState::Fin) {
                        s.recv = RecvState::Reset(code);
                        s.discard_buffer(conn);
                        wake(&mut s.recv_waker);
                    }
                }
            }
            T_STOP => {
                let code = payload_u32(&payload, "STOP")?;
                if let Some(s) = lookup(streams, conn, id, "STOP")? {
                    if s.stop_code.is_none() {
                        s.stop_code = Some(code);
                        if s.send == SendState::Open {
                            s.send = SendState::Stopped(code);
                            conn.send(Frame::Reset(id, code));
                        }
                        wake(&mut s.send_waker);
                        wake(&mut s.stopped_waker);
                    }
                }
            }
            T_WINDOW => {
                let inc = u64::from(payload_u32(&payload, "WINDOW")?);
                if id == 0 {
                    if conn.send_credit + inc > CONN_WINDOW {
                        return Err("flow control: connection credit above the window".into());
                    }
                    conn.send_credit += inc;
                    wake_all(&mut conn.send_waiters);
                } else if let Some(s) = lookup(streams, conn, id, "WINDOW")? {
                    if s.send_credit + inc > STREAM_WINDOW {
                        return Err(format!("flow control: stream {id} credit above the window"));
                    }
                    s.send_credit += inc;
                    wake(&mut s.send_waker);
                }
            }
            T_STREAMS => {
                let inc = payload_u32(&payload, "STREAMS")?;
                conn.local_allowed = conn.local_allowed.saturating_add(u64::from(inc));
                wake_all(&mut conn.open_waiters);
            }
            T_PING => {
                let ping = payload_8(&payload, "PING")?;
                if !self.pong_pending.swap(true, Ordering::AcqRel) {
                    conn.send(Frame::Pong(ping));
                }
            }
            T_PONG => {
                payload_8(&payload, "PONG")?;
            }
            T_CLOSE => {
                if payload.len() < 4 || payload.len() > 4 + MAX_REASON_LEN {
                    return Err(format!("CLOSE payload of {} bytes", payload.len()));
                }
                let mut p = &payload[..];
                let code = p.get_u32();
                let reason = String::from_utf8_lossy(p);
                return Ok(Next::PeerClosed(
                    format!("closed by peer: {code:#x} {reason}")
                        .trim_end()
                        .to_owned(),
                ));
            }
            _ => return Err(format!("unknown frame type {ty:#x}")),
        }
        Ok(Next::Continue)
    }

    /// Sends (part of) `data` on stream `id` as one DATA frame, waiting for credit.
    fn poll_send(&self, id: u64, data: &mut Bytes, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.lock();
        let State { streams, conn } = &mut *guard;
        let Some(s) = streams.get_mut(&id) else {
            return Poll::Ready(Err(conn.closed_error()));
        };
        // A stream kept readable after a close (its FIN had arrived) can no longer send.
        if conn.closed.is_some() {
            return Poll::Ready(Err(conn.closed_error()));
        }
        match s.send {
            SendState::Open => {}
            SendState::Stopped(code) => {
                return Poll::Ready(Err(stream_error(StreamError::Stopped(code))))
            }
            SendState::Finished | SendState::Reset => {
                return Poll::Ready(Err(stream_error(StreamError::Finished)))
            }
        }
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if s.send_credit == 0 || conn.send_credit == 0 {
            // Registered here too so that STOP wakes a writer blocked on connection credit.
            set_waker(&mut s.send_waker, cx);
            if conn.send_credit == 0 {
                register(&mut conn.send_waiters, cx);
            }
            return Poll::Pending;
        }
        let n = (data.len() as u64)
            .min(MAX_DATA_CHUNK as u64)
            .min(s.send_credit)
            .min(conn.send_credit);
        let chunk = data.split_to(n as usize);
        s.send_credit -= n;
        conn.send_credit -= n;
        conn.send(Frame::Data(id, chunk));
        Poll::Ready(Ok(()))
    }
}

enum Next {
    Continue,
    PeerClosed(String),
}

/// The stream's state if it is live, `None` if it was removed, `Err` if it was never opened.
fn lookup<'a>(
    streams: &'a mut HashMap<u64, StreamState>,
    conn: &ConnState,
    id: u64,
    what: &str,
) -> Result<Option<&'a mut StreamState>, String> {
    match streams.get_mut(&id) {
        Some(s) => Ok(Some(s)),
        None if conn.seen(id) => Ok(None),
        None => Err(format!("{what} for unknown stream {id}")),
    }
}

fn expect_len(payload: &[u8], len: usize, what: &str) -> Result<(), String> {
    if payload.len() == len {
        Ok(())
    } else {
        Err(format!(
            "{what} payload of {} bytes, expected {len}",
            payload.len()
        ))
    }
}

fn payload_u32(payload: &[u8], what: &str) -> Result<u32, String> {
    expect_len(payload, 4, what)?;
    Ok((&payload[..]).get_u32())
}

fn payload_8(payload: &[u8], what: &str) -> Result<[u8; 8], String> {
    expect_len(payload, 8, what)?;
    let mut out = [0; 8];
    out.copy_from_slice(payload);
    Ok(out)
}

fn wake(slot: &mut Option<Waker>) {
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

fn truncate_reason(reason: &[u8]) -> String {
    let text = String::from_utf8_lossy(reason);
    let mut end = text.len().min(MAX_REASON_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Closes the connection when dropped, so that a task ending in any way (even a panic or a
/// runtime shutdown) never leaves the connection looking open. A no-op after a normal close.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close("connection lost: task stopped".into(), None);
    }
}

struct RawFrame {
    ty: u8,
    id: u64,
    payload: BytesMut,
}

enum ReadError {
    Io(io::Error),
    Protocol(String),
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<RawFrame, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header).await.map_err(ReadError::Io)?;
    let mut h = &header[..];
    let (ty, id, len) = (h.get_u8(), h.get_u64(), h.get_u32() as usize);
    if ty > T_CLOSE {
        return Err(ReadError::Protocol(format!("unknown frame type {ty:#x}")));
    }
    if len > MAX_FRAME_PAYLOAD {
        return Err(ReadError::Protocol(format!(
            "frame payload of {len} bytes exceeds {MAX_FRAME_PAYLOAD}"
        )));
    }
    let mut payload = BytesMut::zeroed(len);
    r.read_exact(&mut payload).await.map_err(ReadError::Io)?;
    Ok(RawFrame { ty, id, payload })
}

async fn reader_task<R: AsyncRead + Unpin>(r: R, shared: Arc<Shared>, idle: Duration) {
    let _guard = CloseOnDrop(shared.clone());
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    loop {
        let res = tokio::select! {
            () = shared.closed.cancelled() => return,
            res = timeout(idle, read_frame(&mut r)) => res,
        };
        let error = match res {
            Err(_) => "idle timeout".to_owned(),
            Ok(Err(ReadError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                "connection lost: unexpected EOF".to_owned()
            }
            Ok(Err(ReadError::Io(e))) => format!("connection lost: {e}"),
            Ok(Err(ReadError::Protocol(msg))) => return protocol_error(&shared, msg),
            Ok(Ok(frame)) => match shared.on_frame(frame) {
                Ok(Next::Continue) => continue,
                Ok(Next::PeerClosed(reason)) => reason,
                Err(msg) => return protocol_error(&shared, msg),
            },
        };
        shared.close(error, None);
        return;
    }
}

fn protocol_error(shared: &Shared, msg: String) {
    tracing::debug!(error = %msg, "mux protocol error");
    shared.close(
        format!("protocol error: {msg}"),
        Some((ErrorCode::PROTOCOL_ERROR.0, truncate_reason(msg.as_bytes()))),
    );
}

async fn writer_task<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Frame>,
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
    let encode = |frame: Frame, batch: &mut BytesMut| {
        if let Frame::Pong(_) = frame {
            shared.pong_pending.store(false, Ordering::Release);
        }
        frame.encode(batch);
    };
    loop {
        if batch.is_empty() {
            // `select!` because a quiet connection must still send PINGs, and a close must stop
            // the wait; all three branches are cancel safe.
            tokio::select! {
                biased;
                () = shared.closed.cancelled() => break,
                frame = rx.recv() => match frame {
                    Some(frame) => encode(frame, &mut batch),
                    None => break,
                },
                _ = ping.tick() => {
                    ping_seq += 1;
                    encode(Frame::Ping(ping_seq.to_be_bytes()), &mut batch);
                }
            }
            while batch.len() < BATCH_SIZE {
                match rx.try_recv() {
                    Ok(frame) => encode(frame, &mut batch),
                    Err(_) => break,
                }
            }
        }
        // `write_all_buf` advances `batch` by what was written, so after a close interrupts it
        // the rest is still written below, keeping the framing intact.
        let write = timeout(write_timeout, async {
            w.write_all_buf(&mut batch).await?;
            w.flush().await
        });
        let reason = tokio::select! {
            biased;
            () = shared.closed.cancelled() => break,
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
        while let Ok(frame) = rx.try_recv() {
            encode(frame, &mut batch);
        }
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
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Frame::Settings(config.max_streams));
        let conn = ConnState {
            role,
            tx,
            closed: None,
            got_settings: false,
            send_credit: CONN_WINDOW,
            send_waiters: Vec::new(),
            recv_received: 0,
            recv_limit: CONN_WINDOW,
            recv_pending: 0,
            next_local_id: if role == Role::Dialer { 1 } else { 2 },
            local_opened: 0,
            local_allowed: 0,
            open_waiters: Vec::new(),
            last_peer_id: 0,
            peer_opened: 0,
            peer_allowed: u64::from(config.max_streams),
            accept_queue: VecDeque::new(),
            accept_waiters: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                conn,
            }),
            closed: CancellationToken::new(),
            drained: CancellationToken::new(),
            pong_pending: AtomicBool::new(false),
            remote,
        });
        let (r, w) = tokio::io::split(io);
        let keep_alive = config
            .keep_alive
            .clamp(Duration::from_millis(10), Duration::from_secs(86_400));
        tokio::spawn(reader_task(r, shared.clone(), config.idle_timeout));
        tokio::spawn(writer_task(
            w,
            rx,
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
            let mut guard = self.inner.shared.lock();
            let State { streams, conn } = &mut *guard;
            if conn.closed.is_some() {
                return Poll::Ready(Err(conn.closed_error()));
            }
            if conn.local_opened >= conn.local_allowed {
                register(&mut conn.open_waiters, cx);
                return Poll::Pending;
            }
            let id = conn.next_local_id;
            conn.next_local_id += 2;
            conn.local_opened += 1;
            streams.insert(id, StreamState::new());
            conn.send(Frame::Open(id));
            Poll::Ready(Ok(id))
        })
        .await?;
        Ok(self.handles(id))
    }

    /// Waits for the next stream the peer opens. Cancel safe. Fails once the connection is closed.
    pub async fn accept_bi(&self) -> io::Result<(SendStream, RecvStream)> {
        let id = poll_fn(|cx| {
            let mut guard = self.inner.shared.lock();
            let conn = &mut guard.conn;
            if conn.closed.is_some() {
                return Poll::Ready(Err(conn.closed_error()));
            }
            match conn.accept_queue.pop_front() {
                Some(id) => Poll::Ready(Ok(id)),
                None => {
                    register(&mut conn.accept_waiters, cx);
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(self.handles(id))
    }

    /// Closes the connection: queues CLOSE with `code` and `reason` (truncated to 256 bytes,
    /// best effort) and fails every stream and waiter at once. Idempotent.
    pub fn close(&self, code: u32, reason: &[u8]) {
        let text = truncate_reason(reason);
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
        self.inner.shared.lock().conn.closed.clone()
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
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        let Some(s) = streams.get_mut(&self.id) else {
            return Err(conn.closed_error());
        };
        if conn.closed.is_some() {
            return Err(conn.closed_error());
        }
        match s.send {
            SendState::Open => {
                s.send = SendState::Finished;
                conn.send(Frame::Fin(self.id));
                wake(&mut s.stopped_waker);
                Ok(())
            }
            SendState::Stopped(code) => Err(stream_error(StreamError::Stopped(code))),
            SendState::Finished | SendState::Reset => Err(stream_error(StreamError::Finished)),
        }
    }

    /// Abandons this direction with `code` (RESET). A no-op if already finished or reset.
    pub fn reset(&mut self, code: u32) {
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        if let Some(s) = streams.get_mut(&self.id) {
            if s.send == SendState::Open {
                s.send = SendState::Reset;
                conn.send(Frame::Reset(self.id, code));
                wake(&mut s.stopped_waker);
            }
        }
    }

    /// `Ok(Some(code))` once the peer sent STOP, `Ok(None)` once this side finished or reset,
    /// `Err` if the connection closed first. Cancel safe.
    pub async fn stopped(&mut self) -> io::Result<Option<u32>> {
        poll_fn(|cx| {
            let mut guard = self.conn.shared.lock();
            let State { streams, conn } = &mut *guard;
            let Some(s) = streams.get_mut(&self.id) else {
                return Poll::Ready(Err(conn.closed_error()));
            };
            if let Some(code) = s.stop_code {
                return Poll::Ready(Ok(Some(code)));
            }
            if conn.closed.is_some() && s.send == SendState::Open {
                return Poll::Ready(Err(conn.closed_error()));
            }
            if let Some(code) = s.stop_code {
                return Poll::Ready(Ok(Some(code)));
            }
            if s.send != SendState::Open {
                return Poll::Ready(Ok(None));
            }
            set_waker(&mut s.stopped_waker, cx);
            Poll::Pending
        })
        .await
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        if let Some(s) = streams.get_mut(&self.id) {
            if s.send == SendState::Open {
                s.send = SendState::Finished;
                conn.send(Frame::Fin(self.id));
            }
        }
        guard.release(self.id, true);
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
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        let Some(s) = streams.get_mut(&self.id) else {
            return Err(conn.closed_error());
        };
        s.stop(self.id, code, conn);
        Ok(())
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        let Some(s) = streams.get_mut(&id) else {
            return Poll::Ready(Err(conn.closed_error()));
        };
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if s.recv_buffered > 0 {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = s.recv_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    s.recv_buf.pop_front();
                }
                n += k;
            }
            s.consumed(id, n as u64, conn);
            return Poll::Ready(Ok(()));
        }
        match s.recv {
            RecvState::Open => {
                set_waker(&mut s.recv_waker, cx);
                Poll::Pending
            }
            RecvState::Fin => Poll::Ready(Ok(())),
            RecvState::Reset(code) => Poll::Ready(Err(stream_error(StreamError::Reset(code)))),
            RecvState::Stopped(code) => Poll::Ready(Err(stream_error(StreamError::Stopped(code)))),
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        let mut guard = self.conn.shared.lock();
        let State { streams, conn } = &mut *guard;
        if let Some(s) = streams.get_mut(&self.id) {
            let unread = s.recv == RecvState::Open || s.recv_buffered > 0;
            if unread {
                s.stop(self.id, 0, conn);
            }
        }
        guard.release(self.id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn cfg() -> Config {
        Config {
            max_streams: 8,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:4433".parse().unwrap()
    }

    fn pair(a: Config, b: Config) -> (Connection, Connection) {
        let (x, y) = duplex(256 * 1024);
        (
            Connection::new(x, Role::Dialer, a, addr()),
            Connection::new(y, Role::Acceptor, b, addr()),
        )
    }

    fn stream_err(e: &io::Error) -> Option<StreamError> {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>())
            .cloned()
    }

    const SECS5: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn hello_both_directions() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, mut ra) = a.open_bi().await.unwrap();
        assert_eq!(sa.id(), 1);
        sa.write_all(b"hello").await.unwrap();
        sa.finish().unwrap();
        assert_eq!(
            stream_err(&sa.finish().unwrap_err()),
            Some(StreamError::Finished)
        );
        let e = sa.write_all(b"x").await.unwrap_err();
        assert_eq!(stream_err(&e), Some(StreamError::Finished));
        assert_eq!(sa.stopped().await.unwrap(), None);

        let (mut sb, mut rb) = b.accept_bi().await.unwrap();
        assert_eq!(rb.id(), 1);
        let mut got = Vec::new();
        timeout(SECS5, rb.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello");
        sb.write_all(b"world").await.unwrap();
        sb.finish().unwrap();
        let mut got = Vec::new();
        timeout(SECS5, ra.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"world");
        // The acceptor opens even ids.
        let (sb2, _rb2) = b.open_bi().await.unwrap();
        assert_eq!(sb2.id(), 2);
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }

    fn pattern(i: u64) -> u8 {
        (i % 251) as u8
    }

    async fn send_pattern(mut s: SendStream, total: u64) -> io::Result<()> {
        let mut pos = 0;
        while pos < total {
            let n = (total - pos).min(200_000);
            let chunk: Vec<u8> = (pos..pos + n).map(pattern).collect();
            s.write_bytes(Bytes::from(chunk)).await?;
            pos += n;
        }
        s.finish()
    }

    async fn recv_pattern(mut r: RecvStream) -> io::Result<u64> {
        let mut buf = vec![0u8; 50_000];
        let mut pos = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok(pos);
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                if b != pattern(pos + i as u64) {
                    return Err(io::Error::other(format!("mismatch at {}", pos + i as u64)));
                }
            }
            pos += n as u64;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_transfer_both_directions() {
        const TOTAL: u64 = 64 << 20;
        let (a, b) = pair(cfg(), cfg());
        let (sa, ra) = a.open_bi().await.unwrap();
        let (sb, rb) = b.accept_bi().await.unwrap();
        let work = async {
            tokio::try_join!(
                send_pattern(sa, TOTAL),
                recv_pattern(ra),
                send_pattern(sb, TOTAL),
                recv_pattern(rb)
            )
        };
        let (_, got_a, _, got_b) = timeout(Duration::from_secs(60), work)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got_a, got_b), (TOTAL, TOTAL));
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }

    #[tokio::test]
    async fn many_streams_wait_for_credit() {
        let (a, b) = pair(cfg(), cfg());
        let b2 = b.clone();
        let server = tokio::spawn(async move {
            let mut handled = 0u32;
            while let Ok((mut s, mut r)) = b2.accept_bi().await {
                tokio::spawn(async move {
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).await.unwrap();
                    s.write_all(&(v.len() as u32).to_be_bytes()).await.unwrap();
                    s.finish().unwrap();
                });
                handled += 1;
            }
            handled
        });
        for batch in 0..10u32 {
            let tasks: Vec<_> = (0..10u32)
                .map(|i| {
                    let a = a.clone();
                    tokio::spawn(async move {
                        let (mut s, mut r) = a.open_bi().await.unwrap();
                        let len = 1000 + batch * 10 + i;
                        s.write_all(&vec![i as u8; len as usize]).await.unwrap();
                        s.finish().unwrap();
                        let mut reply = Vec::new();
                        r.read_to_end(&mut reply).await.unwrap();
                        assert_eq!(reply, len.to_be_bytes());
                    })
                })
                .collect();
            for t in tasks {
                timeout(SECS5, t).await.unwrap().unwrap();
            }
        }
        assert_eq!(a.close_reason(), None);
        assert_eq!(b.close_reason(), None);
        a.close(0, b"done");
        assert_eq!(timeout(SECS5, server).await.unwrap().unwrap(), 100);
    }

    #[tokio::test]
    async fn reset_reaches_reader() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, _ra) = a.open_bi().await.unwrap();
        sa.write_all(b"abc").await.unwrap();
        sa.reset(7);
        sa.reset(8); // no-op
        let e = sa.write_all(b"x").await.unwrap_err();
        assert_eq!(stream_err(&e), Some(StreamError::Finished));
        assert_eq!(sa.stopped().await.unwrap(), None);
        let (_sb, mut rb) = b.accept_bi().await.unwrap();
        let mut got = Vec::new();
        let e = timeout(SECS5, rb.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(stream_err(&e), Some(StreamError::Reset(7)));
    }

    #[tokio::test]
    async fn stop_answered_by_reset() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, _ra) = a.open_bi().await.unwrap();
        sa.write_all(b"first").await.unwrap();
        let (_sb, mut rb) = b.accept_bi().await.unwrap();
        let mut buf = [0u8; 5];
        rb.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first");
        sa.write_all(&[1u8; 100_000]).await.unwrap(); // in flight or buffered, then discarded
        rb.stop(9).unwrap();
        rb.stop(10).unwrap(); // no-op
        assert_eq!(
            timeout(SECS5, sa.stopped()).await.unwrap().unwrap(),
            Some(9)
        );
        let e = sa.write_all(b"more").await.unwrap_err();
        assert_eq!(stream_err(&e), Some(StreamError::Stopped(9)));
        assert_eq!(
            stream_err(&sa.finish().unwrap_err()),
            Some(StreamError::Stopped(9))
        );
        let e = rb.read(&mut buf).await.unwrap_err();
        assert_eq!(stream_err(&e), Some(StreamError::Stopped(9)));
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }

    #[tokio::test]
    async fn discarded_data_returns_connection_credit() {
        // 24 streams × 1 MiB unread then dropped: more than CONN_WINDOW, so this only completes
        // if released buffers are credited back at the connection level.
        let (a, b) = pair(cfg(), cfg());
        let acceptor = tokio::spawn(async move {
            for _ in 0..24 {
                let (_s, r) = b.accept_bi().await.unwrap();
                while b
                    .inner
                    .shared
                    .lock()
                    .streams
                    .get(&r.id)
                    .map(|s| s.recv_buffered)
                    != Some(STREAM_WINDOW)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            b
        });
        for _ in 0..24 {
            let (mut s, _r) = a.open_bi().await.unwrap();
            let data = Bytes::from(vec![3u8; STREAM_WINDOW as usize]);
            timeout(SECS5, s.write_bytes(data)).await.unwrap().unwrap();
        }
        let b = timeout(SECS5, acceptor).await.unwrap().unwrap();
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }

    #[tokio::test]
    async fn flow_control_bounds_buffering() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, _ra) = a.open_bi().await.unwrap();
        let (_sb, mut rb) = b.accept_bi().await.unwrap();
        const TOTAL: usize = 4 << 20;
        let writer = tokio::spawn(async move {
            sa.write_bytes(Bytes::from(vec![7u8; TOTAL]))
                .await
                .map(|()| sa)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !writer.is_finished(),
            "write beyond the stream window completed"
        );
        let buffered = b
            .inner
            .shared
            .lock()
            .streams
            .get(&rb.id)
            .map(|s| s.recv_buffered);
        assert_eq!(buffered, Some(STREAM_WINDOW));
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < TOTAL {
            let n = timeout(SECS5, rb.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0 && buf[..n].iter().all(|&x| x == 7));
            got += n;
        }
        let mut sa = timeout(SECS5, writer).await.unwrap().unwrap().unwrap();
        sa.finish().unwrap();
        assert_eq!(rb.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_complete_message_stays_readable_after_close_but_its_sender_fails() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, _ra) = a.open_bi().await.unwrap();
        sa.write_all(b"request").await.unwrap();
        sa.finish().unwrap();
        let (mut sb, mut rb) = b.accept_bi().await.unwrap();
        // b's response is blocked on credit (a never reads) when the connection dies.
        let blocked = tokio::spawn(async move {
            let r = sb
                .write_bytes(Bytes::from(vec![7u8; 2 * STREAM_WINDOW as usize]))
                .await;
            (r, sb)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!blocked.is_finished(), "the write waits for credit");
        // Wait until b has the FIN, then the peer goes away.
        let mut got = Vec::new();
        rb.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        a.close(0, b"gone");
        timeout(SECS5, b.closed()).await.unwrap();
        let (r, mut sb) = timeout(SECS5, blocked).await.unwrap().unwrap();
        assert!(matches!(
            stream_err(&r.unwrap_err()),
            Some(StreamError::Closed(_))
        ));
        assert!(timeout(SECS5, sb.stopped()).await.unwrap().is_err());
        assert!(sb.finish().is_err());
    }

    #[tokio::test]
    async fn close_fails_everything() {
        let (a, b) = pair(cfg(), cfg());
        let (mut sa, _ra) = a.open_bi().await.unwrap();
        sa.write_all(b"x").await.unwrap();
        let (mut sb, mut rb) = b.accept_bi().await.unwrap();
        a.close(5, b"bye");
        a.close(6, b"again"); // idempotent
        timeout(SECS5, b.closed()).await.unwrap();
        let reason = b.close_reason().unwrap();
        assert!(reason.contains("bye") && reason.contains("0x5"), "{reason}");
        assert!(a.close_reason().unwrap().contains("closed locally"));
        timeout(SECS5, a.closed()).await.unwrap();
        assert!(a.open_bi().await.is_err());
        assert!(b.open_bi().await.is_err());
        assert!(b.accept_bi().await.is_err());
        let mut buf = [0u8; 8];
        let e = rb.read(&mut buf).await.unwrap_err();
        assert!(matches!(stream_err(&e), Some(StreamError::Closed(r)) if r.contains("bye")));
        let e = sb.write_all(b"y").await.unwrap_err();
        assert!(matches!(stream_err(&e), Some(StreamError::Closed(_))));
        assert!(sb.stopped().await.is_err());
        timeout(SECS5, b.drained()).await.unwrap();
    }

    #[tokio::test]
    async fn idle_timeout_and_keep_alive() {
        let fast = Config {
            max_streams: 8,
            keep_alive: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
        };
        let (io, _idle_peer) = duplex(256 * 1024);
        let conn = Connection::new(io, Role::Dialer, fast.clone(), addr());
        timeout(Duration::from_secs(3), conn.closed())
            .await
            .unwrap();
        assert!(conn.close_reason().unwrap().contains("idle"));
        // A live pair with the same settings stays up thanks to the pings.
        let (a, b) = pair(fast.clone(), fast);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }

    fn raw(ty: u8, id: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    async fn expect_protocol_error(input: Vec<u8>, expect: &str) {
        let (io, peer) = duplex(256 * 1024);
        let conn = Connection::new(io, Role::Acceptor, cfg(), addr());
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        let _ = peer_w.write_all(&input).await; // fails once the connection dropped its end
        timeout(SECS5, conn.closed()).await.unwrap();
        let reason = conn.close_reason().unwrap();
        assert!(
            reason.starts_with("protocol error") && reason.contains(expect),
            "{reason}"
        );
        let mut out = Vec::new();
        timeout(SECS5, peer_r.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while rest.len() >= HEADER_LEN {
            let (ty, len) = (rest[0], (&rest[9..13]).get_u32() as usize);
            frames.push((ty, rest[HEADER_LEN..HEADER_LEN + len].to_vec()));
            rest = &rest[HEADER_LEN + len..];
        }
        assert_eq!(frames.first().map(|f| f.0), Some(T_SETTINGS));
        let (ty, close) = frames.last().unwrap();
        assert_eq!(*ty, T_CLOSE);
        assert_eq!((&close[..4]).get_u32(), ErrorCode::PROTOCOL_ERROR.0);
    }

    #[tokio::test]
    async fn protocol_errors_close_the_connection() {
        let settings = raw(T_SETTINGS, 0, &8u32.to_be_bytes());
        let with = |rest: &[Vec<u8>]| [vec![settings.clone()], rest.to_vec()].concat().concat();
        expect_protocol_error(raw(T_OPEN, 1, &[]), "not SETTINGS").await;
        let mut huge = raw(T_DATA, 1, &[]);
        huge[9..13].copy_from_slice(&(1u32 << 20).to_be_bytes());
        expect_protocol_error(with(&[huge]), "exceeds").await;
        expect_protocol_error(with(&[raw(42, 0, &[])]), "unknown frame type").await;
        expect_protocol_error(with(&[raw(T_DATA, 1, b"x")]), "unknown stream").await;
        expect_protocol_error(with(&[raw(T_OPEN, 2, &[])]), "invalid stream id").await;
        expect_protocol_error(with(&[raw(T_PING, 0, b"short")]), "PING").await;
        let opens: Vec<_> = (0..9).map(|i| raw(T_OPEN, 1 + 2 * i, &[])).collect();
        expect_protocol_error(with(&opens), "more streams").await;
        let mut flood = vec![raw(T_OPEN, 1, &[])];
        flood.extend((0..17).map(|_| raw(T_DATA, 1, &[0u8; MAX_FRAME_PAYLOAD])));
        expect_protocol_error(with(&flood), "flow control").await;
    }

    #[tokio::test]
    async fn dropped_streams_return_stream_credit() {
        let one = Config {
            max_streams: 1,
            ..cfg()
        };
        let (a, b) = pair(one.clone(), one);
        let work = async {
            for i in 0..10u8 {
                let (mut s, r) = a.open_bi().await.unwrap();
                if i == 0 {
                    // The limit holds while the stream is alive.
                    assert!(timeout(Duration::from_millis(200), a.open_bi())
                        .await
                        .is_err());
                }
                s.write_all(&[i]).await.unwrap();
                s.finish().unwrap();
                drop((s, r));
                let (sb, mut rb) = b.accept_bi().await.unwrap();
                let mut got = Vec::new();
                rb.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, [i]);
                drop((sb, rb));
            }
        };
        timeout(Duration::from_secs(10), work).await.unwrap();
        assert!(a.close_reason().is_none() && b.close_reason().is_none());
    }
}
