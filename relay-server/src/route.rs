//! Parsing the visitor path `/relay/{tenant}/{target}/{path}`. Tenant and target come from the
//! raw (still percent-encoded) segments and are never decoded: one parse result feeds both
//! authorisation and routing.

/// A parsed relay route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route<'a> {
    /// Canonical tenant name.
    pub(crate) tenant: String,
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
    let rest = path.strip_prefix("/relay/").ok_or(RouteError::NotRelay)?;
    let (tenant, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let (target, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let tenant = relay_store::validate_name(tenant).map_err(|_| RouteError::Malformed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tenant_target_and_path() {
        let r = parse("/relay/Demo/Echo/a/b%2Fc").unwrap();
        assert_eq!(
            (r.tenant.as_str(), r.target.as_str(), r.path),
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
