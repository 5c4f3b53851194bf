//! The connector side of the relay: the QUIC endpoint, session authentication and the session's
//! control loop (renewal, expiry, drain, revocation).

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use tunnel_protocol::{ControlFrame, ErrorCode, GoAway, Refused, Renewed, Welcome, ALPN};

use tunnel_session::control::ControlStream;
use tunnel_session::mux;
use tunnel_session::transport::Conn;

use crate::auth::Refusal;
use crate::registry::{CloseKind, SessionEntry};
use crate::Relay;

/// Streams a connector may open towards the relay: the control stream, with room to spare.
const CONNECTOR_OPENED_STREAMS: u32 = 4;
/// How long the relay waits for a refused connector to read the refusal before closing.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Builds the QUIC server config: TLS 1.3 only, our ALPN, no 0-RTT, bounded windows.
pub(crate) fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    config: &crate::Config,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec(), tunnel_protocol::node::NODE_ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(config.tunnel.idle_timeout.try_into()?));
    // The negotiated idle timeout is the smaller of both peers'; pinging from this side too keeps
    // a quiet session alive even when a connector's keep-alive is longer than our idle timeout.
    t.keep_alive_interval(Some(config.tunnel.idle_timeout / 3));
    t.max_concurrent_bidi_streams(VarInt::from_u32(CONNECTOR_OPENED_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.stream_receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(8 * 1024 * 1024);
    t.mtu_discovery_config(Some(tunnel_session::udp::mtu_discovery()));
    t.datagram_receive_buffer_size(None);
    server.transport_config(Arc::new(t));
    server.max_incoming(config.tunnel.max_pending_handshakes as usize);
    Ok(server)
}

/// Accepts connector sessions until `shutdown`.
pub(crate) async fn serve(
    relay: Arc<Relay>,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        // Why select: accept waits indefinitely; shutdown must end the loop at once.
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let relay = relay.clone();
        let links = (tracker.clone(), shutdown.clone());
        // A session's task lives as long as the session, at the size of its largest phase, and
        // a future keeps its captures and its async fn's arguments for its whole life. So the
        // `Incoming` is boxed (freed with the handshake), and so is each phase below: the task
        // of an idle QUIC session was over 7.5 KiB, it is 0.3 KiB plus the 2.1 KiB `established`.
        let incoming = Box::new(incoming);
        tracker.spawn(async move {
            let remote = incoming.remote_address();
            session(relay, incoming, links)
                .instrument(info_span!("session", peer_addr = %remote, transport = "quic"))
                .await
        });
    }
}

async fn session(
    relay: Arc<Relay>,
    incoming: Box<quinn::Incoming>,
    (tracker, shutdown): (TaskTracker, CancellationToken),
) {
    let auth_timeout = relay.config.tunnel.auth_timeout;
    // Boxed, as is every phase that ends before the session does (the hello, a refusal).
    let conn = match Box::pin(tokio::time::timeout(auth_timeout, *incoming)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!(error = %e, "handshake failed"),
        Err(_) => return debug!("handshake timed out"),
    };
    // Another relay node of the cluster, forwarding requests (told apart by ALPN).
    if crate::cluster::is_link(&conn) {
        // Boxed: a connector session's task would otherwise hold a link's state too (5 KiB
        // per session instead of 2).
        return Box::pin(crate::cluster::serve_link(relay, conn, tracker, shutdown)).await;
    }
    // Boxed too: inline, the task took 4.4 KiB for its 2.1.
    Box::pin(established(relay, Conn::Quic(conn))).await
}

/// A connector session over TLS on the HTTPS port (the ingress told it apart by ALPN), with the
/// stream multiplexer on top.
pub(crate) async fn session_tcp<IO>(relay: Arc<Relay>, io: IO, peer: std::net::SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let idle = relay.config.tunnel.idle_timeout;
    let config = mux::Config {
        max_streams: CONNECTOR_OPENED_STREAMS,
        keep_alive: idle / 3,
        idle_timeout: idle,
    };
    let conn = mux::Connection::new(io, mux::Role::Acceptor, config, peer);
    established(relay, Conn::Tcp(conn))
        .instrument(info_span!("session", peer_addr = %peer, transport = "tcp"))
        .await
}

