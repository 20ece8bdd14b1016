//! `AccessBook`: who may read cached content the upstream served only with credentials.
//!
//! An entry filled by a request that carried `Authorization` is marked private. A later
//! reader is served from cache when the repository is public (an anonymous probe succeeded,
//! remembered for `VERDICT_TTL`) or when the upstream accepted that reader's own credentials
//! for the repository (a HEAD, remembered for the token's life: its `exp`, else `GRANT_TTL`).
//!
//! The book is bounded (`BOOK_CAPACITY` entries per kind, least used dropped first; moka)
//! and its keys are HMAC-SHA256 of route, repository and credential under a key drawn at
//! start: credentials are never kept, and a client cannot aim keys at one another.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use moka::sync::Cache;
use sha2::Sha256;

/// The header that marks a cached response as filled with credentials. Internal: stripped
/// from every response.
pub const PRIVATE_MARK: &str = "x-pullthrough-private";
/// How long a repository's public/private verdict is trusted.
pub const VERDICT_TTL: Duration = Duration::from_secs(600);
/// How long an upstream's acceptance of a credential for a repository is trusted when the
/// token does not say when it expires (about a registry token's life).
pub const GRANT_TTL: Duration = Duration::from_secs(300);
/// The longest a grant is trusted, whatever the token says.
pub const GRANT_MAX_TTL: Duration = Duration::from_secs(3600);
/// How long a decided verdict still stands in for one that cannot be decided now (the
/// upstream is unavailable): as long as a stale tag may be served.
pub const LAST_VERDICT_TTL: Duration = crate::cache::policy::DEFAULT_STALE_FOR;
/// Entries each part of the book holds at most.
pub const BOOK_CAPACITY: u64 = 100_000;

/// A repository's public/private verdict: decided once by whoever asks first, awaited by
/// everyone else (one probe however many readers arrive together).
pub type Verdict = Arc<tokio::sync::OnceCell<bool>>;

/// A keyed hash of what an entry is about.
type BookKey = [u8; 16];

/// How long a grant lives: what its token said, within bounds.
struct GrantLife;

impl moka::Expiry<BookKey, Duration> for GrantLife {
    fn expire_after_create(&self, _: &BookKey, life: &Duration, _: Instant) -> Option<Duration> {
        Some(*life)
    }
}

/// Remembered answers, bounded and with expiry.
pub struct AccessBook {
    key: [u8; 32],
    verdict_ttl: Duration,
    public: Cache<BookKey, Verdict>,
    grants: Cache<BookKey, Duration>,
    /// The last verdict decided per repository.
    last: Cache<BookKey, bool>,
}

impl Default for AccessBook {
    fn default() -> Self {
        AccessBook::with_lives(VERDICT_TTL, LAST_VERDICT_TTL)
    }
}

/// What a key is about (keeps the kinds apart under one HMAC key).
#[derive(Clone, Copy)]
enum Kind {
    Verdict = 1,
    Grant = 2,
    /// One path of a repository readable with a credential (or by anyone: empty).
    Holds = 3,
}

