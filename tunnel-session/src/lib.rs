//! The tokio side of a tunnel session, shared by `relay-server` and `connector`: everything both
//! ends of a session do alike, over the wire format of [`tunnel_protocol`].
//!
//! ```text
//! relay-server ──► tunnel-session ◄── connector
//!                        │
//!                        ▼
//!                 tunnel-protocol (sans-io)
//! ```
//!
//! - [`transport`]: a session's connection, QUIC (quinn) or TLS over TCP with the [`mux`]
//!   multiplexer on top, behind one `Conn` type; each request is one bidirectional stream.
//! - [`framing`]: stream frames over a stream's halves, bodies backed by a stream, and `splice`
//!   for upgraded connections.
//! - [`control`]: the control stream (`Hello`, `Welcome`, `Renew`, `Ping`, `GoAway`).
//! - [`pipe`]: two streams joined byte for byte, ends carried across (node-to-node forwarding).
//! - [`headers`]: hop-by-hop removal and the upgrade allow-list, applied on both sides.
//! - [`udp`]: the UDP side of QUIC for both ends: the client endpoint's socket (degraded where a
//!   socket option quinn sets is refused, as under Wine), socket buffer sizes, and the datagram
//!   size bound that path MTU discovery probes up to.
//! - [`wake`]: a future in a `select!` loop polled only when it was woken (shutdown and close
//!   signals beside per-request work).
//!
//! Non-goals: no policy (which session serves a request, who may connect, how to reconnect): that
//! is the relay's and the connector's own.

pub mod control;
pub mod framing;
pub mod headers;
pub mod mux;
pub mod pipe;
pub mod transport;
pub mod udp;
pub mod wake;
