//! Cross-node forwarding, as real processes: relay nodes sharing one PostgreSQL database and one
//! `keys/`, a connector holding sessions on one node only, and visitors sent to every node.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use testkit::process::{relay_cli, start_connector, start_relay, ChildGuard, RelayProcess};
use testkit::{eventually, trace_init, Backend, Client, PgCluster};

/// Fast registry settings, so that a test need not wait the production 15 s.
const FAST: [(&str, &str); 2] = [
    ("RELAY_CLUSTER__HEARTBEAT_INTERVAL", "200ms"),
    ("RELAY_CLUSTER__NODE_TIMEOUT", "2s"),
];

/// A relay node as a process, on `database_url`, sharing `data_dir` (and so its keys).
fn node(data_dir: &Path, database_url: &str, name: &str) -> RelayProcess {
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
    start_relay::<&std::ffi::OsStr>(&args, &envs).expect("relay node starts")
}

/// Tenant `acme` with a credential whose secret is in `DATA_DIR/secret`.
fn provision(data_dir: &Path, url: &str) {
    relay_cli(
        data_dir,
        &["--database-url", url, "tenant", "create", "acme"],
    );
    let out = relay_cli(
        data_dir,
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
    std::fs::write(data_dir.join("secret"), secret).unwrap();
}

struct Cluster {
    _pg: PgCluster,
    url: String,
    dir: tempfile::TempDir,
    nodes: Vec<RelayProcess>,
    backend: Backend,
    connector: ChildGuard,
    client: Client,
}

impl Cluster {
    /// Three nodes; the connector on the first only.
    async fn start() -> Cluster {
        let pg = PgCluster::start();
        let url = pg.url();
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<RelayProcess> = ["alpha", "beta", "gamma"]
            .iter()
            .map(|n| node(dir.path(), &url, n))
            .collect();
        provision(dir.path(), &url);
        let backend = Backend::spawn().await;
        let connector = start_connector(nodes[0].https, dir.path(), &backend.url());
        let client = Client::new(&dir.path().join("tls/cert.pem"));
        let cluster = Cluster {
            _pg: pg,
            url,
            dir,
            nodes,
            backend,
            connector,
            client,
        };
        for i in 0..3 {
            cluster.until_ok(i, "/relay/acme/app/ready").await;
        }
        cluster
    }

    fn url(&self, node: usize, path: &str) -> String {
        format!("https://{}{path}", self.nodes[node].https)
    }

    /// Waits (≤ 20 s) until `path` through node `i` answers 200.
    async fn until_ok(&self, i: usize, path: &str) {
        let url = self.url(i, path);
        eventually(Duration::from_secs(20), "a request through the node succeeds", || {
            let url = url.clone();
            async move {
                matches!(self.client.get(&url).await, Ok(a) if a.status == StatusCode::OK)
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_a_tenant_whose_connector_is_on_one() -> anyhow::Result<()> {
    trace_init();
    let c = Cluster::start().await;
    // Round-robin over the three nodes: every request succeeds, with the backend's answer.
    for i in 0..30 {
        let a = c
            .client
            .get(&c.url(i % 3, &format!("/relay/acme/app/echo/{i}")))
            .await?;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "request {i} through node {}",
            i % 3
        );
        assert_eq!(a.headers["x-echo-path"], format!("/echo/{i}").as_str());
    }
    // The audit record of a forwarded request names both nodes.
    let a = c.client.get(&c.url(1, "/relay/acme/app/audited")).await?;
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
    assert!(!record.session_id.is_empty());
    assert_eq!(record.status, 200);
    let _ = (&c.dir, &c.backend, &c.connector);
    Ok(())
}
