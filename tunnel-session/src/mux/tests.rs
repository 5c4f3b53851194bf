use super::*;
use bytes::Buf;
use tokio::io::duplex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_protocol::mux::frame_type::*;
use tunnel_protocol::mux::{HEADER_LEN, MAX_FRAME_PAYLOAD, STREAM_WINDOW};
use tunnel_protocol::ErrorCode;

/// A test connection's settings (the pipe's tests use them too).
pub(crate) fn cfg() -> Config {
    Config {
        max_streams: 8,
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
    }
}

fn addr() -> SocketAddr {
    "127.0.0.1:4433".parse().unwrap()
}

/// A dialer and an acceptor over an in-memory duplex.
pub(crate) fn pair(a: Config, b: Config) -> (Connection, Connection) {
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

/// How long a test waits for anything (the pipe's, framing's and control stream's tests too).
pub(crate) const SECS5: Duration = Duration::from_secs(5);

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
            while b.inner.shared.lock().mux.buffered(r.id) != Some(STREAM_WINDOW) {
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
    let buffered = b.inner.shared.lock().mux.buffered(rb.id);
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
    assert_eq!(frames.first().map(|f| f.0), Some(SETTINGS));
    let (ty, close) = frames.last().unwrap();
    assert_eq!(*ty, CLOSE);
    assert_eq!((&close[..4]).get_u32(), ErrorCode::PROTOCOL_ERROR.0);
}

#[tokio::test]
async fn protocol_errors_close_the_connection() {
    let settings = raw(SETTINGS, 0, &8u32.to_be_bytes());
    let with = |rest: &[Vec<u8>]| [vec![settings.clone()], rest.to_vec()].concat().concat();
    expect_protocol_error(raw(OPEN, 1, &[]), "not SETTINGS").await;
    let mut huge = raw(DATA, 1, &[]);
    huge[9..13].copy_from_slice(&(1u32 << 20).to_be_bytes());
    expect_protocol_error(with(&[huge]), "exceeds").await;
    expect_protocol_error(with(&[raw(42, 0, &[])]), "unknown frame type").await;
    expect_protocol_error(with(&[raw(DATA, 1, b"x")]), "unknown stream").await;
    expect_protocol_error(with(&[raw(OPEN, 2, &[])]), "invalid stream id").await;
    expect_protocol_error(with(&[raw(PING, 0, b"short")]), "PING").await;
    let opens: Vec<_> = (0..9).map(|i| raw(OPEN, 1 + 2 * i, &[])).collect();
    expect_protocol_error(with(&opens), "more streams").await;
    let mut flood = vec![raw(OPEN, 1, &[])];
    flood.extend((0..17).map(|_| raw(DATA, 1, &[0u8; MAX_FRAME_PAYLOAD])));
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