/// Authenticates a connected session and runs it until it ends.
async fn established(relay: Arc<Relay>, conn: Conn) {
    let auth_timeout = relay.config.tunnel.auth_timeout;
    // The first stream the connector opens is the control stream, with `Hello` first.
    let hello = Box::pin(tokio::time::timeout(auth_timeout, async {
        let (send, recv) = conn.accept_bi().await?;
        let mut control = ControlStream::new(send, recv);
        let frame = control.next().await?;
        anyhow::Ok((control, frame))
    }))
    .await;
    let (mut control, hello) = match hello {
        Ok(Ok((control, ControlFrame::Hello(h)))) => (control, h),
        Ok(Ok(_)) => return close(&conn, ErrorCode::PROTOCOL_ERROR),
        Ok(Err(e)) => {
            debug!(error = %e, "no hello");
            let unsupported = matches!(
                e.downcast_ref::<tunnel_session::control::ControlError>(),
                Some(tunnel_session::control::ControlError::Decode(
                    tunnel_protocol::DecodeError::UnsupportedVersion(_)
                ))
            );
            return close(
                &conn,
                if unsupported {
                    ErrorCode::VERSION_UNSUPPORTED
                } else {
                    ErrorCode::PROTOCOL_ERROR
                },
            );
        }
        Err(_) => return close(&conn, ErrorCode::AUTH_TIMEOUT),
    };
    // A draining node takes no new sessions: the connector goes to another node.
    if relay.draining.load(std::sync::atomic::Ordering::Acquire) {
        let refusal = Refusal {
            code: ErrorCode::GOING_AWAY,
            message: "this relay node is draining; connect to another node",
            retry_after_secs: 1,
        };
        return refuse(&conn, &mut control, refusal).await;
    }
    let granted = match relay
        .auth
        .authenticate(&hello.tenant, &hello.credential)
        .await
    {
        Ok(g) => g,
        Err(refusal) => {
            info!(tenant = %hello.tenant, code = %refusal.code, "connector refused");
            relay
                .metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return refuse(&conn, &mut control, refusal).await;
        }
    };
    let session_id = uuid::Uuid::now_v7().simple().to_string();
    let entry = Arc::new(SessionEntry::new(
        session_id.clone(),
        granted.identity.clone(),
        hello.connector_id.clone(),
        hello.connector_version.clone(),
        announced_targets(&hello.targets),
        conn.clone(),
    ));
    let (nodes, node_changes) = relay.cluster.public_nodes();
    let welcome = ControlFrame::Welcome(Welcome {
        session_id: session_id.clone(),
        relay_node: relay.config.node_name.clone(),
        token: granted.token.unwrap_or_default(),
        expires_in_secs: u32::try_from(granted.expires_in.as_secs()).unwrap_or(u32::MAX),
        nodes,
    });
    if control.send(&welcome).await.is_err() {
        return close(&conn, ErrorCode::PROTOCOL_ERROR);
    }
    relay.registry.insert(entry.clone());
    // Messages may be waiting for this tenant.
    relay.queue.wake_for(&entry.identity.tenant.id.0);
    // The session history is written in the background: a slow store never holds up a session.
    let record = relay_store::SessionRecord {
        id: session_id.clone(),
        tenant: entry.identity.tenant.name.clone(),
        relay_node: relay.config.node_name.clone(),
        connector_id: hello.connector_id.clone(),
        connector_version: hello.connector_version.clone(),
        transport: entry.conn.transport().as_str().to_string(),
        remote_addr: entry.remote.to_string(),
        connected_at: relay_store::unix_ms(entry.connected_at),
        disconnected_at: None,
        close_code: None,
        node_id: Some(relay.node_id.clone()),
        targets: entry.targets.iter().cloned().collect(),
    };
    let store = relay.store.clone();
    let opened = tokio::spawn(async move {
        if let Err(e) = store.session_opened(&record).await {
            debug!(error = %e, "session not recorded in the history");
        } else if let Err(e) = store.announce_session(&record.tenant).await {
            debug!(error = %e, "new session not announced to the other nodes");
        }
    });
    relay
        .metrics
        .sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let span =
        info_span!("established", tenant_id = %entry.identity.tenant.id, session_id = %session_id);
    async {
        info!(tenant = %entry.identity.tenant.name, connector_id = %hello.connector_id, version = %hello.connector_version, transport = %entry.conn.transport(), "session established");
        let code = control_loop(&relay, &entry, &mut control, granted.expires_in, node_changes).await;
        relay.registry.remove(&entry);
        let (store, id) = (relay.store.clone(), entry.id.clone());
        tokio::spawn(async move {
            let _ = opened.await;
            if let Err(e) = store.session_closed(&id, code.name()).await {
                debug!(error = %e, "session end not recorded in the history");
            }
        });
        relay.metrics.sessions.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        info!(code = %code, "session closed");
    }
    .instrument(span)
    .await;
}

