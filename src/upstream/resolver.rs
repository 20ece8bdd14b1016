//! Name resolution for upstream connections, off the worker threads.
//!
//! `HttpPeer::new` with a host name resolves with a blocking call and panics when that fails
//! (DESIGN.md section 3), so peers are always built from a `SocketAddr` found here: a pinned
//! address from `resolve:` (like curl's `--resolve`), an IP literal, or the system resolver
//! run on tokio's blocking pool, remembered for `ttl`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pinned address: an IP that keeps the requested port, or a full socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Ip(IpAddr),
    Addr(SocketAddr),
}

impl std::str::FromStr for Pin {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<SocketAddr>() {
            Ok(addr) => Ok(Pin::Addr(addr)),
            Err(_) => s.parse::<IpAddr>().map(Pin::Ip),
        }
    }
}

/// Why a name has no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{0} has no addresses")]
    Empty(String),
}

/// Longest wait for the system resolver.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves upstream names with pins, IP literals and a TTL cache.
#[derive(Debug)]
pub struct Resolver {
    pinned: HashMap<String, Pin>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (IpAddr, Instant)>>,
}

impl Resolver {
    pub fn new(pinned: HashMap<String, Pin>, ttl: Duration) -> Resolver {
        let pinned = pinned
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Resolver {
            pinned,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the operator pinned `host` in `resolve:` (its address is the operator's word).
    pub fn is_pinned(&self, host: &str) -> bool {
        self.pinned.contains_key(host)
    }

    /// The address to connect to for `host:port`.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, ResolveError> {
        if let Some(pin) = self.pinned.get(host) {
            return Ok(match *pin {
                Pin::Ip(ip) => SocketAddr::new(ip, port),
                Pin::Addr(addr) => addr,
            });
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some(ip) = self.cached(host) {
            return Ok(SocketAddr::new(ip, port));
        }
        // tokio runs getaddrinfo on its blocking pool: the worker thread keeps serving. A
        // resolver that does not answer costs at most LOOKUP_TIMEOUT.
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {LOOKUP_TIMEOUT:?}"),
                ))
            });
        let addr = lookup
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| ResolveError::Empty(host.to_owned()))?;
        log::debug!("resolved {host} to {}", addr.ip());
        self.lock()
            .insert(host.to_owned(), (addr.ip(), Instant::now() + self.ttl));
        Ok(addr)
    }

    fn cached(&self, host: &str) -> Option<IpAddr> {
        let cache = self.lock();
        let (ip, expires) = cache.get(host)?;
        (Instant::now() < *expires).then_some(*ip)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (IpAddr, Instant)>> {
        // A panic while holding this lock cannot leave the map inconsistent: use it anyway.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pins_literals_and_failures() {
        let pinned = HashMap::from([
            ("Hub.Test".to_owned(), "127.0.0.1:5000".parse().unwrap()),
            ("cdn.test".to_owned(), "127.0.0.2".parse().unwrap()),
        ]);
        let r = Resolver::new(pinned, Duration::from_secs(60));
        assert_eq!(
            r.resolve("hub.test", 443).await.unwrap(),
            "127.0.0.1:5000".parse().unwrap()
        );
        assert_eq!(
            r.resolve("cdn.test", 8080).await.unwrap(),
            "127.0.0.2:8080".parse().unwrap()
        );
        assert_eq!(
            r.resolve("::1", 80).await.unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(r.resolve("localhost", 81).await.unwrap().port(), 81);
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
