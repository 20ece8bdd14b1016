//! The cache's inventory, for operators: what each entry is and where it came from (its
//! label, kept in the stored header as `x-pullthrough-source` and never sent to a client),
//! the listing behind `pullthrough cache ls` and `du`, and purges by digest, repository glob
//! or image that are safe beside serving.
//!
//! One copy per digest: a blob shared by many repositories carries the label of the one it
//! was filled through, so a repository's purge removes what that repository brought in and
//! leaves what others did.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::UNIX_EPOCH;

use log::{info, warn};
use pingora::cache::eviction::{CacheEntryId, CacheEntryKey, CacheEntryKeyRef, EvictionManager};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{PurgeOutcome, PurgeTarget, PurgeType};
use pingora::cache::trace::Span;
use pingora::cache::{CacheMeta, Storage};
use serde::Serialize;

use super::disk::Committed;
use super::Cache;
use crate::registry::manifest::{ManifestRefs, MANIFEST_MAX_BYTES};
use crate::registry::{Digest, Reference, V2Path};

/// The stored header naming an entry's label. Internal: stripped from every response.
pub const SOURCE_HEADER: &str = "x-pullthrough-source";

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Blob,
    Manifest,
    /// A tag's pointer to its manifest's digest (`cache::pointer`).
    Tag,
    /// A repository's public/private verdict (`cache::record`).
    Verdict,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Blob => "blob",
            EntryKind::Manifest => "manifest",
            EntryKind::Tag => "tag",
            EntryKind::Verdict => "verdict",
        }
    }
}

/// What an entry is and which repository (and tag) it was filled through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub kind: EntryKind,
    pub repository: String,
    pub tag: Option<String>,
}

impl Label {
    /// The label of content a request fills (a blob, a manifest by digest or tag).
    pub fn of_content(path: &V2Path) -> Option<Label> {
        match path {
            V2Path::Blob { name, .. } => Some(Label {
                kind: EntryKind::Blob,
                repository: name.to_string(),
                tag: None,
            }),
            V2Path::Manifest { name, reference } => Some(Label {
                kind: EntryKind::Manifest,
                repository: name.to_string(),
                tag: match reference {
                    Reference::Tag(t) => Some(t.clone()),
                    Reference::Digest(_) => None,
                },
            }),
            _ => None,
        }
    }

    /// The label of a tag's pointer.
    pub fn of_pointer(path: &V2Path) -> Option<Label> {
        let V2Path::Manifest {
            name,
            reference: Reference::Tag(tag),
        } = path
        else {
            return None;
        };
        Some(Label {
            kind: EntryKind::Tag,
            repository: name.to_string(),
            tag: Some(tag.clone()),
        })
    }

    /// The label of a repository's verdict.
    pub fn of_verdict(repository: &str) -> Label {
        Label {
            kind: EntryKind::Verdict,
            repository: repository.to_owned(),
            tag: None,
        }
    }

    /// Reads the header text (`blob library/nginx`, `tag library/nginx:1.27`).
    pub fn parse(text: &str) -> Option<Label> {
        let (kind, rest) = text.split_once(' ')?;
        let kind = match kind {
            "blob" => EntryKind::Blob,
            "manifest" => EntryKind::Manifest,
            "tag" => EntryKind::Tag,
            "verdict" => EntryKind::Verdict,
            _ => return None,
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(tag.to_owned())),
            None => (rest, None),
        };
        Some(Label {
            kind,
            repository: repository.to_owned(),
            tag,
        })
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// One entry as `cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// The route it came through, and that route's registry name.
    pub route: String,
    pub registry: String,
    pub kind: EntryKind,
    /// The repository it was filled through; absent for entries older than labels.
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// The content's digest; for a tag, the digest it points to.
    pub digest: Option<String>,
    pub size: u64,
    /// When it was stored (unix seconds).
    pub created: u64,
    /// When it was last read, if this process remembers (unix seconds).
    pub last_read: Option<u64>,
    #[serde(skip)]
    identity: CacheEntryKey,
}

impl EntryInfo {
    /// `registry/repository`, the name repository globs match.
    pub fn full_name(&self) -> Option<String> {
        Some(format!("{}/{}", self.registry, self.repository.as_deref()?))
    }

