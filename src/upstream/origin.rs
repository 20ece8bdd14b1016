//! `Origin`: scheme, host and port of an upstream, a redirect target or a token realm.

use std::fmt;

use url::Url;

/// An HTTP(S) origin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub tls: bool,
    /// Lowercase host name or IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

/// Why a URL cannot be an upstream origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("invalid URL {0:?}: {1}")]
    Url(String, url::ParseError),
    #[error("unsupported scheme in {0:?}: only http and https")]
    Scheme(String),
    #[error("no host in {0:?}")]
    NoHost(String),
}

impl Origin {
    /// The origin of an absolute http(s) URL.
    pub fn of(url: &Url) -> Result<Origin, OriginError> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(OriginError::Scheme(url.to_string())),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(OriginError::NoHost(url.to_string())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| OriginError::NoHost(url.to_string()))?;
        Ok(Origin { tls, host, port })
    }

    /// Parses `https://host[:port][/...]`; any path is ignored.
    pub fn parse(s: &str) -> Result<Origin, OriginError> {
        let url = Url::parse(s).map_err(|e| OriginError::Url(s.to_owned(), e))?;
        Origin::of(&url)
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }

    /// The value of a `Host` header for this origin (port only when not the default).
    pub fn authority(&self) -> String {
        Authority(self).to_string()
    }

    /// The name to present and verify over TLS. Never empty: Pingora turns certificate
    /// checks off for an empty SNI; an IP literal is checked against the certificate's IP SANs.
    pub fn sni(&self) -> &str {
        &self.host
    }
}

/// `host[:port]` as a URL names it: written straight into the formatter (cache keys are
/// formatted with the origin on every request).
struct Authority<'a>(&'a Origin);

impl fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        if o.host.contains(':') {
            write!(f, "[{}]", o.host)?;
        } else {
            f.write_str(&o.host)?;
        }
        if o.port != o.default_port() {
            write!(f, ":{}", o.port)?;
        }
        Ok(())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { "https://" } else { "http://" })?;
        Authority(self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let o = Origin::parse("https://Registry-1.Docker.io").unwrap();
        assert_eq!(
            (o.tls, o.host.as_str(), o.port),
            (true, "registry-1.docker.io", 443)
        );
        assert_eq!(o.authority(), "registry-1.docker.io");
        assert_eq!(o.to_string(), "https://registry-1.docker.io");
        let p = Origin::parse("http://127.0.0.1:5000/ignored").unwrap();
        assert_eq!(p.authority(), "127.0.0.1:5000");
        assert_eq!(p.sni(), "127.0.0.1");
        let v6 = Origin::parse("http://[::1]:8080").unwrap();
        assert_eq!(v6.authority(), "[::1]:8080");
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("registry-1.docker.io").is_err());
    }
}
