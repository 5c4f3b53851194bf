//! The management web on a real relay's admin listener: `/api/v1` (every route, authz,
//! validation, body shapes, the OpenAPI document), the listener's host allow-list, and the
//! pages' protections (sessions, CSRF, same-origin, escaping, login rate limiting). Login
//! limiting under load is in `login.rs`, the browser walk-through in `browser.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use serde_json::{json, Value};
use testkit::client::Answer;
use testkit::{trace_init, Backend, Client};

struct Api {
    client: Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
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

fn is_problem(a: &Answer) -> bool {
    a.headers
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json")
        && serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| v["status"].is_u64())
}

/// A path of the route table with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{name}", "acme")
        .replace("{id}", "0123")
        .replace("{hostname}", "app.example.com")
}

#[tokio::test]
async fn every_api_route_refuses_requests_without_a_valid_token() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    for r in management_web::API_ROUTES {
        let url = format!("{base}{}", concrete(r.path));
        let method = r.method.to_uppercase();
        for auth in [
            None,
            Some("Bearer rat_nope_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Some("Basic YWRtaW46YWRtaW4="),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
            let a = client
                .request_with(&method, &url, &headers, Bytes::new())
                .await?;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {url} {auth:?}"
            );
            assert!(is_problem(&a), "{method} {url}: {}", a.text());
            assert!(a.headers.contains_key("www-authenticate"));
        }
    }
    // A revoked token is refused too.
    let token = relay.api_token("short-lived").await;
    let ok = client
        .get_bearer(&format!("{base}/api/v1/tenants"), &token)
        .await?;
    assert_eq!(ok.status, StatusCode::OK);
    relay.store.revoke_api_token("short-lived").await?;
    let refused = client
        .get_bearer(&format!("{base}/api/v1/tenants"), &token)
        .await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // /metrics needs a token; health does not.
    assert_eq!(
        client.get(&format!("{base}/metrics")).await?.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        client.get(&format!("{base}/healthz")).await?.status,
        StatusCode::OK
    );
    relay.stop().await
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_served_routes() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("docs").await,
    };
    let (status, doc) = api.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            documented += 1;
            // Every documented operation is served: with a token it is never 404/405 for a
            // route-level reason (resources that do not exist answer a problem document).
            let (status, body) = api
                .call(&method.to_uppercase(), &concrete(path), Some(json!({})))
                .await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                assert!(
                    body["detail"]
                        .as_str()
                        .is_some_and(|d| !d.contains("no such API route")),
                    "{method} {path} is documented but not routed: {body}"
                );
            }
            assert!(op["operationId"].is_string());
            for r in op["responses"].as_object().expect("responses").keys() {
                assert!(r == "default" || r.parse::<u16>().is_ok());
            }
        }
    }
    assert_eq!(documented, management_web::API_ROUTES.len());
    // The contract's routes are all there.
    for (m, p) in [
        ("post", "/api/v1/tenants"),
        ("get", "/api/v1/tenants"),
        ("get", "/api/v1/tenants/{name}"),
        ("patch", "/api/v1/tenants/{name}"),
        ("delete", "/api/v1/tenants/{name}"),
        ("post", "/api/v1/tenants/{name}/credentials"),
        ("get", "/api/v1/tenants/{name}/credentials"),
        ("delete", "/api/v1/tenants/{name}/credentials/{id}"),
        ("get", "/api/v1/tenants/{name}/connections"),
        ("get", "/api/v1/requests"),
        ("get", "/api/v1/openapi.json"),
    ] {
        assert!(paths[p][m].is_object(), "{m} {p} missing from the document");
    }
    // Undocumented routes are not served.
    let (status, body) = api.call("GET", "/api/v1/users", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = api
        .call("PUT", "/api/v1/tenants/acme", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    relay.stop().await
}

#[tokio::test]
async fn api_manages_tenants_credentials_and_reads_connections_and_requests() -> anyhow::Result<()>
{
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("automation").await,
    };

    // Create, with validation.
    let (s, t) = api
        .call(
            "POST",
            "/api/v1/tenants",
            Some(json!({"name": "Contoso", "display_name": "Contoso Ltd"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["name"], "contoso");
    assert_eq!(t["display_name"], "Contoso Ltd");
    assert_eq!(t["enabled"], true);
    assert_eq!(t["limits"]["max_body_bytes"], Value::Null);
    let (s, _) = api
        .call("POST", "/api/v1/tenants", Some(json!({"name": "contoso"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, p) = api
        .call(
            "POST",
            "/api/v1/tenants",
            Some(json!({"name": "bad name!"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let (s, p) = api
        .call(
            "POST",
            "/api/v1/tenants",
            Some(json!({"name": "x", "owner": "me"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused: {p}"
    );
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("owner"),
        "{p}"
    );
    let (s, _) = api.call("POST", "/api/v1/tenants", None).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let auth = format!("Bearer {}", api.token);
    let broken = api
        .client
        .request_with(
            "POST",
            &format!("{}/api/v1/tenants", api.base),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Bytes::from_static(b"{\"name\": "),
        )
        .await?;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert!(is_problem(&broken));

    // Paging and search.
    for n in ["alpha", "beta", "gamma"] {
        let (s, _) = api
            .call("POST", "/api/v1/tenants", Some(json!({"name": n})))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, page) = api
        .call("GET", "/api/v1/tenants?limit=2&offset=1", None)
        .await;
    assert_eq!(page["total"], 4);
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beta", "contoso"]);
    let (_, found) = api.call("GET", "/api/v1/tenants?q=ltd", None).await;
    assert_eq!(found["total"], 1, "search matches display names: {found}");
    let (s, _) = api.call("GET", "/api/v1/tenants?limit=many", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.call("GET", "/api/v1/tenants?sort=name", None).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "unknown query parameters are refused"
    );

    // Update: limits, settings, null restores a default, zero is refused.
    let (s, t) = api
        .call("PATCH", "/api/v1/tenants/contoso", Some(json!({"limits": {"max_body_bytes": 1024, "request_timeout_ms": 5000}, "description": "ERP"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["limits"]["max_body_bytes"], 1024);
    assert_eq!(t["description"], "ERP");
    let (_, t) = api
        .call(
            "PATCH",
            "/api/v1/tenants/contoso",
            Some(json!({"limits": {"max_body_bytes": null}})),
        )
        .await;
    assert_eq!(t["limits"]["max_body_bytes"], Value::Null);
    assert_eq!(
        t["limits"]["request_timeout_ms"], 5000,
        "absent fields are kept"
    );
    let (s, _) = api
        .call(
            "PATCH",
            "/api/v1/tenants/contoso",
            Some(json!({"limits": {"max_concurrent_streams": 0}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = api
        .call(
            "PATCH",
            "/api/v1/tenants/contoso",
            Some(json!({"enabled": "yes"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = api.call("GET", "/api/v1/tenants/nobody", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A credential: the secret only in the creation response; a real connector uses it.
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/tenants/contoso/credentials",
            Some(json!({"label": "office"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let secret = c["secret"].as_str().expect("secret").to_string();
    let id = c["id"].as_str().expect("id").to_string();
    let (_, list) = api
        .call("GET", "/api/v1/tenants/contoso/credentials", None)
        .await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(
        !list.to_string().contains(&secret),
        "listing never shows secrets"
    );
    assert!(list["items"][0].get("secret").is_none());

    relay.sync().await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "contoso", &secret)
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    let mut sessions = Value::Null;
    for _ in 0..100 {
        (_, sessions) = api
            .call("GET", "/api/v1/tenants/contoso/connections", None)
            .await;
        if sessions["items"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let items = sessions["items"].as_array().expect("items");
    assert!(
        !items.is_empty(),
        "the connector's session is listed: {sessions}"
    );
    for s in items {
        assert!(s["transport"] == "quic" || s["transport"] == "tcp");
        assert_eq!(s["relay_node"], "test-node");
        assert_eq!(s["in_flight_streams"], 0);
        assert!(s["remote_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(s["connector_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()));
    }

    // A request through the relay shows up in /requests with its filters.
    let visitor = Client::new(&relay.ca_cert());
    let a = visitor.get(&relay.url("/relay/contoso/app/hello")).await?;
    assert_eq!(a.status, StatusCode::OK);
    let request_id = a.headers["x-relay-request-id"].to_str()?.to_string();
    let missing = visitor.get(&relay.url("/relay/contoso/nothere/x")).await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    relay.audit_record(&request_id).await;
    let (_, ok) = api
        .call("GET", "/api/v1/requests?tenant=contoso&status=2xx", None)
        .await;
    let ok = ok["items"].as_array().unwrap().clone();
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["request_id"], request_id.as_str());
    assert_eq!(ok[0]["path"], "/relay/contoso/app/hello");
    assert_eq!(ok[0]["target"], "app");
    let (_, four) = api
        .call("GET", "/api/v1/requests?tenant=contoso&status=404", None)
        .await;
    assert_eq!(four["items"].as_array().unwrap().len(), 1);
    let (_, none) = api
        .call(
            "GET",
            "/api/v1/requests?tenant=contoso&since=2100-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let (_, old) = api
        .call(
            "GET",
            "/api/v1/requests?tenant=contoso&until=2000-01-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(old["items"].as_array().unwrap().len(), 0);
    let (_, limited) = api.call("GET", "/api/v1/requests?limit=1", None).await;
    assert_eq!(limited["items"].as_array().unwrap().len(), 1);
    let (s, _) = api
        .call("GET", "/api/v1/requests?status=teapot", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .call("GET", "/api/v1/requests?since=yesterday", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Hostnames.
    let (s, h) = api
        .call(
            "POST",
            "/api/v1/tenants/contoso/hostnames",
            Some(json!({"hostname": "App.Contoso.Example.", "target": "app"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    assert_eq!(h["hostname"], "app.contoso.example");
    let (s, _) = api
        .call(
            "POST",
            "/api/v1/tenants/alpha/hostnames",
            Some(json!({"hostname": "app.contoso.example", "target": "app"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api
        .call(
            "DELETE",
            "/api/v1/tenants/contoso/hostnames/app.contoso.example",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Revoking the credential closes the connector's sessions.
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/v1/tenants/contoso/credentials/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/v1/tenants/contoso/credentials/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "revoking twice");
    let mut gone = false;
    for _ in 0..200 {
        let (_, s) = api
            .call("GET", "/api/v1/tenants/contoso/connections", None)
            .await;
        if s["items"].as_array().is_some_and(|a| a.is_empty()) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the revoked credential's sessions are gone");

    // Disable, delete.
    let (_, t) = api
        .call(
            "PATCH",
            "/api/v1/tenants/alpha",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(t["enabled"], false);
    let (s, _) = api.call("DELETE", "/api/v1/tenants/alpha", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.call("GET", "/api/v1/tenants/alpha", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Every change was recorded with the token's name.
    let actions = relay.store.admin_actions(100).await?;
    for (action, object) in [
        ("tenant.create", "contoso".to_string()),
        ("tenant.update", "contoso".to_string()),
        ("credential.create", format!("contoso/{id}")),
        ("credential.revoke", format!("contoso/{id}")),
        ("tenant.delete", "alpha".to_string()),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.object == object && a.actor == "token:automation"),
            "{action} {object} not recorded: {actions:?}"
        );
    }
    drop(conn);
    relay.stop().await
}

/// A logged-in browser, as far as HTTP goes.
struct Browser {
    client: Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    async fn login(
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

    async fn start(
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

    async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.client
            .request_with(
                "GET",
                &format!("{}{path}", self.base),
                &[("cookie", &self.cookie)],
                Bytes::new(),
            )
            .await
    }

    async fn post(&self, path: &str, form: &str, origin: Option<&str>) -> anyhow::Result<Answer> {
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

#[tokio::test]
async fn pages_need_a_session_and_same_origin_csrf_checked_changes() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    relay.create_tenant("acme").await;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));

    // Without a session every page route is refused: page loads go to the login page, every
    // other method gets 403. Only the login page and the static assets are public.
    for (method, path) in management_web::PAGE_ROUTES {
        let url = format!("{base}{}", concrete(path));
        let public = *path == "/login" || path.starts_with("/static/");
        let a = client
            .request_with(&method.to_uppercase(), &url, &[("content-type", "application/x-www-form-urlencoded")], Bytes::from_static(b"csrf=x&name=evil&label=x&enabled=false&confirm=acme&hostname=a.example&target=app&username=admin&password=wrong"))
            .await?;
        if public {
            assert!(
                a.status != StatusCode::SEE_OTHER || *method == "post",
                "{method} {path}"
            );
            continue;
        }
        match *method {
            "get" => {
                assert_eq!(a.status, StatusCode::SEE_OTHER, "{method} {path}");
                assert_eq!(a.headers["location"], "/login");
                assert!(!a.text().contains("acme"), "{method} {path} leaked content");
            }
            _ => assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path}"),
        }
    }
    // Nothing changed.
    assert!(relay.store.tenant("evil").await?.is_none());
    assert!(relay.store.tenant("acme").await?.is_some_and(|t| t.enabled));

    // Wrong password: 401, and a bogus cookie is no session.
    let bad = Browser::login(&client, &base, "admin", "wrong").await?;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(!bad.headers.contains_key("set-cookie"));
    let forged = client
        .request_with(
            "GET",
            &format!("{base}/tenants"),
            &[("cookie", "__Host-relay-session=forged")],
            Bytes::new(),
        )
        .await?;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);

    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let page = b.get("/").await?;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers["content-security-policy"].to_str()?;
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["cache-control"], "no-store");

    // A display name full of markup is shown as text.
    let xss = "\"><img src=x onerror=alert(1)>";
    relay
        .store
        .set_tenant_settings(
            "acme",
            &relay_store::TenantSettings {
                display_name: Some(xss.into()),
                ..Default::default()
            },
        )
        .await?;
    for path in ["/tenants", "/tenants/acme"] {
        let html = b.get(path).await?.text();
        assert!(
            !html.contains("<img src=x"),
            "{path} renders markup from data"
        );
        assert!(
            html.contains("&#34;&#62;&#60;img src=x onerror=alert(1)&#62;"),
            "{path} shows the name escaped: {html}"
        );
    }

    // Changes need the CSRF token and a same-origin request.
    let form = format!("csrf={}&name=fromcsrf", b.csrf);
    let cross = b
        .post("/tenants", &form, Some("http://evil.example"))
        .await?;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "cross-origin POST");
    let no_token = b
        .post("/tenants", "csrf=wrong&name=fromcsrf", Some(&base))
        .await?;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN, "wrong CSRF token");
    let mut site = b
        .client
        .request_with(
            "POST",
            &format!("{base}/tenants"),
            &[
                ("cookie", &b.cookie),
                ("content-type", "application/x-www-form-urlencoded"),
                ("sec-fetch-site", "cross-site"),
            ],
            Bytes::from(form.clone()),
        )
        .await?;
    assert_eq!(
        site.status,
        StatusCode::FORBIDDEN,
        "Sec-Fetch-Site: cross-site"
    );
    assert!(relay.store.tenant("fromcsrf").await?.is_none());
    site = b.post("/tenants", &form, Some(&base)).await?;
    assert_eq!(site.status, StatusCode::SEE_OTHER, "{}", site.text());
    assert_eq!(site.headers["location"], "/tenants/fromcsrf?done=created");
    assert!(relay.store.tenant("fromcsrf").await?.is_some());
    // Deleting asks for the name; the wrong one deletes nothing.
    let wrong = b
        .post(
            "/tenants/fromcsrf/delete",
            &format!("csrf={}&confirm=acme", b.csrf),
            Some(&base),
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(wrong.text().contains("The name did not match"));
    assert!(relay.store.tenant("fromcsrf").await?.is_some());
    let gone = b
        .post(
            "/tenants/fromcsrf/delete",
            &format!("csrf={}&confirm=fromcsrf", b.csrf),
            Some(&base),
        )
        .await?;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert_eq!(gone.headers["location"], "/tenants?done=deleted");
    assert!(relay.store.tenant("fromcsrf").await?.is_none());
    assert!(b
        .get("/tenants?done=deleted")
        .await?
        .text()
        .contains("Tenant deleted."));

    // The CSV export neutralises formulas.
    relay
        .store
        .insert_audit(&[relay_store::AuditRecord {
            request_id: "r1".into(),
            tenant: "acme".into(),
            target: "app".into(),
            method: "GET".into(),
            path: "/=cmd|' /C calc'!A0".into(),
            status: 200,
            outcome: "ok".into(),
            bytes_in: 0,
            bytes_out: 5,
            duration_ms: 3,
            visitor: "192.0.2.1".into(),
            session_id: "s".into(),
            relay_node: "n".into(),
            created_at: relay_store::now_ms(),
        }])
        .await?;
    let csv = b.get("/audit.csv?tenant=acme").await?;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.headers["content-type"]
        .to_str()?
        .starts_with("text/csv"));
    let text = csv.text();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(",r1,acme,app,GET,/=cmd|' /C calc'!A0,200,"),
        "{text}"
    );
    let audit = b.get("/audit?tenant=acme&status=2xx").await?.text();
    assert!(audit.contains("r1"));
    let audit = b.get("/audit?tenant=acme&status=5xx").await?.text();
    assert!(!audit.contains("<code>r1</code>"));

    // Logout ends the session; a new login gets a new session id.
    let b2 = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    assert_ne!(b.cookie, b2.cookie, "a new session id at every login");
    let out = b
        .post("/logout", &format!("csrf={}", b.csrf), Some(&base))
        .await?;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.headers["set-cookie"].to_str()?.contains("Max-Age=0"));
    assert_eq!(
        b.get("/").await?.status,
        StatusCode::SEE_OTHER,
        "logged out"
    );
    assert_eq!(
        b2.get("/").await?.status,
        StatusCode::OK,
        "the other session lives on"
    );
    relay.stop().await
}

#[tokio::test]
async fn repeated_failed_logins_are_rate_limited() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    for _ in 0..10 {
        let a = Browser::login(&client, &base, "admin", "guess").await?;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right password is refused until the window passes.
    let a = Browser::login(&client, &base, "admin", "correct+horse+battery").await?;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key("retry-after"));
    assert!(!a.headers.contains_key("set-cookie"));
    relay.stop().await
}

#[tokio::test]
async fn the_standalone_binary_serves_the_same_app_over_the_relays_database() -> anyhow::Result<()>
{
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay.create_tenant("acme").await;
    let token = relay.api_token("standalone").await;
    let dir = relay.data_dir();

    // Unknown keys and a missing pepper stop it with 64.
    let status = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &dir.display().to_string()])
        .env("MANAGEMENT_COLOUR", "blue")
        .stderr(Stdio::null())
        .status()?;
    assert_eq!(status.code(), Some(64), "unknown MANAGEMENT_* key");
    let empty = tempfile::tempdir()?;
    let out = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &empty.path().display().to_string()])
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential-pepper"));
    // A host name with a port (or any other malformed name) stops it with 64 too.
    let out = Command::new(testkit::process::bin("management-web"))
        .args(["--data-dir", &dir.display().to_string()])
        .env("MANAGEMENT_ALLOWED_HOSTS", r#"["admin.example.com:8443"]"#)
        .output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed_hosts"));

    let mut child = Command::new(testkit::process::bin("management-web"))
        .args([
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("MANAGEMENT_ALLOWED_HOSTS", r#"["admin.example.com"]"#)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("stderr");
    let addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                // The line may carry colour codes around `addr=`: take 127.0.0.1:PORT.
                let at = l
                    .contains("management web listening")
                    .then(|| l.find("127.0.0.1:"))??;
                let port: String = l[at + 10..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                Some(format!("127.0.0.1:{port}"))
            })
    })
    .await?
    .expect("the listening line");
    let guard = testkit::process::ChildGuard(child);
    let base = format!("http://{addr}");
    let client = Client::new(&relay.ca_cert());
    // A token made with the relay's pepper works here, and the relay's tenants are here.
    let tenants = client
        .get_bearer(&format!("{base}/api/v1/tenants"), &token)
        .await?;
    assert_eq!(tenants.status, StatusCode::OK, "{}", tenants.text());
    assert!(tenants.text().contains("\"acme\""));
    let api = Api {
        client: client.clone(),
        base: base.clone(),
        token,
    };
    let (s, c) = api
        .call("POST", "/api/v1/tenants/acme/credentials", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // A credential it creates lets a connector into the relay.
    relay.sync().await;
    let backend = Backend::spawn().await;
    let mut conn = connector(&relay.server(), "acme", c["secret"].as_str().unwrap())
        .ca_cert(relay.ca_cert())
        .target("app", &backend.url())
        .spawn();
    conn.connected().await;
    assert_eq!(
        client.get(&format!("{base}/login")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&format!("{base}/readyz")).await?.status,
        StatusCode::OK
    );
    assert_eq!(
        client.get(&format!("{base}/tenants")).await?.status,
        StatusCode::SEE_OTHER
    );
    // The same host check as on the relay's admin listener, with its own allowed names.
    for (host, status) in [
        ("admin.example.com", StatusCode::OK),
        ("localhost", StatusCode::OK),
        ("evil.example", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let a = client
            .request_with(
                "GET",
                &format!("{base}/login"),
                &[("host", host)],
                Bytes::new(),
            )
            .await?;
        assert_eq!(a.status, status, "{host}");
    }
    drop(guard);
    drop(conn);
    relay.stop().await
}

/// A GET of `path` on the admin listener with `Host: host` (HTTP/1.1).
async fn get_as(client: &Client, admin: &str, path: &str, host: &str) -> Answer {
    client
        .request_with(
            "GET",
            &format!("http://{admin}{path}"),
            &[("host", host)],
            Bytes::new(),
        )
        .await
        .expect("admin listener answers")
}

#[tokio::test]
async fn the_admin_listener_answers_only_its_host_names() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay()
        .configure(|f| {
            f.listen.admin_hosts = Some(vec![
                "admin.example.com".into(),
                "http://relay-admin".into(),
            ])
        })
        .spawn()
        .await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let admin = relay.admin_addr.expect("admin");
    let port = admin.port();
    let client = Client::new(&relay.ca_cert());
    let token = relay.api_token("hosts").await;

    // DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own name.
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.2:{port}"),
        "admin.example.com.evil.example".to_string(),
    ] {
        let a = get_as(&client, &admin.to_string(), "/login", &host).await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(is_problem(&a), "{host}: {}", a.text());
        // Never reaches a handler: not the API with a valid token, not the login.
        let auth = format!("Bearer {token}");
        let a = client
            .request_with(
                "GET",
                &format!("http://{admin}/api/v1/tenants"),
                &[("host", &host), ("authorization", &auth)],
                Bytes::new(),
            )
            .await?;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        let a = client
            .request_with(
                "POST",
                &format!("http://{admin}/login"),
                &[
                    ("host", &host),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                Bytes::from_static(b"username=admin&password=correct+horse+battery"),
            )
            .await?;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(!a.headers.contains_key("set-cookie"));
        // Probes are answered whatever the host: they reveal and change nothing.
        let a = get_as(&client, &admin.to_string(), "/healthz", &host).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
        "admin.example.com".to_string(),
        "admin.example.com:443".to_string(),
        "relay-admin:8080".to_string(),
    ] {
        let a = get_as(&client, &admin.to_string(), "/login", &host).await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }

    // HTTP/2 (prior knowledge): the :authority is checked the same way.
    let from: std::net::IpAddr = "127.0.0.1".parse()?;
    let h2 = |authority: String| {
        http::Request::get(format!("http://{authority}/login"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let a = common::raw_request(from, admin, true, h2(format!("evil.example:{port}"))).await?;
    assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST);
    let a = common::raw_request(from, admin, true, h2(format!("127.0.0.1:{port}"))).await?;
    assert_eq!(a.status, StatusCode::OK);
    // HTTP/1.1 without a Host: refused.
    let bare = http::Request::get("/login")
        .version(http::Version::HTTP_10)
        .body(http_body_util::Full::new(Bytes::new()))?;
    let a = common::raw_request(from, admin, false, bare).await?;
    assert_ne!(a.status, StatusCode::OK);
    relay.stop().await
}

#[tokio::test]
async fn the_origin_must_match_scheme_host_and_port() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay()
        .configure(|f| f.listen.admin_hosts = Some(vec!["admin.example.com".into()]))
        .spawn()
        .await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let admin = relay.admin_addr.expect("admin");
    let port = admin.port();
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{admin}");

    // The login form too: a wrong-scheme Origin is refused before the password is looked at.
    let wrong = client
        .request_with(
            "POST",
            &format!("{base}/login"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &format!("https://127.0.0.1:{port}")),
            ],
            Bytes::from_static(b"username=admin&password=correct+horse+battery"),
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert!(!wrong.headers.contains_key("set-cookie"));

    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = |name: &str| format!("csrf={}&name={name}", b.csrf);
    for (i, origin) in [
        format!("https://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://localhost:{port}"),
        "http://127.0.0.1".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let a = b
            .post("/tenants", &form(&format!("wrong{i}")), Some(origin))
            .await?;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{origin}");
    }
    let a = b.post("/tenants", &form("right"), Some(&base)).await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());

    // Through a TLS reverse proxy that keeps the Host: the page's origin is https.
    let proxied = |origin: &'static str, name: &'static str| {
        let (b, form) = (&b, form(name));
        async move {
            b.client
                .request_with(
                    "POST",
                    &format!("{}/tenants", b.base),
                    &[
                        ("host", "admin.example.com"),
                        ("cookie", &b.cookie),
                        ("content-type", "application/x-www-form-urlencoded"),
                        ("origin", origin),
                    ],
                    Bytes::from(form),
                )
                .await
        }
    };
    let a = proxied("http://admin.example.com", "proxiedwrong").await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = proxied("https://admin.example.com", "proxied").await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());

    for i in 0..4 {
        assert!(relay.store.tenant(&format!("wrong{i}")).await?.is_none());
    }
    assert!(relay.store.tenant("proxiedwrong").await?.is_none());
    assert!(relay.store.tenant("right").await?.is_some());
    assert!(relay.store.tenant("proxied").await?.is_some());
    relay.stop().await
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let token = relay.api_token("cases").await;
    let client = Client::new(&relay.ca_cert());
    let url = format!("http://{}/api/v1/tenants", relay.admin_addr.expect("admin"));
    for (value, status) in [
        (format!("BEARER {token}"), StatusCode::OK),
        (format!("bEaReR   {token}"), StatusCode::OK),
        (format!("bearer {token}"), StatusCode::OK),
        (format!("Bearer{token}"), StatusCode::UNAUTHORIZED),
        (format!("Basic {token}"), StatusCode::UNAUTHORIZED),
        ("Bearer".to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let a = client
            .request_with("GET", &url, &[("authorization", &value)], Bytes::new())
            .await?;
        assert_eq!(a.status, status, "{value}");
    }
    relay.stop().await
}

#[tokio::test]
async fn the_api_refuses_bodies_and_queries_of_the_wrong_shape() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("shapes").await,
    };
    let (s, _) = api
        .call("POST", "/api/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // A struct filled from an array, by position: refused, nothing changes.
    for body in [
        json!({"limits": [5, null]}),
        json!({"limits": [5]}),
        json!({"limits": {"max_body_bytes": [5]}}),
        json!({"limits": {"max_body_bytes": 9_223_372_036_854_775_808u64}}),
        json!({"limits": {"max_concurrent_streams": 4_294_967_296u64}}),
        json!([true, "x", "y", false]),
        json!([]),
        json!("enabled"),
    ] {
        let (s, p) = api
            .call("PATCH", "/api/v1/tenants/acme", Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert!(p["status"] == 422, "a problem document: {p}");
    }
    let t = relay.store.tenant("acme").await?.expect("acme");
    assert_eq!(
        t.limits,
        relay_store::TenantLimits::default(),
        "limits unchanged"
    );
    assert!(t.enabled);
    // A credential from `[]`: refused, none created.
    for body in [json!([]), json!(["label"]), json!(null), json!("x")] {
        let (s, _) = api
            .call(
                "POST",
                "/api/v1/tenants/acme/credentials",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    assert!(relay.store.credentials("acme").await?.is_empty());
    let (s, _) = api
        .call("POST", "/api/v1/tenants", Some(json!(["other"])))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(relay.store.tenant("other").await?.is_none());
    let (s, _) = api
        .call(
            "POST",
            "/api/v1/tenants/acme/hostnames",
            Some(json!(["app.acme.example", "app"])),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(relay.store.hostnames("acme").await?.is_empty());
    // Values the documented patterns refuse are refused.
    for (path, body) in [
        ("/api/v1/tenants", json!({"name": "Bad_Name"})),
        ("/api/v1/tenants", json!({"name": "-x"})),
        (
            "/api/v1/tenants/acme/hostnames",
            json!({"hostname": "nodots", "target": "app"}),
        ),
        (
            "/api/v1/tenants/acme/hostnames",
            json!({"hostname": "a.example", "target": "a.b"}),
        ),
    ] {
        let (s, p) = api.call("POST", path, Some(body.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
    }

    // Query parameters out of their documented range: 400, like malformed ones.
    for (path, status) in [
        ("/api/v1/tenants?limit=1000", StatusCode::OK),
        ("/api/v1/tenants?limit=1", StatusCode::OK),
        ("/api/v1/tenants?offset=9223372036854775807", StatusCode::OK),
        ("/api/v1/tenants?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/tenants?limit=1001", StatusCode::BAD_REQUEST),
        ("/api/v1/tenants?offset=-1", StatusCode::BAD_REQUEST),
        (
            "/api/v1/tenants?offset=9223372036854775808",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/requests?limit=1000", StatusCode::OK),
        ("/api/v1/requests?limit=0", StatusCode::BAD_REQUEST),
        ("/api/v1/requests?limit=5000", StatusCode::BAD_REQUEST),
        (
            "/api/v1/requests?offset=9223372036854775808",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/requests?status=%2B502", StatusCode::BAD_REQUEST),
    ] {
        let (s, p) = api.call("GET", path, None).await;
        assert_eq!(s, status, "{path}: {p}");
    }

    // The document states the patterns and ranges the handlers enforce.
    let (_, doc) = api.call("GET", "/api/v1/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["NewTenant"]["properties"]["name"]["pattern"],
        "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$"
    );
    assert_eq!(
        schemas["Tenant"]["properties"]["name"]["pattern"],
        "^[a-z0-9][a-z0-9-]{0,62}$"
    );
    assert_eq!(
        schemas["NewHostname"]["properties"]["target"]["pattern"],
        "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$"
    );
    assert!(schemas["NewHostname"]["properties"]["hostname"]["pattern"]
        .as_str()
        .is_some_and(|p| p.starts_with('^') && p.ends_with('$')));
    for field in [
        "max_body_bytes",
        "max_concurrent_streams",
        "request_timeout_ms",
    ] {
        assert_eq!(
            schemas["LimitsPatch"]["properties"][field]["minimum"], 1,
            "{field}"
        );
        assert!(schemas["LimitsPatch"]["properties"][field]["maximum"].is_u64());
    }
    let params = |path: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .clone()
    };
    for path in ["/api/v1/tenants", "/api/v1/requests"] {
        let ps = params(path);
        let schema = |n: &str| {
            ps.iter()
                .find(|p| p["name"] == n)
                .unwrap_or_else(|| panic!("{path} {n}"))["schema"]
                .clone()
        };
        assert_eq!(schema("offset")["minimum"], 0, "{path}");
        assert_eq!(schema("offset")["maximum"], 9_223_372_036_854_775_807u64);
        assert_eq!(schema("limit")["minimum"], 1, "{path}");
        assert_eq!(schema("limit")["maximum"], 1000, "{path}");
    }
    let name = &params("/api/v1/tenants/{name}/hostnames")[0];
    assert_eq!(name["schema"]["pattern"], "^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$");
    let delete = &doc["paths"]["/api/v1/tenants/{name}/hostnames/{hostname}"]["delete"];
    assert_eq!(delete["parameters"][1]["name"], "hostname");
    assert!(delete["parameters"][1]["schema"]["pattern"].is_string());
    relay.stop().await
}
