//! Relay nodes sharing one database, as real processes: the node registry on PostgreSQL (`node
//! list`, a node killed with -9 leaving it, a clean stop), SQLite refusing a second node, and
//! `node drain` / `node resume`.

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
