//! Types shared between the iSCSI layers: what login negotiated, and what a SCSI command
//! carries in and out. Keeping them here lets the session and the SCSI emulation evolve apart.

use kernel_shim::IoBuf;

/// Operational parameters of a session and connection, as negotiated at login
/// (RFC 7143 section 13). Lengths are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Largest data segment the target accepts in one PDU (what the target declared).
    pub max_recv_data_segment_length: u32,
    /// Largest data segment the target may send in one PDU (the initiator's declaration).
    pub max_xmit_data_segment_length: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u8,
    pub max_connections: u32,
}

impl Default for SessionParams {
    /// RFC 7143's defaults.
    fn default() -> Self {
        SessionParams {
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            first_burst_length: 65536,
            max_burst_length: 262144,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            header_digest: false,
            data_digest: false,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// The I_T nexus a command arrived on: who is asking, through which session.
/// Reservations and unit attentions are kept per nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// iSCSI initiator name (InitiatorName key).
    pub initiator_name: String,
    /// Initiator session id from the login (6 bytes).
    pub isid: [u8; 6],
    /// Target portal group tag of the target port (tgt uses 1).
    pub tpgt: u16,
}

impl Nexus {
    /// SPC-4's iSCSI initiator port name: "<name>,i,0x<isid hex>".
    pub fn initiator_port(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator_name);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Task attribute from the SCSI Command PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command, with all its Data-Out collected.
#[derive(Debug)]
pub struct ScsiTask {
    /// The 64-bit LUN field as sent (SAM-5 encoding); [`crate::iscsi::scsi`] decodes it.
    pub lun: u64,
    /// The CDB, 6 to 16 bytes (longer CDBs arrive through an AHS and are appended).
    pub cdb: Vec<u8>,
    /// Data sent by the initiator (WRITE etc.), exactly ExpectedDataTransferLength bytes or
    /// fewer if the initiator sent fewer; empty for commands without a write direction.
    pub data_out: Option<IoBuf>,
    /// ExpectedDataTransferLength for the read direction (0 if not a read).
    pub expected_data_in: u32,
    pub attr: TaskAttr,
    pub nexus: Nexus,
}

/// SCSI status codes used here (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// What a SCSI command produced.
#[derive(Debug)]
pub struct ScsiOutcome {
    /// SCSI status byte ([`status`]).
    pub status: u8,
    /// Sense data (fixed format, 18+ bytes) when status is CHECK CONDITION; else empty.
    pub sense: Vec<u8>,
    /// Data for the initiator (READ, INQUIRY...). The session truncates it to the expected
    /// length and reports the residual.
    pub data_in: Option<IoBuf>,
    /// For commands that move data out (WRITE and WRITE AND VERIFY): the transfer length
    /// the CDB asks for, in bytes. The session reports its difference from the PDU's
    /// ExpectedDataTransferLength as an overflow/underflow residual (RFC 7143 11.4.5.1).
    pub write_len: Option<u32>,
}
