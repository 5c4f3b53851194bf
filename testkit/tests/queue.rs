//! Queue mode end to end, with the real binaries on SQLite and PostgreSQL: requests accepted
//! while the connector is offline survive `kill -9` of the relay and are delivered once it is
//! back, in order for an ordered tenant, each exactly once, with every response retrievable byte
//! for byte; retries, final failures, expiry, idempotency, quotas, cancellation; and across a
//! cluster, delivery by the node holding the session and redelivery after a node dies mid-way.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use relay_store::{QueueSettings, QueueState, Store};
use testkit::process::{bin, relay_cli, start_connector, start_relay, ChildGuard, RelayProcess};
use testkit::{eventually, trace_init, Backend, Client, PgCluster};

/// Queue timings short enough for a test.
const FAST: [(&str, &str); 4] = [
    ("RELAY_QUEUE__POLL_INTERVAL", "100ms"),
    ("RELAY_QUEUE__RETRY_BASE", "100ms"),
    ("RELAY_QUEUE__RETRY_CAP", "500ms"),
    ("RELAY_QUEUE__LEASE", "3s"),
];

/// A relay process on `url` in `dir`; extra environment on top of [`FAST`].
fn relay(dir: &Path, url: &str, extra: &[(&str, &str)]) -> RelayProcess {
    let mut envs: Vec<(&str, &str)> = FAST.to_vec();
    envs.extend(extra);
    let d = dir.display().to_string();
    start_relay(
        &[
            "--data-dir",
            &d,
            "--database-url",
            url,
            "run",
            "--listen",
            "127.0.0.1:0",
            "--listen-http",
            "127.0.0.1:0",
        ],
        &envs,
    )
    .expect("relay starts")
}

/// Tenant `name` with a credential whose secret is in `DATA_DIR/secret` (the last one made).
fn provision(dir: &Path, url: &str, name: &str) {
    relay_cli(dir, &["--database-url", url, "tenant", "create", name]);
    let out = relay_cli(
        dir,
        &[
            "--database-url",
            url,
            "tenant",
            "credential",
            "create",
            name,
        ],
    );
    let secret = out.lines().last().expect("secret").trim();
    std::fs::write(dir.join("secret"), secret).unwrap();
}

async fn tenant_id(store: &Store, name: &str) -> String {
    store.tenant(name).await.unwrap().expect("tenant").id.0
}

/// The status document at `location`.
async fn status(client: &Client, location: &str) -> serde_json::Value {
    let a = client.get(location).await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "{location}: {}", a.text());
    serde_json::from_slice(&a.body).unwrap()
}

/// A body of `len` bytes that names its message.
fn body(i: usize, len: usize) -> Bytes {
    let mut b = format!("message {i}:").into_bytes();
    b.resize(len.max(b.len()), b'a' + (i % 26) as u8);
    Bytes::from(b)
}

