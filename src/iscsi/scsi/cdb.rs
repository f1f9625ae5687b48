//! Operation codes, the table of supported commands (which drives REPORT SUPPORTED
//! OPERATION CODES, the reservation conflict check, unit attention and standby rules),
//! and big-endian field readers.

/// Operation codes served.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNC_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PR_IN: u8 = 0x5e;
    pub const PR_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const SYNC_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
}

/// Service actions served.
pub mod sa {
    pub const READ_CAPACITY_16: u16 = 0x10;
    pub const GET_LBA_STATUS: u16 = 0x12;
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0c;
}

/// How a command fares under a persistent reservation held by someone else (SPC-4 5.12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, READ CAPACITY...).
    Always,
    /// Allowed under Write Exclusive, refused under Exclusive Access.
    Read,
    /// Refused under both.
    Write,
    /// RESERVE/RELEASE (6)/(10): refused while a persistent reservation exists.
    Spc2,
    /// PERSISTENT RESERVE IN/OUT: allowed (OUT checks its own rules).
    Pr,
}

/// One supported command (or one service action of a command).
#[derive(Debug)]
pub struct CmdInfo {
    pub op: u8,
    pub sa: Option<u16>,
    /// The CDB USAGE DATA of REPORT SUPPORTED OPERATION CODES: the opcode, then for every
    /// other byte a mask of the bits this server looks at. Its length is the CDB length.
    pub usage: &'static [u8],
    pub access: Access,
    /// Served while a unit attention is pending (SAM-5 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE).
    pub ua_exempt: bool,
    /// Served to other nexuses while an SPC-2 reservation is held.
    pub spc2_ok: bool,
    /// Touches the medium: refused with NOT READY while the device is in standby.
    pub medium: bool,
}

const fn c(op: u8, sa: Option<u16>, usage: &'static [u8], access: Access, medium: bool) -> CmdInfo {
    CmdInfo {
        op,
        sa,
        usage,
        access,
        ua_exempt: false,
        spc2_ok: false,
        medium,
    }
}

const fn exempt(mut i: CmdInfo) -> CmdInfo {
    i.ua_exempt = true;
    i.spc2_ok = true;
    i
}

const fn spc2_ok(mut i: CmdInfo) -> CmdInfo {
    i.spc2_ok = true;
    i
}

const FF: u8 = 0xff;
use Access::*;

