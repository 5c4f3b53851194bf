//! HTTP/2 abuse against the relay's HTTPS ingress, frame by frame over real TLS (ALPN `h2`):
//! rapid reset (CVE-2023-44487) and a CONTINUATION flood (CVE-2024-27316 family). Each must end
//! the abusive connection with GOAWAY after bounded work, reach the backend a bounded number of
//! times, and leave the relay serving everyone else.

use std::time::Duration;

use relay_server::testing::relay;
use testkit::process::rss_kib;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{setup, Setup};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK literal field without indexing, with the name from the static table.
fn literal(out: &mut Vec<u8>, name_index: u8, value: &str) {
    assert!(name_index < 15 && value.len() < 127);
    out.push(name_index);
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// A GET request's header block: `:method GET`, `:scheme https` (static entries 2 and 7),
/// `:authority` and `:path` (static names 1 and 4).
fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    literal(&mut b, 1, authority);
    literal(&mut b, 4, path);
    b
}

/// TLS to the relay with ALPN `h2`, the preface and an empty SETTINGS sent.
async fn connect(addr: std::net::SocketAddr, ca: &std::path::Path) -> Tls {
    let mut tls = common::tls_connect(addr, ca, Some("h2")).await;
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, SETTINGS, 0, 0, &[]);
    tls.write_all(&hello).await.unwrap();
    tls
}

/// Reads frames until GOAWAY (its error code) or the end of the connection (`None`), acking the
/// server's SETTINGS; at most 30 s and 64 MiB.
async fn until_goaway(tls: &mut Tls) -> Option<u32> {
    read_frames(tls, None).await
}

/// Sends a GET on `stream` (a full header block, `extra` fields appended) and waits for the
/// response's HEADERS frame: proof that the connection and the encoding work before the abuse.
async fn request_ok(tls: &mut Tls, stream: u32, authority: &str, extra: &[u8]) {
    let mut block = request_block(authority, "/relay/acme/app/first");
    block.extend_from_slice(extra);
    let mut out = Vec::new();
    frame(&mut out, HEADERS, END_STREAM | END_HEADERS, stream, &block);
    tls.write_all(&out).await.unwrap();
    assert_eq!(
        read_frames(tls, Some(stream)).await,
        Some(0),
        "no answer on stream {stream}"
    );
}

/// Reads frames until a HEADERS frame on `headers_on` (`Some(0)`), a GOAWAY (its code) or the
/// end of the connection (`None`), acking SETTINGS; at most 30 s and 64 MiB.
async fn read_frames(tls: &mut Tls, headers_on: Option<u32>) -> Option<u32> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                if kind == HEADERS && Some(stream) == headers_on {
                    return Some(0);
                }
                if kind == GOAWAY && payload.len() >= 8 {
                    return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                if kind == SETTINGS && flags & ACK == 0 {
                    let mut ack = Vec::new();
                    frame(&mut ack, SETTINGS, ACK, 0, &[]);
                    let _ = tls.write_all(&ack).await;
                }
            }
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    total += n;
                    assert!(total < 64 << 20, "the relay kept answering");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the abusive connection is still open after 30 s")
}

/// After the abuse, a new visitor connection is served as usual.
async fn others_are_served(client: &testkit::Client, relay: relay_server::testing::RelayHandle) {
    let a = client
        .get(&relay.url("/relay/acme/app/after"))
        .await
        .unwrap();
    assert_eq!(a.status, http::StatusCode::OK);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_others_are_served() {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let authority = format!("localhost:{}", relay.addr.port());
    let mut tls = connect(relay.addr, &relay.ca_cert()).await;
    request_ok(&mut tls, 1, &authority, &[]).await;
    assert_eq!(backend.requests(), 1);
    // 5 000 requests, each cancelled right after it is sent, in 50 bursts.
    let mut sent = 0u32;
    'bursts: for burst in 0..50u32 {
        let mut out = Vec::new();
        for i in 0..100u32 {
            let id = 3 + 2 * (burst * 100 + i);
            let block = request_block(&authority, "/relay/acme/app/sleep/1000");
            frame(&mut out, HEADERS, END_STREAM | END_HEADERS, id, &block);
            frame(&mut out, RST_STREAM, 0, id, &0x8u32.to_be_bytes()); // CANCEL
        }
        if tls.write_all(&out).await.is_err() {
            break 'bursts;
        }
        sent += 100;
    }
    let code = until_goaway(&mut tls).await;
    assert!(
        matches!(code, Some(0xb) | None),
        "rapid reset should end in GOAWAY ENHANCE_YOUR_CALM, got {code:?}"
    );
    // Requests that reached the backend before the cut are few; none is left running.
    let reached = backend.requests() - 1;
    assert!(
        reached <= 200,
        "{reached} of {sent} reset requests reached the backend"
    );
    relay.wait_idle().await;
    others_are_served(&client, relay).await;
}

#[tokio::test]
async fn continuation_flood_is_cut_off_with_bounded_memory() {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let authority = format!("localhost:{}", relay.addr.port());
    let pid = std::process::id();
    let rss_before = rss_kib(pid);
    let mut field = Vec::new();
    // Literal without indexing, new name "x-flood" (7 bytes), a 1000-byte value.
    field.extend_from_slice(&[0x00, 7]);
    field.extend_from_slice(b"x-flood");
    field.extend_from_slice(&[0x7f, 0x80 | (873 & 0x7f) as u8, (873 >> 7) as u8]);
    field.extend_from_slice(&[b'a'; 1000]);
    let mut tls = connect(relay.addr, &relay.ca_cert()).await;
    // Three such fields in a complete block are an ordinary request.
    request_ok(&mut tls, 1, &authority, &field.repeat(3)).await;
    assert_eq!(backend.requests(), 1);
    // A HEADERS frame without END_HEADERS, then CONTINUATION frames of 16 KiB, each full of
    // those fields, that never end the block: up to 64 MiB.
    let mut out = Vec::new();
    frame(
        &mut out,
        HEADERS,
        0,
        3,
        &request_block(&authority, "/relay/acme/app/flood"),
    );
    tls.write_all(&out).await.unwrap();
    let payload: Vec<u8> = field.iter().copied().cycle().take(16 * 1024).collect();
    let mut flood = Vec::new();
    for _ in 0..16 {
        frame(&mut flood, CONTINUATION, 0, 3, &payload);
    }
    let mut written = 0usize;
    let writer = async {
        while written < 64 << 20 {
            if tls.write_all(&flood).await.is_err() {
                return;
            }
            written += flood.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    assert!(
        written < 64 << 20,
        "the relay read a 64 MiB header block without closing the connection"
    );
    let code = until_goaway(&mut tls).await;
    assert!(
        code.is_none_or(|c| c != 0),
        "a flood must not end with NO_ERROR, got {code:?}"
    );
    assert_eq!(
        backend.requests(),
        1,
        "the flooded request reached the backend"
    );
    // The relay runs in this process: its memory did not follow the flood.
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "RSS grew by {grown} KiB during the flood"
    );
    others_are_served(&client, relay).await;
}
