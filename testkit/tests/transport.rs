//! The transport ladder: TLS over TCP on the HTTPS port, `auto` falling back when UDP is blocked,
//! and a real CONNECT proxy (tinyproxy) with and without Basic authentication.

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::{relay, RelayHandle};
use testkit::{pattern_chunk, pattern_sha256, trace_init, Backend, Client, HttpProxy};
use tunnel_session::transport::Transport;

async fn relay_with_acme(builder: relay_server::testing::Builder) -> (RelayHandle, String) {
    trace_init();
    let relay = builder.spawn().await;
    let secret = relay.provision("acme").await.secret;
    (relay, secret)
}

/// Downloads `n` pattern bytes through the relay, hashing as they stream.
async fn download_sha(client: &Client, url: &str) -> anyhow::Result<(u64, String)> {
    let resp = client
        .send(
            http::Request::get(url)
                .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())?,
        )
        .await?;
    anyhow::ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
    let mut body = resp.into_body();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            total += data.len() as u64;
            ctx.update(data);
        }
    }
    Ok((total, testkit::hex(ctx.finish().as_ref())))
}

#[tokio::test]
async fn tls_over_tcp_carries_requests_and_large_bodies_both_ways() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .transport("tcp")
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(conn.state().transport, Some(Transport::Tcp));
    assert_eq!(relay.view.sessions("acme")[0].transport, "tcp");
    let client = Client::new(&relay.ca_cert());

    let echo = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/x"),
            Bytes::from_static(b"hi"),
        )
        .await?;
    assert_eq!((echo.status, echo.text().as_str()), (StatusCode::OK, "hi"));

    // 64 MiB down, verified: flow control returns credit, nothing is lost or reordered.
    let n: u64 = 64 * 1024 * 1024;
    let (got, sha) =
        download_sha(&client, &relay.url(&format!("/relay/acme/app/bytes/{n}"))).await?;
    assert_eq!((got, sha), (n, pattern_sha256(n)));
    // Many streams at once share the one TCP connection.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let client = client.clone();
        let url = relay.url(&format!("/relay/acme/app/bytes/{}", 100_000 + i));
        tasks.spawn(async move { download_sha(&client, &url).await.map(|r| (i, r)) });
    }
    while let Some(r) = tasks.join_next().await {
        let (i, (got, sha)) = r??;
        assert_eq!((got, sha), (100_000 + i, pattern_sha256(100_000 + i)));
    }
    Ok(())
}

#[tokio::test]
async fn uploads_stream_over_tls_over_tcp() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay().configure(|f| {
        f.limits.max_body_bytes = Some(1 << 40);
    }))
    .await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .transport("tcp")
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    let client = Client::new(&relay.ca_cert());
    let n: u64 = 64 * 1024 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |offset| async move {
        (offset < n).then(|| {
            let len = (n - offset).min(64 * 1024) as usize;
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(
                    pattern_chunk(offset, len),
                )),
                offset + len as u64,
            )
        })
    });
    let req = http::Request::post(relay.url("/relay/acme/app/sink"))
        .body(http_body_util::StreamBody::new(stream).boxed())?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert_eq!(text, format!("{n} {}", pattern_sha256(n)));
    Ok(())
}

#[tokio::test]
async fn auto_prefers_quic() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .transport("auto")
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(conn.state().transport, Some(Transport::Quic));
    assert_eq!(relay.view.sessions("acme")[0].transport, "quic");
    Ok(())
}

#[tokio::test]
async fn auto_falls_back_to_tls_over_tcp_when_udp_gets_no_answer() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay().udp_elsewhere()).await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .transport("auto")
        .quic_fallback_after(Duration::from_millis(500))
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(conn.state().transport, Some(Transport::Tcp));
    let client = Client::new(&relay.ca_cert());
    let a = client
        .get(&relay.url("/relay/acme/app/after-fallback"))
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-path"], "/after-fallback");
    Ok(())
}

#[tokio::test]
async fn sessions_go_through_a_connect_proxy() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let proxy = HttpProxy::start(None).await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .proxy(&proxy.url())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    // `auto` with a proxy goes straight to TCP, through the proxy.
    assert_eq!(conn.state().transport, Some(Transport::Tcp));
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT 127.0.0.1:{}", relay.addr.port())),
        "{}",
        proxy.log()
    );
    let client = Client::new(&relay.ca_cert());
    let a = client.get(&relay.url("/relay/acme/app/via-proxy")).await?;
    assert_eq!(a.status, StatusCode::OK);

    // The proxy goes away: the session through it is lost.
    drop(proxy);
    conn.wait_for(60, "the session to end", |s| !s.connected)
        .await;
    Ok(())
}

