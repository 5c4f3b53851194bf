use super::*;

/// Moves every queued frame from `from` to `to` through the wire encoding; returns the
/// wakes, or the protocol error, `to` reported.
fn deliver(from: &mut Mux, to: &mut Mux) -> Result<Vec<Wake>, ProtocolError> {
    let mut wire = BytesMut::new();
    while let Some(f) = from.poll_transmit() {
        f.encode(&mut wire);
    }
    let mut wakes = Vec::new();
    while !wire.is_empty() {
        let header: [u8; HEADER_LEN] = wire[..HEADER_LEN].try_into().unwrap();
        let header = Header::decode(&header)?;
        let _ = wire.split_to(HEADER_LEN);
        let payload = wire.split_to(header.len);
        wakes.push(to.handle(header, payload)?);
    }
    Ok(wakes)
}

fn pair(max_streams: u32) -> (Mux, Mux) {
    let (mut a, mut b) = (
        Mux::new(Role::Dialer, max_streams),
        Mux::new(Role::Acceptor, max_streams),
    );
    assert_eq!(deliver(&mut a, &mut b).unwrap(), [Wake::Open]);
    assert_eq!(deliver(&mut b, &mut a).unwrap(), [Wake::Open]);
    (a, b)
}

fn read_all(m: &mut Mux, id: u64) -> (Vec<u8>, Recv) {
    let mut out = Vec::new();
    loop {
        match m.read(id, 1 << 30, |c| out.extend_from_slice(c)).unwrap() {
            Recv::Data(n) if n > 0 => {}
            r => return (out, r),
        }
    }
}

#[test]
fn a_stream_carries_bytes_and_fin_both_ways() {
    let (mut a, mut b) = pair(8);
    let id = a.open().unwrap().unwrap();
    assert_eq!(id, 1, "the dialer opens odd ids");
    let mut data = Bytes::from_static(b"hello");
    assert_eq!(a.send(id, &mut data).unwrap(), Sent::Progress);
    a.finish(id).unwrap();
    let wakes = deliver(&mut a, &mut b).unwrap();
    assert_eq!(wakes, [Wake::Accept, Wake::Recv(1), Wake::Recv(1)]);
    assert_eq!(b.accept().unwrap(), Some(1));
    assert_eq!(read_all(&mut b, 1), (b"hello".to_vec(), Recv::End));
    assert_eq!(a.finish(id), Err(StreamError::Finished));
}

#[test]
fn flow_control_blocks_at_the_window_and_credit_reopens_it() {
    let (mut a, mut b) = pair(8);
    let id = a.open().unwrap().unwrap();
    let mut data = Bytes::from(vec![1u8; STREAM_WINDOW as usize + 10]);
    while a.send(id, &mut data).unwrap() == Sent::Progress && !data.is_empty() {}
    assert_eq!(data.len(), 10, "exactly one window went out");
    assert_eq!(a.send(id, &mut data), Ok(Sent::Blocked { conn: false }));
    deliver(&mut a, &mut b).unwrap();
    assert_eq!(b.buffered(id), Some(STREAM_WINDOW));
    // Reading returns credit (an eighth of a window at a time): the writer may go on.
    let (got, _) = read_all(&mut b, id);
    assert_eq!(got.len() as u64, STREAM_WINDOW);
    let wakes = deliver(&mut b, &mut a).unwrap();
    assert!(wakes.contains(&Wake::Send(id)), "{wakes:?}");
    assert_eq!(a.send(id, &mut data), Ok(Sent::Progress));
    assert!(data.is_empty());
}

#[test]
fn a_peer_that_ignores_the_window_is_a_protocol_error() {
    let (mut a, mut b) = pair(8);
    let id = a.open().unwrap().unwrap();
    deliver(&mut a, &mut b).unwrap();
    let chunk = BytesMut::from(&vec![0u8; MAX_FRAME_PAYLOAD][..]);
    let header = Header {
        ty: DATA,
        id,
        len: MAX_FRAME_PAYLOAD,
    };
    let mut result = Ok(Wake::Nothing);
    for _ in 0..=(STREAM_WINDOW as usize / MAX_FRAME_PAYLOAD) {
        result = b.handle(header, chunk.clone());
        if result.is_err() {
            break;
        }
    }
    let e = result.unwrap_err();
    assert!(e.0.contains("window exceeded"), "{e}");
    assert!(b.protocol_error(&e));
    assert!(b.close_reason().unwrap().starts_with("protocol error"));
    let last = std::iter::from_fn(|| b.poll_transmit()).last();
    assert!(matches!(last, Some(Frame::Close(c, _)) if c == ErrorCode::PROTOCOL_ERROR.0));
}

#[test]
fn malformed_sequences_are_protocol_errors() {
    let mut b = Mux::new(Role::Acceptor, 1);
    let h = |ty, id, len| Header { ty, id, len };
    let e = b.handle(h(OPEN, 1, 0), BytesMut::new()).unwrap_err();
    assert!(e.0.contains("not SETTINGS"), "{e}");
    let (mut a, mut b) = pair(1);
    let e = b
        .handle(h(DATA, 5, 1), BytesMut::from(&b"x"[..]))
        .unwrap_err();
    assert!(e.0.contains("unknown stream"), "{e}");
    a.open().unwrap();
    assert_eq!(a.open().unwrap(), None, "the peer allows one stream");
    deliver(&mut a, &mut b).unwrap();
    let e = b.handle(h(OPEN, 3, 0), BytesMut::new()).unwrap_err();
    assert!(e.0.contains("more streams"), "{e}");
    assert!(Header::decode(&[42; HEADER_LEN]).is_err());
    let mut huge = [0u8; HEADER_LEN];
    huge[9..].copy_from_slice(&(1u32 << 20).to_be_bytes());
    assert!(Header::decode(&huge).unwrap_err().0.contains("exceeds"));
}

