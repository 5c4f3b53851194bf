//! gRPC end to end with real gRPC peers (Python grpcio; scripts/test.sh installs it into
//! `target/test-tools/grpc`): the client speaks TLS + HTTP/2 to the relay on a wildcard
//! hostname, the connector calls the server over h2c. Unary, server streaming, client streaming,
//! bidirectional, a 4 MiB message and an error status, with metadata and trailers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use connector::testing::connector;
use relay_server::testing::relay;
use testkit::process::ChildGuard;
use testkit::trace_init;

mod common;

const INSTALL_HINT: &str = "python with grpcio not found: run scripts/test.sh (it installs grpcio \
                            from PyPI into target/test-tools/grpc), or set GRPC_PYTHON";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPC_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/grpc/bin/python")
}

fn peer() -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py"));
    cmd
}

#[tokio::test]
async fn grpc_calls_of_every_kind_pass_through_the_tunnel() {
    trace_init();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = common::certificate(certs.path(), &["localhost", "*.acme.tunnel.test"]);

    // The gRPC server: h2c on a loopback port it prints.
    let mut child = peer()
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut server = ChildGuard(child);
    let port = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    let port: u16 = port
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{INSTALL_HINT}"));

    let relay = relay()
        .configure(|f| {
            f.tls.cert = Some(cert.clone());
            f.tls.key = Some(key.clone());
            f.routing.base_domain = Some("tunnel.test".into());
        })
        .spawn()
        .await;
    let cred = relay.provision("acme").await;
    let mut conn = connector(
        &format!("https://localhost:{}", relay.addr.port()),
        "acme",
        &cred.secret,
    )
    .ca_cert(cert.clone())
    .target_http2("grpc", &format!("http://127.0.0.1:{port}"))
    .spawn();
    conn.connected().await;

    let addr = format!("127.0.0.1:{}", relay.addr.port());
    let mut client = peer();
    client
        .args(["call", &addr])
        .arg(&cert)
        .arg("grpc.acme.tunnel.test");
    let out = tokio::task::spawn_blocking(move || client.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    assert!(
        out.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Unary: request and response messages, initial metadata and a custom trailer.
    let unary = &seen["unary"];
    assert_eq!(unary["reply"], "echo:hello");
    assert_eq!(unary["code"], "OK");
    assert_eq!(
        unary["initial"], "rust-test",
        "request metadata reached the server"
    );
    assert_eq!(unary["trailing"], "unary-done");

    // Server streaming: every message in order, the first one while the server was still
    // holding the stream open (it pauses 1 s after it), and the trailers after the last.
    let count = &seen["count"];
    assert_eq!(
        count["messages"],
        serde_json::json!(["msg-0", "msg-1", "msg-2", "msg-3", "msg-4"])
    );
    assert_eq!(count["code"], "OK");
    assert_eq!(count["trailing"], "5");
    let (first, last) = (
        count["first_at"].as_f64().unwrap(),
        count["last_at"].as_f64().unwrap(),
    );
    assert!(
        last - first >= 0.5,
        "the first message arrived only with the rest ({first:.3} s vs {last:.3} s): the stream \
         was buffered"
    );

    // A 4 MiB response (HTTP/2 flow control across both hops), 4 MiB client stream, 100-message
    // bidirectional exchange.
    assert_eq!(seen["big"]["len"], 4 * 1024 * 1024);
    assert_eq!(seen["big"]["intact"], true);
    assert_eq!(seen["total"], 64 * 65536);
    assert_eq!(seen["chat"]["count"], 100);
    assert_eq!(seen["chat"]["first"], "re:m0");
    assert_eq!(seen["chat"]["last"], "re:m99");

    // An error status with its message, carried in trailers (a trailers-only response).
    assert_eq!(seen["fail"]["code"], "NOT_FOUND", "{}", seen["fail"]);
    assert_eq!(seen["fail"]["details"], "no such thing: thing-7");

    // No stream is left behind on the relay once the calls are done.
    relay.wait_idle().await;
    conn.stop().await;
    server.kill();
}
