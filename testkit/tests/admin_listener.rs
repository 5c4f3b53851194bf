//! The admin listener itself: it answers only its host names (DNS rebinding), on HTTP/1.1 and
//! HTTP/2; and the standalone `management-web` binary serves the same app over the relays'
//! database.

mod common;
mod web;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use serde_json::json;
use testkit::client::Answer;
use testkit::{trace_init, Backend, Client};
use web::{is_problem, Api};

#[tokio::test]
async fn the_standalone_binary_serves_the_same_app_over_the_relays_database() -> anyhow::Result<()>
{
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay.create_tenant("acme").await;
    let token = relay.api_token("standalone").await;
    let dir = relay.data_dir();

    // Unknown keys and a missing pepper stop it with 64.
    let status = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &dir.display().to_string()])
        .env("MANAGEMENT_COLOUR", "blue")
        .stderr(Stdio::null())
        .status()?;
    assert_eq!(status.code(), Some(64), "unknown MANAGEMENT_* key");
    let empty = tempfile::tempdir()?;
    let out = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &empty.path().display().to_string()])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential-pepper"));
    // A host name with a port (or any other malformed name) stops it with 64 too.
    let out = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &dir.display().to_string()])
        .env("MANAGEMENT_ALLOWED_HOSTS", r#"["admin.example.com:8443"]"#)
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed_hosts"));

    let mut child = Command::new(testkit::process::bin("management-web"))
        .args([
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("MANAGEMENT_ALLOWED_HOSTS", r#"["admin.example.com"]"#)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("stderr");
    let addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                // The line may carry colour codes around `addr=`: take 127.0.0.1:PORT.
                let at = l
                    .contains("management web listening")
                    .then(|| l.find("127.0.0.1:"))??;
                let port: String = l[at + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                Some(format!("127.0.0.1:{port}"))
            })
    })
    .await?
    .expect("the listening line");
    let guard = testkit::process::ChildGuard(child);
    let base = format!("http://{addr}");
    let client = Client::new(&relay.ca_cert());
    // A token made with the relay's pepper works here, and the relay's tenants are here.
    let tenants = client
        .get_bearer(&format!("{base}/api/v1/tenants"), &token)
        .await?;
    assert_eq!(tenants.status, StatusCode::OK, "{}", tenants.text());
    assert!(tenants.text().contains("\"acme\""));
    let api = Api {
        client: client.clone(),
        base: base.clone(),
        token,
    };
    let (s, c) = api
        .call("POST", "/api/v1/tenants/acme/credentials", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // A credential it creates lets a connector into the relay.
    relay.sync().await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", c["secret"].as_str().unwrap())
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(
        client.get(&format!("{base}/login")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&format!("{base}/readyz")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&format!("{base}/tenants")).await?.status,
        StatusCode::SEE_OTHER
    );
    // The same host check as on the relay's admin listener, with its own allowed names.
    for (host, status) in [
        ("admin.example.com", StatusCode::OK),
        ("localhost", StatusCode::OK),
        ("evil.example", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let a = client
            .request_with(
                "GET",
                &format!("{base}/login"),
                &[("host", host)],
                Bytes::new(),
            )
            .await?;
        assert_eq!(a.status, status, "{host}");
    }
    drop(guard);
    drop(conn);
    relay.stop().await
}

/// A GET of `path` on the admin listener with `Host: host` (HTTP/1.1).
async fn get_as(client: &Client, admin: &str, path: &str, host: &str) -> Answer {
    client
        .request_with(
            "GET",
            &format!("http://{admin}{path}"),
            &[("host", host)],
            Bytes::new(),
        )
        .await
        .expect("admin listener answers")
}

#[tokio::test]
async fn the_admin_listener_answers_only_its_host_names() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay()
        .configure(|f| {
            f.listen.admin_hosts = Some(vec![
                "admin.example.com".into(),
                "http://relay-admin".into(),
            ])
        })
        .spawn()
        .await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let admin = relay.admin_addr.expect("admin");
    let port = admin.port();
    let client = Client::new(&relay.ca_cert());
    let token = relay.api_token("hosts").await;

    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.2:{port}"),
        "admin.example.com.evil.example".to_string(),
    ] {
        let a = get_as(&client, &admin.to_string(), "/login", &host).await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(is_problem(&a), "{host}: {}", a.text());
        // Never reaches a handler: not the API with a valid token, not the login.
        let auth = format!("Bearer {token}");
        let a = client
            .request_with(
                "GET",
                &format!("http://{admin}/api/v1/tenants"),
                &[("host", &host), ("authorization", &auth)],
                Bytes::new(),
            )
            .await?;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        let a = client
            .request_with(
                "POST",
                &format!("http://{admin}/login"),
                &[
                    ("host", &host),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                Bytes::from_static(b"username=admin&password=correct+horse+battery"),
            )
            .await?;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(!a.headers.contains_key("set-cookie"));
        // Probes are answered whatever the host: they reveal and change nothing.
        let a = get_as(&client, &admin.to_string(), "/healthz", &host).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
        "admin.example.com".to_string(),
        "admin.example.com:443".to_string(),
        "relay-admin:8080".to_string(),
    ] {
        let a = get_as(&client, &admin.to_string(), "/login", &host).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }

    // HTTP/2 (prior knowledge): the :authority is checked the same way.
    let from: std::net::IpAddr = "127.0.0.1".parse()?;
    let h2 = |authority: String| {
        http::Request::get(format!("http://{authority}/login"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let a = common::raw_request(from, admin, true, h2(format!("evil.example:{port}"))).await?;
    assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST);
    let a = common::raw_request(from, admin, true, h2(format!("127.0.0.1:{port}"))).await?;
    assert_eq!(a.status, StatusCode::OK);
    // HTTP/1.1 without a Host: refused.
    let bare = http::Request::get("/login")
        .version(http::Version::HTTP_10)
        .body(http_body_util::Full::new(Bytes::new()))?;
    let a = common::raw_request(from, admin, false, bare).await?;
    assert_ne!(a.status, StatusCode::OK);
    relay.stop().await
}
