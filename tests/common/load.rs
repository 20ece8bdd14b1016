//! A bounded load loop for upgrade tests: workers alternate between a manifest and a blob
//! over keep-alive connections, checking every status and the blob's digest, until told to
//! stop (after a minimum) or until the maximum count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct LoadLoop {
    done: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadLoop {
    /// Starts `workers` tasks over `urls` (a URL with `/blobs/` must give `blob`), at most
    /// `max` requests in all; `finish` waits for at least `min`.
    pub fn start(
        client: &reqwest::Client,
        urls: Vec<String>,
        token: &str,
        blob: &str,
        workers: usize,
        (min, max): (usize, usize),
    ) -> LoadLoop {
        let urls = Arc::new(urls);
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let (c, urls, tok, done, failures, blob, stop) = (
                    client.clone(),
                    urls.clone(),
                    token.to_owned(),
                    done.clone(),
                    failures.clone(),
                    blob.to_owned(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    for i in 0..max / workers.max(1) {
                        if stop.load(Ordering::SeqCst) && done.load(Ordering::SeqCst) >= min {
                            break;
                        }
                        let url = &urls[(i + w) % urls.len()];
                        let ok = match c.get(url).bearer_auth(&tok).send().await {
                            Ok(r) if r.status() == 200 => match r.bytes().await {
                                Ok(b) => !url.contains("/blobs/") || super::sha256(&b) == blob,
                                Err(_) => false,
                            },
                            Ok(r) => {
                                eprintln!("{url}: {}", r.status());
                                false
                            }
                            Err(e) => {
                                eprintln!("{url}: {e}");
                                false
                            }
                        };
                        if !ok {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        LoadLoop {
            done,
            failures,
            stop,
            workers,
        }
    }

    pub fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests have finished (or the workers ran out).
    pub async fn wait_for(&self, n: usize) {
        while self.done() < n && self.workers.iter().any(|w| !w.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the workers once `min` requests are done; returns (requests, failures).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.expect("load worker");
        }
        (
            self.done.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
}
