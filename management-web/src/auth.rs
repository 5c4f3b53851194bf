//! Who is asking: login sessions for pages, API tokens for `/api/v1` and `/metrics`, the CSRF
//! and same-origin checks on state changes, and login rate limiting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use relay_store::{ApiToken, WebSession};

use crate::api::problem;
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
/// other method gets 403.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) session: WebSession,
}

impl Admin {
    /// The actor recorded in the admin-action log.
    pub(crate) fn actor(&self) -> String {
        format!("user:{}", self.session.user.username)
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
                problem(StatusCode::FORBIDDEN, "forbidden", "log in first")
            }
        };
        let Some(cookie) = session_cookie(&parts.headers) else {
            return Err(refused(parts));
        };
        match state.store().web_session(&cookie).await {
            Ok(Some(session)) => Ok(Admin { session }),
            Ok(None) => Err(refused(parts)),
            Err(e) => {
                tracing::warn!(error = %e, "session lookup failed");
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable",
                    "the database did not answer; try again",
                ))
            }
        }
    }
}

/// A request with a valid admin API token.
#[derive(Debug, Clone)]
pub(crate) struct ApiAdmin {
    pub(crate) token: ApiToken,
}

impl ApiAdmin {
    /// The actor recorded in the admin-action log.
    pub(crate) fn actor(&self) -> String {
        format!("token:{}", self.token.name)
    }
}

impl FromRequestParts<AppState> for ApiAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ApiAdmin, Response> {
        let unauthorized = |detail: &str| {
            let mut res = problem(StatusCode::UNAUTHORIZED, "unauthorized", detail);
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"relay\""),
            );
            res
        };
        let Some(value) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Err(unauthorized("send Authorization: Bearer <api token>"));
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(unauthorized("send Authorization: Bearer <api token>"));
        };
        match state
            .store()
            .verify_api_token(token.trim(), state.hasher())
            .await
        {
            Ok(Some(token)) => Ok(ApiAdmin { token }),
            Ok(None) => Err(unauthorized("the API token is unknown or revoked")),
            Err(e) => {
                tracing::warn!(error = %e, "API token lookup failed");
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable",
                    "the database did not answer; try again",
                ))
            }
        }
    }
}

/// Refuses a state-changing request that a browser marks as coming from another site, or whose
/// `Origin` is not this host. Together with SameSite=Strict cookies and the per-session CSRF
/// token, a page elsewhere cannot make an admin's browser change anything.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let refuse = || {
        Err(problem(
            StatusCode::FORBIDDEN,
            "cross-origin request refused",
            "state changes are accepted from this site's own pages only",
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return refuse();
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin = origin.to_str().ok();
        let matches = match (origin, host) {
            (Some(o), Some(h)) => {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
                    == Some(h)
            }
            _ => false,
        };
        if !matches {
            return refuse();
        }
    }
    Ok(())
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

/// Failed logins per client address and per user name in a sliding window; past the limit,
/// logins are refused (429) without checking the password.
#[derive(Debug, Default)]
pub(crate) struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Failed attempts allowed per key and window.
const MAX_FAILURES: u32 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Keys remembered at most (memory bound).
const MAX_KEYS: usize = 10_000;

impl LoginLimiter {
    fn keys(ip: IpAddr, user: &str) -> [String; 2] {
        [format!("ip:{ip}"), format!("user:{}", user.to_lowercase())]
    }

    /// How long until `ip`/`user` may try again, if they are over the limit.
    pub(crate) fn blocked(&self, ip: IpAddr, user: &str) -> Option<Duration> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(ip, user)
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|(n, start)| *n >= MAX_FAILURES && start.elapsed() < WINDOW)
            .map(|(_, start)| WINDOW.saturating_sub(start.elapsed()))
            .max()
    }

    /// Counts a failed attempt.
    pub(crate) fn failed(&self, ip: IpAddr, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, (_, start)| start.elapsed() < WINDOW);
        }
        for key in Self::keys(ip, user) {
            if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                continue;
            }
            let entry = map.entry(key).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, Instant::now());
            }
            entry.0 += 1;
        }
    }

    /// Forgets the failures of a user who just logged in from `ip`.
    pub(crate) fn succeeded(&self, ip: IpAddr, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in Self::keys(ip, user) {
            map.remove(&key);
        }
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
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://127.0.0.1:9090".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h).is_ok());
    }

    #[test]
    fn limiter_blocks_after_the_limit_and_forgets_on_success() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(l.blocked(ip, "admin").is_none());
            l.failed(ip, "admin");
        }
        assert!(l.blocked(ip, "admin").is_some());
        // Another address is blocked too for that user name, and the address for other names.
        assert!(l.blocked("192.0.2.2".parse().unwrap(), "Admin").is_some());
        assert!(l.blocked(ip, "other").is_some());
        l.succeeded(ip, "admin");
        assert!(l.blocked(ip, "admin").is_none());
    }
}
