//! The crate's one error type, and the one place it becomes an answer: [`Error::outcome`] gives
//! the status; [`Error::problem`] writes it as an RFC 9457 problem document (the API, `/metrics`,
//! the host check) and [`Error::page`] as an HTML page (the pages). Our own failures are logged
//! here, once, and never shown.

use std::fmt;

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

/// Why a request failed. Actions, handlers and extractors return it; the adapters answer it with
/// [`ApiError`] (a problem document) or [`PageError`] (a page).
#[derive(Debug)]
pub(crate) enum Error {
    /// A query parameter is unknown, malformed or out of range.
    BadQuery(String),
    /// Every password-hashing slot stayed busy: try again shortly.
    Busy,
    /// The name is taken (a tenant, a hostname, an API token), or names several live relay
    /// nodes.
    Conflict(String),
    /// A state change from another site, without the session's CSRF token or without a login.
    Forbidden(&'static str),
    /// Our failure (a template, an unexpected store error); the cause is logged, never shown.
    Internal(String),
    /// The request names a host this listener does not answer to (DNS rebinding).
    Misdirected,
    /// No such resource.
    NotFound(String),
    /// The HTTP layer could not read the request (unparsable JSON, a missing content type, a
    /// body too large): its status is kept.
    Rejected(StatusCode, String),
    /// No valid API token.
    Unauthorized(&'static str),
    /// The database did not answer; the cause is logged, never shown.
    Unavailable(String),
    /// A value breaks a rule: a name, a hostname, a limit, a body of the wrong shape.
    Validation(String),
}

/// What an error's answer says, whatever its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) status: StatusCode,
    pub(crate) title: &'static str,
}

impl Error {
    /// Status and title come from this one match, so the API and the pages cannot drift apart.
    pub(crate) fn outcome(&self) -> Outcome {
        let (status, title) = match self {
            Error::BadQuery(_) => (StatusCode::BAD_REQUEST, "invalid query"),
            Error::Busy => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            Error::Misdirected => (StatusCode::MISDIRECTED_REQUEST, "misdirected request"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not found"),
            Error::Rejected(status, _) => (*status, "invalid request body"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable"),
            Error::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid value"),
        };
        Outcome { status, title }
    }

    /// What the client is told: the reason for its own mistakes, a fixed sentence for ours.
    pub(crate) fn detail(&self) -> String {
        match self {
            Error::Busy => "password hashing is busy; try again shortly".into(),
            Error::Internal(_) => "see the server log".into(),
            Error::Misdirected => "this listener does not answer to that host name; an operator \
                                   can add it to the allowed host names"
                .into(),
            Error::Unavailable(_) => "the database did not answer; try again".into(),
            Error::Forbidden(why) | Error::Unauthorized(why) => (*why).into(),
            Error::BadQuery(why)
            | Error::Conflict(why)
            | Error::NotFound(why)
            | Error::Rejected(_, why)
            | Error::Validation(why) => why.clone(),
        }
    }

    /// Whether the error is about what a form asked for (a taken or invalid value): pages show
    /// it on the form again rather than on an error page.
    pub(crate) fn is_input(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::Validation(_))
    }

    /// The answer under `/api`: an RFC 9457 problem document.
    pub(crate) fn problem(self) -> Response {
        let Outcome { status, title } = self.log();
        let body = json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        let mut res = (status, body.to_string()).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        self.add_headers(&mut res);
        res
    }

    /// The answer on the pages: an HTML page saying what went wrong (askama escapes the detail).
    pub(crate) fn page(self) -> Response {
        let Outcome { status, title } = self.log();
        let page = ErrorPage {
            status: status.as_u16(),
            title,
            detail: self.detail(),
        };
        let mut res = match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "error page failed to render");
                (status, format!("{} {title}\n", status.as_u16())).into_response()
            }
        };
        self.add_headers(&mut res);
        res
    }

    /// Logs our own failures (once, here) and returns the outcome.
    fn log(&self) -> Outcome {
        match self {
            Error::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            Error::Unavailable(cause) => tracing::warn!(error = %cause, "store failed"),
            other => tracing::debug!(error = %other, "request refused"),
        }
        self.outcome()
    }

    /// The headers an answer needs whatever its format.
    fn add_headers(&self, res: &mut Response) {
        match self {
            Error::Busy => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            Error::Unauthorized(_) => {
                res.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"relay\""),
                );
            }
            _ => {}
        }
    }
}

