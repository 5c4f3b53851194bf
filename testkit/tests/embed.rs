//! The connector embedded in an application (connector/examples/embedded.rs): its axum router
//! answers the relay's requests in process, beside ordinary HTTP targets — end to end through a
//! real relay, with no backend process for the in-process target.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use relay_server::testing::relay;
use testkit::{trace_init, Backend, Client};
use tokio_util::sync::CancellationToken;

#[allow(dead_code)] // its main() is the example's, not the test's
#[path = "../../connector/examples/embedded.rs"]
mod embedded;

/// Runs `connector` until the returned token is cancelled; waits for a session first.
async fn run(connector: connector::Connector) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut state = connector.watch();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
        .await
        .expect("the embedded connector connects")
        .expect("state");
    (shutdown, task)
}

#[tokio::test]
async fn the_embedding_example_serves_requests_in_process() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let connector = embedded::connector(
        &relay.server(),
        "acme",
        &cred.secret,
        Some(relay.ca_cert()),
        None,
    )?;
    let (shutdown, task) = run(connector).await;
    let client = Client::new(&relay.ca_cert());

    let a = client.get(&relay.url("/relay/acme/app/hello")).await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    // The visitor's host reached the handler as Host.
    let authority = relay.server().trim_start_matches("https://").to_string();
    assert_eq!(
        a.text(),
        format!("hello from the app, visitor of {authority}\n")
    );
    assert!(a.headers.contains_key("x-relay-request-id"));

    let a = client
        .request(
            "POST",
            &relay.url("/relay/acme/app/echo"),
            Bytes::from("ping"),
        )
        .await?;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::OK, "echo: ping")
    );

    // The router's own 404, not the relay's "unknown target".
    let a = client.get(&relay.url("/relay/acme/app/nowhere")).await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.text().is_empty(), "{}", a.text());
    let a = client.get(&relay.url("/relay/acme/other/x")).await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.text().contains("target"), "{}", a.text());

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

#[tokio::test]
async fn in_process_and_http_targets_side_by_side() -> anyhow::Result<()> {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let failing = tower::service_fn(|_req: http::Request<connector::Body>| async {
        Err::<http::Response<String>, _>(std::io::Error::other("the handler gave up"))
    });
    let slow = tower::service_fn(|_req: http::Request<connector::Body>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<_, Infallible>(http::Response::new(String::from("too late")))
    });
    // The request body streams into the handler: it counts what arrives.
    let count = tower::service_fn(|req: http::Request<connector::Body>| async move {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            n += frame?.data_ref().map_or(0, |d| d.len());
        }
        Ok::<_, connector::BoxError>(http::Response::new(format!("{n} bytes")))
    });
    // Says which Upgrade header reached the handler, if any.
    let probe = tower::service_fn(|req: http::Request<connector::Body>| async move {
        let seen = req
            .headers()
            .get("upgrade")
            .map_or("none".to_string(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            });
        Ok::<_, Infallible>(http::Response::new(seen))
    });
    let connector = connector::Connector::builder(&relay.server(), "acme")
        .secret(cred.secret.clone())
        .ca_cert(relay.ca_cert())
        .sessions(1)
        .service("app", embedded::app())
        .service("failing", failing)
        .service("slow", slow)
        .service("count", count)
        .service("probe", probe)
        .service_timeout(Duration::from_secs(1))
        .target("web", &backend.url())
        .build()?;
    let (shutdown, task) = run(connector).await;
    let client = Client::new(&relay.ca_cert());

    let a = client.get(&relay.url("/relay/acme/web/x")).await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-path"], "/x");
    let a = client.get(&relay.url("/relay/acme/app/hello")).await?;
    assert_eq!(a.status, StatusCode::OK);
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let a = client
        .request("PUT", &relay.url("/relay/acme/count/"), big)
        .await?;
    assert_eq!(
        (a.status, a.text().as_str()),
        (StatusCode::OK, "3145728 bytes")
    );
    let a = client.get(&relay.url("/relay/acme/failing/")).await?;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.text());
    let a = client.get(&relay.url("/relay/acme/slow/")).await?;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "{}", a.text());
    // A WebSocket cannot be switched to in process: the offer never reaches the handler, which
    // answers as to an ordinary request.
    let a = client
        .request_with(
            "GET",
            &relay.url("/relay/acme/probe/"),
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            Bytes::new(),
        )
        .await?;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "none"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

#[test]
fn builder_refuses_what_the_config_file_would() {
    let app = || embedded::app();
    let err = |b: connector::Builder| b.build().expect_err("refused").to_string();
    let base = || connector::Connector::builder("https://127.0.0.1:9", "acme").secret("s");
    assert!(err(base()
        .service("app", app())
        .target("app", "http://127.0.0.1:9"))
    .contains("defined twice"));
    assert!(err(base().service("app", app()).service("APP", app())).contains("defined twice"));
    assert!(err(base().service("bad name", app())).contains("target name"));
    assert!(err(base()).contains("no targets"));
    assert!(
        err(connector::Connector::builder("https://127.0.0.1:9", "acme").service("app", app()))
            .contains("secret")
    );
    assert!(err(base().service("app", app()).inspect("0.0.0.0:4040")).contains("loopback"));
    assert!(base().service("app", app()).build().is_ok());
}
