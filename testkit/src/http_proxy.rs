//! A real HTTP CONNECT proxy for tests: tinyproxy (Debian `tinyproxy-bin`, installed by
//! scripts/test.sh), on a loopback port, optionally with Basic authentication, logging to a file
//! the test can read. Dropping it kills the proxy.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ChildGuard;

const INSTALL_HINT: &str = "tinyproxy not found: run scripts/test.sh (it installs it), or \
                            `apt install tinyproxy-bin` / `brew install tinyproxy`";

/// A running tinyproxy.
#[derive(Debug)]
pub struct HttpProxy {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    /// Killed when the proxy is dropped.
    _child: ChildGuard,
    dir: TempDir,
}

impl HttpProxy {
    /// Starts a proxy; `basic` = `Some((user, password))` requires those credentials.
    pub async fn start(basic: Option<(&str, &str)>) -> HttpProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        // tinyproxy needs a fixed port: take a free one (a tiny race; retried below).
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let log = dir.path().join("tinyproxy.log");
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\nLogFile \"{}\"\nLogLevel Info\n",
                log.display()
            );
            if let Some((user, password)) = basic {
                conf.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            let conf_path = dir.path().join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).expect("write tinyproxy config");
            let mut child = ChildGuard(
                Command::new("tinyproxy")
                    .arg("-d")
                    .arg("-c")
                    .arg(&conf_path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})")),
            );
            if listening(&mut child, port).await {
                return HttpProxy {
                    port,
                    _child: child,
                    dir,
                };
            }
        }
        panic!("tinyproxy did not start");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://user:password@127.0.0.1:PORT`.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }
}

/// Whether tinyproxy came up listening on `port` (false: it exited, say, because the port was
/// taken meanwhile).
async fn listening(child: &mut ChildGuard, port: u16) -> bool {
    crate::eventually(Duration::from_secs(10), "tinyproxy listening", || {
        let exited = matches!(child.0.try_wait(), Ok(Some(_)));
        async move {
            if exited {
                return Some(false);
            }
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
            connected.is_ok().then_some(true)
        }
    })
    .await
}
