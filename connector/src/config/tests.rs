use super::*;

fn base() -> FileConfig {
    let mut targets = BTreeMap::new();
    targets.insert(
        "App".into(),
        TargetFile {
            url: "http://127.0.0.1:8080/api".into(),
            ..Default::default()
        },
    );
    FileConfig {
        server: Some("https://relay.example.com".into()),
        tenant: Some("Demo".into()),
        secret: Some(Secret::new("x")),
        targets,
        ..Default::default()
    }
}

#[test]
fn transports_and_proxies_are_validated() {
    let mut f = base();
    f.transport = Some("tcp".into());
    assert_eq!(
        Config::from_file(f, None).unwrap().transport,
        TransportMode::Tcp
    );
    let mut f = base();
    f.transport = Some("udp".into());
    assert!(Config::from_file(f, None).is_err());

    let mut f = base();
    f.proxy = Some("http://al%40ice:p%3Ass@proxy.local:3128/".into());
    let c = Config::from_file(f, None).unwrap();
    let p = c.proxy.unwrap();
    assert_eq!((p.host.as_str(), p.port), ("proxy.local", 3128));
    assert_eq!(p.credentials.unwrap().expose(), "al@ice:p:ss");
    let mut f = base();
    f.proxy = Some("http://[::1]".into());
    let p = Config::from_file(f, None).unwrap().proxy.unwrap();
    assert_eq!((p.host.as_str(), p.port), ("::1", 80));

    for bad in [
        "https://proxy:3128",
        "proxy:3128",
        "http://user@proxy:3128",
        "http://proxy:99999",
    ] {
        let mut f = base();
        f.proxy = Some(bad.into());
        assert!(Config::from_file(f, None).is_err(), "{bad}");
    }
    // The password never shows in the error.
    let mut f = base();
    f.proxy = Some("ftp://u:topsecret@proxy:1".into());
    let err = Config::from_file(f, None).unwrap_err().to_string();
    assert!(!err.contains("topsecret"), "{err}");
    // A proxy carries TCP only.
    let mut f = base();
    f.proxy = Some("http://proxy:3128".into());
    f.transport = Some("quic".into());
    assert!(Config::from_file(f, None).is_err());
}

