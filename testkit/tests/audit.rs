//! The audit log: one record per visitor request, written off the request path.

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};

mod common;

fn request_id(headers: &http::HeaderMap) -> String {
    headers["x-relay-request-id"]
        .to_str()
        .expect("ascii")
        .to_string()
}

#[tokio::test]
async fn every_request_gets_a_record_with_its_outcome() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let backend = Backend::spawn().await;
    let _conn = common::connect(&relay, "acme", |c| {
        c.target("app", &backend.url())
            .target("down", "http://127.0.0.1:1")
    })
    .await;
    let session_id = relay.view.sessions("acme")[0].id.clone();
    let client = Client::new(&relay.ca_cert());

    // A complete exchange: bytes both ways, path kept, query string never stored.
    let ok = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/orders/7?token=s3cret"),
            Bytes::from_static(b"hello"),
        )
        .await?;
    assert_eq!(ok.status, StatusCode::OK);
    let r = relay.audit_record(&request_id(&ok.headers)).await;
    assert_eq!(
        (r.tenant.as_str(), r.target.as_str(), r.method.as_str()),
        ("acme", "app", "POST")
    );
    assert_eq!(r.path, "/relay/acme/app/orders/7");
    assert_eq!((r.status, r.outcome.as_str()), (200, "ok"));
    assert_eq!((r.bytes_in, r.bytes_out), (5, 5));
    assert_eq!(r.session_id, session_id);
    assert_eq!(r.relay_node, "test-node");
    assert_eq!(r.visitor, "127.0.0.1");

    // A tenant may opt in to keeping query strings.
    relay
        .store
        .set_tenant_settings(
            "acme",
            &relay_store::TenantSettings {
                audit_query_strings: Some(true),
                ..Default::default()
            },
        )
        .await?;
    relay.sync().await;
    let with_query = client
        .get(&relay.url("/relay/acme/app/search?q=kept"))
        .await?;
    let r = relay.audit_record(&request_id(&with_query.headers)).await;
    assert_eq!(r.path, "/relay/acme/app/search?q=kept");

    // Answered by the relay itself: refused, no session involved.
    let unknown = client.get(&relay.url("/relay/nobody/app/")).await?;
    let r = relay.audit_record(&request_id(&unknown.headers)).await;
    assert_eq!((r.status, r.outcome.as_str()), (404, "refused"));
    assert_eq!(r.session_id, "");

    // The backend is down: a backend error.
    let down = client.get(&relay.url("/relay/acme/down/")).await?;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    let r = relay.audit_record(&request_id(&down.headers)).await;
    assert_eq!((r.status, r.outcome.as_str()), (502, "backend-error"));

    // The visitor reads the head and the first bytes, then goes away.
    let resp = client
        .send(
            http::Request::get(relay.url("/relay/acme/app/hold"))
                .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())?,
        )
        .await?;
    let id = request_id(resp.headers());
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame")?;
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    let r = relay.audit_record(&id).await;
    assert_eq!((r.status, r.outcome.as_str()), (200, "visitor-aborted"));
    assert!(r.bytes_out > 0);

    // Nothing dropped, and the counters are exposed.
    let token = relay.api_token("prometheus").await;
    let metrics = client
        .get_bearer(
            &format!("http://{}/metrics", relay.admin_addr.unwrap()),
            &token,
        )
        .await?
        .text();
    assert!(metrics.contains("relay_audit_dropped_total 0"), "{metrics}");
    assert!(
        !metrics.contains("relay_audit_written_total 0\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn retention_purges_old_records() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let client = Client::new(&relay.ca_cert());
    let a = client.get(&relay.url("/relay/nobody/app/")).await?;
    relay.audit_record(&request_id(&a.headers)).await;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    assert_eq!(relay.store.purge_audit(now_ms - 60_000).await?, 0);
    assert_eq!(relay.store.purge_audit(now_ms + 1).await?, 1);
    assert!(relay.store.audit(None, 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn disabled_audit_writes_nothing() -> anyhow::Result<()> {
    trace_init();
    let relay = relay()
        .configure(|f| f.audit.enabled = Some(false))
        .spawn()
        .await;
    let client = Client::new(&relay.ca_cert());
    for _ in 0..3 {
        client.get(&relay.url("/relay/nobody/app/")).await?;
    }
    // Nothing to wait for: no record may appear, so the writer gets a fixed while (over twice
    // its 200 ms batch wait) to write one wrongly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.store.audit(None, 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn connector_sessions_are_kept_in_the_history() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    // A row a crashed run of this node left open is closed when the relay starts again.
    relay
        .store
        .session_opened(&relay_store::SessionRecord {
            id: "stale".into(),
            tenant: "acme".into(),
            relay_node: "test-node".into(),
            connector_id: "c0".into(),
            connector_version: "connector/0".into(),
            transport: "quic".into(),
            remote_addr: "192.0.2.1:1".into(),
            connected_at: 1,
            disconnected_at: None,
            close_code: None,
            node_id: None,
            targets: Vec::new(),
        })
        .await?;
    let relay = relay.restart().await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    let transport = conn.state().transport.expect("transport").as_str();

    let open = wait_history(&relay, |h| h.iter().any(|s| s.disconnected_at.is_none())).await;
    let live = open
        .iter()
        .find(|s| s.id != "stale")
        .expect("the live session");
    assert_eq!(live.id, relay.view.sessions("acme")[0].id);
    assert_eq!(live.transport, transport);
    assert_eq!(live.relay_node, "test-node");
    assert!(live.connector_version.starts_with("connector/"));
    assert!(live.remote_addr.starts_with("127.0.0.1:"));
    let stale = open.iter().find(|s| s.id == "stale").expect("stale row");
    assert_eq!(stale.close_code.as_deref(), Some("relay_lost"));

    conn.stop().await;
    let done = wait_history(&relay, |h| h.iter().all(|s| s.disconnected_at.is_some())).await;
    assert!(done.iter().all(|s| s.close_code.is_some()), "{done:?}");
    Ok(())
}

async fn wait_history(
    relay: &relay_server::testing::RelayHandle,
    ok: impl Fn(&[relay_store::SessionRecord]) -> bool,
) -> Vec<relay_store::SessionRecord> {
    testkit::eventually(Duration::from_secs(10), "the session history", || async {
        let h = relay
            .store
            .session_history("acme", 10)
            .await
            .expect("history");
        if h.len() >= 2 && ok(&h) {
            Ok(h)
        } else {
            Err(h)
        }
    })
    .await
}
