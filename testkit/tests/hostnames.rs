//! Hostname routing over real TLS with SNI: tenant hostnames, the wildcard base domain, SNI/Host
//! mismatch, and that a hostname route never reaches another tenant.

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use http_body_util::BodyExt;
use relay_server::testing::{relay, RelayHandle};
use testkit::{trace_init, Backend, Client};

mod common;

struct World {
    relay: RelayHandle,
    acme: Backend,
    other: Backend,
    client: Client,
    _conns: Vec<connector::testing::ConnectorHandle>,
    _certs: tempfile::TempDir,
}

async fn world() -> World {
    trace_init();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = common::certificate(
        certs.path(),
        &[
            "localhost",
            "app.acme.test",
            "other.test",
            "*.acme.tunnel.test",
            "*.other.tunnel.test",
        ],
    );
    let relay = relay()
        .configure(|f| {
            f.tls.cert = Some(cert.clone());
            f.tls.key = Some(key.clone());
            f.routing.base_domain = Some("Tunnel.Test.".into());
        })
        .spawn()
        .await;
    relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    relay
        .store
        .add_hostname("acme", "app.acme.test", "app")
        .await
        .unwrap();
    let (a, o) = (
        relay.create_credential("acme").await,
        relay.create_credential("other").await,
    );
    relay.sync().await;
    let (acme, other) = (Backend::spawn().await, Backend::spawn().await);
    let server = format!("https://localhost:{}", relay.addr.port());
    let mut c1 = connector(&server, "acme", &a.secret)
        .ca_cert(cert.clone())
        .target("app", &acme.url())
        .spawn();
    let mut c2 = connector(&server, "other", &o.secret)
        .ca_cert(cert.clone())
        .target("app", &other.url())
        .spawn();
    c1.connected().await;
    c2.connected().await;
    World {
        relay,
        acme,
        other,
        client: Client::loopback(&cert),
        _conns: vec![c1, c2],
        _certs: certs,
    }
}

async fn get(w: &World, url: &str, host: Option<&str>) -> (StatusCode, String) {
    let mut req = http::Request::get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = w
        .client
        .send(req.body(testkit::client::Body::default()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let path = resp
        .headers()
        .get("x-echo-path")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, path)
}

#[tokio::test]
async fn tenant_hostnames_route_with_sni_and_host() {
    let w = world().await;
    let port = w.relay.addr.port();
    // TLS with SNI app.acme.test: the whole path goes to acme's target, unchanged.
    let (status, path) = get(
        &w,
        &format!("https://app.acme.test:{port}/some/path?q=1"),
        None,
    )
    .await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/some/path?q=1"));
    // Mixed mode: a /relay/other/... path on acme's hostname is acme's path, never tenant other.
    let (status, path) = get(
        &w,
        &format!("https://App.Acme.Test.:{port}/relay/other/app/x"),
        None,
    )
    .await;
    assert_eq!(
        (status, path.as_str()),
        (StatusCode::OK, "/relay/other/app/x")
    );
    assert_eq!(w.other.requests(), 0);
    assert_eq!(w.acme.requests(), 2);
    // Plain HTTP routes on Host alone.
    let http = w.relay.http_addr.unwrap();
    let (status, path) = get(&w, &format!("http://{http}/plain"), Some("app.acme.test")).await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/plain"));
    // Dot-segments may not climb out on a hostname route either.
    let (status, _) = get(
        &w,
        &format!("http://{http}/a/../../etc"),
        Some("app.acme.test"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sni_and_host_must_agree() {
    let w = world().await;
    let port = w.relay.addr.port();
    // Domain fronting: a TLS session for app.acme.test asking for other.test.
    let (status, _) = get(
        &w,
        &format!("https://app.acme.test:{port}/x"),
        Some("other.test"),
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (status, _) = get(
        &w,
        &format!("https://app.acme.test:{port}/x"),
        Some("app.other.tunnel.test"),
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(w.acme.requests() + w.other.requests(), 0);
}

#[tokio::test]
async fn wildcard_base_domain_names_target_and_tenant() {
    let w = world().await;
    let port = w.relay.addr.port();
    let (status, path) = get(&w, &format!("https://app.other.tunnel.test:{port}/y"), None).await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/y"));
    assert_eq!(w.other.requests(), 1);
    let (status, _) = get(&w, &format!("https://nope.acme.tunnel.test:{port}/y"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown target");
    let http = w.relay.http_addr.unwrap();
    let (status, _) = get(
        &w,
        &format!("http://{http}/y"),
        Some("app.ghost.tunnel.test"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "unknown tenant");
    let (status, _) = get(
        &w,
        &format!("http://{http}/y"),
        Some("a.b.acme.tunnel.test"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "too many labels");
    // Disabling the tenant makes its names answer like unknown ones.
    w.relay
        .store
        .set_tenant_enabled("acme", false)
        .await
        .unwrap();
    w.relay.sync().await;
    let (status, _) = get(&w, &format!("https://app.acme.test:{port}/z"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[allow(dead_code)]
fn _unused(_: Bytes) {}
