//! Cache keys. Content by digest (blobs, manifests) is keyed by the upstream and the digest
//! alone: one copy per digest, whichever repository it came through (a base layer shared by
//! a thousand repositories is fetched and stored once; `cache::access` decides who may read
//! it through which name). A tag's entry is keyed by the upstream, the canonical repository
//! name (`nginx` and `library/nginx` share it), the tag and the normalised `Accept`, because a
//! registry answers a tag by what the client accepts (a client asking for a Docker v2
//! manifest must never get an OCI index). Two registries never collide.

use pingora::cache::CacheKey;

use crate::registry::V2Path;
use crate::routes::Route;

/// Manifest media types a registry chooses between, in a fixed order.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// An `Accept` naming every manifest type, for the mirror's own requests about a manifest
/// (access probes): distribution answers an OCI manifest asked for without an OCI `Accept`
/// with 404, which would read as "refused".
pub static MANIFEST_ACCEPT: once_cell::sync::Lazy<http::HeaderValue> =
    once_cell::sync::Lazy::new(|| {
        http::HeaderValue::from_str(&MANIFEST_TYPES.join(", "))
            .expect("media types are valid header text")
    });

/// The manifest types an `Accept` header names, as a bit set in `MANIFEST_TYPES` order.
/// `*/*`, parameters, case and order do not matter; types it does not know are ignored.
pub fn accept_set(accept: &[&str]) -> u8 {
    let mut set = 0u8;
    for header in accept {
        for item in header.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media == "*/*" {
                return u8::MAX;
            }
            if let Some(i) = MANIFEST_TYPES
                .iter()
                .position(|t| t.eq_ignore_ascii_case(media))
            {
                set |= 1 << i;
            }
        }
    }
    set
}

/// A key's text, formatted into one allocation sized for it (`format!` grows its buffer a
/// few times for a key's length; this is on every request).
fn key_text(args: std::fmt::Arguments<'_>) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(192);
    let _ = text.write_fmt(args);
    text
}

/// The cache key for a request, or `None` when it is not cached (tag lists, catalog, auth).
pub fn cache_key(route: &Route, path: &V2Path, accept: &[&str]) -> Option<CacheKey> {
    let primary = match path {
        V2Path::Blob { digest, .. } => key_text(format_args!("{}/blobs/{digest}", route.upstream)),
        V2Path::Manifest { reference, .. } if reference.is_digest() => {
            key_text(format_args!("{}/manifests/{reference}", route.upstream))
        }
        V2Path::Manifest { name, reference } => key_text(format_args!(
            "{}/{name}/manifests/{reference}#accept={:02x}",
            route.upstream,
            accept_set(accept)
        )),
        _ => return None,
    };
    Some(CacheKey::new(primary, route.name.as_str()))
}

/// The key of a tag's pointer (`cache::pointer`): per upstream, repository, tag and
/// normalised `Accept`, like the tag itself, in a namespace no request path reaches.
pub fn pointer_key(route: &Route, path: &V2Path, accept: &[&str]) -> Option<CacheKey> {
    let V2Path::Manifest { name, reference } = path else {
        return None;
    };
    if reference.is_digest() {
        return None;
    }
    let primary = key_text(format_args!(
        "{}/{name}/manifests/{reference}#accept={:02x}#pointer",
        route.upstream,
        accept_set(accept)
    ));
    Some(CacheKey::new(primary, route.name.as_str()))
}

/// The key of a repository's last access verdict (`cache::record`), per upstream and
/// canonical repository name.
pub fn verdict_key(route: &Route, repo: &str) -> CacheKey {
    CacheKey::new(
        format!("{}/{repo}#verdict", route.upstream),
        route.name.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use pingora::cache::key::CacheHashKey;

    use super::*;
    use crate::upstream::Origin;

    fn route(upstream: &str) -> Route {
        Route {
            name: "docker".into(),
            registry: "docker.io".into(),
            hosts: vec![],
            upstream: Origin::parse(upstream).unwrap(),
            docker_hub: true,
            credentials: None,
            public: false,
            share: Default::default(),
        }
    }

    fn key(r: &Route, path: &str, accept: &[&str]) -> Option<String> {
        cache_key(r, &path.parse().unwrap(), accept).map(|k| k.combined())
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accept_normalisation() {
        let oci = "application/vnd.oci.image.index.v1+json";
        let v2 = "application/vnd.docker.distribution.manifest.v2+json";
        assert_eq!(
            accept_set(&[&format!("{v2}, {oci}")]),
            accept_set(&[oci, &format!("{v2};q=0.9")])
        );
        assert_ne!(accept_set(&[v2]), accept_set(&[oci, v2]));
        assert_eq!(accept_set(&["text/html"]), 0);
        assert_eq!(accept_set(&["*/*"]), u8::MAX);
        assert_eq!(accept_set(&[&oci.to_uppercase()]), accept_set(&[oci]));
    }

    #[test]
    fn keys() {
        let hub = route("https://registry-1.docker.io");
        let other = route("https://quay.io");
        let blob = format!("/v2/library/nginx/blobs/{D}");
        assert!(key(&hub, &blob, &[]).is_some());
        assert_ne!(
            key(&hub, &blob, &[]),
            key(&other, &blob, &[]),
            "registries collide"
        );
        // One copy per digest, whatever the repository; tags stay per repository.
        assert_eq!(
            key(&hub, &blob, &[]),
            key(&hub, &format!("/v2/acme/app/blobs/{D}"), &[])
        );
        assert_ne!(
            key(&hub, "/v2/library/nginx/manifests/latest", &[]),
            key(&hub, "/v2/acme/app/manifests/latest", &[])
        );
        // Digests ignore Accept; tags vary on it.
        let by_digest = format!("/v2/library/nginx/manifests/{D}");
        assert_eq!(key(&hub, &by_digest, &["a"]), key(&hub, &by_digest, &[]));
        let tag = "/v2/library/nginx/manifests/latest";
        let v2 = "application/vnd.docker.distribution.manifest.v2+json";
        assert_ne!(key(&hub, tag, &[v2]), key(&hub, tag, &[]));
        assert_eq!(
            key(&hub, tag, &[v2]),
            key(&hub, tag, &[&format!("{v2}, text/plain")])
        );
        assert!(key(&hub, "/v2/library/nginx/tags/list", &[]).is_none());
        assert!(key(&hub, "/v2/", &[]).is_none());
    }
}
