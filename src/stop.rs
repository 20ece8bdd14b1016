//! How the process ends: a graceful stop (SIGTERM, or SIGQUIT once the listeners went to a
//! new process) and SIGINT.
//!
//! After a graceful stop's signal Pingora 0.9.1 sleeps the whole `grace_period_seconds` (300 by default) before it
//! stops its runtimes, even with nothing left to serve: an idle mirror took five minutes to
//! stop, longer than systemd's `TimeoutStopSec`, which then killed it before its index was
//! saved. `QuietStop` ends the process as soon as it is quiet (no downstream connection
//! open, no fill in flight, every farewell said), or `save_margin` before the grace period
//! ends if it never is, after the cache's last index save. Nothing can commit after that save, so
//! the index it leaves holds every committed entry and the next start may trust it.
//!
//! Idle keep-alive connections do not hold the stop: Pingora drops its own when the stop
//! begins, and the express lane closes its own within `proxy::express::IDLE_CHECK`.
//!
//! Neither stop may reach Pingora's own end, which stops the runtimes: with one runtime per
//! thread (`work_stealing: false`), a listener's accept loop whose socket belongs to a runtime
//! already stopped gets "Accept() failed ... being shutdown" at once, logs it and accepts
//! again, forever and without yielding, so its thread never stops and the process never
//! exits (seen: 43 GB of that log line in ten minutes). `QuietStop` exits before the grace
//! period ends, and `exit_at_once_on_sigint` ends the process at once on SIGINT.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::cache::Keeper;

/// How often a stopping process looks whether it is quiet.
const QUIET_CHECK: Duration = Duration::from_millis(100);

/// How long before the grace period ends a stop that is not quiet ends anyway: a tenth of
/// it, for the index save (about 2 s at a million entries) to end before Pingora stops the
/// runtimes (it runs on its own thread, so a longer one is not cut short either).
fn save_margin(grace: Duration) -> Duration {
    grace / 10
}

/// Work some service must finish before the process may end (the cluster member leaving the
/// shared set): each `Farewell` taken is awaited until it is dropped.
#[derive(Clone, Default)]
pub struct Farewells(Arc<AtomicUsize>);

/// One awaited farewell; said when dropped.
pub struct Farewell(Arc<AtomicUsize>);

impl Farewells {
    /// A farewell the stop waits for (bounded by the grace period).
    pub fn expect(&self) -> Farewell {
        self.0.fetch_add(1, Ordering::AcqRel);
        Farewell(self.0.clone())
    }

    fn pending(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Farewell {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends a graceful stop once the process is quiet (a background service; see the module).
pub struct QuietStop {
    /// Open downstream connections (`guard::GuardedApp`).
    pub connections: Arc<AtomicUsize>,
    /// Cache fills in flight (`cache::disk::StorageStats`).
    pub fills: &'static AtomicU64,
    pub farewells: Farewells,
    /// Saves the cache's index with its clean mark (unless a new process took over).
    pub keeper: Keeper,
    /// `pingora.grace_period_seconds`.
    pub grace: Duration,
}

impl QuietStop {
    fn quiet(&self) -> bool {
        self.connections.load(Ordering::Acquire) == 0
            && self.fills.load(Ordering::Acquire) == 0
            && self.farewells.pending() == 0
    }
}

#[async_trait]
impl BackgroundService for QuietStop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let deadline = Instant::now() + self.grace - save_margin(self.grace);
        let why = loop {
            // The first look comes after a pause: a connection accepted just before the
            // listeners closed is counted once its task has run.
            tokio::time::sleep(QUIET_CHECK).await;
            if self.quiet() {
                break "no connection open, no fill in flight";
            }
            if Instant::now() >= deadline {
                break "the grace period is over";
            }
        };
        // The save and the exit on a thread of their own: Pingora stops its runtimes when
        // the grace period ends, which would cancel a save still running on one of them
        // and leave the process to that stop (see the module).
        let keeper = self.keeper.clone();
        let last = std::thread::Builder::new()
            .name("quiet stop".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(keeper.save_at_stop()),
                    Err(e) => warn!("cache index not saved at the stop: {e}"),
                }
                info!("stopped: {why}");
                std::process::exit(0);
            });
        if let Err(e) = last {
            warn!("stopping without the index save: {e}");
            std::process::exit(0);
        }
    }
}

/// Makes SIGINT end the process at once, as Pingora's fast shutdown means to, without
/// stopping the runtimes first (see the module). No index is saved: the next start scans the
/// disk, serving meanwhile, as after a crash. Registered beside tokio's handler (Pingora's),
/// and inherited by the daemon's fork.
pub fn exit_at_once_on_sigint() -> std::io::Result<()> {
    // SAFETY: the action only calls `_exit`, which is async-signal-safe.
    unsafe {
        signal_hook_registry::register(libc::SIGINT, || libc::_exit(0))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_save_margin_leaves_the_save_time_before_the_grace_period_ends() {
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(save_margin(secs(300)), secs(30));
        assert_eq!(save_margin(secs(1)), Duration::from_millis(100));
        assert_eq!(save_margin(secs(0)), secs(0));
    }
}
