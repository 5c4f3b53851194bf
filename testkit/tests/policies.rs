//! Visitor access policies end to end (docs/policies.md): a real relay, a real connector and a
//! recording backend, in-process. Each policy kind with real requests — admitted, refused (403),
//! missing or bad credentials (401 and the challenge), rate limits (429, then admitted again),
//! JWT attacks — on `/relay/`, hostnames, targets, `/queue/` and pairing sockets; the audit
//! record names the deciding rule; API keys are stripped before the backend and never logged.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relay_server::testing::{relay, RelayHandle};
use relay_store::{
    ApiKeyRule, BasicRule, JwtKey, JwtRule, PolicyRules, PolicyScope, RateLimitRule, Rule,
};
use testkit::client::Answer;
use testkit::{Backend, Client};

mod common;

/// Everything the relay and the connector log in this test binary (debug level and up).
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,sqlx=warn,hyper=info,h2=info,quinn=info,rustls=info",
            ))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A relay that trusts loopback as a load balancer (so `X-Forwarded-For` picks the visitor's
/// address), tenant `acme` with targets `app` and `open` on one backend, hostname app.acme.test.
struct World {
    relay: RelayHandle,
    backend: Backend,
    client: Client,
    _conn: connector::testing::ConnectorHandle,
}

async fn world() -> World {
    capture_logs();
    let relay = relay()
        .configure(|f| f.routing.trusted_proxies = Some(vec!["127.0.0.1".into()]))
        .spawn()
        .await;
    let backend = Backend::spawn().await;
    let conn = common::connect(&relay, "acme", |c| {
        c.target("app", &backend.url())
            .target("open", &backend.url())
    })
    .await;
    relay
        .store
        .add_hostname("acme", "app.acme.test", "app")
        .await
        .unwrap();
    relay.sync().await;
    World {
        client: Client::new(&relay.ca_cert()),
        relay,
        backend,
        _conn: conn,
    }
}

impl World {
    async fn set(&self, scope: PolicyScope, rules: PolicyRules) {
        self.relay
            .store
            .set_policy("acme", &scope, &rules)
            .await
            .unwrap();
        self.relay.sync().await;
    }

    /// GET `path` on the HTTPS ingress from visitor address `from`, with extra headers.
    async fn get(&self, path: &str, from: &str, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("x-forwarded-for", from)];
        all.extend_from_slice(headers);
        self.client
            .request_with("GET", &self.relay.url(path), &all, Bytes::new())
            .await
            .unwrap()
    }

    /// The relay's `/metrics` text, as Prometheus reads it.
    async fn metrics(&self) -> String {
        let token = self.relay.api_token("prometheus").await;
        let url = format!("http://{}/metrics", self.relay.admin_addr.expect("admin"));
        self.client.get_bearer(&url, &token).await.unwrap().text()
    }

    async fn rule_of(&self, a: &Answer) -> String {
        let id = a.headers["x-relay-request-id"].to_str().unwrap();
        self.relay.audit_record(id).await.outcome
    }
}

fn deny_all() -> PolicyRules {
    PolicyRules {
        deny_ip: Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
        ..PolicyRules::default()
    }
}

