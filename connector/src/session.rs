//! One session to the relay: connect (QUIC, or TLS over TCP on the HTTPS port, directly or
//! through a CONNECT proxy), authenticate on the control stream, then serve the streams the relay
//! opens until the session ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, TransportConfig, VarInt};
use rustls::RootCertStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use tunnel_protocol::{ControlFrame, Credential, ErrorCode, Hello, ALPN};

use crate::backend::{load_certs, Backends};
use crate::config::{Config, TransportMode};
use crate::control::{ControlError, ControlStream};
use crate::layered::ConfigError;
use crate::mux;
use crate::transport::Conn;
use crate::{State, StateTx};

/// Deadline for the QUIC handshake to the relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the relay to answer `Hello`.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token with less life left than this is not presented; the secret is used instead.
const TOKEN_MIN_LIFE: Duration = Duration::from_secs(60);
/// How long in-flight streams may finish after a drain request or shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// How a session ended, for the reconnect loop.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The relay asked us to move (shutdown, drain): reconnect promptly.
    Drained,
    /// The session failed after being established.
    Lost(String),
    /// We are shutting down.
    Shutdown,
}

/// Why an attempt to establish a session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("QUIC connect to {0} failed: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS-over-TCP connect to {0} failed: {1}")]
    ConnectTcp(String, String),
    #[error(transparent)]
    Proxy(#[from] crate::http_proxy::ProxyError),
    #[error("relay refused authentication: {message} ({code})")]
    Refused {
        code: ErrorCode,
        message: String,
        retry_after: Duration,
    },
    #[error("control stream failed during authentication: {0}")]
    Control(#[from] ControlError),
    #[error("relay did not answer authentication within {0:?}")]
    AuthTimeout(Duration),
    #[error("relay sent {0} instead of Welcome")]
    Unexpected(&'static str),
    #[error("shutting down")]
    Shutdown,
}

impl AttemptError {
    /// The relay's hint of when to retry.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            AttemptError::Refused { retry_after, .. } => *retry_after,
            _ => Duration::ZERO,
        }
    }
}

/// A token the relay issued, kept across sessions.
#[derive(Debug, Default)]
struct TokenCache(Option<(String, Instant)>);

/// What sessions share: endpoint, config, backends, token.
#[derive(Debug)]
pub(crate) struct Dialer {
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    /// In `auto` mode, after QUIC failed: use TCP directly until then (then probe QUIC again).
    quic_blocked_until: Mutex<Option<Instant>>,
    config: Config,
    backends: Backends,
    token: Mutex<TokenCache>,
    connector_id: String,
}

