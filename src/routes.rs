//! `RouteTable`: which upstream registry a request is for.
//!
//! One table, four ways in, tried in this order:
//! 1. containerd's `?ns=<registry>` query parameter;
//! 2. a path prefix naming a registry: `/v2/quay.io/coreos/etcd/...`;
//! 3. the Host (or TLS SNI) name: `quay.<domain>` or a route's own `host:`;
//! 4. the `default_route`, for clients such as docker's `registry-mirrors` that only ever send
//!    Docker Hub traffic to the mirror's own name.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::registry::V2Path;
use crate::upstream::{Credentials, Origin};

/// One upstream registry the mirror serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The route's name in the config (`docker`, `quay`, ...).
    pub name: String,
    /// The registry's public name, used by `?ns=` and path prefixes (`docker.io`, `quay.io`).
    pub registry: String,
    /// Host names (lowercase, no port) that select this route.
    pub hosts: Vec<String>,
    /// Where requests go.
    #[serde(serialize_with = "display")]
    pub upstream: Origin,
    /// Docker Hub rules: one-component names live under `library/`.
    pub docker_hub: bool,
    /// Sent upstream when a client brings no credentials. Never serialised or logged.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
    /// Cached content of this route is served to anyone, without access checks.
    pub public: bool,
    /// Repositories the route's credentials publish to every client (`credentials.share`).
    pub share: crate::guard::repos::RepoGlobs,
}

fn display<S: serde::Serializer>(v: &Origin, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A standard route: name, subdomain under `domain:`, upstream, registry name.
pub struct StandardRoute {
    pub name: &'static str,
    pub upstream: &'static str,
    pub registry: &'static str,
}

/// The routes every mirror has (the seeds' scheme, from ciiiii/cloudflare-docker-proxy).
/// Their hosts are `<name>.<domain>` when `domain:` is set. Order matters: when two routes
/// share a registry name, the first one answers `?ns=` and path prefixes.
pub const STANDARD_ROUTES: &[StandardRoute] = &[
    StandardRoute {
        name: "docker",
        upstream: "https://registry-1.docker.io",
        registry: "docker.io",
    },
    StandardRoute {
        name: "docker-staging",
        upstream: "https://registry-1.docker.io",
        registry: "docker.io",
    },
    StandardRoute {
        name: "quay",
        upstream: "https://quay.io",
        registry: "quay.io",
    },
    StandardRoute {
        name: "gcr",
        upstream: "https://gcr.io",
        registry: "gcr.io",
    },
    StandardRoute {
        name: "k8s-gcr",
        upstream: "https://k8s.gcr.io",
        registry: "k8s.gcr.io",
    },
    StandardRoute {
        name: "k8s",
        upstream: "https://registry.k8s.io",
        registry: "registry.k8s.io",
    },
    StandardRoute {
        name: "ghcr",
        upstream: "https://ghcr.io",
        registry: "ghcr.io",
    },
    StandardRoute {
        name: "cloudsmith",
        upstream: "https://docker.cloudsmith.io",
        registry: "docker.cloudsmith.io",
    },
    StandardRoute {
        name: "ecr",
        upstream: "https://public.ecr.aws",
        registry: "public.ecr.aws",
    },
];

/// How a request found its route (for the debug log and the access line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Namespace,
    PathPrefix,
    Host,
    /// The TLS SNI name, when the Host named no route.
    Sni,
    Default,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Namespace => "?ns=",
            Via::PathPrefix => "path prefix",
            Via::Host => "host",
            Via::Sni => "sni",
            Via::Default => "default route",
        })
    }
}

/// A routed request: the route, how it was found, and the path as the upstream must see it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub route: Arc<Route>,
    pub via: Via,
    /// The path for the upstream: path prefix removed, Docker Hub's `library/` added.
    pub path: V2Path,
    /// The registry prefix the client used in the path, to put back into auth scopes.
    pub client_prefix: Option<String>,
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no route for registry {0:?} (?ns=)")]
    Namespace(String),
    #[error("no route for host {0:?}")]
    Host(String),
}

/// Why routes cannot form a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteTableError {
    #[error("host {host:?} is claimed by routes {first:?} and {second:?}")]
    DuplicateHost {
        host: String,
        first: String,
        second: String,
    },
    #[error("default_route {0:?} names no route")]
    UnknownDefault(String),
}

