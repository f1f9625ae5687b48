//! iSCSI PDU wire codec (RFC 7143 section 11).
//!
//! A PDU is a 48-byte Basic Header Segment (BHS), optional Additional Header Segments (AHS,
//! `TotalAHSLength` 4-byte words), an optional header digest, a data segment of
//! `DataSegmentLength` bytes padded to a multiple of 4, and an optional data digest. All
//! integers are big-endian except the CRC32C digests, which travel least significant byte
//! first (RFC 7143 appendix B / RFC 3720 B.4: 32 zero bytes give `aa 36 91 8a`).
//!
//! [`Pdu::decode`] turns a BHS (+AHS, + data) into a typed PDU, [`Pdu::encode`] writes one.
//! [`Deframer`] cuts a byte stream into whole PDUs, checking the negotiated data segment limit
//! and the digests. For large Data-In payloads, [`encode_header`] and [`data_trailer`] let the
//! driver write header, payload slice, padding and digest with one vectored write and no copy.
//!
//! Reserved fields are written as zero and ignored on receipt, as RFC 7143 section 11 asks;
//! reserved *code values* in defined fields (opcodes, AHS types) are errors.

use std::fmt;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a CRC32C digest on the wire.
pub const DIGEST_LEN: usize = 4;
/// The reserved tag value ("no task" / "no target transfer").
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Largest TotalAHSLength we accept, in bytes (a 260-byte extended CDB needs 248 + header).
pub const MAX_AHS_LEN: usize = 512;

/// PDU opcodes (RFC 7143 section 11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Reject reason codes (RFC 7143 section 11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Errors from decoding and deframing. [`PduError::closes_connection`] says which ones leave
/// the stream unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PduError {
    /// Fewer bytes than the layout needs.
    Truncated { need: usize, have: usize },
    /// An opcode RFC 7143 does not define (the BHS is kept for a Reject).
    BadOpcode { opcode: u8, bhs: Box<[u8; BHS_LEN]> },
    /// A reserved code value in a defined field (the BHS is kept for a Reject).
    Reserved {
        field: &'static str,
        value: u32,
        bhs: Box<[u8; BHS_LEN]>,
    },
    /// DataSegmentLength over the negotiated MaxRecvDataSegmentLength.
    DataSegmentTooLong { len: u32, max: u32 },
    /// TotalAHSLength over [`MAX_AHS_LEN`], or AHS entries that do not fit it.
    AhsTooLong { len: usize },
    /// Malformed AHS entry.
    BadAhs { ahs_type: u8, len: usize },
    /// Header digest mismatch: the header cannot be trusted, the connection must close.
    HeaderDigest { expected: u32, got: u32 },
    /// Data digest mismatch: the header is sound, the PDU must be rejected (reason 0x02)
    /// and discarded (RFC 7143 section 7.8). `pdu` holds the decoded PDU with its data removed.
    DataDigest {
        expected: u32,
        got: u32,
        bhs: Box<[u8; BHS_LEN]>,
        pdu: Box<Pdu>,
    },
}

impl PduError {
    /// True when the byte stream can no longer be parsed (framing lost or header untrusted).
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            PduError::BadOpcode { .. } | PduError::DataDigest { .. } | PduError::Reserved { .. }
        )
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PduError::Truncated { need, have } => write!(f, "truncated PDU: need {need} bytes, have {have}"),
            PduError::BadOpcode { opcode, .. } => write!(f, "unknown opcode {opcode:#04x}"),
            PduError::Reserved { field, value, .. } => write!(f, "reserved value {value:#x} in {field}"),
            PduError::DataSegmentTooLong { len, max } => {
                write!(f, "data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")
            }
            PduError::AhsTooLong { len } => write!(f, "AHS of {len} bytes is too long"),
            PduError::BadAhs { ahs_type, len } => write!(f, "malformed AHS type {ahs_type} length {len}"),
            PduError::HeaderDigest { expected, got } => {
                write!(
                    f,
                    "header digest mismatch: computed {expected:#010x}, received {got:#010x}"
                )
            }
            PduError::DataDigest { expected, got, .. } => {
                write!(
                    f,
                    "data digest mismatch: computed {expected:#010x}, received {got:#010x}"
                )
            }
        }
    }
}

