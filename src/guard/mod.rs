//! Abuse control for public mirrors: who the client is (`client`), per-client request rate
//! and concurrent blob downloads (`Guard`), and which repositories are served (`repos`).

pub mod client;
pub mod connection;
pub mod repos;

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::inflight::{Guard as InflightGuard, Inflight};
use pingora_limits::rate::Rate;

pub use client::{ClientInfo, TrustedProxies};
pub use connection::{ConnectionLimits, GuardedApp};
pub use repos::RepoFilter;

/// Limits from `limits:`; 0 turns a per-client one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub requests_per_second: u32,
    pub blob_downloads_per_client: u32,
    /// Bounds on connections and request heads, and on slow readers.
    pub connections: ConnectionLimits,
}

/// What a limit decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the limit: retry after this long.
    TooMany(Duration),
}

/// Per-client limits, shared by every request.
pub struct Guard {
    limits: Limits,
    rate: Rate,
    downloads: Inflight,
}

/// A blob download slot; released when dropped.
pub struct DownloadSlot(#[allow(dead_code)] InflightGuard);

impl Guard {
    /// The connection bounds, for the listeners and each downstream session.
    pub fn connections(&self) -> &ConnectionLimits {
        &self.limits.connections
    }

    pub fn new(limits: Limits) -> Guard {
        Guard {
            limits,
            rate: Rate::new(Duration::from_secs(1)),
            downloads: Inflight::new(),
        }
    }

    /// Counts a request from `ip` against the per-second rate.
    pub fn admit_request(&self, ip: IpAddr) -> Verdict {
        let limit = self.limits.requests_per_second;
        if limit == 0 {
            return Verdict::Pass;
        }
        if self.rate.observe(&ip, 1) > limit as isize {
            Verdict::TooMany(Duration::from_secs(1))
        } else {
            Verdict::Pass
        }
    }

    /// Takes a blob download slot for `ip`, or refuses (retry after the returned time) when it
    /// has too many running.
    pub fn admit_download(&self, ip: IpAddr) -> Result<Option<DownloadSlot>, Duration> {
        let limit = self.limits.blob_downloads_per_client;
        if limit == 0 {
            return Ok(None);
        }
        let (guard, running) = self.downloads.incr(ip, 1);
        if running > limit as isize {
            // Dropping the guard gives the slot back.
            drop(guard);
            return Err(Duration::from_secs(1));
        }
        Ok(Some(DownloadSlot(guard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_downloads() {
        let g = Guard::new(Limits {
            requests_per_second: 3,
            blob_downloads_per_client: 1,
            ..Limits::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let passed = (0..10)
            .filter(|_| g.admit_request(a) == Verdict::Pass)
            .count();
        assert!((3..=6).contains(&passed), "{passed}");
        assert_eq!(g.admit_request(b), Verdict::Pass);
        let slot = g.admit_download(a).unwrap();
        assert!(slot.is_some());
        assert!(g.admit_download(a).is_err());
        assert!(g.admit_download(b).unwrap().is_some());
        drop(slot);
        assert!(g.admit_download(a).unwrap().is_some());
        let off = Guard::new(Limits::default());
        assert!((0..100).all(|_| off.admit_request(a) == Verdict::Pass));
    }
}
