//! The token relay: `GET /v2/auth?service=..&scope=..` becomes a request to the upstream's
//! realm with the same service and every scope, in the upstream's own names.

use url::Url;

use crate::registry::auth::{map_scopes, Scope};
use crate::registry::{Challenge, RepoName};

/// A client's token request, as parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRequest {
    pub service: Option<String>,
    /// Scopes in the order given; each may be a space-separated list.
    pub scopes: Vec<String>,
    /// Other parameters (`account`, `client_id`, `offline_token`) passed along unchanged.
    pub extra: Vec<(String, String)>,
}

/// What the mirror knows of an upstream's token service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRealm {
    pub realm: Url,
    pub service: Option<String>,
}

impl UpstreamRealm {
    /// From an upstream's Bearer challenge; `None` when it names no usable realm.
    pub fn from_challenge(c: &Challenge) -> Option<UpstreamRealm> {
        if !c.is_bearer() {
            return None;
        }
        let realm = Url::parse(c.realm()?).ok()?;
        if !matches!(realm.scheme(), "http" | "https") {
            return None;
        }
        Some(UpstreamRealm {
            realm,
            service: c.service().map(str::to_owned),
        })
    }
}

impl TokenRequest {
    /// The repositories the scopes name; `None` when a scope is not a repository's
    /// (`registry:catalog:*`) or cannot be read.
    pub fn repositories(&self) -> Option<Vec<String>> {
        let mut repos = Vec::new();
        for scope in self.scopes.iter().flat_map(|s| s.split(' ')) {
            if scope.is_empty() {
                continue;
            }
            let scope = Scope::parse(scope)?;
            if !scope.is_repository() {
                return None;
            }
            repos.push(scope.name);
        }
        Some(repos)
    }

    pub fn parse(query: Option<&str>) -> TokenRequest {
        let mut req = TokenRequest::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "service" => req.service = Some(v.into_owned()),
                "scope" => req.scopes.push(v.into_owned()),
                // routing only, never for the upstream
                "ns" => {}
                _ => req.extra.push((k.into_owned(), v.into_owned())),
            }
        }
        req
    }

    /// The first component of the first repository scope with more than one component:
    /// a registry name when the client uses the path-prefix form.
    pub fn leading_component(&self) -> Option<&str> {
        self.scopes
            .iter()
            .flat_map(|list| list.split(' '))
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, _) = rest.rsplit_once(':')?;
                kind.starts_with("repository").then_some(name)
            })
            .find_map(|name| name.split_once('/').map(|(first, _)| first))
    }

    /// The scopes in the upstream's names: the client's registry prefix removed, Docker Hub's
    /// `library/` added to one-component names.
    pub fn for_upstream(mut self, prefix: Option<&str>, docker_hub: bool) -> TokenRequest {
        let map = |s: &Scope| {
            if !s.is_repository() {
                return s.clone();
            }
            let name = match prefix.and_then(|p| s.name.strip_prefix(p)?.strip_prefix('/')) {
                Some(rest) => rest.to_owned(),
                None => s.name.clone(),
            };
            let name = match name.parse::<RepoName>() {
                Ok(n) if docker_hub => n.with_library_prefix().to_string(),
                _ => name,
            };
            s.with_name(name)
        };
        self.scopes = self.scopes.iter().map(|l| map_scopes(l, map)).collect();
        self
    }

    /// The realm URL to ask: the realm's own query kept, then service, scopes and extras.
    pub fn realm_url(&self, realm: &UpstreamRealm) -> Url {
        let mut url = realm.realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = self.service.as_ref().or(realm.service.as_ref()) {
                q.append_pair("service", service);
            }
            for scope in &self.scopes {
                q.append_pair("scope", scope);
            }
            for (k, v) in &self.extra {
                q.append_pair(k, v);
            }
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realm() -> UpstreamRealm {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        )
        .unwrap();
        UpstreamRealm::from_challenge(&c).unwrap()
    }

    #[test]
    fn relays_every_scope_with_library_prefix() {
        let req = TokenRequest::parse(Some(
            "service=registry.docker.io&scope=repository:nginx:pull&scope=repository:bitnami/redis:pull&account=bob&ns=docker.io",
        ))
        .for_upstream(None, true);
        assert_eq!(
            req.realm_url(&realm()).as_str(),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fnginx%3Apull&scope=repository%3Abitnami%2Fredis%3Apull&account=bob"
        );
    }

    #[test]
    fn path_prefix_scopes_are_stripped() {
        let req = TokenRequest::parse(Some(
            "scope=repository:quay.io/coreos/etcd:pull repository:quay.io/x/y:pull",
        ));
        assert_eq!(req.leading_component(), Some("quay.io"));
        let up = req.for_upstream(Some("quay.io"), false);
        assert_eq!(
            up.scopes,
            vec!["repository:coreos/etcd:pull repository:x/y:pull"]
        );
    }

    #[test]
    fn keeps_realm_query_and_falls_back_to_its_service() {
        let c = Challenge::parse(r#"Bearer realm="https://ghcr.io/token?x=1",service="ghcr.io""#)
            .unwrap();
        let r = UpstreamRealm::from_challenge(&c).unwrap();
        let url = TokenRequest::parse(Some("scope=repository:a/b:pull")).realm_url(&r);
        assert_eq!(
            url.as_str(),
            "https://ghcr.io/token?x=1&service=ghcr.io&scope=repository%3Aa%2Fb%3Apull"
        );
        assert!(TokenRequest::parse(None).leading_component().is_none());
        let basic = Challenge::parse(r#"Basic realm="x""#).unwrap();
        assert!(UpstreamRealm::from_challenge(&basic).is_none());
        let relative = Challenge::parse(r#"Bearer realm="/token""#).unwrap();
        assert!(UpstreamRealm::from_challenge(&relative).is_none());
    }
}
