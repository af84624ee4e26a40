//! Who is connecting: the TCP peer's address, or, when the peer is one of
//! the operator's proxies (`--trusted-proxies`), the address its
//! `X-Forwarded-For` names. A header from any other peer is ignored: a
//! client may write whatever it likes there.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header proxies append the address they heard from to.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// Most `X-Forwarded-For` entries looked at, from the right: a chain of
/// proxies longer than this is not a deployment, and the header is the
/// client's to make long.
const MAX_HOPS: usize = 16;

/// The client's address: walking `X-Forwarded-For` from the right (the
/// entry the nearest proxy added) past every trusted proxy, the first
/// address that is not one; the peer itself when it is not trusted or
/// sent no usable header.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // From the right, without collecting what a client made long.
    let hops = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.rsplit(','));
    let mut client = peer;
    for hop in hops.take(MAX_HOPS) {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // An entry that is no address: the chain cannot be followed
            // past it, so the last proxy that said something usable wins.
            None => break,
        }
    }
    client
}

/// One entry: an address, maybe bracketed or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| {
            hop.parse::<std::net::SocketAddr>()
                .ok()
                .map(|addr| addr.ip())
        })
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}

/// Reads `--trusted-proxies` entries: CIDRs (`10.0.0.0/8`) or single
/// addresses.
pub(crate) fn parse_trusted(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{entry:?} is neither an address nor a CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append(FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let trusted = parse_trusted(&["10.0.0.0/8".into(), "127.0.0.1".into()]).unwrap();
        let forged = headers(&["6.6.6.6"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &forged, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &forged, &trusted), ip("6.6.6.6"));
        assert_eq!(client_ip(ip("127.0.0.1"), &forged, &[]), ip("127.0.0.1"));
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop() {
        let trusted = parse_trusted(&["10.0.0.0/8".into()]).unwrap();
        // The client forged the first entry; the load balancer (10.0.0.2)
        // appended the address it heard from, then the ingress (10.0.0.1).
        let chain = headers(&["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &chain, &trusted),
            ip("198.51.100.7")
        );
        let all_proxies = headers(&["10.0.0.5, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &all_proxies, &trusted),
            ip("10.0.0.5")
        );
        let garbage = headers(&["nonsense, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &garbage, &trusted),
            ip("10.0.0.2")
        );
        let ports = headers(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &ports, &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_long_forged_chain_is_read_only_from_its_end() {
        let trusted = parse_trusted(&["0.0.0.0/0".into()]).unwrap();
        let long = vec!["9.9.9.9"; 10_000].join(",") + ",1.2.3.4";
        let chain = headers(&[long.as_str()]);
        // Every hop is "trusted" here, so the walk ends at MAX_HOPS.
        assert_eq!(client_ip(ip("10.0.0.1"), &chain, &trusted), ip("9.9.9.9"));
    }

    #[test]
    fn bad_entries_are_named() {
        assert!(parse_trusted(&["10.0.0.0/33".into()])
            .unwrap_err()
            .contains("10.0.0.0/33"));
        assert_eq!(parse_trusted(&["::1".into()]).unwrap().len(), 1);
    }
}
