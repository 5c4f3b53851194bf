//! docker-compose.yml as local processes, so that the file cannot drift from what the binaries
//! accept: every service runs its own `command` with its own `environment` (and the image's `ENV`
//! and `WORKDIR` from the Dockerfile), in compose's dependency order and with its `depends_on`
//! conditions, then a visitor request goes through each relay node to the demo backend. A flag or
//! setting the binaries do not know stops them (exit 2 or 64) and fails the test.
//!
//! What the test changes, and nothing else: PostgreSQL images become a throwaway [`PgCluster`]
//! (their URLs its URL); `service:port`, and a service's own `0.0.0.0:port` or `127.0.0.1:port`,
//! become `127.0.0.1:` a free port per service and port (a bare word that a service `expose`s, and
//! a bare `0.0.0.0`, likewise); each service gets a root folder where its volumes are symlinks at
//! their mount points, and paths under those mount points are moved into it; the workspace's
//! binaries are first on `PATH`. Compose keys it does not emulate are refused by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use testkit::process::{bin, ChildGuard};
use testkit::{eventually, Client, PgCluster};

/// What the demo backend answers, and where visitors ask for it (README.md's curl line).
const GREETING: &str = "Hello from the demo backend";
const VISITOR_PATH: &str = "/relay/demo/app/";

/// The workspace binaries the image carries, and the prefix of the variables each reads.
const BINARIES: [(&str, &str); 3] = [
    ("relay-server", "RELAY_"),
    ("connector", "CONNECTOR_"),
    ("management-web", "MANAGEMENT_"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_visitors_through_both_relay_nodes() {
    testkit::trace_init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file: ComposeFile =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .expect("docker-compose.yml uses only the keys this test emulates");
    let image = Image::read(&root.join("Dockerfile"));
    let mut stack = Stack::new(file, image);

    for name in stack.start_order() {
        stack.start(&name).await;
    }
    for name in stack.file.services.keys().cloned().collect::<Vec<_>>() {
        if stack.file.services[&name].healthcheck.is_some() {
            stack.wait_healthy(&name).await;
        }
    }

    // Every relay node answers for the tenant: the one holding the connector's sessions at once,
    // the others by forwarding to it.
    let relays: Vec<String> = stack
        .file
        .services
        .iter()
        .filter(|(_, s)| s.runs_relay())
        .map(|(name, _)| name.clone())
        .collect();
    assert!(relays.len() >= 2, "relay services: {relays:?}");
    for name in &relays {
        let service = &stack.file.services[name];
        let ca = service
            .environment
            .get("RELAY_TLS__CERT")
            .map(|p| stack.rewrite(name, p))
            .unwrap_or_else(|| panic!("{name}: no RELAY_TLS__CERT to trust"));
        let port = service
            .published_tcp_ports()
            .next()
            .unwrap_or_else(|| panic!("{name} publishes no TCP port"));
        let url = format!("https://localhost:{}{VISITOR_PATH}", stack.port(name, port));
        let client = Client::loopback(Path::new(&ca));
        let what = format!("a 200 with the backend's page through {name} ({url})");
        eventually(Duration::from_secs(20), &what, || {
            // A service that stopped (a connector refusing its flags) is the answer, not a 503.
            stack.assert_still_running();
            let (client, url) = (&client, &url);
            async move {
                match client.get(url).await {
                    Ok(a) if a.status == 200 && a.text().contains(GREETING) => Ok(()),
                    Ok(a) => Err(format!("{} {}", a.status, a.text().trim())),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
        })
        .await;
    }
    stack.assert_still_running();
}

// === docker-compose.yml ===

/// The part of the compose format the test emulates; anything else is refused by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeFile {
    services: BTreeMap<String, ServiceFile>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<serde_yaml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    image: String,
    /// `.`: the Dockerfile at the top level.
    build: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    expose: Vec<String>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    depends_on: BTreeMap<String, Dependency>,
    /// Not emulated: nothing restarts here, and the test wants the first failure.
    #[serde(default, rename = "restart")]
    _restart: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Vec<String>,
    #[serde(default, rename = "interval")]
    _interval: Option<String>,
    #[serde(default, rename = "timeout")]
    _timeout: Option<String>,
    #[serde(default, rename = "retries")]
    _retries: Option<u32>,
    #[serde(default, rename = "start_period")]
    _start_period: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dependency {
    condition: Condition,
}

/// `depends_on` conditions: what compose waits for before it starts the dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Condition {
    #[serde(rename = "service_completed_successfully")]
    Completed,
    #[serde(rename = "service_healthy")]
    Healthy,
    #[serde(rename = "service_started")]
    Started,
}

impl ServiceFile {
    /// A stock PostgreSQL image: replaced by a throwaway cluster.
    fn is_postgres(&self) -> bool {
        self.image.starts_with("postgres:") || self.image == "postgres"
    }

    fn command(&self, name: &str) -> &[String] {
        match &self.command {
            Some(c) if !c.is_empty() => c,
            _ => panic!("{name}: give it a command (the test does not read images' CMD)"),
        }
    }

    /// `relay-server … run`: a relay node.
    fn runs_relay(&self) -> bool {
        self.command
            .as_deref()
            .is_some_and(|c| c[0] == "relay-server" && c.iter().any(|a| a == "run"))
    }

    /// The workspace binaries its command runs (directly or as words of a shell script).
    fn binaries(&self) -> BTreeSet<&'static str> {
        let words = self
            .command
            .iter()
            .flatten()
            .flat_map(|a| a.split_whitespace());
        let words: BTreeSet<&str> = words.collect();
        BINARIES
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| words.contains(b))
            .collect()
    }

    /// Container ports published over TCP (`[IP:]HOST:CONTAINER[/PROTO]`).
    fn published_tcp_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports.iter().filter_map(|p| {
            let (addr, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            let container = addr.rsplit(':').next()?.parse().expect("container port");
            (proto == "tcp").then_some(container)
        })
    }

    fn healthcheck_argv(&self, name: &str) -> Option<Vec<String>> {
        let test = &self.healthcheck.as_ref()?.test;
        Some(match test.first().map(String::as_str) {
            Some("CMD") => test[1..].to_vec(),
            Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), test[1..].join(" ")],
            _ => panic!("{name}: healthcheck test must start with CMD or CMD-SHELL"),
        })
    }
}

