//! Egress: which addresses the mirror connects to on an upstream's word. A redirect's
//! `Location` and a token realm come from upstream answers; followed blindly they would let
//! an upstream (or whoever controls a redirect) make the mirror fetch from loopback, the
//! private network or a cloud metadata service (169.254.169.254) and stream the answer back.
//! Such targets are refused unless the operator named them: the route's own upstream host,
//! a `resolve:` pin, or an exact entry in `redirects.follow`. The check is made on the address
//! actually connected to (after resolution), so a name that re-resolves inward is caught too.

use std::net::IpAddr;

/// Whether an address is not on the public internet: loopback, private (RFC 1918, fc00::/7),
/// link-local (169.254/16, fe80::/10), shared (100.64/10), unspecified, broadcast,
/// documentation or multicast. IPv4-mapped IPv6 addresses are judged as their IPv4.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::is_internal;

    #[test]
    fn internal_and_public_addresses() {
        for internal in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "1.1.1.1",
            "104.16.0.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
