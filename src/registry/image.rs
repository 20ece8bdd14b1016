//! Image references as operators write them: `REGISTRY/REPOSITORY[:TAG|@DIGEST]`, with
//! Docker Hub's short names (`nginx:1.27` is `docker.io/library/nginx:1.27`), and platforms
//! (`linux/amd64`, `linux/arm/v7`) as `--platform` takes them.

use std::fmt;

use super::reference::{Reference, ReferenceError, RepoName};

/// Docker Hub's registry name: where a reference without a registry points.
pub const DOCKER_HUB: &str = "docker.io";

/// Why an image reference or platform was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("empty image reference")]
    Empty,
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    #[error("invalid platform {0:?}: expected OS/ARCH or OS/ARCH/VARIANT")]
    Platform(String),
}

/// `REGISTRY/REPOSITORY` and what in it is meant: a tag (`latest` when none is given) or a
/// digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// A route's registry name (`docker.io`, `quay.io`, a route's `registry:`).
    pub registry: String,
    pub repository: RepoName,
    pub reference: Reference,
}

/// Splits `REGISTRY/REST` when the first component names a registry: one `is_registry`
/// knows, or one with a `.` or `:` or `localhost` (docker's own rule). Anything else is a
/// Docker Hub name.
pub fn split_registry(text: &str, is_registry: impl Fn(&str) -> bool) -> (&str, &str) {
    match text.split_once('/') {
        Some((first, rest))
            if is_registry(first)
                || first.contains('.')
                || first.contains(':')
                || first == "localhost" =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, text),
    }
}

impl ImageRef {
    /// Parses `text`; `is_registry` says which first components are registry names beyond
    /// docker's rule. Docker Hub names get their `library/` prefix.
    pub fn parse(
        text: &str,
        is_registry: impl Fn(&str) -> bool,
    ) -> Result<ImageRef, ImageRefError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (registry, rest) = split_registry(text, is_registry);
        let (name, reference) = match rest.split_once('@') {
            Some((name, digest)) => (name, digest.parse::<Reference>()?),
            None => match rest.rsplit_once(':') {
                // A colon after the last slash is a tag's.
                Some((name, tag)) if !tag.contains('/') => (name, tag.parse::<Reference>()?),
                _ => (rest, Reference::Tag("latest".to_owned())),
            },
        };
        let mut repository: RepoName = name.parse()?;
        if registry == DOCKER_HUB {
            repository = repository.with_library_prefix();
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.reference.is_digest() { '@' } else { ':' };
        write!(
            f,
            "{}/{}{separator}{}",
            self.registry, self.repository, self.reference
        )
    }
}

/// A platform filter: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ImageRefError::Platform(s.to_owned());
        let mut parts = s.trim().split('/');
        let os = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let architecture = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let variant = parts.next().map(str::to_owned);
        if parts.next().is_some() || variant.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            architecture: architecture.to_ascii_lowercase(),
            variant,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether an index entry's platform is this one. A filter without a variant takes every
    /// variant of its architecture; `arm64` without a variant is `arm64/v8`, as the OCI image
    /// spec's platform notes say.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if !self.os.eq_ignore_ascii_case(os)
            || !self.architecture.eq_ignore_ascii_case(architecture)
        {
            return false;
        }
        let Some(wanted) = &self.variant else {
            return true;
        };
        let default = (architecture == "arm64").then_some("v8");
        variant
            .or(default)
            .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(text: &str) -> Result<String, ImageRefError> {
        ImageRef::parse(text, |r| r == "corp").map(|i| i.to_string())
    }

    #[test]
    fn image_references() {
        let table = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("docker.io/nginx:1.27", "docker.io/library/nginx:1.27"),
            ("myorg/app", "docker.io/myorg/app:latest"),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("corp/team/app:1", "corp/team/app:1"),
            ("other/team/app:1", "docker.io/other/team/app:1"),
        ];
        for (text, want) in table {
            assert_eq!(parse(text).as_deref(), Ok(want), "{text}");
        }
        assert_eq!(
            parse(&format!("ghcr.io/a/b@{D}")).unwrap(),
            format!("ghcr.io/a/b@{D}")
        );
        for bad in [
            "",
            "  ",
            "UPPER/case",
            "nginx:bad tag",
            "nginx@sha256:12",
            "a//b",
            "nginx:sha256:abc",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/amd64".parse().unwrap();
        assert!(p.matches("linux", "amd64", None));
        assert!(!p.matches("linux", "arm64", None));
        assert!(!p.matches("windows", "amd64", None));
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm.matches("linux", "arm64", None));
        assert!(arm.matches("linux", "arm64", Some("v8")));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!v7.matches("linux", "arm", Some("v6")));
        assert!("linux/arm64"
            .parse::<Platform>()
            .unwrap()
            .matches("linux", "arm64", Some("v8")));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "a/b/"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(v7.to_string(), "linux/arm/v7");
    }
}
