//! A connector that dies without a goodbye (`kill -9`) is noticed in seconds with the default
//! settings, on whichever transport `CONNECTOR_TRANSPORT` selects (scripts/test.sh runs this file
//! on QUIC, then on TLS/TCP): the visitor's download in flight fails and new requests get 503.

use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::relay;
use testkit::process::start_connector;
use testkit::{trace_init, Backend, Client};

/// What "in seconds" means: the relay's default `tunnel.idle_timeout` is 3 s, and QUIC
/// restarts its idle timer at its first keep-alive (a third later) after the last packet received.
const NOTICED_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connector_is_noticed_within_seconds() -> anyhow::Result<()> {
    trace_init();
    // Default relay settings: the point is what the defaults give.
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let dir = relay.data_dir();
    std::fs::write(dir.join("secret"), &cred.secret)?;
    let backend = Backend::spawn().await;
    let mut connector = start_connector(relay.addr, &dir, &backend.url());
    let client = Client::new(&relay.ca_cert());
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.view.sessions("acme").len() < 2 {
        assert!(Instant::now() < deadline, "the connector did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A download in flight (the backend sends 1 KiB every 10 ms until the reader goes away).
    let req = http::Request::get(relay.url("/relay/acme/app/hold"))
        .body(testkit::client::Body::default())?;
    let resp = client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    body.frame().await.expect("first bytes")?;

    connector.kill();
    let killed = Instant::now();
    let (_, end) = testkit::client::body_end(&mut body, Duration::from_secs(30)).await;
    let aborted_after = killed.elapsed();
    eprintln!("the download failed {aborted_after:?} after the kill");
    assert_eq!(end, testkit::client::BodyEnd::Aborted);
    assert!(
        aborted_after <= NOTICED_WITHIN,
        "the download failed only {aborted_after:?} after the kill"
    );

    // New requests: 503 with Retry-After (no session left), never a hang; by then at the latest.
    let a = loop {
        let a = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(&relay.url("/relay/acme/app/after")),
        )
        .await
        .map_err(|_| anyhow::anyhow!("a request after the kill hung"))??;
        if a.status == StatusCode::SERVICE_UNAVAILABLE || killed.elapsed() > NOTICED_WITHIN {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        a.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?} after the kill",
        killed.elapsed()
    );
    assert!(a.headers.contains_key("retry-after"));
    assert!(relay.view.sessions("acme").is_empty());
    relay.stop().await?;
    Ok(())
}
