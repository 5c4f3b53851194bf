//! End to end on loopback: connector and relay shutdown let requests in flight finish; a relay
//! that restarts gets its connectors back without failing a request in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::Client;

mod common;
use common::{setup, slow_request_in_flight, Setup};

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
async fn connector_shutdown_lets_in_flight_requests_finish() -> anyhow::Result<()> {
    let Setup {
        relay,
        backend,
        conn,
        client,
    } = setup(relay()).await;
    let body = slow_request_in_flight(&client, &relay.url("/relay/acme/app/slow")).await;
    let stopping = tokio::spawn(conn.stop());
    // Nothing to wait for: the stop must not finish, so it gets a fixed while to do so wrongly.
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
    // Nothing to wait for: the stop must not finish, so it gets a fixed while to do so wrongly
    // (by then the relay has also closed its listener, checked next).
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
    // The load runs for two rounds of requests before the restart, and two after it.
    testkit::eventually(
        Duration::from_secs(10),
        "load before the restart",
        || async { backend.requests() >= 16 },
    )
    .await;
    let relay = relay.restart().await;
    conn.wait_for(20, "a new session", |s| {
        s.connected && s.sessions_established >= 2
    })
    .await;
    let restarted = backend.requests();
    testkit::eventually(
        Duration::from_secs(10),
        "load after the restart",
        || async { backend.requests() >= restarted + 16 },
    )
    .await;
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

/// The relay's data directory goes away with its handle: keep a copy of its certificate.
fn tempfile_copy(path: &std::path::Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ca.pem");
    std::fs::copy(path, &copy).unwrap();
    (dir, copy)
}