    fn describe(
        found: Committed,
        registries: &HashMap<String, String>,
        last_read: Option<u32>,
    ) -> EntryInfo {
        let Committed {
            key,
            generation,
            size,
            meta,
        } = found;
        let headers = meta.headers();
        let text = |name: &str| Some(headers.get(name)?.to_str().ok()?.to_owned());
        let label = text(SOURCE_HEADER).and_then(|t| Label::parse(&t));
        let pointer = super::pointer::TagPointer::from_meta(&meta);
        let kind = match &label {
            Some(l) => l.kind,
            None if headers.contains_key(super::record::VERDICT) => EntryKind::Verdict,
            None if pointer.is_some() => EntryKind::Tag,
            None if is_manifest(&meta) => EntryKind::Manifest,
            None => EntryKind::Blob,
        };
        let digest = match kind {
            EntryKind::Tag => pointer.map(|p| p.digest.to_string()),
            EntryKind::Verdict => None,
            _ => text(super::verify::DIGEST_HEADER),
        };
        let route = key.user_tag.to_string();
        EntryInfo {
            registry: registries
                .get(&route)
                .cloned()
                .unwrap_or_else(|| route.clone()),
            route,
            kind,
            repository: label
                .as_ref()
                .map(|l| l.repository.clone())
                .or_else(|| text(super::access::PRIVATE_MARK).filter(|r| !r.is_empty())),
            tag: label.and_then(|l| l.tag),
            digest,
            size,
            created: meta
                .created()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            last_read: last_read.map(u64::from),
            identity: CacheEntryKey::identified(key, CacheEntryId::new(generation)),
        }
    }
}

fn is_manifest(meta: &CacheMeta) -> bool {
    meta.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| super::key::MANIFEST_TYPES.iter().any(|m| t.starts_with(m)))
}

/// Which entries a purge removes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Content with this digest, and the tags pointing to it, in every registry.
    Digest(Digest),
    /// Everything filled through a matching repository (`registry/repository` glob).
    Repositories(globset::GlobMatcher),
    /// One image: a tag (its pointers, the manifests it names, their blobs) or a manifest
    /// by digest and what it names.
    Image {
        registry: String,
        repository: String,
        reference: Reference,
    },
}

/// What a purge removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PurgeReport {
    pub entries: u64,
    pub bytes: u64,
    /// Entries that changed under the purge (a fill replaced them): left as they are.
    pub skipped: u64,
}

