//! `TtlPolicy`: how long a cached response is fresh, and what may be kept at all.

use std::time::Duration;

use crate::registry::V2Path;

/// Content by digest never changes: a year, never revalidated in practice.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a stale tag may still be served when the upstream fails (`cache.stale_for`).
pub const DEFAULT_STALE_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Freshness lifetimes from the config.
#[derive(Debug, Clone, Copy)]
pub struct TtlPolicy {
    pub tag_ttl: Duration,
    pub stale_for: Duration,
}

impl TtlPolicy {
    /// How long a response to `path` is fresh.
    pub fn fresh_for(&self, path: &V2Path) -> Duration {
        match path {
            V2Path::Manifest { reference, .. } if !reference.is_digest() => self.tag_ttl,
            _ => IMMUTABLE_TTL,
        }
    }

    /// How long past freshness it may be served when the upstream fails.
    pub fn stale_if_error(&self, path: &V2Path) -> Duration {
        match path {
            V2Path::Manifest { reference, .. } if !reference.is_digest() => self.stale_for,
            _ => Duration::ZERO,
        }
    }
}

/// Only complete answers are kept: never a redirect to storage, a 401, a 404 or a 206.
pub fn admits(status: u16) -> bool {
    status == 200
}

/// Whether the path names a mutable tag (refreshed after `tag_ttl`).
pub fn is_tag(path: &V2Path) -> bool {
    matches!(path, V2Path::Manifest { reference, .. } if !reference.is_digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        let p = TtlPolicy {
            tag_ttl: Duration::from_secs(600),
            stale_for: DEFAULT_STALE_FOR,
        };
        let tag: V2Path = "/v2/a/manifests/latest".parse().unwrap();
        let digest: V2Path = format!("/v2/a/blobs/sha256:{}", "a".repeat(64))
            .parse()
            .unwrap();
        assert_eq!(p.fresh_for(&tag), Duration::from_secs(600));
        assert_eq!(p.fresh_for(&digest), IMMUTABLE_TTL);
        assert_eq!(p.stale_if_error(&digest), Duration::ZERO);
        assert!(is_tag(&tag) && !is_tag(&digest));
        assert!(admits(200) && !admits(307) && !admits(401) && !admits(404) && !admits(206));
    }
}
