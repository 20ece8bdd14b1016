//! `plan`: what to do with a request, decided from its method, path, query and Host alone.

use std::sync::Arc;

use http::Method;

use crate::registry::path::PathError;
use crate::registry::reference::ReferenceError;
use crate::registry::{ErrorCode, RegistryError, V2Path};
use crate::routes::{NoRoute, Route, RouteTable, Via};

use super::token::TokenRequest;

/// The parts of a request that decide its plan.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Host header (HTTP/2 :authority).
    pub host: Option<&'a str>,
    /// The TLS SNI name, for when the Host names no route.
    pub sni: Option<&'a str>,
}

/// A response the mirror writes itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Canned {
    /// `/` -> `/v2/`.
    RedirectToV2,
    /// `/healthz`.
    Healthy,
    /// `/v2/` on a name that routes nowhere: the mirror speaks the API itself. Path-prefix
    /// clients (podman's `registries.conf` mirrors) ping the mirror's own name first.
    ApiVersion,
    Error(RegistryError),
    /// Over a per-client limit: 429 with `Retry-After`.
    TooMany(std::time::Duration),
    /// `/v2/` while the upstream is unavailable: the mirror's challenge for its own realm.
    Challenge {
        realm: String,
        service: Option<String>,
    },
    /// A token request while the upstream's realm is unavailable (see `offline`).
    OfflineToken,
    /// A HEAD by tag answered from the tag's pointer (`proxy::tags`).
    TagHead(crate::cache::pointer::TagHead),
}

/// What the upstream is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A registry API request, with the path as the upstream names it.
    Registry {
        path: V2Path,
        /// The client's query without `ns`.
        query: Option<String>,
        /// The registry prefix the client used, to put back into auth scopes.
        client_prefix: Option<String>,
    },
    /// A token request for the upstream's realm, in the upstream's names.
    Token {
        request: TokenRequest,
        client_prefix: Option<String>,
    },
}

impl Target {
    pub fn client_prefix(&self) -> Option<&str> {
        match self {
            Target::Registry { client_prefix, .. } | Target::Token { client_prefix, .. } => {
                client_prefix.as_deref()
            }
        }
    }

    /// The registry path and query to send to the route's upstream.
    pub fn registry_path_and_query(&self) -> String {
        match self {
            Target::Registry { path, query, .. } => match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            },
            // Learning the realm: the version check answers with the challenge.
            Target::Token { .. } => V2Path::Ping.to_string(),
        }
    }
}

/// The decision for one request.
#[derive(Debug, Clone)]
pub enum Plan {
    Respond(Canned),
    Forward {
        route: Arc<Route>,
        via: Via,
        target: Target,
    },
}

/// Decides what to do with a request.
pub fn plan(routes: &RouteTable, req: Incoming<'_>) -> Plan {
    match req.path {
        "/" => return Plan::Respond(Canned::RedirectToV2),
        "/healthz" => return Plan::Respond(Canned::Healthy),
        _ => {}
    }
    let path = match req.path.parse::<V2Path>() {
        Ok(p) => p,
        Err(e) => return Plan::Respond(Canned::Error(path_error(e))),
    };
    if !matches!(*req.method, Method::GET | Method::HEAD) {
        return unsupported(format!(
            "{} is not supported: this is a read-only mirror",
            req.method
        ));
    }
    let ns = query_param(req.query, "ns");
    let ns = ns.as_deref();
    // The SNI name routes when the Host does not (a client that sends an IP as Host).
    let (host, by_sni) = match (req.host, req.sni) {
        (Some(h), _) if routes.has_host(h) => (Some(h), false),
        (_, Some(sni)) if routes.has_host(sni) => (Some(sni), true),
        (h, _) => (h, false),
    };
    let sni_via = |via: Via| {
        if by_sni && via == Via::Host {
            Via::Sni
        } else {
            via
        }
    };
    match path {
        V2Path::Ping if ns.is_none() && routes.for_host(host, None).is_err() => {
            Plan::Respond(Canned::ApiVersion)
        }
        V2Path::Upload { .. } => {
            unsupported("pushing is not supported: this is a read-only mirror".into())
        }
        V2Path::Auth => {
            let request = TokenRequest::parse(req.query);
            let prefixed = match ns {
                None => request
                    .leading_component()
                    .and_then(|first| Some((routes.by_registry(first)?.clone(), first.to_owned()))),
                Some(_) => None,
            };
            let (route, via, client_prefix) = match prefixed {
                Some((route, prefix)) => (route, Via::PathPrefix, Some(prefix)),
                None => match routes.for_host(host, ns) {
                    Ok((route, via)) => (route, sni_via(via), None),
                    Err(e) => return Plan::Respond(Canned::Error(no_route(routes, e))),
                },
            };
            let request = request.for_upstream(client_prefix.as_deref(), route.docker_hub);
            Plan::Forward {
                route,
                via,
                target: Target::Token {
                    request,
                    client_prefix,
                },
            }
        }
        path => match routes.route(host, ns, path) {
            Ok(routed) => Plan::Forward {
                route: routed.route,
                via: sni_via(routed.via),
                target: Target::Registry {
                    path: routed.path,
                    query: query_without_ns(req.query),
                    client_prefix: routed.client_prefix,
                },
            },
            Err(e) => Plan::Respond(Canned::Error(no_route(routes, e))),
        },
    }
}