impl std::error::Error for PduError {}

/// Which digests are in force on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// CRC32C of `data` as iSCSI computes it.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

fn pad_len(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Bytes of a data segment of `n` bytes on the wire, padding included (digest excluded).
pub fn padded_len(n: usize) -> usize {
    n + pad_len(n)
}

// ---- field helpers over a BHS ----

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// DataSegmentLength of a BHS.
pub fn bhs_data_len(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}
/// TotalAHSLength of a BHS in bytes.
pub fn bhs_ahs_len(bhs: &[u8; BHS_LEN]) -> usize {
    bhs[4] as usize * 4
}

// ---- PDU structs ----

/// NOP-Out (0x00).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

/// SCSI Command (0x01).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// No unsolicited Data-Out follows.
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute, 0..=4 (untagged, simple, ordered, head of queue, ACA).
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_len: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    /// The CDB: the 16 bytes of the BHS, followed by the extended CDB AHS if present.
    pub cdb: Vec<u8>,
    /// Bidirectional Read Expected Data Transfer Length AHS, if present.
    pub bidi_read_len: Option<u32>,
    /// Immediate data.
    pub data: Vec<u8>,
}

/// Task Management Function Request (0x02).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub rtt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub ref_cmdsn: u32,
    pub exp_datasn: u32,
}

/// TMF function codes (RFC 7143 section 11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
    /// Response codes (RFC 7143 section 11.6.1).
    pub const RESP_COMPLETE: u8 = 0;
    pub const RESP_NO_TASK: u8 = 1;
    pub const RESP_NO_LUN: u8 = 2;
    pub const RESP_REASSIGN_UNSUPPORTED: u8 = 4;
    pub const RESP_NOT_SUPPORTED: u8 = 5;
    pub const RESP_REJECTED: u8 = 255;
}

/// Login Request (0x03). Always immediate on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRequest {
    /// T: transit to `nsg`.
    pub transit: bool,
    /// C: text continues in the next PDU.
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

/// Text Request (0x04).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

/// SCSI Data-Out (0x05).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
    pub data: Vec<u8>,
}

/// Logout Request (0x06).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close the session, 1 close the connection, 2 remove the connection for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
}

/// SNACK Request (0x10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snack {
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_statsn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (0x20).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub data: Vec<u8>,
}

/// SCSI Response (0x21).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI response: 0 command completed at target, 1 target failure.
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub exp_datasn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
    /// Data segment: SenseLength (2 bytes) + sense data, or empty.
    pub data: Vec<u8>,
}

/// Task Management Function Response (0x22).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
}

/// Login Response (0x23).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
}

/// Text Response (0x24).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub data: Vec<u8>,
}

/// SCSI Data-In (0x25). When sent by the session the payload travels separately
/// (see [`encode_header`]) and `data` stays empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S: status is carried in this PDU (phase collapse); requires F.
    pub has_status: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
    pub data: Vec<u8>,
}

/// Logout Response (0x26).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    /// 0 closed successfully, 1 CID not found, 2 recovery not supported, 3 cleanup failed.
    pub response: u8,
    pub itt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (0x31).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub r2tsn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Asynchronous Message (0x32).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
    pub data: Vec<u8>,
}

/// Reject (0x3f). `data` is the rejected PDU's BHS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub statsn: u32,
    pub exp_cmdsn: u32,
    pub max_cmdsn: u32,
    pub datasn_r2tsn: u32,
    pub data: Vec<u8>,
}

/// Any PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    Snack(Snack),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

const F: u8 = 0x80;
const C: u8 = 0x40;
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LEN: u8 = 2;

fn flag(b: u8, bit: u8) -> bool {
    b & bit != 0
}
fn set(cond: bool, bit: u8) -> u8 {
    if cond {
        bit
    } else {
        0
    }
}

