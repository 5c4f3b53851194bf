//! Pairing settings and tokens on both backends.

use relay_store::{parse_pairing_token, Error, PairingMode, SecretHasher, Store};
use testkit::PgCluster;

async fn pairing_rules(store: Store) {
    let hasher = SecretHasher::new(b"pepper-pepper-pepper-pepper-pepp");
    let t = store.create_tenant("acme").await.unwrap();
    assert_eq!(store.pairing_mode(&t.id.0).await.unwrap(), PairingMode::Off);
    assert_eq!(
        store
            .set_pairing_mode("acme", PairingMode::Token)
            .await
            .unwrap(),
        PairingMode::Off
    );
    assert_eq!(
        store.pairing_mode(&t.id.0).await.unwrap(),
        PairingMode::Token
    );
    assert!(matches!(
        store.set_pairing_mode("nope", PairingMode::Open).await,
        Err(Error::TenantNotFound(_))
    ));

    let any = store
        .create_pairing_token("acme", None, "laptop", &hasher)
        .await
        .unwrap();
    let bound = store
        .create_pairing_token("acme", Some("alice"), "", &hasher)
        .await
        .unwrap();
    assert_eq!(parse_pairing_token(&any.value), Some(any.token.id.as_str()));
    assert_eq!(bound.token.peer_id.as_deref(), Some("alice"));

    // Access: the stored hash verifies the token and nothing else; the binding comes along.
    let access = store
        .pairing_access(&t.id.0, Some(&bound.value))
        .await
        .unwrap();
    assert_eq!(access.mode, PairingMode::Token);
    let (hash, peer) = access.token.clone().unwrap();
    assert!(hasher.verify(&bound.value, &hash));
    assert!(!hasher.verify(&any.value, &hash));
    assert_eq!(peer.as_deref(), Some("alice"));
    let none = store
        .pairing_access(&t.id.0, Some("rpt_garbage"))
        .await
        .unwrap();
    assert_eq!(none.token, None);

    // Another tenant's id never finds this tenant's token.
    let other = store.create_tenant("other").await.unwrap();
    store
        .set_pairing_mode("other", PairingMode::Token)
        .await
        .unwrap();
    let cross = store
        .pairing_access(&other.id.0, Some(&any.value))
        .await
        .unwrap();
    assert_eq!(cross.token, None);

    let mut active = store.active_pairing_tokens(&t.id.0).await.unwrap();
    active.sort();
    let mut want = vec![any.token.id.clone(), bound.token.id.clone()];
    want.sort();
    assert_eq!(active, want);
    let listed = store.pairing_tokens("acme").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t.revoked_at.is_none()));
    store
        .revoke_pairing_token("acme", &any.token.id)
        .await
        .unwrap();
    assert!(matches!(
        store.revoke_pairing_token("acme", &any.token.id).await,
        Err(Error::PairingTokenNotFound(_))
    ));
    assert!(matches!(
        store.revoke_pairing_token("other", &bound.token.id).await,
        Err(Error::PairingTokenNotFound(_))
    ));
    let revoked = store
        .pairing_access(&t.id.0, Some(&any.value))
        .await
        .unwrap();
    assert_eq!(revoked.token, None);

    // Off again: no row, and no token lookups.
    store
        .set_pairing_mode("acme", PairingMode::Off)
        .await
        .unwrap();
    let off = store
        .pairing_access(&t.id.0, Some(&bound.value))
        .await
        .unwrap();
    assert_eq!((off.mode, off.token), (PairingMode::Off, None));

    // Deleting the tenant deletes its tokens.
    store.delete_tenant("acme").await.unwrap();
    store.create_tenant("acme").await.unwrap();
    assert!(store.pairing_tokens("acme").await.unwrap().is_empty());
}

#[tokio::test]
async fn pairing_rules_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    pairing_rules(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn pairing_rules_on_postgres() {
    let cluster = PgCluster::start();
    pairing_rules(Store::connect(&cluster.url()).await.unwrap()).await;
}

/// The cluster registry: peers claimed per node, matches across nodes, waiting connections.
async fn cluster_registry(store: Store) {
    use relay_store::{now_ms, NodeRecord, NodeState};
    for (id, name) in [("n1", "one"), ("n2", "two")] {
        store
            .register_node(&NodeRecord {
                id: id.into(),
                name: name.into(),
                advertise: Some(format!("127.0.0.1:{}", if id == "n1" { 1 } else { 2 })),
                public_address: None,
                state: NodeState::Active,
                started_at: now_ms(),
                heartbeat_at: now_ms(),
            })
            .await
            .unwrap();
    }
    let fresh = 60_000;
    assert!(store
        .claim_pairing_peer("t", "alice", "n1", fresh)
        .await
        .unwrap());
    assert!(!store
        .claim_pairing_peer("t", "alice", "n2", fresh)
        .await
        .unwrap());
    assert!(store
        .claim_pairing_peer("t", "bob", "n2", fresh)
        .await
        .unwrap());
    let docs = ["doc".to_string(), "x".to_string()];
    store
        .set_pairing_documents(("t", "alice", "n1"), &docs, true)
        .await
        .unwrap();
    store
        .set_pairing_documents(("t", "bob", "n2"), &docs[..1], true)
        .await
        .unwrap();
    assert_eq!(
        store
            .remote_pairing_matches(("t", "bob", "n2"), fresh)
            .await
            .unwrap(),
        vec![("alice".to_string(), "doc".to_string())]
    );
    assert_eq!(store.pairing_documents("t", "alice").await.unwrap(), docs);
    // A waiting connection, and its mirror arriving on the other node.
    let held = store
        .hold_or_find_mirror(("t", "alice", "bob", "doc"), "n1", fresh)
        .await
        .unwrap();
    assert_eq!(held, None);
    let mirror = store
        .hold_or_find_mirror(("t", "bob", "alice", "doc"), "n2", fresh)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (mirror.node_id.as_str(), mirror.advertise.as_str()),
        ("n1", "127.0.0.1:1")
    );
    store
        .release_pairing_connection(("t", "alice", "bob", "doc"), "n1")
        .await
        .unwrap();
    store
        .release_pairing_peer("t", "alice", "n1")
        .await
        .unwrap();
    assert!(store
        .claim_pairing_peer("t", "alice", "n2", fresh)
        .await
        .unwrap());
}

#[tokio::test]
async fn cluster_registry_on_postgres() {
    let cluster = PgCluster::start();
    cluster_registry(Store::connect(&cluster.url()).await.unwrap()).await;
}
