//! The stream multiplexer's wire format and state machine, without I/O: frames in, frames out.
//! It gives each stream of one ordered byte stream (TLS over TCP where UDP is blocked) the QUIC
//! semantics the session code relies on: bidirectional streams, FIN, RESET and STOP with codes,
//! per-stream and per-connection credit-based flow control, a stream count limit, keep-alive
//! pings and a connection CLOSE with code and reason. `tunnel_session::mux` drives it over a
//! tokio byte stream (reader and writer tasks, wakers, timers); tests drive two of them against
//! each other with no socket at all.
//!
//! The caller feeds every frame the peer sends to [`Mux::handle`], calls the local operations
//! ([`Mux::open`], [`Mux::send`], [`Mux::read`], …) and writes what [`Mux::poll_transmit`] hands
//! out, in order. Each call says whom it may unblock ([`Wake`]), so the caller can wake exactly
//! the tasks that wait on it. Time is the caller's: it sends [`Frame::Ping`] when it wants and
//! closes the connection on an idle timeout.
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

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::ErrorCode;

mod frame;
#[cfg(test)]
mod tests;

pub use frame::*;
use frame_type::*;

/// DATA payloads smaller than this are appended to the previous buffered chunk, so that tiny frames
/// cannot make per-chunk overhead dwarf the flow-control bound.
const SMALL_CHUNK: usize = 4096;
/// Small payloads are not appended to a chunk this large or larger.
const MAX_MERGED: usize = 64 * 1024;

/// Whom a state change may unblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Nobody.
    Nothing,
    /// The reader of stream `id`.
    Recv(u64),
    /// The writer of stream `id`.
    Send(u64),
    /// The writer of stream `id` and whoever waits for it to be stopped.
    SendAndStopped(u64),
    /// Writers waiting for connection credit.
    SendCredit,
    /// Tasks waiting to open a stream.
    Open,
    /// Tasks waiting to accept a stream.
    Accept,
    /// The peer closed the connection, with this reason: close it (and wake everyone).
    PeerClosed(String),
}

/// What [`Mux::send`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A DATA frame of at most [`MAX_DATA_CHUNK`] left (or `data` was empty).
    Progress,
    /// No credit: wait on the stream's writer wake (and on [`Wake::SendCredit`] when `conn`).
    Blocked {
        /// The connection's credit is the one exhausted.
        conn: bool,
    },
}

/// What [`Mux::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were handed out.
    Data(usize),
    /// Nothing buffered yet: wait for [`Wake::Recv`].
    Blocked,
    /// The peer finished and everything was read.
    End,
}

/// What [`Mux::read_chunk`] found.
#[derive(Debug)]
pub enum Chunk {
    /// Buffered bytes, handed out.
    Data(Bytes),
    /// Nothing buffered yet: wait for [`Wake::Recv`].
    Blocked,
    /// The peer finished and everything was read.
    End,
}

/// Whether the peer asked a stream's writer to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopState {
    /// The peer sent STOP with this code.
    Stopped(u32),
    /// This side finished or reset its direction.
    Done,
    /// Still sending.
    Sending,
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

impl RecvState {
    /// What a read finds once nothing is buffered: whether the stream has ended (`false`: more
    /// may come), or why it cannot be read.
    fn ended(self) -> Result<bool, StreamError> {
        match self {
            RecvState::Open => Ok(false),
            RecvState::Fin => Ok(true),
            RecvState::Reset(code) => Err(StreamError::Reset(code)),
            RecvState::Stopped(code) => Err(StreamError::Stopped(code)),
        }
    }
}

