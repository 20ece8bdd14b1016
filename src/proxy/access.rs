//! Access checks for cached content filled with credentials (policy in `cache::access`): an
//! anonymous probe decides whether a repository is public, and a HEAD with the reader's own
//! credentials decides whether a private one may be served to them.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use log::debug;
use pingora::http::RequestHeader;

use super::{Mirror, RequestCtx, Shared};
use crate::cache::key::{self, MANIFEST_ACCEPT};
use crate::proxy::plan::Target;
use crate::proxy::token::{TokenRequest, UpstreamRealm};
use crate::registry::{Challenge, V2Path};
use crate::routes::Route;
use crate::upstream::Credentials;

/// Whether what the upstream answers this request is private to its credentials: it went
/// with credentials (the client's or the route's), and neither the route (`public: true`)
/// nor `credentials.share` publishes the repository.
pub(super) fn learned_privately(req: &RequestHeader, ctx: &RequestCtx) -> bool {
    let with_credentials = ctx.route_credentials || req.headers.contains_key(header::AUTHORIZATION);
    let published = ctx.route.as_ref().is_some_and(|r| {
        r.public
            || ctx
                .registry_path()
                .and_then(|p| p.name())
                .is_some_and(|repo| r.share.matches(repo.as_str()))
    });
    with_credentials && !published
}

/// The upstream could not be asked: nothing decided.
struct Unreachable;

/// Largest token response read from a realm.
const TOKEN_LIMIT: usize = 64 * 1024;

impl Mirror {
    /// Whether this reader may be served a cached entry that was filled with credentials,
    /// through repository `filled_via` (the mark's value).
    pub(super) async fn may_read_private(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        filled_via: &[u8],
    ) -> bool {
        let (Some(route), Some(repo), Some(target)) = (
            ctx.route.as_deref(),
            ctx.registry_path().and_then(|p| p.name()),
            ctx.target.as_ref(),
        ) else {
            return false;
        };
        let path = target.registry_path_and_query();
        let probe = probe_for(ctx.registry_path());
        let s = &self.shared;
        let book = &s.cache.access;
        let repo = repo.as_str();
        let credential = req.headers.get(header::AUTHORIZATION);
        if filled_via != repo.as_bytes() {
            return s
                .may_read_through(route, repo, &path, credential, probe)
                .await;
        }
        if route.share.matches(repo) {
            return true;
        }
        if credential.is_some_and(|c| book.granted(&route.name, repo, c.as_bytes())) {
            return true;
        }
        if s.repository_is_public(route, &path, repo, probe).await {
            return true;
        }
        let Some(credential) = credential else {
            debug!(target: super::CACHE_LOG,
                "route {}: cached {repo} is private and the client sent no credentials",
                route.name
            );
            return false;
        };
        let allowed = s.credential_accepted(route, &path, credential, probe).await;
        if allowed {
            book.grant(&route.name, repo, credential.as_bytes());
        }
        allowed
    }

    /// Whether the route's own credentials may go with a request for these repositories:
    /// each is published by `credentials.share`, or anyone may read it (the anonymous probe,
    /// remembered). The credentials lift rate limits; they must not open private repositories
    /// of the operator's account to the mirror's clients. No repository: no credentials.
    pub(super) async fn route_credentials_allowed(&self, route: &Route, repos: &[String]) -> bool {
        if repos.is_empty() {
            return false;
        }
        for repo in repos {
            // `public: true` publishes everything the route caches, so it shares everything.
            if route.public || route.share.matches(repo) {
                continue;
            }
            let path = format!("/v2/{repo}/manifests/latest");
            if !self
                .shared
                .repository_is_public(route, &path, repo, Probe::repository())
                .await
            {
                debug!(target: super::CACHE_LOG,
                    "route {}: {repo} is not public and not shared: the route's credentials stay out",
                    route.name
                );
                return false;
            }
        }
        true
    }

