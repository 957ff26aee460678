//! `--source-addrs K`: which local address each client connects from.
//!
//! A TCP connection is told apart by its four-tuple, and all bench clients share three of
//! the four (source address, server address and port): on one source address they run out
//! of ephemeral ports (`net.ipv4.ip_local_port_range`, ~28k by default) well before the
//! server runs out of anything. Every address of 127.0.0.0/8 is the loopback interface on
//! Linux, so client `i` binds to `127.0.0.(1 + i % K)` before connecting and each of the K
//! addresses brings its own range of ports. (It also spreads the clients over K addresses
//! for the server's `limits.connections_per_ip`.) It only makes sense for a server on an
//! IPv4 loopback address: a 127.0.0.x socket cannot reach anything else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The most source addresses: 127.0.0.1 to 127.0.0.254 (.255 is the subnet's broadcast
/// address in the usual /8 reading, and .0 its network address).
pub const MAX_SOURCE_ADDRS: u32 = 254;

/// `--source-addrs`: 1 to [`MAX_SOURCE_ADDRS`], with a message that says why.
pub fn parse_source_addrs(s: &str) -> Result<u32, String> {
    let k: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of source addresses"))?;
    if k == 0 || k > MAX_SOURCE_ADDRS {
        return Err(format!(
            "{k} is out of range: client i binds to 127.0.0.(1 + i % K), so K is 1 to \
             {MAX_SOURCE_ADDRS}"
        ));
    }
    Ok(k)
}

/// The address client `i` binds to before connecting, out of `k`: none for `k = 1`, where
/// the kernel picks (and the server may be anywhere).
pub fn source_ip(i: usize, k: u32) -> Option<IpAddr> {
    if k <= 1 {
        return None;
    }
    // k ≤ 254, so the remainder fits a u8 and 1 + it ≤ 254.
    let host = u8::try_from(i % k as usize).ok()?.checked_add(1)?;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

/// Refuses `--source-addrs K > 1` for a server that a 127.0.0.x socket cannot reach.
pub fn check_reachable(k: u32, server: SocketAddr) -> Result<(), String> {
    if k <= 1 {
        return Ok(());
    }
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(()),
        IpAddr::V6(ip) if ip.is_loopback() => Err(format!(
            "--source-addrs {k} binds clients to 127.0.0.x, which cannot reach {server} \
             (IPv6): give the server's IPv4 loopback address, e.g. http://127.0.0.1:{}",
            server.port()
        )),
        _ => Err(format!(
            "--source-addrs {k} binds clients to 127.0.0.x, which only reaches a server on \
             loopback; {server} is not (leave --source-addrs at 1 for a remote server)"
        )),
    }
}

/// The fewest source addresses that leave every address at most `ports` clients (the
/// size of the ephemeral port range), for a hint when `--source-addrs` is too low.
pub fn addrs_needed(clients: u64, ports: u64) -> u64 {
    clients.div_ceil(ports.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_spread_round_robin_over_k_addresses() {
        assert_eq!(source_ip(0, 1), None);
        assert_eq!(source_ip(5, 1), None);
        let ip = |d| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)));
        assert_eq!(source_ip(0, 4), ip(1));
        assert_eq!(source_ip(1, 4), ip(2));
        assert_eq!(source_ip(3, 4), ip(4));
        assert_eq!(source_ip(4, 4), ip(1));
        assert_eq!(source_ip(253, 254), ip(254));
        assert_eq!(source_ip(254, 254), ip(1));
        assert_eq!(source_ip(usize::MAX, 254), ip(1 + (usize::MAX % 254) as u8));
        let used: std::collections::BTreeSet<_> = (0..1000).map(|i| source_ip(i, 7)).collect();
        assert_eq!(used.len(), 7);
    }

    #[test]
    fn k_is_1_to_254() {
        assert_eq!(parse_source_addrs("1"), Ok(1));
        assert_eq!(parse_source_addrs("254"), Ok(254));
        for bad in ["0", "255", "1000", "-1", "x", ""] {
            assert!(parse_source_addrs(bad).is_err(), "{bad}");
        }
        assert!(parse_source_addrs("255").unwrap_err().contains("1 to 254"));
    }

    #[test]
    fn only_a_loopback_v4_server_is_reachable_from_many_sources() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(check_reachable(4, at("127.0.0.1:8080")), Ok(()));
        assert_eq!(check_reachable(4, at("127.1.2.3:8080")), Ok(()));
        assert_eq!(check_reachable(1, at("10.0.0.1:8080")), Ok(()));
        assert_eq!(check_reachable(1, at("[::1]:8080")), Ok(()));
        assert!(check_reachable(2, at("10.0.0.1:8080"))
            .unwrap_err()
            .contains("loopback"));
        assert!(check_reachable(2, at("[::1]:8080"))
            .unwrap_err()
            .contains("127.0.0.1:8080"));
    }

    #[test]
    fn addresses_needed_round_up() {
        assert_eq!(addrs_needed(28_232, 28_232), 1);
        assert_eq!(addrs_needed(28_233, 28_232), 2);
        assert_eq!(addrs_needed(100_000, 28_232), 4);
        assert_eq!(addrs_needed(5, 0), 5);
    }
}
