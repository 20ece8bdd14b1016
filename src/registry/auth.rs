//! Token auth vocabulary: `WWW-Authenticate` challenges and `scope` strings.
//!
//! The mirror answers every upstream `401` with a challenge whose realm is its own
//! `/v2/auth`, and relays token requests to the realm the upstream named
//! (distribution "Token Authentication Specification").

use std::fmt;

/// A parsed `WWW-Authenticate` challenge: `Bearer realm="...",service="...",scope="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `Bearer` or `Basic` (as the upstream spelled it).
    pub scheme: String,
    /// Parameters in the order they came.
    pub params: Vec<(String, String)>,
}

/// Why a challenge header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate challenge")]
pub struct ChallengeError;

impl Challenge {
    /// Parses one challenge (RFC 7235 auth-param list, quoted or token values).
    pub fn parse(header: &str) -> Result<Challenge, ChallengeError> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ChallengeError);
        }
        let mut params = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').ok_or(ChallengeError)?;
            let key = key.trim();
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(ChallengeError);
            }
            let after = after.trim_start();
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                read_quoted(quoted)?
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_owned(), &after[end..])
            };
            params.push((key.to_ascii_lowercase(), value));
            rest = after.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        Ok(Challenge {
            scheme: scheme.to_owned(),
            params,
        })
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn realm(&self) -> Option<&str> {
        self.param("realm")
    }

    pub fn service(&self) -> Option<&str> {
        self.param("service")
    }

    pub fn scope(&self) -> Option<&str> {
        self.param("scope")
    }
}

/// Reads a quoted-string body (after the opening quote); returns the value and what follows.
fn read_quoted(s: &str) -> Result<(String, &str), ChallengeError> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => value.push(chars.next().ok_or(ChallengeError)?.1),
            c => value.push(c),
        }
    }
    Err(ChallengeError)
}

impl fmt::Display for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            let sep = if i == 0 { " " } else { "," };
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "{sep}{k}=\"{escaped}\"")?;
        }
        Ok(())
    }
}

/// The challenge the mirror sends instead of the upstream's: same service, the mirror's
/// realm, and the upstream's scope seen through `map_scope` (the client's view of names).
/// Challenges other than Bearer pass unchanged: the client then sends its credentials to the
/// mirror, which forwards them to the same upstream.
pub fn rewrite_challenge(
    upstream: &Challenge,
    mirror_realm: &str,
    map_scope: impl Fn(&Scope) -> Scope,
) -> Challenge {
    if !upstream.is_bearer() {
        return upstream.clone();
    }
    let mut params = vec![("realm".to_owned(), mirror_realm.to_owned())];
    if let Some(service) = upstream.service() {
        params.push(("service".to_owned(), service.to_owned()));
    }
    if let Some(scope) = upstream.scope() {
        params.push(("scope".to_owned(), map_scopes(scope, &map_scope)));
    }
    Challenge {
        scheme: "Bearer".to_owned(),
        params,
    }
}

/// Applies `map` to every scope of a space-separated scope list; unparsable ones pass as-is.
pub fn map_scopes(list: &str, map: impl Fn(&Scope) -> Scope) -> String {
    list.split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| match Scope::parse(s) {
            Some(scope) => map(&scope).to_string(),
            None => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One resource scope: `repository:library/nginx:pull,push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository`, `repository(plugin)`, `registry`.
    pub kind: String,
    pub name: String,
    pub actions: String,
}

impl Scope {
    /// The name may itself hold colons (`registry:catalog:*` does not, image names with
    /// ports do), so kind is up to the first colon and actions after the last.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: actions.to_owned(),
        })
    }

    pub fn is_repository(&self) -> bool {
        self.kind == "repository" || self.kind.starts_with("repository(")
    }

    /// The same scope for another name.
    pub fn with_name(&self, name: String) -> Scope {
        Scope {
            name,
            ..self.clone()
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(HUB).unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.realm(), Some("https://auth.docker.io/token"));
        assert_eq!(c.service(), Some("registry.docker.io"));
        assert_eq!(c.scope(), Some("repository:library/nginx:pull"));
        assert_eq!(Challenge::parse(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn parses_odd_spellings() {
        let c = Challenge::parse(r#"bearer realm = "https://x/t" , service=quay.io,scope="a b""#)
            .unwrap();
        assert_eq!(c.realm(), Some("https://x/t"));
        assert_eq!(c.service(), Some("quay.io"));
        assert_eq!(c.scope(), Some("a b"));
        let c = Challenge::parse(r#"Basic realm="Registry \"x\"""#).unwrap();
        assert_eq!(c.realm(), Some(r#"Registry "x""#));
        assert!(!c.is_bearer());
        for bad in ["", r#"Bearer realm="open"#, "Bearer realm", "Be arer"] {
            assert!(Challenge::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rewrites_realm_keeps_service_and_scope() {
        let up = Challenge::parse(HUB).unwrap();
        let ours = rewrite_challenge(&up, "http://mirror:5000/v2/auth", |s| s.clone());
        assert_eq!(
            ours.to_string(),
            r#"Bearer realm="http://mirror:5000/v2/auth",service="registry.docker.io",scope="repository:library/nginx:pull""#
        );
        let prefixed = rewrite_challenge(&up, "https://m/v2/auth", |s| {
            s.with_name(format!("docker.io/{}", s.name))
        });
        assert_eq!(
            prefixed.scope(),
            Some("repository:docker.io/library/nginx:pull")
        );
        let no_scope = Challenge::parse(r#"Bearer realm="https://a/t",service="s""#).unwrap();
        assert_eq!(
            rewrite_challenge(&no_scope, "http://m/v2/auth", |s| s.clone()).to_string(),
            r#"Bearer realm="http://m/v2/auth",service="s""#
        );
        let basic = Challenge::parse(r#"Basic realm="x""#).unwrap();
        assert_eq!(
            rewrite_challenge(&basic, "http://m/v2/auth", |s| s.clone()),
            basic
        );
    }

    #[test]
    fn scopes() {
        let s = Scope::parse("repository:nginx:pull,push").unwrap();
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.actions.as_str()),
            ("repository", "nginx", "pull,push")
        );
        let p = Scope::parse("repository:localhost:5000/x:pull").unwrap();
        assert_eq!(p.name, "localhost:5000/x");
        assert!(Scope::parse("registry:catalog:*").is_some_and(|s| !s.is_repository()));
        assert!(Scope::parse("nonsense").is_none());
        assert_eq!(
            map_scopes("repository:a:pull  repository:b:pull", |s| s
                .with_name(format!("library/{}", s.name))),
            "repository:library/a:pull repository:library/b:pull"
        );
    }
}
