//! A TLS-inspecting proxy for tests: mitmproxy's `mitmdump` (from PyPI; scripts/test.sh installs
//! it into `target/test-tools/mitmproxy`), on a loopback port with its own CA in a temp dir. It
//! accepts CONNECT, terminates TLS with a certificate it signs itself, and opens its own TLS to
//! the real server. Dropping it kills the proxy.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ChildGuard;

const INSTALL_HINT: &str = "mitmdump not found: run scripts/test.sh (it installs mitmproxy from \
                            PyPI into target/test-tools/mitmproxy), or `pip install mitmproxy`, or \
                            set MITMDUMP";

/// A running mitmdump.
#[derive(Debug)]
pub struct MitmProxy {
    /// Port on 127.0.0.1.
    pub port: u16,
    child: ChildGuard,
    dir: TempDir,
}

fn mitmdump() -> PathBuf {
    if let Some(p) = std::env::var_os("MITMDUMP") {
        return PathBuf::from(p);
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-tools/mitmproxy/bin/mitmdump");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("mitmdump")
}

impl MitmProxy {
    /// Starts it; the upstream certificate (the relay's self-signed one) is not checked by the
    /// proxy, as a corporate inspection box configured for it would not either.
    pub async fn start() -> MitmProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(mitmdump())
            .args([
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
                &port.to_string(),
            ])
            .arg("--set")
            .arg(format!("confdir={}", dir.path().display()))
            .args(["--set", "ssl_insecure=true", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        let mut proxy = MitmProxy {
            port,
            child: ChildGuard(child),
            dir,
        };
        // mitmproxy takes a while to start (Python) and writes its CA on first start. A panic
        // here drops `proxy`, and with it the process.
        crate::eventually(Duration::from_secs(30), "mitmdump started", || {
            if let Ok(Some(status)) = proxy.child.0.try_wait() {
                panic!("mitmdump exited: {status}");
            }
            let ca_written = proxy.ca_cert().exists();
            async move {
                ca_written
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
            }
        })
        .await;
        proxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's CA certificate (what `--ca-cert` must name for the connector to accept it).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("mitmproxy-ca-cert.pem")
    }
}
