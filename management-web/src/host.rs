//! The names the management web answers to. A page on another site can point its own DNS name
//! at 127.0.0.1 (DNS rebinding) and so reach a loopback listener from a victim's browser; such a
//! request still carries the foreign name in `Host`, so anything not on this list gets 421.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Error;
use crate::AppState;

/// The host names (and address literals) a management web answers to, each with the scheme its
/// browsers use to reach it: requests whose `Host` (HTTP/1.1) or `:authority` (HTTP/2) names
/// anything else are refused with 421 before any handler runs. Ports are not compared (a
/// rebinding page cannot choose the name, whatever the port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<(Scheme, String)>,
}

/// How browsers reach a name: plain HTTP (the listener itself) or HTTPS (a TLS reverse proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Requests every listener answers whatever their `Host`: orchestrator probes address pods by IP,
/// and these two reveal nothing and change nothing.
const EXEMPT: &[&str] = &["/healthz", "/readyz"];

impl AllowedHosts {
    /// `localhost`, `127.0.0.1` and `[::1]`, plus the address `listen` is bound to (when it is
    /// not a wildcard), all over plain HTTP: the listener's own scheme.
    pub fn loopback(listen: Option<SocketAddr>) -> AllowedHosts {
        let mut entries: Vec<(Scheme, String)> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|h| (Scheme::Http, (*h).to_string()))
            .collect();
        if let Some(addr) = listen.filter(|a| !a.ip().is_unspecified()) {
            let host = match addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            if !entries.iter().any(|(_, h)| *h == host) {
                entries.push((Scheme::Http, host));
            }
        }
        AllowedHosts { entries }
    }

    /// Adds configured names. `admin.example.com` means the name is reached through a TLS
    /// reverse proxy (`https://admin.example.com` is the same); `http://name` marks a name
    /// reached over plain HTTP. A port, path, wildcard or anything else is refused.
    pub fn with_names<S: AsRef<str>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<AllowedHosts, String> {
        for name in names {
            let entry = parse_entry(name.as_ref())?;
            self.entries.retain(|(_, h)| *h != entry.1);
            self.entries.push(entry);
        }
        Ok(self)
    }

    /// The origin (`scheme://authority`) a request for `authority` is addressed to, if the
    /// authority's host is on the list.
    fn origin_for(&self, authority: &str) -> Option<String> {
        let host = host_of(authority)?;
        let (scheme, _) = self.entries.iter().find(|(_, h)| *h == host)?;
        Some(format!(
            "{}://{}",
            scheme.as_str(),
            authority.trim().to_ascii_lowercase()
        ))
    }
}

/// The origin a request was addressed to (`http://127.0.0.1:9090`), put in the request's
/// extensions by [`check`]; the same-origin check compares `Origin` with it.
#[derive(Debug, Clone)]
pub(crate) struct ServedOrigin(pub(crate) String);

/// Middleware: refuses a request for a host that is not allowed (421), else records the origin
/// it was addressed to.
pub(crate) async fn check(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if EXEMPT.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let origin = authority(&req).and_then(|a| state.allowed_hosts().origin_for(&a));
    match origin {
        Some(origin) => {
            req.extensions_mut().insert(ServedOrigin(origin));
            next.run(req).await
        }
        None => {
            tracing::debug!(host = ?req.headers().get(header::HOST), "request for a foreign host refused");
            Error::Misdirected.problem()
        }
    }
}

/// The request's authority: the one `Host` field, or the URI's authority (HTTP/2
/// `:authority`, or an absolute-form HTTP/1.1 target). When both are present they must name
/// the same host; two `Host` fields, or none at all, are refused.
fn authority(req: &Request) -> Option<String> {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return None;
    }
    let field = match field {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let uri = req.uri().authority().map(|a| a.as_str());
    match (field, uri) {
        (Some(f), Some(u)) => (host_of(f)? == host_of(u)?).then(|| f.to_string()),
        (Some(a), None) | (None, Some(a)) => Some(a.to_string()),
        (None, None) => None,
    }
}