impl Pdu {
    pub fn opcode(&self) -> Opcode {
        match self {
            Pdu::NopOut(_) => Opcode::NopOut,
            Pdu::ScsiCommand(_) => Opcode::ScsiCommand,
            Pdu::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            Pdu::LoginRequest(_) => Opcode::LoginRequest,
            Pdu::TextRequest(_) => Opcode::TextRequest,
            Pdu::DataOut(_) => Opcode::DataOut,
            Pdu::LogoutRequest(_) => Opcode::LogoutRequest,
            Pdu::Snack(_) => Opcode::Snack,
            Pdu::NopIn(_) => Opcode::NopIn,
            Pdu::ScsiResponse(_) => Opcode::ScsiResponse,
            Pdu::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            Pdu::LoginResponse(_) => Opcode::LoginResponse,
            Pdu::TextResponse(_) => Opcode::TextResponse,
            Pdu::DataIn(_) => Opcode::DataIn,
            Pdu::LogoutResponse(_) => Opcode::LogoutResponse,
            Pdu::R2t(_) => Opcode::R2t,
            Pdu::AsyncMessage(_) => Opcode::AsyncMessage,
            Pdu::Reject(_) => Opcode::Reject,
        }
    }

    /// The data segment (without padding).
    pub fn data(&self) -> &[u8] {
        match self {
            Pdu::NopOut(p) => &p.data,
            Pdu::ScsiCommand(p) => &p.data,
            Pdu::LoginRequest(p) => &p.data,
            Pdu::TextRequest(p) => &p.data,
            Pdu::DataOut(p) => &p.data,
            Pdu::NopIn(p) => &p.data,
            Pdu::ScsiResponse(p) => &p.data,
            Pdu::LoginResponse(p) => &p.data,
            Pdu::TextResponse(p) => &p.data,
            Pdu::DataIn(p) => &p.data,
            Pdu::AsyncMessage(p) => &p.data,
            Pdu::Reject(p) => &p.data,
            _ => &[],
        }
    }

    /// Takes the data segment out, leaving it empty.
    pub fn take_data(&mut self) -> Vec<u8> {
        let d = match self {
            Pdu::NopOut(p) => &mut p.data,
            Pdu::ScsiCommand(p) => &mut p.data,
            Pdu::LoginRequest(p) => &mut p.data,
            Pdu::TextRequest(p) => &mut p.data,
            Pdu::DataOut(p) => &mut p.data,
            Pdu::NopIn(p) => &mut p.data,
            Pdu::ScsiResponse(p) => &mut p.data,
            Pdu::LoginResponse(p) => &mut p.data,
            Pdu::TextResponse(p) => &mut p.data,
            Pdu::DataIn(p) => &mut p.data,
            Pdu::AsyncMessage(p) => &mut p.data,
            Pdu::Reject(p) => &mut p.data,
            _ => return Vec::new(),
        };
        std::mem::take(d)
    }

