//! The admin pages on a real relay's admin listener, as far as HTTP goes: sessions, CSRF and
//! same-origin checks, escaping, error pages, each action through its form (the Nodes page's
//! drain and resume, the Queue page's settings, retry and discard too), and login rate limiting. Login limiting under load is in `login.rs`,
//! the browser walk-through in `browser.rs`.

mod web;

use bytes::Bytes;
use http::StatusCode;
use testkit::{trace_init, Client};
use web::{concrete, node, purged_message, seed_queue, session_on, Browser};

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
        .insert_audit(vec![relay_store::AuditRecord {
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
            session_node: None,
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

/// Whether an answer is an HTML page.
fn is_html(a: &testkit::client::Answer) -> bool {
    a.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

#[tokio::test]
async fn page_errors_are_pages_and_invalid_input_stays_on_its_form() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    relay
        .store
        .add_hostname("acme", "app.acme.example", "app")
        .await?;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = |rest: &str| format!("csrf={}&{rest}", b.csrf);

    // Something missing or refused: an error page (HTML, escaped), not a problem document.
    let a = b.get("/tenants/nobody%3Cb%3E").await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(is_html(&a), "{:?}", a.headers);
    assert!(
        a.text().contains("tenant nobody&#60;b&#62; not found"),
        "{}",
        a.text()
    );
    let a = b.get("/nowhere").await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(is_html(&a));
    let a = b.post("/tenants", "csrf=wrong&name=x", Some(&base)).await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(is_html(&a) && a.text().contains("CSRF"), "{}", a.text());
    let a = b.post("/tenants", "name=x", Some(&base)).await?;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a form without its token"
    );
    assert!(is_html(&a));
    // Unknown API routes stay problem documents.
    let a = client.get(&format!("{base}/api/v1/nowhere")).await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(web::is_problem(&a), "{}", a.text());

    // Invalid or taken input: its form again, saying why, with the status the API answers.
    for (path, body, status, says) in [
        (
            "/tenants",
            form("name=bad+name!"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad name!",
        ),
        (
            "/tenants",
            form("name=ACME"),
            StatusCode::CONFLICT,
            "tenant acme already exists",
        ),
        (
            "/tenants/other/hostnames",
            form("hostname=App.Acme.Example&target=app"),
            StatusCode::CONFLICT,
            "hostname app.acme.example is taken",
        ),
        (
            "/tenants/acme/hostnames",
            form("hostname=nodots&target=app"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nodots",
        ),
        (
            "/tenants/acme/settings",
            form("display_name=Acme&max_body_bytes=lots"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Max request body must be a positive whole number",
        ),
        (
            "/tenants/acme/settings",
            form("display_name=Acme&max_concurrent_streams=4294967296"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_concurrent_streams: 1 to 2^32-1",
        ),
        (
            "/tokens",
            form("name=no+spaces"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no spaces",
        ),
    ] {
        let a = b.post(path, &body, Some(&base)).await?;
        assert_eq!(a.status, status, "{path} {body}: {}", a.text());
        let html = a.text();
        assert!(is_html(&a));
        assert!(html.contains("class=\"error\""), "{path}: {html}");
        assert!(html.contains(says), "{path} says {says:?}: {html}");
        assert!(
            html.contains(&format!("name=\"csrf\" value=\"{}\"", b.csrf)),
            "{path}: the form is there again"
        );
    }
    // Nothing changed.
    let acme = relay.store.tenant("acme").await?.expect("acme");
    assert_eq!(acme.display_name, "acme");
    assert_eq!(acme.limits, relay_store::TenantLimits::default());
    assert!(relay.store.hostnames("other").await?.is_empty());
    assert!(relay.store.api_tokens().await?.is_empty());
    assert!(relay.store.admin_actions(100).await?.is_empty());
    relay.stop().await
}

#[tokio::test]
async fn pages_change_tenants_hostnames_credentials_and_tokens_and_record_who() -> anyhow::Result<()>
{
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = |rest: &str| format!("csrf={}&{rest}", b.csrf);
    let redirected = |a: &testkit::client::Answer, to: &str| {
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        assert_eq!(a.headers["location"], to);
    };

    // Disable and enable.
    let a = b
        .post("/tenants/acme/state", &form("enabled=false"), Some(&base))
        .await?;
    redirected(&a, "/tenants/acme?done=disabled");
    assert!(!relay.store.tenant("acme").await?.expect("acme").enabled);
    let a = b
        .post("/tenants/Acme/state", &form("enabled=true"), Some(&base))
        .await?;
    redirected(&a, "/tenants/acme?done=enabled");
    assert!(relay.store.tenant("acme").await?.expect("acme").enabled);

    // Hostnames: removed only under their own tenant.
    let a = b
        .post(
            "/tenants/acme/hostnames",
            &form("hostname=App.Acme.Example.&target=app"),
            Some(&base),
        )
        .await?;
    redirected(&a, "/tenants/acme?done=hostname-added");
    let hosts = relay.store.hostnames("acme").await?;
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].hostname, "app.acme.example");
    let a = b
        .post(
            "/tenants/other/hostnames/app.acme.example/remove",
            &form(""),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(relay.store.hostnames("acme").await?.len(), 1);
    let a = b
        .post(
            "/tenants/acme/hostnames/app.acme.example/remove",
            &form(""),
            Some(&base),
        )
        .await?;
    redirected(&a, "/tenants/acme?done=hostname-removed");
    assert!(relay.store.hostnames("acme").await?.is_empty());

    // Credentials: revoked only under their own tenant.
    let id = relay.create_credential("acme").await.credential.id.0;
    for tenant in ["other", "nobody"] {
        let a = b
            .post(
                &format!("/tenants/{tenant}/credentials/{id}/revoke"),
                &form(""),
                Some(&base),
            )
            .await?;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{tenant}");
    }
    let c = relay
        .store
        .credential("acme", &id)
        .await?
        .expect("credential");
    assert_eq!(c.revoked_at, None, "still valid");
    let a = b
        .post(
            &format!("/tenants/acme/credentials/{id}/revoke"),
            &form(""),
            Some(&base),
        )
        .await?;
    redirected(&a, "/tenants/acme?done=revoked");
    let c = relay
        .store
        .credential("acme", &id)
        .await?
        .expect("credential");
    assert!(c.revoked_at.is_some());

    // API tokens: shown once, then revoked.
    let a = b
        .post("/tokens", &form("name=Terraform"), Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    let html = a.text();
    let at = html.find("rat_").expect("the token on the page");
    let token: String = html[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let tenants = format!("{base}/api/v1/tenants");
    assert_eq!(
        client.get_bearer(&tenants, &token).await?.status,
        StatusCode::OK
    );
    let listed = relay.store.api_tokens().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "terraform");
    let a = b
        .post(
            &format!("/tokens/{}/revoke", listed[0].id),
            &form(""),
            Some(&base),
        )
        .await?;
    redirected(&a, "/tokens?done=token-revoked");
    assert_eq!(
        client.get_bearer(&tenants, &token).await?.status,
        StatusCode::UNAUTHORIZED
    );

    // Who did what: the signed-in user, under the canonical names; nothing for refusals.
    let actions = relay.store.admin_actions(100).await?;
    for (action, object) in [
        ("tenant.disable", "acme".to_string()),
        ("tenant.enable", "acme".to_string()),
        ("hostname.add", "acme/app.acme.example".to_string()),
        ("hostname.remove", "acme/app.acme.example".to_string()),
        ("credential.revoke", format!("acme/{id}")),
        ("api_token.create", "terraform".to_string()),
        ("api_token.revoke", "terraform".to_string()),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.object == object && a.actor == "user:admin"),
            "{action} {object} not recorded: {actions:?}"
        );
    }
    assert_eq!(actions.len(), 7, "{actions:?}");
    relay.stop().await
}

#[tokio::test]
async fn nodes_page_lists_live_nodes_and_drains_and_resumes_them() -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let id = "0190aaaabbbbcccc";
    relay.store.register_node(&node(id, "alpha")).await?;
    relay.store.register_node(&node("h1", "host")).await?;
    relay.store.register_node(&node("h2", "host")).await?;
    relay.store.session_opened(&session_on("s1", id)).await?;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = format!("csrf={}", b.csrf);

    // Listed with the short id, heartbeat age, sessions, address and a Drain button.
    let page = b.get("/nodes").await?;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    for want in [
        "<a href=\"/nodes\" aria-current=\"page\">Nodes</a>",
        "alpha",
        &format!("<code title=\"{id}\">…bbbbcccc</code>"),
        "alpha.internal:8443",
        "<td>1</td>",
        &format!("action=\"/nodes/{id}/drain\""),
        "ago",
    ] {
        assert!(html.contains(want), "{want} missing in {html}");
    }
    assert!(!html.contains(&format!("/nodes/{id}/resume")), "{html}");

    // Drain: without the CSRF token or from another origin nothing happens.
    let drain = format!("/nodes/{id}/drain");
    let a = b.post(&drain, "csrf=wrong", Some(&base)).await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = b.post(&drain, &form, Some("http://evil.example")).await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let state = || async {
        relay
            .store
            .nodes(15_000)
            .await
            .expect("nodes")
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.state)
    };
    assert_eq!(state().await, Some(relay_store::NodeState::Active));
    let a = b.post(&drain, &form, Some(&base)).await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(a.headers["location"], "/nodes?done=node-draining");
    assert_eq!(state().await, Some(relay_store::NodeState::Draining));
    let html = b.get("/nodes?done=node-draining").await?.text();
    assert!(html.contains("Node draining"), "{html}");
    assert!(
        html.contains(&format!("action=\"/nodes/{id}/resume\"")),
        "{html}"
    );
    assert!(html.contains("draining</span>"), "{html}");

    // Resume.
    let a = b
        .post(&format!("/nodes/{id}/resume"), &form, Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(a.headers["location"], "/nodes?done=node-resumed");
    assert_eq!(state().await, Some(relay_store::NodeState::Active));

    // A name two nodes share stays on the page with the reason (409); an unknown node is 404.
    let a = b.post("/nodes/host/drain", &form, Some(&base)).await?;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text().contains("use the node id"), "{}", a.text());
    assert!(a.text().contains("<h1>Relay nodes</h1>"), "{}", a.text());
    let a = b.post("/nodes/nobody/drain", &form, Some(&base)).await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);

    let actions: Vec<(String, String)> = relay
        .store
        .admin_actions(100)
        .await?
        .into_iter()
        .rev()
        .filter(|a| a.actor == "user:admin")
        .map(|a| (a.action, a.object))
        .collect();
    let object = format!("alpha/{id}");
    assert_eq!(
        actions,
        [
            ("node.drain".to_string(), object.clone()),
            ("node.resume".to_string(), object),
        ]
    );
    relay.stop().await
}

#[tokio::test]
async fn queue_page_counts_lists_and_filters_messages_and_retries_discards_and_saves_settings(
) -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    let tenant = relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    let seed = seed_queue(&relay.store, &tenant).await;
    // What a visitor sent is shown as text.
    let hostile = "ffffffffffffffffffffffffffffffff";
    relay
        .store
        .enqueue(
            &relay_store::NewMessage {
                id: hostile.into(),
                tenant_id: tenant.id.0.clone(),
                tenant: "acme".into(),
                target: "app".into(),
                method: "PUT".into(),
                path: "/<script>alert(1)</script>".into(),
                headers: r#"[{"n":"x-note","v":"<img src=x onerror=alert(2)>"}]"#.into(),
                body: b"<b>bold</b>".to_vec(),
                idempotency_key: None,
                ttl_ms: 3_600_000,
            },
            relay_store::QueueQuota::default(),
        )
        .await?;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = format!("csrf={}", b.csrf);

    // The tenant page sums the queue up and links to it.
    let html = b.get("/tenants/acme").await?.text();
    assert!(html.contains("3 queued, 1 delivered, 1 failed"), "{html}");
    assert!(html.contains("href=\"/tenants/acme/queue\""), "{html}");

    // The Queue page: counts by state (each a filter), the oldest waiting, the list, settings.
    let page = b.get("/tenants/acme/queue").await?;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    for want in [
        "<h1>Queue <small class=\"muted\">(acme)</small></h1>",
        "href=\"/tenants/acme/queue?state=failed\"><span class=\"n\">1</span><span>failed</span>",
        "<span class=\"n\">3</span><span>queued</span>",
        "<span>oldest waiting</span>",
        &format!("href=\"/tenants/acme/queue/{}\"", seed.queued),
        "POST /orders?id=42",
        "the backend answered 400 (response 400)",
        "response 200",
        &format!("action=\"/tenants/acme/queue/{}/discard\"", seed.queued),
        "aria-label=\"Cancel message",
        "action=\"/tenants/acme/queue/settings\"",
        "placeholder=\"relay default\"",
        "&#60;script&#62;alert(1)&#60;/script&#62;",
    ] {
        assert!(html.contains(want), "{want} missing in {html}");
    }
    assert!(!html.contains("<script>alert"), "{html}");
    // No discard for a delivered message.
    assert!(
        !html.contains(&format!("/tenants/acme/queue/{}/discard", seed.delivered)),
        "{html}"
    );
    // Filtered by state.
    let html = b.get("/tenants/acme/queue?state=failed").await?.text();
    assert!(html.contains(&seed.failed[..10]), "{html}");
    assert!(
        !html.contains(&format!("queue/{}\"", seed.queued)),
        "{html}"
    );
    assert!(html.contains("aria-current=\"true\""), "{html}");
    let a = b.get("/tenants/acme/queue?state=lost").await?;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        b.get("/tenants/nobody/queue").await?.status,
        StatusCode::NOT_FOUND
    );

    // A message's page: headers, the body (escaped), attempts, the response; 404 under another
    // tenant or for an unknown id.
    let html = b
        .get(&format!("/tenants/acme/queue/{}", seed.queued))
        .await?
        .text();
    for want in [
        "<code>content-type</code>",
        "<code>application/json</code>",
        "(base64)",
        "{&#34;order&#34;: 42}",
        "the whole body, 13 B",
        ">Cancel</button>",
    ] {
        assert!(html.contains(want), "{want} missing in {html}");
    }
    let html = b
        .get(&format!("/tenants/acme/queue/{hostile}"))
        .await?
        .text();
    assert!(html.contains("&#60;b&#62;bold&#60;/b&#62;"), "{html}");
    assert!(html.contains("&#60;img src=x"), "{html}");
    assert!(
        !html.contains("<img") && !html.contains("<b>bold"),
        "{html}"
    );
    let html = b
        .get(&format!("/tenants/acme/queue/{}", seed.binary))
        .await?
        .text();
    assert!(
        html.contains("the first 1.0 KiB of 2.0 KiB, base64"),
        "{html}"
    );
    let failed_page = format!("/tenants/acme/queue/{}", seed.failed);
    let html = b.get(&failed_page).await?.text();
    for want in [
        "the backend answered 400",
        "<span class=\"badge s4\">400</span>",
        "{&#34;error&#34;: &#34;bad order&#34;}",
        ">Discard</button>",
    ] {
        assert!(html.contains(want), "{want} missing in {html}");
    }
    let retryable = html.contains(&format!("action=\"{failed_page}/retry\""));
    for path in [
        format!("/tenants/other/queue/{}", seed.queued),
        "/tenants/acme/queue/nope".to_string(),
    ] {
        assert_eq!(b.get(&path).await?.status, StatusCode::NOT_FOUND, "{path}");
    }

    // Retry now: what the page offers works; a message that cannot be retried says why (409).
    let a = b
        .post(&format!("{failed_page}/retry"), &form, Some(&base))
        .await?;
    if retryable {
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        assert_eq!(
            a.headers["location"],
            format!("{failed_page}?done=queue-retried").as_str()
        );
    } else {
        assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text());
        assert!(a.text().contains("no longer stored"), "{}", a.text());
        assert!(a.text().contains("<h1>Message"), "{}", a.text());
    }
    let a = b
        .post(
            &format!("/tenants/acme/queue/{}/retry", seed.queued),
            &form,
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text().contains("only failed or expired"), "{}", a.text());

    // Discard: CSRF and same-origin checked; a queued message is cancelled, a failed one
    // deleted, a delivered one stays (409).
    let discard = |id: &str| format!("/tenants/acme/queue/{id}/discard");
    let state = |id: String| {
        let store = relay.store.clone();
        async move { store.message(&id).await.expect("read").map(|m| m.state) }
    };
    let a = b
        .post(&discard(&seed.queued), "csrf=wrong", Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = b
        .post(&discard(&seed.queued), &form, Some("http://evil.example"))
        .await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        state(seed.queued.clone()).await,
        Some(relay_store::QueueState::Queued)
    );
    let a = b
        .post(
            &discard(&seed.queued),
            &format!("{form}&from=list"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(
        a.headers["location"],
        "/tenants/acme/queue?done=queue-cancelled"
    );
    assert_eq!(
        state(seed.queued.clone()).await,
        Some(relay_store::QueueState::Cancelled)
    );
    let html = b
        .get("/tenants/acme/queue?done=queue-cancelled")
        .await?
        .text();
    assert!(html.contains("Message cancelled"), "{html}");
    let a = b.post(&discard(&seed.binary), &form, Some(&base)).await?;
    assert_eq!(
        a.headers["location"],
        format!("/tenants/acme/queue/{}?done=queue-cancelled", seed.binary).as_str()
    );
    if !retryable {
        let a = b.post(&discard(&seed.failed), &form, Some(&base)).await?;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        assert_eq!(
            a.headers["location"],
            "/tenants/acme/queue?done=queue-discarded"
        );
        assert_eq!(state(seed.failed.clone()).await, None);
    }
    let a = b
        .post(&discard(&seed.delivered), &form, Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text().contains("is delivered"), "{}", a.text());
    let a = b
        .post(&discard(&seed.delivered), &form, Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let a = b
        .post(
            &format!("/tenants/other/queue/{hostile}/discard"),
            &form,
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(
        state(hostile.to_string()).await,
        Some(relay_store::QueueState::Queued)
    );

    // Settings: saved; out of range or malformed stays on the form with the reason (422).
    let settings = "/tenants/acme/queue/settings";
    let a = b
        .post(
            settings,
            &format!("{form}&order=ordered&ttl=2h&max_messages=10&max_bytes="),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(
        a.headers["location"],
        "/tenants/acme/queue?done=queue-settings"
    );
    let s = relay.store.queue_settings(&tenant.id.0).await?;
    assert_eq!(
        (s.ordered, s.ttl_ms, s.max_messages, s.max_bytes),
        (true, Some(7_200_000), Some(10), None)
    );
    let html = b
        .get("/tenants/acme/queue?done=queue-settings")
        .await?
        .text();
    assert!(html.contains("Queue settings saved"), "{html}");
    assert!(html.contains("value=\"2h\""), "{html}");
    assert!(
        html.contains("<option value=\"ordered\" selected>"),
        "{html}"
    );
    for (bad, why) in [
        ("ttl=40days", "queue.max_ttl"),
        ("ttl=soon", "not a duration"),
        ("max_messages=0", "must be 1 to"),
        ("max_bytes=lots", "whole number"),
    ] {
        let a = b
            .post(
                settings,
                &format!("{form}&order=parallel&{bad}"),
                Some(&base),
            )
            .await?;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(a.text().contains(why), "{bad}: {}", a.text());
        assert!(a.text().contains("<h1>Queue"), "{}", a.text());
    }
    assert!(relay.store.queue_settings(&tenant.id.0).await?.ordered);

    // Past its retention period a message keeps no body: no Retry now, and a forged retry is
    // refused with the reason.
    let old = purged_message(&relay.store, &tenant).await;
    let html = b.get(&format!("/tenants/acme/queue/{old}")).await?.text();
    assert!(html.contains("The retention period is over"), "{html}");
    assert!(
        html.contains("no longer stored, so it cannot be retried"),
        "{html}"
    );
    assert!(!html.contains(&format!("/queue/{old}/retry")), "{html}");
    let html = b.get("/tenants/acme/queue?state=expired").await?.text();
    assert!(!html.contains(&format!("/queue/{old}/retry")), "{html}");
    let a = b
        .post(
            &format!("/tenants/acme/queue/{old}/retry"),
            &form,
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert!(a.text().contains("no longer stored"), "{}", a.text());

    let actions: Vec<(String, String)> = relay
        .store
        .admin_actions(100)
        .await?
        .into_iter()
        .rev()
        .filter(|a| a.actor == "user:admin")
        .map(|a| (a.action, a.object))
        .collect();
    let entry = |action: &str, object: &str| (action.to_string(), object.to_string());
    let mut want = Vec::new();
    if retryable {
        want.push(entry("queue.retry", &format!("acme/{}", seed.failed)));
    }
    want.push(entry("queue.discard", &format!("acme/{}", seed.queued)));
    want.push(entry("queue.discard", &format!("acme/{}", seed.binary)));
    if !retryable {
        want.push(entry("queue.discard", &format!("acme/{}", seed.failed)));
    }
    want.push(entry("queue.settings", "acme"));
    assert_eq!(actions, want);
    relay.stop().await
}

#[tokio::test]
async fn tenant_page_sets_the_pairing_mode_and_creates_and_revokes_pairing_tokens(
) -> anyhow::Result<()> {
    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    relay.create_tenant("acme").await;
    let id = relay.store.tenant("acme").await?.expect("acme").id.0;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = |rest: &str| format!("csrf={}&{rest}", b.csrf);

    let page = b.get("/tenants/acme").await?.text();
    assert!(page.contains("Pairing for local-first apps"), "{page}");
    assert!(
        page.contains(r#"<option value="off" selected>"#),
        "off by default"
    );

    let a = b
        .post("/tenants/acme/pairing", &form("mode=token"), Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(a.headers["location"], "/tenants/acme?done=pairing");
    assert_eq!(
        relay.store.pairing_mode(&id).await?,
        relay_store::PairingMode::Token
    );
    let page = b.get("/tenants/acme?done=pairing").await?.text();
    assert!(page.contains(r#"<option value="token" selected>"#));
    assert!(page.contains("Pairing mode saved"));
    let a = b
        .post(
            "/tenants/acme/pairing",
            &form("mode=sometimes"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        relay.store.pairing_mode(&id).await?,
        relay_store::PairingMode::Token
    );

    // A token bound to one peer: shown once, never again.
    let a = b
        .post(
            "/tenants/acme/pairing/tokens",
            &form("label=notes+app&peer_id=alice"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let shown = a.text();
    let tokens = relay.store.pairing_tokens("acme").await?;
    assert_eq!(tokens.len(), 1);
    let token = &tokens[0];
    assert_eq!(token.peer_id.as_deref(), Some("alice"));
    assert_eq!(token.label, "notes app");
    let at = shown.find("rpt_").expect("the token is shown");
    let value: String = shown[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(value.contains(&token.id), "{value}");
    assert!(shown.contains("wss://RELAY-HOST/pair/acme/rpt_"));
    let page = b.get("/tenants/acme").await?.text();
    assert!(page.contains(&token.id) && page.contains("alice"));
    assert!(!page.contains(&value), "the token is shown once only");

    let a = b
        .post(
            &format!("/tenants/acme/pairing/tokens/{}/revoke", token.id),
            &form(""),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(
        a.headers["location"],
        "/tenants/acme?done=pairing-token-revoked"
    );
    assert!(relay.store.pairing_tokens("acme").await?[0]
        .revoked_at
        .is_some());
    // Without the session's CSRF token: nothing changes.
    let a = b
        .post("/tenants/acme/pairing", "csrf=wrong&mode=open", Some(&base))
        .await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        relay.store.pairing_mode(&id).await?,
        relay_store::PairingMode::Token
    );
    Ok(())
}

#[tokio::test]
async fn policies_page_sets_rules_by_scope_and_creates_and_revokes_api_keys() -> anyhow::Result<()>
{
    use relay_store::{PolicyScope, Rule};

    trace_init();
    let relay = relay_server::testing::relay().spawn().await;
    relay
        .store
        .create_admin_user("admin", "correct horse battery")
        .await?;
    relay.create_tenant("acme").await;
    relay
        .store
        .add_hostname("acme", "app.acme.test", "app")
        .await?;
    let client = Client::new(&relay.ca_cert());
    let base = format!("http://{}", relay.admin_addr.expect("admin"));
    let b = Browser::start(client.clone(), &base, "admin", "correct+horse+battery").await?;
    let form = |rest: &str| format!("csrf={}&{rest}", b.csrf);

    let page = b.get("/tenants/acme").await?.text();
    assert!(page.contains(r#"href="/tenants/acme/policies""#), "{page}");
    let page = b.get("/tenants/acme/policies").await?.text();
    assert!(page.contains("No access policy"), "{page}");
    // The scope picker offers the hostname and its target.
    assert!(page.contains(r#"<option value="host:app.acme.test">"#));
    assert!(page.contains(r#"<option value="target:app">"#));

    // A deny list at a target: saved, shown, recorded.
    let a = b
        .post(
            "/tenants/acme/policies",
            &form(
                "scope=target%3AApp&kind=deny_ip&state=on&list=203.0.113.0%2F24%0D%0A198.51.100.7",
            ),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(
        a.headers["location"],
        "/tenants/acme/policies?scope=target%3Aapp&done=saved"
    );
    let target = PolicyScope::Target("app".into());
    let rules = relay.store.policy("acme", &target).await?;
    assert_eq!(
        rules.deny_ip,
        Some(vec!["203.0.113.0/24".into(), "198.51.100.7".into()])
    );
    let page = b
        .get("/tenants/acme/policies?scope=target%3Aapp&done=saved")
        .await?
        .text();
    assert!(page.contains("Policy saved"), "{page}");
    assert!(page.contains("203.0.113.0/24, 198.51.100.7"));
    assert!(page.contains(r#"<input type="hidden" name="scope" value="target:app">"#));

    // Invalid input is shown on the page (422) and changes nothing: the store's validation.
    for bad in [
        "scope=target%3Aapp&kind=deny_ip&state=on&list=300.0.0.1",
        "scope=target%3Aapp&kind=api_key&state=on&header=authorization",
        "scope=target%3Aapp&kind=rate_limit&state=on&per_minute=0",
        "scope=target%3Aapp&kind=jwt&state=on&issuer=x",
        "scope=everything&kind=deny_ip&state=inherit",
    ] {
        let a = b
            .post("/tenants/acme/policies", &form(bad), Some(&base))
            .await?;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(a.text().contains(r#"class="error""#), "{bad}");
    }
    assert_eq!(relay.store.policy("acme", &target).await?, rules);

    // The tenant scope: an API key rule and a Basic user (its hash never shown).
    for rest in [
        "scope=tenant&kind=api_key&state=on&header=X-Api-Key",
        "scope=tenant&kind=basic&state=on&realm=staff&user=alice&password=s3cret",
        "scope=tenant&kind=rate_limit&state=on&per_minute=120&burst=",
        "scope=tenant&kind=cors&state=on&origins=https%3A%2F%2Fapp.example&credentials=on",
    ] {
        let a = b
            .post("/tenants/acme/policies", &form(rest), Some(&base))
            .await?;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{rest}: {}", a.text());
    }
    let tenant = relay.store.policy("acme", &PolicyScope::Tenant).await?;
    assert_eq!(
        tenant
            .api_key
            .as_ref()
            .and_then(Rule::on)
            .map(|k| k.header.as_str()),
        Some("x-api-key")
    );
    let basic = tenant.basic.as_ref().and_then(Rule::on).expect("basic on");
    assert_eq!(basic.realm, "staff");
    assert!(relay_store::verify_password("s3cret", &basic.users["alice"]).await?);
    let limit = tenant
        .rate_limit
        .as_ref()
        .and_then(Rule::on)
        .expect("limit");
    assert_eq!((limit.per_minute, limit.burst), (120, 120));
    let cors = tenant.cors.as_ref().and_then(Rule::on).expect("cors");
    assert!(cors.allow_credentials && cors.allow_methods.len() == 5);
    let page = b.get("/tenants/acme/policies").await?.text();
    assert!(page.contains("alice") && page.contains("required in header x-api-key"));
    assert!(
        !page.contains("$argon2id$"),
        "a Basic hash reached the page"
    );

    // Off overrides; inherit removes the kind; removing the last Basic user removes the rule.
    let a = b
        .post(
            "/tenants/acme/policies",
            &form("scope=tenant&kind=api_key&state=off"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        relay
            .store
            .policy("acme", &PolicyScope::Tenant)
            .await?
            .api_key,
        Some(Rule::Off)
    );
    let a = b
        .post(
            "/tenants/acme/policies",
            &form("scope=tenant&kind=basic_remove&user=alice"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
    assert_eq!(
        relay
            .store
            .policy("acme", &PolicyScope::Tenant)
            .await?
            .basic,
        None
    );

    // Clearing a scope removes its row.
    let a = b
        .post(
            "/tenants/acme/policies/clear",
            &form("scope=target%3Aapp"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(relay.store.policy("acme", &target).await?.is_empty());

    // API keys: shown once, listed by id, revoked.
    let a = b
        .post(
            "/tenants/acme/api-keys",
            &form("label=partner"),
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let shown = a.text();
    let keys = relay.store.api_keys("acme").await?;
    assert_eq!(keys.len(), 1);
    let at = shown.find("rak_").expect("the key is shown");
    let value: String = shown[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(value.contains(&keys[0].id) && value.len() > 40, "{value}");
    let page = b.get("/tenants/acme/policies").await?.text();
    assert!(page.contains(&keys[0].id) && page.contains("partner"));
    assert!(!page.contains(&value), "the key is shown once only");
    let revoke = format!("/tenants/acme/api-keys/{}/revoke", keys[0].id);
    let a = b.post(&revoke, "csrf=wrong", Some(&base)).await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = b.post(&revoke, &form(""), Some(&base)).await?;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(
        a.headers["location"],
        "/tenants/acme/policies?done=key-revoked"
    );
    assert!(relay.store.api_keys("acme").await?[0].revoked_at.is_some());
    assert_eq!(
        b.post(&revoke, &form(""), Some(&base)).await?.status,
        StatusCode::NOT_FOUND
    );

    // Without the CSRF token nothing changes.
    let a = b
        .post(
            "/tenants/acme/policies",
            "csrf=wrong&scope=tenant&kind=deny_ip&state=on&list=0.0.0.0%2F0",
            Some(&base),
        )
        .await?;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        relay
            .store
            .policy("acme", &PolicyScope::Tenant)
            .await?
            .deny_ip,
        None
    );
    let actions = relay.store.admin_actions(100).await?;
    for (action, object) in [
        ("tenant.policy", "acme [target:app]".to_string()),
        ("tenant.policy", "acme [tenant]".to_string()),
        ("api_key.create", format!("acme/{}", keys[0].id)),
        ("api_key.revoke", format!("acme/{}", keys[0].id)),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.action == action && a.object == object && a.actor == "user:admin"),
            "{action} {object} not in {actions:?}"
        );
    }
    Ok(())
}
