//! Proxy errors, who is to blame, and the one function that turns them into visitor responses.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tracing::{debug, error, warn};
use tunnel_protocol::ErrorCode;

use crate::policy::Denial;

/// Who caused a failure: decides the log level and what the visitor is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // `Relay` is for the relay's own faults; none of today's errors is one.
pub(crate) enum Blame {
    Backend,
    Connector,
    Relay,
    Visitor,
}

/// Why a visitor request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("backend did not answer in time")]
    BackendTimeout,
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    #[error("request body stalled for {0:?}")]
    BodyTimeout(Duration),
    #[error("connector failed the stream: {0}")]
    Connector(String),
    #[error("malformed relay path")]
    MalformedRoute,
    #[error("CONNECT is not served")]
    MethodNotAllowed,
    #[error("Host and authority disagree, several Host fields, or none on HTTP/1.1")]
    BadHost,
    #[error("malformed request body")]
    BadBody,
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    #[error("TLS server name and Host differ")]
    Misdirected,
    #[error("tenant has no live session")]
    NoSession,
    /// The node that held the tenant's session refused a forwarded request without delivering
    /// it (its sessions moved); the request may be placed again.
    #[error("the node holding the session no longer has it")]
    Moved,
    #[error("no route for this path")]
    NotFound,
    #[error("connector did not send a response head within {0:?}")]
    ResponseTimeout(Duration),
    #[error("request head not complete within {0:?}")]
    HeadTimeout(Duration),
    #[error("too many request header fields")]
    TooManyHeaders,
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    #[error("refused by the access policy")]
    Policy(crate::policy::Denial),
    #[error("tenant stream limit reached")]
    TooManyStreams,
    #[error("target not defined on the connector")]
    UnknownTarget,
    #[error("unknown or disabled tenant")]
    UnknownTenant,
}

impl ProxyError {
    /// Blame and visitor status come from one match, so they cannot drift apart.
    pub(crate) fn outcome(&self) -> (Blame, StatusCode) {
        match self {
            Self::BackendTimeout => (Blame::Backend, StatusCode::GATEWAY_TIMEOUT),
            Self::BackendUnavailable(_) => (Blame::Backend, StatusCode::BAD_GATEWAY),
            Self::BodyTooLarge(_) => (Blame::Visitor, StatusCode::PAYLOAD_TOO_LARGE),
            Self::BodyTimeout(_) => (Blame::Visitor, StatusCode::REQUEST_TIMEOUT),
            Self::Connector(_) => (Blame::Connector, StatusCode::BAD_GATEWAY),
            Self::MalformedRoute | Self::BadHost | Self::BadBody | Self::ConflictingFraming => {
                (Blame::Visitor, StatusCode::BAD_REQUEST)
            }
            Self::Misdirected => (Blame::Visitor, StatusCode::MISDIRECTED_REQUEST),
            Self::MethodNotAllowed => (Blame::Visitor, StatusCode::METHOD_NOT_ALLOWED),
            Self::NoSession | Self::Moved => (Blame::Connector, StatusCode::SERVICE_UNAVAILABLE),
            Self::NotFound => (Blame::Visitor, StatusCode::NOT_FOUND),
            Self::ResponseTimeout(_) => (Blame::Connector, StatusCode::GATEWAY_TIMEOUT),
            Self::HeadTimeout(_) => (Blame::Visitor, StatusCode::REQUEST_TIMEOUT),
            Self::TooManyHeaders => (Blame::Visitor, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Self::UriTooLong(_) => (Blame::Visitor, StatusCode::URI_TOO_LONG),
            Self::TooManyStreams => (Blame::Visitor, StatusCode::TOO_MANY_REQUESTS),
            Self::Policy(d) => (
                Blame::Visitor,
                match d {
                    Denial::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                    Denial::Forbidden => StatusCode::FORBIDDEN,
                    Denial::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                    Denial::Preflight(_) => StatusCode::NO_CONTENT,
                },
            ),
            Self::UnknownTarget => (Blame::Visitor, StatusCode::NOT_FOUND),
            Self::UnknownTenant => (Blame::Visitor, StatusCode::NOT_FOUND),
        }
    }

    /// The short, internals-free text the visitor sees.
    fn detail(&self) -> &'static str {
        match self {
            Self::BackendTimeout | Self::ResponseTimeout(_) => "the backend did not answer in time",
            Self::BackendUnavailable(_) | Self::Connector(_) => "the backend could not be reached",
            Self::BodyTooLarge(_) => "the request body is too large",
            Self::BodyTimeout(_) => "the request body stalled",
            Self::MalformedRoute => "malformed relay path",
            Self::MethodNotAllowed => "CONNECT is not served here",
            Self::BadHost => "missing or conflicting host",
            Self::BadBody => "malformed request body",
            Self::ConflictingFraming => "conflicting message framing",
            Self::Misdirected => "this connection cannot serve that host",
            Self::NoSession | Self::Moved => "no connector is online for this tenant",
            Self::NotFound | Self::UnknownTenant => "not found",
            Self::HeadTimeout(_) => "the request head did not arrive in time",
            Self::TooManyHeaders => "too many request header fields",
            Self::UriTooLong(_) => "the request URI is too long",
            Self::TooManyStreams => "too many requests in flight for this tenant",
            Self::Policy(Denial::Unauthorized(_)) => "credentials are missing or not valid",
            Self::Policy(Denial::Forbidden) => "access denied by policy",
            Self::Policy(Denial::RateLimited(_)) => "too many requests from this address",
            Self::Policy(Denial::Preflight(_)) => "",
            Self::UnknownTarget => "unknown target",
        }
    }

