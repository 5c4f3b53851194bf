//! Test support, only ever a dev-dependency: a recording backend on `127.0.0.1:0`, an HTTPS
//! client that trusts a given CA, helpers for the built binaries and process memory, and
//! [`eventually`] for state that converges asynchronously. Its `tests/` folder holds the
//! end-to-end suite (real relay, connector and backend on loopback).

pub mod backend;
pub mod client;
pub mod http_proxy;
pub mod mitm;
pub mod postgres;
pub mod process;
pub mod udp_gate;
pub mod wait;

pub use backend::{pattern_chunk, pattern_sha256, Backend};
pub use client::Client;
pub use http_proxy::HttpProxy;
pub use mitm::MitmProxy;
pub use postgres::PgCluster;
pub use udp_gate::UdpGate;
pub use wait::{eventually, Outcome};

/// Installs a test tracing subscriber once (`RUST_LOG` picks the level; default warn).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