fn challenges(a: &Answer) -> Vec<String> {
    a.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn ip_lists_use_the_visitor_address_behind_a_trusted_proxy() {
    let w = world().await;
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            allow_ip: Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]),
            deny_ip: Some(vec!["10.9.0.0/16".into()]),
            ..PolicyRules::default()
        },
    )
    .await;
    assert_eq!(
        w.get("/relay/acme/app/x", "10.1.2.3", &[]).await.status,
        200
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "2001:db8::7", &[]).await.status,
        200
    );
    let denied = w.get("/relay/acme/app/x", "10.9.1.1", &[]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.text().contains("access denied by policy"));
    assert_eq!(w.rule_of(&denied).await, "policy:ip-deny@tenant");
    let outside = w.get("/relay/acme/app/x", "192.0.2.1", &[]).await;
    assert_eq!(outside.status, StatusCode::FORBIDDEN);
    assert_eq!(w.rule_of(&outside).await, "policy:ip-allow@tenant");
    // The visitor the audit shows is the forwarded one, as the policy saw it.
    let id = outside.headers["x-relay-request-id"].to_str().unwrap();
    assert_eq!(w.relay.audit_record(id).await.visitor, "192.0.2.1");
    // Only the two admitted requests reached the backend.
    assert_eq!(w.backend.requests(), 2);

    // A target's own list replaces the tenant's: `open` has no allow-list.
    w.set(
        PolicyScope::Target("open".into()),
        PolicyRules {
            allow_ip: Some(vec![]),
            ..PolicyRules::default()
        },
    )
    .await;
    assert_eq!(
        w.get("/relay/acme/open/x", "192.0.2.1", &[]).await.status,
        200
    );
    // The tenant's deny list still applies there (another kind, not overridden).
    assert_eq!(
        w.get("/relay/acme/open/x", "10.9.1.1", &[]).await.status,
        403
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        403
    );
    // Each refusal is counted by rule kind and status.
    let metrics = w.metrics().await;
    for line in [
        r#"relay_policy_refusals_total{rule="ip-allow",status="403"} 2"#,
        r#"relay_policy_refusals_total{rule="ip-deny",status="403"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

#[tokio::test]
async fn api_keys_admit_are_stripped_and_never_logged() {
    let logs = capture_logs();
    let w = world().await;
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            api_key: Some(Rule::On(ApiKeyRule {
                header: "x-relay-key".into(),
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let hasher = relay_store::SecretHasher::new(
        &relay_server::keys::Keys::load_or_create(&w.relay.data_dir())
            .unwrap()
            .pepper,
    );
    let key = w
        .relay
        .store
        .create_api_key("acme", "ci", &hasher)
        .await
        .unwrap();
    let other_tenant_key = {
        w.relay.create_tenant("globex").await;
        w.relay
            .store
            .create_api_key("globex", "", &hasher)
            .await
            .unwrap()
    };
    w.relay.sync().await;

    let missing = w.get("/relay/acme/app/x", "192.0.2.1", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&missing), ["ApiKey header=\"x-relay-key\""]);
    assert_eq!(
        w.rule_of(&missing).await,
        "policy:credentials-missing@tenant"
    );
    let forged = format!("rak_{}_{}", key.key.id, "A".repeat(43));
    for bad in [forged.as_str(), "garbage", other_tenant_key.value.as_str()] {
        let a = w
            .get("/relay/acme/app/x", "192.0.2.1", &[("x-relay-key", bad)])
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(w.rule_of(&a).await, "policy:api-key@tenant");
    }
    assert_eq!(w.backend.requests(), 0);

    let ok = w
        .get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[("x-relay-key", &key.value)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let seen = w.backend.seen().pop().unwrap();
    assert!(seen.headers.get("x-relay-key").is_none());

    // A custom header on one target: stripped too (it is not an x-relay-* header).
    w.set(
        PolicyScope::Target("open".into()),
        PolicyRules {
            api_key: Some(Rule::On(ApiKeyRule {
                header: "x-api-key".into(),
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let wrong_header = w
        .get(
            "/relay/acme/open/x",
            "192.0.2.1",
            &[("x-relay-key", &key.value)],
        )
        .await;
    assert_eq!(wrong_header.status, 401);
    assert_eq!(challenges(&wrong_header), ["ApiKey header=\"x-api-key\""]);
    let ok = w
        .get(
            "/relay/acme/open/x",
            "192.0.2.1",
            &[("x-api-key", &key.value)],
        )
        .await;
    assert_eq!(ok.status, 200);
    let seen = w.backend.seen().pop().unwrap();
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "{:?}",
        seen.headers
    );

    // Revoked: refused once the relay's catalog has it.
    w.relay
        .store
        .revoke_api_key("acme", &key.key.id)
        .await
        .unwrap();
    w.relay.sync().await;
    let revoked = w
        .get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[("x-relay-key", &key.value)],
        )
        .await;
    assert_eq!(revoked.status, 401);
    let metrics = w.metrics().await;
    for line in [
        r#"relay_policy_refusals_total{rule="api-key",status="401"} 4"#,
        r#"relay_policy_refusals_total{rule="credentials-missing",status="401"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }

    // Never logged, never in the audit log; the capture did see the refusals.
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.contains("request refused by policy"),
        "logs not captured"
    );
    assert!(!text.contains(&key.value), "an API key reached the log");
    // The random part is the last 43 characters; it may itself contain '_', so it is not
    // whatever follows the last '_' (that flaked when the tail was one or two characters).
    let secret_part = key.value[key.value.len() - 43..].to_string();
    assert!(!text.contains(&secret_part));
    for r in w.relay.store.audit(None, 1000).await.unwrap() {
        assert!(!format!("{r:?}").contains(&secret_part));
    }
}

#[tokio::test]
async fn basic_auth_checks_argon2id_hashes() {
    let w = world().await;
    let hash = relay_store::hash_password("correct horse").await.unwrap();
    let users = [("alice".to_string(), hash)].into_iter().collect();
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            basic: Some(Rule::On(BasicRule {
                realm: "acme staff".into(),
                users,
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    let missing = w.get("/relay/acme/app/x", "192.0.2.1", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        challenges(&missing),
        ["Basic realm=\"acme staff\", charset=\"UTF-8\""]
    );
    for bad in [
        basic("alice", "wrong"),
        basic("mallory", "correct horse"),
        "Basic !!!".to_string(),
    ] {
        let a = w
            .get("/relay/acme/app/x", "192.0.2.1", &[("authorization", &bad)])
            .await;
        assert_eq!(a.status, 401, "{bad}");
        assert_eq!(w.rule_of(&a).await, "policy:basic@tenant");
    }
    assert_eq!(w.backend.requests(), 0);
    let good = basic("alice", "correct horse");
    for _ in 0..2 {
        let ok = w
            .get(
                "/relay/acme/app/x",
                "192.0.2.1",
                &[("authorization", &good)],
            )
            .await;
        assert_eq!(ok.status, 200);
    }
    // The target `open` turns Basic off for itself.
    w.set(
        PolicyScope::Target("open".into()),
        PolicyRules {
            basic: Some(Rule::Off),
            ..PolicyRules::default()
        },
    )
    .await;
    assert_eq!(
        w.get("/relay/acme/open/x", "192.0.2.1", &[]).await.status,
        200
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        401
    );
}

#[tokio::test]
async fn rate_limits_answer_429_then_admit_again() {
    let w = world().await;
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            rate_limit: Some(Rule::On(RateLimitRule {
                per_minute: 60,
                burst: 2,
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
            200
        );
    }
    let limited = w.get("/relay/acme/app/x", "192.0.2.1", &[]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(w.rule_of(&limited).await, "policy:rate-limit@tenant");
    // Another address has its own bucket.
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.2", &[]).await.status,
        200
    );
    assert_eq!(w.backend.requests(), 3);
    // One token a second: admitted again after the Retry-After.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        200
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        429
    );
}

struct Signer {
    key: EncodingKey,
    public_pem: String,
}

fn signer() -> Signer {
    let pair = rcgen::KeyPair::generate().unwrap();
    Signer {
        key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
        public_pem: pair.public_key_pem(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(aud: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({"iss": "https://idp.test", "aud": aud, "sub": "visitor-1", "exp": exp})
}

fn es256(s: &Signer, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &s.key).unwrap()
}

/// A token signed by hand (jsonwebtoken refuses to make these): `alg` with an HMAC of `secret`,
/// or no signature at all for `none`.
fn handmade(alg: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k1"}}"#));
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{head}.{body}");
    if alg == "none" {
        return format!("{signing_input}.");
    }
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[tokio::test]
async fn jwt_bearer_tokens_are_validated_and_attacks_refused() {
    let w = world().await;
    let idp = signer();
    let stranger = signer();
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            jwt: Some(Rule::On(JwtRule {
                issuer: "https://idp.test".into(),
                audience: vec!["acme-api".into()],
                algorithms: vec!["ES256".into()],
                keys: vec![JwtKey {
                    kid: Some("k1".into()),
                    pem: idp.public_pem.clone(),
                }],
                jwks_url: None,
                leeway_secs: 30,
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let bearer = |t: &str| format!("Bearer {t}");
    let good = es256(&idp, Some("k1"), &claims("acme-api", now() + 600));
    let ok = w
        .get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[("authorization", &bearer(&good))],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The backend gets the Authorization header unchanged.
    let seen = w.backend.seen().pop().unwrap();
    assert_eq!(seen.headers["authorization"], bearer(&good).as_str());
    // Within the allowed skew: still valid.
    let skewed = es256(&idp, Some("k1"), &claims("acme-api", now() - 5));
    assert_eq!(
        w.get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[("authorization", &bearer(&skewed))]
        )
        .await
        .status,
        200
    );

    let missing = w.get("/relay/acme/app/x", "192.0.2.1", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(challenges(&missing), ["Bearer realm=\"relay\""]);

    let attacks = [
        (
            "alg none",
            handmade("none", &claims("acme-api", now() + 600), b""),
        ),
        (
            "HS256 keyed with the public key",
            handmade(
                "HS256",
                &claims("acme-api", now() + 600),
                idp.public_pem.as_bytes(),
            ),
        ),
        (
            "expired",
            es256(&idp, Some("k1"), &claims("acme-api", now() - 3600)),
        ),
        (
            "wrong audience",
            es256(&idp, Some("k1"), &claims("other", now() + 600)),
        ),
        (
            "unknown kid",
            es256(&stranger, Some("k9"), &claims("acme-api", now() + 600)),
        ),
        (
            "known kid, another key",
            es256(&stranger, Some("k1"), &claims("acme-api", now() + 600)),
        ),
        (
            "wrong issuer",
            es256(
                &idp,
                Some("k1"),
                &serde_json::json!({"iss": "https://evil.test", "aud": "acme-api", "exp": now() + 600}),
            ),
        ),
        (
            "no exp",
            es256(
                &idp,
                Some("k1"),
                &serde_json::json!({"iss": "https://idp.test", "aud": "acme-api"}),
            ),
        ),
        ("garbage", "not.a.jwt".to_string()),
    ];
    for (what, token) in attacks {
        let a = w
            .get(
                "/relay/acme/app/x",
                "192.0.2.1",
                &[("authorization", &bearer(&token))],
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            challenges(&a),
            ["Bearer realm=\"relay\", error=\"invalid_token\""],
            "{what}"
        );
        assert_eq!(w.rule_of(&a).await, "policy:jwt@tenant", "{what}");
    }
    assert_eq!(w.backend.requests(), 2);
}

#[tokio::test]
async fn policies_apply_on_hostnames_queue_and_pairing() {
    let w = world().await;
    let http = w.relay.http_addr.unwrap();
    let plain = Client::new(&w.relay.ca_cert());
    let on_host = |path: &str| {
        let url = format!("http://{http}{path}");
        let plain = &plain;
        async move {
            plain
                .request_with("GET", &url, &[("host", "app.acme.test")], Bytes::new())
                .await
                .unwrap()
        }
    };
    // A hostname policy: the hostname refuses, the same target by /relay/ does not.
    w.set(PolicyScope::Hostname("app.acme.test".into()), deny_all())
        .await;
    let refused = on_host("/x").await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        w.rule_of(&refused).await,
        "policy:ip-deny@host:app.acme.test"
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        200
    );
    // A hostname turning the list off again while the target refuses: the hostname wins.
    w.set(PolicyScope::Target("app".into()), deny_all()).await;
    w.set(
        PolicyScope::Hostname("app.acme.test".into()),
        PolicyRules {
            deny_ip: Some(vec![]),
            ..PolicyRules::default()
        },
    )
    .await;
    assert_eq!(on_host("/x").await.status, 200);
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        403
    );

    // /queue/ accepts: refused by the target's policy, accepted on another target.
    let queued = w
        .client
        .request_with(
            "POST",
            &w.relay.url("/queue/acme/app/x"),
            &[("x-forwarded-for", "192.0.2.1")],
            Bytes::from_static(b"body"),
        )
        .await
        .unwrap();
    assert_eq!(queued.status, StatusCode::FORBIDDEN, "{}", queued.text());
    assert_eq!(w.rule_of(&queued).await, "policy:ip-deny@target:app");
    let queued = w
        .client
        .request_with(
            "POST",
            &w.relay.url("/queue/acme/open/x"),
            &[("x-forwarded-for", "192.0.2.1")],
            Bytes::from_static(b"body"),
        )
        .await
        .unwrap();
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{}", queued.text());
    // Credentials on the queue too: 401 with the challenge, before anything is stored.
    w.set(
        PolicyScope::Target("open".into()),
        PolicyRules {
            api_key: Some(Rule::On(ApiKeyRule {
                header: "x-relay-key".into(),
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let queued = w
        .client
        .request_with(
            "POST",
            &w.relay.url("/queue/acme/open/x"),
            &[],
            Bytes::from_static(b"body"),
        )
        .await
        .unwrap();
    assert_eq!(queued.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&queued), ["ApiKey header=\"x-relay-key\""]);

    // Pairing sockets: the tenant's policy answers before the upgrade.
    w.relay
        .store
        .set_pairing_mode("acme", relay_store::PairingMode::Open)
        .await
        .unwrap();
    w.relay.sync().await;
    let handshake = |from: &'static str| async move {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        let req = format!(
            "GET /pair/acme/introduction/alice HTTP/1.1\r\nHost: relay.test\r\n\
             X-Forwarded-For: {from}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        common::read_head(&mut s).await
    };
    assert!(
        handshake("192.0.2.1").await.starts_with("HTTP/1.1 101"),
        "pairing without a tenant policy"
    );
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            allow_ip: Some(vec!["198.51.100.0/24".into()]),
            ..PolicyRules::default()
        },
    )
    .await;
    let refused = handshake("192.0.2.1").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(handshake("198.51.100.9").await.starts_with("HTTP/1.1 101"));
}

#[tokio::test]
async fn the_management_api_sets_policies_and_issues_api_keys() {
    let w = world().await;
    let base = format!(
        "http://{}/api/v1/tenants/acme",
        w.relay.admin_addr.expect("admin")
    );
    let auth = format!("Bearer {}", w.relay.api_token("ops").await);
    let call = |method: &'static str, path: &str, body: &str| {
        let (client, url, auth) = (&w.client, format!("{base}{path}"), auth.clone());
        let body = Bytes::from(body.to_string());
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            let a = client
                .request_with(method, &url, &headers, body)
                .await
                .unwrap();
            let json = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
            (a.status.as_u16(), json)
        }
    };
    let (status, created) = call("POST", "/api-keys", r#"{"label":"ci"}"#).await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let (status, _) = call(
        "PUT",
        "/policies/target:app",
        r#"{"api_key":{"on":{"header":"x-relay-key"}},"deny_ip":["203.0.113.0/24"]}"#,
    )
    .await;
    assert_eq!(status, 200);
    // Invalid rules and scopes are refused and change nothing.
    for (path, body) in [
        ("/policies/target:app", r#"{"deny_ip":["300.0.0.1"]}"#),
        ("/policies/target:app", r#"{"jwt":{"on":{"issuer":"x"}}}"#),
        ("/policies/everything", "{}"),
    ] {
        assert_eq!(call("PUT", path, body).await.0, 422, "{path} {body}");
    }
    let (status, listed) = call("GET", "/policies", "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["policies"][0]["scope"], "target:app");
    assert_eq!(
        listed["policies"][0]["rules"]["deny_ip"][0],
        "203.0.113.0/24"
    );
    w.relay.sync().await;

    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        401
    );
    let with_key = [("x-relay-key", key.as_str())];
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &with_key)
            .await
            .status,
        200
    );
    assert_eq!(
        w.get("/relay/acme/app/x", "203.0.113.5", &with_key)
            .await
            .status,
        403
    );
    assert_eq!(
        w.get("/relay/acme/open/x", "192.0.2.1", &[]).await.status,
        200
    );

    let (status, keys) = call("GET", "/api-keys", "").await;
    assert_eq!(status, 200);
    assert_eq!(keys["items"][0]["id"], id.as_str());
    assert!(keys["items"][0].get("key").is_none());
    assert_eq!(call("DELETE", &format!("/api-keys/{id}"), "").await.0, 204);
    assert_eq!(call("DELETE", &format!("/api-keys/{id}"), "").await.0, 404);
    w.relay.sync().await;
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &with_key)
            .await
            .status,
        401
    );
    // `{}` removes the scope's rules.
    assert_eq!(call("PUT", "/policies/target:app", "{}").await.0, 200);
    w.relay.sync().await;
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[]).await.status,
        200
    );
    let actions: Vec<String> = w
        .relay
        .store
        .admin_actions(100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in ["tenant.policy", "api_key.create", "api_key.revoke"] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_before_credentials() {
    let w = world().await;
    w.set(
        PolicyScope::Tenant,
        PolicyRules {
            api_key: Some(Rule::On(ApiKeyRule {
                header: "x-relay-key".into(),
            })),
            cors: Some(Rule::On(relay_store::CorsRule {
                allow_origins: vec!["https://app.example".into()],
                allow_methods: vec!["GET".into(), "POST".into()],
                allow_headers: vec!["x-relay-key".into(), "content-type".into()],
                allow_credentials: false,
                max_age_secs: 600,
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let (client, url) = (&w.client, w.relay.url("/relay/acme/app/x"));
        async move {
            client
                .request_with(
                    "OPTIONS",
                    &url,
                    &[
                        ("origin", origin),
                        ("access-control-request-method", method),
                        ("access-control-request-headers", headers),
                    ],
                    Bytes::new(),
                )
                .await
                .unwrap()
        }
    };
    // No API key on the preflight, and none needed: the relay answers it.
    let ok = preflight("https://app.example", "POST", "X-Relay-Key, Content-Type").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT, "{}", ok.text());
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        ok.headers["access-control-allow-headers"],
        "x-relay-key, content-type"
    );
    assert_eq!(ok.headers["access-control-max-age"], "600");
    assert!(ok.body.is_empty());
    for (origin, method, headers) in [
        ("https://evil.example", "POST", ""),
        ("https://app.example", "DELETE", ""),
        ("https://app.example", "GET", "x-secret"),
    ] {
        let refused = preflight(origin, method, headers).await;
        assert_eq!(refused.status, 403, "{origin} {method} {headers}");
        assert!(refused.headers.get("access-control-allow-origin").is_none());
        assert_eq!(w.rule_of(&refused).await, "policy:cors@tenant");
    }
    assert_eq!(w.backend.requests(), 0);

    // The actual request still needs its key; its response carries the allow headers.
    let hasher = relay_store::SecretHasher::new(
        &relay_server::keys::Keys::load_or_create(&w.relay.data_dir())
            .unwrap()
            .pepper,
    );
    let key = w
        .relay
        .store
        .create_api_key("acme", "", &hasher)
        .await
        .unwrap();
    w.relay.sync().await;
    let origin = ("origin", "https://app.example");
    assert_eq!(
        w.get("/relay/acme/app/x", "192.0.2.1", &[origin])
            .await
            .status,
        401
    );
    let ok = w
        .get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[origin, ("x-relay-key", &key.value)],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(ok.headers["vary"], "Origin");
    let other = w
        .get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[
                ("origin", "https://evil.example"),
                ("x-relay-key", &key.value),
            ],
        )
        .await;
    assert_eq!(other.status, 200);
    assert!(other.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn jwt_keys_come_from_a_jwks_url_fetched_within_bounds() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let w = world().await;
    let idp = signer();
    let rotated = signer();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&idp.key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let set = serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = {
        let hits = hits.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let set = set.clone();
                async move { ([("content-type", "application/json")], set) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    w.set(
        PolicyScope::Target("app".into()),
        PolicyRules {
            jwt: Some(Rule::On(JwtRule {
                issuer: "https://idp.test".into(),
                audience: vec!["acme-api".into()],
                algorithms: vec!["ES256".into()],
                keys: vec![],
                jwks_url: Some(jwks_url),
                leeway_secs: 0,
            })),
            ..PolicyRules::default()
        },
    )
    .await;
    let w = &w;
    let call = |token: String| async move {
        w.get(
            "/relay/acme/app/x",
            "192.0.2.1",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .status
    };
    let good = || es256(&idp, Some("k1"), &claims("acme-api", now() + 600));
    assert_eq!(call(good()).await, 200);
    assert_eq!(call(good()).await, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the document is cached");
    // A key the document does not have: refused, and no fetch storm — within 30 s of the last
    // fetch, unknown key ids do not fetch again.
    for _ in 0..5 {
        let t = es256(&rotated, Some("k2"), &claims("acme-api", now() + 600));
        assert_eq!(call(t).await, 401);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A token signed by another key under the known id is refused too.
    let forged = es256(&rotated, Some("k1"), &claims("acme-api", now() + 600));
    assert_eq!(call(forged).await, 401);
}