#[test]
fn https_proxy_and_no_proxy_from_the_environment() {
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let server = Some("https://relay.example.com:8443");
    assert_eq!(
        proxy_from_env(&env(&[("HTTPS_PROXY", "http://p:3128")]), server).as_deref(),
        Some("http://p:3128")
    );
    assert_eq!(
        proxy_from_env(&env(&[("https_proxy", "http://p:1")]), server).as_deref(),
        Some("http://p:1")
    );
    for no in [
        "example.com",
        ".example.com",
        "*",
        "other, relay.example.com:8443",
        "RELAY.example.com",
    ] {
        let vars = env(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", no)]);
        assert_eq!(proxy_from_env(&vars, server), None, "{no}");
    }
    let vars = env(&[
        ("HTTPS_PROXY", "http://p:3128"),
        ("no_proxy", "ample.com,localhost"),
    ]);
    assert!(proxy_from_env(&vars, server).is_some());
    assert!(proxy_from_env(&env(&[("HTTP_PROXY", "http://p:1")]), server).is_none());
}

#[test]
fn valid_config_is_canonicalised() {
    let c = Config::from_file(base(), None).unwrap();
    assert_eq!(
        (c.server_host.as_str(), c.server_port),
        ("relay.example.com", 443)
    );
    assert_eq!(c.tenant, "demo");
    assert!(c.targets.contains_key("app"));
    assert_eq!(c.targets["app"].timeout, DEFAULT_TARGET_TIMEOUT);
}

#[test]
fn bad_settings_are_refused() {
    let mut f = base();
    f.server = Some("http://relay".into());
    assert!(Config::from_file(f, None).is_err());
    let mut f = base();
    f.targets.insert(
        "x".into(),
        TargetFile {
            url: "ftp://a".into(),
            ..Default::default()
        },
    );
    assert!(Config::from_file(f, None).is_err());
    let mut f = base();
    f.tenant = Some("a/b".into());
    assert!(Config::from_file(f, None).is_err());
    let mut f = base();
    f.targets.clear();
    assert!(Config::from_file(f, None).is_err());
    let mut f = base();
    f.secret = None;
    assert!(Config::from_file(f, None)
        .unwrap_err()
        .to_string()
        .contains("secret_file"));
}

#[test]
fn target_flags_parse_options() {
    let (n, t) = parse_target_flag("api=https://10.0.0.1:8443,timeout=5s,insecure,http2").unwrap();
    assert!(t.http2);
    assert!(!t.preserve_host);
    let (_, p) = parse_target_flag("web=http://10.0.0.1,preserve-host").unwrap();
    assert!(p.preserve_host);
    assert_eq!(n, "api");
    assert_eq!(t.timeout, Some(Duration::from_secs(5)));
    assert!(t.insecure);
    assert!(parse_target_flag("api").is_err());
    assert!(parse_target_flag("api=http://x,bogus").is_err());
    let (_, u) = parse_target_flag("a=http://x,upgrade=x-custom,upgrade=websocket").unwrap();
    assert_eq!(
        u.upgrades,
        Some(vec!["x-custom".to_string(), "websocket".to_string()])
    );
    let (_, u) = parse_target_flag("a=http://x,no-upgrades").unwrap();
    assert_eq!(u.upgrades, Some(Vec::new()));
}

#[test]
fn upgrades_default_to_websocket_and_never_allow_h2c() {
    let c = Config::from_file(base(), None).unwrap();
    assert_eq!(c.targets["app"].upgrades, ["websocket"]);
    assert!(c.targets["app"].allows_upgrade("WebSocket"));
    assert!(!c.targets["app"].allows_upgrade("h2c"));
    for (list, ok) in [
        (vec![], true),
        (vec!["Foo"], true),
        (vec!["h2c"], false),
        (vec!["websocket", "H2C"], false),
        (vec!["web socket"], false),
        (vec![""], false),
    ] {
        let mut f = base();
        let t = f.targets.get_mut("App").unwrap();
        t.upgrades = Some(list.iter().map(|s| s.to_string()).collect());
        assert_eq!(Config::from_file(f, None).is_ok(), ok, "{list:?}");
    }
}

#[test]
fn the_inspector_is_off_by_default_and_loopback_only() {
    assert!(Config::from_file(base(), None).unwrap().inspect.is_none());
    let with = |listen: &str, remote: bool, f: fn(&mut InspectFile)| {
        let mut c = base();
        c.inspect.listen = Some(listen.into());
        c.inspect.allow_remote = remote;
        f(&mut c.inspect);
        Config::from_file(c, None)
    };
    let i = with("127.0.0.1:4040", false, |i| {
        i.redact = vec!["X-Api-Key".into()]
    })
    .unwrap()
    .inspect
    .unwrap();
    assert_eq!((i.entries, i.body_bytes), (100, 16 * 1024));
    let names: Vec<&str> = i.redact.iter().map(|h| h.as_str()).collect();
    assert_eq!(
        names,
        [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key"
        ]
    );
    assert!(with("[::1]:4040", false, |_| {}).is_ok());
    let e = with("0.0.0.0:4040", false, |_| {}).unwrap_err().to_string();
    assert!(e.contains("loopback") && e.contains("allow_remote"), "{e}");
    assert!(with("0.0.0.0:4040", true, |_| {}).is_ok());
    assert!(with("localhost", false, |_| {}).is_err());
    assert!(with("127.0.0.1:1", false, |i| i.entries = Some(0)).is_err());
    assert!(with("127.0.0.1:1", false, |i| i.body_bytes = Some(2 << 20)).is_err());
    assert!(with("127.0.0.1:1", false, |i| i.redact =
        vec!["bad header".into()])
    .is_err());
}
