//! The connector: the on-premises agent that dials out to the relay, keeps a session up, and
//! serves each request stream by calling a local backend.
//!
//! ```text
//! visitor ──► relay ══(QUIC or TLS/TCP session, outbound from here)══► connector ──► backend
//! ```
//!
//! It never listens on a port: everything is outbound. It retries forever with capped exponential
//! backoff and full jitter, logging why each attempt failed. It dials only the targets in its own
//! configuration, whatever the relay asks.
//!
//! Sessions run over QUIC, or over TLS on the relay's HTTPS port with the `tunnel_session::mux`
//! multiplexer where UDP is blocked (`--transport auto` falls back by itself), directly or through
//! an HTTP CONNECT proxy. It keeps `session.count` sessions, each on its own thread with a
//! single-threaded runtime ([`Connector::run`]). What both ends of a session do alike (framing,
//! the control stream, the transports) lives in the `tunnel-session` crate.

pub mod backend;
pub mod config;
mod embed;
mod http_proxy;
pub mod inspector;
mod pool;
pub mod service;
mod session;
mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tunnel_protocol::ErrorCode;

pub use backend::{Body, BoxError, LocalService};
pub use config::Config;
pub use embed::Builder;
use inspector::Inspector;
pub use process_setup::layered::ConfigError;
use session::{AttemptError, Dialer, Ended};

/// A session that stayed up this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// What the connector is doing, for callers that watch it (tests, the service status).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// At least one session is established.
    pub connected: bool,
    /// Sessions established right now.
    pub sessions: usize,
    /// The newest session's id.
    pub session_id: Option<String>,
    /// The newest session's transport.
    pub transport: Option<tunnel_session::transport::Transport>,
    /// How many sessions were established since start.
    pub sessions_established: u64,
    /// The last failure, for humans.
    pub last_error: Option<String>,
}

type StateTx = Arc<watch::Sender<State>>;

/// A connector ready to run.
#[derive(Debug)]
pub struct Connector {
    dialer: Arc<Dialer>,
    state: StateTx,
    /// The inspector, its listener, and the backend clients its replays use.
    inspect: Option<(Arc<Inspector>, std::net::TcpListener, backend::Backends)>,
}

/// What a connector has besides its [`Config`]: in-process targets, the inspector.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    local: BTreeMap<String, LocalService>,
    local_timeout: Option<Duration>,
    inspector: Option<Arc<Inspector>>,
}

impl Extras {
    /// Backend clients for these targets (one set per session slot, one for replays).
    pub(crate) fn backends(&self, config: &Config) -> Result<backend::Backends, ConfigError> {
        backend::Backends::with_local(
            &config.targets,
            &self.local,
            self.local_timeout.unwrap_or(config::DEFAULT_TARGET_TIMEOUT),
            self.inspector.clone(),
        )
    }
}

impl Connector {
    /// Prepares TLS, the UDP socket, backend clients and the inspector's listener. Fails only on
    /// configuration problems (an inspector address that cannot be bound among them).
    pub fn new(config: Config) -> Result<Connector, ConfigError> {
        Connector::with_extras(config, Extras::default())
    }

    /// Starts building an embedded connector: see [`Builder`].
    pub fn builder(server: &str, tenant: &str) -> Builder {
        Builder::new(server, tenant)
    }

    pub(crate) fn with_extras(
        config: Config,
        mut extras: Extras,
    ) -> Result<Connector, ConfigError> {
        let inspect = match &config.inspect {
            None => None,
            Some(settings) => {
                let listener = std::net::TcpListener::bind(settings.listen)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| {
                        ConfigError::new(format!(
                            "inspect.listen {}: cannot listen: {e}",
                            settings.listen
                        ))
                    })?;
                let inspector = Arc::new(Inspector::new(settings));
                // Replays use their own clients and record nothing by themselves.
                let replays = extras.backends(&config)?;
                extras.inspector = Some(inspector.clone());
                Some((inspector, listener, replays))
            }
        };
        let dialer = Arc::new(Dialer::new(config, &extras)?);
        Ok(Connector {
            dialer,
            state: Arc::new(watch::channel(State::default()).0),
            inspect,
        })
    }

    /// Where the inspector listens, when it runs.
    pub fn inspector_address(&self) -> Option<std::net::SocketAddr> {
        self.inspect
            .as_ref()
            .and_then(|(_, l, _)| l.local_addr().ok())
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Keeps `session.count` sessions up until `shutdown` is cancelled; then drains in-flight
    /// streams (bounded) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.dialer.config().clone();
        info!(
            relay = %format!("{}:{}", config.server_host, config.server_port),
            tenant = %config.tenant,
            targets = ?config.targets.keys().collect::<Vec<_>>(),
            sessions = config.sessions,
            "connector starting"
        );
        // Each slot runs on its own thread with a single-threaded runtime: its session, the
        // streams the relay opens on it and their backend connections. A request is then served
        // start to finish on the thread that read it, without waking another thread at each
        // hand-off (the cost measured in docs/benchmarks.md); the slots spread over the cores.
        let release = CancellationToken::new();
        // Dropping this future (rather than cancelling `shutdown`) must not leave threads behind.
        let _release_on_drop = release.clone().drop_guard();
        let inspector = self.inspect.and_then(|(inspector, listener, replays)| {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => Some(tokio::spawn(inspector::serve(
                    listener,
                    inspector,
                    replays,
                    release.clone(),
                ))),
                Err(e) => {
                    error!(error = %e, "inspector: cannot use its listener");
                    None
                }
            }
        });
        let mut done = Vec::new();
        let mut threads = Vec::new();
        for slot in 0..config.sessions as usize {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            done.push(rx);
            let (dialer, state) = (self.dialer.clone(), self.state.clone());
            let (shutdown, release) = (shutdown.clone(), release.clone());
            let thread = std::thread::Builder::new()
                .name(format!("session-{slot}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => return error!(slot, error = %e, "cannot start a session runtime"),
                    };
                    runtime.block_on(async move {
                        // Why select: `release` also fires when `run` is dropped without a
                        // shutdown; the slot then stops at once, as a spawned task would.
                        tokio::select! {
                            _ = keep_session(dialer, state, slot, shutdown) => {
                                let _ = tx.send(());
                                // The runtime stays up until every slot is done: a session
                                // lingering after its slot moved on still runs here.
                                release.cancelled().await;
                            }
                            _ = release.cancelled() => {}
                        }
                    });
                });
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => error!(slot, error = %e, "cannot start a session thread"),
            }
        }
        for rx in done {
            let _ = rx.await;
        }
        self.dialer.close().await;
        release.cancel();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if let Some(task) = inspector {
            let _ = task.await;
        }
        info!("connector stopped");
    }
}

