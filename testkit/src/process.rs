//! The workspace's built binaries as child processes, and their memory.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The path of a workspace binary built by `cargo build --bins` (scripts/test.sh does that).
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/<test exe> → target/debug/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr inherited into the test's output when `RUST_LOG` is set.
    pub fn spawn(mut cmd: Command) -> ChildGuard {
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        ChildGuard(cmd.spawn().expect("spawn child"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `relay-server --data-dir DATA_DIR ARGS…` to completion and returns its standard output;
/// panics with its standard error when it fails.
pub fn relay_cli(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin("relay-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run relay-server");
    assert!(
        out.status.success(),
        "relay-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A `relay-server` running as a process, with the addresses its log reported.
#[derive(Debug)]
pub struct RelayProcess {
    /// The process (killed on drop).
    pub child: ChildGuard,
    /// Its HTTPS (and QUIC) address.
    pub https: SocketAddr,
    /// Its admin listener's address, when it has one.
    pub admin: Option<SocketAddr>,
    /// Its plain-HTTP address, when `ARGS` ask for a plain-HTTP listener.
    pub http: Option<SocketAddr>,
}

impl RelayProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}

/// Starts `relay-server --log-format json ARGS…` (global options, then the command and its
/// flags, e.g. `run --listen 127.0.0.1:0`) with `envs`, and waits (≤ 30 s) until its log has
/// reported its HTTPS address, and its admin and plain-HTTP addresses when `ARGS` ask for those
/// listeners.
/// `Err` holds everything it logged when it exits before that. Its log lines are echoed when
/// `RUST_LOG` is set for the test.
pub fn start_relay<A: AsRef<OsStr>>(
    args: &[A],
    envs: &[(&str, &str)],
) -> Result<RelayProcess, String> {
    let want_admin = args.iter().any(|a| a.as_ref() == "--admin");
    let want_http = args.iter().any(|a| a.as_ref() == "--listen-http");
    let mut cmd = Command::new(bin("relay-server"));
    cmd.args(["--log-format", "json"])
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn relay-server"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut https, mut admin, mut http, mut seen, mut sent) =
            (None, None, None, Vec::new(), false);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let addr = |k: &str| v["fields"][k].as_str().and_then(|a| a.parse().ok());
                https = https.or(addr("https"));
                admin = admin.or(addr("admin"));
                http = http.or(addr("http"));
            }
            if let (Some(h), false) = (https, sent) {
                if (admin.is_some() || !want_admin) && (http.is_some() || !want_http) {
                    let _ = tx.send(Ok((h, admin, http)));
                    sent = true;
                }
            }
            if std::env::var_os("RUST_LOG").is_some() {
                eprintln!("relay: {line}");
            }
            if !sent {
                seen.push(line);
            }
        }
        if !sent {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    let (https, admin, http) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("relay-server reported its addresses or exited")?;
    Ok(RelayProcess {
        child,
        https,
        admin,
        http,
    })
}

/// Starts `connector run` for tenant `acme` against the relay at `https`, with the secret in
/// `DATA_DIR/secret`, trusting `DATA_DIR/tls/cert.pem` (the relay's self-signed certificate),
/// target `app` → `backend_url`, and a reconnect backoff capped at 1 s.
pub fn start_connector(https: SocketAddr, data_dir: &Path, backend_url: &str) -> ChildGuard {
    let mut cmd = Command::new(bin("connector"));
    cmd.args(["run", "--tenant", "acme"])
        .arg("--server")
        .arg(format!("https://{https}"))
        .arg("--secret-file")
        .arg(data_dir.join("secret"))
        .arg("--ca-cert")
        .arg(data_dir.join("tls/cert.pem"))
        .args(["--target", &format!("app={backend_url}")])
        .env("CONNECTOR_SESSION__BACKOFF_CAP", "1s");
    ChildGuard::spawn(cmd)
}

/// Resident set size of a process, in KiB (Linux `/proc`); 0 when unknown.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples a process's RSS every 20 ms on a thread and keeps the peak.
#[derive(Debug)]
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns the peak in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}
