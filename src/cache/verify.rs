//! `Verifier`: checks a body against the digest and length its response promised, hashing as
//! bytes arrive (never a whole body in memory).

use pingora::cache::CacheMeta;
use sha2::{Digest as _, Sha256, Sha512};

use crate::registry::reference::DigestAlgorithm;
use crate::registry::Digest;

/// The header that names a body's digest; the proxy sets it from the URL for blobs and
/// manifests by digest, so what is stored is always checked.
pub const DIGEST_HEADER: &str = "docker-content-digest";

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Accumulates a body and judges it at the end.
pub struct Verifier {
    expected: Option<Digest>,
    expected_len: Option<u64>,
    hasher: Option<Hasher>,
}

/// The verdict on a finished body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentCheck {
    Verified,
    /// Nothing was promised: stored as is.
    Unchecked,
    Mismatch {
        expected: String,
        actual: String,
    },
}

impl Verifier {
    pub fn new(expected: Option<Digest>, expected_len: Option<u64>) -> Verifier {
        let hasher = expected.as_ref().map(|d| match d.algorithm() {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        });
        Verifier {
            expected,
            expected_len,
            hasher,
        }
    }

    /// From a response's headers: `Docker-Content-Digest` and `Content-Length`.
    pub fn for_meta(meta: &CacheMeta) -> Verifier {
        let headers = &meta.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let expected = header(DIGEST_HEADER).and_then(|v| v.parse().ok());
        let expected_len = header("content-length").and_then(|v| v.parse().ok());
        Verifier::new(expected, expected_len)
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.hasher {
            Some(Hasher::Sha256(h)) => h.update(data),
            Some(Hasher::Sha512(h)) => h.update(data),
            None => {}
        }
    }

    pub fn check(self, written: u64) -> ContentCheck {
        if let Some(len) = self.expected_len.filter(|l| *l != written) {
            return ContentCheck::Mismatch {
                expected: format!("{len} bytes"),
                actual: format!("{written} bytes"),
            };
        }
        let (Some(expected), Some(hasher)) = (self.expected, self.hasher) else {
            return ContentCheck::Unchecked;
        };
        let actual = match hasher {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        if actual == expected.to_string() {
            ContentCheck::Verified
        } else {
            ContentCheck::Mismatch {
                expected: expected.to_string(),
                actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn verdicts() {
        let v = Verifier::new(Some(EMPTY.parse().unwrap()), Some(0));
        assert_eq!(v.check(0), ContentCheck::Verified);
        let mut v = Verifier::new(Some(EMPTY.parse().unwrap()), None);
        v.update(b"x");
        assert!(matches!(v.check(1), ContentCheck::Mismatch { .. }));
        let v = Verifier::new(None, Some(10));
        assert!(matches!(v.check(9), ContentCheck::Mismatch { .. }));
        assert_eq!(Verifier::new(None, None).check(5), ContentCheck::Unchecked);
    }
}
