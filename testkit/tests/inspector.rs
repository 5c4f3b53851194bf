//! The connector's local inspector: what went through the tunnel, on the tenant's own machine —
//! recorded with secrets redacted, bounded, replayed to the backend; its JSON API and its page
//! in headless Chromium (testkit/browser/inspector.mjs; a screenshot for docs/).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use relay_server::testing::{relay, RelayHandle};
use serde_json::Value;
use testkit::{trace_init, Backend, Client};
use tokio_util::sync::CancellationToken;

struct Running {
    relay: RelayHandle,
    backend: Backend,
    inspector: SocketAddr,
    client: Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(configure: impl FnOnce(&mut connector::config::FileConfig)) -> Running {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let connector = connector::Connector::builder(&relay.server(), "acme")
        .secret(cred.secret.clone())
        .ca_cert(relay.ca_cert())
        .sessions(1)
        .target("app", &backend.url())
        .inspect("127.0.0.1:0")
        .configure(configure)
        .build()
        .expect("connector");
    let inspector = connector
        .inspector_address()
        .expect("the inspector listens");
    let mut state = connector.watch();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(connector.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), state.wait_for(|s| s.connected))
        .await
        .expect("connected")
        .expect("state");
    let client = Client::new(&relay.ca_cert());
    Running {
        relay,
        backend,
        inspector,
        client,
        shutdown,
        task,
    }
}

impl Running {
    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.inspector)
    }

    async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let a = self.client.get(&self.api(path)).await?;
        anyhow::ensure!(
            a.status == StatusCode::OK,
            "{path}: {} {}",
            a.status,
            a.text()
        );
        Ok(serde_json::from_slice(&a.body)?)
    }

    async fn replay(&self, id: &Value, edit: &str) -> anyhow::Result<testkit::client::Answer> {
        self.client
            .request_with(
                "POST",
                &self.api(&format!("/api/requests/{id}/replay")),
                &[("content-type", "application/json")],
                Bytes::from(edit.to_string()),
            )
            .await
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await??;
        Ok(())
    }
}

