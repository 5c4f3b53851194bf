//! Slow clients against the real relay with `slowhttptest` (installed by scripts/test.sh):
//! slowloris (headers that never end) and slow POST (a body that trickles). The relay's header
//! read and body idle timeouts free their slots, normal requests keep succeeding throughout, and
//! memory stays bounded.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{setup, Setup};
use http::StatusCode;
use relay_server::testing::relay;
use testkit::process::{rss_kib, RssSampler};

/// Runs `slowhttptest` with `args` for `secs` while a client sends one normal request every
/// 50 ms; returns (normal requests ok, failed, peak RSS growth in KiB).
async fn under_attack(s: &Setup, args: &[&str], secs: u64) -> (u64, u64, u64) {
    let pid = std::process::id();
    let base = rss_kib(pid);
    let sampler = RssSampler::start(pid);
    let url = s.relay.http_url("/relay/acme/app/sink");
    let mut cmd = Command::new("slowhttptest");
    cmd.args(args)
        .args(["-u", &url, "-l", &secs.to_string(), "-p", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut attack = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("slowhttptest is missing ({e}): scripts/test.sh installs it"),
    };
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Let the attack build up its connections first: a fixed lead, as the relay has no count of
    // open connections to wait on, and the attack runs for a fixed time anyway.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(secs.saturating_sub(4));
    while Instant::now() < deadline {
        // A new connection each time, as a new visitor would open.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            s.client.request_with(
                "GET",
                &s.relay.http_url("/relay/acme/app/normal"),
                &[("connection", "close")],
                bytes::Bytes::new(),
            ),
        )
        .await;
        match answer {
            Ok(Ok(a)) if a.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
            other => {
                let what = match other {
                    Ok(Ok(a)) => a.status.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timeout".into(),
                };
                eprintln!("normal request failed: {what}");
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = attack.kill();
        attack.wait()
    })
    .await;
    let peak = sampler.finish();
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        peak.saturating_sub(base),
    )
}

/// Short timeouts and small caps: without the timeouts, the attacks below would fill the caps
/// within seconds and normal visitors would be refused.
fn short_timeouts() -> relay_server::testing::Builder {
    relay().configure(|f| {
        f.limits.max_connections = Some(300);
        f.limits.max_concurrent_streams = Some(60);
        f.limits.header_read_timeout = Some(Duration::from_secs(2));
        f.limits.body_idle_timeout = Some(Duration::from_secs(2));
        // All traffic comes from 127.0.0.1 here: the per-address cap (tested elsewhere) would
        // otherwise turn the attacker away before the timeouts are exercised.
        f.limits.max_connections_per_ip = Some(5000);
    })
}

/// Normal requests all got through while the attack ran, and memory stayed bounded.
fn unharmed((ok, failed, growth): (u64, u64, u64), attack: &str) {
    assert!(
        ok >= 50,
        "normal requests got through: {ok} ok, {failed} failed"
    );
    assert_eq!(failed, 0, "{ok} ok, {failed} failed during {attack}");
    assert!(growth < 64 * 1024, "RSS grew by {growth} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_normal_visitors() -> anyhow::Result<()> {
    let s = setup(short_timeouts()).await;
    // Up to 1000 connections at 50/s, each sending a header line every 5 s: without the 2 s
    // header read timeout they would pass the 300-connection cap after 6 s.
    let outcome = under_attack(
        &s,
        &["-H", "-c", "1000", "-r", "50", "-i", "5", "-x", "24"],
        16,
    )
    .await;
    unharmed(outcome, "slowloris");
    s.relay.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_post_is_cut_by_the_body_idle_timeout() -> anyhow::Result<()> {
    let s = setup(short_timeouts()).await;
    // Up to 200 POSTs at 10/s announcing 8 KiB and sending a few bytes every 5 s: each holds one
    // of the tenant's 60 streams until the 2 s body idle timeout cuts it (408); without it they
    // would hold them all after 6 s and normal requests would get 429.
    let outcome = under_attack(
        &s,
        &[
            "-B", "-c", "200", "-r", "10", "-i", "5", "-s", "8192", "-t", "POST", "-x", "10",
        ],
        16,
    )
    .await;
    unharmed(outcome, "slow POST");
    // Every slow body was cut: none reached the backend complete, and none is still in flight.
    s.relay.wait_idle().await;
    assert_eq!(s.backend.active_streams(), 0);
    s.relay.stop().await
}

/// A request head that does not complete within `limits.header_read_timeout` gets `408` and the
/// connection closes; a connection with no request begun (new or kept alive) is closed quietly.
#[tokio::test]
async fn an_unfinished_request_head_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(relay().configure(|f| {
        f.limits.header_read_timeout = Some(Duration::from_secs(1));
    }))
    .await;
    let addr = s.relay.http_addr.unwrap();
    let read_all = |mut c: tokio::net::TcpStream| async move {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("the relay closes the connection")
            .expect("read");
        String::from_utf8_lossy(&got).to_string()
    };

    // Half a head: 408, closed.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /relay/acme/app/x HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_all(c).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains("\"status\":408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Nothing sent: closed without a word.
    let c = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_all(c).await, "");

    // One complete request, then idle on keep-alive: its answer, then a quiet close.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /relay/acme/app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let answer = read_all(c).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n2\r\nhi\r\n0\r\n\r\n"), "{answer}");
    assert!(!answer.contains("408"), "{answer}");
    assert_eq!(s.backend.requests(), 1);
}
