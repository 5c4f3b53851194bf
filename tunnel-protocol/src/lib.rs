//! The wire format between `relay-server` and `connector`, without any I/O.
//!
//! A *session* is one QUIC connection (ALPN [`ALPN`]). The connector opens the first bidirectional
//! stream as the **control stream** and speaks [`ControlFrame`]s on it: `Hello` (authenticate), then
//! `Renew`, `Ping`; the relay answers `Welcome` or `Refused`, then `Renewed`, `Pong`, `GoAway`.
//! Every other bidirectional stream is opened by the relay and carries one visitor request as
//! [`StreamFrame`]s: a `RequestHead`, body `Data`, optional `Trailers`, then the stream's FIN; the
//! connector answers with a `ResponseHead` (or an `Error`), body `Data`, optional `Trailers`, FIN.
//! An abort is a stream reset carrying an [`ErrorCode`].
//!
//! Non-goals: this crate does no I/O, owns no clock and keeps no state beyond the bytes handed to it;
//! the tokio adapters live in `relay-server` and `connector`. `docs/protocol.md` is the specification.

mod codec;
mod control;
mod error;
mod frame;
pub mod mux;
pub mod node;
pub mod path;
mod stream;

pub use control::{
    ControlFrame, Credential, GoAway, Hello, NodeAddress, Refused, Renewed, Welcome,
    MAX_WELCOME_NODES,
};
pub use error::{DecodeError, ErrorCode};
pub use frame::{FRAME_HEADER_LEN, MAX_CONTROL_FRAME_LEN, MAX_DATA_FRAME_LEN, MAX_HEAD_FRAME_LEN};
pub use stream::{
    RequestHead, RequestHeadRef, ResponseHead, StreamError, StreamFrame, MAX_HEADERS,
};

/// The ALPN protocol id of a tunnel session (QUIC, and TLS over TCP later). The trailing number is
/// the major protocol version: an incompatible change gets a new ALPN id.
pub const ALPN: &[u8] = b"relay-tunnel/1";

/// The version byte that starts every stream head and `Hello`.
pub const VERSION: u8 = 1;

/// Lowercase hex of `bytes` (ids, key ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
    }
}
