//! The token request query (`/v2/auth?service=...&scope=...`): any query is read, its
//! repositories listed and the upstream's realm URL built, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::proxy::token::{TokenRequest, UpstreamRealm};
use pullthrough::registry::Challenge;

fuzz_target!(|query: &str| {
    let req = TokenRequest::parse(Some(query));
    let _ = req.repositories();
    let _ = req.leading_component();
    let realm = Challenge::parse(r#"Bearer realm="https://auth.example/token",service="s""#)
        .ok()
        .and_then(|c| UpstreamRealm::from_challenge(&c))
        .expect("the test realm parses");
    for (prefix, hub) in [(None, true), (Some("docker.io"), false)] {
        let upstream = TokenRequest::parse(Some(query)).for_upstream(prefix, hub);
        let url = upstream.realm_url(&realm);
        assert_eq!(url.host_str(), Some("auth.example"));
    }
});
