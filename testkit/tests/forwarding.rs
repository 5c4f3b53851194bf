//! Cross-node forwarding, as real processes: relay nodes sharing one PostgreSQL database and one
//! `keys/`, connectors on some nodes, visitors sent to every node. Covers the cluster issue's
//! "done when": round-robin over three nodes (a 1 GiB download with bounded memory, a WebSocket
//! echo and gRPC through a node that holds no session), kill -9 of the node holding the sessions,
//! a drain under load with a node joining, two connectors with different targets, and connectors
//! spreading their sessions over the nodes the cluster lists.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use testkit::process::{
    bin, relay_cli, rss_kib, start_relay, ChildGuard, RelayProcess, RssSampler,
};
use testkit::{eventually, pattern_sha256, trace_init, Backend, Client, PgCluster};

mod common;

/// Fast registry settings, so that a test need not wait the production 15 s.
const FAST: [(&str, &str); 2] = [
    ("RELAY_CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
    ("RELAY_CLUSTER__NODE_TIMEOUT", "2s"),
];

/// A request that takes longer than this hangs.
const NO_HANG: Duration = Duration::from_secs(15);

/// Bytes of the large download; `TRANSFER_BYTES` overrides it for quick local runs.
fn transfer_bytes() -> u64 {
    std::env::var("TRANSFER_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// A TCP and UDP port free on 127.0.0.1 right now (for nodes that publish their address).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One PostgreSQL, one data directory (keys, certificate) shared by every node, tenant `acme`.
struct Cluster {
    _pg: PgCluster,
    url: String,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client: Client,
}

/// How a node is started.
#[derive(Clone, Copy, Default)]
struct NodeOptions {
    /// Publish `127.0.0.1:PORT` to connectors (`cluster.public_address`).
    public: bool,
    /// An admin listener (for `/readyz`).
    admin: bool,
}

impl Cluster {
    fn new() -> Cluster {
        let pg = PgCluster::start();
        let url = pg.url();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let (cert, key) = common::certificate(&certs, &["localhost", "*.acme.tunnel.test"]);
        let client = Client::new(&cert);
        Cluster {
            _pg: pg,
            url,
            dir,
            cert,
            key,
            client,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A relay node named `name` on a port of its own.
    fn node(&self, name: &str, opts: NodeOptions) -> RelayProcess {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let (cert, key) = (
            self.cert.display().to_string(),
            self.key.display().to_string(),
        );
        let mut envs = vec![
            ("RELAY_NODE_NAME", name),
            ("RELAY_TLS__CERT", cert.as_str()),
            ("RELAY_TLS__KEY", key.as_str()),
            ("RELAY_ROUTING__BASE_DOMAIN", "tunnel.test"),
            ("RELAY_LIMITS__MAX_BODY_BYTES", "2147483648"),
        ];
        envs.extend(FAST);
        if opts.public {
            envs.push(("RELAY_CLUSTER__PUBLIC_ADDRESS", listen.as_str()));
        }
        let dir = self.dir().display().to_string();
        let mut args = vec![
            "--data-dir",
            &dir,
            "--database-url",
            &self.url,
            "run",
            "--listen",
            &listen,
            "--listen-http",
            "127.0.0.1:0",
        ];
        if opts.admin {
            args.extend(["--admin", "127.0.0.1:0"]);
        }
        start_relay(&args, &envs).expect("relay node starts")
    }

    /// Tenant `acme` and a credential; the secret goes to `DATA_DIR/secret`.
    fn provision(&self) {
        let url = self.url.as_str();
        relay_cli(
            self.dir(),
            &["--database-url", url, "tenant", "create", "acme"],
        );
        let out = relay_cli(
            self.dir(),
            &[
                "--database-url",
                url,
                "tenant",
                "credential",
                "create",
                "acme",
            ],
        );
        let secret = out.lines().last().expect("secret line").trim();
        std::fs::write(self.dir().join("secret"), secret).unwrap();
    }

    /// `connector run` against `node` with `targets` (`NAME=URL[,flags]`) and `sessions` slots.
    fn connector(&self, node: &RelayProcess, targets: &[String], sessions: u32) -> ChildGuard {
        let mut cmd = Command::new(bin("connector"));
        cmd.args(["run", "--tenant", "acme"])
            .arg("--server")
            .arg(format!("https://localhost:{}", node.https.port()))
            .arg("--secret-file")
            .arg(self.dir().join("secret"))
            .arg("--ca-cert")
            .arg(&self.cert)
            .env("CONNECTOR_SESSION__BACKOFF_CAP", "1s")
            .env("CONNECTOR_SESSION__COUNT", sessions.to_string());
        for t in targets {
            cmd.args(["--target", t]);
        }
        ChildGuard::spawn(cmd)
    }

    fn url(&self, node: &RelayProcess, path: &str) -> String {
        format!("https://localhost:{}{path}", node.https.port())
    }

    /// Waits (≤ 30 s) until `path` through `node` answers 200.
    async fn until_ok(&self, node: &RelayProcess, path: &str) {
        let url = self.url(node, path);
        eventually(Duration::from_secs(30), &format!("200 from {url}"), || {
            let url = url.clone();
            async move {
                match tokio::time::timeout(NO_HANG, self.client.get(&url)).await {
                    Ok(Ok(a)) if a.status == StatusCode::OK => Ok(()),
                    Ok(Ok(a)) => Err(a.status.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("hung".to_string()),
                }
            }
        })
        .await;
    }

    /// Live sessions per node name, from the store.
    async fn sessions_by_node(&self) -> Vec<(String, u64)> {
        let store = relay_store::Store::connect(&self.url).await.unwrap();
        let nodes = store.nodes(2_000).await.unwrap();
        let counts = store.node_session_counts().await.unwrap();
        let mut out: Vec<(String, u64)> = nodes
            .iter()
            .map(|n| (n.name.clone(), counts.get(&n.id).copied().unwrap_or(0)))
            .filter(|(_, c)| *c > 0)
            .collect();
        out.sort();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_a_tenant_whose_connector_is_on_one() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::new();
    let nodes: Vec<RelayProcess> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.node(n, NodeOptions::default()))
        .collect();
    c.provision();
    let backend = Backend::spawn().await;
    let grpc = GrpcServer::start();
    let _connector = c.connector(
        &nodes[0],
        &[
            format!("app={}", backend.url()),
            format!("grpc=http://127.0.0.1:{},http2", grpc.port),
        ],
        2,
    );
    for n in &nodes {
        c.until_ok(n, "/relay/acme/app/ready").await;
    }
    // Nodes publish no address of their own here: every session is on alpha.
    assert_eq!(c.sessions_by_node().await, [("alpha".to_string(), 2)]);

    // Round-robin over the three nodes: every request succeeds with the backend's answer.
    for i in 0..30 {
        let node = &nodes[i % 3];
        let a = c
            .client
            .get(&c.url(node, &format!("/relay/acme/app/echo/{i}")))
            .await?;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "request {i} through node {}",
            i % 3
        );
        assert_eq!(a.headers["x-echo-path"], format!("/echo/{i}").as_str());
    }

    // The audit record of a forwarded request names both nodes and the session that served it.
    let a = c
        .client
        .get(&c.url(&nodes[1], "/relay/acme/app/audited"))
        .await?;
    let id = a.headers["x-relay-request-id"].to_str()?.to_string();
    let store = relay_store::Store::connect(&c.url).await?;
    let record = eventually(
        Duration::from_secs(10),
        "the audit record is written",
        || {
            let (store, id) = (store.clone(), id.clone());
            async move {
                store
                    .audit(Some("acme"), 1000)
                    .await
                    .ok()
                    .and_then(|rs| rs.into_iter().find(|r| r.request_id == id))
            }
        },
    )
    .await;
    assert_eq!(record.relay_node, "beta");
    assert_eq!(record.session_node.as_deref(), Some("alpha"));
    assert_eq!(record.session_id.len(), 32, "{record:?}");
    assert_eq!(record.status, 200);

    // A WebSocket echo through gamma (plain HTTP there, to keep the client small).
    let http = nodes[2].http.expect("gamma's plain-HTTP address");
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(b"GET /relay/acme/app/upgrade-echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await??;
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for msg in [&b"ping"[..], &[0x42; 100_000][..]] {
        s.write_all(msg).await?;
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo)).await??;
        assert_eq!(echo, msg);
    }
    drop(s);

    // gRPC of every kind through beta, by hostname.
    grpc.call(nodes[1].https.port(), &c.cert);

    // A large download through beta: intact, and beta's memory stays flat.
    let total = transfer_bytes();
    let _ = c
        .client
        .get(&c.url(&nodes[1], "/relay/acme/app/bytes/10000000"))
        .await?;
    let beta = nodes[1].pid();
    let (base, sampler) = (rss_kib(beta), RssSampler::start(beta));
    let started = Instant::now();
    let req = http::Request::get(c.url(&nodes[1], &format!("/relay/acme/app/bytes/{total}")))
        .body(testkit::client::Body::default())?;
    let resp = c.client.send(req).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            got += d.len() as u64;
            digest.update(&d);
        }
    }
    let growth = sampler.finish().saturating_sub(base);
    eprintln!(
        "{total} bytes through a non-owning node: {:.0} MiB/s, its RSS grew {growth} KiB (base {base})",
        total as f64 / 1048576.0 / started.elapsed().as_secs_f64()
    );
    assert_eq!(got, total);
    assert_eq!(
        testkit::hex(digest.finish().as_ref()),
        pattern_sha256(total)
    );
    assert!(growth < 64 * 1024, "beta's RSS grew {growth} KiB");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connectors_with_different_targets_serve_both_through_every_node() -> anyhow::Result<()>
{
    trace_init();
    let c = Cluster::new();
    let nodes: Vec<RelayProcess> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.node(n, NodeOptions::default()))
        .collect();
    c.provision();
    let backend = Backend::spawn().await;
    let _app = c.connector(&nodes[0], &[format!("app={}", backend.url())], 1);
    let _echo = c.connector(&nodes[1], &[format!("echo={}", backend.url())], 1);
    for n in &nodes {
        c.until_ok(n, "/relay/acme/app/ready").await;
        c.until_ok(n, "/relay/acme/echo/ready").await;
    }
    for round in 0..5 {
        for (i, n) in nodes.iter().enumerate() {
            for target in ["app", "echo"] {
                let a = c
                    .client
                    .get(&c.url(n, &format!("/relay/acme/{target}/r{round}")))
                    .await?;
                assert_eq!(a.status, StatusCode::OK, "{target} through node {i}");
            }
        }
    }
    // A target nobody serves is 404 wherever it is asked.
    for n in &nodes {
        let a = c.client.get(&c.url(n, "/relay/acme/nothing/x")).await?;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    Ok(())
}

/// A connector that resets a request's stream before answering: the visitor gets 502 through
/// the node holding its session and through one that forwards, not 503 as if the node link had
/// failed; and the forwarding node keeps forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_reset_before_the_answer_is_a_bad_gateway_on_every_node() -> anyhow::Result<()>
{
    use bytes::BytesMut;
    use tunnel_protocol::{ControlFrame, Credential, ErrorCode, ResponseHead, StreamFrame};

    /// Answers `…/reset` with a reset and anything else with an empty 200.
    async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let Some(head) = common::read_request_head(&mut recv).await else {
            return;
        };
        if head.path_and_query.ends_with("/reset") {
            let _ = send.reset(ErrorCode::BACKEND_ABORTED.0.into());
            return;
        }
        let mut out = BytesMut::new();
        StreamFrame::ResponseHead(ResponseHead {
            status: StatusCode::OK,
            headers: http::HeaderMap::new(),
        })
        .encode(&mut out);
        let _ = send.write_all(&out).await;
        let _ = send.finish();
        let _ = send.stopped().await;
    }

    trace_init();
    let c = Cluster::new();
    let nodes: Vec<RelayProcess> = ["alpha", "beta"]
        .iter()
        .map(|n| c.node(n, NodeOptions::default()))
        .collect();
    c.provision();
    let secret = std::fs::read_to_string(c.dir().join("secret"))?;
    // The node learns of the new credential on its next catalog refresh (a notification or the
    // poll): until then it refuses, and a real connector would back off and retry; so do we.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (conn, _control) = loop {
        let (conn, control, welcome) = common::hello_at(
            nodes[1].https,
            &c.cert,
            "acme",
            Credential::Secret(secret.trim().to_string()),
            &["app"],
        )
        .await;
        match welcome {
            ControlFrame::Welcome(_) => break (conn, control),
            ControlFrame::Refused(r)
                if r.code == ErrorCode::AUTH_FAILED && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("{other:?}"),
        }
    };
    let streams = common::serve_streams(&conn, serve);
    for n in &nodes {
        c.until_ok(n, "/relay/acme/app/ok").await;
    }
    for round in 0..3 {
        for (i, n) in nodes.iter().enumerate() {
            let a = tokio::time::timeout(NO_HANG, c.client.get(&c.url(n, "/relay/acme/app/reset")))
                .await??;
            assert_eq!(a.status, StatusCode::BAD_GATEWAY, "node {i}, round {round}");
            let a = tokio::time::timeout(NO_HANG, c.client.get(&c.url(n, "/relay/acme/app/ok")))
                .await??;
            assert_eq!(a.status, StatusCode::OK, "node {i}, round {round}");
        }
    }
    streams.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_node_that_holds_the_sessions() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::new();
    let public = NodeOptions {
        public: true,
        ..Default::default()
    };
    let mut nodes: Vec<RelayProcess> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.node(n, public))
        .collect();
    c.provision();
    let backend = Backend::spawn().await;
    // One session, on alpha: the case where a node loss leaves the tenant without a session.
    let _connector = c.connector(&nodes[0], &[format!("app={}", backend.url())], 1);
    for n in &nodes {
        c.until_ok(n, "/relay/acme/app/ready").await;
    }
    assert_eq!(c.sessions_by_node().await, [("alpha".to_string(), 1)]);

    nodes[0].child.kill();
    let killed = Instant::now();
    let survivors = &nodes[1..];
    // Until the connector is back (on a survivor, from the node list it was given): every
    // request ends within the request timeout, with 200 or 503 + Retry-After, never a hang.
    let mut back = [false, false];
    while back != [true, true] {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "requests through the survivors did not recover"
        );
        for (i, n) in survivors.iter().enumerate() {
            let asked = Instant::now();
            let a = tokio::time::timeout(NO_HANG, c.client.get(&c.url(n, "/relay/acme/app/x")))
                .await
                .map_err(|_| anyhow::anyhow!("a request through a survivor hung"))??;
            if a.status != StatusCode::OK {
                eprintln!(
                    "{:?} after the kill: {} through survivor {i}: {}",
                    killed.elapsed(),
                    a.status,
                    a.text()
                );
            }
            match a.status {
                StatusCode::OK => back[i] = true,
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(a.headers.contains_key("retry-after"));
                    assert!(!back[i], "a 503 after the tenant was back");
                }
                s => panic!(
                    "{s} through a survivor, {:?} after the kill",
                    killed.elapsed()
                ),
            }
            assert!(asked.elapsed() < NO_HANG);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "served again through both survivors {:?} after the kill",
        killed.elapsed()
    );
    let now = c.sessions_by_node().await;
    assert!(
        now.len() == 1 && now[0].0 != "alpha",
        "the connector is on a survivor: {now:?}"
    );
    // The dead node leaves the registry.
    let store = relay_store::Store::connect(&c.url).await?;
    eventually(
        Duration::from_secs(30),
        "alpha's row is removed",
        || async {
            let all = store.nodes(i64::MAX / 2).await.unwrap();
            !all.iter().any(|n| n.name == "alpha")
        },
    )
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_nodes_and_survive_a_node_loss() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::new();
    let public = NodeOptions {
        public: true,
        ..Default::default()
    };
    let mut nodes: Vec<RelayProcess> = ["alpha", "beta"]
        .iter()
        .map(|n| c.node(n, public))
        .collect();
    c.provision();
    // This test is about the Welcome's list: let alpha see beta first (a node refreshes that
    // list at its heartbeat, 200 ms here). A node that joins later is in the next test.
    let store = relay_store::Store::connect(&c.url).await?;
    eventually(Duration::from_secs(10), "both nodes registered", || async {
        store
            .nodes(2_000)
            .await
            .map(|n| n.len() == 2)
            .unwrap_or(false)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let backend = Backend::spawn().await;
    let _connector = c.connector(&nodes[0], &[format!("app={}", backend.url())], 2);
    // The first session learns the other node from its Welcome; the second slot goes there.
    let c = &c;
    eventually(
        Duration::from_secs(30),
        "a session on each node",
        || async move {
            let by = c.sessions_by_node().await;
            (by.len() == 2).then_some(()).ok_or(format!("{by:?}"))
        },
    )
    .await;
    nodes[0].child.kill();
    // beta holds a session of its own: the tenant stays reachable there throughout.
    for i in 0..20 {
        let a = c
            .client
            .get(&c.url(&nodes[1], &format!("/relay/acme/app/{i}")))
            .await?;
        assert_eq!(a.status, StatusCode::OK, "request {i} after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_spreads_to_a_node_that_joins_later() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::new();
    let public = NodeOptions {
        public: true,
        ..Default::default()
    };
    let alpha = c.node("alpha", public);
    c.provision();
    let backend = Backend::spawn().await;
    let _connector = c.connector(&alpha, &[format!("app={}", backend.url())], 2);
    let c = &c;
    eventually(
        Duration::from_secs(30),
        "both sessions on alpha",
        || async move {
            let by = c.sessions_by_node().await;
            (by == [("alpha".to_string(), 2)])
                .then_some(())
                .ok_or(format!("{by:?}"))
        },
    )
    .await;
    // beta joins: alpha tells its sessions (`Nodes`), and one of them moves there.
    let _beta = c.node("beta", public);
    eventually(
        Duration::from_secs(30),
        "a session on each node",
        || async move {
            let by = c.sessions_by_node().await;
            (by.len() == 2).then_some(()).ok_or(format!("{by:?}"))
        },
    )
    .await;
    let a = c.client.get(&c.url(&alpha, "/relay/acme/app/x")).await?;
    assert_eq!(a.status, StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drained_under_load_loses_no_request() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::new();
    let opts = NodeOptions {
        public: true,
        admin: true,
    };
    let nodes: Vec<RelayProcess> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| c.node(n, opts))
        .collect();
    c.provision();
    let backend = Backend::spawn().await;
    let _connector = c.connector(&nodes[0], &[format!("app={}", backend.url())], 2);
    for n in &nodes {
        c.until_ok(n, "/relay/acme/app/ready").await;
    }
    let admin = |n: &RelayProcess| format!("http://{}/readyz", n.admin.expect("admin"));
    let plain = &c.client;
    assert_eq!(plain.get(&admin(&nodes[0])).await?.status, StatusCode::OK);

    // Steady load: 8 workers, round-robin over all three nodes (the drained one too: a load
    // balancer takes a while to notice).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| c.url(n, "/relay/acme/app/w"))
        .collect();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (stop, ok, failed, urls) = (stop.clone(), ok.clone(), failed.clone(), urls.clone());
        // No name resolution under load: a getaddrinfo task of the system resolver once came
        // back cancelled (a test-client failure, not the relay's).
        let client = Client::loopback(&c.cert);
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[i % urls.len()];
                match tokio::time::timeout(NO_HANG, client.get(url)).await {
                    Ok(Ok(a)) if a.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "worker {w}: {url}: {:?}",
                            other.map(|r| r.map(|a| a.status))
                        );
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = relay_cli(
        c.dir(),
        &["--database-url", &c.url, "node", "drain", "alpha"],
    );
    assert!(out.contains("draining"), "{out}");
    // alpha: out of the load balancer, its connector sessions gone elsewhere.
    eventually(Duration::from_secs(10), "alpha's /readyz answers 503", || async {
        matches!(plain.get(&admin(&nodes[0])).await, Ok(a) if a.status == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the connector left alpha",
        || async {
            let by = c.sessions_by_node().await;
            (!by.iter().any(|(n, _)| n == "alpha") && !by.is_empty())
                .then_some(())
                .ok_or(format!("{by:?}"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A node that joins now is used for forwarding at once.
    let delta = c.node("delta", NodeOptions::default());
    let a = c
        .client
        .get(&c.url(&delta, "/relay/acme/app/joined"))
        .await?;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "the first request through a new node: {}",
        a.text()
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("drain under load: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "only {ok} requests");
    Ok(())
}

/// The gRPC peer of grpc.rs (Python grpcio, installed by scripts/test.sh).
struct GrpcServer {
    port: u16,
    _child: ChildGuard,
}

impl GrpcServer {
    fn python() -> PathBuf {
        if let Some(p) = std::env::var_os("GRPC_PYTHON") {
            return PathBuf::from(p);
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/grpc/bin/python")
    }

    fn peer() -> Command {
        let mut cmd = Command::new(GrpcServer::python());
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpc/peer.py"));
        cmd
    }

    fn start() -> GrpcServer {
        let mut child = GrpcServer::peer()
            .arg("serve")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python with grpcio (scripts/test.sh installs it)");
        let stdout = child.stdout.take().expect("piped stdout");
        let child = ChildGuard(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        GrpcServer {
            port: line.trim().parse().expect("the gRPC server's port"),
            _child: child,
        }
    }

    /// Every kind of call through the relay at `port`, by hostname; asserts what came back.
    fn call(&self, port: u16, ca: &Path) {
        let out = GrpcServer::peer()
            .args(["call", &format!("127.0.0.1:{port}")])
            .arg(ca)
            .arg("grpc.acme.tunnel.test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gRPC client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(seen["unary"]["reply"], "echo:hello");
        assert_eq!(seen["unary"]["trailing"], "unary-done");
        assert_eq!(seen["count"]["trailing"], "5");
        assert_eq!(seen["big"]["intact"], true);
        assert_eq!(seen["chat"]["count"], 100);
        assert_eq!(seen["fail"]["code"], "NOT_FOUND", "{}", seen["fail"]);
    }
}