#[derive(Debug)]
struct Stream {
    send: SendState,
    send_credit: u64,
    stop_code: Option<u32>,
    recv: RecvState,
    recv_buf: VecDeque<BytesMut>,
    recv_buffered: u64,
    recv_received: u64,
    recv_limit: u64,
    recv_unacked: u64,
    send_handle: bool,
    recv_handle: bool,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            send: SendState::Open,
            send_credit: STREAM_WINDOW,
            stop_code: None,
            recv: RecvState::Open,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_received: 0,
            recv_limit: STREAM_WINDOW,
            recv_unacked: 0,
            send_handle: true,
            recv_handle: true,
        }
    }

    /// The application consumed `n` buffered bytes: return credit when an eighth of a window is due.
    fn consumed(&mut self, id: u64, n: u64, conn: &mut Conn) {
        self.recv_buffered = self.recv_buffered.saturating_sub(n);
        if self.recv == RecvState::Open {
            self.recv_unacked += n;
            if self.recv_unacked >= STREAM_WINDOW / 8 {
                let inc = u32::try_from(self.recv_unacked).unwrap_or(u32::MAX);
                conn.queue(Frame::Window(id, inc));
                self.recv_limit += u64::from(inc);
                self.recv_unacked -= u64::from(inc);
            }
        }
        conn.credit(n);
    }

    /// Drops buffered data, crediting it back at the connection level.
    fn discard_buffer(&mut self, conn: &mut Conn) {
        self.recv_buf.clear();
        conn.credit(std::mem::take(&mut self.recv_buffered));
    }

    /// Stops the receive side: STOP if the peer may still send, buffer released.
    fn stop(&mut self, id: u64, code: u32, conn: &mut Conn) {
        if let RecvState::Stopped(_) = self.recv {
            return;
        }
        if self.recv == RecvState::Open {
            conn.queue(Frame::Stop(id, code));
        }
        self.recv = RecvState::Stopped(code);
        self.discard_buffer(conn);
    }
}

#[derive(Debug)]
struct Conn {
    role: Role,
    out: VecDeque<Frame>,
    closed: Option<String>,
    got_settings: bool,
    send_credit: u64,
    recv_received: u64,
    recv_limit: u64,
    recv_pending: u64,
    next_local_id: u64,
    local_opened: u64,
    local_allowed: u64,
    last_peer_id: u64,
    peer_opened: u64,
    peer_allowed: u64,
    accept_queue: VecDeque<u64>,
    /// A PONG is queued and not yet handed out: a PING flood queues at most one.
    pong_queued: bool,
}

impl Conn {
    /// Queues a frame unless closed, so frames follow state changes in order.
    fn queue(&mut self, frame: Frame) {
        if self.closed.is_none() {
            self.out.push_back(frame);
        }
    }

    /// `n` received bytes left the connection's buffers: return credit when an eighth of the window
    /// is due (as quinn does), so a few unread streams cannot starve the others for long.
    fn credit(&mut self, n: u64) {
        self.recv_pending += n;
        if self.recv_pending >= CONN_WINDOW / 8 {
            let inc = u32::try_from(self.recv_pending).unwrap_or(u32::MAX);
            self.queue(Frame::Window(0, inc));
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

    fn closed_error(&self) -> StreamError {
        StreamError::Closed(self.closed.clone().unwrap_or_else(|| "stream gone".into()))
    }
}

/// One side of a multiplexed connection: every stream's state, the flow-control accounts and
/// the frames waiting to be written.
#[derive(Debug)]
pub struct Mux {
    /// By id. FxHash, not SipHash: the map is hashed several times per frame, and the ids the
    /// peer picks are bounded in number by `peer_allowed`, so colliding ones cost it at most a
    /// longer probe on its own connection.
    streams: FxHashMap<u64, Stream>,
    conn: Conn,
}

/// The stream's state if it is live, `None` if it was removed, `Err` if it was never opened.
fn lookup<'a>(
    streams: &'a mut FxHashMap<u64, Stream>,
    conn: &Conn,
    id: u64,
    what: &str,
) -> Result<Option<&'a mut Stream>, ProtocolError> {
    match streams.get_mut(&id) {
        Some(s) => Ok(Some(s)),
        None if conn.seen(id) => Ok(None),
        None => Err(ProtocolError(format!("{what} for unknown stream {id}"))),
    }
}