// === Dockerfile ===

/// What the image adds to a service built from the Dockerfile.
#[derive(Debug)]
struct Image {
    text: String,
    env: Vec<(String, String)>,
    workdir: Option<String>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let text = std::fs::read_to_string(path).expect("Dockerfile");
        let last_stage = text.rsplit_once("\nFROM ").map(|(_, s)| s).expect("a FROM");
        let (mut env, mut workdir) = (Vec::new(), None);
        for line in last_stage.lines().map(str::trim) {
            if let Some(pair) = line.strip_prefix("ENV ") {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                assert!(!v.contains(char::is_whitespace), "one ENV KEY=VALUE a line");
                env.push((k.to_string(), v.to_string()));
            } else if let Some(dir) = line.strip_prefix("WORKDIR ") {
                workdir = Some(dir.to_string());
            } else {
                assert!(
                    !line.starts_with("ENTRYPOINT"),
                    "the test does not emulate ENTRYPOINT"
                );
            }
        }
        Image { text, env, workdir }
    }
}

// === the stack ===

/// The services as processes, their ports, folders and database. Fields drop in order: the
/// processes are killed before their database and folders go.
struct Stack {
    running: BTreeMap<String, Running>,
    /// Services whose dependents waited for them to complete (they are meant to exit).
    completed: BTreeSet<String>,
    healthy: BTreeSet<String>,
    postgres: BTreeMap<String, PgCluster>,
    ports: Mutex<HashMap<(String, u16), u16>>,
    file: ComposeFile,
    image: Image,
    dir: tempfile::TempDir,
}

