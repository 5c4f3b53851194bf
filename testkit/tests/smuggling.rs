//! The raw-socket HTTP/1 framing corpus (tests/corpus/http1.txt) against the real relay, connector
//! and a recording backend: the status each vector gets, and what the backend saw.

use std::time::Duration;

use relay_server::testing::relay;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{setup, Setup};

struct Vector {
    name: String,
    expect: String,
    max_backend: u64,
    /// What the backend's raw bytes for this vector must (`true`) or must not contain.
    raw: Vec<(bool, Vec<u8>)>,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Vector> {
    let text = include_str!("corpus/http1.txt");
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    while let Some(header) = lines.next() {
        let header = header.strip_prefix("=== ").expect("vector header");
        let parts: Vec<&str> = header.split('|').map(str::trim).collect();
        let raw = lines.next().expect("vector bytes");
        out.push(Vector {
            name: parts[0].to_string(),
            expect: parts[1].to_string(),
            max_backend: parts[2].parse().unwrap(),
            raw: parts
                .get(3)
                .map(|checks| {
                    checks
                        .split(" ; ")
                        .map(|c| match c.trim().split_once(' ') {
                            Some(("has", s)) => (true, unescape(s)),
                            Some(("lacks", s)) => (false, unescape(s)),
                            _ => panic!("{}: bad raw check {c:?}", parts[0]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            bytes: unescape(raw),
        });
    }
    out
}

/// `\r`, `\n` and `\xNN` escapes.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
                    i += 2;
                }
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn framing_corpus() {
    let Setup {
        relay,
        backend,
        conn: _conn,
        client: _,
    } = setup(relay()).await;
    let addr = relay.http_addr.unwrap();
    let mut failures = Vec::new();
    for v in corpus() {
        let (before, raw_before) = (backend.requests(), backend.raw().len());
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&v.bytes).await;
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
            .await
            .is_ok();
        let text = String::from_utf8_lossy(&got).to_string();
        let status = if got.is_empty() {
            "close".to_string()
        } else {
            text.split_whitespace().nth(1).unwrap_or("?").to_string()
        };
        // Nothing to wait for: the bytes the backend must get came before its answer, which the
        // visitor has read, and the checks are that nothing more reaches it, so a smuggled
        // request gets a fixed while to arrive wrongly.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = backend.requests() - before;
        let raw = backend.raw().split_off(raw_before);
        for (want, s) in &v.raw {
            let has = raw.windows(s.len()).any(|w| w == s.as_slice());
            if has != *want {
                failures.push(format!(
                    "{}: backend bytes {} {:?}: {:?}",
                    v.name,
                    if *want { "lack" } else { "contain" },
                    String::from_utf8_lossy(s),
                    String::from_utf8_lossy(&raw)
                ));
            }
        }
        let (want, must_close) = match v.expect.strip_suffix("+close") {
            Some(w) => (w, true),
            None => (v.expect.as_str(), false),
        };
        if status != want || seen > v.max_backend || (must_close && !closed) {
            failures.push(format!(
                "{}: got {status} (backend saw {seen}), want {} (≤ {})",
                v.name, v.expect, v.max_backend
            ));
        }
    }
    for s in backend.seen() {
        assert!(
            !s.path.contains("smuggled") && !s.path.contains("inbody"),
            "smuggled request reached the backend: {s:?}"
        );
        assert!(
            !(s.headers.contains_key("content-length")
                && s.headers.contains_key("transfer-encoding")),
            "conflicting framing reached the backend: {s:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
}