    /// For a request without the client's own credentials on a route with its own: whether
    /// they go upstream (`ctx.route_credentials`), decided only where they would be used
    /// (Basic on a token request, a static token on a registry request).
    pub(super) async fn decide_route_credentials(&self, ctx: &mut RequestCtx) {
        let Some(route) = ctx.route.clone() else {
            return;
        };
        let repos = match (&route.credentials, ctx.target.as_ref()) {
            (Some(Credentials::Basic(_)), Some(Target::Token { request, .. })) => {
                request.repositories().unwrap_or_default()
            }
            (Some(Credentials::Bearer(_)), Some(Target::Registry { path, .. })) => {
                path.name().map(|n| vec![n.to_string()]).unwrap_or_default()
            }
            _ => return,
        };
        ctx.route_credentials = self.route_credentials_allowed(&route, &repos).await;
    }

    /// Decides in the background whether a repository just filled with credentials is public,
    /// so the next reader need not wait for (or cause) the probe.
    pub(super) fn probe_in_background(&self, ctx: &RequestCtx) {
        let (Some(route), Some(repo), Some(target)) = (
            ctx.route.clone(),
            ctx.registry_path().and_then(|p| p.name()),
            ctx.target.as_ref(),
        ) else {
            return;
        };
        if self
            .shared
            .cache
            .access
            .is_public(&route.name, repo.as_str())
            .is_some()
        {
            return;
        }
        let (shared, repo, path) = (
            self.shared.clone(),
            repo.to_string(),
            target.registry_path_and_query(),
        );
        let probe = probe_for(ctx.registry_path());
        tokio::spawn(async move {
            shared
                .repository_is_public(&route, &path, &repo, probe)
                .await;
        });
    }
}

impl Shared {
    /// Whether content by digest that was filled with credentials through *another*
    /// repository may be served through `repo` (one copy per digest): only if the upstream
    /// would serve it there, to anyone (an anonymous HEAD of this very path) or to this
    /// client's credentials (a HEAD with them), remembered per repository, path and
    /// credential. A repository's public verdict alone is not enough: a public repository
    /// need not hold a private one's blobs. Unanswered: refused.
    async fn may_read_through(
        self: &Arc<Self>,
        route: &Route,
        repo: &str,
        path: &str,
        credential: Option<&HeaderValue>,
        probe: Probe,
    ) -> bool {
        let book = &self.cache.access;
        let presented = credential.map_or(&b""[..], |c| c.as_bytes());
        if book.holds(&route.name, repo, path, b"")
            || book.holds(&route.name, repo, path, presented)
        {
            return true;
        }
        if self.probe_anonymously(route, path, repo, probe).await == Some(true) {
            book.hold(&route.name, repo, path, b"");
            return true;
        }
        let Some(credential) = credential else {
            debug!(target: super::CACHE_LOG,
                "route {}: {path} is cached private through another repository; not readable through {repo} by anyone",
                route.name
            );
            return false;
        };
        let allowed = self
            .credential_accepted(route, path, credential, probe)
            .await;
        if allowed {
            book.hold(&route.name, repo, path, credential.as_bytes());
        }
        allowed
    }

    /// Whether the upstream serves `path` to the client's own credentials (one HEAD).
    /// Unanswered counts as refused: private content is served offline only on an answer
    /// still remembered.
    async fn credential_accepted(
        &self,
        route: &Route,
        path: &str,
        credential: &HeaderValue,
        probe: Probe,
    ) -> bool {
        let allowed = self
            .upstream_allows(route, path, Some(credential), probe)
            .await
            .unwrap_or(false);
        debug!(target: super::CACHE_LOG,
            "route {}: upstream {} the client's credentials for {path}",
            route.name,
            if allowed { "accepted" } else { "refused" }
        );
        allowed
    }

