//! The management web in a real browser: headless Chromium driven by playwright-core
//! (testkit/browser/admin.mjs, policies.mjs) against a real relay, a real connector and a
//! backend.
//! scripts/test.sh installs Chromium, Node.js and the npm package; screenshots of the main pages
//! land in target/screenshots/ (docs/management.md shows copies).

use std::path::PathBuf;
use std::process::Command;

use testkit::{process::bin, trace_init, Backend};

mod common;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_walks_from_login_to_revocation_in_chromium() -> anyhow::Result<()> {
    trace_init();
    let root = workspace();
    let script = root.join("testkit/browser/admin.mjs");
    let modules = root.join("testkit/browser/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "{} is missing: scripts/test.sh installs it (npm ci --prefix testkit/browser)",
        modules.display()
    );
    let relay = relay_server::testing::relay().spawn().await;
    let password = "browser test password";
    relay.store.create_admin_user("admin", password).await?;
    let backend = Backend::spawn().await;
    let shots = root.join("target/screenshots");
    let mut cmd = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(&script)
        .env(
            "ADMIN_URL",
            format!("http://{}", relay.admin_addr.expect("admin")),
        )
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASSWORD", password)
        .env("RELAY_URL", relay.server())
        .env("RELAY_CA", relay.ca_cert())
        .env("WALK_CONNECTOR_BIN", bin("connector"))
        .env("BACKEND_URL", backend.url())
        .env("SCREENSHOT_DIR", &shots);
    // The browser runs on a blocking thread; the relay keeps serving on the runtime's workers.
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser walk-through failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("browser: ok"), "{stdout}");

    // What the browser did is in the store.
    let tenant = relay.store.tenant("browser-co").await?.expect("created");
    assert_eq!(tenant.display_name, "\"><img src=x onerror=alert(1)>");
    let creds = relay.store.credentials("browser-co").await?;
    assert_eq!(creds.len(), 1);
    assert!(creds[0].revoked_at.is_some(), "revoked from the page");
    assert!(creds[0].last_used_at.is_some(), "the connector used it");
    assert!(backend.requests() >= 1);
    // The Queue page's work: settings saved, the waiting message cancelled.
    let settings = relay.store.queue_settings(&tenant.id.0).await?;
    assert_eq!((settings.ordered, settings.ttl_ms), (true, Some(7_200_000)));
    let cancelled = relay
        .store
        .messages(&tenant.id.0, Some(relay_store::QueueState::Cancelled), 10)
        .await?;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].path, "/orders/42");
    let actions = relay.store.admin_actions(50).await?;
    for action in [
        "tenant.create",
        "credential.create",
        "tenant.update",
        "credential.revoke",
        "node.drain",
        "node.resume",
        "queue.settings",
        "queue.discard",
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.actor == "user:admin"),
            "{action} not recorded: {actions:?}"
        );
    }
    for shot in [
        "login",
        "dashboard",
        "tenants",
        "tenant",
        "audit",
        "credential-created",
        "nodes",
        "queue",
        "queue-message",
    ] {
        let path = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1000),
            "{} missing",
            path.display()
        );
    }
    relay.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_denies_an_ip_block_and_issues_and_revokes_an_api_key_in_chromium(
) -> anyhow::Result<()> {
    use relay_store::{PolicyScope, Rule};

    trace_init();
    let root = workspace();
    let script = root.join("testkit/browser/policies.mjs");
    assert!(
        root.join("testkit/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is missing: scripts/test.sh installs it (npm ci --prefix testkit/browser)"
    );
    // Loopback is a trusted load balancer, so the script's X-Forwarded-For is the visitor.
    let relay = relay_server::testing::relay()
        .configure(|f| f.routing.trusted_proxies = Some(vec!["127.0.0.1".into()]))
        .spawn()
        .await;
    let password = "browser test password";
    relay.store.create_admin_user("admin", password).await?;
    let backend = Backend::spawn().await;
    let _conn = common::connect(&relay, "policy-co", |c| c.target("app", &backend.url())).await;
    let shots = root.join("target/screenshots");
    let mut cmd = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(&script)
        .env(
            "ADMIN_URL",
            format!("http://{}", relay.admin_addr.expect("admin")),
        )
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASSWORD", password)
        .env("RELAY_URL", relay.server())
        .env("RELAY_CA", relay.ca_cert())
        .env("TENANT", "policy-co")
        .env("SCREENSHOT_DIR", &shots);
    // The browser runs on a blocking thread; the relay keeps serving on the runtime's workers.
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser policy walk-through failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("browser: ok"), "{stdout}");

    // What the page did is in the store, and the admin log names the user.
    let rules = relay
        .store
        .policy("policy-co", &PolicyScope::Tenant)
        .await?;
    assert_eq!(rules.deny_ip, Some(vec!["203.0.113.0/24".to_string()]));
    assert!(matches!(rules.api_key, Some(Rule::On(_))));
    let keys = relay.store.api_keys("policy-co").await?;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].revoked_at.is_some(), "revoked from the page");
    let actions = relay.store.admin_actions(50).await?;
    for action in ["tenant.policy", "api_key.create", "api_key.revoke"] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.actor == "user:admin"),
            "{action} not recorded: {actions:?}"
        );
    }
    // The relay counted its refusals: the denied block, then the missing and revoked key.
    let metrics = relay.view.metrics().render();
    for rule in [
        r#"rule="ip-deny",status="403""#,
        r#"rule="credentials-missing",status="401""#,
        r#"rule="api-key",status="401""#,
    ] {
        assert!(metrics.contains(rule), "{rule} not counted: {metrics}");
    }
    let shot = shots.join("policies.png");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "{} missing",
        shot.display()
    );
    relay.stop().await
}
