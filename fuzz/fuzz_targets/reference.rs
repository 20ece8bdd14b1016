//! Tags, digests and repository names: parse or refuse, and what parses prints back as given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::registry::{Digest, Reference, RepoName};

fuzz_target!(|s: &str| {
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
        assert_eq!(r.is_digest(), s.parse::<Digest>().is_ok());
    }
    if let Ok(d) = s.parse::<Digest>() {
        let _ = (d.algorithm(), d.hex());
        assert_eq!(d.to_string(), s);
    }
    if let Ok(n) = s.parse::<RepoName>() {
        assert_eq!(n.as_str(), s);
        assert!(n.components().all(|c| !c.is_empty()));
    }
});