    /// Whether anyone may read the repository; probed once per `VERDICT_TTL`, however many
    /// readers ask at once.
    async fn repository_is_public(
        self: &Arc<Self>,
        route: &Route,
        path: &str,
        repo: &str,
        probe: Probe,
    ) -> bool {
        let book = &self.cache.access;
        let verdict = book.verdict(&route.name, repo);
        let decided = verdict
            .get_or_try_init(|| async {
                // Another node's verdict, shared (`cluster::store`), spares the probe.
                if let Some(public) = self.shared_verdict(route, repo).await {
                    book.remember(&route.name, repo, public);
                    return Ok(public);
                }
                let public = self
                    .probe_anonymously(route, path, repo, probe)
                    .await
                    .ok_or(Unreachable)?;
                if let Some(store) = self.store() {
                    store
                        .publish_verdict(&route.name, repo, public, book.verdict_ttl())
                        .await;
                }
                debug!(target: super::CACHE_LOG,
                    "route {}: {repo} is {}",
                    route.name,
                    if public { "public" } else { "private" }
                );
                book.remember(&route.name, repo, public);
                let on_disk = key::verdict_key(route, repo);
                self.cache.write_verdict(&on_disk, repo, public).await;
                Ok::<bool, Unreachable>(public)
            })
            .await;
        match decided {
            Ok(public) => *public,
            // Undecided (the cell stays empty for the next reader): the last verdict stands
            // in, from memory or else from disk (a restart during the outage), for up to
            // `cache.stale_for`; never decided means private.
            Err(Unreachable) => {
                let mut last = book.last_verdict(&route.name, repo);
                if last.is_none() {
                    let on_disk = key::verdict_key(route, repo);
                    last = self
                        .cache
                        .read_verdict(&on_disk)
                        .await
                        .filter(|(_, age)| *age <= self.cache.ttl.stale_for)
                        .map(|(public, _)| public);
                }
                debug!(target: super::CACHE_LOG,
                    "route {}: upstream unavailable, {repo} taken as {} (last verdict {last:?})",
                    route.name,
                    if last == Some(true) { "public" } else { "private" }
                );
                last.unwrap_or(false)
            }
        }
    }

    async fn shared_verdict(&self, route: &Route, repo: &str) -> Option<bool> {
        self.store()?.verdict(&route.name, repo).await
    }

    /// Whether the upstream answers `path` (a HEAD) with these credentials: any answer below
    /// 400 counts (a blob HEAD may redirect to storage). `accept` goes with a manifest's.
    /// `None`: the upstream is unavailable (no answer, 5xx, 429), so nothing was decided.
    async fn upstream_allows(
        &self,
        route: &Route,
        path: &str,
        credential: Option<&HeaderValue>,
        probe: Probe,
    ) -> Option<bool> {
        if self.outages.is_down(&route.name) {
            return None;
        }
        let headers: Vec<_> = credential
            .map(|c| (header::AUTHORIZATION, c))
            .into_iter()
            .chain(probe.accept.map(|a| (header::ACCEPT, a)))
            .collect();
        let answer = self
            .side
            .head(
                &self.resolver,
                &self.upstream,
                &route.upstream,
                path,
                &headers,
            )
            .await;
        let status = |r: &pingora::http::ResponseHeader| r.status.as_u16();
        let resp = self
            .outages
            .answered(&route.name, "access check", answer, status)
            .ok()?;
        Some(probe.readable(status(&resp)))
    }

    /// A HEAD without credentials, or with an anonymous token from the upstream's realm.
    async fn probe_anonymously(
        &self,
        route: &Route,
        path: &str,
        repo: &str,
        probe: Probe,
    ) -> Option<bool> {
        // One deadline for the whole probe (a registry HEAD, a token, the HEAD again), as long
        // as one side request's: readers wait on it.
        let limit = self.upstream.connect_timeout + self.upstream.read_timeout;
        let steps = self.probe_steps(route, path, repo, probe);
        tokio::time::timeout(limit, steps).await.ok().flatten()
    }

