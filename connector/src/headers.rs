//! Hop-by-hop header removal (RFC 9110 §7.6.1), used on both sides of the tunnel.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never the message (every `Proxy-*` field is removed
/// too, below: they are for a proxy on the way, never for the backend).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`. `TE: trailers` is the one
/// `TE` value that survives: gRPC requires it end to end, and it only says trailers are welcome.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // Every `Proxy-*` field is for a proxy on the way, not for the next hop's application.
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// The `Upgrade` value when a message asks to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` field), read before hop-by-hop stripping removes both.
pub fn upgrade_of(headers: &HeaderMap) -> Option<http::HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts the upgrade request back after stripping (`Connection: upgrade`, `Upgrade: value`).
pub fn restore_upgrade(headers: &mut HeaderMap, value: http::HeaderValue) {
    headers.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    headers.insert(header::UPGRADE, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_standard_and_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("proxy-status", "x".parse().unwrap());
        h.insert("proxy-anything", "x".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
        let mut h = HeaderMap::new();
        h.insert("te", "gzip, trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        h.insert("te", "gzip".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn upgrade_needs_both_fields() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        assert_eq!(upgrade_of(&h), None);
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
        restore_upgrade(&mut h, "websocket".parse().unwrap());
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
    }
}
