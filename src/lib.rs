//! hablock: a high-availability replicated block store (DRBD + tgt + Pacemaker in one).
//!
//! This crate holds the node daemon's building blocks; `src/bin/hablockd.rs` wires them up.

pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod iscsi;
pub mod replication;
pub mod resource;
pub mod store;
pub mod units;

pub use kernel_shim::IoBuf;
