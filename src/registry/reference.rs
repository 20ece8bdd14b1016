//! Typed names from the distribution grammar: repository names, tags and digests.
//!
//! Each type parses with `FromStr` and prints with `Display`, and the two round-trip, so a
//! value that exists has already been checked (OCI distribution spec, "Pulling manifests").

use std::fmt;
use std::str::FromStr;

use once_cell::sync::Lazy;
use regex::Regex;

/// Why a name, tag or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid repository name {0:?}")]
    Name(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest {0:?}")]
    Digest(String),
}

/// Longest repository name distribution accepts.
const NAME_MAX_LEN: usize = 255;

static NAME_COMPONENT: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$").expect("static regex"));
// ASCII only, as the distribution spec's tag grammar (`\w` would take any Unicode letter).
static TAG: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("static regex"));

/// A repository name such as `library/nginx` or `coreos/etcd`: slash-separated components of
/// the distribution grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The first component and the rest, when there is more than one component.
    pub fn split_first(&self) -> Option<(&str, RepoName)> {
        let (first, rest) = self.0.split_once('/')?;
        Some((first, RepoName(rest.to_owned())))
    }

    /// Docker Hub's official images live under `library/`; a one-component name means that.
    pub fn with_library_prefix(self) -> RepoName {
        if self.0.contains('/') {
            self
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }

    /// This name under a leading component (the mirror's path-prefix form).
    pub fn prefixed(&self, first: &str) -> String {
        format!("{first}/{}", self.0)
    }
}

impl FromStr for RepoName {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= NAME_MAX_LEN
            && s.split('/').all(|c| NAME_COMPONENT.is_match(c));
        if valid {
            Ok(RepoName(s.to_owned()))
        } else {
            Err(ReferenceError::Name(s.to_owned()))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Content digest algorithms the registries use, with their hex lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}

impl DigestAlgorithm {
    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }
}

/// A content digest such as `sha256:<64 lowercase hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReferenceError::Digest(s.to_owned());
        let (algorithm, hex) = s.split_once(':').ok_or_else(bad)?;
        let algorithm = match algorithm {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(bad()),
        };
        let hex_ok = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(bad());
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return s.parse().map(Reference::Digest);
        }
        if TAG.is_match(s) {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(ReferenceError::Tag(s.to_owned()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names() {
        for ok in [
            "nginx",
            "library/nginx",
            "a/b/c/d/e",
            "my-app",
            "a__b",
            "a.b_c--d",
            "quay.io",
        ] {
            let name: RepoName = ok.parse().unwrap();
            assert_eq!(name.to_string(), ok);
        }
        for bad in [
            "", "Nginx", "a//b", "/a", "a/", "-a", "a-", "a..b", "a b", "a:b", "../x",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn library_prefix_only_for_one_component() {
        let one: RepoName = "nginx".parse().unwrap();
        assert_eq!(one.with_library_prefix().as_str(), "library/nginx");
        let two: RepoName = "bitnami/nginx".parse().unwrap();
        assert_eq!(two.with_library_prefix().as_str(), "bitnami/nginx");
    }

    #[test]
    fn digests() {
        let d: Digest = SHA.parse().unwrap();
        assert_eq!(d.to_string(), SHA);
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        let long = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(long.parse::<Digest>().unwrap().to_string(), long);
        for bad in [
            "sha256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256",
            &format!("sha512:{}", "ab".repeat(32)),
            &format!("{SHA}0"),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references() {
        assert_eq!(
            "latest".parse::<Reference>().unwrap(),
            Reference::Tag("latest".into())
        );
        assert!(SHA.parse::<Reference>().unwrap().is_digest());
        assert!("v1.2.3-rc_1".parse::<Reference>().is_ok());
        for bad in ["", ".hidden", "-x", "a/b", &"a".repeat(129), "sha256:zz"] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} accepted");
        }
    }
}
