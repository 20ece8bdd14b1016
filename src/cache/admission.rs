//! `FillGate`: which cold fills may start writing to disk. Two bounds, both checked before
//! a fill opens its part file: at most `cache.max_fills` fills at once, and room on the
//! cache's filesystem for the object's declared length on top of what running fills have
//! reserved (a burst of cold fills cannot fill the disk before eviction runs). A refused
//! fill is no refused download: the response streams to the client uncached.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Room kept on the filesystem beyond a fill's own bytes (its sidecar, the directory).
const HEADROOM: u64 = 1 << 20;

/// Why a fill may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{running} fills are running (cache.max_fills)")]
    TooManyFills { running: usize },
    #[error("no room on the cache's disk for {length} bytes beside the {reserved} reserved by running fills")]
    DiskSpace { length: u64, reserved: u64 },
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooManyFills { .. } => "max_fills",
            Refusal::DiskSpace { .. } => "disk_space",
        }
    }
}

/// Counts running fills and the bytes they reserved.
pub struct FillGate {
    dir: PathBuf,
    max_fills: usize,
    fills: AtomicUsize,
    reserved: AtomicU64,
}

/// A running fill's place and reservation, given back when it drops (the request ends).
pub struct FillPermit {
    gate: Arc<FillGate>,
    bytes: u64,
}

impl Drop for FillPermit {
    fn drop(&mut self) {
        self.gate.fills.fetch_sub(1, Ordering::AcqRel);
        self.gate.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl FillGate {
    pub fn new(dir: PathBuf, max_fills: usize) -> Arc<FillGate> {
        Arc::new(FillGate {
            dir,
            max_fills,
            fills: AtomicUsize::new(0),
            reserved: AtomicU64::new(0),
        })
    }

    /// Fills running now.
    pub fn running(&self) -> usize {
        self.fills.load(Ordering::Acquire)
    }

    /// Bytes reserved by running fills.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// A place for a fill of `length` bytes (unknown: nothing reserved, the write path's
    /// full-disk handling is the bound). `statvfs` reads the filesystem's counters from
    /// memory, no disk I/O, so this runs on the worker.
    pub fn admit(self: &Arc<Self>, length: Option<u64>) -> Result<FillPermit, Refusal> {
        let running = self.fills.fetch_add(1, Ordering::AcqRel);
        // From here on the permit gives the place back, refused or not.
        let mut permit = FillPermit {
            gate: self.clone(),
            bytes: 0,
        };
        if running >= self.max_fills {
            return Err(Refusal::TooManyFills { running });
        }
        let Some(length) = length else {
            return Ok(permit);
        };
        let before = self.reserved.fetch_add(length, Ordering::AcqRel);
        permit.bytes = length;
        let free = rustix::fs::statvfs(&self.dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .unwrap_or(u64::MAX);
        if free < before.saturating_add(length).saturating_add(HEADROOM) {
            return Err(Refusal::DiskSpace {
                length,
                reserved: before,
            });
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_fills_and_reserves_space() {
        let dir = tempfile::tempdir().unwrap();
        let gate = FillGate::new(dir.path().to_owned(), 2);
        let a = gate.admit(Some(10)).unwrap();
        let b = gate.admit(None).unwrap();
        assert_eq!(
            gate.admit(Some(1)).err().map(Refusal::as_str),
            Some("max_fills")
        );
        assert_eq!((gate.running(), gate.reserved()), (2, 10));
        drop(a);
        assert_eq!((gate.running(), gate.reserved()), (1, 0));
        // Larger than any disk: refused, and nothing stays reserved.
        assert_eq!(
            gate.admit(Some(u64::MAX / 2)).err().map(Refusal::as_str),
            Some("disk_space")
        );
        assert_eq!((gate.running(), gate.reserved()), (1, 0));
        drop(b);
        // Two halves of the free space fit one after the other only while neither runs.
        let free = rustix::fs::statvfs(dir.path()).unwrap();
        let half = free.f_bavail * free.f_frsize / 2;
        let first = gate.admit(Some(half)).unwrap();
        assert_eq!(
            gate.admit(Some(half)).err(),
            Some(Refusal::DiskSpace {
                length: half,
                reserved: half
            })
        );
        drop(first);
        assert!(gate.admit(Some(half)).is_ok());
    }
}
