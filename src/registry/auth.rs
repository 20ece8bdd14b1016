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
    /// The challenge to answer in a header value: its Bearer challenge when it offers
    /// several (`Basic realm="x", Bearer realm="..."`), else the first.
    pub fn parse(header: &str) -> Result<Challenge, ChallengeError> {
        let mut all = Challenge::parse_all(header)?;
        let at = all.iter().position(Challenge::is_bearer).unwrap_or(0);
        Ok(all.swap_remove(at))
    }

    /// The challenge to answer among a response's `WWW-Authenticate` headers: the first
    /// Bearer challenge of any of them, else the first challenge; unreadable values are
    /// passed over.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Challenge> {
        let mut first = None;
        for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
            let Some(all) = value
                .to_str()
                .ok()
                .and_then(|v| Challenge::parse_all(v).ok())
            else {
                continue;
            };
            for challenge in all {
                if challenge.is_bearer() {
                    return Some(challenge);
                }
                first.get_or_insert(challenge);
            }
        }
        first
    }

    /// Parses a header value holding one or more challenges (RFC 7235 `1#challenge`, each an
    /// auth-param list with quoted or token values; a new challenge follows a comma).
    pub fn parse_all(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
        let mut challenges: Vec<Challenge> = Vec::new();
        let mut rest = header.trim();
        let mut after_comma = true;
        if rest.is_empty() {
            return Err(ChallengeError);
        }
        while !rest.is_empty() {
            let end = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
            let (word, tail) = rest.split_at(end);
            if word.is_empty() {
                return Err(ChallengeError);
            }
            let tail = tail.trim_start();
            let param = tail.strip_prefix('=');
            match (challenges.last_mut(), param) {
                (Some(current), Some(value)) => {
                    let value = value.trim_start();
                    let (value, after) = if let Some(quoted) = value.strip_prefix('"') {
                        read_quoted(quoted)?
                    } else {
                        let end = value.find(',').unwrap_or(value.len());
                        (value[..end].trim().to_owned(), &value[end..])
                    };
                    current.params.push((word.to_ascii_lowercase(), value));
                    rest = after.trim_start();
                }
                (_, None) if after_comma => {
                    let spaced = end == rest.len() || rest[end..].starts_with([' ', '\t', ',']);
                    if !spaced {
                        return Err(ChallengeError);
                    }
                    challenges.push(Challenge {
                        scheme: word.to_owned(),
                        params: Vec::new(),
                    });
                    rest = tail;
                }
                _ => return Err(ChallengeError),
            }
            after_comma = match rest.strip_prefix(',') {
                Some(r) => {
                    rest = r.trim_start();
                    true
                }
                None if rest.is_empty() => true,
                // Parameters follow a scheme after whitespace; anything else needs a comma.
                None if challenges.last().is_some_and(|c| c.params.is_empty()) => false,
                None => return Err(ChallengeError),
            };
        }
        Ok(challenges)
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

/// An RFC 7230 `tchar`: what a scheme or parameter name is made of.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
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

/// When a bearer credential expires, if it says: the `exp` claim of a JWT
/// (`Authorization: Bearer <header>.<claims>.<signature>`), read without checking the
/// signature (the upstream checked it; this only bounds how long its answer is remembered).
pub fn bearer_expiry(credential: &[u8]) -> Option<std::time::SystemTime> {
    use base64::Engine as _;
    let value = std::str::from_utf8(credential).ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut parts = token.trim().split('.');
    let (_, claims, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<u64>,
    }
    let exp = serde_json::from_slice::<Claims>(&claims).ok()?.exp?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(exp))
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
    fn several_challenges_yield_the_bearer_one() {
        let both = r#"Basic realm="Registry", Bearer realm="https://a/token",service="a",scope="repository:x:pull""#;
        let all = Challenge::parse_all(both).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].scheme, "Basic");
        assert_eq!(all[0].realm(), Some("Registry"));
        let c = Challenge::parse(both).unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.realm(), Some("https://a/token"));
        assert_eq!(c.service(), Some("a"));
        assert_eq!(c.scope(), Some("repository:x:pull"));
        // A scheme without parameters, then the Bearer challenge.
        let c = Challenge::parse(r#"Negotiate, Bearer realm="https://a/t""#).unwrap();
        assert_eq!(c.realm(), Some("https://a/t"));
        for bad in [
            r#"Bearer realm="a" Basic realm="b""#,
            r#"Bearer realm="a",, =x"#,
            r#"Bearer realm="a", Basic realm"#,
        ] {
            assert!(Challenge::parse_all(bad).is_err(), "{bad:?} accepted");
        }
        // Several header lines: the Bearer one, wherever it is; a bad line is passed over.
        let mut headers = http::HeaderMap::new();
        for v in [
            "Basic realm=\"x\"",
            "Bearer realm=\"open",
            "Bearer realm=\"https://b/t\"",
        ] {
            headers.append(http::header::WWW_AUTHENTICATE, v.parse().unwrap());
        }
        let c = Challenge::from_headers(&headers).unwrap();
        assert_eq!(c.realm(), Some("https://b/t"));
        headers.remove(http::header::WWW_AUTHENTICATE);
        assert!(Challenge::from_headers(&headers).is_none());
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
    fn bearer_expiry_reads_a_jwt_exp() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwt = |claims: &str| format!("Bearer {}.{}.sig", b64.encode("{}"), b64.encode(claims));
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(
            bearer_expiry(jwt(r#"{"exp":1700000000}"#).as_bytes()),
            Some(at(1700000000))
        );
        assert_eq!(bearer_expiry(jwt(r#"{"sub":"x"}"#).as_bytes()), None);
        assert_eq!(bearer_expiry(jwt(r#"{"exp":"soon"}"#).as_bytes()), None);
        assert_eq!(
            bearer_expiry(jwt(&format!(r#"{{"exp":{}}}"#, u64::MAX)).as_bytes()),
            None
        );
        for other in [
            "Bearer opaque-token",
            "Basic dXNlcjpwdw==",
            "Bearer a.b",
            "Bearer a.b.c.d",
            "",
        ] {
            assert_eq!(bearer_expiry(other.as_bytes()), None, "{other}");
        }
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