/// Every command the LU serves, in opcode order.
pub static COMMANDS: &[CmdInfo] = &[
    c(op::TEST_UNIT_READY, None, &[0x00, 0, 0, 0, 0, 0], Always, true),
    exempt(c(op::REQUEST_SENSE, None, &[0x03, 0x01, 0, 0, FF, 0], Always, false)),
    c(op::READ_6, None, &[0x08, 0x1f, FF, FF, FF, 0], Read, true),
    c(op::WRITE_6, None, &[0x0a, 0x1f, FF, FF, FF, 0], Write, true),
    exempt(c(op::INQUIRY, None, &[0x12, 0x01, FF, FF, FF, 0], Always, false)),
    c(op::MODE_SELECT_6, None, &[0x15, 0x11, 0, 0, FF, 0], Write, false),
    c(op::RESERVE_6, None, &[0x16, 0, 0, 0, 0, 0], Spc2, false),
    spc2_ok(c(op::RELEASE_6, None, &[0x17, 0, 0, 0, 0, 0], Spc2, false)),
    c(op::MODE_SENSE_6, None, &[0x1a, 0x08, FF, FF, FF, 0], Read, false),
    c(op::START_STOP_UNIT, None, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0], Write, false),
    c(op::PREVENT_ALLOW, None, &[0x1e, 0, 0, 0, 0x03, 0], Write, false),
    c(
        op::READ_CAPACITY_10,
        None,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
        Always,
        false,
    ),
    c(
        op::READ_10,
        None,
        &[0x28, 0x1a, FF, FF, FF, FF, 0, FF, FF, 0],
        Read,
        true,
    ),
    c(
        op::WRITE_10,
        None,
        &[0x2a, 0x1a, FF, FF, FF, FF, 0, FF, FF, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_VERIFY_10,
        None,
        &[0x2e, 0x12, FF, FF, FF, FF, 0, FF, FF, 0],
        Write,
        true,
    ),
    c(
        op::PRE_FETCH_10,
        None,
        &[0x34, 0x02, FF, FF, FF, FF, 0x3f, FF, FF, 0],
        Read,
        true,
    ),
    c(
        op::PRE_FETCH_16,
        None,
        &[0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, 0],
        Read,
        true,
    ),
    c(
        op::ORWRITE_16,
        None,
        &[0x8b, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x3f, 0],
        Write,
        true,
    ),
    c(
        op::VERIFY_10,
        None,
        &[0x2f, 0x16, FF, FF, FF, FF, 0, FF, FF, 0],
        Read,
        true,
    ),
    c(
        op::SYNC_CACHE_10,
        None,
        &[0x35, 0x06, FF, FF, FF, FF, 0, FF, FF, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_SAME_10,
        None,
        &[0x41, 0x08, FF, FF, FF, FF, 0, FF, FF, 0],
        Write,
        true,
    ),
    c(op::UNMAP, None, &[0x42, 0, 0, 0, 0, 0, 0, FF, FF, 0], Write, true),
    c(
        op::MODE_SELECT_10,
        None,
        &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0],
        Write,
        false,
    ),
    c(op::RESERVE_10, None, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], Spc2, false),
    spc2_ok(c(op::RELEASE_10, None, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], Spc2, false)),
    c(
        op::MODE_SENSE_10,
        None,
        &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, 0],
        Read,
        false,
    ),
    c(op::PR_IN, Some(0), &[0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, 0], Pr, false),
    c(op::PR_IN, Some(1), &[0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, 0], Pr, false),
    c(op::PR_IN, Some(2), &[0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, 0], Pr, false),
    c(op::PR_IN, Some(3), &[0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, 0], Pr, false),
    c(
        op::PR_OUT,
        Some(0),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(1),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(2),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(3),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(4),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(5),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::PR_OUT,
        Some(6),
        &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0],
        Pr,
        false,
    ),
    c(
        op::READ_16,
        None,
        &[0x88, 0x1a, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Read,
        true,
    ),
    c(
        op::COMPARE_AND_WRITE,
        None,
        &[0x89, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_16,
        None,
        &[0x8a, 0x1a, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_VERIFY_16,
        None,
        &[0x8e, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::VERIFY_16,
        None,
        &[0x8f, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Read,
        true,
    ),
    c(
        op::SYNC_CACHE_16,
        None,
        &[0x91, 0x06, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_SAME_16,
        None,
        &[0x93, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::SERVICE_ACTION_IN_16,
        Some(sa::READ_CAPACITY_16),
        &[0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Always,
        false,
    ),
    c(
        op::SERVICE_ACTION_IN_16,
        Some(sa::GET_LBA_STATUS),
        &[0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Read,
        true,
    ),
    exempt(c(
        op::REPORT_LUNS,
        None,
        &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        Always,
        false,
    )),
    spc2_ok(c(
        op::MAINTENANCE_IN,
        Some(sa::REPORT_SUPPORTED_OPCODES),
        &[0xa3, 0x1f, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Always,
        false,
    )),
    c(
        op::READ_12,
        None,
        &[0xa8, 0x1a, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Read,
        true,
    ),
    c(
        op::WRITE_12,
        None,
        &[0xaa, 0x1a, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::WRITE_VERIFY_12,
        None,
        &[0xae, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Write,
        true,
    ),
    c(
        op::VERIFY_12,
        None,
        &[0xaf, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        Read,
        true,
    ),
];

/// True when `op` carries a service action in CDB byte 1 (bits 4-0).
pub fn has_service_action(op: u8) -> bool {
    matches!(
        op,
        op::PR_IN | op::PR_OUT | op::SERVICE_ACTION_IN_16 | op::MAINTENANCE_IN
    )
}

/// The CDB length the opcode's group implies (SPC-4 4.2.5.1); `None` for groups not used here.
pub fn cdb_len(op: u8) -> Option<usize> {
    match op >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Looks a CDB up in [`COMMANDS`]. `Err(true)` means the opcode is known but not the service action.
pub fn lookup(cdb: &[u8]) -> Result<&'static CmdInfo, bool> {
    let op = *cdb.first().ok_or(false)?;
    if has_service_action(op) {
        let sa = cdb.get(1).map(|b| (b & 0x1f) as u16).ok_or(false)?;
        let mut known_op = false;
        for i in COMMANDS.iter().filter(|i| i.op == op) {
            known_op = true;
            if i.sa == Some(sa) {
                return Ok(i);
            }
        }
        Err(known_op)
    } else {
        COMMANDS.iter().find(|i| i.op == op).ok_or(false)
    }
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
