//! A connector that breaks the rules, against the real relay: an authenticated QUIC session
//! that answers requests with hand-made frames. Header values with CR, LF or NUL, a bad header
//! name, a frame this protocol version never sends, a body before the head, or a 101 nobody asked
//! for must give the visitor 502 and nothing of what the connector injected; hop-by-hop fields it
//! sends are stripped; the relay keeps serving.

use bytes::{BufMut, BytesMut};
use http::StatusCode;
use relay_server::testing::relay;
use testkit::{trace_init, Client};
use tunnel_protocol::{ControlFrame, Credential};

mod common;

/// A `ResponseHead` frame with raw (unchecked) header bytes.
fn raw_head(status: u16, headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut payload = BytesMut::new();
    payload.put_u8(tunnel_protocol::VERSION);
    payload.put_u16(status);
    payload.put_u16(headers.len() as u16);
    for (name, value) in headers {
        payload.put_u16(name.len() as u16);
        payload.put_slice(name);
        payload.put_u16(value.len() as u16);
        payload.put_slice(value);
    }
    let mut frame = vec![0x03];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

fn data(bytes: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x00];
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(bytes);
    frame
}

/// The answer the rogue connector gives to a request for `path`.
fn answer(path: &str) -> Vec<u8> {
    match path {
        "/crlf" => raw_head(200, &[(b"x-a", b"a\r\nx-injected: 1")]),
        "/lf" => raw_head(200, &[(b"x-a", b"a\nx-injected: 1")]),
        "/nul" => raw_head(200, &[(b"x-a", b"a\0b")]),
        "/bad-name" => raw_head(200, &[(b"x injected", b"1")]),
        "/unknown-frame" => vec![0x7f, 0, 0, 0, 1, b'x'],
        "/data-first" => data(b"no head"),
        // A switch the visitor never asked for: the visitor's connection is not handed over.
        "/unasked-101" => raw_head(101, &[(b"connection", b"upgrade"), (b"upgrade", b"h2c")]),
        "/garbage-after-head" => {
            let mut out = raw_head(200, &[]);
            out.extend_from_slice(&data(b"partial"));
            out.extend_from_slice(&[0x7f, 0, 0, 0, 1, b'x']);
            out
        }
        "/bad-version" => {
            let mut out = raw_head(200, &[]);
            out[5] = 0x7f;
            out
        }
        "/hop-by-hop" => {
            let mut out = raw_head(
                200,
                &[
                    (b"connection", b"x-drop, keep-alive"),
                    (b"x-drop", b"1"),
                    (b"keep-alive", b"timeout=5"),
                    (b"transfer-encoding", b"chunked"),
                    (b"proxy-connection", b"keep-alive"),
                    (b"upgrade", b"h2c"),
                    (b"x-ok", b"1"),
                ],
            );
            out.extend_from_slice(&data(b"fine"));
            out
        }
        _ => raw_head(404, &[]),
    }
}

/// Serves one request stream: reads the head, writes the canned answer, ends the stream.
async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Some(head) = common::read_request_head(&mut recv).await else {
        return;
    };
    let _ = send.write_all(&answer(&head.path_and_query)).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

#[tokio::test]
async fn a_rogue_connector_cannot_inject_and_cannot_break_the_relay() {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;

    let (conn, _control, welcome) = common::hello(
        &relay,
        "acme",
        Credential::Secret(cred.secret.clone()),
        &["app"],
    )
    .await;
    assert!(matches!(welcome, ControlFrame::Welcome(_)), "{welcome:?}");
    let streams = common::serve_streams(&conn, serve);

    let client = Client::new(&relay.ca_cert());
    for path in [
        "/crlf",
        "/lf",
        "/nul",
        "/bad-name",
        "/unknown-frame",
        "/data-first",
        "/bad-version",
        "/unasked-101",
    ] {
        let a = client
            .get(&relay.url(&format!("/relay/acme/app{path}")))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{path}");
        assert!(
            !a.headers.contains_key("x-injected") && !a.headers.contains_key("x-a"),
            "{path}: {:?}",
            a.headers
        );
        assert!(a.headers.contains_key("x-relay-request-id"), "{path}");
    }
    // Garbage after a good head: the answer has begun, so the visitor's stream is aborted
    // (RST_STREAM), never ended as if complete.
    let r = client
        .get(&relay.url("/relay/acme/app/garbage-after-head"))
        .await;
    assert!(
        r.is_err(),
        "a broken body ended cleanly: {:?}",
        r.map(|a| a.text())
    );
    // Well-formed but hop-by-hop: stripped; the rest passes.
    let a = client
        .get(&relay.url("/relay/acme/app/hop-by-hop"))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), "fine");
    assert_eq!(a.headers["x-ok"], "1");
    for name in [
        "x-drop",
        "keep-alive",
        "transfer-encoding",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(
            !a.headers.contains_key(name),
            "{name} passed: {:?}",
            a.headers
        );
    }
    // The session survived all of it, and the relay answers.
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    relay.wait_idle().await;
    let a = client
        .get(&relay.url("/relay/acme/app/other"))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    streams.abort();
    conn.close(0u32.into(), b"done");
    relay.stop().await.unwrap();
}
