//! Connector authentication against a real relay: secrets, tokens, revocation, refusals.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use connector::testing::connector;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_server::testing::{relay, RelayHandle};
use testkit::{trace_init, Backend};
use tunnel_protocol::{ControlFrame, Credential, ErrorCode};

mod common;

/// The relay's first answer to a bare protocol client's `Hello`.
async fn hello(relay: &RelayHandle, tenant: &str, credential: Credential) -> ControlFrame {
    common::hello(relay, tenant, credential, &[]).await.2
}

fn refused_code(frame: &ControlFrame) -> ErrorCode {
    match frame {
        ControlFrame::Refused(r) => r.code,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    tenant: &'a str,
    tid: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs claims with the relay's own key (read from its data directory) or another key.
fn sign(relay: &RelayHandle, claims: &Claims<'_>, foreign_key: bool) -> String {
    let pk8 = std::fs::read(relay.data_dir().join("keys/token-ed25519.pk8")).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(&pk8).unwrap();
    let kid: String =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pair.public_key().as_ref()).as_ref()
            [..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let signing = if foreign_key {
        Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .unwrap()
            .as_ref()
            .to_vec()
    } else {
        pk8
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&signing)).unwrap()
}

/// Presents a token signed over `claims` for tenant acme and returns the refusal code.
async fn token_refusal(relay: &RelayHandle, claims: &Claims<'_>, foreign_key: bool) -> ErrorCode {
    let token = sign(relay, claims, foreign_key);
    refused_code(&hello(relay, "acme", Credential::Token(token)).await)
}

#[tokio::test]
async fn secrets_are_checked_and_exchanged_for_tokens() {
    trace_init();
    let relay = relay().spawn().await;
    let acme = relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    let cred = relay.create_credential("acme").await;
    relay.sync().await;

    let welcome = hello(&relay, "acme", Credential::Secret(cred.secret.clone())).await;
    let ControlFrame::Welcome(w) = welcome else {
        panic!("expected Welcome, got {welcome:?}")
    };
    assert!(!w.token.is_empty(), "a secret is exchanged for a token");
    assert!(w.expires_in_secs > 0 && w.expires_in_secs <= 15 * 60);

    // The token authenticates too, without issuing a new one.
    let again = hello(&relay, "acme", Credential::Token(w.token.clone())).await;
    assert!(
        matches!(&again, ControlFrame::Welcome(w2) if w2.token.is_empty()),
        "{again:?}"
    );

    // Wrong random part, garbage, right secret for the wrong tenant: one code for all.
    let mut wrong = cred.secret.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    for (tenant, secret) in [
        ("acme", wrong.as_str()),
        ("acme", "garbage"),
        ("other", cred.secret.as_str()),
        ("ghost", cred.secret.as_str()),
    ] {
        let answer = hello(&relay, tenant, Credential::Secret(secret.into())).await;
        assert_eq!(refused_code(&answer), ErrorCode::AUTH_FAILED, "{tenant}");
    }

    // A token of tenant acme presented for tenant other.
    let answer = hello(&relay, "other", Credential::Token(w.token.clone())).await;
    assert_eq!(refused_code(&answer), ErrorCode::TOKEN_INVALID);

    // Expired, signed with another key, alg none, wrong audience.
    let base = Claims {
        iss: "relay",
        aud: "relay-connector",
        sub: &cred.credential.id.0,
        tenant: "acme",
        tid: &acme.id.0,
        iat: now() - 1200,
        nbf: now() - 1200,
        exp: now() - 600,
    };
    assert_eq!(
        token_refusal(&relay, &base, false).await,
        ErrorCode::TOKEN_EXPIRED
    );
    let fresh = Claims {
        iat: now(),
        nbf: now(),
        exp: now() + 300,
        ..base
    };
    assert!(matches!(
        hello(
            &relay,
            "acme",
            Credential::Token(sign(&relay, &fresh, false))
        )
        .await,
        ControlFrame::Welcome(_)
    ));
    assert_eq!(
        token_refusal(&relay, &fresh, true).await,
        ErrorCode::TOKEN_INVALID
    );
    let wrong_aud = Claims {
        aud: "someone-else",
        ..fresh
    };
    assert_eq!(
        token_refusal(&relay, &wrong_aud, false).await,
        ErrorCode::TOKEN_INVALID
    );
    let too_long = Claims {
        exp: now() + 24 * 3600,
        ..fresh
    };
    assert_eq!(
        token_refusal(&relay, &too_long, false).await,
        ErrorCode::TOKEN_INVALID
    );
    let signed = sign(&relay, &fresh, false);
    let mut parts = signed.split('.');
    let (_, payload) = (parts.next(), parts.next().unwrap());
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        refused_code(&hello(&relay, "acme", Credential::Token(none)).await),
        ErrorCode::TOKEN_INVALID
    );
    assert!(
        relay
            .view
            .metrics()
            .auth_failures
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 8
    );
}

