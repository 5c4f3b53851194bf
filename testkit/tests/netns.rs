//! UDP blocked by a real firewall: the connector binary runs in a network namespace this test
//! creates (a veth pair to the host), where an iptables rule drops outgoing UDP. It must fall back
//! to TLS over TCP and serve requests, and move back to QUIC once the rule is removed.
//!
//! Needs root (or CAP_NET_ADMIN) and iptables (scripts/test.sh installs it). Where namespaces are
//! not permitted the test says so loudly and passes without running; a missing iptables fails it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use relay_server::testing::relay;
use testkit::process::{bin, ChildGuard};
use testkit::{trace_init, Backend, Client};

/// A network namespace joined to the host by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `None` when this environment does not permit network namespaces.
    fn create() -> Option<Netns> {
        let id = std::process::id() % 10_000;
        let name = format!("relaytest{id}");
        if let Err(e) = run(&["ip", "netns", "add", &name]) {
            eprintln!("SKIPPED: network namespaces are not permitted here ({e})");
            return None;
        }
        let octet = (id % 250 + 1) as u8;
        let host_ip = Ipv4Addr::new(10, 231, octet, 1);
        let ns = Netns { name, host_ip };
        let (h, n) = (format!("rt{id}h"), format!("rt{id}n"));
        let ns_cidr = format!("10.231.{octet}.2/30");
        let host_cidr = format!("{host_ip}/30");
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "link", "add", &h, "type", "veth", "peer", "name", &n],
            vec!["ip", "link", "set", &n, "netns", &ns.name],
            vec!["ip", "addr", "add", &host_cidr, "dev", &h],
            vec!["ip", "link", "set", &h, "up"],
            vec![
                "ip", "netns", "exec", &ns.name, "ip", "addr", "add", &ns_cidr, "dev", &n,
            ],
            vec![
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", &n, "up",
            ],
            vec![
                "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
            ],
        ];
        for step in steps {
            if let Err(e) = run(&step) {
                eprintln!("SKIPPED: cannot set up the veth pair here ({e})");
                return None;
            }
        }
        Some(ns)
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

async fn wait_for_transport(relay: &relay_server::testing::RelayHandle, want: &str) {
    testkit::eventually(
        Duration::from_secs(30),
        &format!("a single {want} session"),
        || async {
            let sessions = relay.view.sessions("acme");
            if sessions.len() == 1 && sessions[0].transport == want {
                Ok(())
            } else {
                Err(sessions)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_by_iptables_falls_back_to_tcp_and_returns_to_quic() -> anyhow::Result<()> {
    trace_init();
    let Some(ns) = Netns::create() else {
        return Ok(());
    };
    ns.exec(&["iptables", "-A", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: iptables is needed (scripts/test.sh installs it: apt install iptables)"
            )
        })?;

    let host = ns.host_ip.to_string();
    let dir = tempfile::tempdir()?;
    let c = rcgen::generate_simple_self_signed(vec![host.clone()])?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c.cert.pem())?;
    std::fs::write(&key, c.signing_key.serialize_pem())?;
    let relay = relay()
        .configure(|f| {
            f.listen.https = Some(SocketAddr::new(IpAddr::V4(ns.host_ip), 0));
            f.tls.cert = Some(cert.clone());
            f.tls.key = Some(key.clone());
        })
        .spawn()
        .await;
    let cred = relay.provision("acme").await;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, &cred.secret)?;
    let backend = Backend::spawn_on(SocketAddr::new(IpAddr::V4(ns.host_ip), 0)).await;

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(bin("connector"))
        .args([
            "run",
            "--server",
            &format!("https://{host}:{}", relay.addr.port()),
        ])
        .args(["--tenant", "acme", "--transport", "auto"])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--ca-cert")
        .arg(&cert)
        .args(["--target", &format!("app={}", backend.url())])
        .env("CONNECTOR_SESSION__COUNT", "1")
        .env("CONNECTOR_SESSION__QUIC_FALLBACK_AFTER", "1s")
        .env("CONNECTOR_SESSION__QUIC_PROBE_INTERVAL", "2s")
        .env("CONNECTOR_SESSION__BACKOFF_CAP", "1s");
    let _connector = ChildGuard::spawn(cmd);

    // UDP is dropped inside the namespace: the session comes up on TLS over TCP.
    wait_for_transport(&relay, "tcp").await;
    let client = Client::new(&cert);
    let a = client
        .get(&relay.http_url("/relay/acme/app/over-tcp"))
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-echo-path"], "/over-tcp");

    // The firewall opens: the connector probes QUIC and moves back.
    ns.exec(&["iptables", "-D", "OUTPUT", "-p", "udp", "-j", "DROP"])
        .map_err(|e| anyhow::anyhow!(e))?;
    wait_for_transport(&relay, "quic").await;
    let a = client
        .get(&relay.http_url("/relay/acme/app/over-quic"))
        .await?;
    assert_eq!(a.status, StatusCode::OK);
    Ok(())
}