impl AccessBook {
    /// A book whose verdicts live `verdict` and whose fallback verdicts live `last`.
    pub fn with_lives(verdict: Duration, last: Duration) -> AccessBook {
        let mut key = [0u8; 32];
        // Without the OS's randomness the keys are still hashes, only predictable ones.
        if getrandom::fill(&mut key).is_err() {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            key[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        AccessBook {
            key,
            verdict_ttl: verdict,
            public: Cache::builder()
                .max_capacity(BOOK_CAPACITY)
                .time_to_live(verdict)
                .build(),
            grants: Cache::builder()
                .max_capacity(BOOK_CAPACITY)
                .expire_after(GrantLife)
                .build(),
            last: Cache::builder()
                .max_capacity(BOOK_CAPACITY)
                .time_to_live(last)
                .build(),
        }
    }

    fn book_key(&self, kind: Kind, route: &str, repo: &str, credential: &[u8]) -> BookKey {
        self.keyed(&[&[kind as u8], route.as_bytes(), repo.as_bytes(), credential])
    }

    /// HMAC-SHA256 of length-prefixed parts, truncated to 16 bytes.
    fn keyed(&self, parts: &[&[u8]]) -> BookKey {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        let tag = mac.finalize().into_bytes();
        let mut key = [0u8; 16];
        key.copy_from_slice(&tag[..16]);
        key
    }

    /// How long a verdict is trusted.
    pub fn verdict_ttl(&self) -> Duration {
        self.verdict_ttl
    }

    /// The repository's verdict, if decided and current: true when anyone may read it.
    pub fn is_public(&self, route: &str, repo: &str) -> Option<bool> {
        let key = self.book_key(Kind::Verdict, route, repo, b"");
        self.public.get(&key).and_then(|cell| cell.get().copied())
    }

    /// The current verdict cell for a repository (a new, undecided one when it expired).
    pub fn verdict(&self, route: &str, repo: &str) -> Verdict {
        let key = self.book_key(Kind::Verdict, route, repo, b"");
        self.public.get_with(key, Verdict::default)
    }

    /// Records a decided verdict as the one to fall back on while the upstream is down.
    pub fn remember(&self, route: &str, repo: &str, public: bool) {
        self.last
            .insert(self.book_key(Kind::Verdict, route, repo, b""), public);
    }

    /// The last verdict decided for a repository, if recent enough to stand in.
    pub fn last_verdict(&self, route: &str, repo: &str) -> Option<bool> {
        self.last
            .get(&self.book_key(Kind::Verdict, route, repo, b""))
    }

    /// Whether the upstream accepted this credential for the repository, within its life.
    pub fn granted(&self, route: &str, repo: &str, credential: &[u8]) -> bool {
        let key = self.book_key(Kind::Grant, route, repo, credential);
        self.grants.get(&key).is_some()
    }

    /// Remembers that the upstream accepted this credential for the repository, for as long
    /// as the credential says it lives (a bearer token's `exp`), else `GRANT_TTL`, at most
    /// `GRANT_MAX_TTL`. An expired token is not remembered.
    pub fn grant(&self, route: &str, repo: &str, credential: &[u8]) {
        if let Some(life) = credential_life(credential) {
            let key = self.book_key(Kind::Grant, route, repo, credential);
            self.grants.insert(key, life);
        }
    }

    fn holds_key(&self, route: &str, repo: &str, path: &str, credential: &[u8]) -> BookKey {
        let kind = [Kind::Holds as u8];
        self.keyed(&[
            &kind,
            route.as_bytes(),
            repo.as_bytes(),
            path.as_bytes(),
            credential,
        ])
    }

    /// Whether the upstream recently served `path` of `repo` to this credential (empty: to
    /// anyone).
    pub fn holds(&self, route: &str, repo: &str, path: &str, credential: &[u8]) -> bool {
        let key = self.holds_key(route, repo, path, credential);
        self.grants.get(&key).is_some()
    }

    /// Remembers that the upstream serves `path` of `repo` to this credential (empty: to
    /// anyone, for the verdict's life; else for the credential's).
    pub fn hold(&self, route: &str, repo: &str, path: &str, credential: &[u8]) {
        let life = match credential {
            b"" => Some(self.verdict_ttl),
            c => credential_life(c),
        };
        if let Some(life) = life {
            let key = self.holds_key(route, repo, path, credential);
            self.grants.insert(key, life);
        }
    }
}

/// How long an answer about a credential is remembered: a bearer token's `exp`, else
/// `GRANT_TTL`, at most `GRANT_MAX_TTL`; `None` for an expired token.
fn credential_life(credential: &[u8]) -> Option<Duration> {
    let life = match crate::registry::auth::bearer_expiry(credential) {
        Some(exp) => exp
            .duration_since(SystemTime::now())
            .ok()?
            .min(GRANT_MAX_TTL),
        None => GRANT_TTL,
    };
    (!life.is_zero()).then_some(life)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn jwt_expiring_in(secs: i64) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now + secs));
        format!("Bearer {}.{payload}.sig", b64.encode(r#"{"alg":"RS256"}"#))
    }

    #[test]
    fn remembers_per_route_repo_and_credential() {
        let book = AccessBook::default();
        assert_eq!(book.is_public("docker", "library/a"), None);
        book.verdict("docker", "library/a").set(true).unwrap();
        assert_eq!(book.is_public("docker", "library/a"), Some(true));
        assert_eq!(book.is_public("quay", "library/a"), None);
        assert_eq!(book.is_public("docker", "library/b"), None);
        book.grant("docker", "acme/x", b"Bearer t1");
        assert!(book.granted("docker", "acme/x", b"Bearer t1"));
        assert!(!book.granted("docker", "acme/x", b"Bearer t2"));
        assert!(!book.granted("docker", "acme/y", b"Bearer t1"));
        assert!(!book.granted("quay", "acme/x", b"Bearer t1"));
        // Parts are length-prefixed: moving a byte from one part to the next is another key.
        book.grant("a", "bc", b"x");
        assert!(!book.granted("ab", "c", b"x"));
    }

    #[test]
    fn verdicts_and_grants_expire() {
        let book = AccessBook::with_lives(Duration::from_millis(50), Duration::from_millis(50));
        book.verdict("docker", "library/a").set(true).unwrap();
        book.remember("docker", "library/a", true);
        assert_eq!(book.is_public("docker", "library/a"), Some(true));
        assert_eq!(book.last_verdict("docker", "library/a"), Some(true));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            book.is_public("docker", "library/a"),
            None,
            "verdict outlived its TTL"
        );
        assert_eq!(book.last_verdict("docker", "library/a"), None);
        assert!(
            book.verdict("docker", "library/a").get().is_none(),
            "a new, undecided cell"
        );
    }

    #[test]
    fn a_grant_lives_as_long_as_its_token() {
        let book = AccessBook::default();
        let short = jwt_expiring_in(1);
        let expired = jwt_expiring_in(-5);
        let long = jwt_expiring_in(7 * 24 * 3600);
        for token in [&short, &expired, &long] {
            book.grant("docker", "acme/x", token.as_bytes());
        }
        assert!(book.granted("docker", "acme/x", short.as_bytes()));
        assert!(
            !book.granted("docker", "acme/x", expired.as_bytes()),
            "an expired token"
        );
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            !book.granted("docker", "acme/x", short.as_bytes()),
            "outlived its exp"
        );
        assert!(book.granted("docker", "acme/x", long.as_bytes()));
    }

    #[test]
    fn the_book_stays_bounded() {
        let book = AccessBook::default();
        for i in 0..(BOOK_CAPACITY + 20_000) {
            book.grant("docker", "acme/x", format!("Bearer {i}").as_bytes());
        }
        book.grants.run_pending_tasks();
        assert!(book.grants.entry_count() <= BOOK_CAPACITY);
    }
}
