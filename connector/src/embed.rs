//! Hosting the connector inside an application: [`Builder`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio_util::sync::CancellationToken;
//!
//! let app = tower::service_fn(|_req: http::Request<connector::Body>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! });
//! let connector = connector::Connector::builder("https://relay.example.com", "acme")
//!     .secret_file("/etc/relay-connector/secret")
//!     .service("app", app)          // answered in process, no local HTTP hop
//!     .target("wiki", "http://127.0.0.1:8080")
//!     .build()?;
//! let mut state = connector.watch();  // connected, sessions, last error…
//! let shutdown = CancellationToken::new();
//! tokio::spawn(connector.run(shutdown.clone()));
//! state.wait_for(|s| s.connected).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use process_setup::layered::{ConfigError, Secret};

use crate::backend::{Body, BoxError, LocalService};
use crate::config::{canonical_name, FileConfig, TargetFile};
use crate::{Connector, Extras};

/// Builds a [`Connector`] in code: the same settings as the config file, plus in-process
/// targets — tower `Service`s (an axum `Router`, say) that answer the relay's requests
/// without a local HTTP hop.
///
/// In-process targets take requests whose URI is the path and query below the target, with the
/// relay's `X-Forwarded-*` headers and `Host` set to the visitor's. They do not support
/// protocol upgrades (a WebSocket needs an HTTP backend target).
#[derive(Debug)]
pub struct Builder {
    file: FileConfig,
    local: BTreeMap<String, LocalService>,
    local_timeout: Option<Duration>,
    errors: Vec<String>,
}

impl Builder {
    pub(crate) fn new(server: &str, tenant: &str) -> Builder {
        Builder {
            file: FileConfig {
                server: Some(server.to_string()),
                tenant: Some(tenant.to_string()),
                ..FileConfig::default()
            },
            local: BTreeMap::new(),
            local_timeout: None,
            errors: Vec::new(),
        }
    }

    /// The credential secret.
    pub fn secret(mut self, secret: impl Into<String>) -> Builder {
        self.file.secret = Some(Secret::new(secret.into()));
        self
    }

    /// A file holding the credential secret.
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Builder {
        self.file.secret_file = Some(path.into());
        self
    }

    /// An HTTP backend target: requests for `name` go to `url`.
    pub fn target(self, name: &str, url: &str) -> Builder {
        self.target_with(name, url, |_| {})
    }

    /// An HTTP backend target with options (timeout, CA file, HTTP/2, …).
    pub fn target_with(
        mut self,
        name: &str,
        url: &str,
        options: impl FnOnce(&mut TargetFile),
    ) -> Builder {
        let mut target = TargetFile {
            url: url.to_string(),
            ..TargetFile::default()
        };
        options(&mut target);
        self.file.targets.insert(name.to_string(), target);
        self
    }

    /// An in-process target: requests for `name` are answered by `service`, cloned per request.
    pub fn service<S, B>(mut self, name: &str, service: S) -> Builder
    where
        S: tower_service::Service<http::Request<Body>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match canonical_name(name, "target") {
            Ok(canonical) => {
                if self
                    .local
                    .insert(canonical.clone(), LocalService::new(service))
                    .is_some()
                {
                    self.errors
                        .push(format!("target {canonical} is defined twice"));
                }
            }
            Err(e) => self.errors.push(e.to_string()),
        }
        self
    }

    /// How long in-process targets may take to answer (default 30 s).
    pub fn service_timeout(mut self, timeout: Duration) -> Builder {
        self.local_timeout = Some(timeout);
        self
    }

    /// Extra PEM roots for the relay's certificate.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Builder {
        self.file.ca_cert = Some(path.into());
        self
    }

    /// `auto` (default), `quic` or `tcp`.
    pub fn transport(mut self, mode: &str) -> Builder {
        self.file.transport = Some(mode.to_string());
        self
    }

    /// Reaches the relay through this HTTP CONNECT proxy URL.
    pub fn proxy(mut self, url: &str) -> Builder {
        self.file.proxy = Some(url.to_string());
        self
    }

    /// Sessions kept to the relay at once (default 2).
    pub fn sessions(mut self, n: u32) -> Builder {
        self.file.session.count = Some(n);
        self
    }

    /// Runs the local inspector on `listen` (loopback).
    pub fn inspect(mut self, listen: &str) -> Builder {
        self.file.inspect.listen = Some(listen.to_string());
        self
    }

    /// Changes any other setting of the file's shape.
    pub fn configure(mut self, f: impl FnOnce(&mut FileConfig)) -> Builder {
        f(&mut self.file);
        self
    }

    /// Validates everything and prepares the connector (TLS, sockets, backend clients).
    pub fn build(self) -> Result<Connector, ConfigError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(ConfigError::new(e));
        }
        if self.local_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("service timeout must be above zero"));
        }
        let names: Vec<String> = self.local.keys().cloned().collect();
        let config = crate::Config::with_in_process(self.file, None, &names)?;
        Connector::with_extras(
            config,
            Extras {
                local: self.local,
                local_timeout: self.local_timeout,
                inspector: None,
            },
        )
    }
}
