//! End to end on loopback: responses that stream (chunked, server-sent events, gRPC-shaped
//! trailers), visitors that go away mid-response, `Expect: 100-continue`, and upgraded
//! connections carrying raw bytes.

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};

mod common;
use common::{read_head, setup, Setup};

#[tokio::test]
async fn slow_chunked_response_streams_before_the_backend_finishes() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let req = http::Request::get(relay.url("/relay/acme/app/slow"))
        .body(testkit::client::Body::default())?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("first chunk arrives while the backend still holds the rest")
        .expect("a frame")?;
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first\n"));
    backend.release();
    let rest = body.collect().await?.to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second\n"));
    Ok(())
}

#[tokio::test]
async fn visitor_abort_cancels_the_backend_stream() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let req = http::Request::get(relay.url("/relay/acme/app/hold"))
        .body(testkit::client::Body::default())?;
    let resp = client.send(req).await?;
    let mut body = resp.into_body();
    body.frame().await.expect("data")?;
    assert_eq!(backend.active_streams(), 1);
    drop(body);
    drop(client);
    testkit::eventually(
        Duration::from_secs(10),
        "the backend stream cancelled",
        || async { backend.active_streams() == 0 },
    )
    .await;
    relay.wait_idle().await;
    Ok(())
}

#[tokio::test]
async fn server_sent_events_arrive_one_by_one() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let resp = client
        .send(
            http::Request::get(relay.url("/relay/acme/app/sse"))
                .header("accept", "text/event-stream")
                .body(BodyExt::boxed(
                    http_body_util::Full::new(Bytes::new()).map_err(|n| match n {}),
                ))?,
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.into_body();
    // The first event arrives while the backend is still holding the stream open.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first event is not buffered")
        .expect("a frame")?;
    assert_eq!(
        first.into_data().ok().as_deref(),
        Some(&b"event: tick\ndata: first\n\n"[..])
    );
    backend.release();
    let rest = body.collect().await?.to_bytes();
    assert_eq!(&rest[..], b"data: second\n\n");
    relay.stop().await
}

#[tokio::test]
async fn grpc_shaped_calls_keep_trailers_end_to_end_over_http2() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target_http2("grpc", &backend.url())
        .spawn();
    conn.connected().await;
    let client = Client::http2(&relay.ca_cert());
    let req = http::Request::post(relay.url("/relay/acme/grpc/trailers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(BodyExt::boxed(
            http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")).map_err(|n| match n {}),
        ))?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-seen-version"],
        "HTTP/2.0",
        "h2c to the backend"
    );
    assert_eq!(
        resp.headers()["x-seen-te"],
        "trailers",
        "TE: trailers survives the hop-by-hop strip"
    );
    let collected = resp.into_body().collect().await?;
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers arrive at the visitor");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "yes");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"part-1;part-2"));
    Ok(())
}

#[tokio::test]
async fn upgraded_connections_carry_raw_bytes_both_ways() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let Setup {
        relay,
        backend: _backend,
        conn: _conn,
        client: _client,
    } = setup(relay()).await;
    let mut s = tokio::net::TcpStream::connect(relay.http_addr.unwrap()).await?;
    s.write_all(b"GET /relay/acme/app/upgrade-echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await?;
    let head = read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("x-relay-request-id"), "{head}");

    let (r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for i in 0..10_000 {
            w.write_all(format!("message {i}\n").as_bytes())
                .await
                .unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut lines = BufReader::new(r).lines();
    for i in 0..10_000 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await??;
        assert_eq!(line.as_deref(), Some(format!("message {i}").as_str()));
    }
    // The backend closes after our half-close; the tunnel passes the end through.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??,
        None
    );
    writer.await?;
    relay.wait_idle().await;
    Ok(())
}

#[tokio::test]
async fn bytes_after_a_refused_upgrade_are_a_new_request() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Setup {
        relay,
        backend,
        conn: _conn,
        client: _client,
    } = setup(relay()).await;
    let mut s = tokio::net::TcpStream::connect(relay.http_addr.unwrap()).await?;
    // The backend answers 200, not 101: the trailing bytes must never reach it on this stream.
    s.write_all(
        b"GET /relay/acme/app/status/200 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await?;
    let first = read_head(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let len: usize = first
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    assert!(
        body.is_empty(),
        "the echo saw a request body: {:?}",
        String::from_utf8_lossy(&body)
    );
    let second = read_head(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 404"),
        "the trailing bytes were parsed by the relay: {second}"
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/status/200");
    Ok(())
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_answer_before_the_body() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Setup {
        relay,
        backend: _backend,
        conn: _conn,
        client: _,
    } = setup(relay()).await;
    let mut s = tokio::net::TcpStream::connect(relay.http_addr.expect("plain HTTP")).await?;
    s.write_all(
        b"POST /relay/acme/app/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await?;
    // Nothing of the body is sent until the relay says to go on.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    s.write_all(b"hello").await?;
    let mut answer = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !answer.contains("hello") && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.contains("hello"), "the echoed body: {answer:?}");
    relay.stop().await
}
