//! The management web: the admin UI and `/api/v1` over `relay-store` (axum).
//!
//! Today it serves the operations endpoints (`/healthz`, `/readyz`) that `relay-server` mounts on
//! its admin listener; the UI and the API arrive with the management issue. `app(state)` is what
//! both `relay-server` and the standalone `management-web` binary serve, and what tests call.
//!
//! Non-goals: no data-plane work; nothing here is on a visitor's request path.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use relay_store::Store;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
}

/// The router: `main`, `relay-server` and tests all call this.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Live: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the store answers.
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(e) => {
            tracing::warn!(error = %e, "store not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n")
        }
    }
}
