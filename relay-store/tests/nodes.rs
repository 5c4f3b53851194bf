//! The node registry on both backends: register, heartbeat, freshness, stale removal, drain state;
//! and SQLite's single-node lock.

use relay_store::{Error, NodeRecord, NodeState, Store};
use testkit::PgCluster;

fn node(id: &str, name: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        name: name.into(),
        advertise: Some(format!("{name}:8443")),
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
