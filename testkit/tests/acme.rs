//! Certificates per hostname over real TLS: ACME issuance and renewal against Debian's pebble
//! (a test CA) with TLS-ALPN-01 and HTTP-01 answered by the relay itself, uploaded certificates
//! served by SNI, and bad uploads refused by the CLI.
//!
//! pebble and pebble-challtestsrv (its mock DNS, answering 127.0.0.1 for every name) run as
//! processes on free loopback ports; pebble validates challenges on the relay's own HTTPS and
//! plain-HTTP ports. Without pebble these tests skip with a message, except under CI (`CI=true`),
//! where they fail: scripts/test.sh installs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use relay_server::config::AcmeFile;
use relay_server::testing::{relay, RelayHandle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use testkit::process::{bin, relay_cli, ChildGuard};
use testkit::{eventually, trace_init};

mod common;

const HOST: &str = "app.acme.test";
/// Issuance on loopback takes a second or two; this leaves room for one retry.
const ISSUE_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn tls_alpn_01_issues_and_a_renewal_replaces_the_certificate_without_restart() {
    let Some(pebble) = Pebble::find() else { return };
    let world = World::start(pebble, &["tls-alpn-01"]).await;
    world.mark_for_acme();
    let first = world.wait_for_issued(None).await;
    // curl with pebble's root verifies it for that name.
    world.curl_verifies(HOST).await;
    // Other names get the relay's own certificate.
    let own = read_certs(&world.relay.ca_cert());
    assert_eq!(leaf(world.relay.addr, "localhost").await, own[0]);
    assert_eq!(leaf(world.relay.addr, "other.test").await, own[0]);
    // Expiry on /metrics.
    let token = world.relay.api_token("metrics").await;
    let admin = world.relay.admin_addr.expect("admin listener");
    let metrics = testkit::Client::loopback(&world.relay.ca_cert())
        .get_bearer(&format!("http://{admin}/metrics"), &token)
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains(&format!(
            "relay_certificate_expiry_timestamp_seconds{{hostname=\"{HOST}\",source=\"acme\"}}"
        )),
        "{metrics}"
    );

    // A renewal asked for with the CLI replaces it on the wire, with no restart.
    relay_cli(
        &world.relay.data_dir(),
        &["tenant", "hostname", "cert", "renew", "acme", HOST],
    );
    let second = world.wait_for_issued(Some(&first)).await;
    assert_ne!(first, second);
    let listed = relay_cli(
        &world.relay.data_dir(),
        &["tenant", "hostname", "list", "acme"],
    );
    assert!(listed.contains("acme, expires"), "{listed}");
}

#[tokio::test]
async fn http_01_issues_on_the_plain_listener() {
    let Some(pebble) = Pebble::find() else { return };
    // TLS-ALPN-01 is not offered to the CA at all: only HTTP-01 can succeed.
    let world = World::start(pebble, &["http-01"]).await;
    world.mark_for_acme();
    world.wait_for_issued(None).await;
    world.curl_verifies(HOST).await;
}

