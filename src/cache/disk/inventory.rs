//! What the operators' tools and the benchmarks ask of the storage beyond serving: a
//! read-only walk of the committed entries, whether one is held, a small body, the fills in
//! progress, last reads, and the unsynced writer of synthetic caches.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::{CacheKey, CacheMeta};

use super::{blocking, Committed, DiskStorage, FillProgress, Progress, Sidecar};

impl DiskStorage {
    /// Writes a committed entry straight into the layout, without syncing: for generators of
    /// big test caches (`cache::synthetic`), never for serving. Returns its generation.
    pub fn write_unsynced(
        &self,
        key: &CacheKey,
        meta: &CacheMeta,
        body: &[u8],
    ) -> std::io::Result<u64> {
        let hash = hex::encode(key.combined_bin());
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir_for(&hash);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(self.body_path(&hash, generation), body)?;
        let sidecar = Sidecar {
            generation,
            body_len: body.len() as u64,
            key: key.to_compact(),
            meta: meta.serialize().map_err(std::io::Error::other)?,
        };
        std::fs::write(self.meta_path(&hash), sidecar.encode())?;
        Ok(generation)
    }

    /// The fills in progress and how far each got.
    pub fn fills_in_progress(&self) -> Vec<FillProgress> {
        self.lock_fills()
            .values()
            .map(|fill| FillProgress {
                source: fill.about.source.clone(),
                digest: fill.about.digest.clone(),
                size: fill.about.size,
                bytes: match *fill.progress.borrow() {
                    Progress::Writing(n) | Progress::Done(n) | Progress::Abandoned(n) => n,
                    Progress::Failed => 0,
                },
            })
            .collect()
    }

    /// When the committed entry `bin` was last read (unix seconds), if that is remembered.
    pub fn last_read(&self, bin: &HashBinary) -> Option<u32> {
        let hot = self
            .lock_hot()
            .entries
            .get(bin)
            .map(|e| e.last_read.load(Ordering::Relaxed))
            .filter(|t| *t > 0);
        hot.or_else(|| self.reads.peek(bin))
    }

    /// Walks every committed entry, read-only (blocking: run it on the blocking pool). An
    /// entry that cannot be read is passed over; the start-up scan and lookups deal with it.
    /// `visit` returns false to stop the walk.
    pub fn committed(&self, visit: &mut dyn FnMut(Committed) -> bool) -> std::io::Result<()> {
        for shard in std::fs::read_dir(&self.objects)? {
            let Ok(entries) = std::fs::read_dir(shard?.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "meta") {
                    continue;
                }
                let Some(sidecar) = std::fs::read(&path).ok().and_then(|b| Sidecar::decode(&b))
                else {
                    continue;
                };
                let Ok(meta) = CacheMeta::deserialize(&sidecar.meta.0, &sidecar.meta.1) else {
                    continue;
                };
                let found = Committed {
                    key: sidecar.key,
                    generation: sidecar.generation,
                    size: sidecar.body_len,
                    meta,
                };
                if !visit(found) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Whether an entry is committed for `bin` (its sidecar, the commit point, is there).
    pub async fn holds(&'static self, bin: HashBinary) -> bool {
        if self.lock_hot().entries.contains_key(&bin) {
            return true;
        }
        let meta = self.meta_path(&hex::encode(bin));
        blocking(move || meta.exists()).await.unwrap_or(false)
    }

    /// The body of the committed entry `bin`, if it is at most `limit` bytes (blocking).
    pub fn read_body(&self, bin: &HashBinary, limit: usize) -> Option<Vec<u8>> {
        let (sidecar, file) = self.read_committed(&hex::encode(bin))?;
        if sidecar.body_len > limit as u64 {
            return None;
        }
        let mut body = vec![0u8; sidecar.body_len as usize];
        file.read_exact_at(&mut body, 0).ok()?;
        Some(body)
    }
}
