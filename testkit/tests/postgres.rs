//! The relay on PostgreSQL: provisioning through one store handle reaches the relay, a connector
//! serves through it, revocation closes the session, and a second relay node on the same database
//! sees the same tenants.

use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::testing::connector;
use http::StatusCode;
use testkit::{trace_init, Backend, Client, PgCluster};

mod common;
use common::{on_postgres, setup, Setup};

#[tokio::test]
async fn relay_serves_from_postgres_and_two_nodes_share_it() {
    trace_init();
    let cluster = PgCluster::start();
    let url = cluster.url();
    let Setup {
        relay: node_a,
        backend: _backend,
        conn,
        client,
    } = setup(on_postgres(&url)).await;
    assert_eq!(node_a.store.backend(), relay_store::Backend::Postgres);
    let credential = node_a.store.credentials("acme").await.unwrap()[0]
        .id
        .clone();
    assert_eq!(
        client
            .get(&node_a.url("/relay/acme/app/x"))
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );

    // A second node on the same database knows the tenant (503: its connector is on node A) and
    // an unknown tenant stays 404. The two nodes have their own key directories in this test, so
    // the connector's credential is only usable on the node whose pepper hashed it.
    let node_b = on_postgres(&url).spawn().await;
    node_b.sync().await;
    let client_b = Client::new(&node_b.ca_cert());
    assert_eq!(
        client_b
            .get(&node_b.url("/relay/acme/app/x"))
            .await
            .unwrap()
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        client_b
            .get(&node_b.url("/relay/ghost/app/x"))
            .await
            .unwrap()
            .status,
        StatusCode::NOT_FOUND
    );

    // Revoking through node B's store handle closes the session on node A.
    node_b
        .store
        .revoke_credential("acme", &credential.0)
        .await
        .unwrap();
    conn.wait_for(10, "the session to close", |s| !s.connected)
        .await;
    assert_eq!(
        client
            .get(&node_a.url("/relay/acme/app/y"))
            .await
            .unwrap()
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(cluster);
}

#[tokio::test]
async fn known_tenants_keep_working_while_postgres_is_down() {
    trace_init();
    let cluster = PgCluster::start();
    let Setup {
        relay,
        backend: _backend,
        conn: _conn,
        client,
    } = setup(on_postgres(&cluster.url())).await;
    let admin = format!("http://{}", relay.admin_addr.unwrap());

    cluster.stop();
    // Fail static: the catalog in memory keeps serving known tenants.
    for i in 0..20 {
        let a = client
            .get(&relay.url(&format!("/relay/acme/app/{i}")))
            .await
            .unwrap();
        assert_eq!(
            a.status,
            StatusCode::OK,
            "request {i} with the database down"
        );
    }
    assert_eq!(
        client.get(&format!("{admin}/readyz")).await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Their audit records cannot be written: dropped and counted, never waited for.
    testkit::eventually(
        Duration::from_secs(10),
        "audit drops counted while PostgreSQL is down",
        || async {
            let metrics = relay.view.metrics();
            metrics.audit_dropped.load(Ordering::Relaxed) > 0
        },
    )
    .await;

    cluster.start_again();
    testkit::eventually(
        Duration::from_secs(10),
        "ready again once PostgreSQL is back",
        || async { client.get(&format!("{admin}/readyz")).await.unwrap().status == StatusCode::OK },
    )
    .await;
    // Audit writing resumes by itself.
    let after = client
        .get(&relay.url("/relay/acme/app/after"))
        .await
        .unwrap();
    let id = after.headers["x-relay-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    testkit::eventually(
        Duration::from_secs(10),
        "audit record written after PostgreSQL came back",
        || async {
            let all = relay.store.audit(Some("acme"), 100).await.unwrap();
            all.iter().any(|r| r.request_id == id && r.outcome == "ok")
        },
    )
    .await;
    // Changes flow again.
    relay.create_tenant("later").await;
    relay.sync().await;
    assert_eq!(
        client
            .get(&relay.url("/relay/later/app/"))
            .await
            .unwrap()
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Statements the server logged (with `log_statement = 'all'`).
fn statements(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("LOG:  statement:") || l.contains("LOG:  execute"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tenants_are_served_without_store_queries_per_request() {
    trace_init();
    let cluster = PgCluster::start_logging_statements();
    let relay = on_postgres(&cluster.url()).spawn().await;
    let rss_before = testkit::process::rss_kib(std::process::id());
    for i in 0..10_000 {
        relay
            .store
            .create_tenant(&format!("t{i:05}"))
            .await
            .expect("create tenant");
    }
    let cred = relay.provision("acme").await;
    let rss_after = testkit::process::rss_kib(std::process::id());
    println!(
        "10 000 tenants loaded: test process RSS {} MiB -> {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;

    // Every statement the server runs is logged: count from here, once the session's history
    // row (written in the background) is in.
    testkit::eventually(Duration::from_secs(10), "the session recorded", || async {
        let history = relay.store.session_history("acme", 10).await.unwrap();
        history.iter().any(|s| s.disconnected_at.is_none())
    })
    .await;
    let logged_before = statements(&cluster.server_log()).len();

    let client = Client::new(&relay.ca_cert());
    let n = 1000;
    for i in 0..n {
        // Known tenants without a connector: found in memory, answered 503; one with a connector: 200.
        let tenant = format!("t{:05}", (i * 7919) % 10_000);
        let a = client
            .get(&relay.url(&format!("/relay/{tenant}/app/")))
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{tenant}");
        if i % 10 == 0 {
            let a = client.get(&relay.url("/relay/acme/app/")).await.unwrap();
            assert_eq!(a.status, StatusCode::OK);
        }
    }
    // Count the audit batches of these requests too: wait until every record is through.
    let metrics = relay.view.metrics();
    let requests = metrics.requests.load(Ordering::Relaxed);
    testkit::eventually(
        Duration::from_secs(10),
        "the audit records written",
        || async {
            let through = metrics.audit_written.load(Ordering::Relaxed)
                + metrics.audit_dropped.load(Ordering::Relaxed);
            if through >= requests {
                Ok(())
            } else {
                Err(format!("{through} of {requests}"))
            }
        },
    )
    .await;
    let log = cluster.server_log();
    let during: Vec<String> = statements(&log).split_off(logged_before);
    // Only the catalog's revision poll and the batched audit inserts reach the database — no
    // tenant, credential or hostname lookup, and far fewer statements than requests.
    for s in &during {
        let catalog_read = ["tenants", "credentials", "hostnames"]
            .iter()
            .any(|t| s.contains(&format!("FROM {t}")));
        assert!(!catalog_read, "a catalog query on the request path: {s}");
    }
    println!(
        "{} requests, {} SQL statements meanwhile (revision polls and audit batches)",
        n + n / 10,
        during.len()
    );
    assert!(
        during.len() < (n + n / 10) / 4,
        "{} statements for {} requests",
        during.len(),
        n + n / 10
    );
    // The audit batches did run.
    assert!(during.iter().any(|s| s.contains("audit_requests")));
}

#[tokio::test]
async fn changes_are_pushed_to_relays_without_waiting_for_the_poll() {
    trace_init();
    let cluster = PgCluster::start();
    let url = cluster.url();
    // Polling once a minute: only PostgreSQL's NOTIFY can bring the change in time.
    let relay = on_postgres(&url)
        .configure(|f| f.catalog.poll_interval = Some(Duration::from_secs(60)))
        .spawn()
        .await;
    // Another process (the CLI, another node) makes the change.
    let other = relay_store::Store::connect(&url).await.unwrap();
    other.create_tenant("pushed").await.unwrap();
    relay.sync().await;
    let client = Client::new(&relay.ca_cert());
    assert_eq!(
        client
            .get(&relay.url("/relay/pushed/app/"))
            .await
            .unwrap()
            .status,
        StatusCode::SERVICE_UNAVAILABLE,
        "known tenant, no connector yet"
    );
    // A revocation reaches the live session the same way.
    let cred = relay.create_credential("pushed").await;
    relay.sync().await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "pushed", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    other
        .revoke_credential("pushed", &cred.credential.id.0)
        .await
        .unwrap();
    conn.wait_for(
        5,
        "the session to close within seconds, not at the next poll",
        |s| !s.connected,
    )
    .await;
}