    /// `Retry-After` for the statuses that promise a retry.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::NoSession | Self::Moved => Some(5),
            Self::TooManyStreams => Some(1),
            Self::Policy(Denial::RateLimited(secs)) => Some(*secs),
            _ => None,
        }
    }

    /// Maps a connector's stream error code back to an error with the blame it reported.
    pub(crate) fn from_code(code: ErrorCode, message: String) -> ProxyError {
        match code {
            ErrorCode::UNKNOWN_TARGET => Self::UnknownTarget,
            ErrorCode::BACKEND_TIMEOUT => Self::BackendTimeout,
            ErrorCode::BACKEND_UNAVAILABLE | ErrorCode::BACKEND_BAD_RESPONSE => {
                Self::BackendUnavailable(message)
            }
            _ => Self::Connector(format!("{code}: {message}")),
        }
    }
}

/// The one place a failed request becomes a response: log once, say little.
pub(crate) fn error_response(err: &ProxyError, request_id: &str) -> Response<Full<Bytes>> {
    error_message(err, request_id).map(Full::new)
}

/// [`error_response`] with its body as bytes.
pub(crate) fn error_message(err: &ProxyError, request_id: &str) -> Response<Bytes> {
    let (blame, status) = err.outcome();
    if let ProxyError::Policy(Denial::Preflight(headers)) = err {
        // A CORS preflight the access policy answers: no body, nothing to log.
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = status;
        *resp.headers_mut() = headers.clone();
        return resp;
    }
    match blame {
        // Every request to a tenant without a connector would warn: the session's own log lines
        // (closed, reconnecting) already tell that story.
        _ if matches!(err, ProxyError::NoSession | ProxyError::Moved) => {
            debug!(request_id, error = %err, "request refused")
        }
        Blame::Visitor => debug!(request_id, error = %err, "request refused"),
        Blame::Backend | Blame::Connector => warn!(request_id, error = %err, "request failed"),
        Blame::Relay => error!(request_id, error = %err, "request failed"),
    }
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": err.detail(),
        "request_id": request_id,
    });
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if matches!(
        err,
        ProxyError::ConflictingFraming | ProxyError::BadBody | ProxyError::HeadTimeout(_)
    ) {
        // The rest of the connection's bytes cannot be trusted to frame the next request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(err, ProxyError::MethodNotAllowed) {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        );
    }
    if let ProxyError::Policy(Denial::Unauthorized(challenges)) = err {
        for c in challenges {
            resp.headers_mut()
                .append(header::WWW_AUTHENTICATE, c.clone());
        }
    }
    if let Some(secs) = err.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
