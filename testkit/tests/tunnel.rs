//! End to end on loopback: a real relay, real connectors and a real backend, in-process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};

mod common;
use common::{setup, Setup};

#[tokio::test]
async fn visitor_reaches_backend_through_connector() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;

    // Spoofed forwarding, relay-internal, proxy and connection-listed headers from the visitor.
    let req = http::Request::post(relay.url("/relay/acme/app/some/path%2Fx?q=%20&r"))
        .header("x-forwarded-for", "1.2.3.4")
        .header("forwarded", "for=1.2.3.4")
        .header("x-relay-tenant", "other")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-status", "spoofed")
        .header("keep-alive", "timeout=5")
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("x-kept", "yes")
        .body(BodyExt::boxed(
            http_body_util::Full::new(Bytes::from_static(b"hello")).map_err(|n| match n {}),
        ))?;
    let resp = client.send(req).await?;
    let (parts, body) = resp.into_parts();
    let answer = testkit::client::Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    };
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "hello");
    assert_eq!(answer.headers["x-echo-method"], "POST");
    assert_eq!(answer.headers["x-echo-path"], "/some/path%2Fx?q=%20&r");
    let request_id = answer.headers["x-relay-request-id"].to_str()?.to_string();
    assert_eq!(request_id.len(), 32);

    // The backend sees the relay's forwarding headers and the request id, not the visitor's.
    let seen = backend.seen().pop().expect("backend saw the request");
    assert_eq!(seen.headers["x-relay-request-id"], request_id.as_str());
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    let authority = relay.server().trim_start_matches("https://").to_string();
    assert_eq!(seen.headers["x-forwarded-host"], authority.as_str());
    // RFC 7239 from what the relay saw, replacing the visitor's.
    assert_eq!(
        seen.headers["forwarded"],
        format!("for=127.0.0.1;proto=https;host=\"{authority}\"").as_str()
    );
    assert_eq!(seen.headers.get_all("forwarded").iter().count(), 1);
    // The backend gets its own host, not the relay's.
    let backend_authority = backend.url().trim_start_matches("http://").to_string();
    assert_eq!(
        seen.headers["host"],
        backend_authority.trim_end_matches('/')
    );
    assert_eq!(seen.headers["x-kept"], "yes");
    for stripped in [
        "x-relay-tenant",
        "proxy-authorization",
        "proxy-status",
        "keep-alive",
        "connection",
        "x-secret",
    ] {
        assert!(
            !seen.headers.contains_key(stripped),
            "{stripped} reached the backend"
        );
    }
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);

    // Plain-HTTP ingress and HTTP/2 reach the same backend.
    let plain = client.get(&relay.http_url("/relay/acme/app/plain")).await?;
    assert_eq!(
        (plain.status, plain.headers["x-echo-path"].to_str()?),
        (StatusCode::OK, "/plain")
    );
    let h2 = Client::http2(&relay.ca_cert())
        .get(&relay.url("/relay/ACME/App/h2"))
        .await?;
    assert_eq!(
        (h2.status, h2.headers["x-echo-path"].to_str()?),
        (StatusCode::OK, "/h2")
    );
    Ok(())
}

