//! One session to the relay: QUIC connect, authenticate on the control stream, then serve the
//! streams the relay opens until the session ends.

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
use crate::config::Config;
use crate::control::{ControlError, ControlStream};
use crate::layered::ConfigError;
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
    config: Config,
    backends: Backends,
    token: Mutex<TokenCache>,
    connector_id: String,
}

impl Dialer {
    pub(crate) fn new(config: Config, backends: Backends) -> Result<Dialer, ConfigError> {
        let client_config = client_config(&config)?;
        let mut endpoint = bind_endpoint()?;
        endpoint.set_default_client_config(client_config);
        let connector_id = uuid_like();
        Ok(Dialer {
            endpoint,
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
            "session established"
        );
        state.send_modify(|s| {
            s.connected = true;
            s.session_id = Some(session_id.clone());
            s.sessions_established += 1;
        });
        let ended = self.serve(&conn, &mut control, shutdown, expires_in).await;
        state.send_modify(|s| {
            s.connected = false;
            s.session_id = None;
        });
        info!(session_id = %session_id, ?ended, "session ended");
        Ok(ended)
    }

    async fn establish(
        &self,
    ) -> Result<(quinn::Connection, ControlStream, String, Duration), AttemptError> {
        let host = &self.config.server_host;
        let port = self.config.server_port;
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| AttemptError::Resolve(format!("{host}:{port}"), e))?
            .collect();
        // IPv4 first: a relay bound to 0.0.0.0 is the common case, and a failed v6 attempt
        // would cost a full handshake timeout.
        addrs.sort_by_key(|a| a.is_ipv6());
        let mut last = None;
        for addr in addrs {
            match self.connect(addr).await {
                Ok(c) => return self.authenticate(c).await,
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            AttemptError::Resolve(
                format!("{host}:{port}"),
                std::io::Error::other("no addresses"),
            )
        }))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, AttemptError> {
        let connecting = self
            .endpoint
            .connect(addr, &self.config.server_host)
            .map_err(|e| AttemptError::Connect(addr, e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(AttemptError::Connect(addr, e.to_string())),
            Err(_) => Err(AttemptError::Connect(
                addr,
                format!("no answer within {CONNECT_TIMEOUT:?} (UDP blocked?)"),
            )),
        }
    }

    async fn authenticate(
        &self,
        conn: quinn::Connection,
    ) -> Result<(quinn::Connection, ControlStream, String, Duration), AttemptError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| AttemptError::Control(ControlError::Io(e.into())))?;
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
                conn.close(VarInt::from_u32(r.code.0), b"refused");
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
        conn: &quinn::Connection,
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
        conn.close(VarInt::from_u32(code.0), code.name().as_bytes());
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

fn client_config(config: &Config) -> Result<quinn::ClientConfig, ConfigError> {
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