    /// Decodes a PDU from its BHS, AHS bytes (TotalAHSLength*4 of them) and data segment
    /// (exactly DataSegmentLength bytes, padding removed).
    pub fn decode(bhs: &[u8; BHS_LEN], ahs: &[u8], data: Vec<u8>) -> Result<Pdu, PduError> {
        let b = &bhs[..];
        let op = Opcode::from_u8(b[0]).ok_or(PduError::BadOpcode {
            opcode: b[0] & 0x3f,
            bhs: Box::new(*bhs),
        })?;
        if ahs.len() != bhs_ahs_len(bhs) {
            return Err(PduError::Truncated {
                need: bhs_ahs_len(bhs),
                have: ahs.len(),
            });
        }
        if data.len() != bhs_data_len(bhs) as usize {
            return Err(PduError::Truncated {
                need: bhs_data_len(bhs) as usize,
                have: data.len(),
            });
        }
        if !ahs.is_empty() && op != Opcode::ScsiCommand {
            // Only the SCSI Command defines AHS types; tolerate and ignore them elsewhere
            // after checking they are well-formed.
            parse_ahs(ahs)?;
        }
        let imm = flag(b[0], 0x40);
        let f1 = b[1];
        Ok(match op {
            Opcode::NopOut => Pdu::NopOut(NopOut {
                immediate: imm,
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                cmdsn: get32(b, 24),
                exp_statsn: get32(b, 28),
                data,
            }),
            Opcode::ScsiCommand => {
                let mut cdb = b[32..48].to_vec();
                let mut bidi_read_len = None;
                for (t, body) in parse_ahs(ahs)? {
                    match t {
                        AHS_EXTENDED_CDB => {
                            if body.is_empty() {
                                return Err(PduError::BadAhs { ahs_type: t, len: 0 });
                            }
                            // First byte reserved, the rest are CDB bytes 16 and on.
                            cdb.extend_from_slice(&body[1..]);
                        }
                        AHS_BIDI_READ_LEN => {
                            if body.len() != 5 {
                                return Err(PduError::BadAhs {
                                    ahs_type: t,
                                    len: body.len(),
                                });
                            }
                            bidi_read_len = Some(get32(body, 1));
                        }
                        _ => {
                            return Err(PduError::Reserved {
                                field: "AHSType",
                                value: t as u32,
                                bhs: Box::new(*bhs),
                            })
                        }
                    }
                }
                let attr = f1 & 0x07;
                if attr > 4 {
                    return Err(PduError::Reserved {
                        field: "ATTR",
                        value: attr as u32,
                        bhs: Box::new(*bhs),
                    });
                }
                Pdu::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: flag(f1, F),
                    read: flag(f1, 0x40),
                    write: flag(f1, 0x20),
                    attr,
                    lun: get64(b, 8),
                    itt: get32(b, 16),
                    expected_data_len: get32(b, 20),
                    cmdsn: get32(b, 24),
                    exp_statsn: get32(b, 28),
                    cdb,
                    bidi_read_len,
                    data,
                })
            }
            Opcode::TaskMgmtRequest => Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: f1 & 0x7f,
                lun: get64(b, 8),
                itt: get32(b, 16),
                rtt: get32(b, 20),
                cmdsn: get32(b, 24),
                exp_statsn: get32(b, 28),
                ref_cmdsn: get32(b, 32),
                exp_datasn: get32(b, 36),
            }),
            Opcode::LoginRequest => Pdu::LoginRequest(LoginRequest {
                transit: flag(f1, F),
                cont: flag(f1, C),
                csg: (f1 >> 2) & 3,
                nsg: f1 & 3,
                version_max: b[2],
                version_min: b[3],
                isid: b[8..14].try_into().expect("6 bytes"),
                tsih: get16(b, 14),
                itt: get32(b, 16),
                cid: get16(b, 20),
                cmdsn: get32(b, 24),
                exp_statsn: get32(b, 28),
                data,
            }),
            Opcode::TextRequest => Pdu::TextRequest(TextRequest {
                immediate: imm,
                final_: flag(f1, F),
                cont: flag(f1, C),
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                cmdsn: get32(b, 24),
                exp_statsn: get32(b, 28),
                data,
            }),
            Opcode::DataOut => Pdu::DataOut(DataOut {
                final_: flag(f1, F),
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                exp_statsn: get32(b, 28),
                datasn: get32(b, 36),
                buffer_offset: get32(b, 40),
                data,
            }),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: f1 & 0x7f,
                itt: get32(b, 16),
                cid: get16(b, 20),
                cmdsn: get32(b, 24),
                exp_statsn: get32(b, 28),
            }),
            Opcode::Snack => Pdu::Snack(Snack {
                snack_type: f1 & 0x0f,
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                exp_statsn: get32(b, 28),
                beg_run: get32(b, 40),
                run_length: get32(b, 44),
            }),
            Opcode::NopIn => Pdu::NopIn(NopIn {
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                data,
            }),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: flag(f1, 0x10),
                bidi_underflow: flag(f1, 0x08),
                overflow: flag(f1, 0x04),
                underflow: flag(f1, 0x02),
                response: b[2],
                status: b[3],
                itt: get32(b, 16),
                snack_tag: get32(b, 20),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                exp_datasn: get32(b, 36),
                bidi_residual: get32(b, 40),
                residual: get32(b, 44),
                data,
            }),
            Opcode::TaskMgmtResponse => Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt: get32(b, 16),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
            }),
            Opcode::LoginResponse => Pdu::LoginResponse(LoginResponse {
                transit: flag(f1, F),
                cont: flag(f1, C),
                csg: (f1 >> 2) & 3,
                nsg: f1 & 3,
                version_max: b[2],
                version_active: b[3],
                isid: b[8..14].try_into().expect("6 bytes"),
                tsih: get16(b, 14),
                itt: get32(b, 16),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                status_class: b[36],
                status_detail: b[37],
                data,
            }),
            Opcode::TextResponse => Pdu::TextResponse(TextResponse {
                final_: flag(f1, F),
                cont: flag(f1, C),
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                data,
            }),
            Opcode::DataIn => Pdu::DataIn(DataIn {
                final_: flag(f1, F),
                ack: flag(f1, 0x40),
                overflow: flag(f1, 0x04),
                underflow: flag(f1, 0x02),
                has_status: flag(f1, 0x01),
                status: b[3],
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                datasn: get32(b, 36),
                buffer_offset: get32(b, 40),
                residual: get32(b, 44),
                data,
            }),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse {
                response: b[2],
                itt: get32(b, 16),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                time2wait: get16(b, 40),
                time2retain: get16(b, 42),
            }),
            Opcode::R2t => Pdu::R2t(R2t {
                lun: get64(b, 8),
                itt: get32(b, 16),
                ttt: get32(b, 20),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                r2tsn: get32(b, 36),
                buffer_offset: get32(b, 40),
                desired_len: get32(b, 44),
            }),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage {
                lun: get64(b, 8),
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                event: b[36],
                vcode: b[37],
                param1: get16(b, 38),
                param2: get16(b, 40),
                param3: get16(b, 42),
                data,
            }),
            Opcode::Reject => Pdu::Reject(Reject {
                reason: b[2],
                statsn: get32(b, 24),
                exp_cmdsn: get32(b, 28),
                max_cmdsn: get32(b, 32),
                datasn_r2tsn: get32(b, 36),
                data,
            }),
        })
    }

    /// Writes the BHS and the AHS of this PDU, with DataSegmentLength = `data_len` (capped at
    /// 24 bits). A CDB so long that its AHS passes 1020 bytes cannot be expressed; decoded PDUs
    /// never get there ([`MAX_AHS_LEN`]).
    pub fn encode_bhs_ahs(&self, data_len: usize) -> (Box<[u8; BHS_LEN]>, Vec<u8>) {
        let mut b = [0u8; BHS_LEN];
        let mut ahs = Vec::new();
        b[0] = self.opcode() as u8;
        match self {
            Pdu::NopOut(p) => {
                b[0] |= set(p.immediate, 0x40);
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
            }
            Pdu::ScsiCommand(p) => {
                b[0] |= set(p.immediate, 0x40);
                b[1] = set(p.final_, F) | set(p.read, 0x40) | set(p.write, 0x20) | (p.attr & 7);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.expected_data_len);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
                let n = p.cdb.len().min(16);
                b[32..32 + n].copy_from_slice(&p.cdb[..n]);
                if p.cdb.len() > 16 {
                    let ext = &p.cdb[16..];
                    let ahs_len = ext.len() + 1;
                    ahs.extend_from_slice(&(ahs_len as u16).to_be_bytes());
                    ahs.push(AHS_EXTENDED_CDB);
                    ahs.push(0);
                    ahs.extend_from_slice(ext);
                    ahs.resize(ahs.len() + pad_len(ahs.len()), 0);
                }
                if let Some(len) = p.bidi_read_len {
                    ahs.extend_from_slice(&5u16.to_be_bytes());
                    ahs.push(AHS_BIDI_READ_LEN);
                    ahs.push(0);
                    ahs.extend_from_slice(&len.to_be_bytes());
                    ahs.resize(ahs.len() + pad_len(ahs.len()), 0);
                }
            }
            Pdu::TaskMgmtRequest(p) => {
                b[0] |= set(p.immediate, 0x40);
                b[1] = F | (p.function & 0x7f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.rtt);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
                put32(&mut b, 32, p.ref_cmdsn);
                put32(&mut b, 36, p.exp_datasn);
            }
            Pdu::LoginRequest(p) => {
                b[0] |= 0x40;
                b[1] = set(p.transit, F) | set(p.cont, C) | ((p.csg & 3) << 2) | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
            }
            Pdu::TextRequest(p) => {
                b[0] |= set(p.immediate, 0x40);
                b[1] = set(p.final_, F) | set(p.cont, C);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
            }
            Pdu::DataOut(p) => {
                b[1] = set(p.final_, F);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_statsn);
                put32(&mut b, 36, p.datasn);
                put32(&mut b, 40, p.buffer_offset);
            }
            Pdu::LogoutRequest(p) => {
                b[0] |= set(p.immediate, 0x40);
                b[1] = F | (p.reason & 0x7f);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmdsn);
                put32(&mut b, 28, p.exp_statsn);
            }
            Pdu::Snack(p) => {
                b[1] = F | (p.snack_type & 0x0f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_statsn);
                put32(&mut b, 40, p.beg_run);
                put32(&mut b, 44, p.run_length);
            }
            Pdu::NopIn(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
            }
            Pdu::ScsiResponse(p) => {
                b[1] = F
                    | set(p.bidi_overflow, 0x10)
                    | set(p.bidi_underflow, 0x08)
                    | set(p.overflow, 0x04)
                    | set(p.underflow, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.snack_tag);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                put32(&mut b, 36, p.exp_datasn);
                put32(&mut b, 40, p.bidi_residual);
                put32(&mut b, 44, p.residual);
            }
            Pdu::TaskMgmtResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
            }
            Pdu::LoginResponse(p) => {
                b[1] = set(p.transit, F) | set(p.cont, C) | ((p.csg & 3) << 2) | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Pdu::TextResponse(p) => {
                b[1] = set(p.final_, F) | set(p.cont, C);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
            }
            Pdu::DataIn(p) => {
                b[1] = set(p.final_, F)
                    | set(p.ack, 0x40)
                    | set(p.overflow, 0x04)
                    | set(p.underflow, 0x02)
                    | set(p.has_status, 0x01);
                b[3] = if p.has_status { p.status } else { 0 };
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                put32(&mut b, 36, p.datasn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.residual);
            }
            Pdu::LogoutResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                put16(&mut b, 40, p.time2wait);
                put16(&mut b, 42, p.time2retain);
            }
            Pdu::R2t(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                put32(&mut b, 36, p.r2tsn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.desired_len);
            }
            Pdu::AsyncMessage(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(&mut b, 38, p.param1);
                put16(&mut b, 40, p.param2);
                put16(&mut b, 42, p.param3);
            }
            Pdu::Reject(p) => {
                b[1] = F;
                b[2] = p.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.statsn);
                put32(&mut b, 28, p.exp_cmdsn);
                put32(&mut b, 32, p.max_cmdsn);
                put32(&mut b, 36, p.datasn_r2tsn);
            }
        }
        debug_assert!(ahs.len() % 4 == 0 && ahs.len() / 4 <= 255);
        b[4] = (ahs.len() / 4).min(255) as u8;
        let dl = (data_len as u32).min(0x00ff_ffff);
        b[5..8].copy_from_slice(&dl.to_be_bytes()[1..]);
        (Box::new(b), ahs)
    }

    /// Appends the whole PDU (header, digests, data, padding) to `out`.
    pub fn encode(&self, digests: Digests, out: &mut Vec<u8>) {
        let data = self.data();
        out.extend_from_slice(encode_header(self, data.len(), digests).as_slice());
        out.extend_from_slice(data);
        out.extend_from_slice(data_trailer(data, digests.data).as_slice());
    }

    /// The whole PDU as a new buffer.
    pub fn to_bytes(&self, digests: Digests) -> Vec<u8> {
        let mut v = Vec::with_capacity(BHS_LEN + 8 + padded_len(self.data().len()));
        self.encode(digests, &mut v);
        v
    }
}

