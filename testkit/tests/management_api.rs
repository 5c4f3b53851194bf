//! The management API on a real relay's admin listener: every route's authorisation, the
//! OpenAPI document, each action through `/api/v1` (tenants, credentials, hostnames, connections,
//! requests, nodes, queues), validation and body shapes, the bearer scheme.

mod web;

use std::time::Duration;

use bytes::Bytes;
use connector::testing::connector;
use http::StatusCode;
use serde_json::{json, Value};
use testkit::{trace_init, Backend, Client};
use web::{concrete, is_problem, node, purged_message, seed_queue, session_on, Api};

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
        ("get", "/api/v1/nodes"),
        ("post", "/api/v1/nodes/{node}/drain"),
        ("post", "/api/v1/nodes/{node}/resume"),
        ("get", "/api/v1/tenants/{name}/queue"),
        ("patch", "/api/v1/tenants/{name}/queue"),
        ("get", "/api/v1/tenants/{name}/queue/messages"),
        ("get", "/api/v1/queue/messages/{id}"),
        ("post", "/api/v1/queue/messages/{id}/retry"),
        ("post", "/api/v1/queue/messages/{id}/discard"),
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
    let sessions = testkit::eventually(
        Duration::from_secs(5),
        "the connector's session listed",
        || async {
            let (_, sessions) = api
                .call("GET", "/api/v1/tenants/contoso/connections", None)
                .await;
            let listed = sessions["items"].as_array().is_some_and(|a| !a.is_empty());
            listed.then_some(sessions)
        },
    )
    .await;
    let items = sessions["items"].as_array().expect("items");
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
    testkit::eventually(
        Duration::from_secs(10),
        "the revoked credential's sessions gone",
        || async {
            let (_, s) = api
                .call("GET", "/api/v1/tenants/contoso/connections", None)
                .await;
            s["items"].as_array().is_some_and(|a| a.is_empty())
        },
    )
    .await;

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