#[tokio::test]
async fn statuses_follow_the_contract() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    relay.create_tenant("acme").await;
    relay.create_tenant("lonely").await;
    relay.create_tenant("off").await;
    relay.store.set_tenant_enabled("off", false).await?;
    let cred = relay.create_credential("acme").await;
    relay.sync().await;
    let backend = Backend::spawn().await;
    // A port nobody listens on: bind, note, drop.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .target("down", &format!("http://{closed}"))
        .target_with_timeout("slow", &backend.url(), Duration::from_millis(300))
        .spawn();
    conn.connected().await;
    let client = Client::new(&relay.ca_cert());

    let unknown = client.get(&relay.url("/relay/nobody/app/")).await?;
    let disabled = client.get(&relay.url("/relay/off/app/")).await?;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(disabled.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.headers["content-type"], "application/problem+json");
    // No enumeration: the bodies differ only in the request id.
    let strip = |a: &testkit::client::Answer| {
        let mut v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        v.as_object_mut().unwrap().remove("request_id");
        v
    };
    assert_eq!(strip(&unknown), strip(&disabled));

    let offline = client.get(&relay.url("/relay/lonely/app/")).await?;
    assert_eq!(offline.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(offline.headers["retry-after"], "5");

    for (path, status) in [
        ("/relay/acme/nope/", StatusCode::NOT_FOUND),
        ("/relay/acme/down/", StatusCode::BAD_GATEWAY),
        ("/relay/acme/slow/sleep/3000", StatusCode::GATEWAY_TIMEOUT),
        ("/relay/acme/app/a/../../../x", StatusCode::BAD_REQUEST),
        ("/relay/ac%2Fme/app/", StatusCode::BAD_REQUEST),
        ("/admin", StatusCode::NOT_FOUND),
        ("/relay/acme/app/status/418", StatusCode::IM_A_TEAPOT),
    ] {
        assert_eq!(client.get(&relay.url(path)).await?.status, status, "{path}");
    }
    for a in [&unknown, &offline] {
        assert!(a.headers.contains_key("x-relay-request-id"));
        assert!(
            !a.text().contains("127.0.0.1"),
            "no internals in problem bodies"
        );
    }
    Ok(())
}

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
async fn concurrent_requests_spread_over_two_connectors() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let (b1, b2) = (Backend::spawn().await, Backend::spawn().await);
    let mut c1 = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &b1.url())
        .spawn();
    let mut c2 = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &b2.url())
        .spawn();
    c1.connected().await;
    c2.connected().await;
    assert_eq!(relay.view.sessions("acme").len(), 2);

    let client = Client::new(&relay.ca_cert());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        let url = relay.url(&format!("/relay/acme/app/sleep-{i}"));
        tasks.spawn(async move {
            let body = Bytes::from(format!("request {i} ").repeat(50));
            let answer = client
                .request("PUT", &url, body.clone())
                .await
                .expect("request");
            assert_eq!(answer.status, StatusCode::OK, "request {i}");
            assert_eq!(answer.body, body, "request {i} got another request's body");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let (n1, n2) = (b1.requests(), b2.requests());
    assert_eq!(n1 + n2, 200);
    assert!(n1 > 0 && n2 > 0, "both connectors serve: {n1} / {n2}");
    assert_eq!(
        relay
            .view
            .metrics()
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    Ok(())
}

#[tokio::test]
async fn connector_reconnects_after_relay_restart() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend: _backend,
        conn,
        client,
    } = setup(relay()).await;
    assert_eq!(
        client.get(&relay.url("/relay/acme/app/1")).await?.status,
        StatusCode::OK
    );

    let relay = relay.restart().await;
    conn.wait_for(20, "a new session", |s| {
        s.connected && s.sessions_established >= 2
    })
    .await;
    let client = Client::new(&relay.ca_cert());
    assert_eq!(
        client.get(&relay.url("/relay/acme/app/2")).await?.status,
        StatusCode::OK
    );
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
    wait_until(|| backend.active_streams() == 0, "backend stream cancelled").await;
    relay.wait_idle().await;
    Ok(())
}

async fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The relay's data directory goes away with its handle: keep a copy of its certificate.
fn tempfile_copy(path: &std::path::Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ca.pem");
    std::fs::copy(path, &copy).unwrap();
    (dir, copy)
}

#[allow(dead_code)]
fn _assert_send(_: Arc<()>) {}

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
        .target_with_timeout("app", &backend.url(), Duration::from_millis(800))
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

/// Starts a `/slow` request and returns its body after the first chunk arrived.
async fn slow_request_in_flight(client: &Client, url: &str) -> hyper::body::Incoming {
    let (first, body) = client.hold(url).await.unwrap();
    assert_eq!(first, Bytes::from_static(b"first\n"));
    body
}