/// Splits an AHS area into (type, AHS-specific bytes) entries.
fn parse_ahs(mut ahs: &[u8]) -> Result<Vec<(u8, &[u8])>, PduError> {
    if ahs.len() > MAX_AHS_LEN {
        return Err(PduError::AhsTooLong { len: ahs.len() });
    }
    let mut out = Vec::new();
    while !ahs.is_empty() {
        if ahs.len() < 4 {
            return Err(PduError::BadAhs {
                ahs_type: 0,
                len: ahs.len(),
            });
        }
        let len = get16(ahs, 0) as usize;
        let t = ahs[2];
        // The length counts the AHS-specific bytes after the 3-byte header (RFC 7143 11.2.2.1),
        // starting with the reserved byte at offset 3.
        let total = 3 + len;
        let padded = padded_len(total);
        if len == 0 || padded > ahs.len() {
            return Err(PduError::BadAhs { ahs_type: t, len });
        }
        out.push((t, &ahs[3..3 + len]));
        ahs = &ahs[padded..];
    }
    Ok(out)
}

/// An encoded header: BHS, AHS and header digest, ready to write.
#[derive(Clone)]
pub struct HeaderBuf {
    buf: [u8; BHS_LEN + MAX_AHS_LEN + DIGEST_LEN],
    len: usize,
}

