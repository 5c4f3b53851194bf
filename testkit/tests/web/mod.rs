//! What the management-web test files share: an API client, a logged-in browser (as far as
//! HTTP goes) and checks. Each test binary compiles this module itself, so a helper one binary
//! does not use would be dead code there.
#![allow(dead_code)]

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use testkit::client::Answer;
use testkit::Client;

/// An API client with a bearer token.
pub(crate) struct Api {
    pub(crate) client: Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Api {
    /// `method path` with an optional JSON body: the status and the JSON answer (`null` if
    /// empty).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let a = self
            .client
            .request_with(method, &format!("{}{path}", self.base), &headers, body)
            .await
            .expect("admin listener answers");
        let v = if a.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&a.body)
                .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", a.text()))
        };
        (a.status, v)
    }
}

/// Whether an answer is an RFC 9457 problem document.
pub(crate) fn is_problem(a: &Answer) -> bool {
    a.headers
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
        && serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| v["status"].is_u64())
}

/// A path of the route table with its parameters filled in.
pub(crate) fn concrete(path: &str) -> String {
    path.replace("{name}", "acme")
        .replace("{id}", "0123")
        .replace("{hostname}", "app.example.com")
        .replace("{node}", "n1")
}

/// A relay node as it registers, heartbeat now (a test registers it through the store).
pub(crate) fn node(id: &str, name: &str) -> relay_store::NodeRecord {
    relay_store::NodeRecord {
        id: id.into(),
        name: name.into(),
        advertise: Some(format!("{name}.internal:8443")),
        public_address: None,
        state: relay_store::NodeState::Active,
        started_at: relay_store::now_ms(),
        heartbeat_at: 0,
    }
}

/// A live connector session of tenant `acme` on node `node_id`.
pub(crate) fn session_on(id: &str, node_id: &str) -> relay_store::SessionRecord {
    relay_store::SessionRecord {
        id: id.into(),
        tenant: "acme".into(),
        relay_node: "elsewhere".into(),
        connector_id: "c1".into(),
        connector_version: "connector/1".into(),
        transport: "quic".into(),
        remote_addr: "192.0.2.1:1".into(),
        connected_at: relay_store::now_ms(),
        disconnected_at: None,
        close_code: None,
        node_id: Some(node_id.into()),
        targets: Vec::new(),
    }
}

/// A logged-in browser, as far as HTTP goes.
pub(crate) struct Browser {
    pub(crate) client: Client,
    pub(crate) base: String,
    pub(crate) cookie: String,
    pub(crate) csrf: String,
}

impl Browser {
    /// A login form POST (same-origin), without following the redirect.
    pub(crate) async fn login(
        client: &Client,
        base: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Answer> {
        let body = format!("username={user}&password={password}");
        client
            .request_with(
                "POST",
                &format!("{base}/login"),
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", base),
                    ("sec-fetch-site", "same-origin"),
                ],
                Bytes::from(body),
            )
            .await
    }

