//! The `WWW-Authenticate` parser: parse or refuse, never panic; a parsed challenge printed by
//! the mirror parses back to itself (the mirror re-sends challenges it rewrote).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::registry::auth::rewrite_challenge;
use pullthrough::registry::Challenge;

fuzz_target!(|header: &str| {
    let Ok(all) = Challenge::parse_all(header) else {
        return;
    };
    assert!(!all.is_empty());
    for c in &all {
        let printed = c.to_string();
        let back = Challenge::parse(&printed).expect("a printed challenge parses");
        assert_eq!(&back, c, "{printed}");
        let ours = rewrite_challenge(c, "http://127.0.0.1:5000/v2/auth", |s| s.clone());
        let _ = Challenge::parse(&ours.to_string()).expect("a rewritten challenge parses");
    }
    let _ = Challenge::parse(header).expect("parse_all accepted it");
    // A value with bytes beyond visible ASCII is passed over by `from_headers` (the header
    // API reads only visible ASCII as text; registries send ASCII): found by this target.
    if let Some(value) = http::HeaderValue::from_str(header)
        .ok()
        .filter(|v| v.to_str().is_ok())
    {
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::WWW_AUTHENTICATE, value);
        assert!(Challenge::from_headers(&headers).is_some());
    }
});
