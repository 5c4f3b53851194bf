//! Certificates per hostname, ACME issuance state and accounts on both backends.

use relay_store::{CertificateKey, CertificateSource, Error, Store};
use testkit::PgCluster;

fn cert(names: &[&str]) -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

async fn certificates(store: Store) {
    let key = CertificateKey::new(&[3u8; 32]).unwrap();
    store.create_tenant("acme").await.unwrap();
    store.create_tenant("other").await.unwrap();
    store
        .add_hostname("acme", "app.acme.test", "app")
        .await
        .unwrap();
    store
        .add_hostname("other", "other.test", "app")
        .await
        .unwrap();
    let (chain, pem_key) = cert(&["app.acme.test"]);

    // Only the owning tenant may set it; a bad one is refused.
    assert!(matches!(
        store
            .set_certificate("other", "app.acme.test", &chain, &pem_key, &key)
            .await,
        Err(Error::HostnameNotFound(_))
    ));
    let (wrong, wrong_key) = cert(&["elsewhere.test"]);
    assert!(matches!(
        store
            .set_certificate("acme", "app.acme.test", &wrong, &wrong_key, &key)
            .await,
        Err(Error::InvalidCertificate(_))
    ));
    let before = store.revision().await.unwrap();
    let info = store
        .set_certificate("ACME", "App.Acme.Test", &chain, &pem_key, &key)
        .await
        .unwrap();
    assert_eq!(info.source, CertificateSource::Upload);
    assert!(store.revision().await.unwrap() > before, "relays reload");
    assert_eq!(
        store.certificates("acme").await.unwrap(),
        vec![info.clone()]
    );
    assert!(store.certificates("other").await.unwrap().is_empty());
    let loaded = store.load_certificates(&key).await.unwrap();
    assert_eq!(loaded.len(), 1);
    let (host, one) = &loaded[0];
    assert_eq!(host, "app.acme.test");
    assert_eq!(one.as_ref().unwrap().info, info);
    // Another key cannot open it: reported per row, not as a failure of the whole load.
    let other_key = CertificateKey::new(&[4u8; 32]).unwrap();
    let loaded = store.load_certificates(&other_key).await.unwrap();
    assert!(matches!(loaded[0].1, Err(Error::CertificateKey(_))));

    // ACME: marking asks for a certificate; failures back off; success clears the state.
    assert!(matches!(
        store.request_renewal("acme", "app.acme.test").await,
        Err(Error::NotAcme(_))
    ));
    store
        .set_hostname_acme("acme", "app.acme.test", true)
        .await
        .unwrap();
    assert!(store.hostnames("acme").await.unwrap()[0].acme);
    let due = store.acme_hostnames().await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].renew_requested);
    assert_eq!(
        due[0].certificate.map(|c| c.0),
        Some(CertificateSource::Upload)
    );
    store
        .record_acme_failure("app.acme.test", "CA said no", 12345)
        .await
        .unwrap();
    store
        .record_acme_failure("app.acme.test", "CA said no again", 23456)
        .await
        .unwrap();
    let due = store.acme_hostnames().await.unwrap();
    assert_eq!(
        (
            due[0].failures,
            due[0].next_attempt_at,
            due[0].renew_requested
        ),
        (2, 23456, false)
    );
    assert_eq!(due[0].last_error.as_deref(), Some("CA said no again"));
    let issued = store
        .store_acme_certificate("app.acme.test", &chain, &pem_key, &key)
        .await
        .unwrap();
    assert_eq!(issued.source, CertificateSource::Acme);
    let due = store.acme_hostnames().await.unwrap();
    assert_eq!((due[0].failures, due[0].next_attempt_at), (0, 0));
    // An upload turns ACME off again.
    store
        .set_certificate("acme", "app.acme.test", &chain, &pem_key, &key)
        .await
        .unwrap();
    assert!(store.acme_hostnames().await.unwrap().is_empty());

    // Accounts: the first stored wins.
    assert_eq!(
        store.acme_account("https://ca/dir", &key).await.unwrap(),
        None
    );
    let first = store
        .save_acme_account("https://ca/dir", b"{\"a\":1}", &key)
        .await
        .unwrap();
    let second = store
        .save_acme_account("https://ca/dir", b"{\"a\":2}", &key)
        .await
        .unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"{\"a\":1}"[..], &b"{\"a\":1}"[..])
    );

    // The issuance lock: one holder at a time (PostgreSQL), released on drop.
    let lock = store.try_issuance_lock().await.unwrap();
    assert!(lock.is_some());
    if store.backend() == relay_store::Backend::Postgres {
        assert!(store.try_issuance_lock().await.unwrap().is_none());
    }
    lock.unwrap().release().await.unwrap();
    assert!(store.try_issuance_lock().await.unwrap().is_some());

    // Removing the certificate, then the hostname (which takes its state along).
    store
        .remove_certificate("acme", "app.acme.test")
        .await
        .unwrap();
    assert!(matches!(
        store.remove_certificate("acme", "app.acme.test").await,
        Err(Error::CertificateNotFound(_))
    ));
    store
        .set_certificate("acme", "app.acme.test", &chain, &pem_key, &key)
        .await
        .unwrap();
    store
        .remove_hostname("acme", "app.acme.test")
        .await
        .unwrap();
    assert!(store.load_certificates(&key).await.unwrap().is_empty());
}

#[tokio::test]
async fn certificates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    certificates(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn certificates_on_postgres() {
    let cluster = PgCluster::start();
    certificates(Store::connect(&cluster.url()).await.unwrap()).await;
}
