//! What `relay-server`, `connector` and `management-web` share as processes, so that each binary
//! behaves alike: configuration layered from a TOML file, the environment and flags ([`layered`],
//! exit code [`layered::EXIT_CONFIG`] = 64 for any configuration error), SIGTERM and Ctrl-C as a
//! cancellation ([`cancel_on_signal`]), and tracing set up from `RUST_LOG` in text or JSON
//! ([`init_tracing`]). The two tunnel binaries also tell glibc's allocator to keep the memory a
//! transfer reuses ([`allocator::keep_transfer_memory`]).
//!
//! Non-goals: no knowledge of any binary's settings; each crate keeps its own `config.rs`.

pub mod allocator;
pub mod layered;
mod signals;

pub use signals::{cancel_on_signal, colour, init_tracing};