#[tokio::test]
async fn bad_secret_is_refused_with_a_clear_reason() {
    trace_init();
    let relay = relay().spawn().await;
    relay.create_tenant("acme").await;
    relay.sync().await;
    let backend = Backend::spawn().await;
    let conn = connector(
        &relay.server(),
        "acme",
        "rsk_00000000000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .ca_cert(relay.ca_cert())
    .target("app", &backend.url())
    .spawn();
    let mut state = conn.watch();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let err = s.last_error.unwrap();
    assert!(err.contains("credential rejected"), "{err}");
    assert!(!s.connected);
    assert!(
        !err.contains("AAAAAAAA"),
        "the secret never appears in errors"
    );
}

#[tokio::test]
async fn revoking_a_credential_closes_its_sessions_and_refuses_reconnects() {
    trace_init();
    let relay = relay().spawn().await;
    relay.create_tenant("acme").await;
    let cred = relay.create_credential("acme").await;
    let keep = relay.create_credential("acme").await;
    relay.sync().await;
    let backend = Backend::spawn().await;
    let mut revoked = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    let mut kept = connector(&relay.server(), "acme", &keep.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    revoked.connected().await;
    kept.connected().await;
    assert_eq!(relay.view.sessions("acme").len(), 2);

    relay
        .store
        .revoke_credential("acme", &cred.credential.id.0)
        .await
        .unwrap();
    // It keeps trying, and keeps being refused; the other credential's session is untouched.
    assert_refused_after_revocation(&revoked).await;
    assert!(kept.state().connected);
    assert_eq!(relay.view.sessions("acme").len(), 1);

    // Disabling the tenant closes the rest.
    relay.store.set_tenant_enabled("acme", false).await.unwrap();
    kept.wait_for(5, "the session to close", |s| !s.connected)
        .await;
}

/// A revoked connector's session closes, and its reconnects keep being refused.
async fn assert_refused_after_revocation(conn: &connector::testing::ConnectorHandle) {
    conn.wait_for(5, "the session to close", |s| !s.connected)
        .await;
    let s = conn
        .wait_for(10, "a refusal", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("credential rejected"))
        })
        .await;
    assert!(!s.connected);
}

#[tokio::test]
async fn revoking_mid_download_aborts_the_response_and_the_credential_stays_refused() {
    trace_init();
    let relay = relay().spawn().await;
    let cred = relay.provision("acme").await;
    let backend = Backend::spawn().await;
    let conn = connector(&relay.server(), "acme", &cred.secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.wait_for(20, "a session", |s| s.connected).await;
    let client = testkit::Client::new(&relay.ca_cert());
    let gib: u64 = 1 << 30;
    let req = http::Request::get(relay.url(&format!("/relay/acme/app/bytes/{gib}")))
        .body(testkit::client::Body::default())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut body = resp.into_body();
    let mut got: u64 = 0;
    while got < 8 << 20 {
        let frame = body
            .frame()
            .await
            .expect("more body")
            .expect("no error yet");
        got += frame.data_ref().map_or(0, |d| d.len() as u64);
    }

    relay
        .store
        .revoke_credential("acme", &cred.credential.id.0)
        .await
        .unwrap();
    // The session closes, and the visitor's response ends in an error, never in a clean end.
    let (rest, end) = testkit::client::body_end(&mut body, Duration::from_secs(30)).await;
    assert_eq!(end, testkit::client::BodyEnd::Aborted);
    got += rest;
    assert!(got < gib, "the download was cut ({got} bytes)");
    assert_refused_after_revocation(&conn).await;
    assert!(relay.view.sessions("acme").is_empty());
}