impl HeaderBuf {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeaderBuf({:02x?})", self.as_slice())
    }
}

/// Encodes the header of `pdu` for a data segment of `data_len` bytes (which need not be
/// `pdu.data()`: Data-In carries its payload separately so it is never copied).
pub fn encode_header(pdu: &Pdu, data_len: usize, digests: Digests) -> HeaderBuf {
    let (bhs, ahs) = pdu.encode_bhs_ahs(data_len);
    let mut h = HeaderBuf {
        buf: [0; BHS_LEN + MAX_AHS_LEN + DIGEST_LEN],
        len: 0,
    };
    let ahs_len = ahs.len().min(MAX_AHS_LEN);
    h.buf[..BHS_LEN].copy_from_slice(&bhs[..]);
    h.buf[BHS_LEN..BHS_LEN + ahs_len].copy_from_slice(&ahs[..ahs_len]);
    h.len = BHS_LEN + ahs_len;
    if digests.header {
        let d = crc32c(&h.buf[..h.len]);
        h.buf[h.len..h.len + 4].copy_from_slice(&d.to_le_bytes());
        h.len += 4;
    }
    h
}

/// What follows a data segment on the wire: 0-3 pad bytes and the data digest if on.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    buf: [u8; 3 + DIGEST_LEN],
    len: usize,
}

