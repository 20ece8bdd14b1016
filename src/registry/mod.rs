//! The registry protocol's vocabulary, free of any I/O: paths, names, digests, auth
//! challenges and scopes, and the JSON error body.

pub mod auth;
pub mod error;
pub mod image;
pub mod link;
pub mod manifest;
pub mod path;
pub mod reference;

pub use auth::{Challenge, Scope};
pub use error::{ErrorCode, RegistryError};
pub use path::V2Path;
pub use reference::{Digest, Reference, RepoName};