    /// Logs in and reads the CSRF token from the tenants page.
    pub(crate) async fn start(
        client: Client,
        base: &str,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Browser> {
        let a = Browser::login(&client, base, user, password).await?;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        let set = a.headers["set-cookie"].to_str()?.to_string();
        for attr in [
            "__Host-relay-session=",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(set.contains(attr), "{attr} missing in {set}");
        }
        let cookie = set.split(';').next().unwrap_or_default().to_string();
        let mut b = Browser {
            client,
            base: base.to_string(),
            cookie,
            csrf: String::new(),
        };
        let page = b.get("/tenants").await?;
        assert_eq!(page.status, StatusCode::OK);
        let html = page.text();
        let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        b.csrf = html[at..].split('"').next().unwrap_or_default().to_string();
        Ok(b)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.client
            .request_with(
                "GET",
                &format!("{}{path}", self.base),
                &[("cookie", &self.cookie)],
                Bytes::new(),
            )
            .await
    }

    /// A form POST with the session cookie and, if given, an `Origin`.
    pub(crate) async fn post(
        &self,
        path: &str,
        form: &str,
        origin: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut headers = vec![
            ("cookie", self.cookie.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        self.client
            .request_with(
                "POST",
                &format!("{}{path}", self.base),
                &headers,
                Bytes::from(form.to_string()),
            )
            .await
    }
}

/// The queue messages [`seed_queue`] stores, by id.
pub(crate) struct QueueSeed {
    /// Queued, a text body (`{"order": 42}`) with a `content-type` and a non-UTF-8 header.
    pub(crate) queued: String,
    /// Queued, 2000 bytes that are not UTF-8.
    pub(crate) binary: String,
    /// Failed at once: the backend answered 400 (`{"error": "bad order"}`).
    pub(crate) failed: String,
    /// Delivered: the backend answered 200.
    pub(crate) delivered: String,
}

/// Messages of `tenant` in four states, stored as a relay would (a relay without a session of
/// the tenant never claims them).
pub(crate) async fn seed_queue(
    store: &relay_store::Store,
    tenant: &relay_store::Tenant,
) -> QueueSeed {
    use relay_store::{Finish, NewMessage, QueueQuota, StoredResponse};
    let new = |id: &str, path: &str, body: Vec<u8>| NewMessage {
        id: id.into(),
        tenant_id: tenant.id.0.clone(),
        tenant: tenant.name.clone(),
        target: "app".into(),
        method: "POST".into(),
        path: path.into(),
        headers: r#"[{"n":"content-type","v":"application/json"},{"n":"x-raw","b":"6Xg="}]"#.into(),
        body,
        idempotency_key: None,
        ttl_ms: 3_600_000,
    };
    let id = |n: u8| format!("{n:02x}{}", "ab".repeat(15));
    let seed = QueueSeed {
        failed: id(1),
        delivered: id(2),
        queued: id(3),
        binary: id(4),
    };
    let none = QueueQuota::default();
    for (m, path) in [
        (&seed.failed, "/orders/bad"),
        (&seed.delivered, "/orders/ok"),
    ] {
        store
            .enqueue(&new(m, path, b"{\"order\": 1}".to_vec()), none)
            .await
            .expect("enqueue");
    }
    let claimed = store
        .claim(&tenant.id.0, "test-node", 60_000, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let response = |status: u16, body: &[u8]| StoredResponse {
        status,
        headers: r#"[{"n":"content-type","v":"application/json"}]"#.into(),
        body: body.to_vec(),
        truncated: false,
    };
    let failed = Finish::Failed {
        error: "the backend answered 400".into(),
        response: Some(response(400, b"{\"error\": \"bad order\"}")),
    };
    assert!(store
        .finish_attempt(&seed.failed, 1, &failed)
        .await
        .expect("finish"));
    let delivered = Finish::Delivered(response(200, b"{\"ok\": true}"));
    assert!(store
        .finish_attempt(&seed.delivered, 1, &delivered)
        .await
        .expect("finish"));
    store
        .enqueue(
            &new(&seed.queued, "/orders?id=42", b"{\"order\": 42}".to_vec()),
            none,
        )
        .await
        .expect("enqueue");
    let binary: Vec<u8> = (0..2000u32).map(|i| (i % 256) as u8).collect();
    store
        .enqueue(&new(&seed.binary, "/upload", binary), none)
        .await
        .expect("enqueue");
    seed
}

/// A message of `tenant` whose time to live ran out and whose retention period is over (its
/// body, headers and response dropped); purges every other final message too.
pub(crate) async fn purged_message(
    store: &relay_store::Store,
    tenant: &relay_store::Tenant,
) -> String {
    let id = "ee".repeat(16);
    let m = relay_store::NewMessage {
        id: id.clone(),
        tenant_id: tenant.id.0.clone(),
        tenant: tenant.name.clone(),
        target: "app".into(),
        method: "POST".into(),
        path: "/old".into(),
        headers: "[]".into(),
        body: b"old".to_vec(),
        idempotency_key: None,
        ttl_ms: -1,
    };
    store
        .enqueue(&m, relay_store::QueueQuota::default())
        .await
        .expect("enqueue");
    assert!(store.expire_messages().await.expect("expire") >= 1);
    assert!(store.purge_messages(-1).await.expect("purge") >= 1);
    id
}
