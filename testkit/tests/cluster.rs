//! Relay nodes sharing one database, as real processes: the node registry on PostgreSQL (`node
//! list`, a node killed with -9 leaving it, a clean stop), SQLite refusing a second node,
//! `node drain` / `node resume`, and the queue commands (`tenant queue`, `queue …`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::process::{bin, RelayProcess};
use testkit::PgCluster;

/// Fast registry settings, so that the test need not wait the production 15 s.
const FAST: [(&str, &str); 2] = [
    ("RELAY_CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
    ("RELAY_CLUSTER__NODE_TIMEOUT", "1s"),
];

/// Starts `relay-server run` on `database_url` as node `name`; returns it with its HTTPS port, or
/// what it logged if it exits first.
fn start_relay(
    data_dir: &Path,
    database_url: &str,
    name: &str,
) -> Result<(RelayProcess, u16), String> {
    let mut envs = vec![("RELAY_NODE_NAME", name)];
    envs.extend(FAST);
    let args = [
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
        "--database-url".as_ref(),
        database_url.as_ref(),
        "run".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    let relay: RelayProcess = testkit::process::start_relay::<&std::ffi::OsStr>(&args, &envs)?;
    let port = relay.https.port();
    Ok((relay, port))
}

/// `relay-server node list` against `database_url`: (name, advertise) per live node.
fn node_list(data_dir: &Path, database_url: &str) -> Vec<(String, String)> {
    let out = Command::new(bin("relay-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", database_url, "node", "list"])
        .envs(FAST)
        .output()
        .expect("run relay-server node list");
    assert!(
        out.status.success(),
        "node list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.get(4)?.to_string()))
        })
        .collect()
}

/// Polls `node list` (≤ 10 s) until `want` holds.
fn until_nodes(
    data_dir: &Path,
    url: &str,
    what: &str,
    want: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let nodes = node_list(data_dir, url);
        if want(&nodes) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: node list shows {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_register_leave_when_killed_and_unregister_on_stop() {
    let pg = PgCluster::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    // Nodes share keys/ (and here the whole data directory): the first creates it.
    let (mut alpha, alpha_port) = start_relay(dir.path(), &url, "alpha").unwrap();
    let (mut beta, beta_port) = start_relay(dir.path(), &url, "beta").unwrap();
    until_nodes(dir.path(), &url, "both nodes registered", |n| {
        n.contains(&("alpha".into(), format!("127.0.0.1:{alpha_port}")))
            && n.contains(&("beta".into(), format!("127.0.0.1:{beta_port}")))
            && n.len() == 2
    });

    // kill -9: no goodbye; the row goes stale (node_timeout 1 s) and is no longer listed.
    beta.child.kill();
    let gone = until_nodes(dir.path(), &url, "the killed node left", |n| {
        n.iter().map(|(name, _)| name.as_str()).eq(["alpha"])
    });
    assert!(gone < Duration::from_secs(5), "listed for {gone:?}");

    // The survivor deletes the stale row (after twice node_timeout).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(relay_store::Store::connect(&url)).unwrap();
    let rows = || rt.block_on(store.nodes(i64::MAX / 2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows().iter().any(|n| n.name == "beta") {
        assert!(Instant::now() < deadline, "the killed node's row stayed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A clean stop deletes the node's own row.
    let pid = alpha.pid();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(40);
    while alpha.child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "alpha did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rows().is_empty(), "rows left: {:?}", rows());
}

#[test]
fn a_second_relay_on_one_sqlite_file_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let (_first, _) = start_relay(dir.path(), &url, "first").unwrap();
    let err = match start_relay(dir.path(), &url, "second") {
        Ok(_) => panic!("a second relay served from the same SQLite file"),
        Err(log) => log,
    };
    assert!(
        err.contains("SQLite serves one relay node") && err.contains("PostgreSQL"),
        "{err}"
    );
    // The CLI still works beside the running relay (it takes no lock).
    assert!(node_list(dir.path(), &url)
        .iter()
        .any(|(name, _)| name == "first"));
}

/// `relay-server node ARGS…` against the SQLite database in `data_dir`.
fn node_cli(data_dir: &Path, args: &[&str]) -> std::process::Output {
    let url = format!("sqlite://{}", data_dir.join("relay.db").display());
    Command::new(bin("relay-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", &url, "node"])
        .args(args)
        .output()
        .expect("run relay-server node")
}

#[test]
fn node_drain_and_resume_take_a_name_or_an_id_and_say_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(relay_store::Store::connect(&url)).unwrap();
    let node = |id: &str, name: &str| relay_store::NodeRecord {
        id: id.into(),
        name: name.into(),
        advertise: None,
        public_address: None,
        state: relay_store::NodeState::Active,
        started_at: relay_store::now_ms(),
        heartbeat_at: 0,
    };
    for (id, name) in [("a1", "alpha"), ("h1", "host"), ("h2", "host")] {
        rt.block_on(store.register_node(&node(id, name))).unwrap();
    }
    rt.block_on(store.session_opened(&relay_store::SessionRecord {
        id: "s1".into(),
        tenant: "acme".into(),
        relay_node: "alpha".into(),
        connector_id: "c1".into(),
        connector_version: "connector/1".into(),
        transport: "quic".into(),
        remote_addr: "192.0.2.1:1".into(),
        connected_at: relay_store::now_ms(),
        disconnected_at: None,
        close_code: None,
        node_id: Some("a1".into()),
        targets: Vec::new(),
    }))
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let state = |id: &str| {
        rt.block_on(store.nodes(15_000))
            .unwrap()
            .into_iter()
            .find(|n| n.id == id)
            .map(|n| n.state)
    };

    // node list: the SESSIONS column.
    let out = node_cli(dir.path(), &["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list = text(&out.stdout);
    assert!(list.lines().next().unwrap().contains("SESSIONS"), "{list}");
    let alpha: Vec<String> = list
        .lines()
        .find(|l| l.starts_with("alpha "))
        .expect("alpha listed")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(alpha[5], "1", "{list}");

    let out = node_cli(dir.path(), &["drain", "alpha"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("alpha (a1) is draining") && said.contains("next heartbeat"),
        "{said}"
    );
    assert_eq!(state("a1"), Some(relay_store::NodeState::Draining));
    let list = text(&node_cli(dir.path(), &["list"]).stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("alpha ") && l.contains(" draining ")),
        "{list}"
    );
    let out = node_cli(dir.path(), &["resume", "a1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("is active"));
    assert_eq!(state("a1"), Some(relay_store::NodeState::Active));

    // Errors exit non-zero and say what to do; nothing changes.
    let out = node_cli(dir.path(), &["drain", "host"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("use the node id"),
        "{}",
        text(&out.stderr)
    );
    let out = node_cli(dir.path(), &["drain", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("nobody") && err.contains("node list"), "{err}");
    assert_eq!(state("h1"), Some(relay_store::NodeState::Active));
    assert_eq!(state("h2"), Some(relay_store::NodeState::Active));

    let log: Vec<(String, String, String)> = rt
        .block_on(store.admin_actions(10))
        .unwrap()
        .into_iter()
        .rev()
        .map(|a| (a.actor, a.action, a.object))
        .collect();
    let entry = |action: &str| {
        (
            "cli".to_string(),
            action.to_string(),
            "alpha/a1".to_string(),
        )
    };
    assert_eq!(log, [entry("node.drain"), entry("node.resume")]);
}

/// `relay-server ARGS…` against the SQLite database in `data_dir`, with extra environment.
fn cli(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let url = format!("sqlite://{}", data_dir.join("relay.db").display());
    Command::new(bin("relay-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--database-url", &url])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run relay-server")
}

#[test]
fn queue_commands_show_and_change_settings_and_list_show_retry_and_discard_messages() {
    use relay_store::{Finish, NewMessage, QueueQuota, QueueState};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(relay_store::Store::connect(&url)).unwrap();
    let tenant = rt.block_on(store.create_tenant("acme")).unwrap();
    let new = |id: &str, body: &[u8]| NewMessage {
        id: id.into(),
        tenant_id: tenant.id.0.clone(),
        tenant: "acme".into(),
        target: "app".into(),
        method: "POST".into(),
        path: format!("/orders/{id}"),
        headers: r#"[{"n":"content-type","v":"application/json"}]"#.into(),
        body: body.to_vec(),
        idempotency_key: None,
        ttl_ms: 3_600_000,
    };
    let (failed, queued) = ("0f".repeat(16), "0a".repeat(16));
    rt.block_on(store.enqueue(&new(&failed, b"{}"), QueueQuota::default()))
        .unwrap();
    rt.block_on(store.claim(&tenant.id.0, "n1", 60_000, 10))
        .unwrap();
    let finish = Finish::Failed {
        error: "the backend answered 400".into(),
        response: None,
    };
    assert!(rt
        .block_on(store.finish_attempt(&failed, 1, &finish))
        .unwrap());
    rt.block_on(store.enqueue(&new(&queued, b"{\"order\": 42}"), QueueQuota::default()))
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    let ok = |env: &[(&str, &str)], args: &[&str]| {
        let out = cli(dir.path(), env, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let fails = |env: &[(&str, &str)], args: &[&str]| {
        let out = cli(dir.path(), env, args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            text(&out.stdout)
        );
        (out.status.code(), text(&out.stderr))
    };
    let settings = || rt.block_on(store.queue_settings(&tenant.id.0)).unwrap();

    // Settings and counts, with the relay's defaults named.
    let said = ok(&[], &["tenant", "queue", "acme"]);
    for want in [
        "order:         parallel",
        "ttl:           1day (relay default)",
        "max messages:  100000 (relay default)",
        "queued:        1 (oldest waiting",
        "failed:        1",
        "delivered:     0",
    ] {
        assert!(said.contains(want), "{want} missing in {said}");
    }

    // Changing them; a time to live over the relay's queue.max_ttl, or conflicting flags, fail.
    let said = ok(
        &[],
        &[
            "tenant",
            "queue",
            "acme",
            "--ordered",
            "--ttl",
            "2h",
            "--max-messages",
            "10",
        ],
    );
    assert!(
        said.contains("queue settings of tenant acme updated"),
        "{said}"
    );
    assert!(said.contains("order:         ordered"), "{said}");
    assert!(said.contains("ttl:           2h\n"), "{said}");
    let s = settings();
    assert_eq!(
        (s.ordered, s.ttl_ms, s.max_messages, s.max_bytes),
        (true, Some(7_200_000), Some(10), None)
    );
    let (code, err) = fails(
        &[("RELAY_QUEUE__MAX_TTL", "1day")],
        &["tenant", "queue", "acme", "--ttl", "2days"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("longer than the relay's queue.max_ttl (1day)"),
        "{err}"
    );
    let (_, err) = fails(&[], &["tenant", "queue", "acme", "--max-bytes", "0"]);
    assert!(err.contains("--max-bytes must be 1 to"), "{err}");
    let (code, _) = fails(
        &[],
        &["tenant", "queue", "acme", "--ttl", "1h", "--default-ttl"],
    );
    assert_eq!(code, Some(2), "clap refuses conflicting flags");
    let (code, err) = fails(&[], &["tenant", "queue", "nobody"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("tenant nobody not found"), "{err}");
    assert_eq!(settings().ttl_ms, Some(7_200_000));
    let said = ok(
        &[],
        &["tenant", "queue", "acme", "--parallel", "--default-ttl"],
    );
    assert!(
        said.contains("ttl:           1day (relay default)"),
        "{said}"
    );
    assert_eq!((settings().ordered, settings().ttl_ms), (false, None));
    // Nothing to change: nothing recorded.
    ok(&[], &["tenant", "queue", "acme", "--parallel"]);

    // List, filtered; show.
    let list = ok(&[], &["queue", "list", "acme"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{list}"
    );
    assert!(
        lines[1].starts_with(&queued) && lines[2].starts_with(&failed),
        "{list}"
    );
    assert!(lines[2].contains("the backend answered 400"), "{list}");
    let list = ok(&[], &["queue", "list", "acme", "--state", "failed"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    let (_, err) = fails(&[], &["queue", "list", "acme", "--state", "lost"]);
    assert!(err.contains("use one of queued, delivering"), "{err}");
    let said = ok(&[], &["queue", "show", &queued]);
    for want in [
        "state:         queued",
        "request:       POST /orders/",
        "  content-type: application/json",
        "request body (13 bytes):\n{\"order\": 42}",
    ] {
        assert!(said.contains(want), "{want} missing in {said}");
    }
    let (_, err) = fails(&[], &["queue", "show", "nope"]);
    assert!(err.contains("no queue message has the id nope"), "{err}");

    // Retry: only failed or expired messages, and only while the body is stored.
    let (_, err) = fails(&[], &["queue", "retry", &queued]);
    assert!(err.contains("only failed or expired"), "{err}");
    let body_kept = !ok(&[], &["queue", "show", &failed]).contains("no longer stored");
    let out = cli(dir.path(), &[], &["queue", "retry", &failed]);
    if body_kept {
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("queued again"));
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("no longer stored"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(
            rt.block_on(store.message(&failed))
                .unwrap()
                .map(|m| m.state),
            Some(QueueState::Failed)
        );
    }

    // Discard: cancel a queued message, then delete it; delete a failed one.
    let said = ok(&[], &["queue", "discard", &queued]);
    assert!(said.contains("cancelled"), "{said}");
    let said = ok(&[], &["queue", "discard", &queued]);
    assert!(said.contains("deleted"), "{said}");
    assert!(rt.block_on(store.message(&queued)).unwrap().is_none());
    let (_, err) = fails(&[], &["queue", "discard", &queued]);
    assert!(err.contains("no queue message"), "{err}");
    // Past its retention period a message keeps no body: it cannot be retried.
    let mut old = new(&"ee".repeat(16), b"old");
    old.ttl_ms = -1;
    rt.block_on(store.enqueue(&old, QueueQuota::default()))
        .unwrap();
    rt.block_on(store.expire_messages()).unwrap();
    rt.block_on(store.purge_messages(-1)).unwrap();
    let said = ok(&[], &["queue", "show", &old.id]);
    assert!(said.contains("purged"), "{said}");
    let (code, err) = fails(&[], &["queue", "retry", &old.id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no longer stored"), "{err}");

    let log: Vec<(String, String)> = rt
        .block_on(store.admin_actions(20))
        .unwrap()
        .into_iter()
        .rev()
        .map(|a| {
            assert_eq!(a.actor, "cli");
            (a.action, a.object)
        })
        .collect();
    let entry = |action: &str, object: &str| (action.to_string(), object.to_string());
    let mut want = vec![
        entry("queue.settings", "acme"),
        entry("queue.settings", "acme"),
    ];
    if body_kept {
        want.push(entry("queue.retry", &format!("acme/{failed}")));
    }
    want.push(entry("queue.discard", &format!("acme/{queued}")));
    want.push(entry("queue.discard", &format!("acme/{queued}")));
    assert_eq!(log, want);
}
