//! SCSI block device emulation (SPC-4 / SBC-3) for the iSCSI target, modelled on tgt's `sbc`
//! and LIO's target core.
//!
//! - [`Luns`]: the LUN table of one target; decodes the SAM LUN field, answers REPORT LUNS,
//!   presents LUN 0 as tgt does (a controller when no LU 0 is configured), refuses missing LUNs.
//! - [`LogicalUnit`]: one LU over any [`BlockDevice`]: settings, unit attentions, reservations,
//!   mode pages, and the commands.
//! - [`pr`]: persistent reservations as a pure state machine, plus the APTPL file format.
//! - [`sense`]: sense data; [`cdb`]: opcodes and the table of supported commands;
//!   [`mode`]: mode pages; [`device`]: [`FileDevice`] and [`LunDevice`].

pub mod cdb;
pub mod device;
pub mod lu;
pub mod mode;
pub mod pr;
pub mod sense;

#[cfg(test)]
mod tests;

pub use device::{FileDevice, LunDevice};
pub use lu::{LogicalUnit, LuParams};
pub use sense::{Sense, SenseFormat};

use crate::iscsi::types::{status, ScsiOutcome, ScsiTask};
use cdb::{be16, be32, op};
use kernel_shim::{BlockDevice, IoBuf};
use sense::{asc, key};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Highest LUN number (flat space addressing, 14 bits).
pub const MAX_LUN: u16 = 0x3fff;

/// Decodes a single-level SAM-5 LUN (peripheral device or flat space addressing).
/// `None` for other methods, bus numbers and second-level addresses.
pub fn decode_lun(raw: u64) -> Option<u16> {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => Some(b[1] as u16),
        1 => Some((((b[0] & 0x3f) as u16) << 8) | b[1] as u16),
        _ => None,
    }
}

/// Encodes a LUN as REPORT LUNS lists it: peripheral addressing below 256, flat above.
pub fn encode_lun(lun: u16) -> u64 {
    let lun = lun & MAX_LUN;
    let b0 = if lun < 256 { 0 } else { 0x40 | (lun >> 8) as u8 };
    u64::from_be_bytes([b0, lun as u8, 0, 0, 0, 0, 0, 0])
}

/// The logical units of one target.
pub struct Luns<D: BlockDevice = LunDevice> {
    map: RwLock<BTreeMap<u16, Arc<LogicalUnit<D>>>>,
    /// INQUIRY of the controller LUN 0 and of missing LUNs uses these strings.
    controller: LuParams,
}

impl<D: BlockDevice> Default for Luns<D> {
    fn default() -> Self {
        Luns::new()
    }
}

fn check(s: Sense) -> ScsiOutcome {
    ScsiOutcome {
        status: status::CHECK_CONDITION,
        sense: s.encode(SenseFormat::Fixed),
        data_in: None,
        write_len: None,
    }
}

fn data(mut d: Vec<u8>, alloc: usize) -> ScsiOutcome {
    d.truncate(alloc);
    ScsiOutcome {
        status: status::GOOD,
        sense: Vec::new(),
        data_in: (!d.is_empty()).then(|| IoBuf::copy_from(&d)),
        write_len: None,
    }
}

impl<D: BlockDevice> Luns<D> {
    pub fn new() -> Luns<D> {
        let mut controller = LuParams::new(0, 0);
        controller.product_id = "Controller".into();
        Luns {
            map: RwLock::new(BTreeMap::new()),
            controller,
        }
    }

    /// Adds (or replaces) LUN `lun`; every other LU tells its nexuses REPORTED LUNS DATA HAS CHANGED.
    pub fn insert(&self, lun: u16, lu: Arc<LogicalUnit<D>>) -> Option<Arc<LogicalUnit<D>>> {
        let old = self.map.write().expect("luns").insert(lun & MAX_LUN, lu);
        self.announce(lun);
        old
    }

    /// Removes LUN `lun` (the caller waits for its tasks); the others announce the change.
    pub fn remove(&self, lun: u16) -> Option<Arc<LogicalUnit<D>>> {
        let old = self.map.write().expect("luns").remove(&lun);
        if old.is_some() {
            self.announce(lun);
        }
        old
    }

    fn announce(&self, except: u16) {
        for (n, lu) in self.map.read().expect("luns").iter() {
            if *n != except {
                lu.luns_changed();
            }
        }
    }

    pub fn get(&self, lun: u16) -> Option<Arc<LogicalUnit<D>>> {
        self.map.read().expect("luns").get(&lun).cloned()
    }

    /// Configured LUN numbers, ascending (LUN 0 included only if configured).
    pub fn numbers(&self) -> Vec<u16> {
        self.map.read().expect("luns").keys().copied().collect()
    }

    /// LUN RESET for `lun` from task management.
    pub fn lun_reset(&self, lun: u64, by: Option<&crate::iscsi::types::Nexus>) {
        if let Some(lu) = decode_lun(lun).and_then(|n| self.get(n)) {
            lu.lun_reset(by);
        }
    }

