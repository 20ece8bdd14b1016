//! What a manifest refers to: an index's platform manifests, an image manifest's config and
//! layers (OCI image spec, Docker image manifest v2 schema 2, and schema 1's `fsLayers`).
//! Read by prefetch (what to fetch) and by an image's purge (what to remove).

use serde::Deserialize;

use super::image::Platform;
use super::reference::Digest;

/// Largest manifest body the mirror reads for itself (distribution's own limit is 4 MiB).
pub const MANIFEST_MAX_BYTES: usize = 4 << 20;

/// Why a manifest body could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable manifest: {0}")]
pub struct ManifestError(String);

/// A reference from one manifest to content: digest, size, and an index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub size: Option<u64>,
    pub media_type: Option<String>,
    /// `os/architecture[/variant]` of an index entry.
    pub platform: Option<Platform>,
}

/// What a manifest refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRefs {
    /// An OCI index or Docker manifest list: one manifest per platform.
    Index(Vec<Descriptor>),
    /// An image: its config (absent in schema 1) and layers.
    Image(Vec<Descriptor>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    manifests: Option<Vec<RawDescriptor>>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    /// Schema 1.
    fs_layers: Option<Vec<RawFsLayer>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    digest: String,
    size: Option<u64>,
    media_type: Option<String>,
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFsLayer {
    blob_sum: String,
}

fn descriptor(raw: RawDescriptor) -> Result<Descriptor, ManifestError> {
    let digest = raw
        .digest
        .parse()
        .map_err(|e| ManifestError(format!("{e}")))?;
    Ok(Descriptor {
        digest,
        size: raw.size,
        media_type: raw.media_type,
        platform: raw.platform.map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant.filter(|v| !v.is_empty()),
        }),
    })
}

impl ManifestRefs {
    /// Reads a manifest body of any of the types the mirror serves.
    pub fn parse(body: &[u8]) -> Result<ManifestRefs, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(body).map_err(|e| ManifestError(e.to_string()))?;
        if let Some(manifests) = raw.manifests {
            let children = manifests
                .into_iter()
                .map(descriptor)
                .collect::<Result<_, _>>()?;
            return Ok(ManifestRefs::Index(children));
        }
        let mut blobs = Vec::new();
        if let Some(config) = raw.config {
            blobs.push(descriptor(config)?);
        }
        for layer in raw.layers.unwrap_or_default() {
            blobs.push(descriptor(layer)?);
        }
        for layer in raw.fs_layers.unwrap_or_default().into_iter().rev() {
            let digest = layer
                .blob_sum
                .parse()
                .map_err(|e| ManifestError(format!("{e}")))?;
            blobs.push(Descriptor {
                digest,
                size: None,
                media_type: None,
                platform: None,
            });
        }
        if blobs.is_empty() {
            return Err(ManifestError(
                "neither an index nor an image manifest".into(),
            ));
        }
        // Schema 1 repeats layers; content is fetched once however often it is named.
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        Ok(ManifestRefs::Image(blobs))
    }
}

impl Descriptor {
    /// Whether an index entry is for one of `platforms` (every entry when none is named).
    pub fn is_for(&self, platforms: &[Platform]) -> bool {
        if platforms.is_empty() {
            return true;
        }
        let Some(p) = &self.platform else {
            return false;
        };
        platforms
            .iter()
            .any(|want| want.matches(&p.os, &p.architecture, p.variant.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn index_and_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"digest":"{A}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"digest":"{B}","size":6,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let ManifestRefs::Index(children) = ManifestRefs::parse(body.as_bytes()).unwrap() else {
            panic!("not an index");
        };
        let amd: Platform = "linux/amd64".parse().unwrap();
        let chosen: Vec<_> = children
            .iter()
            .filter(|c| c.is_for(std::slice::from_ref(&amd)))
            .collect();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].digest.to_string(), A);
        assert_eq!(children.iter().filter(|c| c.is_for(&[])).count(), 2);
    }

    #[test]
    fn image_and_schema1() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{A}","size":1}},"layers":[{{"digest":"{B}","size":2}}]}}"#
        );
        let ManifestRefs::Image(blobs) = ManifestRefs::parse(body.as_bytes()).unwrap() else {
            panic!("not an image");
        };
        assert_eq!(blobs.len(), 2);
        let v1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{A}"}},{{"blobSum":"{A}"}},{{"blobSum":"{B}"}}]}}"#
        );
        let ManifestRefs::Image(blobs) = ManifestRefs::parse(v1.as_bytes()).unwrap() else {
            panic!("not an image");
        };
        assert_eq!(blobs.len(), 2);
        for bad in ["", "{}", "[1]", r#"{"layers":[{"digest":"md5:x"}]}"#] {
            assert!(ManifestRefs::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
