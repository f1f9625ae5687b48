//! Backing store I/O and on-disk metadata.

pub mod backing;
pub mod meta;
pub mod uring;