    /// TARGET WARM (or COLD) RESET: every LU is reset as by LUN RESET.
    pub fn reset_all(&self, by: Option<&crate::iscsi::types::Nexus>) {
        for lu in self.map.read().expect("luns").values() {
            lu.lun_reset(by);
        }
    }

    /// A session (I_T nexus) ended: SPC-2 reservations and removal prevention it held go.
    pub fn nexus_lost(&self, n: &crate::iscsi::types::Nexus) {
        for lu in self.map.read().expect("luns").values() {
            lu.nexus_lost(n);
        }
    }

    /// Executes one command on the LUN its `lun` field addresses.
    pub async fn execute(&self, task: ScsiTask) -> ScsiOutcome {
        let Some(&opcode) = task.cdb.first() else {
            return check(Sense::illegal(asc::INVALID_OPCODE));
        };
        let lun = decode_lun(task.lun);
        if opcode == op::REPORT_LUNS {
            let out = self.report_luns(&task.cdb);
            // SAM-5 5.14: REPORT LUNS through a LU clears its REPORTED LUNS DATA HAS CHANGED.
            if let (status::GOOD, Some(lu)) = (out.status, lun.and_then(|n| self.get(n))) {
                lu.clear_unit_attention(&task.nexus, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
            }
            return out;
        }
        match lun.and_then(|n| self.get(n)) {
            Some(lu) => lu.execute(task).await,
            None if lun == Some(0) => self.controller_lun(&task.cdb),
            None => self.missing_lun(&task.cdb),
        }
    }

    fn report_luns(&self, cdb: &[u8]) -> ScsiOutcome {
        if cdb.len() < 12 {
            return check(Sense::invalid_cdb(0, None));
        }
        let alloc = be32(cdb, 6) as usize;
        if alloc < 16 {
            return check(Sense::invalid_cdb(6, None));
        }
        let mut luns = match cdb[2] {
            0x00 | 0x02 => self.numbers(),
            // No well-known or administrative logical units here.
            0x01 | 0x10 | 0x11 => Vec::new(),
            _ => return check(Sense::invalid_cdb(2, None)),
        };
        if matches!(cdb[2], 0x00 | 0x02) && luns.first() != Some(&0) {
            luns.insert(0, 0); // the controller LU
        }
        let mut d = ((luns.len() * 8) as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        for n in luns {
            d.extend_from_slice(&encode_lun(n).to_be_bytes());
        }
        data(d, alloc)
    }

    /// LUN 0 when none is configured: tgt's controller (peripheral device type 0x0c).
    fn controller_lun(&self, cdb: &[u8]) -> ScsiOutcome {
        match cdb[0] {
            op::INQUIRY if cdb.len() >= 6 => {
                let alloc = be16(cdb, 3) as usize;
                if cdb[1] & 0x01 == 0 {
                    if cdb[2] != 0 {
                        return check(Sense::invalid_cdb(2, None));
                    }
                    return data(lu::standard_inquiry(&self.controller, 0x0c), alloc);
                }
                match cdb[2] {
                    0x00 => data(vec![0x0c, 0x00, 0, 2, 0x00, 0x80], alloc),
                    0x80 => {
                        let sn = b"hablock-ctl";
                        let mut d = vec![0x0c, 0x80, 0, sn.len() as u8];
                        d.extend_from_slice(sn);
                        data(d, alloc)
                    }
                    _ => check(Sense::invalid_cdb(2, None)),
                }
            }
            op::TEST_UNIT_READY => data(Vec::new(), 0),
            op::REQUEST_SENSE if cdb.len() >= 6 => {
                let fmt = if cdb[1] & 1 != 0 {
                    SenseFormat::Descriptor
                } else {
                    SenseFormat::Fixed
                };
                data(
                    Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL).encode(fmt),
                    cdb[4] as usize,
                )
            }
            _ => check(Sense::illegal(asc::INVALID_OPCODE)),
        }
    }

    /// A LUN that does not exist: INQUIRY says "not present" (qualifier 011b, type 1Fh),
    /// REQUEST SENSE reports LOGICAL UNIT NOT SUPPORTED, everything else fails with it.
    fn missing_lun(&self, cdb: &[u8]) -> ScsiOutcome {
        match cdb[0] {
            op::INQUIRY if cdb.len() >= 6 && cdb[1] & 0x01 == 0 => {
                data(lu::standard_inquiry(&self.controller, 0x7f), be16(cdb, 3) as usize)
            }
            op::REQUEST_SENSE if cdb.len() >= 6 => {
                let fmt = if cdb[1] & 1 != 0 {
                    SenseFormat::Descriptor
                } else {
                    SenseFormat::Fixed
                };
                data(
                    Sense::new(key::ILLEGAL_REQUEST, asc::LU_NOT_SUPPORTED).encode(fmt),
                    cdb[4] as usize,
                )
            }
            _ => check(Sense::illegal(asc::LU_NOT_SUPPORTED)),
        }
    }
}