/// Accepts 200 messages with the connector away, kills the relay with -9, restarts it, starts the
/// connector: all 200 arrive once each, in order, and every response is the backend's, byte for
/// byte.
async fn offline_then_online(url: &str, dir: &Path) {
    let store = Store::connect(url).await.unwrap();
    provision(dir, url, "acme");
    let acme = tenant_id(&store, "acme").await;
    store
        .set_queue_settings(
            &acme,
            &QueueSettings {
                ordered: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut first = relay(dir, url, &[]);
    let client = Client::new(&dir.join("tls/cert.pem"));
    let base = format!("https://localhost:{}", first.https.port());
    let mut accepted = Vec::new();
    for i in 0..200 {
        let len = if i % 20 == 0 {
            1 << 20
        } else {
            (i * 997) % 50_000
        };
        let sent = body(i, len);
        let a = client
            .request(
                "POST",
                &format!("{base}/queue/acme/app/orders/{i}?n={i}"),
                sent.clone(),
            )
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::ACCEPTED, "message {i}: {}", a.text());
        let location = a.headers["location"].to_str().unwrap().to_string();
        let id = a.headers["x-relay-message-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(location.ends_with(&id) && id.len() == 32, "{location}");
        accepted.push((id, location, sent));
    }
    // The 202s were sent after the commit: a relay killed now loses none of them.
    first.child.kill();
    let second = relay(dir, url, &[]);
    let port = second.https.port();
    let backend = Backend::spawn().await;
    let _connector = start_connector(second.https, dir, &backend.url());
    eventually(
        Duration::from_secs(120),
        "all 200 messages delivered",
        || async {
            let counts = store.queue_counts(Some(&acme)).await.unwrap();
            let delivered = counts
                .by_state
                .get(&QueueState::Delivered)
                .copied()
                .unwrap_or(0);
            (delivered == 200)
                .then_some(())
                .ok_or(format!("{:?}", counts.by_state))
        },
    )
    .await;
    // Each exactly once, in the order accepted, as attempt 1.
    let seen = backend.seen();
    let ids: Vec<String> = seen
        .iter()
        .filter_map(|s| s.headers.get("x-relay-message-id"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = accepted.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids, want, "deliveries in acceptance order, once each");
    assert!(seen.iter().all(|s| s.headers["x-relay-attempt"] == "1"));
    assert_eq!(seen[7].path, "/orders/7?n=7");
    assert_eq!(seen[7].method, "POST");
    // Every response: the backend's (it echoes the body), byte for byte, from either address.
    for (i, (id, location, sent)) in accepted.iter().enumerate() {
        let location = location.replace(&base, &format!("https://localhost:{port}"));
        let s = status(&client, &location).await;
        assert_eq!(s["state"], "delivered", "{s}");
        assert_eq!(s["attempts"], 1);
        let r = client.get(&format!("{location}/response")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-relay-message-id"], id.as_str());
        assert_eq!(
            r.headers["x-echo-path"],
            format!("/orders/{i}?n={i}").as_str()
        );
        assert!(
            r.body == *sent,
            "message {i}: the response differs from what the backend sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_then_online_on_sqlite() {
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("relay.db").display()
    );
    offline_then_online(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_then_online_on_postgres() {
    trace_init();
    let pg = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    offline_then_online(&pg.url(), dir.path()).await;
}

/// Retries, final failures, expiry, idempotency, quotas, cancellation, respond-async, refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_failures_expiry_idempotency_and_quotas() {
    trace_init();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let url = format!("sqlite://{}?mode=rwc", dir.join("relay.db").display());
    let store = Store::connect(&url).await.unwrap();
    provision(dir, &url, "away");
    provision(dir, &url, "acme");
    relay_cli(
        dir,
        &[
            "--database-url",
            &url,
            "tenant",
            "hostname",
            "add",
            "--target",
            "app",
            "acme",
            "app.acme.test",
        ],
    );
    let node = relay(
        dir,
        &url,
        &[
            ("RELAY_QUEUE__MAX_BODY_BYTES", "100000"),
            ("RELAY_QUEUE__MAX_RESPONSE_BYTES", "1000"),
        ],
    );
    let backend = Backend::spawn().await;
    let _connector = start_connector(node.https, dir, &backend.url());
    let client = Client::new(&dir.join("tls/cert.pem"));
    let base = format!("https://localhost:{}", node.https.port());
    let accept = |path: &str, headers: Vec<(&'static str, String)>, body: &'static [u8]| {
        let (client, url) = (&client, format!("{base}{path}"));
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client
                .request_with("POST", &url, &h, Bytes::from_static(body))
                .await
                .unwrap()
        }
    };
    let until_final = |location: String| {
        let client = &client;
        async move {
            eventually(Duration::from_secs(30), "the message is final", || {
                let location = location.clone();
                async move {
                    let s = status(client, &location).await;
                    let state = s["state"].as_str().unwrap().to_string();
                    (state != "queued" && state != "delivering")
                        .then_some(s.clone())
                        .ok_or(format!("{s}"))
                }
            })
            .await
        }
    };

    // 500 twice, then 200: delivered on attempt 3.
    let a = accept("/queue/acme/app/fail-until/3", vec![], b"x").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let s = until_final(a.headers["location"].to_str().unwrap().to_string()).await;
    assert_eq!(
        (s["state"].as_str(), s["attempts"].as_i64()),
        (Some("delivered"), Some(3)),
        "{s}"
    );
    let r = client
        .get(s["response"]["url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.text(), "delivered on 3");

    // A response over queue.max_response_bytes is kept cut, and says so.
    let a = accept("/queue/acme/app/bytes/5000", vec![], b"").await;
    let s = until_final(a.headers["location"].to_str().unwrap().to_string()).await;
    assert_eq!(s["response"]["truncated"], true, "{s}");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(s["response"]["url"].as_str().unwrap()),
    )
    .await
    .expect("the cut response is complete as served")
    .unwrap();
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 1000));
    assert_eq!(r.headers["x-relay-response-truncated"], "true");

    // A 400 is final at once, and its answer is kept.
    let a = accept("/queue/acme/app/status/400", vec![], b"").await;
    let s = until_final(a.headers["location"].to_str().unwrap().to_string()).await;
    assert_eq!(
        (s["state"].as_str(), s["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{s}"
    );
    assert_eq!(s["response"]["status"], 400);

    // One Idempotency-Key, two requests: one message, one delivery.
    let key = vec![("idempotency-key", "order-42".to_string())];
    let (one, two) = (
        accept("/queue/acme/app/idem", key.clone(), b"a").await,
        accept("/queue/acme/app/idem", key, b"b").await,
    );
    assert_eq!(one.headers["location"], two.headers["location"]);
    until_final(one.headers["location"].to_str().unwrap().to_string()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idem = backend.seen().iter().filter(|s| s.path == "/idem").count();
    assert_eq!(idem, 1);

    // Prefer: respond-async on an ordinary relay URL queues it too.
    let a = client
        .request_with(
            "PUT",
            &format!("{base}/relay/acme/app/async"),
            &[("prefer", "respond-async")],
            Bytes::from_static(b"later"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text());
    let s = until_final(a.headers["location"].to_str().unwrap().to_string()).await;
    assert_eq!(s["method"], "PUT");
    let seen = backend.seen();
    let delivered = seen.iter().find(|s| s.path == "/async").expect("delivered");
    assert!(
        delivered.headers.get("prefer").is_none(),
        "the preference was for the relay"
    );

    // On a tenant's own hostname the path is the backend's: /queue/… is relayed, not queued.
    let http = node.http.expect("plain-HTTP listener");
    let a = client
        .request_with(
            "POST",
            &format!("http://{http}/queue/not-mine"),
            &[("host", "app.acme.test")],
            Bytes::from_static(b"direct"),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers["x-echo-path"], "/queue/not-mine");
    assert_eq!(a.body, "direct");

    // Refusals before storing: unknown tenant, too large a body.
    assert_eq!(
        accept("/queue/nobody/app/x", vec![], b"").await.status,
        StatusCode::NOT_FOUND
    );
    let big = vec![0u8; 100_001];
    let a = client
        .request(
            "POST",
            &format!("{base}/queue/acme/app/x"),
            Bytes::from(big),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Tenant `away` has no connector: quotas, cancellation and expiry.
    let away = tenant_id(&store, "away").await;
    store
        .set_queue_settings(
            &away,
            &QueueSettings {
                max_messages: Some(2),
                max_bytes: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let key = || vec![("idempotency-key", "away-1".to_string())];
    let first = accept("/queue/away/app/1", key(), b"12345").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let a = accept("/queue/away/app/2", vec![], b"123456").await;
    assert_eq!(
        a.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "over the byte quota"
    );
    let second = accept("/queue/away/app/2", vec![], b"1").await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    let a = accept("/queue/away/app/3", vec![], b"").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key("retry-after"));
    // A repeat of an accepted message is answered with it, quota or not.
    let again = accept("/queue/away/app/1", key(), b"12345").await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.headers["location"], first.headers["location"]);
    // Nothing accepted was lost by the refusals.
    let first_at = first.headers["location"].to_str().unwrap().to_string();
    assert_eq!(status(&client, &first_at).await["state"], "queued");
    // Cancel a waiting message; not twice.
    let second_at = second.headers["location"].to_str().unwrap().to_string();
    let c = client
        .request("DELETE", &second_at, Bytes::new())
        .await
        .unwrap();
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(status(&client, &second_at).await["state"], "cancelled");
    let c = client
        .request("DELETE", &second_at, Bytes::new())
        .await
        .unwrap();
    assert_eq!(c.status, StatusCode::CONFLICT);
    // A short time to live with the connector away: expired.
    store
        .set_queue_settings(
            &away,
            &QueueSettings {
                ttl_ms: Some(300),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A node reads a tenant's queue settings at most once a second (docs/queue.md).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let short = accept("/queue/away/app/short", vec![], b"").await;
    let at = short.headers["location"].to_str().unwrap().to_string();
    let s = until_final(at).await;
    assert_eq!(s["state"], "expired", "{s}");
    // No such message; a malformed id.
    let gone = client
        .get(&format!("{base}/queue/_messages/{}", "0".repeat(32)))
        .await
        .unwrap();
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let bad = client
        .get(&format!("{base}/queue/_messages/x"))
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::NOT_FOUND);
}

/// Accepted on node A, the connector on B: B delivers. B killed mid-delivery: A redelivers it as
/// attempt 2 once the lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_the_cluster_and_after_a_node_dies_mid_delivery() {
    trace_init();
    let pg = PgCluster::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    provision(dir, &url, "acme");
    let cluster = [
        ("RELAY_CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
        ("RELAY_CLUSTER__NODE_TIMEOUT", "2s"),
    ];
    let a = relay(dir, &url, &cluster);
    let mut b = relay(dir, &url, &cluster);
    let backend = Backend::spawn().await;
    // The connector on B only.
    let mut connector = start_connector(b.https, dir, &backend.url());
    let client = Client::new(&dir.join("tls/cert.pem"));
    let on_a = format!("https://localhost:{}", a.https.port());
    let on_b = format!("https://localhost:{}", b.https.port());
    eventually(Duration::from_secs(30), "the tenant is served through B", || async {
        matches!(client.get(&format!("{on_b}/relay/acme/app/up")).await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
    let acc = client
        .request(
            "POST",
            &format!("{on_a}/queue/acme/app/via-a"),
            Bytes::from_static(b"hi"),
        )
        .await
        .unwrap();
    assert_eq!(acc.status, StatusCode::ACCEPTED);
    let location = acc.headers["location"].to_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "delivered by B", || async {
        status(&client, &location).await["state"] == "delivered"
    })
    .await;

    // A slow delivery, then B dies with it in flight; the connector moves to A.
    let acc = client
        .request(
            "POST",
            &format!("{on_a}/queue/acme/app/sleep/4000"),
            Bytes::new(),
        )
        .await
        .unwrap();
    let location = acc.headers["location"].to_str().unwrap().to_string();
    eventually(
        Duration::from_secs(30),
        "the backend has the first attempt",
        || async { backend.seen().iter().any(|s| s.path == "/sleep/4000") },
    )
    .await;
    b.child.kill();
    connector.kill();
    let _connector = start_connector(a.https, dir, &backend.url());
    let s = eventually(Duration::from_secs(60), "redelivered by A", || async {
        let s = status(&client, &location).await;
        (s["state"] == "delivered")
            .then_some(s.clone())
            .ok_or(format!("{s}"))
    })
    .await;
    assert_eq!(s["attempts"], 2, "{s}");
    let attempts: Vec<String> = backend
        .seen()
        .iter()
        .filter(|s| s.path == "/sleep/4000")
        .map(|s| s.headers["x-relay-attempt"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(attempts, ["1", "2"]);
    let _ = bin("relay-server");
    let _: Option<ChildGuard> = None;
}
