//! `RepoFilter`: repository allow and block lists, glob patterns over
//! `<registry>/<repository>` (`docker.io/library/nginx`). `*` stays within one path
//! component, `**` crosses them.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid repository pattern {pattern:?}: {source}")]
pub struct PatternError {
    pattern: String,
    source: globset::Error,
}

/// Glob patterns over one route's repository names (`myorg/*`), as `credentials.share`
/// lists them: the repositories the route's own credentials publish to every client.
#[derive(Debug, Clone, Default)]
pub struct RepoGlobs {
    patterns: Vec<String>,
    set: Option<GlobSet>,
}

impl RepoGlobs {
    pub fn new(patterns: &[String]) -> Result<RepoGlobs, PatternError> {
        Ok(RepoGlobs {
            patterns: patterns.to_vec(),
            set: build(patterns)?,
        })
    }

    pub fn matches(&self, repository: &str) -> bool {
        self.set.as_ref().is_some_and(|s| s.is_match(repository))
    }
}

impl PartialEq for RepoGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for RepoGlobs {}

impl serde::Serialize for RepoGlobs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(s)
    }
}

/// The lists from `repositories:`.
#[derive(Debug, Clone, Default)]
pub struct RepoFilter {
    allow: Option<GlobSet>,
    block: Option<GlobSet>,
}

fn build(patterns: &[String]) -> Result<Option<GlobSet>, PatternError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|source| PatternError {
                pattern: p.clone(),
                source,
            })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|source| PatternError {
        pattern: patterns.join(", "),
        source,
    })
}

impl RepoFilter {
    pub fn new(allow: &[String], block: &[String]) -> Result<RepoFilter, PatternError> {
        Ok(RepoFilter {
            allow: build(allow)?,
            block: build(block)?,
        })
    }

    /// Whether `<registry>/<repository>` may be served: not blocked, and allowed when an
    /// allow list exists.
    pub fn permits(&self, registry: &str, repository: &str) -> bool {
        if self.allow.is_none() && self.block.is_none() {
            return true;
        }
        let subject = format!("{registry}/{repository}");
        if self.block.as_ref().is_some_and(|b| b.is_match(&subject)) {
            return false;
        }
        self.allow.as_ref().is_none_or(|a| a.is_match(&subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allow_and_block() {
        let f = RepoFilter::new(
            &list(&["docker.io/library/*", "quay.io/**"]),
            &list(&["docker.io/library/bad*"]),
        )
        .unwrap();
        assert!(f.permits("docker.io", "library/nginx"));
        assert!(!f.permits("docker.io", "library/badimage"));
        assert!(!f.permits("docker.io", "library/a/b"), "* crossed a /");
        assert!(f.permits("quay.io", "coreos/etcd"));
        assert!(!f.permits("ghcr.io", "x/y"));
        let open = RepoFilter::default();
        assert!(open.permits("any", "thing"));
        assert!(RepoFilter::new(&list(&["a[b"]), &[]).is_err());
    }
}
