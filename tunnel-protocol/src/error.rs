//! Error codes carried in session closes, stream resets and `Error` frames, and decode errors.

use std::fmt;

/// A protocol error code. It travels as a QUIC application error code (stream reset, connection
/// close) and inside `Refused`, `GoAway` and stream `Error` frames. `docs/protocol.md` lists them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Clean close or finish; nothing went wrong.
    pub const NO_ERROR: ErrorCode = ErrorCode(0x00);
    /// The peer sent bytes this version never accepts.
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x01);
    /// A bug or resource failure inside the sender.
    pub const INTERNAL: ErrorCode = ErrorCode(0x02);
    /// The peer speaks a protocol version the sender does not.
    pub const VERSION_UNSUPPORTED: ErrorCode = ErrorCode(0x03);
    /// The control stream did not complete authentication in time.
    pub const AUTH_TIMEOUT: ErrorCode = ErrorCode(0x04);

    /// The credential is unknown, wrong or revoked (deliberately one code for all three).
    pub const AUTH_FAILED: ErrorCode = ErrorCode(0x10);
    /// The token's signature, issuer, audience or tenant does not verify.
    pub const TOKEN_INVALID: ErrorCode = ErrorCode(0x11);
    /// The token has expired; authenticate with the secret again.
    pub const TOKEN_EXPIRED: ErrorCode = ErrorCode(0x12);
    /// Too many authentication attempts; retry after the hinted delay.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(0x13);

    /// The request names a target the connector does not have.
    pub const UNKNOWN_TARGET: ErrorCode = ErrorCode(0x20);
    /// The backend refused or reset the connection, or TLS to it failed.
    pub const BACKEND_UNAVAILABLE: ErrorCode = ErrorCode(0x21);
    /// The backend did not send response headers within the target's timeout.
    pub const BACKEND_TIMEOUT: ErrorCode = ErrorCode(0x22);
    /// The backend sent a response the connector cannot relay.
    pub const BACKEND_BAD_RESPONSE: ErrorCode = ErrorCode(0x23);
    /// The backend's body failed after the response head was sent.
    pub const BACKEND_ABORTED: ErrorCode = ErrorCode(0x24);

    /// The visitor went away; whatever is in flight for it is cancelled.
    pub const VISITOR_ABORTED: ErrorCode = ErrorCode(0x30);
    /// The request body broke a limit (size, idle) and was cut.
    pub const REQUEST_REJECTED: ErrorCode = ErrorCode(0x31);

    /// The relay is shutting down or draining this session; reconnect elsewhere.
    pub const GOING_AWAY: ErrorCode = ErrorCode(0x40);
    /// The session's credential was revoked.
    pub const CREDENTIAL_REVOKED: ErrorCode = ErrorCode(0x41);
    /// The tenant was disabled or deleted.
    pub const TENANT_DISABLED: ErrorCode = ErrorCode(0x42);
    /// The connector is shutting down.
    pub const CONNECTOR_SHUTDOWN: ErrorCode = ErrorCode(0x43);

    /// A short stable name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::NO_ERROR => "no_error",
            Self::PROTOCOL_ERROR => "protocol_error",
            Self::INTERNAL => "internal",
            Self::VERSION_UNSUPPORTED => "version_unsupported",
            Self::AUTH_TIMEOUT => "auth_timeout",
            Self::AUTH_FAILED => "auth_failed",
            Self::TOKEN_INVALID => "token_invalid",
            Self::TOKEN_EXPIRED => "token_expired",
            Self::RATE_LIMITED => "rate_limited",
            Self::UNKNOWN_TARGET => "unknown_target",
            Self::BACKEND_UNAVAILABLE => "backend_unavailable",
            Self::BACKEND_TIMEOUT => "backend_timeout",
            Self::BACKEND_BAD_RESPONSE => "backend_bad_response",
            Self::BACKEND_ABORTED => "backend_aborted",
            Self::VISITOR_ABORTED => "visitor_aborted",
            Self::REQUEST_REJECTED => "request_rejected",
            Self::GOING_AWAY => "going_away",
            Self::CREDENTIAL_REVOKED => "credential_revoked",
            Self::TENANT_DISABLED => "tenant_disabled",
            Self::CONNECTOR_SHUTDOWN => "connector_shutdown",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:#x})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why bytes could not be decoded. "Need more bytes" is not an error: decoders return `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame declared a length above the limit for its kind.
    #[error("frame of type {frame_type:#x} declares {len} bytes, limit {limit}")]
    FrameTooLarge {
        /// The frame type byte.
        frame_type: u8,
        /// The declared payload length.
        len: usize,
        /// The limit for that type.
        limit: usize,
    },
    /// A frame type this version does not know, or one not allowed in this context.
    #[error("unexpected frame type {0:#x}")]
    UnexpectedFrame(u8),
    /// A stream head or `Hello` of a version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A payload ended before its fields did, or had bytes left over.
    #[error("malformed {0} payload")]
    Malformed(&'static str),
    /// A header name or value is not valid HTTP (CR, LF, NUL, bad characters).
    #[error("invalid header in {0}")]
    InvalidHeader(&'static str),
    /// More header fields than [`crate::MAX_HEADERS`].
    #[error("too many header fields ({0})")]
    TooManyHeaders(usize),
    /// A string field is not UTF-8.
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
}
