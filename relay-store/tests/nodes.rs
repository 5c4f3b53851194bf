//! The node registry on both backends: register, heartbeat, freshness, stale removal, drain state;
//! and SQLite's single-node lock.

use relay_store::{Error, NodeRecord, NodeState, Store};
use testkit::PgCluster;

fn node(id: &str, name: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        name: name.into(),
        advertise: Some(format!("{name}:8443")),
        public_address: None,
        state: NodeState::Active,
        started_at: relay_store::now_ms(),
        heartbeat_at: 0,
    }
}

async fn registry_rules(store: Store) {
    store.register_node(&node("n1", "alpha")).await.unwrap();
    store.register_node(&node("n2", "beta")).await.unwrap();
    let live = store.nodes(15_000).await.unwrap();
    let names: Vec<&str> = live.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(live[0].advertise.as_deref(), Some("alpha:8443"));
    assert!(live[0].heartbeat_at > 0);

    // A heartbeat reports the state; a drain request shows at the next one.
    assert_eq!(
        store.heartbeat_node("n1").await.unwrap(),
        Some(NodeState::Active)
    );
    let drained = store
        .set_node_state("beta", NodeState::Draining, 15_000)
        .await
        .unwrap();
    assert_eq!(
        (drained.id.as_str(), drained.state),
        ("n2", NodeState::Draining)
    );
    assert_eq!(
        store.heartbeat_node("n2").await.unwrap(),
        Some(NodeState::Draining)
    );
    assert!(matches!(
        store
            .set_node_state("gamma", NodeState::Draining, 15_000)
            .await,
        Err(Error::NodeNotFound(_))
    ));
    store.register_node(&node("n3", "beta")).await.unwrap();
    assert!(matches!(
        store
            .set_node_state("beta", NodeState::Draining, 15_000)
            .await,
        Err(Error::NodeAmbiguous(_))
    ));

    // Stale rows are not live, and are removed; a removed node learns it at its heartbeat.
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    store.heartbeat_node("n1").await.unwrap();
    let live = store.nodes(50).await.unwrap();
    assert_eq!(
        live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["n1"]
    );
    assert_eq!(store.remove_stale_nodes(50).await.unwrap(), 2);
    assert_eq!(store.heartbeat_node("n2").await.unwrap(), None);
    store.remove_node("n1").await.unwrap();
    assert!(store.nodes(15_000).await.unwrap().is_empty());
}

fn session(id: &str, node_id: &str, targets: &[&str]) -> relay_store::SessionRecord {
    relay_store::SessionRecord {
        id: id.into(),
        tenant: "acme".into(),
        relay_node: "host".into(),
        connector_id: "c1".into(),
        connector_version: "connector/1".into(),
        transport: "quic".into(),
        remote_addr: "192.0.2.1:1".into(),
        connected_at: relay_store::now_ms(),
        disconnected_at: None,
        close_code: None,
        node_id: Some(node_id.into()),
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

/// How many sessions each node holds; where a tenant's sessions are: per live active node other
/// than the asker, with the union of their targets; a node's orphaned rows end, and come back for
/// the sessions it still holds when it registers again.
async fn session_directory(store: Store) {
    // Two nodes on one host share a name; ids tell them apart.
    store.register_node(&node("n1", "host")).await.unwrap();
    store.register_node(&node("n2", "host")).await.unwrap();
    store.register_node(&node("n3", "other")).await.unwrap();
    store
        .session_opened(&session("s1", "n2", &["app"]))
        .await
        .unwrap();
    store
        .session_opened(&session("s2", "n2", &["echo"]))
        .await
        .unwrap();
    store
        .session_opened(&session("s3", "n3", &[]))
        .await
        .unwrap();
    store
        .session_opened(&session("s4", "n1", &["app"]))
        .await
        .unwrap();
    // Per node, live rows only: what `node list` and the Nodes page show.
    let counts = store.node_session_counts().await.unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!((counts["n1"], counts["n2"], counts["n3"]), (1, 2, 1));
    store.session_closed("s3", "normal").await.unwrap();
    let counts = store.node_session_counts().await.unwrap();
    assert_eq!(counts.get("n3"), None, "{counts:?}");
    store
        .session_opened(&session("s3b", "n3", &[]))
        .await
        .unwrap();
    let mut found = store.remote_sessions("ACME", "n1", 15_000).await.unwrap();
    found.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!((found[0].node_id.as_str(), found[0].sessions), ("n2", 2));
    let targets: Vec<&str> = found[0]
        .targets
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(targets, ["app", "echo"]);
    assert_eq!(found[0].advertise, "host:8443");
    assert_eq!(
        (found[1].node_id.as_str(), found[1].targets.clone()),
        ("n3", None)
    );
    assert_eq!(
        store.tenants_elsewhere("n1", 15_000).await.unwrap(),
        ["acme"]
    );
    // A draining node is still listed, marked (it serves until its connectors moved); the asker
    // itself never is.
    store
        .set_node_state("n3", NodeState::Draining, 15_000)
        .await
        .unwrap();
    let mut found = store.remote_sessions("acme", "n2", 15_000).await.unwrap();
    found.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let seen: Vec<(&str, bool)> = found
        .iter()
        .map(|r| (r.node_id.as_str(), r.draining))
        .collect();
    assert_eq!(seen, [("n1", false), ("n3", true)]);
    assert!(store
        .remote_sessions("other", "n1", 15_000)
        .await
        .unwrap()
        .is_empty());
    // n3 stops for good (its row is deleted by its clean stop; its session ends with it).
    store.remove_node("n3").await.unwrap();
    assert_eq!(store.close_orphaned_sessions("host").await.unwrap(), 1);
    // n2 vanishes (kill -9, then removed as stale): its rows end; the others stay open.
    store.remove_node("n2").await.unwrap();
    assert_eq!(store.close_orphaned_sessions("host").await.unwrap(), 2);
    assert!(store
        .remote_sessions("acme", "n1", 15_000)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.live_session_count().await.unwrap(), 1);
    // n2 was only cut off from the database: registered again, the session it still holds is live.
    store.register_node(&node("n2", "host")).await.unwrap();
    store
        .reopen_sessions("n2", &["s2".to_string()])
        .await
        .unwrap();
    let found = store.remote_sessions("acme", "n1", 15_000).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].sessions, 1);
    let targets: Vec<&str> = found[0]
        .targets
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(targets, ["echo"]);
}

#[tokio::test]
async fn session_directory_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    session_directory(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn session_directory_on_postgres() {
    let cluster = PgCluster::start();
    session_directory(Store::connect(&cluster.url()).await.unwrap()).await;
}

#[tokio::test]
async fn registry_rules_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    registry_rules(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn registry_rules_on_postgres() {
    let cluster = PgCluster::start();
    registry_rules(Store::connect(&cluster.url()).await.unwrap()).await;
}

#[tokio::test]
async fn one_serving_process_per_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("relay.db").display()
    );
    let (a, b) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    let held = a.lock_single_node().unwrap();
    let err = b.lock_single_node().unwrap_err();
    assert!(matches!(err, Error::SqliteInUse(_)), "{err}");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    drop(held);
    let _again = b.lock_single_node().unwrap();
    // PostgreSQL needs no lock: any number of nodes share it.
    let cluster = PgCluster::start();
    let pg = Store::connect(&cluster.url()).await.unwrap();
    let (_x, _y) = (
        pg.lock_single_node().unwrap(),
        pg.lock_single_node().unwrap(),
    );
}
