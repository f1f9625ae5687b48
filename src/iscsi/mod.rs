//! iSCSI target (RFC 7143) with SCSI block emulation (SPC-4/SBC-3), modelled on tgt and LIO.
//!
//! Layers, each a pure core unless noted:
//! - [`pdu`]: the wire codec (BHS, AHS, data segments, padding, CRC32C digests).
//! - [`params`], [`chap`], [`login`]: text keys, operational negotiation, CHAP, the login phase.
//! - [`session`]: the full feature phase of one connection (command window, R2T, Data-In/Out,
//!   NOP, task management, text, logout).
//! - [`scsi`]: SCSI commands executed against a block device, sense data, reservations.
//! - [`target`]: targets, LUNs, ACLs and accounts (what `hbtgtadm` manages) and their persistence.
//! - [`server`]: the driver: TCP listener, one task per connection, SCSI tasks (not pure).
//! - [`types`]: the few types the layers share.

pub mod chap;
pub mod login;
pub mod params;
pub mod pdu;
pub mod scsi;
pub mod server;
pub mod session;
pub mod target;
pub mod types;
