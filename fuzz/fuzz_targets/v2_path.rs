//! The request path parser: any path either parses or is refused, and what parses keeps its
//! invariants (a name that reparses, a path that renames).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::registry::{RepoName, V2Path};

fuzz_target!(|path: &str| {
    let Ok(parsed) = path.parse::<V2Path>() else {
        return;
    };
    if let Some(name) = parsed.name() {
        let again: RepoName = name.as_str().parse().expect("a parsed name reparses");
        assert_eq!(again.as_str(), name.as_str());
        let _ = name.split_first();
        let _ = parsed.clone().with_name(again.with_library_prefix());
    }
});
