//! What to do with an upstream redirect: follow it inside the mirror or hand it to the client.
//!
//! Hosts are matched exactly or on a label boundary, never by substring:
//! `.docker.com` matches `docker.com` and `production.cloudflare.docker.com` but not
//! `evildocker.com` or `docker.com.evil.test` (go-docker-proxy's `strings.Contains` bug).

use std::fmt;

use serde::Deserialize;

/// A host pattern: `.example.com` (the domain and every name under it) or `host.example.com`
/// (that name only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase, without the leading dot.
    domain: String,
    subdomains: bool,
}

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid host pattern {0:?}: expected a name like \"host.example.com\" or \".example.com\""
)]
pub struct HostPatternError(String);

impl std::str::FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (subdomains, domain) = match s.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(HostPattern { domain, subdomains })
        } else {
            Err(HostPatternError(s.to_owned()))
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str(".")?;
        }
        f.write_str(&self.domain)
    }
}

impl HostPattern {
    /// Whether `host` (any case, optional trailing dot) is matched.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        if host.eq_ignore_ascii_case(&self.domain) {
            return true;
        }
        if !self.subdomains || host.len() <= self.domain.len() {
            return false;
        }
        let split = host.len() - self.domain.len();
        host.as_bytes()[split - 1] == b'.'
            && host.is_char_boundary(split)
            && host[split..].eq_ignore_ascii_case(&self.domain)
    }

    /// How specific the pattern is, so the most specific list entry wins.
    fn specificity(&self) -> (usize, bool) {
        (self.domain.len(), !self.subdomains)
    }
}

/// Follow inside the mirror, or return the redirect to the client as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectAction {
    Follow,
    ToClient,
}

/// Which rule decided, for the debug log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectReason {
    Matched(HostPattern),
    Other,
}

impl fmt::Display for RedirectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectReason::Matched(p) => write!(f, "matched {p}"),
            RedirectReason::Other => f.write_str("matched no list (redirects.other)"),
        }
    }
}

/// The redirect policy from `redirects:` in the config.
#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    pub follow: Vec<HostPattern>,
    pub to_client: Vec<HostPattern>,
    pub other: RedirectAction,
    pub max_hops: u8,
}

/// Docker Hub's CDN: followed so the mirror caches what it serves.
pub const DEFAULT_FOLLOW: &[&str] = &[".docker.com", ".docker.io"];
/// Object storage behind presigned URLs: clients fetch these themselves by default.
pub const DEFAULT_TO_CLIENT: &[&str] = &[
    ".amazonaws.com",
    ".cloudfront.net",
    ".cloudflarestorage.com",
    ".storage.googleapis.com",
    ".blob.core.windows.net",
];
pub const DEFAULT_MAX_HOPS: u8 = 5;

impl Default for RedirectPolicy {
    fn default() -> Self {
        let parse = |list: &[&str]| {
            list.iter()
                .map(|p| p.parse().expect("default patterns are valid"))
                .collect()
        };
        RedirectPolicy {
            follow: parse(DEFAULT_FOLLOW),
            to_client: parse(DEFAULT_TO_CLIENT),
            other: RedirectAction::Follow,
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

impl RedirectPolicy {
    /// Whether `redirects.follow` names this host exactly (not by a `.domain` pattern): the
    /// operator's leave to follow it even to an internal address (see `upstream::egress`).
    pub fn names_exactly(&self, host: &str) -> bool {
        self.follow.iter().any(|p| !p.subdomains && p.matches(host))
    }

    /// Classifies the host of a redirect's target. When both lists match, the more specific
    /// pattern wins; on a tie the redirect goes to the client (never fetch what we were not
    /// told to).
    pub fn classify(&self, host: &str) -> (RedirectAction, RedirectReason) {
        let best = |list: &[HostPattern]| {
            list.iter()
                .filter(|p| p.matches(host))
                .max_by_key(|p| p.specificity())
                .cloned()
        };
        match (best(&self.follow), best(&self.to_client)) {
            (Some(f), Some(c)) if f.specificity() > c.specificity() => {
                (RedirectAction::Follow, RedirectReason::Matched(f))
            }
            (_, Some(c)) => (RedirectAction::ToClient, RedirectReason::Matched(c)),
            (Some(f), None) => (RedirectAction::Follow, RedirectReason::Matched(f)),
            (None, None) => (self.other, RedirectReason::Other),
        }
    }
}

/// The statuses that carry a `Location` to chase.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        s.parse().unwrap()
    }

    #[test]
    fn label_boundary_matching() {
        let p = pat(".docker.io");
        for yes in [
            "docker.io",
            "registry-1.docker.io",
            "A.DOCKER.IO",
            "docker.io.",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in [
            "docker.io.evil.test",
            "evildocker.io",
            "io",
            "xdocker.io",
            "docker.iox",
        ] {
            assert!(!p.matches(no), "{no}");
        }
        let exact = pat("cdn.example.com");
        assert!(exact.matches("cdn.example.com"));
        assert!(!exact.matches("a.cdn.example.com"));
        for bad in ["", ".", "..x", "a..b", "a b", "*.x.com", "x/y"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_classification() {
        let policy = RedirectPolicy::default();
        let cases = [
            ("production.cloudflare.docker.com", RedirectAction::Follow),
            ("production.cloudfront.docker.com", RedirectAction::Follow),
            (
                "docker-images-prod.abc123.r2.cloudflarestorage.com",
                RedirectAction::ToClient,
            ),
            (
                "prod-us-east-1-starport-layer-bucket.s3.us-east-1.amazonaws.com",
                RedirectAction::ToClient,
            ),
            ("d2glxqk2uabbnd.cloudfront.net", RedirectAction::ToClient),
            ("bucket.storage.googleapis.com", RedirectAction::ToClient),
            ("acct.blob.core.windows.net", RedirectAction::ToClient),
            ("docker.io.evil.test", RedirectAction::Follow),
            ("cdn.quay.io", RedirectAction::Follow),
        ];
        for (host, want) in cases {
            assert_eq!(policy.classify(host).0, want, "{host}");
        }
        assert_eq!(
            policy.classify("docker.io.evil.test").1,
            RedirectReason::Other
        );
        assert_eq!(policy.classify("evildocker.io").1, RedirectReason::Other);
        let strict = RedirectPolicy {
            other: RedirectAction::ToClient,
            ..RedirectPolicy::default()
        };
        assert_eq!(strict.classify("evildocker.io").0, RedirectAction::ToClient);
    }

    #[test]
    fn most_specific_wins() {
        let policy = RedirectPolicy {
            follow: vec![pat(".storage.example"), pat("mine.s3.amazonaws.com")],
            to_client: vec![pat(".amazonaws.com"), pat(".storage.example")],
            other: RedirectAction::Follow,
            max_hops: 5,
        };
        assert_eq!(
            policy.classify("mine.s3.amazonaws.com").0,
            RedirectAction::Follow
        );
        assert_eq!(
            policy.classify("other.s3.amazonaws.com").0,
            RedirectAction::ToClient
        );
        assert_eq!(
            policy.classify("a.storage.example").0,
            RedirectAction::ToClient
        );
    }

    #[test]
    fn redirect_statuses() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(s));
        }
        for s in [200, 304, 300, 305, 401] {
            assert!(!is_redirect(s));
        }
    }
}
