//! What the status page shows beyond the counters: per route, when the upstream last answered
//! and last failed; the latest errors; and the repositories asked for most, with the bytes the
//! cache saved them. Recorded once per request when it is logged, in memory only, bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Errors kept for the page.
const RECENT_ERRORS: usize = 20;
/// Repositories counted at most (the least asked for leave first).
const REPOSITORIES: usize = 10_000;
/// Repositories the page lists.
const TOP: usize = 10;

/// One request that ended in an error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorNote {
    /// Unix seconds.
    pub at: u64,
    pub route: String,
    pub path: String,
    pub status: u16,
    pub reason: String,
}

#[derive(Default)]
struct RouteActivity {
    /// Unix seconds of the last upstream answer below 500 (0: never).
    last_ok: AtomicU64,
    last_error: Mutex<Option<ErrorNote>>,
}

/// One repository's requests and the body bytes served to them from the cache.
struct RepoCounts {
    route: String,
    name: String,
    requests: AtomicU64,
    bytes_saved: AtomicU64,
}

/// The activity of every route, the latest errors, the busiest repositories.
pub struct Activity {
    routes: HashMap<String, RouteActivity>,
    errors: Mutex<VecDeque<ErrorNote>>,
    /// By a keyed hash of route and repository: a lookup allocates nothing.
    repos: quick_cache::sync::Cache<u64, Arc<RepoCounts>>,
    hasher: std::collections::hash_map::RandomState,
}

/// What one finished request leaves here.
pub struct Finished<'a> {
    pub route: &'a str,
    pub repository: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    /// The upstream answered this request (directly or through an owner).
    pub upstream_answered: bool,
    pub from_cache: bool,
    pub bytes: u64,
    /// Why it failed, when it did.
    pub failure: Option<&'a str>,
}

/// A route's line on the page.
#[derive(Debug, Clone, Serialize)]
pub struct RouteSummary {
    pub last_upstream_ok: Option<u64>,
    pub last_error: Option<ErrorNote>,
}

/// A repository's line on the page.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RepoSummary {
    pub route: String,
    pub repository: String,
    pub requests: u64,
    pub bytes_saved: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Activity {
    /// Activity for these routes (by name).
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Activity {
        Activity {
            routes: routes
                .into_iter()
                .map(|r| (r.to_owned(), RouteActivity::default()))
                .collect(),
            errors: Mutex::default(),
            repos: quick_cache::sync::Cache::new(REPOSITORIES),
            hasher: Default::default(),
        }
    }

    /// Records a finished request.
    pub fn record(&self, r: &Finished<'_>) {
        let route = self.routes.get(r.route);
        let failed = r.status >= 500 || r.failure.is_some();
        if let (Some(route), true, false) = (route, r.upstream_answered, failed) {
            route.last_ok.store(now(), Relaxed);
        }
        if failed {
            let note = ErrorNote {
                at: now(),
                route: r.route.to_owned(),
                path: r.path.to_owned(),
                status: r.status,
                reason: r.failure.unwrap_or("").to_owned(),
            };
            if let Some(route) = route {
                *lock(&route.last_error) = Some(note.clone());
            }
            let mut errors = lock(&self.errors);
            if errors.len() == RECENT_ERRORS {
                errors.pop_front();
            }
            errors.push_back(note);
        }
        if let Some(repo) = r.repository {
            let counts = self.repo(r.route, repo);
            counts.requests.fetch_add(1, Relaxed);
            if r.from_cache {
                counts.bytes_saved.fetch_add(r.bytes, Relaxed);
            }
        }
    }

    fn repo(&self, route: &str, repo: &str) -> Arc<RepoCounts> {
        let key = self.hasher.hash_one((route, repo));
        if let Some(counts) = self.repos.get(&key) {
            return counts;
        }
        let counts = Arc::new(RepoCounts {
            route: route.to_owned(),
            name: repo.to_owned(),
            requests: AtomicU64::new(0),
            bytes_saved: AtomicU64::new(0),
        });
        self.repos.insert(key, counts.clone());
        counts
    }

    /// A route's last upstream answer and last error.
    pub fn route(&self, name: &str) -> Option<RouteSummary> {
        let route = self.routes.get(name)?;
        let last_ok = route.last_ok.load(Relaxed);
        Some(RouteSummary {
            last_upstream_ok: (last_ok > 0).then_some(last_ok),
            last_error: lock(&route.last_error).clone(),
        })
    }

    /// The latest errors, newest first.
    pub fn recent_errors(&self) -> Vec<ErrorNote> {
        lock(&self.errors).iter().rev().cloned().collect()
    }

    /// The repositories asked for most, and those the cache saved most bytes for.
    pub fn top_repositories(&self) -> (Vec<RepoSummary>, Vec<RepoSummary>) {
        let all: Vec<RepoSummary> = self
            .repos
            .iter()
            .map(|(_, c)| RepoSummary {
                route: c.route.clone(),
                repository: c.name.clone(),
                requests: c.requests.load(Relaxed),
                bytes_saved: c.bytes_saved.load(Relaxed),
            })
            .collect();
        let top = |key: fn(&RepoSummary) -> u64| {
            let mut list: Vec<RepoSummary> = all.iter().filter(|r| key(r) > 0).cloned().collect();
            list.sort_by(|a, b| key(b).cmp(&key(a)).then(a.repository.cmp(&b.repository)));
            list.truncate(TOP);
            list
        };
        (top(|r| r.requests), top(|r| r.bytes_saved))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished<'a>(repo: &'a str, status: u16, from_cache: bool) -> Finished<'a> {
        Finished {
            route: "docker",
            repository: Some(repo),
            path: "/v2/x",
            status,
            upstream_answered: !from_cache,
            from_cache,
            bytes: 100,
            failure: (status >= 500).then_some("upstream failed"),
        }
    }

    #[test]
    fn counts_repositories_and_keeps_the_latest_errors() {
        let a = Activity::new(["docker"]);
        for _ in 0..3 {
            a.record(&finished("library/a", 200, true));
        }
        a.record(&finished("library/b", 200, false));
        let (by_requests, by_saved) = a.top_repositories();
        assert_eq!(by_requests[0].repository, "library/a");
        assert_eq!(
            (by_requests[0].requests, by_requests[0].bytes_saved),
            (3, 300)
        );
        assert_eq!(by_saved.len(), 1, "b saved nothing");
        assert!(a.route("docker").unwrap().last_upstream_ok.is_some());
        for i in 0..(RECENT_ERRORS + 5) {
            let mut f = finished("library/c", 502, false);
            let path = format!("/v2/{i}");
            f.path = &path;
            a.record(&f);
        }
        let errors = a.recent_errors();
        assert_eq!(errors.len(), RECENT_ERRORS);
        assert_eq!(
            errors[0].path,
            format!("/v2/{}", RECENT_ERRORS + 4),
            "newest first"
        );
        assert_eq!(a.route("docker").unwrap().last_error.unwrap().status, 502);
        assert!(a.route("quay").is_none());
    }
}