/// A service's process and everything it printed.
struct Running {
    child: ChildGuard,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Everything it printed so far.
    fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Stack {
    fn new(file: ComposeFile, image: Image) -> Stack {
        for (name, service) in &file.services {
            check_service(name, service, &file, &image);
        }
        Stack {
            running: BTreeMap::new(),
            completed: BTreeSet::new(),
            healthy: BTreeSet::new(),
            postgres: BTreeMap::new(),
            ports: Mutex::new(HashMap::new()),
            file,
            image,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Services in dependency order (ties by name).
    fn start_order(&self) -> Vec<String> {
        let services = &self.file.services;
        let mut order: Vec<String> = Vec::new();
        while order.len() < services.len() {
            let next = services
                .iter()
                .find(|(name, s)| {
                    !order.contains(*name) && s.depends_on.keys().all(|d| order.contains(d))
                })
                .map(|(name, _)| name.clone())
                .expect("depends_on has no cycle");
            order.push(next);
        }
        order
    }

    /// Waits for the conditions `name` depends on, then starts it.
    async fn start(&mut self, name: &str) {
        let deps: Vec<(String, Condition)> = self.file.services[name]
            .depends_on
            .iter()
            .map(|(dep, d)| (dep.clone(), d.condition))
            .collect();
        for (dep, condition) in deps {
            match condition {
                Condition::Completed => self.wait_completed(&dep).await,
                Condition::Healthy => self.wait_healthy(&dep).await,
                Condition::Started => {}
            }
        }
        let service = &self.file.services[name];
        if service.is_postgres() {
            let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
            self.postgres.insert(name.to_string(), pg);
            self.healthy.insert(name.to_string());
            return;
        }
        let root = self.root(name);
        let argv: Vec<String> = service
            .command(name)
            .iter()
            .map(|a| self.rewrite(name, a))
            .collect();
        let workdir = match (&service.build, &self.image.workdir) {
            (Some(_), Some(w)) => PathBuf::from(self.rewrite(name, w)),
            _ => root.clone(),
        };
        assert!(workdir.starts_with(self.dir.path()), "{name}: {workdir:?}");
        std::fs::create_dir_all(&workdir).unwrap();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&workdir)
            .env_clear()
            .envs(self.environment(name))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("{name}: cannot start {argv:?}: {e}")),
        );
        let log = Arc::new(Mutex::new(String::new()));
        collect(name, child.0.stdout.take().unwrap(), log.clone());
        collect(name, child.0.stderr.take().unwrap(), log.clone());
        self.running
            .insert(name.to_string(), Running { child, log });
    }

    /// The process environment: a container's is its image's and its own, nothing of the host's.
    fn environment(&self, name: &str) -> Vec<(String, String)> {
        let service = &self.file.services[name];
        // `bin` checks that each is built; they share one folder.
        let bin_dir = BINARIES.map(|(b, _)| bin(b))[0]
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut env = vec![("PATH".to_string(), path)];
        env.extend(std::env::var("HOME").ok().map(|h| ("HOME".to_string(), h)));
        // The suite's transport switch (scripts/test.sh runs the end-to-end suites on QUIC, then
        // on TLS over TCP): only the connector reads it.
        env.extend(
            std::env::var("CONNECTOR_TRANSPORT")
                .ok()
                .map(|t| ("CONNECTOR_TRANSPORT".to_string(), t)),
        );
        let image = service.build.as_ref().map(|_| &self.image.env);
        let image = image.into_iter().flatten().map(|(k, v)| (k, v)); // as the map's pairs
        for (k, v) in image.chain(&service.environment) {
            env.push((k.clone(), self.rewrite(name, v)));
        }
        env
    }

    async fn wait_completed(&mut self, name: &str) {
        if self.completed.contains(name) {
            return;
        }
        let running = &mut self.running.get_mut(name).expect("started").child.0;
        let what = format!("{name} to complete");
        let status = eventually(Duration::from_secs(90), &what, || {
            let status = running.try_wait().unwrap();
            async move { status }
        })
        .await;
        assert!(status.success(), "{name}: {status}\n{}", self.log(name));
        self.completed.insert(name.to_string());
    }