/// The target names a `Hello` announced, canonical; names that are not valid target names are
/// left out (nothing can route to them). At most [`MAX_ANNOUNCED_TARGETS`] are kept.
fn announced_targets(names: &[String]) -> crate::registry::Targets {
    crate::registry::Targets::new(
        names
            .iter()
            .take(MAX_ANNOUNCED_TARGETS)
            .filter_map(|n| relay_store::validate_name(n).ok()),
    )
}

/// Most target names kept from one `Hello` (the frame itself is bounded too).
const MAX_ANNOUNCED_TARGETS: usize = 1024;

/// Runs the control stream until the session ends; returns the close code used.
async fn control_loop(
    relay: &Relay,
    entry: &SessionEntry,
    control: &mut ControlStream,
    expires_in: Duration,
    mut node_changes: tokio::sync::watch::Receiver<Vec<tunnel_protocol::NodeAddress>>,
) -> ErrorCode {
    let conn = &entry.conn;
    // What the connector was last told about the other nodes (its Welcome's list).
    let mut told_nodes = !node_changes.borrow().is_empty();
    let mut expires_at = tokio::time::Instant::now() + expires_in;
    // Set when the connector announced it is moving: close once its streams are done.
    let mut moving_since: Option<tokio::time::Instant> = None;
    loop {
        // Why select: the session ends on whichever comes first — a control frame, expiry of its
        // authentication, a close request (shutdown, revocation) or the connection dying.
        tokio::select! {
            frame = control.next() => match frame {
                Ok(ControlFrame::Renew(credential)) => {
                    let tenant = entry.identity.tenant.name.clone();
                    match relay.auth.authenticate(&tenant, &credential).await {
                        Ok(g) if g.identity.credential_id == entry.identity.credential_id
                            || g.identity.tenant.id == entry.identity.tenant.id =>
                        {
                            let token = match g.token {
                                Some(t) => t,
                                None => relay.auth.issue(&g.identity).unwrap_or_default(),
                            };
                            expires_at = tokio::time::Instant::now() + relay.config.tunnel.token_ttl;
                            let renewed = ControlFrame::Renewed(Renewed {
                                token,
                                expires_in_secs: relay.config.tunnel.token_ttl.as_secs() as u32,
                            });
                            if control.send(&renewed).await.is_err() {
                                return close_code(conn, ErrorCode::PROTOCOL_ERROR);
                            }
                            debug!("session renewed");
                        }
                        Ok(_) => return refuse_code(conn, control, AUTH_MISMATCH).await,
                        Err(refusal) => return refuse_code(conn, control, refusal).await,
                    }
                }
                Ok(ControlFrame::Ping(n)) => {
                    if control.send(&ControlFrame::Pong(n)).await.is_err() {
                        return close_code(conn, ErrorCode::PROTOCOL_ERROR);
                    }
                }
                Ok(ControlFrame::Pong(_)) => {}
                Ok(ControlFrame::GoAway(g)) => {
                    // The connector is moving (to another transport or relay): no new streams
                    // here; it closes once the streams in flight are done.
                    debug!(code = %g.code, reason = %g.message, "connector is draining this session");
                    entry.mark_draining();
                    moving_since.get_or_insert_with(tokio::time::Instant::now);
                }
                // A newer connector's frame this relay does not know: skipped.
                Ok(ControlFrame::Unknown(t)) => debug!(frame_type = t, "unknown control frame skipped"),
                Ok(_) => return close_code(conn, ErrorCode::PROTOCOL_ERROR),
                Err(_) => return close_code(conn, ErrorCode::NO_ERROR),
            },
            Ok(()) = node_changes.changed() => {
                // A node joined, left or drained: the connector can spread its sessions over the
                // nodes there are now. Never sent where no list was ever published (one node),
                // so connectors that predate `Nodes` never see one there.
                let nodes = node_changes.borrow_and_update().clone();
                if told_nodes || !nodes.is_empty() {
                    told_nodes = true;
                    if control.send(&ControlFrame::Nodes(nodes)).await.is_err() {
                        return close_code(conn, ErrorCode::PROTOCOL_ERROR);
                    }
                }
            }
            _ = tokio::time::sleep_until(expires_at) => {
                let refusal = Refusal { code: ErrorCode::TOKEN_EXPIRED, message: "session authentication expired without renewal", retry_after_secs: 0 };
                return refuse_code(conn, control, refusal).await;
            }
            _ = entry.cancel.cancelled() => {
                return match entry.close_kind() {
                    Some(CloseKind::Kill(code)) => {
                        let refusal = Refusal { code, message: kill_message(code), retry_after_secs: 0 };
                        refuse_code(conn, control, refusal).await
                    }
                    Some(CloseKind::Drain(_)) | None => drain(relay, entry, control, code_or(entry)).await,
                };
            }
            _ = tokio::time::sleep(Duration::from_millis(50)), if moving_since.is_some() => {
                let done = entry.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0;
                let over = moving_since.is_some_and(|t| t.elapsed() > relay.config.shutdown_grace);
                if done || over {
                    return close_code(conn, ErrorCode::NO_ERROR);
                }
            }
            _ = conn.closed() => return ErrorCode::NO_ERROR,
        }
    }
}