fn unsupported(message: String) -> Plan {
    Plan::Respond(Canned::Error(RegistryError::new(
        405,
        ErrorCode::Unsupported,
        message,
    )))
}

fn path_error(e: PathError) -> RegistryError {
    match e {
        PathError::NotV2 => RegistryError::new(
            404,
            ErrorCode::NameUnknown,
            "not found: registry API paths start with /v2/",
        ),
        PathError::UnknownEndpoint => {
            RegistryError::new(404, ErrorCode::Unsupported, "unknown registry endpoint")
        }
        PathError::Reference(e @ ReferenceError::Name(_)) => {
            RegistryError::new(400, ErrorCode::NameInvalid, e.to_string())
        }
        // No manifest can have a name that is not a tag: the spec (and its conformance
        // suite, with `.INVALID_MANIFEST_NAME`) wants 404, as for any unknown tag.
        PathError::Reference(e @ ReferenceError::Tag(_)) => {
            RegistryError::new(404, ErrorCode::ManifestUnknown, e.to_string())
        }
        PathError::Reference(e @ ReferenceError::Digest(_)) => {
            RegistryError::new(400, ErrorCode::DigestInvalid, e.to_string())
        }
    }
}

/// 404 with the list of routes, so an operator sees what the mirror answers to.
/// The 404 for a request no route takes, listing how to reach each route: names, registries
/// and hosts, never the upstream URLs (an internal registry's address is nobody's business).
fn no_route(routes: &RouteTable, e: NoRoute) -> RegistryError {
    let list: Vec<_> = routes
        .routes()
        .iter()
        .map(|r| serde_json::json!({ "name": r.name, "registry": r.registry, "hosts": r.hosts }))
        .collect();
    RegistryError::new(404, ErrorCode::NameUnknown, e.to_string())
        .with_detail(serde_json::json!({ "routes": list }))
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The query to forward: everything but containerd's routing-only `ns`.
fn query_without_ns(query: Option<&str>) -> Option<String> {
    let query = query.filter(|q| !q.is_empty())?;
    if !query.split('&').any(|p| p == "ns" || p.starts_with("ns=")) {
        return Some(query.to_owned());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && *p != "ns" && !p.starts_with("ns="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn routes() -> RouteTable {
        config::parse("domain: example.com\ndefault_route: docker")
            .unwrap()
            .routes
    }

    fn run(method: Method, path: &str, query: Option<&str>, host: &str) -> Plan {
        plan(
            &routes(),
            Incoming {
                method: &method,
                path,
                query,
                host: Some(host),
                sni: None,
            },
        )
    }

    fn status(p: Plan) -> u16 {
        match p {
            Plan::Respond(Canned::Error(e)) => e.status,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn canned_answers() {
        assert!(matches!(
            run(Method::GET, "/", None, "m"),
            Plan::Respond(Canned::RedirectToV2)
        ));
        assert!(matches!(
            run(Method::GET, "/healthz", None, "m"),
            Plan::Respond(Canned::Healthy)
        ));
        assert_eq!(status(run(Method::GET, "/favicon.ico", None, "m")), 404);
        assert_eq!(
            status(run(Method::PUT, "/v2/a/manifests/1", None, "m")),
            405
        );
        assert_eq!(
            status(run(Method::POST, "/v2/a/blobs/uploads/", None, "m")),
            405
        );
        assert_eq!(
            status(run(Method::GET, "/v2/a/blobs/uploads/", None, "m")),
            405
        );
        assert_eq!(
            status(run(Method::GET, "/v2/A/manifests/1", None, "m")),
            400
        );
        assert_eq!(
            status(run(Method::GET, "/v2/a/blobs/sha256:1", None, "m")),
            400
        );
        // Conformance: a name that cannot be a tag is an unknown manifest.
        for bad in [".INVALID_MANIFEST_NAME", "t\u{e4}g", "-x"] {
            let plan = run(Method::GET, &format!("/v2/a/manifests/{bad}"), None, "m");
            let Plan::Respond(Canned::Error(e)) = plan else {
                panic!("{bad}: {plan:?}");
            };
            assert_eq!(
                (e.status, e.code),
                (404, ErrorCode::ManifestUnknown),
                "{bad}"
            );
        }
        assert_eq!(
            status(run(
                Method::GET,
                "/v2/a/manifests/1",
                Some("ns=nope.io"),
                "m"
            )),
            404
        );
    }

    #[test]
    fn registry_requests() {
        let Plan::Forward { route, via, target } = run(
            Method::GET,
            "/v2/nginx/manifests/latest",
            Some("ns=docker.io"),
            "m",
        ) else {
            panic!()
        };
        assert_eq!((route.name.as_str(), via), ("docker", Via::Namespace));
        assert_eq!(
            target.registry_path_and_query(),
            "/v2/library/nginx/manifests/latest"
        );
        let Plan::Forward { target, .. } = run(
            Method::GET,
            "/v2/a/tags/list",
            Some("n=10&ns=quay.io&last=x"),
            "m",
        ) else {
            panic!()
        };
        assert_eq!(
            target.registry_path_and_query(),
            "/v2/a/tags/list?n=10&last=x"
        );
    }

    #[test]
    fn token_requests() {
        let Plan::Forward { route, via, target } = run(
            Method::GET,
            "/v2/auth",
            Some("service=quay.io&scope=repository:quay.io/coreos/etcd:pull"),
            "mirror",
        ) else {
            panic!()
        };
        assert_eq!((route.name.as_str(), via), ("quay", Via::PathPrefix));
        let Target::Token {
            request,
            client_prefix,
        } = target
        else {
            panic!()
        };
        assert_eq!(request.scopes, vec!["repository:coreos/etcd:pull"]);
        assert_eq!(client_prefix.as_deref(), Some("quay.io"));

        let Plan::Forward { route, target, .. } = run(
            Method::GET,
            "/v2/auth",
            Some("scope=repository:nginx:pull"),
            "docker.example.com:443",
        ) else {
            panic!()
        };
        assert_eq!(route.name, "docker");
        let Target::Token { request, .. } = target else {
            panic!()
        };
        assert_eq!(request.scopes, vec!["repository:library/nginx:pull"]);
    }

    #[test]
    fn sni_routes_when_host_does_not() {
        let t = routes();
        let incoming = |host, sni| Incoming {
            method: &Method::GET,
            path: "/v2/a/b/manifests/1",
            query: None,
            host,
            sni,
        };
        let pick = |p: Plan| match p {
            Plan::Forward { route, via, .. } => (route.name.clone(), via),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            pick(plan(
                &t,
                incoming(Some("127.0.0.1:8443"), Some("quay.example.com"))
            )),
            ("quay".into(), Via::Sni)
        );
        assert_eq!(
            pick(plan(
                &t,
                incoming(Some("ghcr.example.com"), Some("quay.example.com"))
            )),
            ("ghcr".into(), Via::Host)
        );
        assert_eq!(
            pick(plan(&t, incoming(Some("x"), Some("unknown.test")))),
            ("docker".into(), Via::Default)
        );
    }

    #[test]
    fn ns_is_not_forwarded() {
        for (q, want) in [
            (None, None),
            (Some(""), None),
            (Some("ns=docker.io"), None),
            (Some("ns=docker.io&n=1"), Some("n=1")),
            (Some("n=1&nsx=2"), Some("n=1&nsx=2")),
        ] {
            assert_eq!(query_without_ns(q).as_deref(), want, "{q:?}");
        }
    }
}