/// Every route, indexed by host and by registry name.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_host: HashMap<String, usize>,
    by_registry: HashMap<String, usize>,
    default: Option<usize>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, default: Option<&str>) -> Result<RouteTable, RouteTableError> {
        let mut by_host = HashMap::new();
        let mut by_registry = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            for host in &route.hosts {
                if let Some(&j) = by_host.get(host) {
                    let first: &Route = &routes[j];
                    return Err(RouteTableError::DuplicateHost {
                        host: host.clone(),
                        first: first.name.clone(),
                        second: route.name.clone(),
                    });
                }
                by_host.insert(host.clone(), i);
            }
            by_registry.entry(route.registry.clone()).or_insert(i);
        }
        let default = match default {
            Some(name) => Some(
                routes
                    .iter()
                    .position(|r| r.name == name)
                    .ok_or_else(|| RouteTableError::UnknownDefault(name.to_owned()))?,
            ),
            None => None,
        };
        Ok(RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
            by_host,
            by_registry,
            default,
        })
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether a Host or SNI name selects a route.
    pub fn has_host(&self, host: &str) -> bool {
        self.by_host.contains_key(normalize_host(host).as_str())
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn by_registry(&self, registry: &str) -> Option<&Arc<Route>> {
        self.by_registry
            .get(&registry.to_ascii_lowercase())
            .map(|&i| &self.routes[i])
    }

    /// The route for a request without a repository path (`/v2/`, `/v2/auth`):
    /// `?ns=`, then Host, then the default.
    pub fn for_host(
        &self,
        host: Option<&str>,
        ns: Option<&str>,
    ) -> Result<(Arc<Route>, Via), NoRoute> {
        if let Some(ns) = ns {
            return self
                .by_registry(ns)
                .map(|r| (r.clone(), Via::Namespace))
                .ok_or_else(|| NoRoute::Namespace(ns.to_owned()));
        }
        let host = host.map(normalize_host).unwrap_or_default();
        if let Some(&i) = self.by_host.get(host.as_str()) {
            return Ok((self.routes[i].clone(), Via::Host));
        }
        match self.default {
            Some(i) => Ok((self.routes[i].clone(), Via::Default)),
            None => Err(NoRoute::Host(host)),
        }
    }

    /// Routes a registry API request and rewrites its path for the upstream.
    pub fn route(
        &self,
        host: Option<&str>,
        ns: Option<&str>,
        path: V2Path,
    ) -> Result<Routed, NoRoute> {
        let prefixed = match (ns, path.name().and_then(|n| n.split_first())) {
            (None, Some((first, rest))) => self
                .by_registry(first)
                .map(|r| (r.clone(), first.to_owned(), rest)),
            _ => None,
        };
        let (route, via, path, client_prefix) = match prefixed {
            Some((route, prefix, rest)) => {
                (route, Via::PathPrefix, path.with_name(rest), Some(prefix))
            }
            None => {
                let (route, via) = self.for_host(host, ns)?;
                (route, via, path, None)
            }
        };
        let path = match path.name() {
            Some(name) if route.docker_hub => {
                let canonical = name.clone().with_library_prefix();
                path.with_name(canonical)
            }
            _ => path,
        };
        Ok(Routed {
            route,
            via,
            path,
            client_prefix,
        })
    }
}

