//! Requests between nodes carry `X-Pullthrough-Peer: node=<addr>;t=<unix seconds>;sig=<hex>`,
//! an HMAC-SHA256 under the cluster's shared secret over the method, the path and query, the
//! time and the sending node. A peer listener answers anything without a good one with 403:
//! a client cannot claim to be a peer, and a signature is good only for its own request and
//! for `MAX_SKEW` around its time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a node signs its requests to a peer with.
pub const PEER_HEADER: &str = "x-pullthrough-peer";
/// Keeps sealed values apart from request signatures under the same secret.
const SEAL_DOMAIN: &[u8] = b"pullthrough shared state";
/// How far a signature's time may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Why a peer request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSignature {
    Missing,
    Malformed,
    /// Outside `MAX_SKEW` of this node's clock.
    Expired,
    Wrong,
}

impl std::fmt::Display for BadSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadSignature::Missing => "no peer signature",
            BadSignature::Malformed => "malformed peer signature",
            BadSignature::Expired => "peer signature outside the allowed clock skew",
            BadSignature::Wrong => "wrong peer signature",
        })
    }
}

/// Signs and checks peer requests with the cluster's secret.
pub struct Signer {
    secret: Vec<u8>,
}

impl Signer {
    pub fn new(secret: Vec<u8>) -> Signer {
        Signer { secret }
    }

    /// HMAC-SHA256 of length-prefixed parts under the secret.
    fn mac_of(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key");
        for part in parts {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        mac
    }

    fn mac(&self, method: &str, path: &str, time: u64, node: &str) -> Hmac<Sha256> {
        self.mac_of(&[
            method.as_bytes(),
            path.as_bytes(),
            &time.to_le_bytes(),
            node.as_bytes(),
        ])
    }

    /// `value` sealed for storage under `key` in shared state (`store`): `<hex sig> <value>`.
    /// Whoever can write to Redis but lacks the secret cannot plant a value a node accepts,
    /// nor move one to another key.
    pub fn seal(&self, key: &str, value: &str) -> String {
        let sig = self
            .mac_of(&[SEAL_DOMAIN, key.as_bytes(), value.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{} {value}", hex::encode(sig))
    }

    /// The value `seal` sealed under `key`, if its seal is good.
    pub fn unseal<'a>(&self, key: &str, sealed: &'a str) -> Option<&'a str> {
        let (sig, value) = sealed.split_once(' ')?;
        self.mac_of(&[SEAL_DOMAIN, key.as_bytes(), value.as_bytes()])
            .verify_slice(&hex::decode(sig).ok()?)
            .ok()?;
        Some(value)
    }

    /// The header value for a request `node` sends to a peer at `now`.
    pub fn sign(&self, method: &str, path: &str, node: &str, now: SystemTime) -> String {
        let time = unix(now);
        let sig = self.mac(method, path, time, node).finalize().into_bytes();
        format!("node={node};t={time};sig={}", hex::encode(sig))
    }

    /// Checks a request's header value at `now`; the signing node's address when good.
    pub fn verify<'a>(
        &self,
        method: &str,
        path: &str,
        value: Option<&'a str>,
        now: SystemTime,
    ) -> Result<&'a str, BadSignature> {
        let value = value.ok_or(BadSignature::Missing)?;
        let (mut node, mut time, mut sig) = (None, None, None);
        for part in value.split(';') {
            match part.trim().split_once('=') {
                Some(("node", v)) => node = Some(v),
                Some(("t", v)) => time = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = hex::decode(v).ok(),
                _ => return Err(BadSignature::Malformed),
            }
        }
        let (Some(node), Some(time), Some(sig)) = (node, time, sig) else {
            return Err(BadSignature::Malformed);
        };
        if unix(now).abs_diff(time) > MAX_SKEW.as_secs() {
            return Err(BadSignature::Expired);
        }
        self.mac(method, path, time, node)
            .verify_slice(&sig)
            .map_err(|_| BadSignature::Wrong)?;
        Ok(node)
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "10.0.0.1:9000";

    #[test]
    fn a_signature_is_good_for_its_own_request_only() {
        let s = Signer::new(b"secret".to_vec());
        let now = SystemTime::now();
        let path = "/v2/library/a/blobs/sha256:00";
        let v = s.sign("GET", path, NODE, now);
        assert_eq!(s.verify("GET", path, Some(&v), now), Ok(NODE));
        assert_eq!(
            s.verify("HEAD", path, Some(&v), now),
            Err(BadSignature::Wrong)
        );
        assert_eq!(
            s.verify("GET", "/v2/library/b/blobs/sha256:00", Some(&v), now),
            Err(BadSignature::Wrong)
        );
        let other = Signer::new(b"other".to_vec());
        assert_eq!(
            other.verify("GET", path, Some(&v), now),
            Err(BadSignature::Wrong)
        );
        let forged = v.replace(NODE, "10.0.0.2:9000");
        assert_eq!(
            s.verify("GET", path, Some(&forged), now),
            Err(BadSignature::Wrong)
        );
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_secret() {
        let s = Signer::new(b"secret".to_vec());
        let sealed = s.seal("tag:ab", "sha256:00 1");
        assert_eq!(s.unseal("tag:ab", &sealed), Some("sha256:00 1"));
        assert_eq!(s.unseal("tag:cd", &sealed), None, "moved to another key");
        assert_eq!(
            Signer::new(b"other".to_vec()).unseal("tag:ab", &sealed),
            None
        );
        let tampered = sealed.replace("sha256:00", "sha256:01");
        assert_eq!(s.unseal("tag:ab", &tampered), None);
        for bad in ["", "zz x", "nospace"] {
            assert_eq!(s.unseal("tag:ab", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn old_missing_and_malformed_signatures_are_refused() {
        let s = Signer::new(b"secret".to_vec());
        let now = SystemTime::now();
        let v = s.sign("GET", "/p", NODE, now - MAX_SKEW - Duration::from_secs(2));
        assert_eq!(
            s.verify("GET", "/p", Some(&v), now),
            Err(BadSignature::Expired)
        );
        assert_eq!(s.verify("GET", "/p", None, now), Err(BadSignature::Missing));
        for bad in [
            "",
            "node=x",
            "node=x;t=1;sig=zz",
            "a=b;c",
            "node=x;t=;sig=00",
        ] {
            assert_eq!(
                s.verify("GET", "/p", Some(bad), now),
                Err(BadSignature::Malformed),
                "{bad:?}"
            );
        }
    }
}
