//! The Windows connector under Wine against the Linux relay: `connector.exe` (cross-built for
//! x86_64-pc-windows-gnu) establishes a QUIC session with the real `relay-server` on loopback and
//! serves a visitor's request from a local backend.
//!
//! Runs only when `WINE_CONNECTOR` names the `.exe` (`scripts/windows.sh` builds it, puts the
//! test-only `bcryptprimitives.dll` shim next to it and sets the variable); `WINE` names the Wine
//! launcher (default `wine`). Without it the test says so and passes: Linux-only machines have no
//! Windows binary to run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use testkit::process::{relay_cli, start_relay, ChildGuard};
use testkit::{trace_init, Backend, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_connector_serves_a_request_over_quic() -> anyhow::Result<()> {
    let Some(exe) = std::env::var_os("WINE_CONNECTOR").map(PathBuf::from) else {
        eprintln!(
            "skipped: set WINE_CONNECTOR=/path/to/connector.exe to run the Windows connector \
             under Wine (scripts/windows.sh does)"
        );
        return Ok(());
    };
    anyhow::ensure!(
        exe.exists(),
        "WINE_CONNECTOR={} does not exist",
        exe.display()
    );
    trace_init();
    let dir = tempfile::tempdir()?;
    relay_cli(dir.path(), &["tenant", "create", "acme"]);
    let out = relay_cli(dir.path(), &["tenant", "credential", "create", "acme"]);
    let secret = out.lines().last().unwrap_or_default().trim();
    anyhow::ensure!(secret.starts_with("rsk_"), "no secret in: {out}");
    std::fs::write(dir.path().join("secret"), secret)?;
    let backend = Backend::spawn().await;
    let relay = start_relay(
        &[
            "--data-dir".as_ref(),
            dir.path().as_os_str(),
            "run".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ],
        &[],
    )
    .map_err(anyhow::Error::msg)?;

    // `--transport quic`: no TLS/TCP fallback, so any session at all is a QUIC session.
    let wine = std::env::var_os("WINE").unwrap_or_else(|| "wine".into());
    let mut cmd = Command::new(wine);
    cmd.arg(&exe)
        .args(["run", "--log-format", "json", "--tenant", "acme"])
        .args(["--transport", "quic"])
        .arg("--server")
        .arg(format!("https://{}", relay.https))
        .arg("--secret-file")
        .arg(windows_path(&dir.path().join("secret")))
        .arg("--ca-cert")
        .arg(windows_path(&dir.path().join("tls/cert.pem")))
        .args(["--target", &format!("app={}", backend.url())])
        .env("CONNECTOR_SESSION__BACKOFF_CAP", "1s")
        .env("RUST_LOG", "info")
        .env("WINEDEBUG", "-all")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut conn = ChildGuard(cmd.spawn()?);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = conn
        .0
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("connector.exe: {line}");
            lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });

    // Wine starts slowly the first time (its prefix): a minute covers it on a 2-core machine.
    let transport = testkit::eventually(
        Duration::from_secs(90),
        "connector.exe to establish a session",
        || async {
            let lines = log.lock().unwrap_or_else(|p| p.into_inner());
            let established = lines.iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"] == "session established")
                    .then(|| v["fields"]["transport"].as_str().map(str::to_string))
                    .flatten()
            });
            established.ok_or_else(|| format!("{} log lines, no session yet", lines.len()))
        },
    )
    .await;
    assert_eq!(transport, "quic", "connector.exe's session transport");

    let client = Client::new(&dir.path().join("tls/cert.pem"));
    let url = format!(
        "https://127.0.0.1:{}/relay/acme/app/from-linux",
        relay.https.port()
    );
    let body = Bytes::from_static(b"a visitor's request body, through Wine and back");
    let answer = client.request("POST", &url, body.clone()).await?;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(
        answer
            .headers
            .get("x-echo-path")
            .and_then(|v| v.to_str().ok()),
        Some("/from-linux"),
        "the backend saw the request"
    );
    assert_eq!(answer.body, body, "the backend's echo");

    let lines = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        !lines.iter().any(|l| l.contains("\"transport\":\"tcp\"")),
        "a TLS/TCP session appeared"
    );
    if lines.iter().any(|l| l.contains("plain UDP socket")) {
        eprintln!("note: QUIC ran on the plain UDP socket (a socket option was refused)");
    }
    conn.kill();
    Ok(())
}

/// `/tmp/x/secret` as Wine's `Z:` drive shows it: `Z:\tmp\x\secret`.
fn windows_path(p: &Path) -> String {
    format!("Z:{}", p.display().to_string().replace('/', "\\"))
}
