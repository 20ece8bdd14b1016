//! The disk cache: pingora-cache storage on local disk (`disk`), body verification
//! (`verify`), what is cached and for how long (`policy`), and the pieces pingora-cache
//! wants as `'static` (`Cache`).

pub mod disk;
pub mod verify;

pub use disk::DiskStorage;
