//! End to end on loopback: a real relay, real connectors and a real backend, in-process — what a
//! request carries through the tunnel and the statuses it gets. Streaming and upgrades are in
//! streaming.rs, limits and timeouts in limits.rs, shutdown and restarts in shutdown.rs.

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
    // A request without content reaches the backend without a length where its method expects
    // none (as the visitor sent it), and with `Content-Length: 0` where it expects some.
    for (method, length) in [
        ("HEAD", None),
        ("GET", None),
        ("DELETE", None),
        ("OPTIONS", None),
        ("TRACE", None),
        ("POST", Some("0")),
        ("PUT", Some("0")),
        ("PATCH", Some("0")),
    ] {
        let a = client
            .request(method, &relay.url("/relay/acme/app/empty"), Bytes::new())
            .await?;
        assert_eq!(a.status, StatusCode::OK, "{method}");
        let seen = backend.seen().pop().expect("seen");
        assert_eq!(seen.method, method);
        assert_eq!(
            seen.headers
                .get("content-length")
                .map(|v| v.to_str().unwrap_or("?")),
            length,
            "{method}"
        );
    }
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

/// The connector keeps its backend connections: sequential requests share them (one per session
/// at most); a HEAD, a 204 and a streamed body leave theirs reusable; an answer with
/// `Connection: close` costs a new one, and nothing fails on the way.
#[tokio::test]
async fn backend_connections_are_kept_and_reused() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client,
    } = setup(relay_server::testing::relay()).await;
    let url = |p: &str| relay.url(&format!("/relay/acme/app{p}"));
    for i in 0..10 {
        for (method, path, status) in [
            ("GET", format!("/r{i}"), StatusCode::OK),
            ("HEAD", format!("/h{i}"), StatusCode::OK),
            ("GET", "/status/204".to_string(), StatusCode::NO_CONTENT),
            ("GET", "/bytes/100000".to_string(), StatusCode::OK),
        ] {
            let a = client.request(method, &url(&path), Bytes::new()).await?;
            assert_eq!(a.status, status, "{method} {path}");
        }
    }
    let kept = backend.connections();
    // The connector's default two sessions each keep their own connections.
    assert!(
        kept <= 2,
        "40 sequential requests opened {kept} backend connections"
    );

    for i in 0..3 {
        let a = client.get(&url("/close")).await?;
        assert_eq!(a.status, StatusCode::OK, "close {i}");
        let a = client.get(&url(&format!("/after-close{i}"))).await?;
        assert_eq!(a.status, StatusCode::OK, "after close {i}");
    }
    let after = backend.connections();
    assert!(
        after <= kept + 3,
        "{kept} connections before three closing answers, {after} after"
    );
    Ok(())
}
