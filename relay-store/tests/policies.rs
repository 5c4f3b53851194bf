//! Access policies and visitor API keys on both backends.

use relay_store::{
    parse_api_key, ApiKeyRule, Error, PolicyRules, PolicyScope, RateLimitRule, Rule, SecretHasher,
    Store,
};
use testkit::PgCluster;

async fn policy_rules(store: Store) {
    let hasher = SecretHasher::new(b"pepper-pepper-pepper-pepper-pepp");
    let t = store.create_tenant("acme").await.unwrap();
    store.create_tenant("other").await.unwrap();
    let before = store.revision().await.unwrap();

    let tenant_rules = PolicyRules {
        allow_ip: Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]),
        api_key: Some(Rule::On(ApiKeyRule {
            header: "x-relay-key".into(),
        })),
        ..PolicyRules::default()
    };
    store
        .set_policy("ACME", &PolicyScope::Tenant, &tenant_rules)
        .await
        .unwrap();
    let target = PolicyScope::Target("public".into());
    let target_rules = PolicyRules {
        api_key: Some(Rule::Off),
        rate_limit: Some(Rule::On(RateLimitRule {
            per_minute: 60,
            burst: 5,
        })),
        ..PolicyRules::default()
    };
    store
        .set_policy("acme", &target, &target_rules)
        .await
        .unwrap();
    assert!(
        store.revision().await.unwrap() > before,
        "a policy bumps the revision"
    );
    assert_eq!(
        store.policy("acme", &PolicyScope::Tenant).await.unwrap(),
        tenant_rules
    );
    assert_eq!(
        store.policies("acme").await.unwrap(),
        vec![
            (PolicyScope::Tenant, tenant_rules.clone()),
            (target.clone(), target_rules.clone())
        ]
    );
    // Invalid rules are refused and change nothing.
    let bad = PolicyRules {
        deny_ip: Some(vec!["10.0.0.0/33".into()]),
        ..PolicyRules::default()
    };
    assert!(matches!(
        store.set_policy("acme", &target, &bad).await,
        Err(Error::InvalidPolicy(_))
    ));
    let bad_cors = PolicyRules {
        cors: Some(Rule::On(relay_store::CorsRule {
            allow_origins: vec!["app.example, evil".into()],
            allow_methods: vec!["GET".into()],
            allow_headers: vec![],
            allow_credentials: false,
            max_age_secs: 0,
        })),
        ..PolicyRules::default()
    };
    assert!(matches!(
        store.set_policy("acme", &target, &bad_cors).await,
        Err(Error::InvalidPolicy(_))
    ));
    assert!(matches!(
        store
            .set_policy("nope", &PolicyScope::Tenant, &tenant_rules)
            .await,
        Err(Error::TenantNotFound(_))
    ));
    // Empty rules remove the scope.
    store
        .set_policy("acme", &target, &PolicyRules::default())
        .await
        .unwrap();
    assert_eq!(store.policies("acme").await.unwrap().len(), 1);

    // API keys: the value is shown once, only its keyed hash is stored.
    let key = store.create_api_key("acme", "ci", &hasher).await.unwrap();
    assert_eq!(parse_api_key(&key.value), Some(key.key.id.as_str()));
    assert!(!format!("{key:?}").contains(&key.value));
    let snap = store.snapshot().await.unwrap();
    let record = snap
        .api_keys
        .iter()
        .find(|k| k.id == key.key.id)
        .expect("active key in the snapshot");
    assert_eq!(record.tenant_id, t.id);
    assert!(hasher.verify(&key.value, &record.key_hash));
    assert!(!hasher.verify("rak_other", &record.key_hash));
    assert_eq!(snap.policies.len(), 1);
    assert_eq!(snap.policies[0].rules, tenant_rules);

    // Revoking: from another tenant fails, then it works once and leaves the snapshot.
    assert!(matches!(
        store.revoke_api_key("other", &key.key.id).await,
        Err(Error::ApiKeyNotFound(_))
    ));
    let rev = store.revision().await.unwrap();
    store.revoke_api_key("acme", &key.key.id).await.unwrap();
    assert!(store.revision().await.unwrap() > rev);
    assert!(matches!(
        store.revoke_api_key("acme", &key.key.id).await,
        Err(Error::ApiKeyNotFound(_))
    ));
    let listed = store.api_keys("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
    assert!(store.snapshot().await.unwrap().api_keys.is_empty());

    // Deleting the tenant deletes its policies and keys.
    store
        .create_api_key("acme", "second", &hasher)
        .await
        .unwrap();
    store.delete_tenant("acme").await.unwrap();
    let snap = store.snapshot().await.unwrap();
    assert!(snap.policies.is_empty() && snap.api_keys.is_empty());
}

#[tokio::test]
async fn policy_rules_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    policy_rules(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn policy_rules_on_postgres() {
    let cluster = PgCluster::start();
    policy_rules(Store::connect(&cluster.url()).await.unwrap()).await;
}
