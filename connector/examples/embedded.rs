//! An application that hosts its own connector: its axum `Router` answers the relay's requests
//! for target `app` in process — no local HTTP port, no second program to install.
//!
//! ```text
//! RELAY=https://relay.example.com TENANT=acme SECRET_FILE=/path/to/secret \
//!     cargo run -p connector --example embedded
//! curl https://relay.example.com/relay/acme/app/hello
//! ```
//!
//! `RELAY_CA` may name extra PEM roots for the relay's certificate; `INSPECT=127.0.0.1:4040`
//! runs the local inspector. Ctrl-C drains and stops.

use std::path::PathBuf;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use connector::Connector;
use tokio_util::sync::CancellationToken;

/// The application's routes, as it would serve them itself.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/echo", post(echo))
}

async fn hello(headers: HeaderMap) -> String {
    // The relay names the visitor's host; an in-process target gets it as `Host`.
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("?");
    format!("hello from the app, visitor of {host}\n")
}

async fn echo(req: Request) -> Result<String, (StatusCode, String)> {
    let body = axum::body::to_bytes(req.into_body(), 1024 * 1024)
        .await
        .map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
    Ok(format!("echo: {}", String::from_utf8_lossy(&body)))
}

/// The connector this application embeds: target `app` is the router above.
pub(crate) fn connector(
    relay: &str,
    tenant: &str,
    secret: &str,
    relay_ca: Option<PathBuf>,
    inspect: Option<&str>,
) -> Result<Connector, connector::ConfigError> {
    let mut builder = Connector::builder(relay, tenant)
        .secret(secret)
        .service("app", app());
    if let Some(ca) = relay_ca {
        builder = builder.ca_cert(ca);
    }
    if let Some(addr) = inspect {
        builder = builder.inspect(addr);
    }
    builder.build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let secret = std::fs::read_to_string(env("SECRET_FILE")?)?;
    let connector = connector(
        &env("RELAY")?,
        &env("TENANT")?,
        secret.trim(),
        std::env::var_os("RELAY_CA").map(PathBuf::from),
        std::env::var("INSPECT").ok().as_deref(),
    )?;
    let mut state = connector.watch();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(connector.run(shutdown.clone()));
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let s = state.borrow().clone();
            tracing::info!(
                connected = s.connected,
                sessions = s.sessions,
                "connector state"
            );
        }
    });
    tokio::signal::ctrl_c().await?;
    shutdown.cancel();
    running.await?;
    Ok(())
}
