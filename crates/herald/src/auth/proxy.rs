//! Who the client really is behind a load balancer (DESIGN §11). Only when the TCP peer
//! is one of `trusted_proxies` are `Forwarded` (RFC 7239) or `X-Forwarded-For` /
//! `-Proto` / `-Host` believed; anyone else could write them. The client address is the
//! right-most hop of the chain that is not itself a trusted proxy (the left part of the
//! chain is whatever the client chose to send).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

/// An address block: `10.0.0.0/8`, `::1/128`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("prefix length `{b}` must be 0 to {max}"))?,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

/// `::ffff:10.0.0.1` is `10.0.0.1` (dual-stack listeners report v4 peers that way).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// The parsed `trusted_proxies` list.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Entries that do not parse are skipped (config validation reports them).
    pub fn new(list: &[String]) -> TrustedProxies {
        TrustedProxies(list.iter().filter_map(|s| Cidr::parse(s).ok()).collect())
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client as the request describes it, believing forwarded headers only from
    /// a trusted peer. `tls` is whether our own listener speaks TLS.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap, tls: bool) -> Client {
        let direct = Client {
            ip: canonical(peer.ip()),
            tls,
            host: None,
        };
        if !self.trusts(peer.ip()) {
            return direct;
        }
        let hops = forwarded_hops(headers);
        if hops.is_empty() {
            return direct;
        }
        // Walk from the hop nearest to us; the first one we do not trust is the client.
        let mut ip = direct.ip;
        for hop in hops.iter().rev() {
            let Some(addr) = hop.for_ip else { break };
            ip = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        let first = hops.first();
        Client {
            ip,
            tls: first.and_then(|h| h.proto.as_deref()).map_or(tls, |p| {
                p.eq_ignore_ascii_case("https") || p.eq_ignore_ascii_case("wss")
            }),
            host: first.and_then(|h| h.host.clone()),
        }
    }
}

/// What we know about the party at the other end of the proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The scheme the client used was https/wss.
    pub tls: bool,
    /// The Host the client addressed, when a trusted proxy said so.
    pub host: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Hop {
    for_ip: Option<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

/// The hops of `Forwarded`, or else of `X-Forwarded-For` (with `-Proto` and `-Host`
/// applied to the first hop), client first.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
    let joined = |name: &str| -> Option<String> {
        let parts: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(","))
    };
    if let Some(f) = joined("forwarded") {
        return f.split(',').map(parse_forwarded_element).collect();
    }
    let Some(xff) = joined("x-forwarded-for") else {
        return Vec::new();
    };
    let mut hops: Vec<Hop> = xff
        .split(',')
        .map(|a| Hop {
            for_ip: parse_node(a),
            ..Hop::default()
        })
        .collect();
    if let Some(first) = hops.first_mut() {
        let first_value = |name: &str| {
            joined(name).and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
        };
        first.proto = first_value("x-forwarded-proto");
        first.host = first_value("x-forwarded-host").filter(|h| !h.is_empty());
    }
    hops
}

/// One `for=…;proto=…;host=…` element of `Forwarded`.
fn parse_forwarded_element(element: &str) -> Hop {
    let mut hop = Hop::default();
    for pair in element.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => hop.for_ip = parse_node(v),
            "proto" => hop.proto = Some(v.to_owned()),
            "host" if !v.is_empty() => hop.host = Some(v.to_owned()),
            _ => {}
        }
    }
    hop
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]:4711`, `2001:db8::1`; `unknown` and
/// obfuscated identifiers are not addresses.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/12")
            .unwrap()
            .contains("10.15.0.1".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/12")
            .unwrap()
            .contains("10.16.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn forwarded_headers_only_from_a_trusted_peer() {
        let t = TrustedProxies::new(&["10.0.0.0/8".to_owned()]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example"),
        ]);
        let via_lb = t.client("10.0.0.1:5000".parse().unwrap(), &h, false);
        assert_eq!(via_lb.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(via_lb.tls);
        assert_eq!(via_lb.host.as_deref(), Some("app.example"));
        let direct = t.client("198.51.100.1:5000".parse().unwrap(), &h, false);
        assert_eq!(direct.ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert!(
            !direct.tls && direct.host.is_none(),
            "an untrusted peer is not believed"
        );
    }

    #[test]
    fn a_spoofed_left_part_of_the_chain_is_ignored() {
        let t = TrustedProxies::new(&["10.0.0.1".to_owned()]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9")]);
        let c = t.client("10.0.0.1:1".parse().unwrap(), &h, false);
        assert_eq!(c.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rfc7239_forwarded() {
        let t = TrustedProxies::new(&["127.0.0.1".to_owned()]);
        let h = headers(&[(
            "forwarded",
            r#"for="[2001:db8::17]:4711";proto=https;host=app.example"#,
        )]);
        let c = t.client("127.0.0.1:9".parse().unwrap(), &h, false);
        assert_eq!(c.ip, "2001:db8::17".parse::<IpAddr>().unwrap());
        assert!(c.tls);
        assert_eq!(c.host.as_deref(), Some("app.example"));
        let unknown = headers(&[("forwarded", "for=unknown")]);
        let c = t.client("127.0.0.1:9".parse().unwrap(), &unknown, true);
        assert_eq!(c.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(c.tls);
    }
}
