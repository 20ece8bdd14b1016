//! `pullthrough healthcheck [URL]`: asks a running mirror's `/healthz` and exits 0 when it
//! answers 200. For container HEALTHCHECKs, which have no curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The URL checked when none is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/healthz";

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("only http://host:port/path URLs are supported, not {0:?}")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("answered {0:?}")]
    Status(String),
}

/// GETs `url` with a 5 s timeout; Ok when the status is 200.
pub fn check(url: &str) -> Result<(), HealthError> {
    let bad = || HealthError::Url(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)?;
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status_line = status_line.lines().next().unwrap_or_default();
    if status_line.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        Err(HealthError::Status(status_line.to_owned()))
    }
}
