//! `Credentials`: what the mirror sends upstream for a route when a client brings none.
//! Secrets print as `<redacted>` and are marked sensitive in headers.

use std::fmt;

use base64::Engine;
use http::HeaderValue;

/// A route's upstream credentials, as the `Authorization` value they become.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Username and password (or a personal access token as the password), sent to the
    /// registry's token realm with Basic auth.
    Basic(HeaderValue),
    /// A static bearer token, sent to the registry itself.
    Bearer(HeaderValue),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic(_) => f.write_str("Basic <redacted>"),
            Credentials::Bearer(_) => f.write_str("Bearer <redacted>"),
        }
    }
}

/// Why credentials cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("credentials contain characters a header cannot carry")]
pub struct CredentialsError;

impl Credentials {
    pub fn basic(username: &str, password: &str) -> Result<Credentials, CredentialsError> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        sensitive(format!("Basic {encoded}")).map(Credentials::Basic)
    }

    pub fn bearer(token: &str) -> Result<Credentials, CredentialsError> {
        sensitive(format!("Bearer {token}")).map(Credentials::Bearer)
    }
}

fn sensitive(value: String) -> Result<HeaderValue, CredentialsError> {
    let mut v = HeaderValue::from_str(&value).map_err(|_| CredentialsError)?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_redacts() {
        let Credentials::Basic(v) = Credentials::basic("alice", "s3cret").unwrap() else {
            panic!()
        };
        assert_eq!(v.to_str().unwrap(), "Basic YWxpY2U6czNjcmV0");
        assert!(v.is_sensitive());
        let b = Credentials::bearer("tok").unwrap();
        assert_eq!(format!("{b:?}"), "Bearer <redacted>");
        assert!(Credentials::bearer("bad\ntoken").is_err());
    }
}
