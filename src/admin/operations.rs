//! The cache endpoints of the admin API: what the cache holds (`GET /cache/entries`, NDJSON,
//! optionally `?repository=GLOB`), how much by route and kind (`GET /cache/usage`), and purges
//! (`POST /cache/purge` with `{"target": DIGEST | IMAGE | REPOSITORY-GLOB}`).

use std::collections::{BTreeMap, HashMap};

use http::Response;
use serde::Deserialize;

use super::{failure, json};
use crate::cache::inventory::{EntryInfo, Selection};
use crate::proxy::Shared;
use crate::registry::image::{split_registry, ImageRef, DOCKER_HUB};

/// Route name -> registry name, how entries (which know their route) are named.
fn registries(shared: &Shared) -> HashMap<String, String> {
    shared
        .routes
        .routes()
        .iter()
        .map(|r| (r.name.clone(), r.registry.clone()))
        .collect()
}

/// A repository glob as operators write it: `REGISTRY/REPOSITORY` with `*` (within one path
/// component), `**` (across them), `?` and `[...]`; Docker Hub short names as images
/// (`nginx*` is `docker.io/library/nginx*`).
pub fn repository_glob(
    text: &str,
    is_registry: impl Fn(&str) -> bool,
) -> Result<globset::GlobMatcher, String> {
    let (registry, rest) = split_registry(text.trim(), is_registry);
    let rest = if registry == DOCKER_HUB && !rest.contains('/') && !rest.starts_with("**") {
        format!("library/{rest}")
    } else {
        rest.to_owned()
    };
    globset::GlobBuilder::new(&format!("{registry}/{rest}"))
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid repository glob {text:?}: {e}"))
}

/// What a purge target names: a digest, an image (with a tag or digest), or repositories.
pub fn selection(text: &str, is_registry: impl Fn(&str) -> bool) -> Result<Selection, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty purge target".into());
    }
    if text.starts_with("sha256:") || text.starts_with("sha512:") {
        return text
            .parse()
            .map(Selection::Digest)
            .map_err(|e| format!("{e}"));
    }
    let has_glob = text.contains(['*', '?', '[', '{']);
    let last = text.rsplit('/').next().unwrap_or(text);
    if !has_glob && (text.contains('@') || last.contains(':')) {
        let image = ImageRef::parse(text, &is_registry).map_err(|e| format!("{e}"))?;
        return Ok(Selection::Image {
            registry: image.registry,
            repository: image.repository.to_string(),
            reference: image.reference,
        });
    }
    repository_glob(text, is_registry).map(Selection::Repositories)
}

/// `GET /cache/entries[?repository=GLOB]`: one JSON line per entry, streamed as the walk
/// finds them; a bad query is refused with the reason.
pub fn entries(
    shared: &std::sync::Arc<Shared>,
    query: &str,
) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, String> {
    let mut glob = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "repository" => {
                let matcher = repository_glob(&value, |r| shared.routes.by_registry(r).is_some())?;
                glob = Some(matcher);
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let shared = shared.clone();
    let registries = registries(&shared);
    tokio::spawn(async move {
        let walk = shared.cache.inventory(registries, move |entry: EntryInfo| {
            if glob
                .as_ref()
                .is_some_and(|g| !entry.full_name().is_some_and(|n| g.is_match(n)))
            {
                return true;
            }
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            tx.blocking_send(line).is_ok()
        });
        if let Err(e) = walk.await {
            log::warn!("cache listing failed: {e}");
        }
    });
    Ok(rx)
}

/// `GET /cache/usage`: entries and bytes by route and kind, and the LRU's totals.
pub async fn usage(shared: &Shared) -> Response<Vec<u8>> {
    use pingora::cache::eviction::EvictionManager;
    #[derive(Default, serde::Serialize)]
    struct Tally {
        entries: u64,
        bytes: u64,
    }
    let tallies = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, Tally>::new()));
    let sink = tallies.clone();
    let walk = shared.cache.inventory(registries(shared), move |entry| {
        let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
        let kind = serde_json::to_value(entry.kind).ok();
        let name = format!(
            "{} {}",
            entry.registry,
            kind.as_ref().and_then(|k| k.as_str()).unwrap_or("?")
        );
        let tally = t.entry(name).or_default();
        tally.entries += 1;
        tally.bytes += entry.size;
        true
    });
    if let Err(e) = walk.await {
        return failure(500, format!("cache walk failed: {e}"));
    }
    let by_kind = std::mem::take(&mut *tallies.lock().unwrap_or_else(|p| p.into_inner()));
    let (entries, bytes) = by_kind
        .values()
        .fold((0, 0), |(e, b), t| (e + t.entries, b + t.bytes));
    let cache = &shared.cache;
    json(
        200,
        &serde_json::json!({
            "entries": entries,
            "bytes": bytes,
            "max_size_bytes": cache.max_size,
            "lru": {
                "items": cache.eviction.total_items(),
                "bytes": cache.eviction.total_size(),
                "evicted_items": cache.eviction.evicted_items(),
            },
            "by_registry_and_kind": by_kind,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    target: String,
}

/// `POST /cache/purge`.
pub async fn purge(shared: &Shared, body: &[u8]) -> Response<Vec<u8>> {
    let request: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return failure(400, format!("bad purge request: {e}")),
    };
    let selection = match selection(&request.target, |r| shared.routes.by_registry(r).is_some()) {
        Ok(s) => s,
        Err(e) => return failure(400, e),
    };
    if let Selection::Image { registry, .. } = &selection {
        if shared.routes.by_registry(registry).is_none() {
            return failure(400, format!("unknown registry {registry:?}"));
        }
    }
    match shared.cache.purge(registries(shared), &selection).await {
        Ok(report) => json(200, &report),
        Err(e) => failure(500, format!("purge failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_targets() {
        let known = |r: &str| r == "corp";
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(selection(d, known), Ok(Selection::Digest(_))));
        assert!(selection("sha256:12", known).is_err());
        assert!(matches!(
            selection("nginx:1.27", known),
            Ok(Selection::Image { ref repository, .. }) if repository == "library/nginx"
        ));
        let Ok(Selection::Repositories(g)) = selection("nginx", known) else {
            panic!("a bare name is a repository");
        };
        assert!(g.is_match("docker.io/library/nginx"));
        assert!(!g.is_match("docker.io/library/nginx2"));
        let Ok(Selection::Repositories(g)) = selection("corp/team/*", known) else {
            panic!("a glob is repositories");
        };
        assert!(g.is_match("corp/team/app"));
        assert!(!g.is_match("corp/team/app/sub"));
        assert!(!g.is_match("docker.io/team/app"));
        let Ok(Selection::Repositories(g)) = selection("quay.io/**", known) else {
            panic!("a glob is repositories");
        };
        assert!(g.is_match("quay.io/a/b/c"));
        assert!(selection("", known).is_err());
        assert!(selection("docker.io/[", known).is_err());
    }
}