#[test]
fn stop_is_answered_by_reset_and_a_dropped_stream_returns_its_allowance() {
    let (mut a, mut b) = pair(1);
    let id = a.open().unwrap().unwrap();
    deliver(&mut a, &mut b).unwrap();
    b.accept().unwrap();
    b.stop(id, 7).unwrap();
    assert_eq!(deliver(&mut b, &mut a).unwrap(), [Wake::SendAndStopped(id)]);
    assert_eq!(a.stop_state(id), Ok(StopState::Stopped(7)));
    assert_eq!(
        a.send(id, &mut Bytes::from_static(b"x")),
        Err(StreamError::Stopped(7))
    );
    assert_eq!(deliver(&mut a, &mut b).unwrap(), [Wake::Nothing]);
    // The acceptor drops both handles: the dialer may open another stream.
    b.drop_send(id);
    b.drop_recv(id);
    assert!(!b.has_stream(id));
    a.drop_send(id);
    a.drop_recv(id);
    assert_eq!(a.open().unwrap(), None);
    deliver(&mut b, &mut a).unwrap();
    assert_eq!(a.open().unwrap(), Some(3));
}

#[test]
fn a_ping_flood_queues_one_pong_and_close_keeps_finished_messages() {
    let (mut a, mut b) = pair(8);
    for i in 0..100u64 {
        a.ping(i.to_be_bytes());
    }
    deliver(&mut a, &mut b).unwrap();
    let pongs = std::iter::from_fn(|| b.poll_transmit())
        .filter(|f| matches!(f, Frame::Pong(_)))
        .count();
    assert_eq!(pongs, 1);
    let done = a.open().unwrap().unwrap();
    a.send(done, &mut Bytes::from_static(b"whole")).unwrap();
    a.finish(done).unwrap();
    let open = a.open().unwrap().unwrap();
    a.send(open, &mut Bytes::from_static(b"part")).unwrap();
    deliver(&mut a, &mut b).unwrap();
    a.close(String::new(), Some((0, String::new())));
    assert_eq!(
        deliver(&mut a, &mut b).unwrap(),
        [Wake::PeerClosed("closed by peer: 0x0".into())]
    );
    assert!(b.close("closed by peer".into(), None));
    assert!(!b.close("again".into(), None));
    assert_eq!(read_all(&mut b, done), (b"whole".to_vec(), Recv::End));
    assert!(matches!(
        b.read(open, 16, |_| {}),
        Err(StreamError::Closed(_))
    ));
}

#[test]
fn chunks_are_handed_out_whole_or_split_and_return_credit() {
    let (mut a, mut b) = pair(8);
    let id = a.open().unwrap().unwrap();
    let mut data = Bytes::from(vec![7u8; STREAM_WINDOW as usize]);
    while a.send(id, &mut data).unwrap() == Sent::Progress && !data.is_empty() {}
    deliver(&mut a, &mut b).unwrap();
    assert_eq!(b.accept().unwrap(), Some(id));
    // At most `max` bytes per chunk, in order, then the end.
    let mut got = 0usize;
    loop {
        match b.read_chunk(id, 1000).unwrap() {
            Chunk::Data(c) => {
                assert!(!c.is_empty() && c.len() <= 1000, "{}", c.len());
                assert!(c.iter().all(|&x| x == 7));
                got += c.len();
            }
            Chunk::Blocked => break,
            Chunk::End => panic!("the end before the FIN"),
        }
    }
    assert_eq!(got as u64, STREAM_WINDOW);
    assert_eq!(b.buffered(id), Some(0));
    // The reads returned credit, as `read` does: the writer may go on.
    let wakes = deliver(&mut b, &mut a).unwrap();
    assert!(wakes.contains(&Wake::Send(id)), "{wakes:?}");
    a.finish(id).unwrap();
    deliver(&mut a, &mut b).unwrap();
    assert!(matches!(b.read_chunk(id, 1000), Ok(Chunk::End)));
}

#[test]
fn a_chunk_read_on_an_open_quiet_stream_blocks() {
    let (mut a, mut b) = pair(8);
    let id = a.open().unwrap().unwrap();
    let mut data = Bytes::from_static(b"x");
    a.send(id, &mut data).unwrap();
    deliver(&mut a, &mut b).unwrap();
    assert!(matches!(b.read_chunk(id, 64), Ok(Chunk::Data(c)) if &c[..] == b"x"));
    assert!(matches!(b.read_chunk(id, 64), Ok(Chunk::Blocked)));
    a.reset(id, 9);
    deliver(&mut a, &mut b).unwrap();
    assert_eq!(b.read_chunk(id, 64).unwrap_err(), StreamError::Reset(9));
}
