//! The store's behaviour: the same test functions run against the embedded SQLite backend and a
//! throwaway PostgreSQL cluster (`both!` below); a few cases are about SQLite files only.

use relay_store::{Backend, Error, SecretHasher, Store, TenantLimits};
use testkit::PgCluster;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store = Store::connect(&url).await.unwrap();
    (dir, store)
}

/// Runs each listed `async fn(Store)` once on SQLite and once on its own PostgreSQL cluster.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_dir, store) = super::store().await;
                    assert_eq!(store.backend(), super::Backend::Sqlite);
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let cluster = super::PgCluster::start();
                    let store = super::Store::connect(&cluster.url()).await.unwrap();
                    assert_eq!(store.backend(), super::Backend::Postgres);
                    super::$case(store).await;
                }
            )*
        }
    };
}

both!(
    tenants_are_created_once_with_canonical_names,
    changes_bump_the_revision_and_show_in_snapshots,
    limits_enable_and_delete,
    hostnames_belong_to_one_tenant,
    admin_users_are_unique,
    audit_records_batch_query_and_purge,
    api_tokens_verify_only_while_active,
    session_history_opens_closes_and_recovers,
    audit_filters_pages_and_minutes,
    audit_status_filters_hold_at_the_rare_status_edges,
    tenant_pages_search_literally,
    web_sessions_log_in_and_out,
);

