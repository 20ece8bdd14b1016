//! The YAML configuration: any text is a config or a clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = pullthrough::config::parse(text) {
        assert!(!e.to_string().is_empty());
    }
});
