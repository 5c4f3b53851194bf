//! Spawning a connector in-process for tests (`test-util` feature).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{FileConfig, SessionFile, TargetFile};
use crate::{Config, Connector, State};
use process_setup::layered::Secret;

/// A running connector; dropping it shuts it down.
#[derive(Debug)]
pub struct ConnectorHandle {
    shutdown: CancellationToken,
    state: watch::Receiver<State>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ConnectorHandle {
    /// Waits until at least one session is established (panics after 20 s: tests only).
    pub async fn connected(&mut self) -> &mut Self {
        let wait = self.state.wait_for(|s| s.connected);
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("connector did not connect within 20 s")
            .expect("connector task ended");
        self
    }

    /// Waits up to `secs` until the state satisfies `pred` and returns that state (panics on
    /// timeout, naming what it waited for: tests only).
    pub async fn wait_for(&self, secs: u64, what: &str, pred: impl FnMut(&State) -> bool) -> State {
        let mut watch = self.state.clone();
        let result = tokio::time::timeout(Duration::from_secs(secs), async {
            watch.wait_for(pred).await.map(|s| s.clone())
        })
        .await;
        match result {
            Ok(Ok(state)) => state,
            Ok(Err(_)) => panic!("connector task ended while waiting for: {what}"),
            Err(_) => panic!("not within {secs} s: {what} (state: {:?})", self.state()),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Shuts down and waits for the connector to stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ConnectorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A builder for a test connector.
#[derive(Debug, Clone)]
pub struct Builder {
    file: FileConfig,
}

/// Starts building a connector for `tenant` at `server` (`https://host:port`).
///
/// The transport is `auto` unless `CONNECTOR_TRANSPORT` says otherwise — the test command runs
/// the end-to-end suites once more with `CONNECTOR_TRANSPORT=tcp`, so that every one of them
/// covers both transports (spawned connector binaries read the same variable).
pub fn connector(server: &str, tenant: &str, secret: &str) -> Builder {
    let transport = std::env::var("CONNECTOR_TRANSPORT")
        .ok()
        .filter(|t| !t.is_empty());
    Builder {
        file: FileConfig {
            server: Some(server.to_string()),
            tenant: Some(tenant.to_string()),
            secret: Some(Secret::new(secret)),
            targets: BTreeMap::new(),
            session: SessionFile {
                backoff_base: Some(Duration::from_millis(100)),
                backoff_cap: Some(Duration::from_secs(1)),
                // One session unless a test asks for more: most tests count sessions.
                count: Some(1),
                ..SessionFile::default()
            },
            transport,
            ..FileConfig::default()
        },
    }
}

impl Builder {
    /// Adds a target.
    pub fn target(self, name: &str, url: &str) -> Self {
        self.target_with(name, url, |_| {})
    }

    /// Adds a target with the options `options` sets (CA file, insecure, HTTP/2, …).
    pub fn target_with(
        mut self,
        name: &str,
        url: &str,
        options: impl FnOnce(&mut TargetFile),
    ) -> Self {
        let mut target = TargetFile {
            url: url.to_string(),
            ..TargetFile::default()
        };
        options(&mut target);
        self.file.targets.insert(name.to_string(), target);
        self
    }

    /// Adds a target with a timeout.
    pub fn target_with_timeout(self, name: &str, url: &str, timeout: Duration) -> Self {
        self.target_with(name, url, |t| t.timeout = Some(timeout))
    }

    /// Adds a target spoken to with HTTP/2 (h2c for `http://`).
    pub fn target_http2(self, name: &str, url: &str) -> Self {
        self.target_with(name, url, |t| t.http2 = true)
    }

    /// Adds a target that receives the visitor's Host.
    pub fn target_preserving_host(self, name: &str, url: &str) -> Self {
        self.target_with(name, url, |t| t.preserve_host = true)
    }

    /// Trusts this CA for the relay.
    pub fn ca_cert(mut self, path: PathBuf) -> Self {
        self.file.ca_cert = Some(path);
        self
    }

    /// Sets the QUIC idle timeout (and a keep-alive below it).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.file.session.idle_timeout = Some(idle);
        self.file.session.keep_alive = Some(idle / 3);
        self
    }

    /// Keeps `n` sessions at once.
    pub fn sessions(mut self, n: u32) -> Self {
        self.file.session.count = Some(n);
        self
    }

    /// `auto`, `quic` or `tcp`.
    pub fn transport(mut self, mode: &str) -> Self {
        self.file.transport = Some(mode.to_string());
        self
    }

    /// Reaches the relay through this CONNECT proxy URL.
    pub fn proxy(mut self, url: &str) -> Self {
        self.file.proxy = Some(url.to_string());
        self
    }

    /// With `auto`: how long to wait for QUIC before falling back to TCP.
    pub fn quic_fallback_after(mut self, d: Duration) -> Self {
        self.file.session.quic_fallback_after = Some(d);
        self
    }

    /// With `auto`, after a fallback: how long before QUIC is tried again.
    pub fn quic_probe_interval(mut self, d: Duration) -> Self {
        self.file.session.quic_probe_interval = Some(d);
        self
    }

    /// The validated config.
    pub fn config(self) -> Config {
        Config::from_file(self.file, None).expect("valid test connector config")
    }

    /// Spawns the connector.
    pub fn spawn(self) -> ConnectorHandle {
        let connector = Connector::new(self.config()).expect("connector setup");
        let state = connector.watch();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(connector.run(shutdown.clone()));
        ConnectorHandle {
            shutdown,
            state,
            task: Some(task),
        }
    }
}
