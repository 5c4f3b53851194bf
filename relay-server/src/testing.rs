//! Spawning a relay in-process on `127.0.0.1:0` for tests (`test-util` feature).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relay_store::{NewCredential, SecretHasher, Store, Tenant};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::config::FileConfig;
use crate::keys::{self, Keys};
use crate::{run, Config, Listeners, RelayView};

/// A running relay; dropping it shuts it down (without waiting).
#[derive(Debug)]
pub struct RelayHandle {
    /// HTTPS + QUIC address.
    pub addr: SocketAddr,
    /// QUIC (UDP) address: `addr` unless built with `udp_elsewhere`.
    pub quic_addr: SocketAddr,
    /// Plain-HTTP ingress address.
    pub http_addr: Option<SocketAddr>,
    /// Admin address.
    pub admin_addr: Option<SocketAddr>,
    /// Live view.
    pub view: RelayView,
    /// The store.
    pub store: Store,
    dir: Arc<TempDir>,
    file: FileConfig,
    udp_elsewhere: bool,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Builds a test relay.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    file: FileConfig,
    udp_elsewhere: bool,
    keys_from: Option<PathBuf>,
}

/// A builder with test-friendly defaults (short grace, admin and plain HTTP on loopback).
pub fn relay() -> Builder {
    let mut file = FileConfig {
        node_name: Some("test-node".into()),
        ..FileConfig::default()
    };
    file.shutdown.grace = Some(Duration::from_secs(5));
    file.listen.https = Some("127.0.0.1:0".parse().expect("literal"));
    file.listen.http = Some("127.0.0.1:0".parse().expect("literal"));
    file.listen.admin = Some("127.0.0.1:0".parse().expect("literal"));
    Builder {
        file,
        udp_elsewhere: false,
        keys_from: None,
    }
}

impl Builder {
    /// Changes the file-level config before start.
    pub fn configure(mut self, f: impl FnOnce(&mut FileConfig)) -> Self {
        f(&mut self.file);
        self
    }

    /// Serves QUIC on another UDP port than the HTTPS port: to connectors, UDP to the relay's
    /// address looks blocked (nothing answers), while TLS over TCP works.
    pub fn udp_elsewhere(mut self) -> Self {
        self.udp_elsewhere = true;
        self
    }

    /// Starts with a copy of `other`'s `keys/` (nodes of one cluster share them: node links
    /// authenticate with them).
    pub fn share_keys(mut self, other: &RelayHandle) -> Self {
        self.keys_from = Some(other.dir.path().join("keys"));
        self
    }

    /// Starts the relay in a fresh data directory.
    pub async fn spawn(self) -> RelayHandle {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        if let Some(src) = &self.keys_from {
            let dst = dir.path().join("keys");
            std::fs::create_dir_all(&dst).expect("keys dir");
            for entry in std::fs::read_dir(src).expect("the other relay's keys") {
                let entry = entry.expect("keys entry");
                std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy a key");
            }
        }
        start(self.file, dir, self.udp_elsewhere).await
    }
}

async fn start(mut file: FileConfig, dir: Arc<TempDir>, udp_elsewhere: bool) -> RelayHandle {
    file.data_dir = Some(dir.path().to_path_buf());
    let config = Config::from_file(file.clone(), None).expect("valid test config");
    let store = Store::connect(&config.database_url).await.expect("store");
    let mut listeners = bind_with_retry(&config).await;
    if udp_elsewhere {
        listeners.quic = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    }
    let addrs = listeners.addrs();
    let quic_addr = listeners.quic.local_addr().expect("udp address");
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(
        config,
        store.clone(),
        listeners,
        shutdown.clone(),
        Some(tx),
    ));
    let view = rx.await.expect("relay failed to start");
    RelayHandle {
        addr: addrs.https.expect("https address"),
        quic_addr,
        http_addr: addrs.http,
        admin_addr: addrs.admin,
        view,
        store,
        dir,
        file,
        udp_elsewhere,
        shutdown,
        task: Some(task),
    }
}

/// Binding TCP port 0 and then UDP on the same port can collide with another test's UDP socket;
/// retry with a new port.
async fn bind_with_retry(config: &Config) -> Listeners {
    let mut last = None;
    for _ in 0..20 {
        match Listeners::bind(config).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
    }
    panic!("cannot bind test listeners: {last:?}");
}

impl RelayHandle {
    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server())
    }

    /// `http://127.0.0.1:PORT{path}` on the plain-HTTP ingress.
    pub fn http_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.http_addr.expect("plain HTTP listener")
        )
    }

    /// The generated certificate, for clients and connectors to trust.
    pub fn ca_cert(&self) -> PathBuf {
        keys::self_signed_cert_path(self.dir.path())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str) -> Tenant {
        self.store.create_tenant(name).await.expect("create tenant")
    }

    /// The relay's secret hasher (its pepper from the data directory).
    fn hasher(&self) -> SecretHasher {
        let keys = Keys::load_or_create(self.dir.path()).expect("keys");
        SecretHasher::new(&keys.pepper)
    }

    /// Creates a credential for a tenant.
    pub async fn create_credential(&self, tenant: &str) -> NewCredential {
        self.store
            .create_credential(tenant, "test", &self.hasher())
            .await
            .expect("create credential")
    }

    /// Creates an admin API token (for `/api/v1` and `/metrics`); returns the bearer value.
    pub async fn api_token(&self, name: &str) -> String {
        self.store
            .create_api_token(name, &self.hasher())
            .await
            .expect("create API token")
            .value
    }

    /// Creates `tenant` with one credential and waits until the relay knows both.
    pub async fn provision(&self, tenant: &str) -> NewCredential {
        self.create_tenant(tenant).await;
        let cred = self.create_credential(tenant).await;
        self.sync().await;
        cred
    }

    /// Waits (≤ 5 s) until no stream is in flight through the relay (the gauge settles when
    /// hyper drops a response body, just after its last bytes).
    pub async fn wait_idle(&self) {
        for _ in 0..250 {
            if self
                .view
                .metrics()
                .in_flight
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("streams still in flight after 5 s");
    }

    /// The audit record of `request_id`, once the writer has stored it (≤ 5 s; it batches every
    /// 200 ms).
    pub async fn audit_record(&self, request_id: &str) -> relay_store::AuditRecord {
        for _ in 0..100 {
            let all = self.store.audit(None, 1000).await.expect("audit query");
            if let Some(r) = all.into_iter().find(|r| r.request_id == request_id) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no audit record for {request_id}");
    }

    /// Waits until the relay's catalog shows a change made through the store (≤ 5 s).
    pub async fn sync(&self) {
        let want = self.store.revision().await.expect("revision");
        for _ in 0..100 {
            if self.view.relay.catalog.revision() >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("relay did not pick up revision {want}");
    }

    /// Stops gracefully and waits.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(t) => t.await?,
            None => Ok(()),
        }
    }

    /// Stops gracefully, then starts again on the same port with the same data directory.
    pub async fn restart(mut self) -> RelayHandle {
        let port = self.addr.port();
        let dir = self.dir.clone();
        let mut file = self.file.clone();
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("relay task").expect("relay stopped cleanly");
        }
        file.listen.https = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        start(file, dir, self.udp_elsewhere).await
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
