//! Where a visitor request goes: by tenant hostname, by the wildcard base domain
//! (`{target}.{tenant}.{base}`), or by the path `/relay/{tenant}/{target}/{path}`. Tenant and
//! target come from the raw (still percent-encoded) segments and are never decoded: one parse
//! result feeds both authorisation and routing. The path below the target keeps the edge's path
//! guarantee ([`tunnel_protocol::path`]).

use std::borrow::Cow;
use std::sync::Arc;

use http::header;

use crate::error::ProxyError;
use crate::Relay;

/// A parsed relay route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route<'a> {
    /// Canonical tenant name (looked up, so borrowed from the path when it is canonical already).
    pub(crate) tenant: Cow<'a, str>,
    /// Canonical target name.
    pub(crate) target: String,
    /// The path below the target, as received, starting with `/`.
    pub(crate) path: &'a str,
}

/// Why a path is not a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// Not under `/relay/` at all → 404.
    NotRelay,
    /// Under `/relay/` but malformed (bad names, dot-segments climbing out) → 400.
    Malformed,
}

/// Parses a raw request path.
pub(crate) fn parse(path: &str) -> Result<Route<'_>, RouteError> {
    parse_under("/relay/", path)
}

/// Parses a raw request path under `prefix` (`/relay/`, `/queue/`): `{prefix}{tenant}/{target}/…`.
pub(crate) fn parse_under<'a>(prefix: &str, path: &'a str) -> Result<Route<'a>, RouteError> {
    let rest = path.strip_prefix(prefix).ok_or(RouteError::NotRelay)?;
    let (tenant, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (target, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let tenant = relay_store::canonical_name(tenant).map_err(|_| RouteError::Malformed)?;
    let target = relay_store::validate_name(target).map_err(|_| RouteError::Malformed)?;
    let path = if tail.is_empty() { "/" } else { tail };
    if tunnel_protocol::path::check(path).is_err() {
        return Err(RouteError::Malformed);
    }
    Ok(Route {
        tenant,
        target,
        path,
    })
}

/// `path` when it keeps the edge's path guarantee ([`tunnel_protocol::path`]): hostname routes
/// pass the whole path.
pub(crate) fn checked_path(path: &str) -> Option<&str> {
    tunnel_protocol::path::check(path).is_ok().then_some(path)
}

/// Where a request goes.
pub(crate) struct Resolved<'a> {
    pub(crate) tenant: Arc<relay_store::Tenant>,
    pub(crate) target: String,
    pub(crate) path: &'a str,
}

/// Resolves tenant, target and path: a tenant hostname first, then the wildcard base domain
/// (`{target}.{tenant}.{base}`), then `/relay/{tenant}/{target}/{path}`. One parse result feeds
/// both authorisation and routing.
pub(crate) fn resolve<'a>(
    relay: &Relay,
    parts: &'a http::request::Parts,
    sni: Option<&str>,
) -> Result<Resolved<'a>, ProxyError> {
    let host = request_host(&parts.headers, &parts.uri, parts.version)?;
    if let (Some(sni), Some(host)) = (sni, host.as_deref()) {
        // Domain fronting / connection coalescing onto another tenant's name.
        if sni != host {
            return Err(ProxyError::Misdirected);
        }
    }
    let path = parts.uri.path();
    if let Some(host) = host.as_deref() {
        if let Some(found) = relay.catalog.hostname(host) {
            let (tenant, target) = found.ok_or(ProxyError::UnknownTenant)?;
            return Ok(Resolved {
                tenant,
                target,
                path: checked_path(path).ok_or(ProxyError::MalformedRoute)?,
            });
        }
        let below_base = relay
            .config
            .base_domain
            .as_deref()
            .and_then(|base| host.strip_suffix(base))
            .and_then(|p| p.strip_suffix('.'));
        if let Some(prefix) = below_base {
            let (target, tenant) = prefix.split_once('.').ok_or(ProxyError::NotFound)?;
            let target = relay_store::validate_name(target).map_err(|_| ProxyError::NotFound)?;
            let tenant = relay_store::canonical_name(tenant).map_err(|_| ProxyError::NotFound)?;
            let tenant = relay
                .catalog
                .enabled_tenant(&tenant)
                .ok_or(ProxyError::UnknownTenant)?;
            return Ok(Resolved {
                tenant,
                target,
                path: checked_path(path).ok_or(ProxyError::MalformedRoute)?,
            });
        }
    }
    let route = parse(path).map_err(|e| match e {
        RouteError::NotRelay => ProxyError::NotFound,
        RouteError::Malformed => ProxyError::MalformedRoute,
    })?;
    let tenant = relay
        .catalog
        .enabled_tenant(&route.tenant)
        .ok_or(ProxyError::UnknownTenant)?;
    Ok(Resolved {
        tenant,
        target: route.target,
        path: route.path,
    })
}

