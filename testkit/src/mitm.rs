//! A TLS-inspecting proxy for tests: mitmproxy's `mitmdump` (from PyPI; scripts/test.sh installs
//! it into `target/test-tools/mitmproxy`), on a loopback port with its own CA in a temp dir. It
//! accepts CONNECT, terminates TLS with a certificate it signs itself, and opens its own TLS to
//! the real server. Dropping it kills the proxy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

const INSTALL_HINT: &str = "mitmdump not found: run scripts/test.sh (it installs mitmproxy from \
                            PyPI into target/test-tools/mitmproxy), or `pip install mitmproxy`, or \
                            set MITMDUMP";

/// A running mitmdump.
#[derive(Debug)]
pub struct MitmProxy {
    /// Port on 127.0.0.1.
    pub port: u16,
    child: Child,
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
    pub fn start() -> MitmProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(mitmdump())
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
        // mitmproxy takes a while to start (Python) and writes its CA on first start.
        for _ in 0..300 {
            let ca = dir.path().join("mitmproxy-ca-cert.pem");
            if ca.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return MitmProxy { port, child, dir };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mitmdump exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("mitmdump did not start within 30 s");
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

impl Drop for MitmProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