#[tokio::test]
async fn connector_shutdown_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn,
        client,
    } = setup(relay()).await;
    let body = slow_request_in_flight(&client, &relay.url("/relay/acme/app/slow")).await;
    let stopping = tokio::spawn(conn.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the connector waits for its stream"
    );
    backend.release();
    assert_eq!(
        body.collect().await?.to_bytes(),
        Bytes::from_static(b"second\n")
    );
    tokio::time::timeout(Duration::from_secs(10), stopping).await??;
    Ok(())
}

#[tokio::test]
async fn relay_shutdown_drains_in_flight_requests_and_refuses_new_ones() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    let body = slow_request_in_flight(&client, &relay.url("/relay/acme/app/slow")).await;
    let url = relay.url("/relay/acme/app/after");
    let ca = relay.ca_cert();
    let ca_copy = tempfile_copy(&ca);
    let stopping = tokio::spawn(relay.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the relay waits for the in-flight request"
    );
    // A new visitor connection is refused while the relay drains.
    assert!(Client::new(&ca_copy.1).get(&url).await.is_err());
    backend.release();
    assert_eq!(
        body.collect().await?.to_bytes(),
        Bytes::from_static(b"second\n")
    );
    tokio::time::timeout(Duration::from_secs(10), stopping).await???;
    Ok(())
}

#[tokio::test]
async fn admin_listener_reports_health_and_metrics() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend: _backend,
        conn: _conn,
        client,
    } = setup(relay()).await;
    for _ in 0..3 {
        let ok = client
            .request(
                "POST",
                &relay.url("/relay/acme/app/echo"),
                Bytes::from_static(b"12345"),
            )
            .await?;
        assert_eq!(ok.status, StatusCode::OK);
    }
    assert_eq!(
        client.get(&relay.url("/relay/acme/nope/")).await?.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.get(&relay.url("/relay/ghost/app/")).await?.status,
        StatusCode::NOT_FOUND
    );

    let admin = format!("http://{}", relay.admin_addr.expect("admin listener"));
    assert_eq!(
        client.get(&format!("{admin}/healthz")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&format!("{admin}/readyz")).await?.status,
        StatusCode::OK
    );
    // Metrics need an API token; health and readiness do not.
    assert_eq!(
        client.get(&format!("{admin}/metrics")).await?.status,
        StatusCode::UNAUTHORIZED
    );
    let token = relay.api_token("prometheus").await;
    let metrics = client
        .get_bearer(&format!("{admin}/metrics"), &token)
        .await?;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    for line in [
        "relay_requests_total{tenant=\"acme\",class=\"2xx\"} 3",
        "relay_requests_total{tenant=\"acme\",class=\"4xx\"} 1",
        // The unknown tenant's name never becomes a label.
        "relay_requests_total{tenant=\"\",class=\"4xx\"} 1",
        "relay_request_body_bytes_total{tenant=\"acme\"} 15",
        "relay_response_body_bytes_total{tenant=\"acme\"} 15",
        "relay_response_head_duration_seconds_count 5",
        "relay_sessions 1",
        "relay_streams_in_flight 0",
        "relay_auth_failures_total 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("ghost"));
    Ok(())
}