/// Whether the request is addressed to a tenant's own hostname (registered, or under the wildcard
/// base domain): its whole path then belongs to the backend.
pub(crate) fn tenant_host(
    relay: &Relay,
    headers: &http::HeaderMap,
    uri: &http::Uri,
    version: http::Version,
) -> bool {
    let Ok(Some(host)) = request_host(headers, uri, version) else {
        return false;
    };
    relay.catalog.hostname(&host).is_some()
        || relay
            .config
            .base_domain
            .as_deref()
            .and_then(|base| host.strip_suffix(base))
            .is_some_and(|p| p.ends_with('.'))
}

/// The request's host, canonical (lowercase, no port, no trailing dot), from the URI authority
/// (HTTP/2, absolute form) or `Host`; both present and different is a bad request. Borrowed when
/// it is canonical as sent.
pub(crate) fn request_host<'a>(
    headers: &'a http::HeaderMap,
    uri: &'a http::Uri,
    version: http::Version,
) -> Result<Option<Cow<'a, str>>, ProxyError> {
    let authority = uri.authority().map(|a| canonical_host(a.as_str()));
    let mut hosts = headers.get_all(header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadHost),
        (Some(h), None) => Some(canonical_host(h.to_str().map_err(|_| ProxyError::BadHost)?)),
        (None, _) => None,
    };
    match (authority, header) {
        (Some(a), Some(h)) if a != h => Err(ProxyError::BadHost),
        (Some(a), _) => Ok(Some(a)),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is a bad request.
        (None, None) if version == http::Version::HTTP_11 => Err(ProxyError::BadHost),
        (None, h) => Ok(h),
    }
}

/// Lowercase, port and one trailing dot removed (`[::1]:443` → `[::1]`).
fn canonical_host(raw: &str) -> Cow<'_, str> {
    // Cut first, then lowercase into the one string returned (':', ']' and '.' have no case),
    // if there is any uppercase letter at all.
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(host, _port)| host)
    };
    relay_store::ascii_lowercase(host.strip_suffix('.').unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_canonicalised() {
        assert_eq!(canonical_host("App.Example.COM."), "app.example.com");
        assert_eq!(canonical_host("app.example.com:8443"), "app.example.com");
        assert_eq!(canonical_host("app.example.com.:443"), "app.example.com");
        assert_eq!(canonical_host("[::1]:443"), "[::1]");
        assert_eq!(canonical_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(canonical_host(" [::1"), "[::1");
        assert_eq!(canonical_host("[2001:DB8::1]"), "[2001:db8::1]");
        assert_eq!(canonical_host("Example.com"), "example.com");
    }

    fn host_of(parts: &http::request::Parts) -> Result<Option<String>, ProxyError> {
        request_host(&parts.headers, &parts.uri, parts.version).map(|h| h.map(Cow::into_owned))
    }

    #[test]
    fn host_and_authority_must_agree() {
        let req = |uri: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().uri(uri);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            host_of(&req("/x", &["A.example:80"])).unwrap().as_deref(),
            Some("a.example")
        );
        assert_eq!(
            host_of(&req("https://a.example/x", &[]))
                .unwrap()
                .as_deref(),
            Some("a.example")
        );
        assert!(host_of(&req("https://a.example/x", &["a.example"])).is_ok());
        assert!(host_of(&req("https://a.example/x", &["b.example"])).is_err());
        assert!(host_of(&req("/x", &["a.example", "b.example"])).is_err());
    }

    #[test]
    fn parses_tenant_target_and_path() {
        let r = parse("/relay/Demo/Echo/a/b%2Fc").unwrap();
        assert_eq!(
            (&*r.tenant, r.target.as_str(), r.path),
            ("demo", "echo", "/a/b%2Fc")
        );
        assert_eq!(parse("/relay/demo/echo").unwrap().path, "/");
        assert_eq!(parse("/relay/demo/echo/").unwrap().path, "/");
        assert_eq!(parse("/relay/demo/echo/x/../y").unwrap().path, "/x/../y");
    }

    #[test]
    fn rejects_paths_outside_relay() {
        assert_eq!(parse("/"), Err(RouteError::NotRelay));
        assert_eq!(parse("/relay"), Err(RouteError::NotRelay));
        assert_eq!(parse("/admin"), Err(RouteError::NotRelay));
    }

    #[test]
    fn rejects_malformed_segments_and_traversal() {
        for bad in [
            "/relay/",
            "/relay/a",
            "/relay//app/x",
            "/relay/a//x",
            "/relay/a%2Fb/app/x",
            "/relay/a/..%2fb/x",
            "/relay/%2e%2e/app/x",
            "/relay/a\\b/app/",
            "/relay/a/app%00/",
            "/relay/a/app/../../b/app/x",
            "/relay/a/app/..",
            "/relay/a/app/%2e%2e/x",
            "/relay/a/app/x/.%2E/%2e./y",
            "/relay/a/app/..%2fsecret",
            "/relay/a/app/x/..%5c..%5csecret",
            "/relay/a/app/..\\secret",
            "/relay/a/app/%252e%252e/secret",
            "/relay/a/app/..;/secret",
        ] {
            assert_eq!(parse(bad), Err(RouteError::Malformed), "{bad}");
        }
    }
}
