//! Sense data (SPC-4 4.5): what a CHECK CONDITION tells the initiator, in fixed (0x70) or
//! descriptor (0x72) format.

/// Sense keys used here.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Additional sense code and qualifier pairs used here.
pub mod asc {
    pub const NO_ADDITIONAL: (u8, u8) = (0x00, 0x00);
    pub const LU_NOT_READY_STANDBY: (u8, u8) = (0x04, 0x0b);
    pub const WRITE_ERROR: (u8, u8) = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1d, 0x00);
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    pub const INVALID_FIELD_IN_COMMAND_IU: (u8, u8) = (0x0e, 0x03);
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    pub const LU_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: (u8, u8) = (0x26, 0x04);
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: (u8, u8) = (0x27, 0x07);
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
    pub const CAPACITY_DATA_HAS_CHANGED: (u8, u8) = (0x2a, 0x09);
    pub const MEDIUM_NOT_PRESENT: (u8, u8) = (0x3a, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: (u8, u8) = (0x53, 0x02);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: (u8, u8) = (0x3f, 0x0e);
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
}

/// Which format sense data is built in (the LU's `sense_format`, or D_SENSE in the control page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenseFormat {
    #[default]
    Fixed,
    Descriptor,
}

/// Sense-key specific field pointer (SPC-4 4.5.2.4.2): which byte (and bit) was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True when the byte is in the CDB, false when in the parameter list.
    pub in_cdb: bool,
    pub byte: u16,
    /// Bit within the byte (0-7), when known.
    pub bit: Option<u8>,
}

/// One sense condition, before it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (a byte offset for MISCOMPARE, an LBA for medium errors).
    pub information: Option<u64>,
    pub field: Option<FieldPointer>,
}

impl Sense {
    pub fn new(key: u8, code: (u8, u8)) -> Sense {
        Sense {
            key,
            asc: code.0,
            ascq: code.1,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub fn invalid_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`).
    pub fn invalid_param(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAMETER_LIST)
        }
    }

    pub fn illegal(code: (u8, u8)) -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, code)
    }

    pub fn with_information(mut self, info: u64) -> Sense {
        self.information = Some(info);
        self
    }

    fn sks_bytes(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80; // SKSV
        if f.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 7); // BPV and BIT POINTER
        }
        Some([b0, (f.byte >> 8) as u8, f.byte as u8])
    }

    /// Encodes the sense data in `format`.
    pub fn encode(&self, format: SenseFormat) -> Vec<u8> {
        match format {
            SenseFormat::Fixed => {
                let mut s = vec![0u8; 18];
                s[0] = 0x70;
                s[2] = self.key & 0x0f;
                if let Some(info) = self.information {
                    // The fixed format holds 32 bits; VALID only when the value fits.
                    if let Ok(v) = u32::try_from(info) {
                        s[0] |= 0x80;
                        s[3..7].copy_from_slice(&v.to_be_bytes());
                    }
                }
                s[7] = 10;
                s[12] = self.asc;
                s[13] = self.ascq;
                if let Some(sks) = self.sks_bytes() {
                    s[15..18].copy_from_slice(&sks);
                }
                s
            }
            SenseFormat::Descriptor => {
                let mut s = vec![0u8; 8];
                s[0] = 0x72;
                s[1] = self.key & 0x0f;
                s[2] = self.asc;
                s[3] = self.ascq;
                if let Some(info) = self.information {
                    s.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
                    s.extend_from_slice(&info.to_be_bytes());
                }
                if let Some(sks) = self.sks_bytes() {
                    s.extend_from_slice(&[0x02, 0x06, 0, 0, sks[0], sks[1], sks[2], 0]);
                }
                s[7] = (s.len() - 8) as u8;
                s
            }
        }
    }
}

/// Decodes key/asc/ascq from sense data in either format; `None` when it is not well formed.
/// Used by tests and by anyone logging sense.
pub fn parse(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 && sense.len() >= 8 + sense[7] as usize => {
            Some((sense[2] & 0x0f, sense[12], sense[13]))
        }
        0x72 | 0x73 if sense.len() >= 8 && sense.len() == 8 + sense[7] as usize => {
            // Every descriptor must fit.
            let mut at = 8;
            while at < sense.len() {
                if at + 2 > sense.len() || at + 2 + sense[at + 1] as usize > sense.len() {
                    return None;
                }
                at += 2 + sense[at + 1] as usize;
            }
            Some((sense[1] & 0x0f, sense[2], sense[3]))
        }
        _ => None,
    }
}