impl Cache {
    /// Walks the committed entries on the blocking pool, describing each; `visit` returns
    /// false to stop. For `cache ls`, `du` and purges.
    pub async fn inventory(
        &self,
        registries: HashMap<String, String>,
        mut visit: impl FnMut(EntryInfo) -> bool + Send + 'static,
    ) -> std::io::Result<()> {
        let storage = self.storage;
        tokio::task::spawn_blocking(move || {
            storage.committed(&mut |found| {
                let last = storage.last_read(&found.key.combined_bin());
                visit(EntryInfo::describe(found, &registries, last))
            })
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Removes the entries `selection` names; fills in progress go on and commit as usual
    /// (an entry replaced since it was listed is left). Tag pointers this process holds in
    /// memory are forgotten, so the next pull asks the disk (and, if gone, the upstream).
    pub async fn purge(
        &self,
        registries: HashMap<String, String>,
        selection: &Selection,
    ) -> std::io::Result<PurgeReport> {
        let wanted = match selection {
            Selection::Image {
                registry,
                repository,
                reference,
            } => Some(
                self.image_digests(registries.clone(), registry, repository, reference)
                    .await?,
            ),
            _ => None,
        };
        let selection = selection.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let walk = self.inventory(registries, move |entry| {
            let chosen = match &selection {
                Selection::Digest(d) => entry.digest.as_deref() == Some(&d.to_string()),
                Selection::Repositories(glob) => {
                    entry.full_name().is_some_and(|n| glob.is_match(n))
                }
                Selection::Image {
                    registry,
                    repository,
                    reference,
                } => {
                    let same_repo = entry.registry == *registry
                        && entry.repository.as_deref() == Some(repository.as_str());
                    let own_tag = entry.kind == EntryKind::Tag
                        && same_repo
                        && matches!(reference, Reference::Tag(t) if entry.tag.as_ref() == Some(t));
                    let content = entry.kind != EntryKind::Tag
                        && entry.registry == *registry
                        && entry
                            .digest
                            .as_ref()
                            .is_some_and(|d| wanted.as_ref().is_some_and(|w| w.contains(d)));
                    own_tag || content
                }
            };
            !chosen || tx.blocking_send(entry).is_ok()
        });
        let mut report = PurgeReport::default();
        let remove = async {
            while let Some(entry) = rx.recv().await {
                match self.remove_listed(&entry).await {
                    true => {
                        report.entries += 1;
                        report.bytes += entry.size;
                    }
                    false => report.skipped += 1,
                }
            }
        };
        let (walked, ()) = tokio::join!(walk, remove);
        walked?;
        self.pointers.forget_all();
        info!(
            "cache purge: {} entries, {} bytes removed ({} changed meanwhile, left)",
            report.entries, report.bytes, report.skipped
        );
        Ok(report)
    }

    /// Removes one listed entry if it is still the generation listed.
    async fn remove_listed(&self, entry: &EntryInfo) -> bool {
        let span = Span::inactive().handle();
        let target = PurgeTarget::Exact(&entry.identity);
        match self
            .storage
            .purge(target, PurgeType::Invalidation, &span)
            .await
        {
            Ok(PurgeOutcome::Purged(_)) => {
                self.eviction
                    .remove(CacheEntryKeyRef::from(&entry.identity));
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!("cache purge: {} not removed: {e}", entry.identity);
                false
            }
        }
    }

    /// The digests of an image: the manifest a tag points to (or the digest named), an
    /// index's platform manifests, and every manifest's blobs, as far as the cache holds the
    /// manifests.
    async fn image_digests(
        &self,
        registries: HashMap<String, String>,
        registry: &str,
        repository: &str,
        reference: &Reference,
    ) -> std::io::Result<HashSet<String>> {
        let (registry, repository, reference) = (
            registry.to_owned(),
            repository.to_owned(),
            reference.clone(),
        );
        let storage = self.storage;
        tokio::task::spawn_blocking(move || {
            let mut roots = Vec::new();
            let mut manifests: HashMap<String, [u8; 16]> = HashMap::new();
            storage.committed(&mut |found| {
                let bin = found.key.combined_bin();
                let entry = EntryInfo::describe(found, &registries, None);
                if entry.registry != registry {
                    return true;
                }
                match (entry.kind, &reference, entry.digest) {
                    (EntryKind::Tag, Reference::Tag(tag), Some(d))
                        if entry.repository.as_deref() == Some(repository.as_str())
                            && entry.tag.as_ref() == Some(tag) =>
                    {
                        roots.push(d)
                    }
                    (EntryKind::Manifest, _, Some(d)) => {
                        manifests.insert(d, bin);
                    }
                    _ => {}
                }
                true
            })?;
            if let Reference::Digest(d) = &reference {
                roots.push(d.to_string());
            }
            let mut found: HashSet<String> = HashSet::new();
            while let Some(digest) = roots.pop() {
                if !found.insert(digest.clone()) {
                    continue;
                }
                let Some(body) = manifests
                    .get(&digest)
                    .and_then(|bin| storage.read_body(bin, MANIFEST_MAX_BYTES))
                else {
                    continue;
                };
                match ManifestRefs::parse(&body) {
                    Ok(ManifestRefs::Index(children)) => {
                        roots.extend(children.into_iter().map(|c| c.digest.to_string()))
                    }
                    Ok(ManifestRefs::Image(blobs)) => {
                        found.extend(blobs.into_iter().map(|b| b.digest.to_string()))
                    }
                    Err(e) => warn!("cache purge: manifest {digest}: {e}"),
                }
            }
            Ok(found)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for text in [
            "blob library/nginx",
            "manifest acme/app:1.0",
            "tag library/nginx:latest",
            "verdict acme/secret",
        ] {
            assert_eq!(Label::parse(text).unwrap().to_string(), text);
        }
        assert!(Label::parse("thing x").is_none());
        assert!(Label::parse("blob").is_none());
        let path: V2Path = "/v2/library/nginx/manifests/1.27".parse().unwrap();
        assert_eq!(
            Label::of_pointer(&path).unwrap().to_string(),
            "tag library/nginx:1.27"
        );
        assert_eq!(
            Label::of_content(&path).unwrap().to_string(),
            "manifest library/nginx:1.27"
        );
    }
}