#[tokio::test]
async fn api_revokes_credentials_and_removes_hostnames_only_under_their_own_tenant(
) -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("scoped").await,
    };
    for name in ["acme", "other"] {
        let (s, _) = api
            .call("POST", "/api/v1/tenants", Some(json!({"name": name})))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/tenants/acme/credentials",
            Some(json!({"label": "office"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    let (s, _) = api
        .call(
            "POST",
            "/api/v1/tenants/acme/hostnames",
            Some(json!({"hostname": "app.acme.example", "target": "app"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Another tenant's name, or no tenant's: 404, and nothing changes.
    for tenant in ["other", "nobody"] {
        let (s, p) = api
            .call(
                "DELETE",
                &format!("/api/v1/tenants/{tenant}/credentials/{id}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{tenant}: {p}");
        assert_eq!(p["status"], 404, "a problem document: {p}");
        let (s, p) = api
            .call(
                "DELETE",
                &format!("/api/v1/tenants/{tenant}/hostnames/app.acme.example"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{tenant}: {p}");
    }
    let (_, p) = api
        .call(
            "DELETE",
            &format!("/api/v1/tenants/nobody/credentials/{id}"),
            None,
        )
        .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tenant nobody not found")),
        "the tenant is looked up first: {p}"
    );
    let c = relay
        .store
        .credential("acme", &id)
        .await?
        .expect("credential");
    assert_eq!(c.revoked_at, None, "the credential is still valid");
    assert_eq!(relay.store.hostnames("acme").await?.len(), 1);
    let refused = relay.store.admin_actions(100).await?;
    assert!(
        !refused
            .iter()
            .any(|a| a.action == "credential.revoke" || a.action == "hostname.remove"),
        "refused changes are not recorded: {refused:?}"
    );

    // Under its own tenant, in any case: done, and recorded under the canonical names.
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/v1/tenants/ACME/credentials/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call(
            "DELETE",
            "/api/v1/tenants/Acme/hostnames/App.Acme.Example.",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let c = relay
        .store
        .credential("acme", &id)
        .await?
        .expect("credential");
    assert!(c.revoked_at.is_some());
    assert!(relay.store.hostnames("acme").await?.is_empty());
    let actions = relay.store.admin_actions(100).await?;
    for (action, object) in [
        ("credential.revoke", format!("acme/{id}")),
        ("hostname.remove", "acme/app.acme.example".to_string()),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.object == object && a.actor == "token:scoped"),
            "{action} {object} not recorded: {actions:?}"
        );
    }
    relay.stop().await
}

#[tokio::test]
async fn api_records_enabling_and_disabling_as_the_pages_and_cli_do() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("switch").await,
    };
    let recorded = || async {
        let mut a: Vec<String> = relay
            .store
            .admin_actions(100)
            .await
            .expect("admin actions")
            .into_iter()
            .filter(|a| a.object == "acme" && a.actor == "token:switch")
            .map(|a| a.action)
            .collect();
        a.sort();
        a
    };
    let (s, _) = api
        .call("POST", "/api/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, t) = api
        .call(
            "PATCH",
            "/api/v1/tenants/acme",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["enabled"], false);
    assert_eq!(recorded().await, ["tenant.create", "tenant.disable"]);
    let (s, t) = api
        .call(
            "PATCH",
            "/api/v1/tenants/acme",
            Some(json!({"enabled": true, "description": "back"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["enabled"], true);
    assert_eq!(t["description"], "back");
    assert_eq!(
        recorded().await,
        [
            "tenant.create",
            "tenant.disable",
            "tenant.enable",
            "tenant.update"
        ]
    );
    // A patch that changes nothing answers the tenant and records nothing.
    let (s, t) = api
        .call("PATCH", "/api/v1/tenants/acme", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(recorded().await.len(), 4);
    relay.stop().await
}

#[tokio::test]
async fn api_lists_nodes_and_drains_and_resumes_them_by_name_or_id() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("ops").await,
    };
    // Besides the relay itself: one node with two live sessions (and an ended one), and two
    // nodes on one host sharing a name.
    for (id, name) in [("a1", "alpha"), ("h1", "host"), ("h2", "host")] {
        relay.store.register_node(&node(id, name)).await?;
    }
    for id in ["s1", "s2", "s3"] {
        relay.store.session_opened(&session_on(id, "a1")).await?;
    }
    relay.store.session_closed("s3", "normal").await?;

    let (s, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let items = list["items"].as_array().expect("items");
    let alpha = items
        .iter()
        .find(|n| n["id"] == "a1")
        .expect("alpha listed");
    assert_eq!(alpha["name"], "alpha");
    assert_eq!(alpha["advertise"], "alpha.internal:8443");
    assert_eq!(alpha["state"], "active");
    assert_eq!(alpha["sessions"], 2);
    assert!(alpha["heartbeat_age_ms"]
        .as_i64()
        .is_some_and(|ms| (0..15_000).contains(&ms)));
    for time in ["started_at", "heartbeat_at"] {
        assert!(
            alpha[time].as_str().is_some_and(|t| t.ends_with('Z')),
            "{alpha}"
        );
    }
    assert_eq!(items.iter().filter(|n| n["name"] == "host").count(), 2);

    // Drain by name, resume by id: the answer is the node as it is now.
    let (s, n) = api.call("POST", "/api/v1/nodes/alpha/drain", None).await;
    assert_eq!(s, StatusCode::OK, "{n}");
    assert_eq!(
        (n["id"].as_str(), n["state"].as_str()),
        (Some("a1"), Some("draining"))
    );
    assert_eq!(n["sessions"], 2);
    // The node learns it at its next heartbeat.
    assert_eq!(
        relay.store.heartbeat_node("a1").await?,
        Some(relay_store::NodeState::Draining)
    );
    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    let listed = |list: &Value, id: &str| {
        list["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|n| n["id"] == id)
                .map(|n| n["state"].clone())
        })
    };
    assert_eq!(listed(&list, "a1"), Some(json!("draining")));
    let (s, n) = api.call("POST", "/api/v1/nodes/a1/resume", None).await;
    assert_eq!(s, StatusCode::OK, "{n}");
    assert_eq!(n["state"], "active");

    // A name two live nodes share is 409 (give the id); an unknown node is 404.
    let a = api
        .client
        .request_with(
            "POST",
            &format!("{}/api/v1/nodes/host/drain", api.base),
            &[("authorization", &format!("Bearer {}", api.token))],
            Bytes::new(),
        )
        .await?;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text());
    assert!(is_problem(&a));
    assert!(a.text().contains("node id"), "{}", a.text());
    let (s, p) = api.call("POST", "/api/v1/nodes/nobody/resume", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("nobody")),
        "{p}"
    );
    let (s, n) = api.call("POST", "/api/v1/nodes/h2/drain", None).await;
    assert_eq!(s, StatusCode::OK, "{n}");
    let (_, list) = api.call("GET", "/api/v1/nodes", None).await;
    assert_eq!(listed(&list, "h1"), Some(json!("active")));
    assert_eq!(listed(&list, "h2"), Some(json!("draining")));

    // Only with a token.
    let client = &api.client;
    for (method, path) in [
        ("GET", "/api/v1/nodes"),
        ("POST", "/api/v1/nodes/a1/drain"),
        ("POST", "/api/v1/nodes/a1/resume"),
    ] {
        let a = client
            .request_with(method, &format!("{}{path}", api.base), &[], Bytes::new())
            .await?;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert_eq!(
        relay
            .store
            .nodes(15_000)
            .await?
            .iter()
            .find(|n| n.id == "a1")
            .map(|n| n.state),
        Some(relay_store::NodeState::Active)
    );

    // Recorded under the token's name; refusals record nothing.
    let actions: Vec<(String, String, String)> = relay
        .store
        .admin_actions(100)
        .await?
        .into_iter()
        .rev()
        .map(|a| (a.actor, a.action, a.object))
        .collect();
    let entry = |action: &str, object: &str| {
        (
            "token:ops".to_string(),
            action.to_string(),
            object.to_string(),
        )
    };
    assert_eq!(
        actions,
        [
            entry("node.drain", "alpha/a1"),
            entry("node.resume", "alpha/a1"),
            entry("node.drain", "host/h2"),
        ]
    );
    relay.stop().await
}

#[tokio::test]
async fn api_shows_a_tenants_queue_changes_its_settings_and_retries_and_discards_messages(
) -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    let api = Api {
        client: Client::new(&relay.ca_cert()),
        base: format!("http://{}", relay.admin_addr.expect("admin")),
        token: relay.api_token("ops").await,
    };
    let tenant = relay.create_tenant("acme").await;

    // An empty queue: the relay's defaults, every state counted.
    let (s, q) = api.call("GET", "/api/v1/tenants/ACME/queue", None).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(q["tenant"], "acme");
    assert_eq!(
        q["settings"],
        json!({"order": "parallel", "ttl_ms": null, "max_messages": null, "max_bytes": null})
    );
    assert_eq!(q["counts"]["queued"], 0);
    assert_eq!(q["counts"].as_object().map(|c| c.len()), Some(6));
    assert_eq!(q["oldest_queued_at"], Value::Null);

    let seed = seed_queue(&relay.store, &tenant).await;
    let (_, q) = api.call("GET", "/api/v1/tenants/acme/queue", None).await;
    for (state, n) in [
        ("queued", 2),
        ("failed", 1),
        ("delivered", 1),
        ("expired", 0),
    ] {
        assert_eq!(q["counts"][state], n, "{state}: {q}");
    }
    assert!(
        q["oldest_queued_age_ms"].as_i64().is_some_and(|ms| ms >= 0),
        "{q}"
    );
    assert!(q["oldest_queued_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // The list: newest first, filtered by state, limited; bad queries are 400.
    let (s, list) = api
        .call("GET", "/api/v1/tenants/acme/queue/messages", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [&seed.binary, &seed.queued, &seed.delivered, &seed.failed]
    );
    let (_, failed) = api
        .call(
            "GET",
            "/api/v1/tenants/acme/queue/messages?state=FAILED",
            None,
        )
        .await;
    let items = failed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["state"], "failed");
    assert_eq!(items[0]["last_error"], "the backend answered 400");
    assert_eq!(items[0]["response_status"], 400);
    assert_eq!(items[0]["attempts"], 1);
    let (_, one) = api
        .call("GET", "/api/v1/tenants/acme/queue/messages?limit=1", None)
        .await;
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1));
    for bad in ["?state=lost", "?limit=0", "?limit=1001", "?page=2"] {
        let (s, p) = api
            .call(
                "GET",
                &format!("/api/v1/tenants/acme/queue/messages{bad}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {p}");
    }

    // A queued message's detail: headers, the whole (short) body as text, no response.
    let (s, m) = api
        .call(
            "GET",
            &format!("/api/v1/queue/messages/{}", seed.queued),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (
            m["state"].as_str(),
            m["method"].as_str(),
            m["path"].as_str()
        ),
        (Some("queued"), Some("POST"), Some("/orders?id=42"))
    );
    assert!(m["next_attempt_at"].is_string());
    assert_eq!(
        m["request"]["headers"],
        json!([{"name": "content-type", "value": "application/json"}, {"name": "x-raw", "value_base64": "6Xg="}])
    );
    assert_eq!(
        m["request"]["body"],
        json!({"encoding": "text", "data": "{\"order\": 42}", "bytes": 13, "complete": true})
    );
    assert_eq!(m["response"], Value::Null);
    assert_eq!(m["retryable"], false);
    // Binary and longer than a KiB: the first KiB, base64.
    let (_, m) = api
        .call(
            "GET",
            &format!("/api/v1/queue/messages/{}", seed.binary),
            None,
        )
        .await;
    let body = &m["request"]["body"];
    assert_eq!(
        (body["encoding"].as_str(), body["bytes"].as_u64()),
        (Some("base64"), Some(1024))
    );
    assert_eq!(body["complete"], false);
    // A failed one: the backend's answer; its request body is no longer stored.
    let (_, m) = api
        .call(
            "GET",
            &format!("/api/v1/queue/messages/{}", seed.failed),
            None,
        )
        .await;
    assert_eq!(m["response"]["status"], 400);
    assert_eq!(m["response"]["body"]["data"], "{\"error\": \"bad order\"}");
    assert_eq!(m["response"]["headers"][0]["name"], "content-type");
    assert!(m["finished_at"].is_string());
    let (s, p) = api.call("GET", "/api/v1/queue/messages/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");

    // Retry: what the detail's `retryable` promises; only failed or expired messages.
    let retry = format!("/api/v1/queue/messages/{}/retry", seed.failed);
    let (s, r) = api.call("POST", &retry, None).await;
    let mut retried = 0;
    if m["retryable"] == true {
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["state"], "queued");
        retried = 1;
    } else {
        assert_eq!(s, StatusCode::CONFLICT, "{r}");
        assert!(
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no longer stored")),
            "{r}"
        );
    }
    let (s, r) = api
        .call(
            "POST",
            &format!("/api/v1/queue/messages/{}/retry", seed.queued),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("only failed or expired")),
        "{r}"
    );
    let (s, _) = api
        .call("POST", "/api/v1/queue/messages/nope/retry", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Discard: a queued message is cancelled, then deleted; a delivered one stays (409).
    let discard = |id: &str| format!("/api/v1/queue/messages/{id}/discard");
    let (s, d) = api.call("POST", &discard(&seed.queued), None).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["result"], "cancelled");
    assert_eq!(d["message"]["state"], "cancelled");
    let (s, d) = api.call("POST", &discard(&seed.queued), None).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        (d["result"].as_str(), &d["message"]),
        (Some("deleted"), &Value::Null)
    );
    let (s, _) = api
        .call(
            "GET",
            &format!("/api/v1/queue/messages/{}", seed.queued),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, p) = api.call("POST", &discard(&seed.delivered), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert!(relay.store.message(&seed.delivered).await?.is_some());
    let (s, _) = api.call("POST", &discard("nope"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Settings: set, keep what is absent, return to the default with null; 422 out of range.
    let patch = |body: Value| api.call("PATCH", "/api/v1/tenants/acme/queue", Some(body));
    let (s, q) = patch(json!({"order": "ordered", "ttl_ms": 7_200_000, "max_messages": 10})).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(
        q["settings"],
        json!({"order": "ordered", "ttl_ms": 7_200_000, "max_messages": 10, "max_bytes": null})
    );
    let stored = relay.store.queue_settings(&tenant.id.0).await?;
    assert_eq!(
        (stored.ordered, stored.ttl_ms, stored.max_messages),
        (true, Some(7_200_000), Some(10))
    );
    let (s, q) = patch(json!({"ttl_ms": null, "max_bytes": 1_000_000})).await;
    assert_eq!(s, StatusCode::OK, "{q}");
    assert_eq!(
        q["settings"],
        json!({"order": "ordered", "ttl_ms": null, "max_messages": 10, "max_bytes": 1_000_000})
    );
    for bad in [
        json!({"ttl_ms": 31_u64 * 24 * 3600 * 1000}),
        json!({"ttl_ms": 999}),
        json!({"max_messages": 0}),
        json!({"order": "random"}),
        json!({"max_bytes": "1 GiB"}),
        json!({"quota": 5}),
    ] {
        let (s, p) = patch(bad.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {p}");
    }
    assert_eq!(
        relay.store.queue_settings(&tenant.id.0).await?.max_messages,
        Some(10)
    );
    let (s, _) = patch(json!({})).await;
    assert_eq!(s, StatusCode::OK);

    // Unknown tenants are 404; nothing without a token.
    for (method, path) in [
        ("GET", "/api/v1/tenants/nobody/queue"),
        ("PATCH", "/api/v1/tenants/nobody/queue"),
        ("GET", "/api/v1/tenants/nobody/queue/messages"),
    ] {
        let body = (method == "PATCH").then(|| json!({}));
        let (s, p) = api.call(method, path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {p}");
    }
    for (method, path) in [
        ("GET", "/api/v1/tenants/acme/queue".to_string()),
        ("GET", format!("/api/v1/queue/messages/{}", seed.failed)),
        ("POST", discard(&seed.failed)),
    ] {
        let a = api
            .client
            .request_with(method, &format!("{}{path}", api.base), &[], Bytes::new())
            .await?;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert!(relay.store.message(&seed.failed).await?.is_some());
    // Failed: deleted (retried, it is queued again and cancelled).
    let (s, d) = api.call("POST", &discard(&seed.failed), None).await;
    let result = if retried == 1 { "cancelled" } else { "deleted" };
    assert_eq!(
        (s, d["result"].as_str()),
        (StatusCode::OK, Some(result)),
        "{d}"
    );

    // Past its retention period a message keeps no body: it cannot be retried.
    let old = purged_message(&relay.store, &tenant).await;
    let (_, m) = api
        .call("GET", &format!("/api/v1/queue/messages/{old}"), None)
        .await;
    assert_eq!(
        (m["state"].as_str(), m["purged"].as_bool()),
        (Some("expired"), Some(true))
    );
    assert_eq!(
        (&m["retryable"], &m["request"]["body"]),
        (&json!(false), &Value::Null)
    );
    let (s, r) = api
        .call("POST", &format!("/api/v1/queue/messages/{old}/retry"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no longer stored")),
        "{r}"
    );

    // Recorded under the token's name; refusals and changes of nothing record nothing.
    let actions: Vec<(String, String)> = relay
        .store
        .admin_actions(100)
        .await?
        .into_iter()
        .rev()
        .filter(|a| a.actor == "token:ops")
        .map(|a| (a.action, a.object))
        .collect();
    let entry = |action: &str, id: &str| (action.to_string(), format!("acme/{id}"));
    let mut want = Vec::new();
    if retried == 1 {
        want.push(entry("queue.retry", &seed.failed));
    }
    want.extend([
        entry("queue.discard", &seed.queued),
        entry("queue.discard", &seed.queued),
        ("queue.settings".to_string(), "acme".to_string()),
        ("queue.settings".to_string(), "acme".to_string()),
        entry("queue.discard", &seed.failed),
    ]);
    assert_eq!(actions, want);
    relay.stop().await
}
