//! `V2Path`: what a `/v2/...` request path asks for, parsed from the right.
//!
//! Repository names have any number of components and may themselves contain the words
//! `manifests`, `blobs` or `tags`, so the endpoint is read off the end of the path and
//! everything before it is the name (the way distribution's router reads it).

use std::fmt;
use std::str::FromStr;

use super::reference::{Digest, Reference, ReferenceError, RepoName};

/// A parsed registry API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Path {
    /// `/v2/`: the API version check clients send first.
    Ping,
    /// `/v2/auth`: the mirror's own token endpoint (the realm of its challenges).
    Auth,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/tags/list`.
    Tags { name: RepoName },
    /// `/v2/<name>/referrers/<digest>` (OCI distribution 1.1).
    Referrers { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/...`: a push, which a mirror does not take.
    Upload { name: RepoName },
}

/// Why a path is not a registry API path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not a registry API path")]
    NotV2,
    #[error("unknown registry endpoint")]
    UnknownEndpoint,
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

impl V2Path {
    /// The repository this path is about, if any.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            V2Path::Manifest { name, .. }
            | V2Path::Blob { name, .. }
            | V2Path::Tags { name }
            | V2Path::Referrers { name, .. }
            | V2Path::Upload { name } => Some(name),
            V2Path::Ping | V2Path::Auth | V2Path::Catalog => None,
        }
    }

    /// The same endpoint for another repository name (routing strips a path prefix, Docker Hub
    /// adds `library/`).
    pub fn with_name(self, new: RepoName) -> V2Path {
        match self {
            V2Path::Manifest { reference, .. } => V2Path::Manifest {
                name: new,
                reference,
            },
            V2Path::Blob { digest, .. } => V2Path::Blob { name: new, digest },
            V2Path::Tags { .. } => V2Path::Tags { name: new },
            V2Path::Referrers { digest, .. } => V2Path::Referrers { name: new, digest },
            V2Path::Upload { .. } => V2Path::Upload { name: new },
            other => other,
        }
    }
}

impl FromStr for V2Path {
    type Err = PathError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        let rest = match path {
            "/v2" | "/v2/" => return Ok(V2Path::Ping),
            _ => path.strip_prefix("/v2/").ok_or(PathError::NotV2)?,
        };
        match rest {
            "auth" => return Ok(V2Path::Auth),
            "_catalog" => return Ok(V2Path::Catalog),
            _ => {}
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let name_of = |n: usize| -> Result<RepoName, PathError> {
            if segments.len() <= n {
                return Err(PathError::UnknownEndpoint);
            }
            Ok(segments[..segments.len() - n].join("/").parse()?)
        };
        match segments.as_slice() {
            [.., "tags", "list"] => Ok(V2Path::Tags { name: name_of(2)? }),
            [.., "blobs", "uploads"] => Ok(V2Path::Upload { name: name_of(2)? }),
            [.., "blobs", "uploads", _] => Ok(V2Path::Upload { name: name_of(3)? }),
            [.., "manifests", reference] => Ok(V2Path::Manifest {
                reference: reference.parse()?,
                name: name_of(2)?,
            }),
            [.., "blobs", digest] => Ok(V2Path::Blob {
                digest: digest.parse()?,
                name: name_of(2)?,
            }),
            [.., "referrers", digest] => Ok(V2Path::Referrers {
                digest: digest.parse()?,
                name: name_of(2)?,
            }),
            _ => Err(PathError::UnknownEndpoint),
        }
    }
}

impl fmt::Display for V2Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V2Path::Ping => f.write_str("/v2/"),
            V2Path::Auth => f.write_str("/v2/auth"),
            V2Path::Catalog => f.write_str("/v2/_catalog"),
            V2Path::Manifest { name, reference } => write!(f, "/v2/{name}/manifests/{reference}"),
            V2Path::Blob { name, digest } => write!(f, "/v2/{name}/blobs/{digest}"),
            V2Path::Tags { name } => write!(f, "/v2/{name}/tags/list"),
            V2Path::Referrers { name, digest } => write!(f, "/v2/{name}/referrers/{digest}"),
            V2Path::Upload { name } => write!(f, "/v2/{name}/blobs/uploads/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(name: &str, reference: &str) -> V2Path {
        V2Path::Manifest {
            name: name.parse().unwrap(),
            reference: reference.parse().unwrap(),
        }
    }

    #[test]
    fn parses_from_the_right() {
        let blob = |name: &str| V2Path::Blob {
            name: name.parse().unwrap(),
            digest: SHA.parse().unwrap(),
        };
        let cases: Vec<(String, V2Path)> = vec![
            ("/v2/".into(), V2Path::Ping),
            ("/v2".into(), V2Path::Ping),
            ("/v2/auth".into(), V2Path::Auth),
            ("/v2/_catalog".into(), V2Path::Catalog),
            (
                "/v2/nginx/manifests/latest".into(),
                manifest("nginx", "latest"),
            ),
            ("/v2/a/b/c/d/manifests/v1".into(), manifest("a/b/c/d", "v1")),
            (
                "/v2/manifests/manifests/latest".into(),
                manifest("manifests", "latest"),
            ),
            (
                "/v2/x/blobs/manifests/tags".into(),
                manifest("x/blobs", "tags"),
            ),
            (format!("/v2/manifests/blobs/{SHA}"), blob("manifests")),
            (
                format!("/v2/a/manifests/x/blobs/{SHA}"),
                blob("a/manifests/x"),
            ),
            (format!("/v2/nginx/manifests/{SHA}"), manifest("nginx", SHA)),
            (
                "/v2/tags/tags/list".into(),
                V2Path::Tags {
                    name: "tags".parse().unwrap(),
                },
            ),
            (
                "/v2/quay.io/coreos/etcd/manifests/v3".into(),
                manifest("quay.io/coreos/etcd", "v3"),
            ),
            (
                "/v2/a/blobs/uploads/".into(),
                V2Path::Upload {
                    name: "a".parse().unwrap(),
                },
            ),
            (
                "/v2/a/blobs/uploads/some-uuid".into(),
                V2Path::Upload {
                    name: "a".parse().unwrap(),
                },
            ),
            (
                format!("/v2/a/referrers/{SHA}"),
                V2Path::Referrers {
                    name: "a".parse().unwrap(),
                    digest: SHA.parse().unwrap(),
                },
            ),
        ];
        for (path, want) in cases {
            assert_eq!(path.parse::<V2Path>(), Ok(want), "{path}");
        }
    }

    #[test]
    fn round_trips() {
        for path in [
            "/v2/",
            "/v2/auth",
            "/v2/library/nginx/manifests/latest",
            &format!("/v2/a/b/blobs/{SHA}"),
            "/v2/a/b/tags/list",
        ] {
            assert_eq!(path.parse::<V2Path>().unwrap().to_string(), path);
        }
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "/",
            "/v1/nginx/manifests/latest",
            "/v2/manifests/latest",
            "/v2/nginx/manifests/",
            "/v2/nginx/blobs/latest",
            "/v2/Nginx/manifests/latest",
            "/v2//manifests/latest",
            "/v2/../etc/manifests/latest",
            "/v2/nginx/whatever",
            "/v2/nginx/manifests/a:b",
            "/v2/blobs/sha256:abc",
            "/v2/tags/list",
        ] {
            assert!(bad.parse::<V2Path>().is_err(), "{bad:?} accepted");
        }
    }
}
