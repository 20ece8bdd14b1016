//! The hot set: small committed entries (manifests, configs) held in memory as well as on
//! disk, so their hits never wait on the blocking pool (a thread hand-off per file operation
//! dominated the manifest hit path when measured). The disk stays the record.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

/// Entries with bodies up to this size are kept in memory.
pub(super) const HOT_BODY_MAX: usize = 256 * 1024;
/// Memory the hot set may hold, bodies and metadata.
const HOT_BUDGET: usize = 64 * 1024 * 1024;

/// A small committed entry held in memory as well as on disk.
pub(super) struct HotEntry {
    pub meta: (Vec<u8>, Vec<u8>),
    pub body: Bytes,
}

impl HotEntry {
    fn weight(&self) -> usize {
        self.body.len() + self.meta.0.len() + self.meta.1.len()
    }
}

/// The in-memory copies of small entries, within `HOT_BUDGET`. It mirrors this process's
/// commits, purges and meta updates; entries on disk are read in on their first hit.
#[derive(Default)]
pub(super) struct HotSet {
    pub entries: HashMap<String, Arc<HotEntry>>,
    bytes: usize,
    /// Bumped by every commit, purge and meta update, so a lookup that read the disk before
    /// one of them does not put what it read back in.
    pub changes: u64,
}

impl HotSet {
    /// What a lookup read from disk, unless the cache changed since `seen`.
    pub fn fill(&mut self, hash: String, entry: HotEntry, seen: u64) {
        if self.changes == seen {
            self.put(hash, entry);
        }
    }

    pub fn insert(&mut self, hash: String, entry: HotEntry) {
        self.changes += 1;
        self.put(hash, entry);
    }

    pub fn remove(&mut self, hash: &str) {
        self.changes += 1;
        self.evict(hash);
    }

    fn put(&mut self, hash: String, entry: HotEntry) {
        self.evict(&hash);
        let weight = entry.weight();
        if weight > HOT_BUDGET {
            return;
        }
        while self.bytes + weight > HOT_BUDGET {
            // Any victim will do: the disk still has it.
            let Some(victim) = self.entries.keys().next().cloned() else {
                break;
            };
            self.evict(&victim);
        }
        self.bytes += weight;
        self.entries.insert(hash, Arc::new(entry));
    }

    fn evict(&mut self, hash: &str) {
        if let Some(old) = self.entries.remove(hash) {
            self.bytes -= old.weight();
        }
    }
}