impl Dialer {
    pub(crate) fn new(config: Config, backends: Backends) -> Result<Dialer, ConfigError> {
        let tls = tls_config(&config)?;
        let client_config = client_config(&config, tls.clone())?;
        let mut endpoint = bind_endpoint()?;
        endpoint.set_default_client_config(client_config);
        let connector_id = uuid_like();
        Ok(Dialer {
            endpoint,
            tls: Arc::new(tls),
            quic_blocked_until: Mutex::new(None),
            config,
            backends,
            token: Mutex::new(TokenCache::default()),
            connector_id,
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Establishes and authenticates one session, then serves it until it ends.
    pub(crate) async fn session(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        state: &StateTx,
    ) -> Result<Ended, AttemptError> {
        // Why select: DNS, the handshake or authentication may hang; shutdown must not wait.
        let (conn, mut control, session_id, expires_in) = tokio::select! {
            r = self.establish() => r?,
            _ = shutdown.cancelled() => return Err(AttemptError::Shutdown),
        };
        info!(
            session_id = %session_id,
            relay = %conn.remote_address(),
            transport = %conn.transport(),
            "session established"
        );
        state.send_modify(|s| {
            s.connected = true;
            s.session_id = Some(session_id.clone());
            s.transport = Some(conn.transport());
            s.sessions_established += 1;
        });
        let ended = self.serve(&conn, &mut control, shutdown, expires_in).await;
        state.send_modify(|s| {
            s.connected = false;
            s.session_id = None;
            s.transport = None;
        });
        info!(session_id = %session_id, ?ended, "session ended");
        Ok(ended)
    }

    async fn establish(&self) -> Result<(Conn, ControlStream, String, Duration), AttemptError> {
        let conn = match self.config.transport {
            TransportMode::Quic => self.connect_quic(CONNECT_TIMEOUT).await?,
            TransportMode::Tcp => self.connect_tcp().await?,
            // A CONNECT proxy carries TCP only.
            TransportMode::Auto if self.config.proxy.is_some() => self.connect_tcp().await?,
            TransportMode::Auto => {
                let blocked = self
                    .quic_blocked_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|until| Instant::now() < until);
                if blocked {
                    self.connect_tcp().await?
                } else {
                    match self.connect_quic(self.config.quic_fallback_after).await {
                        Ok(c) => c,
                        Err(AttemptError::Resolve(h, e)) => {
                            return Err(AttemptError::Resolve(h, e))
                        }
                        Err(e) => {
                            warn!(error = %e, "QUIC failed; falling back to TLS over TCP");
                            *self
                                .quic_blocked_until
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) =
                                Some(Instant::now() + self.config.quic_probe_interval);
                            self.connect_tcp().await?
                        }
                    }
                }
            }
        };
        self.authenticate(conn).await
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, AttemptError> {
        let host = &self.config.server_host;
        let port = self.config.server_port;
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| AttemptError::Resolve(format!("{host}:{port}"), e))?
            .collect();
        if addrs.is_empty() {
            return Err(AttemptError::Resolve(
                format!("{host}:{port}"),
                std::io::Error::other("no addresses"),
            ));
        }
        // IPv4 first: a relay bound to 0.0.0.0 is the common case, and a failed v6 attempt
        // would cost a full handshake timeout.
        addrs.sort_by_key(|a| a.is_ipv6());
        Ok(addrs)
    }

    /// A QUIC connection to the first relay address that answers within `timeout` each.
    async fn connect_quic(&self, timeout: Duration) -> Result<Conn, AttemptError> {
        let mut last = None;
        for addr in self.resolve().await? {
            match self.connect(addr, timeout).await {
                Ok(c) => return Ok(Conn::Quic(c)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(AttemptError::Unexpected("no address")))
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, AttemptError> {
        let connecting = self
            .endpoint
            .connect(addr, &self.config.server_host)
            .map_err(|e| AttemptError::Connect(addr, e.to_string()))?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(AttemptError::Connect(addr, e.to_string())),
            Err(_) => Err(AttemptError::Connect(
                addr,
                format!("no answer within {timeout:?} (UDP blocked?)"),
            )),
        }
    }

    /// TLS over TCP to the relay's HTTPS port (through the proxy when one is configured), with
    /// the tunnel's ALPN, and the multiplexer on top.
    async fn connect_tcp(&self) -> Result<Conn, AttemptError> {
        let host = self.config.server_host.clone();
        let port = self.config.server_port;
        let (tcp, remote) = match &self.config.proxy {
            Some(proxy) => {
                let tcp = crate::http_proxy::connect(proxy, &host, port, CONNECT_TIMEOUT).await?;
                let remote = tcp.peer_addr().map_err(|e| {
                    AttemptError::ConnectTcp(format!("{host}:{port}"), e.to_string())
                })?;
                (tcp, remote)
            }
            None => {
                let mut last = None;
                let mut found = None;
                for addr in self.resolve().await? {
                    match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                    {
                        Ok(Ok(tcp)) => {
                            found = Some((tcp, addr));
                            break;
                        }
                        Ok(Err(e)) => {
                            last = Some(AttemptError::ConnectTcp(addr.to_string(), e.to_string()))
                        }
                        Err(_) => {
                            last = Some(AttemptError::ConnectTcp(
                                addr.to_string(),
                                format!("no answer within {CONNECT_TIMEOUT:?}"),
                            ))
                        }
                    }
                }
                match found {
                    Some(f) => f,
                    None => return Err(last.unwrap_or(AttemptError::Unexpected("no address"))),
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| AttemptError::ConnectTcp(host.clone(), e.to_string()))?;
        let tls = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(AttemptError::ConnectTcp(
                    format!("{host}:{port}"),
                    format!("TLS: {e}"),
                ))
            }
            Err(_) => {
                return Err(AttemptError::ConnectTcp(
                    format!("{host}:{port}"),
                    format!("TLS handshake not done within {CONNECT_TIMEOUT:?}"),
                ))
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(AttemptError::ConnectTcp(
                format!("{host}:{port}"),
                "the server does not accept tunnel sessions over TLS/TCP (no ALPN agreement): \
                 is this the relay's HTTPS port?"
                    .into(),
            ));
        }
        let config = mux::Config {
            max_streams: self.config.max_streams,
            keep_alive: self.config.keep_alive,
            idle_timeout: self.config.idle_timeout,
        };
        Ok(Conn::Tcp(mux::Connection::new(
            tls,
            mux::Role::Dialer,
            config,
            remote,
        )))
    }

    async fn authenticate(
        &self,
        conn: Conn,
    ) -> Result<(Conn, ControlStream, String, Duration), AttemptError> {
        let (send, recv) = tokio::time::timeout(AUTH_TIMEOUT, conn.open_bi())
            .await
            .map_err(|_| AttemptError::AuthTimeout(AUTH_TIMEOUT))?
            .map_err(|e| AttemptError::Control(ControlError::Io(e)))?;
        let mut control = ControlStream::new(send, recv);
        let credential = self.credential();
        let used_token = matches!(credential, Credential::Token(_));
        control
            .send(&ControlFrame::Hello(Hello {
                tenant: self.config.tenant.clone(),
                credential,
                connector_version: concat!("connector/", env!("CARGO_PKG_VERSION")).to_string(),
                connector_id: self.connector_id.clone(),
                targets: self.backends.names(),
            }))
            .await?;
        let answer = tokio::time::timeout(AUTH_TIMEOUT, control.next())
            .await
            .map_err(|_| AttemptError::AuthTimeout(AUTH_TIMEOUT))??;
        match answer {
            ControlFrame::Welcome(w) => {
                let expires_in = Duration::from_secs(u64::from(w.expires_in_secs));
                if !w.token.is_empty() {
                    self.store_token(w.token, expires_in);
                }
                Ok((conn, control, w.session_id, expires_in))
            }
            ControlFrame::Refused(r) => {
                if used_token {
                    // The token is no good any more (expired, key rotated): use the secret next.
                    self.token.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
                }
                conn.close(r.code, b"refused");
                Err(AttemptError::Refused {
                    code: r.code,
                    message: r.message,
                    retry_after: if used_token {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(u64::from(r.retry_after_secs))
                    },
                })
            }
            _ => Err(AttemptError::Unexpected("another frame")),
        }
    }

    fn credential(&self) -> Credential {
        let cache = self.token.lock().unwrap_or_else(|p| p.into_inner());
        match &cache.0 {
            Some((token, expires))
                if expires.saturating_duration_since(Instant::now()) > TOKEN_MIN_LIFE =>
            {
                Credential::Token(token.clone())
            }
            _ => Credential::Secret(self.config.secret.expose().to_string()),
        }
    }

    fn store_token(&self, token: String, life: Duration) {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).0 =
            Some((token, Instant::now() + life));
    }

    /// Serves streams and the control stream until the session ends.
    async fn serve(
        &self,
        conn: &Conn,
        control: &mut ControlStream,
        shutdown: &CancellationToken,
        expires_in: Duration,
    ) -> Ended {
        let streams = TaskTracker::new();
        let mut renew_at = tokio::time::Instant::now() + renew_delay(expires_in);
        let ended = loop {
            // Why select: the session is driven by whichever comes first — a new stream from the
            // relay, a control frame, the renewal deadline, the connection closing, or shutdown.
            tokio::select! {
                incoming = conn.accept_bi() => match incoming {
                    Ok((send, recv)) => {
                        let backends = self.backends.clone();
                        streams.spawn(crate::stream::serve(send, recv, backends));
                    }
                    Err(e) => break Ended::Lost(e.to_string()),
                },
                frame = control.next() => match frame {
                    Ok(ControlFrame::Renewed(r)) => {
                        let life = Duration::from_secs(u64::from(r.expires_in_secs));
                        self.store_token(r.token, life);
                        renew_at = tokio::time::Instant::now() + renew_delay(life);
                        debug!("session renewed");
                    }
                    Ok(ControlFrame::GoAway(g)) => {
                        info!(code = %g.code, reason = %g.message, "relay asked this session to move");
                        break Ended::Drained;
                    }
                    Ok(ControlFrame::Ping(n)) => {
                        if control.send(&ControlFrame::Pong(n)).await.is_err() {
                            break Ended::Lost("control stream failed".into());
                        }
                    }
                    Ok(ControlFrame::Refused(r)) => {
                        warn!(code = %r.code, reason = %r.message, "relay ended the session");
                        self.token.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
                        break Ended::Lost(format!("refused: {}", r.message));
                    }
                    Ok(_) => {}
                    Err(e) => break Ended::Lost(e.to_string()),
                },
                _ = tokio::time::sleep_until(renew_at) => {
                    let secret = Credential::Secret(self.config.secret.expose().to_string());
                    if control.send(&ControlFrame::Renew(secret)).await.is_err() {
                        break Ended::Lost("control stream failed".into());
                    }
                    // Until the answer arrives, do not ask again for a while.
                    renew_at = tokio::time::Instant::now() + Duration::from_secs(30);
                }
                _ = shutdown.cancelled() => break Ended::Shutdown,
            }
        };
        // Let the streams in flight finish (bounded), then close the connection.
        streams.close();
        if tokio::time::timeout(DRAIN_GRACE, streams.wait())
            .await
            .is_err()
        {
            warn!(
                left = streams.len(),
                "streams still in flight after the drain grace; cutting them"
            );
        }
        let code = match ended {
            Ended::Shutdown => ErrorCode::CONNECTOR_SHUTDOWN,
            Ended::Drained => ErrorCode::NO_ERROR,
            Ended::Lost(_) => ErrorCode::INTERNAL,
        };
        control.finish();
        conn.close(code, code.name().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.drained()).await;
        ended
    }

    /// Waits (bounded) for close frames to be sent before the endpoint goes away.
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Renew at two thirds of the token's life.
fn renew_delay(life: Duration) -> Duration {
    (life * 2 / 3).max(Duration::from_secs(1))
}

fn bind_endpoint() -> Result<Endpoint, ConfigError> {
    // Dual-stack first, IPv4-only where IPv6 is disabled.
    Endpoint::client("[::]:0".parse().expect("literal address"))
        .or_else(|_| Endpoint::client("0.0.0.0:0".parse().expect("literal address")))
        .map_err(|e| ConfigError::new(format!("cannot open a UDP socket: {e}")))
}

/// The TLS client config for both transports: TLS 1.3, the tunnel's ALPN, system roots plus
/// `--ca-cert`.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for path in &config.ca_certs {
        for cert in load_certs(path).map_err(ConfigError::new)? {
            roots
                .add(cert)
                .map_err(|e| ConfigError::new(format!("CA {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError::new(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    Ok(tls)
}

fn client_config(
    config: &Config,
    tls: rustls::ClientConfig,
) -> Result<quinn::ClientConfig, ConfigError> {
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| ConfigError::new(format!("QUIC TLS setup: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(config)?));
    Ok(client)
}

/// QUIC limits, all set explicitly (quinn's connection receive window is unbounded by default).
fn transport_config(config: &Config) -> Result<TransportConfig, ConfigError> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_idle_timeout(Some(
        config
            .idle_timeout
            .try_into()
            .map_err(|_| ConfigError::new("session.idle_timeout is too large"))?,
    ));
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.stream_receive_window(VarInt::from_u32(1024 * 1024));
    t.send_window(8 * 1024 * 1024);
    t.datagram_receive_buffer_size(None);
    Ok(t)
}

fn uuid_like() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared status a caller can watch.
pub(crate) fn set_error(state: &StateTx, err: &str) {
    state.send_modify(|s: &mut State| s.last_error = Some(err.to_string()));
}