/// A Host header or SNI name as a route key: lowercase, without port or trailing dot.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, registry: &str, hosts: &[&str], docker_hub: bool) -> Route {
        Route {
            name: name.into(),
            registry: registry.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: Origin::parse(&format!("https://{registry}")).unwrap(),
            docker_hub,
            credentials: None,
            public: false,
            share: Default::default(),
        }
    }

    fn table(default: Option<&str>) -> RouteTable {
        RouteTable::new(
            vec![
                route("docker", "docker.io", &["docker.example.com"], true),
                route(
                    "docker-staging",
                    "docker.io",
                    &["docker-staging.example.com"],
                    true,
                ),
                route("quay", "quay.io", &["quay.example.com"], false),
                route("corp", "reg.corp", &["127.0.0.2"], false),
            ],
            default,
        )
        .unwrap()
    }

    fn path(p: &str) -> V2Path {
        p.parse().unwrap()
    }

    #[test]
    fn host_normalisation() {
        for (raw, want) in [
            ("Docker.Example.COM:8443", "docker.example.com"),
            ("docker.example.com.", "docker.example.com"),
            ("127.0.0.2:5000", "127.0.0.2"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }

    #[test]
    fn four_ways_in() {
        let t = table(Some("docker"));
        let cases = [
            // (host, ns, path, route, via, upstream path)
            (
                "quay.example.com:443",
                None,
                "/v2/coreos/etcd/manifests/v3",
                "quay",
                Via::Host,
                "/v2/coreos/etcd/manifests/v3",
            ),
            (
                "QUAY.example.com",
                None,
                "/v2/a/tags/list",
                "quay",
                Via::Host,
                "/v2/a/tags/list",
            ),
            (
                "mirror.local",
                None,
                "/v2/nginx/manifests/latest",
                "docker",
                Via::Default,
                "/v2/library/nginx/manifests/latest",
            ),
            (
                "mirror.local",
                Some("quay.io"),
                "/v2/a/b/manifests/1",
                "quay",
                Via::Namespace,
                "/v2/a/b/manifests/1",
            ),
            (
                "mirror.local",
                Some("docker.io"),
                "/v2/busybox/manifests/1",
                "docker",
                Via::Namespace,
                "/v2/library/busybox/manifests/1",
            ),
            (
                "mirror.local",
                None,
                "/v2/quay.io/coreos/etcd/manifests/v3",
                "quay",
                Via::PathPrefix,
                "/v2/coreos/etcd/manifests/v3",
            ),
            (
                "docker.example.com",
                None,
                "/v2/docker.io/nginx/manifests/1",
                "docker",
                Via::PathPrefix,
                "/v2/library/nginx/manifests/1",
            ),
            (
                "docker-staging.example.com",
                None,
                "/v2/x/y/manifests/1",
                "docker-staging",
                Via::Host,
                "/v2/x/y/manifests/1",
            ),
            (
                "127.0.0.2:9000",
                None,
                "/v2/team/app/manifests/1",
                "corp",
                Via::Host,
                "/v2/team/app/manifests/1",
            ),
            // a one-component name is a repository, not a prefix
            (
                "mirror.local",
                None,
                "/v2/quay.io/manifests/1",
                "docker",
                Via::Default,
                "/v2/library/quay.io/manifests/1",
            ),
        ];
        for (host, ns, p, name, via, upstream_path) in cases {
            let r = t.route(Some(host), ns, path(p)).unwrap();
            assert_eq!(
                (r.route.name.as_str(), r.via),
                (name, via),
                "{host} {ns:?} {p}"
            );
            assert_eq!(r.path.to_string(), upstream_path, "{host} {ns:?} {p}");
        }
        let prefixed = t
            .route(None, None, path("/v2/quay.io/a/b/manifests/1"))
            .unwrap();
        assert_eq!(prefixed.client_prefix.as_deref(), Some("quay.io"));
    }

    #[test]
    fn no_route() {
        let t = table(None);
        assert_eq!(
            t.route(Some("other.test"), None, path("/v2/a/manifests/1"))
                .unwrap_err(),
            NoRoute::Host("other.test".into())
        );
        assert_eq!(
            t.route(
                Some("docker.example.com"),
                Some("ghcr.io"),
                path("/v2/a/manifests/1")
            )
            .unwrap_err(),
            NoRoute::Namespace("ghcr.io".into())
        );
        assert!(t.for_host(None, None).is_err());
    }

    #[test]
    fn table_errors() {
        let dup = RouteTable::new(
            vec![
                route("a", "a.io", &["x.test"], false),
                route("b", "b.io", &["x.test"], false),
            ],
            None,
        );
        assert!(matches!(dup, Err(RouteTableError::DuplicateHost { .. })));
        let bad_default = RouteTable::new(vec![route("a", "a.io", &[], false)], Some("zz"));
        assert_eq!(
            bad_default.unwrap_err(),
            RouteTableError::UnknownDefault("zz".into())
        );
    }
}