    async fn wait_healthy(&mut self, name: &str) {
        if self.healthy.contains(name) {
            return;
        }
        let argv: Vec<String> = self.file.services[name]
            .healthcheck_argv(name)
            .unwrap_or_else(|| panic!("{name}: a dependent waits for it healthy: no healthcheck"))
            .iter()
            .map(|a| self.rewrite(name, a))
            .collect();
        let env = self.environment(name);
        let what = format!("{name} healthy ({argv:?})");
        let running = self.running.get_mut(name).expect("started");
        eventually(Duration::from_secs(30), &what, || {
            if let Some(status) = running.child.0.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", running.log());
            }
            let mut check = tokio::process::Command::new(&argv[0]);
            check.args(&argv[1..]).env_clear().envs(env.clone());
            async move {
                let out = check.output().await.expect("run the healthcheck");
                match out.status.success() {
                    true => Ok(()),
                    false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                }
            }
        })
        .await;
        self.healthy.insert(name.to_string());
    }

    fn assert_still_running(&mut self) {
        for (name, running) in &mut self.running {
            if self.completed.contains(name) {
                continue;
            }
            if let Some(status) = running.child.0.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", running.log());
            }
        }
    }

    fn log(&self, name: &str) -> String {
        self.running[name].log()
    }

    /// The local port standing in for `service:port`.
    fn port(&self, service: &str, port: u16) -> u16 {
        let mut ports = self.ports.lock().unwrap();
        if let Some(p) = ports.get(&(service.to_string(), port)) {
            return *p;
        }
        let taken: BTreeSet<u16> = ports.values().copied().collect();
        let free = free_port(&taken);
        ports.insert((service.to_string(), port), free);
        free
    }

    /// The service's root folder: its volumes are symlinks at their mount points in it.
    fn root(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join("roots").join(name);
        let mounts = &self.file.services[name].volumes;
        for mount in mounts {
            let (source, target) = split_mount(name, mount);
            let source = if self.file.volumes.contains_key(source) {
                self.dir.path().join("volumes").join(source)
            } else {
                panic!("{name}: volume {source:?} is not a named volume (not emulated)");
            };
            std::fs::create_dir_all(&source).unwrap();
            let link = root.join(target.trim_start_matches('/'));
            if link.symlink_metadata().is_ok() {
                continue;
            }
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&source, &link).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// A compose string (argument, variable, script) as the local process needs it.
    fn rewrite(&self, name: &str, s: &str) -> String {
        let s = unescape_dollars(name, s);
        let s = self.rewrite_database_urls(&s);
        let s = self.rewrite_addresses(name, &s);
        let s = self.rewrite_words(name, &s);
        self.rewrite_paths(name, &s)
    }

    /// `postgres://…@SERVICE…` for a PostgreSQL service → the throwaway cluster's URL.
    fn rewrite_database_urls(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest
            .find("postgres://")
            .or_else(|| rest.find("postgresql://"))
        {
            out.push_str(&rest[..i]);
            let end = rest[i..]
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .map_or(rest.len(), |e| i + e);
            let url = &rest[i..end];
            let host = url
                .split_once("://")
                .map(|(_, r)| r.rsplit_once('@').map_or(r, |(_, h)| h))
                .and_then(|h| h.split([':', '/', '?']).next())
                .unwrap_or_default();
            match self.file.services.get(host).filter(|s| s.is_postgres()) {
                Some(_) => out.push_str(&self.pg(host).url()),
                None => out.push_str(url),
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    fn pg(&self, name: &str) -> &PgCluster {
        self.postgres
            .get(name)
            .unwrap_or_else(|| panic!("{name} is used before it starts: add it to depends_on"))
    }

    /// `SERVICE:PORT`, and `0.0.0.0:PORT`, `127.0.0.1:PORT` or `localhost:PORT` meaning the
    /// service itself → `127.0.0.1:LOCAL`.
    fn rewrite_addresses(&self, name: &str, s: &str) -> String {
        let mut hosts: Vec<&str> = self.file.services.keys().map(String::as_str).collect();
        hosts.extend(["0.0.0.0", "127.0.0.1", "localhost"]);
        hosts.sort_by_key(|h| std::cmp::Reverse(h.len()));
        let (mut out, mut i) = (String::new(), 0);
        'scan: while i < s.len() {
            let boundary = s[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)));
            if boundary {
                for host in &hosts {
                    let Some(after) = s[i..].strip_prefix(host).and_then(|r| r.strip_prefix(':'))
                    else {
                        continue;
                    };
                    let digits =
                        after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                    let Ok(port) = after[..digits].parse::<u16>() else {
                        continue;
                    };
                    let owner = match *host {
                        "0.0.0.0" | "127.0.0.1" | "localhost" => name,
                        service => service,
                    };
                    out.push_str(&format!("127.0.0.1:{}", self.port(owner, port)));
                    i += host.len() + 1 + digits;
                    continue 'scan;
                }
            }
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// Bare words: `0.0.0.0` → `127.0.0.1`, a port the service `expose`s → its local port.
    fn rewrite_words(&self, name: &str, s: &str) -> String {
        let expose = &self.file.services[name].expose;
        let mut out = String::new();
        for piece in s.split_inclusive(char::is_whitespace) {
            let word = piece.trim_end();
            let replaced = if word == "0.0.0.0" {
                "127.0.0.1".to_string()
            } else if expose.iter().any(|p| p == word) {
                self.port(name, word.parse().expect("exposed port"))
                    .to_string()
            } else {
                word.to_string()
            };
            out.push_str(&replaced);
            out.push_str(&piece[word.len()..]);
        }
        out
    }

    /// Paths under a mount point of the service (or a folder above one) → into its root folder.
    fn rewrite_paths(&self, name: &str, s: &str) -> String {
        let service = &self.file.services[name];
        let workdir = service.build.as_ref().and(self.image.workdir.as_deref());
        let mut prefixes = BTreeSet::new();
        let folders = service.volumes.iter().map(|m| split_mount(name, m).1);
        for folder in folders.chain(workdir) {
            let mut p = Path::new(folder);
            while p != Path::new("/") {
                prefixes.insert(p.to_str().unwrap().to_string());
                p = p.parent().unwrap();
            }
        }
        let mut prefixes: Vec<String> = prefixes.into_iter().collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let root = self.dir.path().join("roots").join(name);
        let (mut out, mut i) = (String::new(), 0);
        while i < s.len() {
            let boundary = s[..i]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || "=:'\"<>(,;".contains(c));
            let path_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if boundary && s[i..].starts_with('/') {
                let hit = prefixes.iter().find(|p| {
                    s[i..].starts_with(p.as_str())
                        && s[i + p.len()..]
                            .chars()
                            .next()
                            .is_none_or(|c| !path_char(c))
                });
                if hit.is_some() {
                    out.push_str(root.to_str().unwrap());
                }
            }
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, running) in &self.running {
                let log = running.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {name} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// What can be checked before anything runs: images the test cannot stand in for, variables no
/// binary reads, binaries the image does not carry.
fn check_service(name: &str, service: &ServiceFile, file: &ComposeFile, image: &Image) {
    for dep in service.depends_on.keys() {
        assert!(
            file.services.contains_key(dep),
            "{name}: unknown dependency {dep}"
        );
    }
    if service.is_postgres() {
        return;
    }
    let Some(build) = &service.build else {
        // A stock image: its command runs with the machine's programs (python3 for the backend).
        return;
    };
    assert_eq!(
        build, ".",
        "{name}: only the top-level Dockerfile is emulated"
    );
    let binaries = service.binaries();
    assert!(!binaries.is_empty(), "{name} runs no workspace binary");
    for b in &binaries {
        assert!(
            image.text.contains(&format!("-p {b}"))
                && image.text.contains(&format!("target/release/{b}")),
            "{name} runs {b}, which the Dockerfile does not build and copy"
        );
    }
    for key in service.environment.keys() {
        let read = key == "RUST_LOG"
            || BINARIES
                .iter()
                .any(|(b, prefix)| binaries.contains(b) && key.starts_with(prefix));
        assert!(read, "{name}: no binary it runs reads {key}");
    }
}

/// `SOURCE:TARGET[:MODE]`.
fn split_mount<'a>(name: &str, mount: &'a str) -> (&'a str, &'a str) {
    let mut parts = mount.split(':');
    match (parts.next(), parts.next()) {
        (Some(source), Some(target)) if target.starts_with('/') => (source, target),
        _ => panic!("{name}: volume {mount:?}: expected SOURCE:/TARGET[:MODE]"),
    }
}

/// Compose's escaping: `$$` is a `$`; anything else with `$` would be interpolated.
fn unescape_dollars(name: &str, s: &str) -> String {
    let unescaped = s.replace("$$", "\u{0}");
    assert!(
        !unescaped.contains('$'),
        "{name}: ${{…}} interpolation is not emulated: {s:?}"
    );
    unescaped.replace('\u{0}', "$")
}

/// A loopback port free on TCP and UDP (a relay takes both), not in `taken`. The port is released
/// before the process binds it: compose fixes the addresses before anything starts (a relay
/// advertises its address, the connector dials it), so port 0 cannot stand in here.
fn free_port(taken: &BTreeSet<u16>) -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if !taken.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Appends what `pipe` prints to `log` (and echoes it when RUST_LOG is set).
fn collect(name: &str, pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    let (name, echo) = (name.to_string(), std::env::var_os("RUST_LOG").is_some());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{name}: {line}");
            }
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            log.push_str(&line);
            log.push('\n');
        }
    });
}