fn expect_len(payload: &[u8], len: usize, what: &str) -> Result<(), ProtocolError> {
    if payload.len() == len {
        Ok(())
    } else {
        Err(ProtocolError(format!(
            "{what} payload of {} bytes, expected {len}",
            payload.len()
        )))
    }
}

fn payload_u32(payload: &[u8], what: &str) -> Result<u32, ProtocolError> {
    expect_len(payload, 4, what)?;
    Ok((&payload[..]).get_u32())
}

fn payload_8(payload: &[u8], what: &str) -> Result<[u8; 8], ProtocolError> {
    expect_len(payload, 8, what)?;
    let mut out = [0; 8];
    out.copy_from_slice(payload);
    Ok(out)
}

impl Mux {
    /// A new side that lets the peer open `max_streams` streams at once; SETTINGS is queued.
    pub fn new(role: Role, max_streams: u32) -> Mux {
        let mut out = VecDeque::new();
        out.push_back(Frame::Settings(max_streams));
        Mux {
            streams: FxHashMap::default(),
            conn: Conn {
                role,
                out,
                closed: None,
                got_settings: false,
                send_credit: CONN_WINDOW,
                recv_received: 0,
                recv_limit: CONN_WINDOW,
                recv_pending: 0,
                next_local_id: if role == Role::Dialer { 1 } else { 2 },
                local_opened: 0,
                local_allowed: 0,
                last_peer_id: 0,
                peer_opened: 0,
                peer_allowed: u64::from(max_streams),
                accept_queue: VecDeque::new(),
                pong_queued: false,
            },
        }
    }