async fn audit_filters_pages_and_minutes(store: Store) {
    let mut batch = Vec::new();
    for i in 0..30_i64 {
        let mut r = audit_record(
            &format!("q{i:02}"),
            if i < 20 { "acme" } else { "beta" },
            60_000 * (i / 10) + i,
        );
        r.status = [200, 404, 502][(i % 3) as usize];
        batch.push(r);
    }
    store.insert_audit(batch).await.unwrap();
    let q = |f: relay_store::AuditFilter| {
        let store = store.clone();
        async move { store.audit_query(&f).await.unwrap() }
    };
    let all = q(relay_store::AuditFilter {
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 30);
    assert_eq!(all[0].request_id, "q29", "newest first");
    let acme5 = q(relay_store::AuditFilter {
        tenant: Some("ACME".into()),
        status: Some((500, 599)),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(acme5.iter().all(|r| r.tenant == "acme" && r.status == 502));
    assert_eq!(acme5.len(), 6);
    let window = q(relay_store::AuditFilter {
        since: Some(60_000),
        until: Some(120_000),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert_eq!(window.len(), 10);
    assert!(window
        .iter()
        .all(|r| (60_000..120_000).contains(&r.created_at)));
    let page2 = q(relay_store::AuditFilter {
        limit: 7,
        offset: 7,
        ..Default::default()
    })
    .await;
    assert_eq!(page2.len(), 7);
    assert_eq!(page2[0].request_id, all[7].request_id);
    let minutes = store.audit_per_minute(0).await.unwrap();
    assert_eq!(minutes.len(), 3);
    assert_eq!(
        minutes[1],
        relay_store::MinuteStats {
            minute: 60_000,
            requests: 10,
            errors: 3
        }
    );
    assert_eq!(store.audit_per_minute(120_000).await.unwrap().len(), 1);
}

/// The status filter on both sides of the partial index's edges (statuses outside 200..=399 are
/// in it, and a filter wholly outside repeats its predicate): each range finds exactly its
/// records, whichever way it is read.
async fn audit_status_filters_hold_at_the_rare_status_edges(store: Store) {
    let statuses = [0, 101, 199, 200, 204, 301, 399, 400, 404, 502];
    let batch = statuses
        .iter()
        .zip(1_000..)
        .map(|(&status, at)| {
            let mut r = audit_record(&format!("s{status}"), "acme", at);
            r.status = status;
            r
        })
        .collect();
    store.insert_audit(batch).await.unwrap();
    let ranges = [
        (100, 199),
        (199, 199),
        (200, 200),
        (200, 299),
        (300, 399),
        (399, 399),
        (399, 400),
        (400, 400),
        (400, 499),
        (500, 599),
        (0, 99),
        (0, 599),
    ];
    for (lo, hi) in ranges {
        let found = store
            .audit_query(&relay_store::AuditFilter {
                status: Some((lo, hi)),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut got: Vec<i64> = found.iter().map(|r| r.status).collect();
        got.sort_unstable();
        let want: Vec<i64> = statuses
            .iter()
            .copied()
            .filter(|s| (lo..=hi).contains(s))
            .collect();
        assert_eq!(got, want, "{lo}..={hi}");
    }
}

async fn tenant_pages_search_literally(store: Store) {
    for n in ["app-one", "app-two", "billing", "x50"] {
        store.create_tenant(n).await.unwrap();
    }
    let (page, total) = store.tenants_page("app", 0, 1).await.unwrap();
    assert_eq!((page.len(), total), (1, 2));
    assert_eq!(page[0].name, "app-one");
    let (page, _) = store.tenants_page("APP", 1, 10).await.unwrap();
    assert_eq!(page[0].name, "app-two");
    // LIKE's wildcards are taken literally.
    assert_eq!(store.tenants_page("%", 0, 10).await.unwrap().1, 0);
    assert_eq!(store.tenants_page("_", 0, 10).await.unwrap().1, 0);
    assert_eq!(store.tenants_page("", 0, 10).await.unwrap().1, 4);
    store.set_tenant_enabled("x50", false).await.unwrap();
    assert_eq!(store.tenant_counts().await.unwrap(), (4, 3));
    store
        .set_tenant_settings(
            "billing",
            &relay_store::TenantSettings {
                display_name: Some("Invoices 50%".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.tenants_page("50%", 0, 10).await.unwrap().0[0].name,
        "billing"
    );
}

async fn web_sessions_log_in_and_out(store: Store) {
    store
        .create_admin_user("admin", "correct horse battery")
        .await
        .unwrap();
    assert!(store
        .verify_admin_password("admin", "wrong")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .verify_admin_password("nobody", "correct horse battery")
        .await
        .unwrap()
        .is_none());
    let user = store
        .verify_admin_password("admin", "correct horse battery")
        .await
        .unwrap()
        .expect("valid login");
    let new = store.create_web_session(&user, 60_000).await.unwrap();
    let s = store
        .web_session(&new.cookie)
        .await
        .unwrap()
        .expect("session");
    assert_eq!(s.user.username, "admin");
    assert_eq!(s.csrf, new.session.csrf);
    assert!(store.web_session("forged").await.unwrap().is_none());
    // Only a hash is stored.
    let expired = store.create_web_session(&user, -1).await.unwrap();
    assert!(
        store.web_session(&expired.cookie).await.unwrap().is_none(),
        "expired"
    );
    store.delete_web_session(&new.cookie).await.unwrap();
    assert!(store.web_session(&new.cookie).await.unwrap().is_none());
}

async fn session_history_opens_closes_and_recovers(store: Store) {
    let record = |id: &str, node: &str, at: i64| relay_store::SessionRecord {
        id: id.into(),
        tenant: "acme".into(),
        relay_node: node.into(),
        connector_id: "c1".into(),
        connector_version: "connector/1.0".into(),
        transport: "tcp".into(),
        remote_addr: "[2001:db8::1]:4000".into(),
        connected_at: at,
        disconnected_at: None,
        close_code: None,
        node_id: None,
        targets: Vec::new(),
    };
    store.session_opened(&record("s1", "n1", 10)).await.unwrap();
    store.session_opened(&record("s2", "n1", 20)).await.unwrap();
    store.session_opened(&record("s3", "n2", 30)).await.unwrap();
    store.session_closed("s1", "no_error").await.unwrap();
    // Closing twice keeps the first end.
    store.session_closed("s1", "internal").await.unwrap();
    assert_eq!(store.close_orphaned_sessions("n1").await.unwrap(), 1);
    let h = store.session_history("ACME", 10).await.unwrap();
    assert_eq!(
        h.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s3", "s2", "s1"]
    );
    assert_eq!(h[2].close_code.as_deref(), Some("no_error"));
    assert_eq!(h[1].close_code.as_deref(), Some("relay_lost"));
    assert!(h[0].disconnected_at.is_none());
    assert_eq!(h[0], record("s3", "n2", 30));
    // Only s3 is still open, on any node.
    assert_eq!(store.live_session_count().await.unwrap(), 1);
    let live = store.live_sessions("Acme").await.unwrap();
    assert_eq!(live, [record("s3", "n2", 30)]);
    assert!(store.live_sessions("other").await.unwrap().is_empty());
}

async fn api_tokens_verify_only_while_active(store: Store) {
    let hasher = relay_store::SecretHasher::new(b"pepper-for-tests-0123456789abcdef");
    let new = store.create_api_token("Deploy", &hasher).await.unwrap();
    assert_eq!(new.token.name, "deploy");
    assert!(new.value.starts_with("rat_"));
    assert!(matches!(
        store.create_api_token("deploy", &hasher).await,
        Err(relay_store::Error::ApiTokenExists(_))
    ));
    let ok = store
        .verify_api_token(&new.value, &hasher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.id, new.token.id);
    assert!(ok.last_used_at.is_some());
    // Tampered, wrong-pepper and malformed values are refused.
    let mut tampered = new.value.clone();
    tampered.pop();
    tampered.push(if new.value.ends_with('A') { 'B' } else { 'A' });
    assert!(store
        .verify_api_token(&tampered, &hasher)
        .await
        .unwrap()
        .is_none());
    let other = relay_store::SecretHasher::new(b"another-pepper-0123456789abcdef00");
    assert!(store
        .verify_api_token(&new.value, &other)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .verify_api_token("Bearer x", &hasher)
        .await
        .unwrap()
        .is_none());
    store.revoke_api_token("deploy").await.unwrap();
    assert!(store
        .verify_api_token(&new.value, &hasher)
        .await
        .unwrap()
        .is_none());
    assert!(store.api_tokens().await.unwrap()[0].revoked_at.is_some());
    assert!(matches!(
        store.revoke_api_token("missing").await,
        Err(relay_store::Error::ApiTokenNotFound(_))
    ));
    store
        .record_admin_action("cli", "tenant.create", "acme")
        .await
        .unwrap();
    store
        .record_admin_action("user:alice", "tenant.disable", "acme")
        .await
        .unwrap();
    let log = store.admin_actions(10).await.unwrap();
    assert_eq!(
        log.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        ["tenant.disable", "tenant.create"]
    );
    assert_eq!(log[0].actor, "user:alice");
}

fn audit_record(id: &str, tenant: &str, at: i64) -> relay_store::AuditRecord {
    relay_store::AuditRecord {
        request_id: id.to_string(),
        tenant: tenant.to_string(),
        target: "app".into(),
        method: "GET".into(),
        path: "/relay/acme/app/x".into(),
        status: 200,
        outcome: "ok".into(),
        bytes_in: 0,
        bytes_out: 4_000_000_000_000,
        duration_ms: 12,
        visitor: "192.0.2.1".into(),
        session_id: "s1".into(),
        relay_node: "n1".into(),
        session_node: None,
        created_at: at,
    }
}

async fn audit_records_batch_query_and_purge(store: Store) {
    let batch: Vec<_> = (0..600)
        .map(|i| {
            audit_record(
                &format!("r{i}"),
                if i % 2 == 0 { "acme" } else { "beta" },
                1_000 + i,
            )
        })
        .collect();
    store.insert_audit(batch).await.unwrap();
    // Newest first, per tenant, bounded.
    let acme = store.audit(Some("acme"), 10).await.unwrap();
    assert_eq!(acme.len(), 10);
    assert_eq!(acme[0].request_id, "r598");
    assert!(acme.iter().all(|r| r.tenant == "acme"));
    assert_eq!(acme[0], audit_record("r598", "acme", 1_598));
    assert_eq!(store.audit(None, 5000).await.unwrap().len(), 600);
    // Values survive as they were: quotes, backslashes, control characters, non-ASCII, NULL.
    let mut odd = audit_record("odd", "acme", 1_050);
    odd.path = "/ü/\"x\"\\\n\u{1}/€".into();
    odd.session_node = Some("n2".into());
    odd.bytes_in = i64::MAX;
    store.insert_audit(vec![odd.clone()]).await.unwrap();
    let back = store.audit(None, 5000).await.unwrap();
    assert_eq!(back.iter().find(|r| r.request_id == "odd"), Some(&odd));
    assert_eq!(store.purge_audit(1_100).await.unwrap(), 101);
    assert_eq!(store.audit(None, 1000).await.unwrap().len(), 500);
}

async fn admin_users_are_unique(store: Store) {
    assert!(!store.admin_user_exists("admin").await.unwrap());
    store
        .create_admin_user("admin", "correct horse battery staple")
        .await
        .unwrap();
    assert!(store.admin_user_exists("admin").await.unwrap());
    assert!(matches!(
        store
            .create_admin_user("admin", "another long password")
            .await,
        Err(Error::AdminUserExists(_))
    ));
}

fn hasher() -> SecretHasher {
    SecretHasher::new(&[7u8; 32])
}

async fn tenants_are_created_once_with_canonical_names(store: Store) {
    let t = store.create_tenant("Acme-1").await.unwrap();
    assert_eq!(t.name, "acme-1");
    assert!(t.enabled);
    assert!(
        matches!(store.create_tenant("ACME-1").await, Err(Error::TenantExists(n)) if n == "acme-1")
    );
    assert!(matches!(
        store.create_tenant("a/b").await,
        Err(Error::InvalidName(_))
    ));
    assert_eq!(store.tenants().await.unwrap().len(), 1);
    assert_eq!(store.tenant("ACME-1").await.unwrap().unwrap().id, t.id);
}

async fn changes_bump_the_revision_and_show_in_snapshots(store: Store) {
    let r0 = store.revision().await.unwrap();
    store.create_tenant("acme").await.unwrap();
    let cred = store
        .create_credential("acme", "ci", &hasher())
        .await
        .unwrap();
    let r1 = store.revision().await.unwrap();
    assert!(r1 > r0);
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.revision, r1);
    assert_eq!(snap.tenants.len(), 1);
    assert_eq!(snap.credentials.len(), 1);
    assert!(hasher().verify(&cred.secret, &snap.credentials[0].secret_hash));

    store.touch_credential(&cred.credential.id).await.unwrap();
    assert_eq!(
        store.revision().await.unwrap(),
        r1,
        "last-used updates do not invalidate caches"
    );

    store
        .revoke_credential("acme", &cred.credential.id.0)
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    assert!(snap.revision > r1);
    assert!(
        snap.credentials.is_empty(),
        "revoked credentials leave the snapshot"
    );
    assert!(matches!(
        store.revoke_credential("acme", &cred.credential.id.0).await,
        Err(Error::CredentialNotFound(_))
    ));
    let listed = store.credentials("acme").await.unwrap();
    assert!(listed[0].revoked_at.is_some() && listed[0].last_used_at.is_some());
}

#[tokio::test]
async fn secrets_are_never_stored() {
    let (dir, store) = store().await;
    store.create_tenant("acme").await.unwrap();
    let cred = store
        .create_credential("acme", "", &hasher())
        .await
        .unwrap();
    store
        .create_admin_user("admin", "correct horse battery staple")
        .await
        .unwrap();
    store.close().await;
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        all.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&all);
    // The random part is the last 43 characters (it may itself contain '_').
    let random_part = &cred.secret[cred.secret.len() - 43..];
    assert!(
        !text.contains(random_part),
        "the secret is in the database files"
    );
    assert!(
        !text.contains("correct horse"),
        "the password is in the database files"
    );
    assert!(
        text.contains("$argon2id$v=19$m=19456,t=2,p=1$"),
        "argon2id with the OWASP parameters"
    );
    assert!(
        !format!("{cred:?}").contains(random_part),
        "Debug hides the secret"
    );
}

async fn limits_enable_and_delete(store: Store) {
    store.create_tenant("acme").await.unwrap();
    let limits = TenantLimits {
        max_body_bytes: Some(5),
        max_concurrent_streams: Some(2),
        request_timeout_ms: Some(100),
    };
    store.set_tenant_limits("acme", &limits).await.unwrap();
    store.set_tenant_enabled("acme", false).await.unwrap();
    let t = store.tenant("acme").await.unwrap().unwrap();
    assert_eq!(t.limits, limits);
    assert!(!t.enabled);
    store
        .create_credential("acme", "", &hasher())
        .await
        .unwrap();
    store.delete_tenant("acme").await.unwrap();
    assert!(store.tenant("acme").await.unwrap().is_none());
    assert!(
        store.snapshot().await.unwrap().credentials.is_empty(),
        "credentials go with their tenant"
    );
    assert!(matches!(
        store.delete_tenant("acme").await,
        Err(Error::TenantNotFound(_))
    ));
    assert!(matches!(
        store.set_tenant_enabled("nobody", true).await,
        Err(Error::TenantNotFound(_))
    ));
    assert!(matches!(
        store.create_credential("nobody", "", &hasher()).await,
        Err(Error::TenantNotFound(_))
    ));
}

/// A batch is one transaction across its statements: when a later chunk fails, the rows of the
/// chunks before it are not kept either.
#[tokio::test]
async fn a_failed_audit_batch_writes_nothing() {
    let (dir, store) = store().await;
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    // A failure the store cannot cause itself: a trigger that refuses one row.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON audit_requests WHEN NEW.request_id = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 125 rows: twelve full multi-row statements, then the rest one row at a time; the poisoned
    // row is among the rest, after every full statement has run.
    let mut batch: Vec<_> = (0..125)
        .map(|i| audit_record(&format!("r{i}"), "acme", 1_000 + i))
        .collect();
    batch[122].request_id = "poison".into();
    assert!(store.insert_audit(batch.clone()).await.is_err());
    assert!(store.audit(None, 1000).await.unwrap().is_empty());
    // Without it the same batch is written whole.
    batch[122].request_id = "r122".into();
    store.insert_audit(batch).await.unwrap();
    assert_eq!(store.audit(None, 1000).await.unwrap().len(), 125);
    pool.close().await;
}

#[tokio::test]
async fn a_newer_schema_stops_the_binary() {
    let (dir, store) = store().await;
    store.close().await;
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    // A migration a newer build applied.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(matches!(
        Store::connect(&url).await,
        Err(Error::SchemaTooNew(9999))
    ));
}

#[tokio::test]
async fn other_url_schemes_are_refused_clearly() {
    let err = Store::connect("mysql://x").await.unwrap_err();
    assert!(err.to_string().contains("sqlite://"), "{err}");
}

async fn hostnames_belong_to_one_tenant(store: Store) {
    store.create_tenant("acme").await.unwrap();
    store.create_tenant("other").await.unwrap();
    let r0 = store.revision().await.unwrap();
    let h = store
        .add_hostname("acme", "App.Acme.Example.", "app")
        .await
        .unwrap();
    assert_eq!(h.hostname, "app.acme.example");
    assert!(store.revision().await.unwrap() > r0);
    assert!(matches!(
        store.add_hostname("other", "app.acme.example", "app").await,
        Err(Error::HostnameTaken(_))
    ));
    assert!(matches!(
        store.add_hostname("acme", "bad_host", "app").await,
        Err(Error::InvalidHostname(_))
    ));
    assert!(matches!(
        store
            .add_hostname("acme", "x.acme.example", "Bad/Target")
            .await,
        Err(Error::InvalidName(_))
    ));
    assert_eq!(store.snapshot().await.unwrap().hostnames, vec![h.clone()]);
    assert!(matches!(
        store.remove_hostname("other", "app.acme.example").await,
        Err(Error::HostnameNotFound(_))
    ));
    store.delete_tenant("acme").await.unwrap();
    assert!(
        store.snapshot().await.unwrap().hostnames.is_empty(),
        "hostnames go with their tenant"
    );
}