impl Trailer {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The padding and (if `data_digest`) the CRC32C of `data` + padding. Empty data segments
/// carry no digest.
pub fn data_trailer(data: &[u8], data_digest: bool) -> Trailer {
    let pad = pad_len(data.len());
    let mut t = Trailer { buf: [0; 7], len: pad };
    if data_digest && !data.is_empty() {
        let d = crc32c::crc32c_append(crc32c(data), &[0u8; 3][..pad]);
        t.buf[pad..pad + 4].copy_from_slice(&d.to_le_bytes());
        t.len += 4;
    }
    t
}

/// Cuts a byte stream into PDUs.
///
/// Feed received bytes with [`Deframer::push`] and take PDUs with [`Deframer::next_pdu`].
/// PDUs are parsed lazily, one per call, so a driver that changes the digest setting or the
/// data segment limit after handling a PDU (the final Login Response switches digests on)
/// gets the new setting applied from the very next PDU, even if its bytes are already buffered.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    max_recv_data_segment_length: u32,
    digests: Digests,
    /// Set after an error that loses framing: nothing more is parsed.
    broken: bool,
    /// Length of the buffer before an uncommitted [`Deframer::read_buf`] area.
    reading: Option<usize>,
}

impl Deframer {
    /// A deframer for the login phase: no digests, the given data segment limit
    /// (8192 is RFC 7143's default until negotiated).
    pub fn new(max_recv_data_segment_length: u32) -> Deframer {
        Deframer {
            buf: Vec::new(),
            start: 0,
            max_recv_data_segment_length,
            digests: Digests::default(),
            broken: false,
            reading: None,
        }
    }

    pub fn set_digests(&mut self, digests: Digests) {
        self.digests = digests;
    }

    pub fn set_max_recv_data_segment_length(&mut self, max: u32) {
        self.max_recv_data_segment_length = max;
    }

    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// Bytes buffered and not yet returned as PDUs.
    pub fn buffered(&self) -> usize {
        self.reading.unwrap_or(self.buf.len()) - self.start
    }

