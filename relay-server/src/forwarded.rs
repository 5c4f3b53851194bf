//! Trusted proxies: when the relay runs behind a load balancer, the forwarding headers that
//! balancer sets are kept (and extended) instead of being overwritten from the TCP peer.
//!
//! Only a peer inside `[routing] trusted_proxies` is believed; everyone else's `X-Forwarded-*`
//! is replaced. The visitor address (audit log) is the rightmost `X-Forwarded-For` entry that is
//! not itself a trusted proxy — the leftmost entries are whatever the client claimed. The same
//! hops also make the RFC 7239 `Forwarded` header ([`header`]).

use std::net::IpAddr;

/// An address block, `10.0.0.0/8`, `2001:db8::/32` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// `ADDR/PREFIX`, as [`Cidr::parse`] reads it (`relay-server config check` prints it).
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is a trusted proxy.
pub fn trusted(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// The `X-Forwarded-For` entries (all header lines, comma-separated), in order.
pub fn chain(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// The visitor behind a trusted `peer`: the rightmost chain entry that is not a trusted proxy
/// (an unparsable entry ends the walk: nothing left of it can be believed).
pub fn client(list: &[Cidr], peer: IpAddr, chain: &[String]) -> IpAddr {
    let mut client = peer;
    if !trusted(list, peer) {
        return client;
    }
    for entry in chain.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(list, ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// RFC 7239 `Forwarded`: one element per hop of `chain` (the same hops as `X-Forwarded-For`),
/// the last one with the protocol and host the relay (or its trusted proxy) was reached by.
pub fn header(chain: &[String], proto: &str, host: Option<&str>) -> String {
    use std::fmt::Write as _;
    // Written into one string: this runs for every request.
    let mut out = String::with_capacity(48 + host.map_or(0, str::len));
    let quoted = |out: &mut String, s: &str| {
        out.push('"');
        if s.contains(['"', '\\']) {
            out.extend(s.chars().filter(|c| !matches!(c, '"' | '\\')));
        } else {
            // Nearly always (a host): copied whole rather than char by char.
            out.push_str(s);
        }
        out.push('"');
    };
    for (i, addr) in chain.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let addr = addr.as_str();
        out.push_str("for=");
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => {
                let _ = write!(out, "\"[{v6}]\"");
            }
            // A parsed IPv4 address is written as it came: Rust's parser takes only the
            // canonical dotted form, so formatting it again would give the same text.
            Ok(IpAddr::V4(_)) => out.push_str(addr),
            // Anything else from a trusted proxy's chain (obfuscated ids, "unknown") is quoted.
            Err(_) => quoted(&mut out, addr),
        }
    }
    if !chain.is_empty() {
        out.push_str(";proto=");
        out.push_str(proto);
        if let Some(h) = host {
            out.push_str(";host=");
            quoted(&mut out, h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_names_every_hop_and_the_last_protocol_and_host() {
        assert_eq!(
            header(&["192.0.2.1".into()], "https", Some("relay.example:8443")),
            "for=192.0.2.1;proto=https;host=\"relay.example:8443\""
        );
        assert_eq!(
            header(&["2001:db8::1".into(), "10.0.0.2".into()], "http", None),
            "for=\"[2001:db8::1]\", for=10.0.0.2;proto=http"
        );
        // Only the canonical IPv4 form parses; anything else is quoted as it came.
        assert_eq!(
            header(&["010.0.0.1".into(), "10.0.0.1".into()], "http", None),
            "for=\"010.0.0.1\", for=10.0.0.1;proto=http"
        );
        assert_eq!(
            header(&["unknown\"x".into()], "http", Some("a\"b")),
            "for=\"unknownx\";proto=http;host=\"ab\""
        );
    }

    fn list(items: &[&str]) -> Vec<Cidr> {
        items.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    #[test]
    fn blocks_parse_and_match() {
        let l = list(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(trusted(&l, "10.1.2.3".parse().unwrap()));
        assert!(trusted(&l, "::ffff:10.9.9.9".parse().unwrap()));
        assert!(trusted(&l, "192.0.2.7".parse().unwrap()));
        assert!(!trusted(&l, "192.0.2.8".parse().unwrap()));
        assert!(trusted(&l, "2001:db8:1::5".parse().unwrap()));
        assert!(!trusted(&l, "2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry() {
        let l = list(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let c = chain(&["203.0.113.9, 198.51.100.1", "10.0.0.1"]);
        // 198.51.100.1 is the last hop we can vouch for; the spoofable left part is ignored.
        assert_eq!(
            client(&l, peer, &c),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer is the client, whatever it claims.
        let stranger: IpAddr = "198.51.100.77".parse().unwrap();
        assert_eq!(client(&l, stranger, &c), stranger);
        // Garbage stops the walk at the last good hop.
        let c = chain(&["unknown, 10.0.0.1"]);
        assert_eq!(client(&l, peer, &c), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
