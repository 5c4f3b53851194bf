//! Pairing (`/pair/{tenant}/…`, docs/pairing.md): the published `@localfirst/relay` client in
//! Node against an in-process relay, the refusals and limits with their close codes, and memory
//! under 1,000 idle peers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relay_server::config::FileConfig;
use relay_server::testing::RelayHandle;
use relay_store::PairingMode;
use serde::{Deserialize, Serialize};
use testkit::trace_init;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const INSTALL_HINT: &str = "the pinned npm client is not installed: run `npm ci --prefix \
     testkit/pairing` (Node 18 or later on PATH)";

#[derive(Serialize)]
struct Join<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "documentIds")]
    document_ids: &'a [&'a str],
}

#[derive(Debug, Deserialize, PartialEq)]
struct Introduction {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "peerId")]
    peer_id: String,
    #[serde(rename = "documentIds")]
    document_ids: Vec<String>,
}

async fn relay(f: impl FnOnce(&mut FileConfig)) -> RelayHandle {
    trace_init();
    relay_server::testing::relay().configure(f).spawn().await
}

/// Creates `tenant` with pairing `mode` and waits until the relay knows the tenant.
async fn tenant(relay: &RelayHandle, name: &str, mode: PairingMode) {
    relay.create_tenant(name).await;
    relay.store.set_pairing_mode(name, mode).await.unwrap();
    relay.sync().await;
}

/// A WebSocket on the relay's plain-HTTP ingress, with small buffers (1,000 of them in one test).
async fn open(relay: &RelayHandle, path: &str) -> Ws {
    let addr = relay.http_addr.expect("plain HTTP listener");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, response) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(
            format!("ws://{addr}{path}"),
            tcp,
            Some(config),
        ),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Reads until the relay's close frame and returns its code (panics after 15 s or without one).
async fn close_code(ws: &mut Ws) -> u16 {
    timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    })
    .await
    .expect("a close within 15 s")
}

/// The next data message (panics after 5 s).
async fn next_data(ws: &mut Ws) -> Message {
    timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => return m,
                Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a message within 5 s")
}

async fn join(ws: &mut Ws, ids: &[&str]) {
    let bytes = rmp_serde::to_vec_named(&Join {
        kind: "Join",
        document_ids: ids,
    })
    .unwrap();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

async fn introduction(ws: &mut Ws) -> Introduction {
    match next_data(ws).await {
        Message::Binary(b) => rmp_serde::from_slice(&b).expect("an Introduction"),
        other => panic!("expected a binary Introduction, got {other:?}"),
    }
}

fn testkit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pairing")
}

