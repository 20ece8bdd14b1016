//! `AccessBook`: who may read cached content the upstream served only with credentials.
//!
//! An entry filled by a request that carried `Authorization` is marked private. A later
//! reader is served from cache when the repository is public (an anonymous probe succeeded,
//! remembered for `VERDICT_TTL`) or when the upstream accepted that reader's own credentials
//! for the repository (a HEAD, remembered for `GRANT_TTL`, about a registry token's life).
//! Credentials are kept only as a keyed hash, never in the clear.

use std::collections::hash_map::{DefaultHasher, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The header that marks a cached response as filled with credentials. Internal: stripped
/// from every response.
pub const PRIVATE_MARK: &str = "x-pullthrough-private";
/// How long a repository's public/private verdict is trusted.
pub const VERDICT_TTL: Duration = Duration::from_secs(600);
/// How long an upstream's acceptance of a credential for a repository is trusted.
pub const GRANT_TTL: Duration = Duration::from_secs(300);
/// How long a decided verdict still stands in for one that cannot be decided now (the
/// upstream is unavailable): as long as a stale tag may be served.
pub const LAST_VERDICT_TTL: Duration = crate::cache::policy::DEFAULT_STALE_FOR;

/// A repository's public/private verdict: decided once by whoever asks first, awaited by
/// everyone else (one probe however many readers arrive together).
pub type Verdict = Arc<tokio::sync::OnceCell<bool>>;

/// Remembered answers, with expiry.
#[derive(Default)]
pub struct AccessBook {
    public: Mutex<HashMap<(String, String), (Verdict, Instant)>>,
    grants: Mutex<HashMap<u64, Instant>>,
    /// The last verdict decided per repository, and when.
    last: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

fn grant_key(route: &str, repo: &str, credential: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    (route, repo, credential).hash(&mut h);
    h.finish()
}

impl AccessBook {
    /// The repository's verdict, if decided and current: true when anyone may read it.
    pub fn is_public(&self, route: &str, repo: &str) -> Option<bool> {
        self.verdict(route, repo).get().copied()
    }

    /// The current verdict cell for a repository (a new, undecided one when it expired).
    pub fn verdict(&self, route: &str, repo: &str) -> Verdict {
        let mut book = self.public.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let key = (route.to_owned(), repo.to_owned());
        match book.get(&key) {
            Some((cell, until)) if now < *until => cell.clone(),
            _ => {
                if book.len() > 100_000 {
                    book.retain(|_, (_, until)| *until > now);
                }
                let cell = Verdict::default();
                book.insert(key, (cell.clone(), now + VERDICT_TTL));
                cell
            }
        }
    }

    /// Records a decided verdict as the one to fall back on while the upstream is down.
    pub fn remember(&self, route: &str, repo: &str, public: bool) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.len() > 100_000 {
            last.retain(|_, (_, at)| now.duration_since(*at) < LAST_VERDICT_TTL);
        }
        last.insert((route.to_owned(), repo.to_owned()), (public, now));
    }

    /// The last verdict decided for a repository, if recent enough to stand in.
    pub fn last_verdict(&self, route: &str, repo: &str) -> Option<bool> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(&(route.to_owned(), repo.to_owned()))
            .filter(|(_, at)| at.elapsed() < LAST_VERDICT_TTL)
            .map(|(public, _)| *public)
    }

    /// Whether the upstream recently accepted this credential for the repository.
    pub fn granted(&self, route: &str, repo: &str, credential: &[u8]) -> bool {
        let book = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        book.get(&grant_key(route, repo, credential))
            .is_some_and(|until| Instant::now() < *until)
    }

    pub fn grant(&self, route: &str, repo: &str, credential: &[u8]) {
        let mut book = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if book.len() > 100_000 {
            book.retain(|_, until| *until > now);
        }
        book.insert(grant_key(route, repo, credential), now + GRANT_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_route_repo_and_credential() {
        let book = AccessBook::default();
        assert_eq!(book.is_public("docker", "library/a"), None);
        book.verdict("docker", "library/a").set(true).unwrap();
        assert_eq!(book.is_public("docker", "library/a"), Some(true));
        assert_eq!(book.is_public("quay", "library/a"), None);
        book.grant("docker", "acme/x", b"Bearer t1");
        assert!(book.granted("docker", "acme/x", b"Bearer t1"));
        assert!(!book.granted("docker", "acme/x", b"Bearer t2"));
        assert!(!book.granted("docker", "acme/y", b"Bearer t1"));
    }
}
