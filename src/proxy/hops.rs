//! `Hop`: one request to an upstream, and the pure decisions that produce the next one
//! (the route's registry, a followed redirect, the token realm).

use url::{Position, Url};

use crate::redirect::{RedirectAction, RedirectPolicy, RedirectReason};
use crate::routes::Route;
use crate::upstream::{Origin, OriginError};

use super::plan::Target;
use super::token::{TokenRequest, UpstreamRealm};

/// One request to an upstream: the route's registry, a redirect target, or a token realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub origin: Origin,
    pub path_and_query: String,
    /// Only the route's own upstream and the realm it named see the client's credentials;
    /// a redirect target never does (OCI distribution spec: do not forward `Authorization`
    /// across hosts; S3 and R2 reject presigned requests that carry it).
    pub send_authorization: bool,
    pub kind: HopKind,
}

/// What the hop is for, which decides how its response is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopKind {
    /// The registry API of the route's upstream.
    Registry,
    /// A redirect target followed on the client's behalf.
    Redirect,
    /// `GET /v2/` to learn the upstream's token realm before relaying a token request.
    RealmDiscovery,
    /// The upstream's token realm.
    Realm,
    /// The object's owner in the cluster (`crate::cluster`): the client's request as it came.
    Peer,
}

impl Hop {
    /// The absolute URL of this hop, to resolve relative redirects against.
    pub fn url(&self) -> String {
        format!("{}{}", self.origin, self.path_and_query)
    }

    fn to(url: &Url, send_authorization: bool, kind: HopKind) -> Result<Hop, OriginError> {
        Ok(Hop {
            origin: Origin::of(url)?,
            path_and_query: url[Position::BeforePath..Position::AfterQuery].to_owned(),
            send_authorization,
            kind,
        })
    }
}

/// The first hop of a forwarded request. A token request goes straight to the realm once it
/// is known; before that, to the registry's `/v2/` to learn it.
pub fn first_hop(
    route: &Route,
    target: &Target,
    realm: Option<&UpstreamRealm>,
) -> Result<Hop, OriginError> {
    match (target, realm) {
        (Target::Token { request, .. }, Some(realm)) => realm_hop(request, realm),
        (Target::Token { .. }, None) => Ok(Hop {
            origin: route.upstream.clone(),
            path_and_query: target.registry_path_and_query(),
            // The challenge comes to anonymous requests; credentials are for the realm.
            send_authorization: false,
            kind: HopKind::RealmDiscovery,
        }),
        (Target::Registry { .. }, _) => Ok(registry_hop(route, target)),
    }
}

/// The hop of a registry API request: the route's upstream, the request's path.
pub fn registry_hop(route: &Route, target: &Target) -> Hop {
    Hop {
        origin: route.upstream.clone(),
        path_and_query: target.registry_path_and_query(),
        send_authorization: true,
        kind: HopKind::Registry,
    }
}

/// The token request as a hop to the upstream's realm, with the client's credentials.
pub fn realm_hop(request: &TokenRequest, realm: &UpstreamRealm) -> Result<Hop, OriginError> {
    Hop::to(&request.realm_url(realm), true, HopKind::Realm)
}

/// What to do with a redirect from `hop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectOutcome {
    /// Fetch this next, inside the mirror.
    Follow(Hop, RedirectReason),
    /// Hand the redirect to the client, with this absolute Location.
    ToClient(String, RedirectReason),
    /// More than `max_hops` redirects.
    TooMany(u8),
    /// The Location cannot be used.
    Invalid(String),
}

/// Decides a redirect: resolve `location` against the hop's URL and classify its host.
pub fn on_redirect(
    policy: &RedirectPolicy,
    hop: &Hop,
    location: &str,
    followed: u8,
) -> RedirectOutcome {
    let base = match Url::parse(&hop.url()) {
        Ok(u) => u,
        Err(e) => return RedirectOutcome::Invalid(format!("bad hop URL: {e}")),
    };
    let target = match base.join(location) {
        Ok(u) => u,
        Err(e) => return RedirectOutcome::Invalid(format!("Location {location:?}: {e}")),
    };
    let Some(host) = target
        .host_str()
        .filter(|_| matches!(target.scheme(), "http" | "https"))
    else {
        // Not something the mirror can fetch: the client may know what to do.
        return RedirectOutcome::ToClient(target.into(), RedirectReason::Other);
    };
    match policy.classify(host) {
        (RedirectAction::ToClient, reason) => RedirectOutcome::ToClient(target.into(), reason),
        (RedirectAction::Follow, _) if followed >= policy.max_hops => {
            RedirectOutcome::TooMany(policy.max_hops)
        }
        (RedirectAction::Follow, reason) => match Hop::to(&target, false, HopKind::Redirect) {
            Ok(next) => RedirectOutcome::Follow(next, reason),
            Err(e) => RedirectOutcome::Invalid(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(url: &str, kind: HopKind) -> Hop {
        Hop::to(&Url::parse(url).unwrap(), true, kind).unwrap()
    }

    #[test]
    fn redirects() {
        let policy = RedirectPolicy::default();
        let reg = hop(
            "https://registry-1.docker.io/v2/library/x/blobs/sha256:1",
            HopKind::Registry,
        );
        let RedirectOutcome::Follow(next, _) = on_redirect(
            &policy,
            &reg,
            "https://production.cloudflare.docker.com/a/b?sig=1",
            0,
        ) else {
            panic!()
        };
        assert_eq!(next.origin.host, "production.cloudflare.docker.com");
        assert_eq!(next.path_and_query, "/a/b?sig=1");
        assert!(!next.send_authorization);
        assert_eq!(next.kind, HopKind::Redirect);

        let RedirectOutcome::Follow(rel, _) = on_redirect(&policy, &reg, "/v2/other?x=1", 0) else {
            panic!()
        };
        assert_eq!(rel.url(), "https://registry-1.docker.io/v2/other?x=1");
        let RedirectOutcome::Follow(dots, _) = on_redirect(&policy, &reg, "../other", 0) else {
            panic!()
        };
        assert_eq!(
            dots.url(),
            "https://registry-1.docker.io/v2/library/x/other"
        );

        let storage = "https://docker-images-prod.abc.r2.cloudflarestorage.com/x?X-Amz-Signature=1";
        assert!(matches!(
            on_redirect(&policy, &reg, storage, 1),
            RedirectOutcome::ToClient(loc, _) if loc == storage
        ));
        assert_eq!(
            on_redirect(&policy, &reg, "/again", 5),
            RedirectOutcome::TooMany(5)
        );
        assert!(matches!(
            on_redirect(&policy, &reg, "http://[::1", 0),
            RedirectOutcome::Invalid(_)
        ));
        assert!(matches!(
            on_redirect(&policy, &reg, "ftp://x/y", 0),
            RedirectOutcome::ToClient(..)
        ));
    }
}