const AUTH_MISMATCH: Refusal = Refusal {
    code: ErrorCode::AUTH_FAILED,
    message: "renewal presented another tenant's credential",
    retry_after_secs: 0,
};

fn code_or(entry: &SessionEntry) -> ErrorCode {
    match entry.close_kind() {
        Some(CloseKind::Drain(c)) | Some(CloseKind::Kill(c)) => c,
        None => ErrorCode::GOING_AWAY,
    }
}

fn kill_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::CREDENTIAL_REVOKED => "the credential of this session was revoked",
        ErrorCode::TENANT_DISABLED => "the tenant was disabled or deleted",
        _ => "session closed by the relay",
    }
}

/// Tells the connector to move, waits (bounded) for its streams to finish and for it to close.
async fn drain(
    relay: &Relay,
    entry: &SessionEntry,
    control: &mut ControlStream,
    code: ErrorCode,
) -> ErrorCode {
    let go_away = ControlFrame::GoAway(GoAway {
        code,
        message: "relay is shutting down".into(),
    });
    let _ = control.send(&go_away).await;
    // The connector closes the connection once its in-flight streams are done.
    if tokio::time::timeout(relay.config.shutdown_grace, entry.conn.closed())
        .await
        .is_err()
    {
        warn!(
            in_flight = entry.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            "drain grace over; closing session"
        );
    }
    close_code(&entry.conn, code)
}

async fn refuse(conn: &Conn, control: &mut ControlStream, refusal: Refusal) {
    refuse_code(conn, control, refusal).await;
}

/// Sends `Refused`, gives the connector a moment to read it, then closes. Boxed: the session's
/// task would otherwise keep room for the linger for the whole life of the session.
fn refuse_code<'a>(
    conn: &'a Conn,
    control: &'a mut ControlStream,
    refusal: Refusal,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ErrorCode> + Send + 'a>> {
    Box::pin(refuse_now(conn, control, refusal))
}

async fn refuse_now(conn: &Conn, control: &mut ControlStream, refusal: Refusal) -> ErrorCode {
    let code = refusal.code;
    let frame = ControlFrame::Refused(Refused {
        code,
        message: refusal.message.to_string(),
        retry_after_secs: refusal.retry_after_secs,
    });
    if control.send(&frame).await.is_ok() {
        control.finish();
        let _ = tokio::time::timeout(REFUSAL_LINGER, conn.closed()).await;
    }
    close_code(conn, code)
}

fn close(conn: &Conn, code: ErrorCode) {
    close_code(conn, code);
}

fn close_code(conn: &Conn, code: ErrorCode) -> ErrorCode {
    conn.close(code, code.name().as_bytes());
    code
}