#[tokio::test]
async fn uploaded_certificates_are_served_by_sni_and_bad_ones_refused() {
    trace_init();
    let relay = relay().spawn().await;
    relay.create_tenant("acme").await;
    relay.create_tenant("other").await;
    relay.store.add_hostname("acme", HOST, "app").await.unwrap();
    relay
        .store
        .add_hostname("other", "other.test", "app")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = write_cert(dir.path(), "good", &[HOST], false);
    let wrong_name = write_cert(dir.path(), "wrong-name", &["elsewhere.test"], false);
    let expired = write_cert(dir.path(), "expired", &[HOST], true);
    let other_key = write_cert(dir.path(), "other", &[HOST], false);
    let data = relay.data_dir();
    let set = |cert: &Path, key: &Path, tenant: &str| {
        Command::new(bin("relay-server"))
            .arg("--data-dir")
            .arg(&data)
            .args(["tenant", "hostname", "cert", "set", tenant, HOST, "--cert"])
            .arg(cert)
            .arg("--key")
            .arg(key)
            .output()
            .expect("run relay-server")
    };
    for (cert, key, tenant, says) in [
        (
            &wrong_name.0,
            &wrong_name.1,
            "acme",
            "does not cover app.acme.test",
        ),
        (&expired.0, &expired.1, "acme", "expired"),
        (
            &good.0,
            &other_key.1,
            "acme",
            "does not belong to the certificate",
        ),
        (&good.0, &good.1, "other", "not found"),
        (&good.1, &good.1, "acme", "no certificate found"),
    ] {
        let out = set(cert, key, tenant);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{says}: accepted");
        assert!(stderr.contains(says), "{says}: {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
    let out = set(&good.0, &good.1, "acme");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uploaded = read_certs(&good.0);
    let addr = relay.addr;
    let presented = eventually(
        Duration::from_secs(10),
        "the uploaded certificate served",
        || {
            let uploaded = uploaded.clone();
            async move { served(addr, HOST, &uploaded).await }
        },
    )
    .await;
    assert_eq!(presented, uploaded[0]);
    // The relay's own certificate for its own name and for a hostname without one.
    let own = read_certs(&relay.ca_cert());
    assert_eq!(leaf(addr, "localhost").await, own[0]);
    assert_eq!(leaf(addr, "other.test").await, own[0]);
    // The key is sealed at rest: the database file never holds the PEM key.
    let key_pem = std::fs::read_to_string(&good.1).unwrap();
    let body = key_pem.lines().nth(1).unwrap().to_string();
    let db = std::fs::read(data.join("relay.db")).unwrap();
    let wal = std::fs::read(data.join("relay.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!String::from_utf8_lossy(bytes).contains(&body));
    }
    // Removing it brings the relay's own back.
    relay_cli(
        &data,
        &["tenant", "hostname", "cert", "remove", "acme", HOST],
    );
    eventually(
        Duration::from_secs(10),
        "the relay's own certificate again",
        || {
            let own = own[0].clone();
            async move { leaf(addr, HOST).await == own }
        },
    )
    .await;
}

#[tokio::test]
async fn the_management_api_takes_certificates_and_never_shows_keys() {
    trace_init();
    let relay = relay().spawn().await;
    relay.create_tenant("acme").await;
    relay.store.add_hostname("acme", HOST, "app").await.unwrap();
    let token = relay.api_token("certs").await;
    let auth = format!("Bearer {token}");
    let admin = relay.admin_addr.expect("admin listener");
    let api = |path: &str| format!("http://{admin}/api/v1/tenants/acme/hostnames{path}");
    let client = testkit::Client::loopback(&relay.ca_cert());
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let good = write_cert(dir.path(), "good", &[HOST], false);
    let wrong = write_cert(dir.path(), "wrong", &["elsewhere.test"], false);
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    let upload = |cert: &Path, key: &Path| {
        bytes::Bytes::from(
            serde_json::json!({"certificate": pem(cert), "private_key": pem(key)}).to_string(),
        )
    };
    let url = api(&format!("/{HOST}/certificate"));
    let refused = client
        .request_with("PUT", &url, &headers, upload(&wrong.0, &wrong.1))
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("does not cover"),
        "{}",
        refused.text()
    );
    let stored = client
        .request_with("PUT", &url, &headers, upload(&good.0, &good.1))
        .await
        .unwrap();
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert!(
        stored.text().contains("\"source\":\"upload\""),
        "{}",
        stored.text()
    );
    assert!(!stored.text().contains("PRIVATE KEY"));
    let listed = client.get_bearer(&api(""), &token).await.unwrap().text();
    assert!(listed.contains("\"not_after\""), "{listed}");
    assert!(!listed.contains("PRIVATE KEY"));
    let served_now = read_certs(&good.0)[0].clone();
    let addr = relay.addr;
    eventually(
        Duration::from_secs(10),
        "the uploaded certificate served",
        || {
            let want = served_now.clone();
            async move { leaf(addr, HOST).await == want }
        },
    )
    .await;
    // Renewing a hostname that is not ACME's is refused; removing works once.
    let renew = client
        .request_with(
            "POST",
            &format!("{url}/renew"),
            &headers,
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(renew.status, 422, "{}", renew.text());
    let removed = client
        .request_with("DELETE", &url, &headers, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(removed.status, 204);
    let again = client
        .request_with("DELETE", &url, &headers, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(again.status, 404);
}

// === the world ===

struct World {
    relay: RelayHandle,
    /// pebble's root: trusts what it issues.
    roots: Vec<CertificateDer<'static>>,
    root_file: PathBuf,
    _pebble: ChildGuard,
    _dns: ChildGuard,
    _dir: tempfile::TempDir,
}

impl World {
    /// pebble's ports first (the relay's config names its directory URL), then the relay on
    /// port 0, then pebble told to validate on the relay's ports.
    async fn start(pebble: Pebble, challenges: &[&str]) -> World {
        trace_init();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = common::certificate(dir.path(), &["localhost", "127.0.0.1"]);
        let (acme_port, mgmt_port, dns_port) = (free_tcp(), free_tcp(), free_udp());
        let directory = format!("https://localhost:{acme_port}/dir");
        let challenges: Vec<String> = challenges.iter().map(|c| c.to_string()).collect();
        let root_ca = cert.clone();
        let relay = relay()
            .configure(move |f| {
                f.acme = AcmeFile {
                    enabled: Some(true),
                    directory: Some(directory),
                    contact: Some(vec!["ops@acme.test".into()]),
                    root_ca: Some(root_ca),
                    challenge: Some(challenges),
                    check_interval: Some(Duration::from_secs(1)),
                    retry_initial: Some(Duration::from_secs(1)),
                    request_timeout: Some(Duration::from_secs(10)),
                };
            })
            .spawn()
            .await;
        let http_port = relay.http_addr.expect("plain listener").port();
        let config = dir.path().join("pebble.json");
        let json = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": relay.addr.port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(&config, json.to_string()).unwrap();
        let mut dns = Command::new(&pebble.challtestsrv);
        dns.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_tcp())]);
        let dns = ChildGuard::spawn(dns);
        let mut ca = Command::new(&pebble.pebble);
        ca.arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .current_dir(dir.path());
        let ca = ChildGuard::spawn(ca);
        // pebble's root, from its management interface once it listens.
        let client = testkit::Client::loopback(&cert);
        let url = format!("https://localhost:{mgmt_port}/roots/0");
        let root_pem = eventually(Duration::from_secs(20), "pebble's root", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                match client.get(&url).await {
                    Ok(a) if a.status == 200 => Ok(a.text()),
                    Ok(a) => Err(format!("status {}", a.status)),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        let root_file = dir.path().join("pebble-root.pem");
        std::fs::write(&root_file, &root_pem).unwrap();
        let roots = read_certs(&root_file);
        relay.create_tenant("acme").await;
        relay.store.add_hostname("acme", HOST, "app").await.unwrap();
        World {
            relay,
            roots,
            root_file,
            _pebble: ca,
            _dns: dns,
            _dir: dir,
        }
    }

    /// Marks the hostname for ACME through the CLI, as an admin would.
    fn mark_for_acme(&self) {
        relay_cli(
            &self.relay.data_dir(),
            &["tenant", "hostname", "acme", "acme", HOST, "on"],
        );
    }

    /// Waits until the relay serves a certificate for HOST that pebble's root verifies (and that
    /// differs from `previous`); returns its leaf.
    async fn wait_for_issued(
        &self,
        previous: Option<&CertificateDer<'static>>,
    ) -> CertificateDer<'static> {
        let (addr, roots) = (self.relay.addr, self.roots.clone());
        let store = self.relay.store.clone();
        eventually(ISSUE_WITHIN, "a certificate from pebble served", || {
            let (roots, store) = (roots.clone(), store.clone());
            async move {
                match served(addr, HOST, &roots).await {
                    Ok(leaf) if Some(&leaf) != previous => Ok(leaf),
                    Ok(_) => Err("still the previous certificate".to_string()),
                    Err(e) => {
                        let state = store.acme_hostnames().await.map(|h| format!("{h:?}"));
                        Err(format!("{e}; ACME state {state:?}"))
                    }
                }
            }
        })
        .await
    }

    /// `curl --cacert <pebble root>` to HOST on the relay's port verifies the certificate. The
    /// tenant has no connector, so the request itself may wait: the TLS verdict is what counts
    /// (exit 60 or 35 would be a refused certificate or handshake).
    async fn curl_verifies(&self, host: &str) {
        let port = self.relay.addr.port();
        // Not std's Command: the relay runs on this test's thread and must keep answering.
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "3"])
            .args(["-w", "verify=%{ssl_verify_result}"])
            .arg("--cacert")
            .arg(&self.root_file)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .arg(format!("https://{host}:{port}/"))
            .output()
            .await
            .expect("curl (scripts/test.sh installs it)");
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(code, Some(0) | Some(28)) && stdout.contains("verify=0"),
            "curl exit {code:?}, {stdout}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The leaf the relay presents for `sni`, if a client trusting `roots` accepts it.
async fn served(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> Result<CertificateDer<'static>, String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_string())
}

/// The leaf the relay presents for `sni`, whoever issued it and whatever names it has.
async fn leaf(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Accepts any server certificate: for looking at which one is presented, never for trust.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A self-signed certificate for `names` (already expired when `expired`): (cert, key) files.
fn write_cert(dir: &Path, stem: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn free_tcp() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// pebble and pebble-challtestsrv (Debian's `pebble` package; `PEBBLE_BIN` names a directory
/// holding both instead).
struct Pebble {
    pebble: PathBuf,
    challtestsrv: PathBuf,
}

impl Pebble {
    /// Both binaries, or `None` after saying why the test skips; under CI (`CI=true`) a missing
    /// pebble fails the test instead.
    fn find() -> Option<Pebble> {
        let dirs: Vec<PathBuf> = match std::env::var_os("PEBBLE_BIN") {
            Some(d) => vec![PathBuf::from(d)],
            None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .chain([PathBuf::from("/usr/bin")])
                .collect(),
        };
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
        match (find("pebble"), find("pebble-challtestsrv")) {
            (Some(pebble), Some(challtestsrv)) => Some(Pebble {
                pebble,
                challtestsrv,
            }),
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("pebble not found: scripts/test.sh installs it (apt install pebble)")
            }
            _ => {
                eprintln!(
                    "skipping: pebble and pebble-challtestsrv not found (apt install pebble, or \
                     run scripts/test.sh, which installs it; PEBBLE_BIN may name their directory)"
                );
                None
            }
        }
    }
}