    async fn probe_steps(
        &self,
        route: &Route,
        path: &str,
        repo: &str,
        probe: Probe,
    ) -> Option<bool> {
        if self.outages.is_down(&route.name) {
            return None;
        }
        let realm = match self.realms.get(&route.name) {
            Some(r) => r,
            None => {
                // Learn it (or find the registry needs no token at all).
                let headers: Vec<_> = probe
                    .accept
                    .map(|a| (header::ACCEPT, a))
                    .into_iter()
                    .collect();
                let answer = self
                    .side
                    .head(
                        &self.resolver,
                        &self.upstream,
                        &route.upstream,
                        path,
                        &headers,
                    )
                    .await;
                let resp = self
                    .outages
                    .answered(&route.name, "access probe", answer, |r| r.status.as_u16())
                    .ok()?;
                if probe.readable(resp.status.as_u16()) {
                    return Some(true);
                }
                let challenge = Challenge::from_headers(&resp.headers);
                let Some(realm) = challenge.as_ref().and_then(UpstreamRealm::from_challenge) else {
                    return Some(false);
                };
                self.realms.learn(&route.name, realm.clone());
                Arc::new(realm)
            }
        };
        let request = TokenRequest {
            scopes: vec![format!("repository:{repo}:pull")],
            ..TokenRequest::default()
        };
        let url = request.realm_url(&realm);
        let Ok(origin) = crate::upstream::Origin::of(&url) else {
            return Some(false);
        };
        // The realm is the upstream's word: no internal address unless the operator named it.
        match self.resolver.resolve(&origin.host, origin.port).await {
            Ok(addr) if self.may_connect(Some(route), &origin.host, addr.ip()) => {}
            Ok(_) => return Some(false),
            Err(e) => {
                self.outages
                    .mark_down(&route.name, &format!("token realm unresolved: {e}"));
                return None;
            }
        }
        let path_and_query = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let answer = self
            .side
            .get(
                &self.resolver,
                &self.upstream,
                &origin,
                path_and_query,
                &[],
                TOKEN_LIMIT,
            )
            .await;
        let (resp, body) = self
            .outages
            .answered(&route.name, "token realm", answer, |(r, _)| {
                r.status.as_u16()
            })
            .ok()?;
        let token = (resp.status == 200)
            .then(|| anonymous_token(&body))
            .flatten();
        let Some(bearer) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        else {
            return Some(false);
        };
        self.upstream_allows(route, path, Some(&bearer), probe)
            .await
    }
}

/// How an access check's HEAD is asked and read.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Probe {
    /// Every manifest type for a manifest (an OCI one asked for without it is a 404 at
    /// distribution), none for a blob.
    accept: Option<&'static HeaderValue>,
    /// A 404 still shows the repository readable: a repository-level probe asks for a tag
    /// that may not exist (a refused token gets 401, not 404).
    missing_ok: bool,
}

impl Probe {
    /// A repository-level probe: may anyone read `repo` at all?
    pub(super) fn repository() -> Probe {
        Probe {
            accept: Some(&MANIFEST_ACCEPT),
            missing_ok: true,
        }
    }

    /// Any answer below 400 counts (a blob HEAD may redirect to storage).
    fn readable(self, status: u16) -> bool {
        status < 400 || (self.missing_ok && status == 404)
    }
}

/// The probe of the cached content at `path` itself.
fn probe_for(path: Option<&V2Path>) -> Probe {
    Probe {
        accept: matches!(path, Some(V2Path::Manifest { .. })).then(|| &*MANIFEST_ACCEPT),
        missing_ok: false,
    }
}

/// The token of a realm's JSON answer (`token`, or OAuth2's `access_token`).
fn anonymous_token(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = v.get("token").or_else(|| v.get("access_token"))?.as_str()?;
    (!token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_answers() {
        assert_eq!(
            super::anonymous_token(br#"{"token":"abc","expires_in":300}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            super::anonymous_token(br#"{"access_token":"x"}"#).as_deref(),
            Some("x")
        );
        assert_eq!(super::anonymous_token(br#"{"token":""}"#), None);
        assert_eq!(super::anonymous_token(b"<html>"), None);
    }
}