    /// The next frame to write, in order.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        let frame = self.conn.out.pop_front()?;
        if let Frame::Pong(_) = frame {
            self.conn.pong_queued = false;
        }
        Some(frame)
    }

    /// Whether frames wait in [`Mux::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.conn.out.is_empty()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&str> {
        self.conn.closed.as_deref()
    }

    /// Queues a PING (the caller's keep-alive timer decides when).
    pub fn ping(&mut self, payload: [u8; 8]) {
        self.conn.queue(Frame::Ping(payload));
    }

    /// Closes the connection once: queues `frame` as CLOSE (if any), records `reason` and drops
    /// every stream except those whose whole message has arrived (FIN): closing right after the
    /// peer finished its last response must not truncate what is already here. `false` when it
    /// was closed already. Everyone waiting on the connection should be woken.
    pub fn close(&mut self, reason: String, frame: Option<(u32, String)>) -> bool {
        if self.conn.closed.is_some() {
            return false;
        }
        if let Some((code, text)) = frame {
            self.conn.out.push_back(Frame::Close(code, text));
        }
        self.conn.closed = Some(reason);
        self.conn.accept_queue.clear();
        self.streams.retain(|_, s| s.recv == RecvState::Fin);
        true
    }

    /// Closes the connection for a protocol error: CLOSE with [`ErrorCode::PROTOCOL_ERROR`].
    pub fn protocol_error(&mut self, error: &ProtocolError) -> bool {
        let reason = truncate_reason(error.0.as_bytes());
        self.close(
            format!("protocol error: {}", error.0),
            Some((ErrorCode::PROTOCOL_ERROR.0, reason)),
        )
    }

    /// Handles one frame from the peer (its header already checked by [`Header::decode`]).
    pub fn handle(&mut self, header: Header, payload: BytesMut) -> Result<Wake, ProtocolError> {
        let Header { ty, id, .. } = header;
        let Mux { streams, conn } = self;
        if conn.closed.is_some() {
            return Ok(Wake::Nothing);
        }
        let err = |text: String| Err(ProtocolError(text));
        if !conn.got_settings && ty != SETTINGS {
            return err(format!("first frame has type {ty:#x}, not SETTINGS"));
        }
        let conn_frame = matches!(ty, SETTINGS | STREAMS | PING | PONG | CLOSE);
        if conn_frame && id != 0 {
            return err(format!("frame type {ty:#x} on stream {id}"));
        }
        if !conn_frame && ty != WINDOW && id == 0 {
            return err(format!("frame type {ty:#x} on stream 0"));
        }
        let wake = match ty {
            SETTINGS => {
                if conn.got_settings {
                    return err("second SETTINGS".into());
                }
                conn.local_allowed = u64::from(payload_u32(&payload, "SETTINGS")?);
                conn.got_settings = true;
                Wake::Open
            }
            OPEN => {
                expect_len(&payload, 0, "OPEN")?;
                if conn.is_local(id) || id <= conn.last_peer_id {
                    return err(format!("OPEN with invalid stream id {id}"));
                }
                if conn.peer_opened >= conn.peer_allowed {
                    return err("peer opened more streams than allowed".into());
                }
                conn.last_peer_id = id;
                conn.peer_opened += 1;
                streams.insert(id, Stream::new());
                conn.accept_queue.push_back(id);
                Wake::Accept
            }
            DATA => {
                let n = payload.len() as u64;
                if n == 0 {
                    return err(format!("empty DATA on stream {id}"));
                }
                let stream = lookup(streams, conn, id, "DATA")?;
                if conn.recv_received + n > conn.recv_limit {
                    return err("flow control: connection window exceeded".into());
                }
                conn.recv_received += n;
                let Some(s) = stream else {
                    conn.credit(n);
                    return Ok(Wake::Nothing);
                };
                match s.recv {
                    RecvState::Open => {
                        if s.recv_received + n > s.recv_limit {
                            return err(format!("flow control: stream {id} window exceeded"));
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
                        Wake::Recv(id)
                    }
                    RecvState::Stopped(_) => {
                        conn.credit(n);
                        Wake::Nothing
                    }
                    RecvState::Fin | RecvState::Reset(_) => {
                        return err(format!("DATA after FIN or RESET on stream {id}"));
                    }
                }
            }
            FIN => {
                expect_len(&payload, 0, "FIN")?;
                match lookup(streams, conn, id, "FIN")? {
                    Some(s) if s.recv == RecvState::Open => {
                        s.recv = RecvState::Fin;
                        Wake::Recv(id)
                    }
                    _ => Wake::Nothing,
                }
            }
            RESET => {
                let code = payload_u32(&payload, "RESET")?;
                match lookup(streams, conn, id, "RESET")? {
                    Some(s) if matches!(s.recv, RecvState::Open | RecvState::Fin) => {
                        s.recv = RecvState::Reset(code);
                        s.discard_buffer(conn);
                        Wake::Recv(id)
                    }
                    _ => Wake::Nothing,
                }
            }
            STOP => {
                let code = payload_u32(&payload, "STOP")?;
                match lookup(streams, conn, id, "STOP")? {
                    Some(s) if s.stop_code.is_none() => {
                        s.stop_code = Some(code);
                        if s.send == SendState::Open {
                            s.send = SendState::Stopped(code);
                            conn.queue(Frame::Reset(id, code));
                        }
                        Wake::SendAndStopped(id)
                    }
                    _ => Wake::Nothing,
                }
            }
            WINDOW => {
                let inc = u64::from(payload_u32(&payload, "WINDOW")?);
                if id == 0 {
                    if conn.send_credit + inc > CONN_WINDOW {
                        return err("flow control: connection credit above the window".into());
                    }
                    conn.send_credit += inc;
                    Wake::SendCredit
                } else if let Some(s) = lookup(streams, conn, id, "WINDOW")? {
                    if s.send_credit + inc > STREAM_WINDOW {
                        return err(format!("flow control: stream {id} credit above the window"));
                    }
                    s.send_credit += inc;
                    Wake::Send(id)
                } else {
                    Wake::Nothing
                }
            }
            STREAMS => {
                let inc = payload_u32(&payload, "STREAMS")?;
                conn.local_allowed = conn.local_allowed.saturating_add(u64::from(inc));
                Wake::Open
            }
            PING => {
                let ping = payload_8(&payload, "PING")?;
                if !conn.pong_queued {
                    conn.pong_queued = true;
                    conn.queue(Frame::Pong(ping));
                }
                Wake::Nothing
            }
            PONG => {
                payload_8(&payload, "PONG")?;
                Wake::Nothing
            }
            CLOSE => {
                if payload.len() < 4 || payload.len() > 4 + MAX_REASON_LEN {
                    return err(format!("CLOSE payload of {} bytes", payload.len()));
                }
                let mut p = &payload[..];
                let code = p.get_u32();
                let reason = String::from_utf8_lossy(p);
                Wake::PeerClosed(
                    format!("closed by peer: {code:#x} {reason}")
                        .trim_end()
                        .to_owned(),
                )
            }
            _ => return err(format!("unknown frame type {ty:#x}")),
        };
        Ok(wake)
    }

    /// Opens a stream: its id, or `None` while the peer's stream limit is reached (or its
    /// SETTINGS has not arrived): wait for [`Wake::Open`].
    pub fn open(&mut self) -> Result<Option<u64>, StreamError> {
        let Mux { streams, conn } = self;
        if conn.closed.is_some() {
            return Err(conn.closed_error());
        }
        if conn.local_opened >= conn.local_allowed {
            return Ok(None);
        }
        let id = conn.next_local_id;
        conn.next_local_id += 2;
        conn.local_opened += 1;
        streams.insert(id, Stream::new());
        conn.queue(Frame::Open(id));
        Ok(Some(id))
    }

    /// The next stream the peer opened, or `None`: wait for [`Wake::Accept`].
    pub fn accept(&mut self) -> Result<Option<u64>, StreamError> {
        if self.conn.closed.is_some() {
            return Err(self.conn.closed_error());
        }
        Ok(self.conn.accept_queue.pop_front())
    }

    /// Sends (part of) `data` on stream `id` as one DATA frame, as far as credit allows; what
    /// was sent is split off the front of `data`.
    pub fn send(&mut self, id: u64, data: &mut Bytes) -> Result<Sent, StreamError> {
        let (s, conn) = self.sendable(id)?;
        if data.is_empty() {
            return Ok(Sent::Progress);
        }
        if s.send_credit == 0 || conn.send_credit == 0 {
            return Ok(Sent::Blocked {
                conn: conn.send_credit == 0,
            });
        }
        let n = (data.len() as u64)
            .min(MAX_DATA_CHUNK as u64)
            .min(s.send_credit)
            .min(conn.send_credit);
        let chunk = data.split_to(n as usize);
        s.send_credit -= n;
        conn.send_credit -= n;
        conn.queue(Frame::Data(id, chunk));
        Ok(Sent::Progress)
    }

    /// Ends stream `id`'s sending direction cleanly (FIN). Whoever waits for the stream to be
    /// stopped should be woken.
    pub fn finish(&mut self, id: u64) -> Result<(), StreamError> {
        let (s, conn) = self.sendable(id)?;
        s.send = SendState::Finished;
        conn.queue(Frame::Fin(id));
        Ok(())
    }

    /// Stream `id` and the connection, while the stream may still send.
    fn sendable(&mut self, id: u64) -> Result<(&mut Stream, &mut Conn), StreamError> {
        let Mux { streams, conn } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Err(conn.closed_error());
        };
        // A stream kept readable after a close (its FIN had arrived) can no longer send.
        if conn.closed.is_some() {
            return Err(conn.closed_error());
        }
        match s.send {
            SendState::Open => Ok((s, conn)),
            SendState::Stopped(code) => Err(StreamError::Stopped(code)),
            SendState::Finished | SendState::Reset => Err(StreamError::Finished),
        }
    }

    /// Abandons stream `id`'s sending direction with `code` (RESET); `false` if it was already
    /// finished or reset (a no-op).
    pub fn reset(&mut self, id: u64, code: u32) -> bool {
        let Mux { streams, conn } = self;
        match streams.get_mut(&id) {
            Some(s) if s.send == SendState::Open => {
                s.send = SendState::Reset;
                conn.queue(Frame::Reset(id, code));
                true
            }
            _ => false,
        }
    }

    /// Whether the peer asked stream `id`'s writer to stop; `Err` once the connection closed
    /// while the stream was still sending.
    pub fn stop_state(&self, id: u64) -> Result<StopState, StreamError> {
        let Some(s) = self.streams.get(&id) else {
            return Err(self.conn.closed_error());
        };
        if let Some(code) = s.stop_code {
            return Ok(StopState::Stopped(code));
        }
        if self.conn.closed.is_some() && s.send == SendState::Open {
            return Err(self.conn.closed_error());
        }
        Ok(match s.send {
            SendState::Open => StopState::Sending,
            _ => StopState::Done,
        })
    }

    /// Asks the peer to stop sending on stream `id` (STOP with `code`, once) and discards
    /// buffered and future data. Its reader should be woken.
    pub fn stop(&mut self, id: u64, code: u32) -> Result<(), StreamError> {
        let Mux { streams, conn } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Err(conn.closed_error());
        };
        s.stop(id, code, conn);
        Ok(())
    }

    /// Hands at most `max` buffered bytes of stream `id` to `sink`, chunk by chunk, and returns
    /// credit for them.
    pub fn read(
        &mut self,
        id: u64,
        max: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Recv, StreamError> {
        let Mux { streams, conn } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Err(conn.closed_error());
        };
        if max == 0 {
            return Ok(Recv::Data(0));
        }
        if s.recv_buffered > 0 {
            let mut n = 0;
            while n < max {
                let Some(front) = s.recv_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(max - n);
                sink(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    s.recv_buf.pop_front();
                }
                n += k;
            }
            s.consumed(id, n as u64, conn);
            return Ok(Recv::Data(n));
        }
        Ok(if s.recv.ended()? {
            Recv::End
        } else {
            Recv::Blocked
        })
    }

    /// Like [`Mux::read`], but hands out the front buffered chunk itself (at most `max` bytes,
    /// `max` > 0) without a copy.
    pub fn read_chunk(&mut self, id: u64, max: usize) -> Result<Chunk, StreamError> {
        let Mux { streams, conn } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Err(conn.closed_error());
        };
        while s.recv_buf.front().is_some_and(|f| f.is_empty()) {
            s.recv_buf.pop_front();
        }
        if let Some(front) = s.recv_buf.front_mut() {
            let k = front.len().min(max.max(1));
            let chunk = if k == front.len() {
                s.recv_buf.pop_front().unwrap_or_default()
            } else {
                front.split_to(k)
            };
            s.consumed(id, k as u64, conn);
            return Ok(Chunk::Data(chunk.freeze()));
        }
        Ok(if s.recv.ended()? {
            Chunk::End
        } else {
            Chunk::Blocked
        })
    }

    /// Stream `id`'s send handle is gone: an open direction is finished (FIN).
    pub fn drop_send(&mut self, id: u64) {
        let Mux { streams, conn } = self;
        if let Some(s) = streams.get_mut(&id) {
            if s.send == SendState::Open {
                s.send = SendState::Finished;
                conn.queue(Frame::Fin(id));
            }
        }
        self.release(id, true);
    }

    /// Stream `id`'s receive handle is gone: unread data stops the stream with code 0.
    pub fn drop_recv(&mut self, id: u64) {
        let Mux { streams, conn } = self;
        if let Some(s) = streams.get_mut(&id) {
            let unread = s.recv == RecvState::Open || s.recv_buffered > 0;
            if unread {
                s.stop(id, 0, conn);
            }
        }
        self.release(id, false);
    }

    /// A handle of stream `id` is gone; removes the stream once both are, giving the peer back
    /// a stream of its allowance if it had opened it.
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
                self.conn.queue(Frame::Streams(1));
            }
        }
    }

    /// Bytes of stream `id` received and not yet read, while the stream exists.
    pub fn buffered(&self, id: u64) -> Option<u64> {
        self.streams.get(&id).map(|s| s.recv_buffered)
    }

    /// Whether stream `id` still exists (both handles not yet dropped, or kept after a close).
    pub fn has_stream(&self, id: u64) -> bool {
        self.streams.contains_key(&id)
    }
}
