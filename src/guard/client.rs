//! Who the client is: its address, and the scheme it used, believing `X-Forwarded-For` and
//! `X-Forwarded-Proto` only from trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// The client as the mirror sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// `Some(true)` when a trusted proxy said the client used https.
    pub forwarded_https: Option<bool>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer`: the rightmost `X-Forwarded-For` address that is not a
    /// trusted proxy, when `peer` is trusted; otherwise `peer` itself.
    pub fn client(
        &self,
        peer: IpAddr,
        forwarded_for: Option<&str>,
        forwarded_proto: Option<&str>,
    ) -> ClientInfo {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return ClientInfo {
                ip: peer,
                forwarded_https: None,
            };
        }
        let mut ip = peer;
        if let Some(chain) = forwarded_for {
            for hop in chain.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(addr) => {
                        ip = canonical(addr);
                        if !self.trusts(ip) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        let forwarded_https = forwarded_proto
            .and_then(|p| p.split(',').next())
            .map(|p| p.trim().eq_ignore_ascii_case("https"));
        ClientInfo {
            ip,
            forwarded_https,
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `::ffff:10.0.0.1` matches `10.0.0.0/8`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let t = TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ]);
        let c = t.client(ip("10.1.2.3"), Some("203.0.113.9, 10.9.9.9"), Some("https"));
        assert_eq!(
            c,
            ClientInfo {
                ip: ip("203.0.113.9"),
                forwarded_https: Some(true)
            }
        );
        // A client cannot claim another address through an untrusted peer.
        let c = t.client(ip("198.51.100.1"), Some("203.0.113.9"), Some("https"));
        assert_eq!(
            c,
            ClientInfo {
                ip: ip("198.51.100.1"),
                forwarded_https: None
            }
        );
        // Spoofed entries left of the first untrusted hop are ignored.
        let c = t.client(ip("10.1.2.3"), Some("1.1.1.1, 198.51.100.7"), None);
        assert_eq!(c.ip, ip("198.51.100.7"));
        // Garbage stops the walk at the last good address.
        let c = t.client(ip("127.0.0.1"), Some("nonsense"), Some("http"));
        assert_eq!(
            c,
            ClientInfo {
                ip: ip("127.0.0.1"),
                forwarded_https: Some(false)
            }
        );
        assert!(t.trusts(ip("::ffff:10.0.0.1")));
        assert!(!TrustedProxies::default().trusts(ip("127.0.0.1")));
    }
}
