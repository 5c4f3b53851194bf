//! A private PostgreSQL cluster per test: its own data directory and a unix socket in a temp dir,
//! no TCP port, fsync off. Dropping it stops the server (`pg_ctl stop -m immediate`).
//!
//! The binaries are found through `PG_BIN`, then `PATH`, then `pg_config --bindir`, then
//! `/usr/lib/postgresql/*/bin`. `initdb` and `postgres` refuse to run as root, so as root the
//! cluster runs as the `postgres` system user (Debian's package creates it).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

const INSTALL_HINT: &str =
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/test.sh \
     (it installs them), or `apt install postgresql` / `brew install postgresql`, or set PG_BIN";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    run_as: Option<String>,
}

impl PgCluster {
    /// Initialises and starts a cluster; panics with an install hint when PostgreSQL is missing.
    pub fn start() -> PgCluster {
        PgCluster::start_with("")
    }

    /// A cluster that logs every statement it runs (see [`PgCluster::server_log`]).
    pub fn start_logging_statements() -> PgCluster {
        PgCluster::start_with("-c log_statement=all")
    }

    fn start_with(extra: &str) -> PgCluster {
        let bin = bin_dir().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let dir = tempfile::Builder::new()
            .prefix("relay-pg-")
            .tempdir()
            .expect("temp dir");
        let run_as = is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .map(|s| s.success());
            assert!(
                matches!(ok, Ok(true)),
                "cannot hand {} to user {user}",
                dir.path().display()
            );
        }
        let cluster = PgCluster { dir, bin, run_as };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let socket = cluster.dir.path().display().to_string();
        let log = cluster.dir.path().join("server.log").display().to_string();
        let opts =
            format!("-k {socket} -h '' -F -c max_connections=40 -c shared_buffers=16MB {extra}");
        cluster.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts, "start",
            ],
        );
        cluster
    }

    /// A database URL for sqlx (unix socket, user `postgres`, database `postgres`).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// Stops the server now (a test of the relay with its database gone); `start_again` restarts it.
    pub fn stop(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-w", "-m", "immediate", "stop"]);
    }

    /// Starts a stopped cluster again on the same socket.
    pub fn start_again(&self) {
        let data = self.data();
        let socket = self.dir.path().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!("-k {socket} -h '' -F -c max_connections=40 -c shared_buffers=16MB");
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts, "start",
            ],
        );
    }

    /// The server log so far (with `log_statement = 'all'`, every statement the server ran).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

fn bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Some(d) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has(d)) {
            return Some(d);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has(d))
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}