#[tokio::test]
async fn records_redacts_and_replays() -> anyhow::Result<()> {
    let r = start(|f| f.inspect.redact = vec!["X-Api-Key".into()]).await;
    let a = r
        .client
        .request_with(
            "POST",
            &r.relay.url("/relay/acme/app/orders?id=7"),
            &[
                ("authorization", "Bearer top-secret-token"),
                ("cookie", "session=cookie-secret"),
                ("x-api-key", "key-secret"),
                ("x-kept", "visible"),
            ],
            Bytes::from("hello inspector"),
        )
        .await?;
    assert_eq!(a.status, StatusCode::OK);

    let list = r.json("/api/requests").await?;
    let entries = list["requests"].as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{list}");
    let e = &entries[0];
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/orders?id=7");
    assert_eq!(e["target"], "app");
    assert_eq!(e["status"], 200);
    assert_eq!(e["outcome"], "complete");
    assert_eq!(e["request_size"], 15);
    assert_eq!(e["response_size"], 15);
    assert_eq!(
        e["request_id"],
        a.headers["x-relay-request-id"].to_str()?,
        "the relay's request id"
    );
    let id = e["id"].clone();
    let full = r.json(&format!("/api/requests/{id}")).await?;
    let text = full.to_string();
    for secret in ["top-secret-token", "cookie-secret", "key-secret"] {
        assert!(!text.contains(secret), "{secret} recorded: {text}");
    }
    let header = |side: &str, name: &str| {
        full[side]["headers"]
            .as_array()
            .and_then(|h| h.iter().find(|p| p[0] == name))
            .map(|p| p[1].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(
        header("request", "authorization").as_deref(),
        Some("[redacted]")
    );
    assert_eq!(
        header("request", "x-api-key").as_deref(),
        Some("[redacted]")
    );
    assert_eq!(header("request", "x-kept").as_deref(), Some("visible"));
    assert_eq!(header("response", "x-echo-method").as_deref(), Some("POST"));
    assert_eq!(full["request"]["body"]["text"], "hello inspector");
    assert_eq!(full["response"]["body"]["text"], "hello inspector");

    // Replay as recorded: the backend sees it again, without the redacted headers.
    assert_eq!(r.backend.requests(), 1);
    let a = r.replay(&id, "").await?;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let replayed: Value = serde_json::from_slice(&a.body)?;
    assert_eq!(replayed["replay_of"], id);
    assert_eq!(replayed["status"], 200);
    assert_eq!(replayed["response"]["body"]["text"], "hello inspector");
    assert_eq!(r.backend.requests(), 2);
    let seen = r.backend.seen().pop().expect("the replay");
    assert_eq!(seen.path, "/orders?id=7");
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-kept"], "visible");
    assert_eq!(
        seen.headers["x-relay-request-id"],
        e["request_id"].as_str().unwrap()
    );

    // Edited: another method, path and body, and a header given back.
    let a = r
        .replay(
            &id,
            r#"{"method":"PUT","path":"/orders/8","body":"edited","headers":[["authorization","Bearer again"]]}"#,
        )
        .await?;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    let seen = r.backend.seen().pop().expect("the edited replay");
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/orders/8")
    );
    assert_eq!(seen.headers["authorization"], "Bearer again");
    let edited: Value = serde_json::from_slice(&a.body)?;
    assert_eq!(edited["response"]["body"]["text"], "edited");
    assert_eq!(edited["request"]["headers"][0][1], "[redacted]");

    // The list holds all three, newest first.
    let list = r.json("/api/requests").await?;
    let ids: Vec<&Value> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[2], &id);

    // Bad edits and unknown ids: clear answers, nothing sent.
    for (edit, status) in [
        (r#"{"path":"/../etc/passwd"}"#, StatusCode::BAD_REQUEST),
        (r#"{"method":"CONNECT"}"#, StatusCode::BAD_REQUEST),
        (r#"{"bogus":1}"#, StatusCode::BAD_REQUEST),
    ] {
        let a = r.replay(&id, edit).await?;
        assert_eq!(a.status, status, "{edit}: {}", a.text());
    }
    let a = r.replay(&Value::from(999), "").await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(r.backend.requests(), 3);
    r.stop().await
}

#[tokio::test]
async fn bounded_and_guarded() -> anyhow::Result<()> {
    let r = start(|f| {
        f.inspect.entries = Some(3);
        f.inspect.body_bytes = Some(1024);
    })
    .await;
    let big = Bytes::from(vec![b'x'; 40 * 1024]);
    let a = r
        .client
        .request("PUT", &r.relay.url("/relay/acme/app/big"), big)
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    let list = r.json("/api/requests").await?;
    let id = list["requests"][0]["id"].clone();
    let full = r.json(&format!("/api/requests/{id}")).await?;
    for side in ["request", "response"] {
        let body = &full[side]["body"];
        assert_eq!(body["size"], 40 * 1024, "{side}");
        assert_eq!(body["truncated"], true, "{side}");
        assert_eq!(body["text"].as_str().unwrap().len(), 1024, "{side}");
    }
    // A truncated body cannot be replayed as recorded.
    let a = r.replay(&id, "").await?;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text());
    assert!(a.text().contains("truncated"));

    // Only the newest `entries` are kept.
    for i in 0..5 {
        let a = r
            .client
            .get(&r.relay.url(&format!("/relay/acme/app/n{i}")))
            .await?;
        assert_eq!(a.status, StatusCode::OK);
    }
    let list = r.json("/api/requests").await?;
    let paths: Vec<&str> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/n4", "/n3", "/n2"]);

    // Another web page in the same browser: a foreign Host (DNS rebinding) and a form post.
    let a = r
        .client
        .request_with(
            "GET",
            &r.api("/api/requests"),
            &[("host", "attacker.example")],
            Bytes::new(),
        )
        .await?;
    assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST);
    let a = r
        .client
        .request_with(
            "POST",
            &r.api(&format!("/api/requests/{id}/replay")),
            &[("content-type", "text/plain")],
            Bytes::from("{}"),
        )
        .await?;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let page = r.client.get(&r.api("/")).await?;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("Connector inspector"));
    assert!(page.headers["content-security-policy"]
        .to_str()?
        .contains("default-src 'self'"));

    // Clearing.
    let a = r
        .client
        .request_with(
            "DELETE",
            &r.api("/api/requests"),
            &[("content-type", "application/json")],
            Bytes::new(),
        )
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    let list = r.json("/api/requests").await?;
    assert_eq!(list["requests"].as_array().unwrap().len(), 0);
    r.stop().await
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_shows_and_replays_in_chromium() -> anyhow::Result<()> {
    let root = workspace();
    let modules = root.join("testkit/browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "{} is missing: scripts/test.sh installs it (npm ci --prefix testkit/browser)",
        modules.display()
    );
    let r = start(|_| {}).await;
    let a = r
        .client
        .request_with(
            "POST",
            &r.relay.url("/relay/acme/app/api/orders?customer=42"),
            &[
                ("authorization", "Bearer browser-secret"),
                ("content-type", "application/json"),
            ],
            Bytes::from(r#"{"item":"coffee","qty":2}"#),
        )
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    let shots = root.join("target/screenshots");
    let mut cmd = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(root.join("testkit/browser/inspector.mjs"))
        .env("INSPECTOR_URL", r.api("/"))
        .env("SCREENSHOT_DIR", &shots);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the inspector walk-through failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("inspector: ok"), "{stdout}");
    // The replay the page sent reached the backend.
    assert_eq!(r.backend.requests(), 2);
    let seen = r.backend.seen().pop().expect("replayed");
    assert_eq!(seen.path, "/api/orders?customer=42");
    assert!(shots.join("inspector.png").exists());
    r.stop().await
}
