//! End to end on loopback: the relay's limits (body size, a tenant's streams, HTTP/2 streams per
//! connection, connections per source address) and timeouts (response, stream idle).

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};

mod common;
use common::{read_head, setup, slow_request_in_flight, try_read_head, Setup};

#[tokio::test]
async fn body_limit_is_enforced_before_the_tunnel() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay().configure(|f| f.limits.max_body_bytes = Some(1000))).await;
    let ok = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/sink"),
            Bytes::from(vec![1u8; 1000]),
        )
        .await?;
    assert_eq!(ok.status, StatusCode::OK);
    let before = backend.requests();
    let big = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/sink"),
            Bytes::from(vec![1u8; 1001]),
        )
        .await?;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        backend.requests(),
        before,
        "the backend never saw the oversized request"
    );

    // A streamed (chunked) body over the limit is cut mid-stream: the backend never gets it whole.
    let chunks =
        futures_util::stream::iter((0..20).map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![2u8; 100])))
        }));
    let body = BodyExt::boxed(
        http_body_util::StreamBody::new(chunks)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    );
    let req = http::Request::post(relay.url("/relay/acme/app/sink")).body(body)?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

#[tokio::test]
async fn response_timeout_starts_after_the_upload() -> anyhow::Result<()> {
    trace_init();
    let relay = relay()
        .configure(|f| f.limits.request_timeout = Some(Duration::from_millis(800)))
        .spawn()
        .await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        // Longer than the relay's: the 504 below is the relay's own deadline, which for a request
        // without a body runs from its head (the backend answers after 3 s, within this).
        .target_with_timeout("app", &backend.url(), Duration::from_secs(5))
        .spawn();
    conn.connected().await;
    let client = Client::new(&relay.ca_cert());
    // A 2 s upload (8 chunks, 250 ms apart) to a backend that answers after the last byte.
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 8 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![3u8; 1000]))),
            i + 1,
        ))
    });
    let body = BodyExt::boxed(
        http_body_util::StreamBody::new(chunks)
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
    );
    let resp = client
        .send(http::Request::post(relay.url("/relay/acme/app/sink")).body(body)?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert!(text.starts_with("8000 "), "{text}");
    // A backend that is slow after the upload still times out.
    assert_eq!(
        client
            .get(&relay.url("/relay/acme/app/sleep/3000"))
            .await?
            .status,
        StatusCode::GATEWAY_TIMEOUT
    );
    Ok(())
}

#[tokio::test]
async fn a_tenants_stream_cap_answers_429_and_follows_limit_changes() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let limits = |n| relay_store::TenantLimits {
        max_concurrent_streams: Some(n),
        ..Default::default()
    };
    relay.store.set_tenant_limits("acme", &limits(2)).await?;
    relay.sync().await;
    let url = relay.url("/relay/acme/app/slow");
    let first = slow_request_in_flight(&client, &url).await;
    let second = slow_request_in_flight(&client, &url).await;
    let refused = client.get(&relay.url("/relay/acme/app/x")).await?;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "1");

    // Raised at runtime: the next request gets through at once.
    relay.store.set_tenant_limits("acme", &limits(3)).await?;
    relay.sync().await;
    let third = client.get(&relay.url("/relay/acme/app/x")).await?;
    assert_eq!(third.status, StatusCode::OK);
    backend.release();
    for body in [first, second] {
        assert_eq!(body.collect().await?.to_bytes(), "second\n");
    }
    Ok(())
}

#[tokio::test]
async fn a_visitor_http2_connection_gets_the_configured_stream_limit() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client: _,
    } = setup(relay().configure(|f| f.limits.h2_max_concurrent_streams = Some(2))).await;
    let h2 = Client::http2(&relay.ca_cert());
    let url = relay.url("/relay/acme/app/hold");
    let (_, first) = h2.hold(&url).await?;
    let (_, second) = h2.hold(&url).await?;
    // A third request on the same connection waits for a free stream: the relay advertised 2.
    let third = tokio::spawn({
        let (h2, url) = (h2.clone(), url.clone());
        async move { h2.hold(&url).await }
    });
    // Nothing to wait for: the stream must not open, so it gets a fixed while to do so wrongly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream was opened");
    assert_eq!(backend.active_streams(), 2);
    drop(first);
    let (data, _third_body) = tokio::time::timeout(Duration::from_secs(5), third).await???;
    assert!(!data.is_empty());
    drop(second);
    relay.stop().await
}

#[tokio::test]
async fn connections_per_source_address_are_capped() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Setup {
        relay,
        backend: _backend,
        conn: _conn,
        client: _client,
    } = setup(relay().configure(|f| f.limits.max_connections_per_ip = Some(3))).await;
    let addr = relay.http_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /relay/acme/app/a HTTP/1.1\r\nHost: a\r\n\r\n")
            .await?;
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    // The fourth is closed without an answer; the three held ones keep working.
    let mut fourth = tokio::net::TcpStream::connect(addr).await?;
    let _ = fourth
        .write_all(b"GET /relay/acme/app/a HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection got an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held.pop());
    // The slot is free once the relay has seen the close; until then a new one is refused.
    testkit::eventually(Duration::from_secs(10), "a slot free again", || async {
        let mut again = tokio::net::TcpStream::connect(addr).await?;
        again
            .write_all(b"GET /relay/acme/app/a HTTP/1.1\r\nHost: a\r\n\r\n")
            .await?;
        let head = try_read_head(&mut again).await?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "answered {head:?}");
        anyhow::Ok(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn a_stalled_response_is_cut_but_a_slow_reader_is_not() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(
        relay().configure(|f| f.limits.stream_idle_timeout = Some(Duration::from_millis(800))),
    )
    .await;
    // The backend sends a first chunk, then nothing: the visitor's response is aborted, not ended.
    let mut body = slow_request_in_flight(&client, &relay.url("/relay/acme/app/slow")).await;
    let outcome = tokio::time::timeout(Duration::from_secs(10), body.frame()).await?;
    assert!(
        matches!(outcome, Some(Err(_))),
        "expected an aborted body, got {outcome:?}"
    );
    // A reader that pauses longer than the idle timeout while data is waiting is not cut.
    let req = http::Request::get(relay.url("/relay/acme/app/bytes/2000000"))
        .body(testkit::client::Body::default())?;
    let resp = client.send(req).await?;
    let mut body = resp.into_body();
    let mut got = body
        .frame()
        .await
        .expect("data")?
        .into_data()
        .unwrap()
        .len();
    // The pause is the stimulus (2.5 idle timeouts with data waiting), not a wait for something.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    while let Some(frame) = body.frame().await {
        got += frame?.into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(got, 2_000_000);
    backend.release();
    Ok(())
}