impl fmt::Display for Error {
    /// The cause too, for the log (answers use [`Error::detail`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Internal(cause) | Error::Unavailable(cause) => f.write_str(cause),
            other => f.write_str(&other.detail()),
        }
    }
}

impl std::error::Error for Error {}

impl From<relay_store::Error> for Error {
    /// The store's vocabulary in ours: taken names conflict (and so does a node name that several
    /// live nodes share), missing ones are not found, names
    /// and hostnames that break the rules are invalid, a failed database is unavailable.
    fn from(e: relay_store::Error) -> Error {
        use relay_store::Error as S;
        match e {
            S::TenantExists(_)
            | S::HostnameTaken(_)
            | S::ApiTokenExists(_)
            | S::AdminUserExists(_)
            | S::NodeAmbiguous(_) => Error::Conflict(e.to_string()),
            S::TenantNotFound(_)
            | S::CredentialNotFound(_)
            | S::HostnameNotFound(_)
            | S::ApiTokenNotFound(_)
            | S::PairingTokenNotFound(_)
            | S::ApiKeyNotFound(_)
            | S::CertificateNotFound(_)
            | S::NodeNotFound(_) => Error::NotFound(e.to_string()),
            S::InvalidName(_)
            | S::InvalidHostname(_)
            | S::InvalidPeerId(_)
            | S::InvalidPolicy(_)
            | S::InvalidCertificate(_)
            | S::NotAcme(_) => Error::Validation(e.to_string()),
            S::HashingBusy => Error::Busy,
            S::Database(_) => Error::Unavailable(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

/// An [`Error`] answered as a problem document: what the API's handlers return.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.problem()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError(e)
    }
}

impl From<relay_store::Error> for ApiError {
    fn from(e: relay_store::Error) -> ApiError {
        ApiError(e.into())
    }
}

/// An [`Error`] answered as an HTML page: what the pages' handlers return.
#[derive(Debug)]
pub(crate) struct PageError(pub(crate) Error);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.page()
    }
}

impl From<Error> for PageError {
    fn from(e: Error) -> PageError {
        PageError(e)
    }
}

impl From<relay_store::Error> for PageError {
    fn from(e: relay_store::Error) -> PageError {
        PageError(e.into())
    }
}

/// A page of its own (no navigation): it must render without a login, and for any failure.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: &'static str,
    detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_statuses() {
        let status = |e: relay_store::Error| Error::from(e).outcome().status;
        assert_eq!(
            status(relay_store::Error::TenantExists("a".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(relay_store::Error::CredentialNotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(relay_store::Error::InvalidName(
                relay_store::validate_name("bad name").unwrap_err()
            )),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(relay_store::Error::NodeNotFound("n".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(relay_store::Error::NodeAmbiguous("host".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(relay_store::Error::HashingBusy),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status(relay_store::Error::PasswordHash),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn both_formats_answer_the_same_status_and_hide_our_failures() {
        for e in [
            || Error::Validation("name \"x y\" is invalid".into()),
            || Error::Unavailable("connection refused to 10.0.0.5".into()),
            || Error::Internal("template: no field".into()),
            || Error::Unauthorized("send a token"),
        ] {
            let (problem, page) = (e().problem(), e().page());
            assert_eq!(problem.status(), page.status());
            assert_eq!(
                problem.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert!(page.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"));
            let text = |r: Response| async move {
                let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
                String::from_utf8(b.to_vec()).unwrap()
            };
            let (p, h) = (text(problem).await, text(page).await);
            for secret in ["10.0.0.5", "no field"] {
                assert!(!p.contains(secret) && !h.contains(secret), "{p} {h}");
            }
            if let Error::Validation(_) = e() {
                assert!(h.contains("name &#34;x y&#34; is invalid"), "escaped: {h}");
            }
        }
        let busy = Error::Busy.page();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "2");
        let unauthorized = Error::Unauthorized("x").problem();
        assert!(unauthorized
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
    }
}