/// One session slot: establishes a session, serves it, and reconnects with backoff, forever.
async fn keep_session(
    dialer: Arc<Dialer>,
    state: StateTx,
    slot: usize,
    shutdown: CancellationToken,
) {
    let config = dialer.config().clone();
    let mut attempt: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let started = Instant::now();
        // The session watches `shutdown` itself: while establishing it gives up at once; once
        // established it stops taking streams and lets those in flight finish.
        let outcome = dialer.session(slot, &shutdown, &state).await;
        let hint = match outcome {
            Ok(Ended::Shutdown) => break,
            Err(AttemptError::Shutdown) => break,
            Ok(Ended::Drained) => {
                attempt = 0;
                Duration::ZERO
            }
            Ok(Ended::Lost(reason)) => {
                session::set_error(&state, &reason);
                if started.elapsed() >= STABLE_SESSION {
                    attempt = 0;
                }
                Duration::ZERO
            }
            Err(e) => {
                log_attempt_error(&e);
                session::set_error(&state, &e.to_string());
                e.retry_after()
            }
        };
        let delay = backoff(config.backoff_base, config.backoff_cap, attempt).max(hint);
        attempt = attempt.saturating_add(1);
        if !delay.is_zero() {
            info!(slot, retry_in = ?delay, attempt, "reconnecting");
        }
        // Why select: the backoff sleep must not delay shutdown.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
}

fn log_attempt_error(e: &AttemptError) {
    match e {
        AttemptError::Refused { code, .. }
            if matches!(*code, ErrorCode::AUTH_FAILED | ErrorCode::TENANT_DISABLED) =>
        {
            error!(error = %e, "authentication failed: check the tenant name and the secret (revoked?)");
        }
        _ => warn!(error = %e, "session attempt failed"),
    }
}

/// Full-jitter backoff: uniform in `[0, min(cap, base · 2^attempt)]`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(2u32.saturating_pow(attempt.min(30)))
        .min(cap);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 0..40 {
            let d = backoff(base, cap, attempt);
            let ceiling = base
                .saturating_mul(2u32.saturating_pow(attempt.min(30)))
                .min(cap);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(base, cap, 10)).collect();
        assert!(samples.len() > 10, "not jittered");
    }

    /// Threads of this process named `session-N` (Linux).
    fn session_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|name| name.starts_with("session-"))
                    .count()
            })
            .unwrap_or(0)
    }

    async fn threads_become(n: usize) -> usize {
        for _ in 0..100 {
            if session_threads() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        session_threads()
    }

    /// Each session slot gets its own thread; none is left behind after a shutdown, nor when the
    /// `run` future is dropped without one. (The only test here that starts a connector: it
    /// counts the process's threads.)
    #[tokio::test]
    async fn one_thread_per_session_slot_and_none_left_behind() {
        // Nothing listens on port 9 of loopback: the slots keep retrying until stopped.
        let config = testing::connector("https://127.0.0.1:9", "acme", "secret")
            .target("app", "http://127.0.0.1:9")
            .sessions(3)
            .config();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(
            Connector::new(config.clone())
                .unwrap()
                .run(shutdown.clone()),
        );
        assert_eq!(threads_become(3).await, 3);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("connector stops on shutdown")
            .unwrap();
        assert_eq!(threads_become(0).await, 0);

        let run = tokio::spawn(
            Connector::new(config)
                .unwrap()
                .run(CancellationToken::new()),
        );
        assert_eq!(threads_become(3).await, 3);
        run.abort();
        assert_eq!(
            threads_become(0).await,
            0,
            "threads outlived the dropped connector"
        );
    }
}