    /// True after an error that closes the connection.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.drop_uncommitted();
        if self.broken {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// A writable area of at least `min` bytes at the end of the buffer, so the driver can
    /// `read()` from the socket straight into it and then call [`Deframer::commit`] with the
    /// count: one copy fewer than [`Deframer::push`].
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.drop_uncommitted();
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + min.max(1), 0);
        self.reading = Some(len);
        &mut self.buf[len..]
    }

    /// After [`Deframer::read_buf`]: keeps the first `n` bytes of that area as received data.
    pub fn commit(&mut self, n: usize) {
        if let Some(len) = self.reading.take() {
            let n = n.min(self.buf.len() - len);
            self.buf.truncate(len + n);
        }
        if self.broken {
            self.buf.clear();
        }
    }

    fn drop_uncommitted(&mut self) {
        if let Some(len) = self.reading.take() {
            self.buf.truncate(len);
        }
    }

    fn compact(&mut self) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 64 * 1024) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Bytes still needed before the next PDU is complete (at least 1 when nothing is known).
    pub fn wanted(&self) -> usize {
        let avail = self.buffered();
        if avail < BHS_LEN {
            return BHS_LEN - avail;
        }
        self.frame_len().map(|n| n.saturating_sub(avail)).unwrap_or(0)
    }

    fn frame_len(&self) -> Option<usize> {
        let bhs: &[u8; BHS_LEN] = self.buf[self.start..self.start + BHS_LEN].try_into().ok()?;
        let dl = bhs_data_len(bhs) as usize;
        let hd = if self.digests.header { DIGEST_LEN } else { 0 };
        let dd = if self.digests.data && dl > 0 { DIGEST_LEN } else { 0 };
        Some(BHS_LEN + bhs_ahs_len(bhs) + hd + padded_len(dl) + dd)
    }

    /// The next whole PDU, `None` if more bytes are needed. After an error for which
    /// [`PduError::closes_connection`] is true the stream is unusable and the buffer is dropped.
    pub fn next_pdu(&mut self) -> Option<Result<Pdu, PduError>> {
        self.drop_uncommitted();
        let avail = self.buffered();
        if self.broken || avail < BHS_LEN {
            return None;
        }
        let s = self.start;
        let bhs: [u8; BHS_LEN] = self.buf[s..s + BHS_LEN].try_into().expect("48 bytes");
        let ahs_len = bhs_ahs_len(&bhs);
        let dl = bhs_data_len(&bhs);
        if ahs_len > MAX_AHS_LEN {
            return Some(Err(self.fail(PduError::AhsTooLong { len: ahs_len })));
        }
        if dl > self.max_recv_data_segment_length {
            return Some(Err(self.fail(PduError::DataSegmentTooLong {
                len: dl,
                max: self.max_recv_data_segment_length,
            })));
        }
        let total = self.frame_len()?;
        if avail < total {
            return None;
        }
        let mut at = s + BHS_LEN + ahs_len;
        if self.digests.header {
            let expected = crc32c(&self.buf[s..at]);
            let got = u32::from_le_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            if expected != got {
                return Some(Err(self.fail(PduError::HeaderDigest { expected, got })));
            }
            at += DIGEST_LEN;
        }
        let ahs = self.buf[s + BHS_LEN..s + BHS_LEN + ahs_len].to_vec();
        let dl = dl as usize;
        let data = self.buf[at..at + dl].to_vec();
        let mut digest_err = None;
        if self.digests.data && dl > 0 {
            let padded = padded_len(dl);
            let expected = crc32c(&self.buf[at..at + padded]);
            let got = u32::from_le_bytes(self.buf[at + padded..at + padded + 4].try_into().expect("4 bytes"));
            if expected != got {
                digest_err = Some((expected, got));
            }
        }
        self.start = s + total;
        let res = Pdu::decode(&bhs, &ahs, data);
        Some(match (res, digest_err) {
            (Ok(mut pdu), Some((expected, got))) => {
                pdu.take_data();
                Err(PduError::DataDigest {
                    expected,
                    got,
                    bhs: Box::new(bhs),
                    pdu: Box::new(pdu),
                })
            }
            (r, _) => r,
        })
    }

    fn fail(&mut self, e: PduError) -> PduError {
        self.broken = true;
        self.buf.clear();
        self.start = 0;
        e
    }
}

#[cfg(test)]
#[path = "pdu_test.rs"]
mod tests;
