//! Several connectors of one tenant serving different targets (one per site): each request goes
//! to a session that serves its target, against the real relay, connectors and backends.

use http::StatusCode;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};

#[tokio::test]
async fn requests_go_to_a_connector_that_serves_their_target() {
    trace_init();
    let relay = relay().spawn().await;
    let (site_a, site_b) = (Backend::spawn().await, Backend::spawn().await);
    let cred = relay.provision("acme").await;
    let mut app = connector::testing::connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &site_a.url())
        .spawn();
    app.connected().await;
    let second = relay.create_credential("acme").await;
    relay.sync().await;
    let mut echo = connector::testing::connector(&relay.server(), "acme", &second.secret)
        .ca_cert(relay.ca_cert())
        .target("echo", &site_b.url())
        .spawn();
    echo.connected().await;

    let client = Client::new(&relay.ca_cert());
    for i in 0..20 {
        for (target, backend) in [("app", &site_a), ("echo", &site_b)] {
            let before = backend.requests();
            let a = client
                .get(&relay.url(&format!("/relay/acme/{target}/r{i}")))
                .await
                .unwrap();
            assert_eq!(a.status, StatusCode::OK, "{target} #{i}: {}", a.text());
            assert_eq!(
                backend.requests(),
                before + 1,
                "{target} #{i} went elsewhere"
            );
        }
    }
    // A target no live connector serves: 404 at the relay, no connector is asked.
    let (a_before, b_before) = (site_a.requests(), site_b.requests());
    let a = client
        .get(&relay.url("/relay/acme/nowhere/x"))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!((site_a.requests(), site_b.requests()), (a_before, b_before));

    // The connector serving `echo` goes away: `echo` is 404 while `app` is still served; with
    // no connector at all the tenant is 503.
    echo.stop().await;
    wait_for_status(
        &client,
        &relay.url("/relay/acme/echo/x"),
        StatusCode::NOT_FOUND,
    )
    .await;
    let a = client.get(&relay.url("/relay/acme/app/x")).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    app.stop().await;
    wait_for_status(
        &client,
        &relay.url("/relay/acme/app/x"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    relay.stop().await.unwrap();
}

/// Waits (≤ 10 s) until `url` answers `status`: a stopped connector's session leaves the registry
/// when its close is seen.
async fn wait_for_status(client: &Client, url: &str, status: StatusCode) {
    let what = format!("{url} answering {status}");
    testkit::eventually(std::time::Duration::from_secs(10), &what, || async {
        let got = client.get(url).await.map(|a| a.status);
        match got {
            Ok(s) if s == status => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
