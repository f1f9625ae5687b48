//! The pure part of `hbcrm`: crm shell commands turned into CIB operations, and the CIB turned
//! into `crm_mon -1` text. Nothing here does I/O; `src/bin/hbcrm.rs` fetches the CIB over the
//! control socket, calls these, and submits the operations.
//!
//! - [`configure`]: `configure primitive|group|...|load|delete` as operations against the
//!   current configuration.
//! - [`resource`]: `resource start|stop|move|ban|clear|cleanup|promote|demote|manage|status`.
//! - [`status`]: `hbcrm status` (crm_mon -1 layout) and its JSON form.

pub mod configure;
pub mod resource;
pub mod status;

use hablock::cluster::cib::{Cib, CibOp};

/// Applies `ops` to a copy of `cib` the way the DC will (all or nothing, then validated as a
/// whole), so a bad change is reported before it is sent, with the DC's own words.
pub fn precheck(cib: &Cib, ops: &[CibOp]) -> Result<(), String> {
    let mut copy = cib.clone();
    copy.apply(ops).map(|_| ()).map_err(|e| e.to_string())
}