/// The host of an authority (`Host: Name.Example:8080` → `name.example`), lowercase, without
/// port or trailing dot; IPv6 literals keep their brackets. `None` for anything malformed.
fn host_of(authority: &str) -> Option<String> {
    let a = authority.trim().to_ascii_lowercase();
    if a.is_empty()
        || a.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"@/\\?#".contains(&b))
    {
        return None;
    }
    let (host, port) = if a.starts_with('[') {
        let end = a.find(']')?;
        let rest = &a[end + 1..];
        let port = match rest {
            "" => "",
            r => r.strip_prefix(':')?,
        };
        (&a[..=end], port)
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h, p),
            None => (a.as_str(), ""),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then(|| host.to_string())
}

/// A configured name: `name`, `https://name` (both through a TLS proxy) or `http://name`.
fn parse_entry(raw: &str) -> Result<(Scheme, String), String> {
    let bad = |why: &str| Err(format!("{raw:?}: {why}"));
    let lower = raw.trim().to_ascii_lowercase();
    let (scheme, name) = if let Some(n) = lower.strip_prefix("http://") {
        (Scheme::Http, n)
    } else if let Some(n) = lower.strip_prefix("https://") {
        (Scheme::Https, n)
    } else {
        (Scheme::Https, lower.as_str())
    };
    let name = name.strip_suffix('/').unwrap_or(name);
    if name.starts_with('[') {
        let inner = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
        return match inner.and_then(|i| i.parse::<std::net::Ipv6Addr>().ok()) {
            Some(ip) => Ok((scheme, format!("[{ip}]"))),
            None => bad("not an IPv6 literal in brackets (and no port, please)"),
        };
    }
    if let Ok(ip) = name.parse::<std::net::Ipv6Addr>() {
        return Ok((scheme, format!("[{ip}]")));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(relay_store::valid_label) {
        return bad("give a host name or address without port or path, e.g. admin.example.com");
    }
    Ok((scheme, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_without_port_and_case() {
        assert_eq!(host_of("LocalHost:9090").as_deref(), Some("localhost"));
        assert_eq!(host_of("localhost").as_deref(), Some("localhost"));
        assert_eq!(host_of("localhost.:80").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:9090").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[::1]").as_deref(), Some("[::1]"));
        for bad in [
            "",
            ":80",
            "a b",
            "evil@localhost",
            "localhost:80x",
            "::1",
            "[::1]x",
            "x/y",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn loopback_names_and_the_listen_address_are_allowed_over_http() {
        let a = AllowedHosts::loopback(Some("127.0.0.2:9090".parse().unwrap()));
        assert_eq!(
            a.origin_for("localhost:9090").as_deref(),
            Some("http://localhost:9090")
        );
        assert_eq!(
            a.origin_for("127.0.0.1").as_deref(),
            Some("http://127.0.0.1")
        );
        assert_eq!(
            a.origin_for("[::1]:9090").as_deref(),
            Some("http://[::1]:9090")
        );
        assert_eq!(
            a.origin_for("127.0.0.2:9090").as_deref(),
            Some("http://127.0.0.2:9090")
        );
        for foreign in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.3",
            "localhost.evil.example",
        ] {
            assert_eq!(a.origin_for(foreign), None, "{foreign}");
        }
        let wild = AllowedHosts::loopback(Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(wild.origin_for("0.0.0.0:9090"), None);
    }

    #[test]
    fn configured_names_default_to_https() {
        let a = AllowedHosts::loopback(None)
            .with_names(["Admin.Example.com", "http://intranet-admin", "[fd00::1]"])
            .unwrap();
        assert_eq!(
            a.origin_for("admin.example.com").as_deref(),
            Some("https://admin.example.com")
        );
        assert_eq!(
            a.origin_for("intranet-admin:8080").as_deref(),
            Some("http://intranet-admin:8080")
        );
        assert_eq!(
            a.origin_for("[fd00::1]").as_deref(),
            Some("https://[fd00::1]")
        );
        for bad in [
            "admin.example.com:8443",
            "*.example.com",
            "https://admin.example.com/path",
            "",
            "ftp://x",
            "[fd00::1]:443",
            "a..b",
        ] {
            assert!(
                AllowedHosts::loopback(None).with_names([bad]).is_err(),
                "{bad:?}"
            );
        }
    }
}
