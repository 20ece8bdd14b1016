//! The daemon's logger: env_logger (`RUST_LOG`, default `info`), with the few messages
//! Pingora logs loudly about normal operation moved down to debug, so an ERROR or WARN line
//! always means something for the operator to look at.

use log::{Level, Log, Metadata, Record};

/// Pingora messages that describe normal operation, by target prefix and exact text.
const ROUTINE: &[(&str, &str)] = &[
    // A pooled upstream connection still watched by its idle poll when it is taken again:
    // Pingora opens a new connection instead. Nothing fails.
    (
        "pingora_core::connectors",
        "failed to acquire reusable stream",
    ),
    // Cache metadata headers are compressed without a dictionary: the mirror's choice (a
    // dictionary would tie the on-disk format to its contents).
    (
        "pingora_cache::meta",
        "no header compression dictionary loaded - use set_compression_dict_content() or set_compression_dict_path() to set one",
    ),
];

/// Whether `record` is one of the `ROUTINE` messages.
fn is_routine(record: &Record) -> bool {
    let Some(text) = record.args().as_str() else {
        return false;
    };
    ROUTINE
        .iter()
        .any(|(target, routine)| record.target().starts_with(target) && text == *routine)
}

struct Relevel(env_logger::Logger);

impl Log for Relevel {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !is_routine(record) {
            return self.0.log(record);
        }
        let metadata = Metadata::builder()
            .level(Level::Debug)
            .target(record.target())
            .build();
        if self.0.enabled(&metadata) {
            self.0.log(
                &Record::builder()
                    .metadata(metadata)
                    .args(*record.args())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Installs the logger; call once, first thing.
pub fn init() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Relevel(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(target: &'a str, args: std::fmt::Arguments<'a>) -> Record<'a> {
        Record::builder()
            .level(Level::Error)
            .target(target)
            .args(args)
            .build()
    }

    #[test]
    fn only_the_named_messages_are_routine() {
        assert!(is_routine(&record(
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream")
        )));
        assert!(!is_routine(&record(
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream, and more")
        )));
        assert!(!is_routine(&record(
            "pullthrough",
            format_args!("failed to acquire reusable stream")
        )));
    }
}
