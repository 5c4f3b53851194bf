//! Hop-by-hop header removal (RFC 9110 §7.6.1), used on both sides of the tunnel.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, never the message (every `Proxy-*` field is removed
/// too, below: they are for a proxy on the way, never for the backend).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    // Only ever meaningful with `Upgrade: h2c`, which is never forwarded (RFC 9113 §3.1 of old).
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`. `TE: trailers` is the one
/// `TE` value that survives: gRPC requires it end to end, and it only says trailers are welcome.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass finds what goes; most requests carry none of it, and then nothing is allocated
    // and no lookup is made.
    let mut te_trailers = false;
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if *name == header::CONNECTION {
            let listed = value.to_str().ok().into_iter().flat_map(|v| v.split(','));
            doomed.extend(listed.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
        } else if *name == header::TE {
            te_trailers |= value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        }
        // Every `Proxy-*` field is for a proxy on the way, not for the next hop's application.
        if (HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-"))
            && !doomed.contains(name)
        {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Whether `Connection` lists `option` (`close`, `upgrade`), in any of its fields, any case.
pub fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(option))
}

/// The `Upgrade` value when a message asks to switch protocols (`Connection: upgrade` plus an
/// `Upgrade` field), read before hop-by-hop stripping removes both.
pub fn upgrade_of(headers: &HeaderMap) -> Option<http::HeaderValue> {
    if connection_has(headers, "upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The protocols of an `Upgrade` value (`websocket`, `foo/2`), each as written.
fn protocols(value: &http::HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// A protocol's name without its version, if the entry is well formed (`token[/token]`).
fn protocol_name(entry: &str) -> Option<&str> {
    let (name, version) = match entry.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (entry, None),
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    (token(name) && version.is_none_or(token)).then_some(name)
}

/// Whether a protocol name is `h2c`: HTTP/2 straight to the backend, past everything the relay
/// checks and records. Never forwarded, whatever a target allows.
pub fn is_h2c(name: &str) -> bool {
    name.eq_ignore_ascii_case("h2c")
}

/// The `Upgrade` value reduced to the well-formed protocols `allowed` accepts (by name,
/// case-insensitive, never `h2c`), or `None` when none is left: the request then goes on as an
/// ordinary one (RFC 9110 §7.8 lets a server ignore an upgrade it does not offer).
pub fn allowed_upgrade(
    value: &http::HeaderValue,
    allowed: impl Fn(&str) -> bool,
) -> Option<http::HeaderValue> {
    let kept: Vec<&str> = protocols(value)
        .filter(|p| protocol_name(p).is_some_and(|n| !is_h2c(n) && allowed(n)))
        .collect();
    if kept.is_empty() {
        return None;
    }
    http::HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Whether a backend's `101` names a protocol the request offered (by name, case-insensitive).
pub fn upgrade_answers(offered: &http::HeaderValue, answer: Option<&http::HeaderValue>) -> bool {
    let Some(answer) = answer else {
        return false;
    };
    let mut chosen = protocols(answer).filter_map(protocol_name);
    match (chosen.next(), chosen.next()) {
        (Some(name), None) => protocols(offered)
            .filter_map(protocol_name)
            .any(|o| o.eq_ignore_ascii_case(name)),
        _ => false,
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
    fn upgrades_are_an_allow_list_without_h2c() {
        let websocket_only = |n: &str| n.eq_ignore_ascii_case("websocket");
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        for (offer, kept) in [
            ("websocket", Some("websocket")),
            ("WebSocket", Some("WebSocket")),
            ("h2c", None),
            ("H2C", None),
            ("h2c, websocket", Some("websocket")),
            ("websocket , h2c", Some("websocket")),
            ("h2c/1", None),
            ("foo", None),
            ("web socket", None),
            ("websocket/13", Some("websocket/13")),
            ("", None),
        ] {
            assert_eq!(
                allowed_upgrade(&v(offer), websocket_only),
                kept.map(v),
                "{offer:?}"
            );
        }
        // h2c stays out even when a caller would allow anything.
        assert_eq!(allowed_upgrade(&v("H2c, x"), |_| true), Some(v("x")));
        assert!(upgrade_answers(&v("websocket"), Some(&v("WebSocket"))));
        assert!(!upgrade_answers(&v("websocket"), Some(&v("h2c"))));
        assert!(!upgrade_answers(
            &v("websocket"),
            Some(&v("websocket, h2c"))
        ));
        assert!(!upgrade_answers(&v("websocket"), None));
    }

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

    #[test]
    fn connection_options_are_found_in_any_field_and_case() {
        let mut h = HeaderMap::new();
        assert!(!connection_has(&h, "close"));
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        assert!(!connection_has(&h, "close"));
        h.append(header::CONNECTION, "upgrade, Close".parse().unwrap());
        assert!(connection_has(&h, "close"));
        assert!(connection_has(&h, "keep-alive"));
    }
}
