//! Pagination `Link` headers (`tags/list`, `_catalog`, `referrers`; distribution spec
//! "Listing Tags"): the upstream names the next page in its own terms,
//! `</v2/<name>/tags/list?last=x&n=50>; rel="next"`. A client that reached the mirror by a
//! path prefix (`/v2/quay.io/<name>/...`) or containerd's `?ns=` must get the next page in its
//! terms, or it asks the mirror for a path that routes somewhere else.

/// The `Link` value as the client must follow it: `client_prefix` put back in front of the
/// repository name, `ns` added to the query, an absolute URL made relative to the mirror.
/// `None` when the value is not a `<uri>; params` link into the registry API.
pub fn client_link(link: &str, client_prefix: Option<&str>, ns: Option<&str>) -> Option<String> {
    let rest = link.trim().strip_prefix('<')?;
    let (uri, params) = rest.split_once('>')?;
    // An absolute URL names the upstream: keep only its path and query.
    let path_and_query = match uri.split_once("://") {
        Some((_, after)) => &after[after.find('/')?..],
        None => uri,
    };
    let tail = path_and_query.strip_prefix("/v2/")?;
    let mut out = String::with_capacity(link.len() + 32);
    out.push_str("</v2/");
    if let Some(prefix) = client_prefix {
        out.push_str(prefix);
        out.push('/');
    }
    out.push_str(tail);
    if let Some(ns) = ns {
        out.push(if tail.contains('?') { '&' } else { '?' });
        out.push_str("ns=");
        out.extend(url::form_urlencoded::byte_serialize(ns.as_bytes()));
    }
    out.push('>');
    out.push_str(params);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::client_link;

    #[test]
    fn next_pages_in_the_clients_terms() {
        let next = r#"</v2/coreos/etcd/tags/list?last=v3&n=2>; rel="next""#;
        for (prefix, ns, want) in [
            (
                None,
                None,
                r#"</v2/coreos/etcd/tags/list?last=v3&n=2>; rel="next""#,
            ),
            (
                Some("quay.io"),
                None,
                r#"</v2/quay.io/coreos/etcd/tags/list?last=v3&n=2>; rel="next""#,
            ),
            (
                None,
                Some("quay.io"),
                r#"</v2/coreos/etcd/tags/list?last=v3&n=2&ns=quay.io>; rel="next""#,
            ),
        ] {
            assert_eq!(client_link(next, prefix, ns).as_deref(), Some(want));
        }
        assert_eq!(
            client_link(
                r#"<https://quay.io/v2/a/tags/list?last=x>; rel="next""#,
                None,
                None
            )
            .as_deref(),
            Some(r#"</v2/a/tags/list?last=x>; rel="next""#)
        );
        assert_eq!(
            client_link("</v2/_catalog>; rel=\"next\"", None, Some("docker.io")).as_deref(),
            Some("</v2/_catalog?ns=docker.io>; rel=\"next\"")
        );
        for bad in [
            "",
            "no brackets",
            "</elsewhere/x>; rel=\"next\"",
            "<https://h>",
        ] {
            assert_eq!(client_link(bad, Some("p"), None), None, "{bad}");
        }
    }
}