/// Reads an HTTP/1.1 response head from a raw socket (byte by byte: what follows is the caller's).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "connection closed in a response head"
        );
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
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
    tokio::time::sleep(Duration::from_millis(2000)).await;
    while let Some(frame) = body.frame().await {
        got += frame?.into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(got, 2_000_000);
    backend.release();
    Ok(())
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = tokio::net::TcpStream::connect(addr).await?;
    again
        .write_all(b"GET /relay/acme/app/a HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    assert!(
        read_head(&mut again).await.starts_with("HTTP/1.1 200"),
        "a slot is free again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_graceful_restart_under_load_completes_every_request_in_flight() -> anyhow::Result<()>
{
    let Setup {
        relay,
        backend,
        conn,
        client,
    } = setup(relay()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = relay.url("/relay/acme/app/sleep/150");
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        workers.spawn(async move {
            // (tag, status or error) per request; a fresh connection each (Connection: close), so
            // that no request is lost to the keep-alive race every HTTP client has.
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tag = format!("w{w}r{i}");
                i += 1;
                let req = http::Request::get(format!("{base}?{tag}"))
                    .header("connection", "close")
                    .body(testkit::client::Body::default())
                    .expect("request");
                let outcome = match client.send(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.into_body().collect().await.map(|b| b.to_bytes()) {
                            Ok(b) if status == StatusCode::OK && b == "slept" => Ok(()),
                            Ok(_) => Err(format!("status {status}")),
                            Err(e) => Err(format!("body cut: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{e:#}")),
                };
                outcomes.push((tag, outcome));
                if outcomes.last().is_some_and(|(_, o)| o.is_err()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            outcomes
        });
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let relay = relay.restart().await;
    conn.wait_for(20, "a new session", |s| {
        s.connected && s.sessions_established >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = Vec::new();
    while let Some(w) = workers.join_next().await {
        outcomes.extend(w?);
    }
    // Every request that reached the backend got its complete answer: nothing in flight failed
    // (requests that arrived while no relay was listening may fail: there is no second relay).
    let reached: std::collections::HashSet<String> = backend
        .seen()
        .into_iter()
        .filter_map(|s| s.path.split_once('?').map(|(_, q)| q.to_string()))
        .collect();
    let in_flight_failures: Vec<_> = outcomes
        .iter()
        .filter(|(tag, o)| o.is_err() && reached.contains(tag))
        .collect();
    assert!(in_flight_failures.is_empty(), "{in_flight_failures:?}");
    let ok = outcomes.iter().filter(|(_, o)| o.is_ok()).count();
    assert!(
        ok >= 16,
        "the load ran before and after the restart: {ok} ok"
    );
    assert_eq!(
        client
            .get(&relay.url("/relay/acme/app/after"))
            .await?
            .status,
        StatusCode::OK
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
async fn a_trusted_load_balancers_forwarding_headers_are_kept_and_extended() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay().configure(|f| {
        f.routing.trusted_proxies = Some(vec!["127.0.0.0/8".into()]);
    }))
    .await;
    // The balancer (here: the test, from 127.0.0.1) reports the visitor and the original scheme.
    let req = http::Request::get(relay.http_url("/relay/acme/app/lb"))
        .header("x-forwarded-for", "198.51.100.4, 203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .body(testkit::client::Body::default())?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.headers()["x-relay-request-id"].to_str()?.to_string();
    let seen = backend.seen().pop().expect("backend saw it");
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "198.51.100.4, 203.0.113.9, 127.0.0.1"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example.com");
    // The audit log names the visitor the balancer vouched for, not the balancer.
    assert_eq!(relay.audit_record(&id).await.visitor, "203.0.113.9");
    Ok(())
}

#[tokio::test]
async fn http_semantics_and_request_limits_hold_end_to_end() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay()).await;

    // HEAD, 204 and 304 arrive without a body; a redirect is passed on, never followed.
    let head = client
        .request("HEAD", &relay.url("/relay/acme/app/page"), Bytes::new())
        .await?;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    assert_eq!(backend.seen().pop().expect("seen").method, "HEAD");
    for code in [204, 304] {
        let a = client
            .get(&relay.url(&format!("/relay/acme/app/status/{code}")))
            .await?;
        assert_eq!(a.status.as_u16(), code);
        assert!(a.body.is_empty());
    }
    let before = backend.requests();
    let moved = client.get(&relay.url("/relay/acme/app/redirect")).await?;
    assert_eq!(moved.status, StatusCode::FOUND);
    assert_eq!(moved.headers["location"], "http://elsewhere.invalid/next");
    assert_eq!(
        backend.requests(),
        before + 1,
        "the redirect was not followed"
    );

    // Request limits answer before any connector work.
    let before = backend.requests();
    let long = format!("/relay/acme/app/{}", "a".repeat(9000));
    let a = client.get(&relay.url(&long)).await?;
    assert_eq!(a.status, StatusCode::URI_TOO_LONG);
    assert!(a.headers.contains_key("x-relay-request-id"));
    let mut req = http::Request::get(relay.url("/relay/acme/app/many"));
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "1");
    }
    let many = client
        .send(req.body(BodyExt::boxed(
            http_body_util::Full::new(Bytes::new()).map_err(|n| match n {}),
        ))?)
        .await?;
    assert_eq!(many.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A tenant's own body limit, below the relay's.
    relay
        .store
        .set_tenant_limits(
            "acme",
            &relay_store::TenantLimits {
                max_body_bytes: Some(1000),
                ..Default::default()
            },
        )
        .await?;
    relay.sync().await;
    let big = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/upload"),
            Bytes::from(vec![b'x'; 1001]),
        )
        .await?;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let fits = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/upload"),
            Bytes::from(vec![b'x'; 1000]),
        )
        .await?;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(
        backend.requests(),
        before + 1,
        "only the request within every limit reached the backend"
    );
    relay.stop().await
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
async fn a_target_can_receive_the_visitors_host() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let backend = Backend::spawn().await;
    let _conn = common::connect(&relay, "acme", |c| {
        c.target("plain", &backend.url())
            .target_preserving_host("site", &backend.url())
    })
    .await;
    let client = Client::new(&relay.ca_cert());
    let authority = relay.server().trim_start_matches("https://").to_string();
    let backend_authority = backend.url().trim_start_matches("http://").to_string();
    for (target, expected) in [("plain", &backend_authority), ("site", &authority)] {
        let a = client
            .get(&relay.url(&format!("/relay/acme/{target}/x")))
            .await?;
        assert_eq!(a.status, StatusCode::OK);
        let seen = backend.seen().pop().expect("seen");
        assert_eq!(seen.headers["host"], expected.as_str(), "target {target}");
    }
    relay.stop().await
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

/// Backends behind TLS: trusted through an extra CA file, refused (502, nothing reaches the
/// backend) on the system roots alone or under a name the certificate lacks, accepted unverified
/// only with `insecure`, and spoken to over HTTP/2 when the target asks for it (ALPN `h2`).
#[tokio::test]
async fn tls_backends_are_verified_unless_a_target_says_otherwise() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let backend = Backend::spawn_tls().await;
    let ca = backend.ca_cert().expect("TLS backend").to_path_buf();
    let by_ip = format!("https://127.0.0.1:{}", backend.addr().port());
    let _conn = common::connect(&relay, "acme", |c| {
        c.target_with("trusted", &backend.url(), |t| t.ca_cert = Some(ca.clone()))
            .target_with("h2", &backend.url(), |t| {
                t.ca_cert = Some(ca.clone());
                t.http2 = true;
            })
            .target("system-roots", &backend.url())
            .target_with("wrong-name", &by_ip, |t| t.ca_cert = Some(ca.clone()))
            .target_with("insecure", &by_ip, |t| t.insecure = true)
    })
    .await;
    let client = Client::new(&relay.ca_cert());
    let cases = [
        ("trusted", Some(http::Version::HTTP_11)),
        ("h2", Some(http::Version::HTTP_2)),
        ("system-roots", None),
        ("wrong-name", None),
        ("insecure", Some(http::Version::HTTP_11)),
    ];
    for (target, served) in cases {
        let before = backend.requests();
        let a = client
            .request(
                "POST",
                &relay.url(&format!("/relay/acme/{target}/echo")),
                Bytes::from_static(b"over tls"),
            )
            .await?;
        match served {
            Some(version) => {
                assert_eq!(a.status, StatusCode::OK, "target {target}");
                assert_eq!(a.text(), "over tls", "target {target}");
                let seen = backend.seen().pop().expect("seen");
                assert_eq!(seen.version, version, "target {target}");
                assert_eq!(backend.requests(), before + 1, "target {target}");
            }
            None => {
                assert_eq!(a.status, StatusCode::BAD_GATEWAY, "target {target}");
                assert_eq!(
                    backend.requests(),
                    before,
                    "target {target} reached the backend"
                );
            }
        }
    }
    relay.stop().await
}