#[tokio::test]
async fn proxy_basic_auth_and_clear_errors() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let proxy = HttpProxy::start(Some(("alice", "s3cret"))).await;

    // Right credentials (percent-encoding allowed in the URL).
    let mut good = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .proxy(&proxy.url_with("alice", "s3cr%65t"))
        .target("app", &backend.url())
        .spawn();
    good.connected().await;
    let client = Client::new(&relay.ca_cert());
    assert_eq!(
        client.get(&relay.url("/relay/acme/app/")).await?.status,
        StatusCode::OK
    );
    good.stop().await;

    // Wrong password, and none at all: never connected, and the log says why.
    for (url, want) in [
        (proxy.url_with("alice", "wrong"), "refused the credentials"),
        (proxy.url(), "requires authentication"),
    ] {
        let bad = connector(&relay.server(), "acme", &secret)
            .ca_cert(relay.ca_cert())
            .proxy(&url)
            .target("app", &backend.url())
            .spawn();
        let state = bad
            .wait_for(20, "an attempt to fail", |s| s.last_error.is_some())
            .await;
        assert!(!state.connected);
        let err = state.last_error.unwrap_or_default();
        assert!(err.contains(want), "{err}");
        assert!(
            !err.contains("wrong"),
            "the password must not be logged: {err}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_relay_certificate_is_verified_through_the_proxy() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let proxy = HttpProxy::start(None).await;
    // No --ca-cert: the relay's self-signed certificate is not trusted, proxy or not.
    let conn = connector(&relay.server(), "acme", &secret)
        .proxy(&proxy.url())
        .target("app", &backend.url())
        .spawn();
    let state = conn
        .wait_for(20, "an attempt to fail", |s| s.last_error.is_some())
        .await;
    let err = state.last_error.unwrap_or_default();
    assert!(err.contains("certificate"), "{err}");
    assert!(!state.connected);
    Ok(())
}

#[tokio::test]
async fn auto_moves_back_to_quic_when_udp_returns_without_failing_requests() -> anyhow::Result<()> {
    // The relay's QUIC socket is elsewhere; a gate on the HTTPS port number forwards UDP to it
    // only while open: closed = UDP blocked.
    let (relay, secret) = relay_with_acme(relay().udp_elsewhere()).await;
    let gate = testkit::UdpGate::start(relay.addr, relay.quic_addr, false).await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .transport("auto")
        .quic_fallback_after(Duration::from_millis(300))
        .quic_probe_interval(Duration::from_secs(1))
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(conn.state().transport, Some(Transport::Tcp));
    let client = Client::new(&relay.ca_cert());

    // A request in flight on the TCP session, and a steady stream of new ones.
    let (_, held) = client.hold(&relay.url("/relay/acme/app/slow")).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, url, stop) = (
            client.clone(),
            relay.url("/relay/acme/app/during"),
            stop.clone(),
        );
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.get(&url).await {
                    Ok(a) if a.status == StatusCode::OK => ok += 1,
                    Ok(a) => failed.push(a.status.to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        })
    };

    gate.set_open(true);
    conn.wait_for(20, "the move to QUIC", |s| {
        s.transport == Some(Transport::Quic)
    })
    .await;
    // The relay ends up with only the QUIC session once the old one has drained.
    backend.release();
    let rest = held.collect().await?.to_bytes();
    assert_eq!(
        rest,
        Bytes::from_static(b"second\n"),
        "the in-flight response completed"
    );
    testkit::eventually(
        Duration::from_secs(10),
        "the old TCP session closed",
        || async {
            let sessions = relay.view.sessions("acme");
            if sessions.len() == 1 && sessions[0].transport == "quic" {
                Ok(())
            } else {
                Err(sessions)
            }
        },
    )
    .await;
    // The load goes on over the QUIC session alone for a few requests.
    let moved = backend.requests();
    testkit::eventually(
        Duration::from_secs(10),
        "load on the QUIC session",
        || async { backend.requests() >= moved + 3 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await?;
    assert!(
        failed.is_empty(),
        "requests failed during the move: {failed:?}"
    );
    assert!(ok > 5, "the load ran ({ok} requests)");
    Ok(())
}

#[tokio::test]
async fn requests_spread_over_a_connectors_sessions() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .sessions(2)
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    conn.wait_for(20, "two sessions", |s| s.sessions == 2).await;
    let sessions = relay.view.sessions("acme");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].connector_id, sessions[1].connector_id);
    let client = Client::new(&relay.ca_cert());
    // Four held requests: the least-loaded pick puts two on each session.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(client.hold(&relay.url("/relay/acme/app/slow")).await?.1);
    }
    let loads: Vec<usize> = relay
        .view
        .sessions("acme")
        .iter()
        .map(|s| s.in_flight)
        .collect();
    assert_eq!(loads, vec![2, 2]);
    backend.release();
    for body in held {
        body.collect().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_tls_inspecting_proxy_is_refused_unless_its_ca_is_given() -> anyhow::Result<()> {
    let (relay, secret) = relay_with_acme(relay()).await;
    let backend = Backend::spawn().await;
    let mitm = testkit::MitmProxy::start().await;

    // Trusting only the relay's own certificate: the proxy's forged one is refused.
    let refused = connector(&relay.server(), "acme", &secret)
        .ca_cert(relay.ca_cert())
        .proxy(&mitm.url())
        .target("app", &backend.url())
        .spawn();
    let state = refused
        .wait_for(30, "an attempt to fail", |s| s.last_error.is_some())
        .await;
    let err = state.last_error.unwrap_or_default();
    assert!(err.contains("certificate"), "{err}");
    assert!(!state.connected);
    refused.stop().await;

    // With the proxy's CA given explicitly, the session works through it.
    let mut trusted = connector(&relay.server(), "acme", &secret)
        .ca_cert(mitm.ca_cert())
        .proxy(&mitm.url())
        .target("app", &backend.url())
        .spawn();
    trusted.connected().await;
    let client = Client::new(&relay.ca_cert());
    let a = client.get(&relay.url("/relay/acme/app/inspected")).await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-path"], "/inspected");
    Ok(())
}