#[tokio::test]
async fn npm_client_pairs_through_the_relay_and_tenants_stay_apart() {
    let relay = relay(|_| {}).await;
    // acme in token mode (the token goes into the base URL), globex open.
    tenant(&relay, "acme", PairingMode::Token).await;
    tenant(&relay, "globex", PairingMode::Open).await;
    let token = relay
        .store
        .create_pairing_token("acme", None, "interop", &hasher(&relay))
        .await
        .unwrap();
    let dir = testkit_dir();
    assert!(
        dir.join("node_modules/@localfirst/relay/package.json")
            .exists(),
        "{INSTALL_HINT}"
    );
    let port = relay.addr.port();
    let base = format!("wss://localhost:{port}/pair/acme/{}", token.value);
    let other = format!("wss://localhost:{port}/pair/globex");
    let child = tokio::process::Command::new("node")
        .arg("interop.mjs")
        .arg(&base)
        .arg(&other)
        .current_dir(&dir)
        .env("NODE_EXTRA_CA_CERTS", relay.ca_cert())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node ({e}); {INSTALL_HINT}"));
    let out = timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the Node script ends within 40 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().last() == Some("PASS"),
        "interop failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The close alice started reached bob through the relay as a normal close.
    assert!(
        stdout.contains(r#""event":"bob-socket-closed","code":1000"#),
        "{stdout}"
    );

    let m = relay.view.metrics();
    assert!(m.pairing_pairings.load(Ordering::SeqCst) >= 1);
    // Two texts and two binaries of 14 to 16 bytes went through the pipe.
    assert!(m.pairing_bytes.load(Ordering::SeqCst) >= 60);

    // Audit: the joins and the pairing, without payloads or the token.
    let records = eventually_audit(&relay, |r| {
        r.iter()
            .any(|r| r.path == "/pair/acme/connection/alice/bob/doc-shared")
            && r.iter()
                .any(|r| r.path == "/pair/acme/connection/bob/alice/doc-shared")
            && r.iter().filter(|r| r.target == "introduction").count() >= 3
    })
    .await;
    let joins: Vec<_> = records
        .iter()
        .filter(|r| r.target == "introduction")
        .map(|r| (r.tenant.as_str(), r.path.as_str()))
        .collect();
    assert!(
        joins.contains(&("acme", "/pair/acme/introduction/alice")),
        "{joins:?}"
    );
    assert!(
        joins.contains(&("globex", "/pair/globex/introduction/carol")),
        "{joins:?}"
    );
    assert!(records.iter().all(|r| !r.path.contains(&token.value)));
}

#[tokio::test]
async fn refusals_close_with_the_documented_codes() {
    let relay = relay(|f| {
        f.pairing.max_frame_bytes = Some(1024);
        f.pairing.max_document_ids = Some(3);
        f.pairing.max_held_bytes = Some(4096);
        f.pairing.hold_timeout = Some(Duration::from_secs(1));
        f.pairing.max_peers = Some(4);
    })
    .await;
    tenant(&relay, "off", PairingMode::Off).await;
    tenant(&relay, "open", PairingMode::Open).await;
    tenant(&relay, "tok", PairingMode::Token).await;
    let h = hasher(&relay);
    let bound = relay
        .store
        .create_pairing_token("tok", Some("alice"), "", &h)
        .await
        .unwrap();
    let revoked = relay
        .store
        .create_pairing_token("tok", None, "", &h)
        .await
        .unwrap();
    relay
        .store
        .revoke_pairing_token("tok", &revoked.token.id)
        .await
        .unwrap();

    // Pairing off, unknown tenant: 4404.
    for path in ["/pair/off/introduction/a", "/pair/nobody/introduction/a"] {
        assert_eq!(
            close_code(&mut open(&relay, path).await).await,
            4404,
            "{path}"
        );
    }
    // Token mode: none, garbage, revoked, bound to another peer id: 4401.
    for path in [
        "/pair/tok/introduction/alice".to_string(),
        "/pair/tok/rpt_0123/introduction/alice".to_string(),
        format!("/pair/tok/{}/introduction/alice", revoked.value),
        format!("/pair/tok/{}/introduction/mallory", bound.value),
        format!("/pair/tok/{}/connection/mallory/alice/d", bound.value),
    ] {
        assert_eq!(
            close_code(&mut open(&relay, &path).await).await,
            4401,
            "{path}"
        );
    }
    // The bound token admits its own peer id.
    let mut alice = open(
        &relay,
        &format!("/pair/tok/{}/introduction/alice", bound.value),
    )
    .await;
    join(&mut alice, &["d"]).await;

    // Malformed peer id, undecodable message: 4400.
    assert_eq!(
        close_code(&mut open(&relay, "/pair/open/introduction/%ff").await).await,
        4400
    );
    let mut garbage = open(&relay, "/pair/open/introduction/g").await;
    garbage
        .send(Message::Binary(b"\xc1".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut garbage).await, 4400);

    // A live peer id is not taken over: the newcomer gets 4409, the first one still works.
    let mut p1 = open(&relay, "/pair/open/introduction/p1").await;
    join(&mut p1, &["doc"]).await;
    peers_online(&relay, 2).await; // alice and p1
    let mut again = open(&relay, "/pair/open/introduction/p1").await;
    assert_eq!(close_code(&mut again).await, 4409);
    let mut p2 = open(&relay, "/pair/open/introduction/p2").await;
    join(&mut p2, &["doc"]).await;
    let intro = introduction(&mut p1).await;
    assert_eq!(
        intro,
        Introduction {
            kind: "Introduction".into(),
            peer_id: "p2".into(),
            document_ids: vec!["doc".into()]
        }
    );
    assert_eq!(introduction(&mut p2).await.peer_id, "p1");

    // Document ids per peer (3): the fourth closes with 4431.
    join(&mut p2, &["a", "b"]).await;
    join(&mut p2, &["c"]).await;
    assert_eq!(close_code(&mut p2).await, 4431);

    // Peers per tenant (4): p1, p3, p4, p5 online, the fifth gets 4429.
    let mut others = Vec::new();
    for p in ["p3", "p4", "p5"] {
        let mut ws = open(&relay, &format!("/pair/open/introduction/{p}")).await;
        join(&mut ws, &["x"]).await;
        others.push(ws);
    }
    // Joins are processed in order per socket; a round trip on the last one settles them.
    let _ = introduction(&mut others[2]).await;
    assert_eq!(
        close_code(&mut open(&relay, "/pair/open/introduction/p6").await).await,
        4429
    );
    // Another tenant's peers do not count: alice on `tok` is online too.

    // Oversized message (1 KiB limit): 1009.
    let mut big = open(&relay, "/pair/open/connection/x/y/d").await;
    big.send(Message::Binary(vec![7u8; 2048].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut big).await, 1009);

    // Held bytes of an unmatched connection (4 KiB): 4413.
    let mut held = open(&relay, "/pair/open/connection/h/i/d").await;
    for _ in 0..5 {
        held.send(Message::Binary(vec![1u8; 1000].into()))
            .await
            .unwrap();
    }
    assert_eq!(close_code(&mut held).await, 4413);

    // Unmatched for the hold timeout (1 s): 4410, no sooner than that.
    let started = std::time::Instant::now();
    let mut lonely = open(&relay, "/pair/open/connection/l/m/d").await;
    assert_eq!(close_code(&mut lonely).await, 4410);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A second socket for the same waiting connection: 4409.
    let mut first = open(&relay, "/pair/open/connection/q/r/d").await;
    let mut second = open(&relay, "/pair/open/connection/q/r/d").await;
    assert_eq!(close_code(&mut second).await, 4409);
    assert_eq!(close_code(&mut first).await, 4410);

    // Not a WebSocket handshake: 426 over plain HTTP.
    let client = testkit::Client::new(&relay.ca_cert());
    let r = client
        .get(&relay.url("/pair/open/introduction/z"))
        .await
        .unwrap();
    assert_eq!(r.status, 426);

    // 17 refusals above: 2 × 4404, 5 × 4401, 2 × 4400, 2 × 4409, 4431, 4429, 1009, 4413, 2 × 4410.
    let refusals = relay.view.metrics().pairing_refusals.load(Ordering::SeqCst);
    assert_eq!(refusals, 17);
    drop(alice);
}

#[tokio::test]
async fn pipes_held_and_live_messages_and_closes_both() {
    let relay = relay(|_| {}).await;
    tenant(&relay, "acme", PairingMode::Open).await;
    let mut a = open(&relay, "/pair/acme/connection/a/b/doc").await;
    a.send(Message::Text("held for b".into())).await.unwrap();
    a.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    // Give the relay time to read (and hold) both before the partner arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = open(&relay, "/pair/acme/connection/b/a/doc").await;
    assert_eq!(next_data(&mut b).await, Message::Text("held for b".into()));
    assert_eq!(
        next_data(&mut b).await,
        Message::Binary(vec![1, 2, 3].into())
    );
    b.send(Message::Text("to a".into())).await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::Text("to a".into()));
    a.send(Message::Text("to b".into())).await.unwrap();
    assert_eq!(next_data(&mut b).await, Message::Text("to b".into()));
    b.close(None).await.unwrap();
    assert_eq!(close_code(&mut a).await, 1000);
    let m = relay.view.metrics();
    assert_eq!(m.pairing_pairings.load(Ordering::SeqCst), 1);
    assert_eq!(
        m.pairing_bytes.load(Ordering::SeqCst),
        ("held for b".len() + 3 + "to a".len() + "to b".len()) as u64
    );
    // The sockets are gone from the tenant's count.
    for _ in 0..100 {
        if m.pairing_connections.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.pairing_connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tenants_with_the_same_ids_never_pair() {
    let relay = relay(|f| f.pairing.hold_timeout = Some(Duration::from_secs(1))).await;
    tenant(&relay, "acme", PairingMode::Open).await;
    tenant(&relay, "globex", PairingMode::Open).await;
    // Same peer id on two tenants: both admitted (no 4409), and never introduced.
    let mut a1 = open(&relay, "/pair/acme/introduction/alice").await;
    let mut g1 = open(&relay, "/pair/globex/introduction/alice").await;
    let mut g2 = open(&relay, "/pair/globex/introduction/bob").await;
    join(&mut a1, &["doc"]).await;
    join(&mut g1, &["other"]).await;
    join(&mut g2, &["doc"]).await;
    // acme's bob joins the doc: alice of acme hears of him, globex's peers do not.
    let mut a2 = open(&relay, "/pair/acme/introduction/bob").await;
    join(&mut a2, &["doc"]).await;
    assert_eq!(introduction(&mut a1).await.peer_id, "bob");
    assert_eq!(introduction(&mut a2).await.peer_id, "alice");
    assert!(timeout(Duration::from_millis(500), next_data(&mut g2))
        .await
        .is_err());
    // Mirror-image connections on two tenants do not pair: both wait out the hold timeout.
    let mut c1 = open(&relay, "/pair/acme/connection/alice/bob/doc").await;
    let mut c2 = open(&relay, "/pair/globex/connection/bob/alice/doc").await;
    assert_eq!(close_code(&mut c1).await, 4410);
    assert_eq!(close_code(&mut c2).await, 4410);
}

#[tokio::test]
async fn revoking_or_turning_off_closes_open_sockets() {
    let relay = relay(|f| f.pairing.recheck_interval = Some(Duration::from_millis(100))).await;
    tenant(&relay, "tok", PairingMode::Token).await;
    tenant(&relay, "open", PairingMode::Open).await;
    let h = hasher(&relay);
    let t1 = relay
        .store
        .create_pairing_token("tok", None, "", &h)
        .await
        .unwrap();
    let t2 = relay
        .store
        .create_pairing_token("tok", None, "", &h)
        .await
        .unwrap();
    let mut alice = open(
        &relay,
        &format!("/pair/tok/{}/introduction/alice", t1.value),
    )
    .await;
    let mut waiting = open(&relay, &format!("/pair/tok/{}/connection/a/b/d", t2.value)).await;
    let mut carol = open(&relay, "/pair/open/introduction/carol").await;
    join(&mut alice, &["d"]).await;
    join(&mut carol, &["d"]).await;
    peers_online(&relay, 2).await;

    // A revoked token closes the sockets that came with it (4401), not the others.
    relay
        .store
        .revoke_pairing_token("tok", &t1.token.id)
        .await
        .unwrap();
    assert_eq!(close_code(&mut alice).await, 4401);
    assert!(timeout(Duration::from_millis(500), next_data(&mut waiting))
        .await
        .is_err());
    // Pairing turned off closes the rest of the tenant's sockets (4404).
    relay
        .store
        .set_pairing_mode("tok", PairingMode::Off)
        .await
        .unwrap();
    assert_eq!(close_code(&mut waiting).await, 4404);
    // A disabled tenant too.
    relay.store.set_tenant_enabled("open", false).await.unwrap();
    relay.sync().await;
    assert_eq!(close_code(&mut carol).await, 4404);
    peers_online(&relay, 0).await;
}

#[tokio::test]
async fn management_api_switches_pairing_and_issues_tokens() {
    let relay = relay(|f| f.pairing.recheck_interval = Some(Duration::from_millis(100))).await;
    tenant(&relay, "acme", PairingMode::Off).await;
    let client = testkit::Client::new(&relay.ca_cert());
    let base = format!(
        "http://{}/api/v1/tenants/acme",
        relay.admin_addr.expect("admin")
    );
    let auth = format!("Bearer {}", relay.api_token("ops").await);
    let call = |method: &'static str, path: &str, body: &str| {
        let (client, url, auth) = (&client, format!("{base}{path}"), auth.clone());
        let body = bytes::Bytes::from(body.to_string());
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            let a = client
                .request_with(method, &url, &headers, body)
                .await
                .unwrap();
            let json = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
            (a.status.as_u16(), json)
        }
    };
    assert_eq!(
        close_code(&mut open(&relay, "/pair/acme/introduction/alice").await).await,
        4404
    );
    let (status, body) = call("PATCH", "/pairing", r#"{"mode":"token"}"#).await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("token")));
    let (status, _) = call("PATCH", "/pairing", r#"{"mode":"always"}"#).await;
    assert_eq!(status, 422);
    let (status, created) = call("POST", "/pairing/tokens", r#"{"peer_id":"alice"}"#).await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let mut alice = open(&relay, &format!("/pair/acme/{token}/introduction/alice")).await;
    peers_online(&relay, 1).await;
    let (status, listed) = call("GET", "/pairing", "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["tokens"][0]["id"], id.as_str());
    assert_eq!(listed["tokens"][0]["peer_id"], "alice");
    assert!(listed["tokens"][0].get("token").is_none());
    let (status, _) = call("DELETE", &format!("/pairing/tokens/{id}"), "").await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut alice).await, 4401);
    let actions: Vec<String> = relay
        .store
        .admin_actions(100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    for a in [
        "tenant.pairing",
        "pairing_token.create",
        "pairing_token.revoke",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
}

#[tokio::test]
async fn idle_sockets_close_with_4408() {
    let relay = relay(|f| f.pairing.idle_timeout = Some(Duration::from_secs(1))).await;
    tenant(&relay, "acme", PairingMode::Open).await;
    // This client never reads, so it never answers the relay's pings.
    let mut quiet = open(&relay, "/pair/acme/introduction/quiet").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(close_code(&mut quiet).await, 4408);
    // One that reads (and so answers pings) outlives the idle timeout.
    let mut awake = open(&relay, "/pair/acme/introduction/awake").await;
    let read = timeout(Duration::from_millis(2500), next_data(&mut awake)).await;
    assert!(read.is_err(), "the reading socket was closed: {read:?}");
}

#[tokio::test]
async fn a_thousand_idle_peers_stay_within_bounds() {
    const PEERS: usize = 1000;
    let relay = relay(|f| {
        f.pairing.max_peers = Some(PEERS as u32);
        f.limits.max_connections_per_ip = Some(4 * PEERS);
    })
    .await;
    tenant(&relay, "acme", PairingMode::Open).await;
    // Warm up: the first sockets allocate the runtime's and allocator's per-thread state.
    let mut warm = open(&relay, "/pair/acme/introduction/warm").await;
    join(&mut warm, &["w"]).await;
    drop(warm);
    let before = rss_kib();
    let mut peers = Vec::with_capacity(PEERS);
    for i in 0..PEERS {
        let mut ws = open(&relay, &format!("/pair/acme/introduction/peer-{i}")).await;
        let doc = format!("doc-{i}");
        join(&mut ws, &[doc.as_str()]).await;
        peers.push(ws);
    }
    peers_online(&relay, PEERS).await;
    // One more is refused by the per-tenant cap.
    assert_eq!(
        close_code(&mut open(&relay, "/pair/acme/introduction/extra").await).await,
        4429
    );
    let grown = rss_kib().saturating_sub(before);
    // Both ends live in this process: per peer the relay holds a 4 KiB read buffer, the
    // upgraded connection, its task and registry entry; the client its own 4 KiB buffer and
    // stream. 64 KiB per peer (both ends) is the bound: 128 KiB default buffers, or anything
    // that grows with traffic rather than with peers, would pass it.
    let bound = 64 * PEERS as u64;
    eprintln!("RSS grew {grown} KiB for {PEERS} idle peers (bound {bound} KiB)");
    assert!(grown < bound, "RSS grew {grown} KiB for {PEERS} peers");
    drop(peers);
}

/// Waits (≤ 5 s) until the relay counts `n` peers online.
async fn peers_online(relay: &RelayHandle, n: usize) {
    let m = relay.view.metrics();
    for _ in 0..250 {
        if m.pairing_peers.load(Ordering::SeqCst) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} peers online, expected {n}",
        m.pairing_peers.load(Ordering::SeqCst)
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn hasher(relay: &RelayHandle) -> relay_store::SecretHasher {
    let keys = relay_server::keys::Keys::load_or_create(&relay.data_dir()).unwrap();
    relay_store::SecretHasher::new(&keys.pepper)
}

async fn eventually_audit(
    relay: &RelayHandle,
    done: impl Fn(&[relay_store::AuditRecord]) -> bool,
) -> Vec<relay_store::AuditRecord> {
    for _ in 0..100 {
        let all = relay.store.audit(None, 1000).await.unwrap();
        if done(&all) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("audit records did not appear");
}

#[tokio::test]
async fn peers_on_two_nodes_are_introduced_and_paired() {
    trace_init();
    let pg = testkit::PgCluster::start();
    let url = pg.url();
    let cluster = |f: &mut FileConfig| {
        f.database_url = Some(url.clone());
        f.cluster.heartbeat_interval = Some(Duration::from_millis(200));
        f.cluster.node_timeout = Some(Duration::from_secs(2));
    };
    let one = relay_server::testing::relay()
        .configure(cluster)
        .spawn()
        .await;
    let two = relay_server::testing::relay()
        .configure(cluster)
        .share_keys(&one)
        .spawn()
        .await;
    tenant(&one, "acme", PairingMode::Open).await;
    two.sync().await;

    // alice on one node, bob on the other: introduced both ways.
    let mut alice = open(&one, "/pair/acme/introduction/alice").await;
    join(&mut alice, &["doc", "only-alice"]).await;
    peers_online(&one, 1).await;
    let mut bob = open(&two, "/pair/acme/introduction/bob").await;
    join(&mut bob, &["doc"]).await;
    let to_bob = introduction(&mut bob).await;
    assert_eq!(
        (to_bob.peer_id.as_str(), to_bob.document_ids),
        ("alice", vec!["doc".into()])
    );
    let to_alice = introduction(&mut alice).await;
    assert_eq!(
        (to_alice.peer_id.as_str(), to_alice.document_ids),
        ("bob", vec!["doc".into()])
    );
    // A peer id online on one node is refused on the other.
    assert_eq!(
        close_code(&mut open(&two, "/pair/acme/introduction/alice").await).await,
        4409
    );

    // alice's connection waits on one node (with a message for bob); bob's arrives on the other.
    let mut a = open(&one, "/pair/acme/connection/alice/bob/doc").await;
    a.send(Message::Text("held for bob".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = open(&two, "/pair/acme/connection/bob/alice/doc").await;
    assert_eq!(
        next_data(&mut b).await,
        Message::Text("held for bob".into())
    );
    b.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(
        next_data(&mut a).await,
        Message::Binary(vec![1, 2, 3].into())
    );
    a.send(Message::Text("to bob".into())).await.unwrap();
    assert_eq!(next_data(&mut b).await, Message::Text("to bob".into()));
    // Either side closing closes the other, across the nodes.
    b.close(None).await.unwrap();
    assert_eq!(close_code(&mut a).await, 1000);
    assert_eq!(
        one.view.metrics().pairing_pairings.load(Ordering::SeqCst),
        1
    );

    // Both mirrors arriving on the two nodes at the same moment still meet.
    let (x, y) = tokio::join!(
        open(&one, "/pair/acme/connection/alice/bob/doc2"),
        open(&two, "/pair/acme/connection/bob/alice/doc2"),
    );
    let (mut x, mut y) = (x, y);
    x.send(Message::Text("x".into())).await.unwrap();
    y.send(Message::Text("y".into())).await.unwrap();
    assert_eq!(next_data(&mut y).await, Message::Text("x".into()));
    assert_eq!(next_data(&mut x).await, Message::Text("y".into()));
    // Going offline on one node frees the peer id for the other.
    drop(alice);
    peers_online(&one, 0).await;
    let mut again = open(&two, "/pair/acme/introduction/alice").await;
    join(&mut again, &["doc"]).await;
    assert_eq!(introduction(&mut again).await.peer_id, "bob");
}
