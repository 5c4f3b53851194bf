//! Who is asking: login sessions for pages, API tokens for `/api/v1` and `/metrics`, and the
//! CSRF and same-origin checks on state changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use aws_lc_rs::constant_time;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use relay_store::{ApiToken, WebSession};

use crate::actions::Actor;
use crate::error::Error;
use crate::host::ServedOrigin;
use crate::AppState;

/// The session cookie. `__Host-` binds it to this origin: Secure, path `/`, no Domain.
pub(crate) const COOKIE: &str = "__Host-relay-session";

/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's value in a request, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a new session.
pub(crate) fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A logged-in admin (pages). Without a session, a page load goes to the login page and any
/// other method gets 403 (an error page).
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) session: WebSession,
    /// The origin the request was addressed to (for the same-origin check).
    pub(crate) origin: Option<String>,
}

impl Admin {
    /// Who the admin-action log names: `user:NAME`.
    pub(crate) fn actor(&self) -> Actor {
        Actor::user(&self.session.user.username)
    }

    /// Whether `token` is this session's CSRF token (constant time).
    pub(crate) fn csrf_ok(&self, token: &str) -> bool {
        constant_time::verify_slices_are_equal(token.as_bytes(), self.session.csrf.as_bytes())
            .is_ok()
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, Response> {
        let refused = |parts: &Parts| {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                Redirect::to("/login").into_response()
            } else {
                Error::Forbidden("log in first").page()
            }
        };
        let Some(cookie) = session_cookie(&parts.headers) else {
            return Err(refused(parts));
        };
        let origin = served_origin(parts);
        match state.store().web_session(&cookie).await {
            Ok(Some(session)) => Ok(Admin { session, origin }),
            Ok(None) => Err(refused(parts)),
            Err(e) => Err(Error::from(e).page()),
        }
    }
}

/// A request with a valid admin API token.
#[derive(Debug, Clone)]
pub(crate) struct ApiAdmin {
    pub(crate) token: ApiToken,
}

impl ApiAdmin {
    /// Who the admin-action log names: `token:NAME`.
    pub(crate) fn actor(&self) -> Actor {
        Actor::token(&self.token.name)
    }
}

impl FromRequestParts<AppState> for ApiAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ApiAdmin, Response> {
        let unauthorized = |detail: &'static str| Error::Unauthorized(detail).problem();
        let Some(value) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(unauthorized("send Authorization: Bearer <api token>"));
        };
        let Some(token) = bearer_token(value) else {
            return Err(unauthorized("send Authorization: Bearer <api token>"));
        };
        match state.store().verify_api_token(token, state.hasher()).await {
            Ok(Some(token)) => Ok(ApiAdmin { token }),
            Ok(None) => Err(unauthorized("the API token is unknown or revoked")),
            Err(e) => Err(Error::from(e).problem()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive and
/// followed by one or more spaces (RFC 9110 §11.4, RFC 6750 §2.1).
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ').trim_end();
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

/// Refuses a state-changing request that a browser marks as coming from another site, or whose
/// `Origin` is not the origin it was addressed to: `served` is `scheme://host[:port]`, with the
/// scheme browsers use for that host name (see [`crate::AllowedHosts`]), so `http://` and
/// `https://` pages of one host are different origins. Together with SameSite=Strict cookies
/// and the per-session CSRF token, a page elsewhere cannot make an admin's browser change
/// anything.
pub(crate) fn same_origin(headers: &HeaderMap, served: Option<&str>) -> Result<(), Error> {
    let refuse = || {
        Err(Error::Forbidden(
            "cross-origin request refused: state changes are accepted from this site's own pages \
             only",
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return refuse();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let matches = match (origin.to_str().ok(), served) {
            (Some(o), Some(s)) => o.eq_ignore_ascii_case(s),
            _ => false,
        };
        if !matches {
            return refuse();
        }
    }
    Ok(())
}

/// The origin the host check recorded for this request.
fn served_origin(parts: &Parts) -> Option<String> {
    parts.extensions.get::<ServedOrigin>().map(|o| o.0.clone())
}

/// The origin a request was addressed to, for handlers without an [`Admin`] (the login form).
#[derive(Debug, Clone)]
pub(crate) struct Served(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Served {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Served, Self::Rejection> {
        Ok(Served(served_origin(parts)))
    }
}

/// The client's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerIp(pub(crate) IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<PeerIp, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; __Host-relay-session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, "relay-session=abc".parse().unwrap());
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn cross_site_and_foreign_origin_are_refused() {
        let served = Some("http://127.0.0.1:9090");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h, served).is_ok());
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h, served).is_ok());
        // The same host and port over another scheme is another origin.
        h.insert(header::ORIGIN, "https://127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h, served).is_err());
        h.insert(header::ORIGIN, "http://127.0.0.1:9091".parse().unwrap());
        assert!(same_origin(&h, served).is_err());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h, served).is_err());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(same_origin(&h, served).is_err());
        // Without a recorded origin nothing with an Origin passes.
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h, None).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h, served).is_err());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h, served).is_ok());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer rat_x",
            "bearer rat_x",
            "BEARER rat_x",
            "bEaReR   rat_x",
        ] {
            assert_eq!(bearer_token(v), Some("rat_x"), "{v:?}");
        }
        for v in [
            "Bearer",
            "Bearer ",
            "Bearerrat_x",
            "Basic rat_x",
            "Bearer a b",
            "rat_x",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
