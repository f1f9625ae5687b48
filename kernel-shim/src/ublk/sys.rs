//! The ublk kernel ABI (include/uapi/linux/ublk_cmd.h) as explicit byte layouts.
//!
//! Every structure is encoded and decoded by hand in the kernel's native byte order
//! (ublk is local to one machine), so nothing depends on how Rust lays out a struct.
//! The layouts are documented in docs/ublk.md and pinned by the tests at the bottom.

/// The control device that creates and deletes ublk devices.
pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// What a user sees when the kernel has no ublk driver loaded.
pub const NOT_AVAILABLE: &str = "ublk is not available: load the ublk_drv module (modprobe ublk_drv, Linux 6.0+)";

// Control command numbers (the `nr` of the ioctl encoding).
pub const CMD_GET_DEV_INFO: u8 = 0x02;
pub const CMD_ADD_DEV: u8 = 0x04;
pub const CMD_DEL_DEV: u8 = 0x05;
pub const CMD_START_DEV: u8 = 0x06;
pub const CMD_STOP_DEV: u8 = 0x07;
pub const CMD_SET_PARAMS: u8 = 0x08;
pub const CMD_GET_PARAMS: u8 = 0x09;
pub const CMD_START_USER_RECOVERY: u8 = 0x10;
pub const CMD_END_USER_RECOVERY: u8 = 0x11;

// I/O command numbers.
pub const IO_FETCH_REQ: u8 = 0x20;
pub const IO_COMMIT_AND_FETCH_REQ: u8 = 0x21;

/// Device states (ublksrv_ctrl_dev_info.state).
pub const S_DEV_DEAD: u16 = 0;
pub const S_DEV_LIVE: u16 = 1;
/// The server died and the device (with USER_RECOVERY) waits for a new one.
pub const S_DEV_QUIESCED: u16 = 2;

/// Result of a fetch: a request is waiting in the descriptor of that tag.
pub const IO_RES_OK: i32 = 0;
/// Result of a fetch when the device is going away: do not fetch again.
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

// Device feature flags (ublksrv_ctrl_dev_info.flags).
/// Keep the device (requests queued) when the server dies, for a new one to recover.
pub const F_USER_RECOVERY: u64 = 1 << 3;
/// With USER_RECOVERY: requests the dead server had taken are reissued to the new one
/// (without it they fail with EIO).
pub const F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
/// Data is not copied through a buffer named in the I/O commands: the server reads a
/// WRITE's data from and writes a READ's data to /dev/ublkcN at [`user_copy_pos`]
/// (Linux 6.5+).
pub const F_USER_COPY: u64 = 1 << 7;

/// Where request data starts in /dev/ublkcN's file offsets with USER_COPY (the
/// descriptor arrays sit below it).
pub const IO_BUF_OFFSET: u64 = 0x8000_0000;
/// With USER_COPY, bits 0..25 of the offset are the byte within the request, bits
/// 25..41 the tag, bits 41..53 the queue.
pub const IO_BUF_BITS: u32 = 25;
pub const TAG_BITS: u32 = 16;

// Request operations (low 8 bits of ublksrv_io_desc.op_flags).
pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_FLUSH: u8 = 2;
pub const OP_DISCARD: u8 = 3;
pub const OP_WRITE_SAME: u8 = 4;
pub const OP_WRITE_ZEROES: u8 = 5;

// Request flags (op_flags bits 8..32).
pub const IO_F_FUA: u32 = 1 << 13;
pub const IO_F_NOUNMAP: u32 = 1 << 15;

// Parameter types (ublk_params.types) and basic attributes.
pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const ATTR_READ_ONLY: u32 = 1 << 0;
pub const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const ATTR_FUA: u32 = 1 << 3;

/// Largest queue depth the kernel accepts; also sets the stride of the descriptor mmap.
pub const MAX_QUEUE_DEPTH: u16 = 4096;

pub const CTRL_CMD_LEN: usize = 32;
pub const DEV_INFO_LEN: usize = 64;
pub const IO_DESC_LEN: usize = 24;
pub const IO_CMD_LEN: usize = 16;
/// ublk_params up to and including the zoned part (what 6.1–6.12 kernels know).
pub const PARAMS_LEN: usize = 112;

const PAGE: usize = 4096;

/// `_IOWR('u', nr, size)`: how 6.x kernels want ublk commands numbered
/// (with UBLK_F_CMD_IOCTL_ENCODE; kernels built without legacy opcodes require it).
pub const fn iowr(nr: u8, size: usize) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    (IOC_READ_WRITE << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr as u32
}

/// `_IOR('u', nr, size)`: the kernel's numbering of commands that only read.
pub const fn ior(nr: u8, size: usize) -> u32 {
    const IOC_READ: u32 = 2;
    (IOC_READ << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr as u32
}

/// The ioctl-encoded op of a control command (GET_* are _IOR, the rest _IOWR).
pub const fn ctrl_op(nr: u8) -> u32 {
    match nr {
        CMD_GET_DEV_INFO | CMD_GET_PARAMS => ior(nr, CTRL_CMD_LEN),
        _ => iowr(nr, CTRL_CMD_LEN),
    }
}

/// The ioctl-encoded op of an I/O command.
pub const fn io_op(nr: u8) -> u32 {
    iowr(nr, IO_CMD_LEN)
}

/// Offset into /dev/ublkcN of queue `q`'s descriptor array: the kernel strides queues
/// by the size a queue of the largest depth would need.
pub fn desc_mmap_offset(q: u16) -> u64 {
    q as u64 * round_up(MAX_QUEUE_DEPTH as usize * IO_DESC_LEN, PAGE) as u64
}

/// Length of queue's descriptor mapping for `depth` tags (the kernel wants it exact).
pub fn desc_mmap_len(depth: u16) -> usize {
    round_up(depth as usize * IO_DESC_LEN, PAGE)
}

/// The /dev/ublkcN file offset of byte `off` of queue `q`'s request `tag` (USER_COPY):
/// `pread` there copies a WRITE's data out of the request, `pwrite` fills a READ's.
pub const fn user_copy_pos(q: u16, tag: u16, off: u32) -> u64 {
    IO_BUF_OFFSET + ((q as u64) << (IO_BUF_BITS + TAG_BITS)) + ((tag as u64) << IO_BUF_BITS) + off as u64
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// struct ublksrv_ctrl_cmd: sent in the SQE's command area (the rest of its 80 bytes zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtrlCmd {
    pub dev_id: u32,
    /// u16::MAX when the command is not for one queue.
    pub queue_id: u16,
    /// Length of the buffer at `addr`.
    pub len: u16,
    pub addr: u64,
    pub data: u64,
}

impl CtrlCmd {
    pub fn encode(&self) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[0..4].copy_from_slice(&self.dev_id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.queue_id.to_ne_bytes());
        b[6..8].copy_from_slice(&self.len.to_ne_bytes());
        b[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        b[16..24].copy_from_slice(&self.data.to_ne_bytes());
        // 24..26 dev_path_len, 26..28 pad, 28..32 reserved: zero.
        b
    }
}

/// struct ublksrv_ctrl_dev_info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
}

impl DevInfo {
    pub fn encode(&self) -> [u8; DEV_INFO_LEN] {
        let mut b = [0u8; DEV_INFO_LEN];
        b[0..2].copy_from_slice(&self.nr_hw_queues.to_ne_bytes());
        b[2..4].copy_from_slice(&self.queue_depth.to_ne_bytes());
        b[4..6].copy_from_slice(&self.state.to_ne_bytes());
        b[8..12].copy_from_slice(&self.max_io_buf_bytes.to_ne_bytes());
        b[12..16].copy_from_slice(&self.dev_id.to_ne_bytes());
        b[16..20].copy_from_slice(&self.ublksrv_pid.to_ne_bytes());
        b[24..32].copy_from_slice(&self.flags.to_ne_bytes());
        b[32..40].copy_from_slice(&self.ublksrv_flags.to_ne_bytes());
        b[40..44].copy_from_slice(&self.owner_uid.to_ne_bytes());
        b[44..48].copy_from_slice(&self.owner_gid.to_ne_bytes());
        b
    }

    pub fn decode(b: &[u8; DEV_INFO_LEN]) -> DevInfo {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        DevInfo {
            nr_hw_queues: u16_at(0),
            queue_depth: u16_at(2),
            state: u16_at(4),
            max_io_buf_bytes: u32_at(8),
            dev_id: u32_at(12),
            ublksrv_pid: u32_at(16) as i32,
            flags: u64_at(24),
            ublksrv_flags: u64_at(32),
            owner_uid: u32_at(40),
            owner_gid: u32_at(44),
        }
    }
}

/// The parts of struct ublk_params this server sets: basic and discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub dev_sectors: u64,
    /// None: no discard/write-zeroes parameters (the kernel then sends neither).
    pub discard: Option<DiscardParams>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscardParams {
    pub granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
}

impl Params {
    pub fn encode(&self) -> [u8; PARAMS_LEN] {
        let mut b = [0u8; PARAMS_LEN];
        let types = PARAM_TYPE_BASIC | if self.discard.is_some() { PARAM_TYPE_DISCARD } else { 0 };
        b[0..4].copy_from_slice(&(PARAMS_LEN as u32).to_ne_bytes());
        b[4..8].copy_from_slice(&types.to_ne_bytes());
        // basic at 8 (32 bytes)
        b[8..12].copy_from_slice(&self.attrs.to_ne_bytes());
        b[12] = self.logical_bs_shift;
        b[13] = self.physical_bs_shift;
        b[14] = self.io_opt_shift;
        b[15] = self.io_min_shift;
        b[16..20].copy_from_slice(&self.max_sectors.to_ne_bytes());
        // 20..24 chunk_sectors: 0
        b[24..32].copy_from_slice(&self.dev_sectors.to_ne_bytes());
        // 32..40 virt_boundary_mask: 0
        // discard at 40 (20 bytes)
        if let Some(d) = &self.discard {
            // 40..44 discard_alignment: 0
            b[44..48].copy_from_slice(&d.granularity.to_ne_bytes());
            b[48..52].copy_from_slice(&d.max_discard_sectors.to_ne_bytes());
            b[52..56].copy_from_slice(&d.max_write_zeroes_sectors.to_ne_bytes());
            // The driver supports single-segment discards only.
            b[56..58].copy_from_slice(&1u16.to_ne_bytes());
        }
        // devt at 60 (16, set by the kernel), zoned at 76 (32), padding to 112.
        b
    }

    /// What GET_PARAMS returned (the parts [`encode`](Self::encode) writes).
    pub fn decode(b: &[u8; PARAMS_LEN]) -> Params {
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let types = u32_at(4);
        Params {
            attrs: u32_at(8),
            logical_bs_shift: b[12],
            physical_bs_shift: b[13],
            io_opt_shift: b[14],
            io_min_shift: b[15],
            max_sectors: u32_at(16),
            dev_sectors: u64::from_ne_bytes(b[24..32].try_into().expect("8 bytes")),
            discard: (types & PARAM_TYPE_DISCARD != 0).then(|| DiscardParams {
                granularity: u32_at(44),
                max_discard_sectors: u32_at(48),
                max_write_zeroes_sectors: u32_at(52),
            }),
        }
    }
}

/// struct ublksrv_io_desc: one per tag in the queue's shared descriptor array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoDesc {
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl IoDesc {
    pub fn decode(b: &[u8; IO_DESC_LEN]) -> IoDesc {
        IoDesc {
            op_flags: u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")),
            nr_sectors: u32::from_ne_bytes(b[4..8].try_into().expect("4 bytes")),
            start_sector: u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes")),
            addr: u64::from_ne_bytes(b[16..24].try_into().expect("8 bytes")),
        }
    }

    pub fn encode(&self) -> [u8; IO_DESC_LEN] {
        let mut b = [0u8; IO_DESC_LEN];
        b[0..4].copy_from_slice(&self.op_flags.to_ne_bytes());
        b[4..8].copy_from_slice(&self.nr_sectors.to_ne_bytes());
        b[8..16].copy_from_slice(&self.start_sector.to_ne_bytes());
        b[16..24].copy_from_slice(&self.addr.to_ne_bytes());
        b
    }

    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }

    /// The flag bits as the header defines them (bit 8 and up, unshifted).
    pub fn flags(&self) -> u32 {
        self.op_flags & !0xff
    }
}

/// struct ublksrv_io_cmd: FETCH_REQ and COMMIT_AND_FETCH_REQ, in the SQE's command area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    /// Result of the request being committed (bytes done, or -errno).
    pub result: i32,
    /// The server's buffer for this tag's data.
    pub addr: u64,
}

impl IoCmd {
    pub fn encode(&self) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.tag.to_ne_bytes());
        b[4..8].copy_from_slice(&self.result.to_ne_bytes());
        b[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_copy_offsets_follow_the_kernel_layout() {
        // UBLKSRV_IO_BUF_OFFSET + (q_id << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF) + offset,
        // UBLK_TAG_OFF = 25, UBLK_QID_OFF = 41.
        assert_eq!(F_USER_COPY, 0x80);
        assert_eq!(user_copy_pos(0, 0, 0), 0x8000_0000);
        assert_eq!(user_copy_pos(0, 1, 0), 0x8000_0000 + 0x200_0000);
        assert_eq!(user_copy_pos(1, 0, 0), 0x8000_0000 + 0x200_0000_0000);
        assert_eq!(
            user_copy_pos(3, 63, 4096),
            0x8000_0000 + 3 * (1 << 41) + 63 * (1 << 25) + 4096
        );
        // The largest of each part stays in its field.
        let top = user_copy_pos(4095, 65535, (1 << 25) - 1);
        assert_eq!(top, 0x8000_0000 + ((1u64 << 53) - 1));
        assert_eq!((top - IO_BUF_OFFSET) >> 41, 4095);
        assert_eq!(((top - IO_BUF_OFFSET) >> 25) & 0xffff, 65535);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // Values as the C macros expand on x86_64/arm64 (_IOC_READ|_IOC_WRITE = 3).
        assert_eq!(ctrl_op(CMD_ADD_DEV), 0xc020_7504);
        assert_eq!(ctrl_op(CMD_DEL_DEV), 0xc020_7505);
        assert_eq!(ctrl_op(CMD_START_DEV), 0xc020_7506);
        assert_eq!(ctrl_op(CMD_STOP_DEV), 0xc020_7507);
        assert_eq!(ctrl_op(CMD_SET_PARAMS), 0xc020_7508);
        assert_eq!(ctrl_op(CMD_GET_DEV_INFO), 0x8020_7502);
        assert_eq!(ctrl_op(CMD_GET_PARAMS), 0x8020_7509);
        assert_eq!(ctrl_op(CMD_START_USER_RECOVERY), 0xc020_7510);
        assert_eq!(ctrl_op(CMD_END_USER_RECOVERY), 0xc020_7511);
        assert_eq!(io_op(IO_FETCH_REQ), 0xc010_7520);
        assert_eq!(io_op(IO_COMMIT_AND_FETCH_REQ), 0xc010_7521);
    }

    #[test]
    fn ctrl_cmd_layout() {
        let c = CtrlCmd {
            dev_id: 0x0403_0201,
            queue_id: 0xffff,
            len: 64,
            addr: 0x1122_3344_5566_7788,
            data: 42,
        };
        let b = c.encode();
        assert_eq!(&b[0..4], &0x0403_0201u32.to_ne_bytes());
        assert_eq!(&b[4..6], &[0xff, 0xff]);
        assert_eq!(&b[6..8], &64u16.to_ne_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&b[16..24], &42u64.to_ne_bytes());
        assert!(
            b[24..].iter().all(|&x| x == 0),
            "padding and the rest of the SQE area stay zero"
        );
    }

    #[test]
    fn dev_info_round_trips_and_has_the_kernel_offsets() {
        let d = DevInfo {
            nr_hw_queues: 2,
            queue_depth: 64,
            state: 1,
            max_io_buf_bytes: 512 << 10,
            dev_id: u32::MAX,
            ublksrv_pid: 1234,
            flags: F_CMD_IOCTL_ENCODE | F_USER_RECOVERY,
            ublksrv_flags: 7,
            owner_uid: 1000,
            owner_gid: 1001,
        };
        let b = d.encode();
        assert_eq!(DevInfo::decode(&b), d);
        assert_eq!(&b[8..12], &(512u32 << 10).to_ne_bytes());
        assert_eq!(&b[12..16], &[0xff; 4]);
        assert_eq!(&b[24..32], &0x48u64.to_ne_bytes());
        assert_eq!(F_USER_RECOVERY | F_USER_RECOVERY_REISSUE, 0x18);
        assert!(b[48..].iter().all(|&x| x == 0), "reserved1/2 zero");
        assert!(b[6..8].iter().all(|&x| x == 0) && b[20..24].iter().all(|&x| x == 0));
    }

    #[test]
    fn params_layout() {
        let p = Params {
            attrs: ATTR_VOLATILE_CACHE | ATTR_FUA,
            logical_bs_shift: 9,
            physical_bs_shift: 12,
            io_opt_shift: 12,
            io_min_shift: 9,
            max_sectors: 1024,
            dev_sectors: 131072,
            discard: Some(DiscardParams {
                granularity: 4096,
                max_discard_sectors: 2048,
                max_write_zeroes_sectors: 2048,
            }),
        };
        let b = p.encode();
        assert_eq!(&b[0..4], &112u32.to_ne_bytes());
        assert_eq!(&b[4..8], &3u32.to_ne_bytes());
        assert_eq!(&b[8..12], &12u32.to_ne_bytes());
        assert_eq!(&b[12..16], &[9, 12, 12, 9]);
        assert_eq!(&b[16..20], &1024u32.to_ne_bytes());
        assert_eq!(&b[24..32], &131072u64.to_ne_bytes());
        assert_eq!(&b[40..44], &[0; 4]);
        assert_eq!(&b[44..48], &4096u32.to_ne_bytes());
        assert_eq!(&b[48..52], &2048u32.to_ne_bytes());
        assert_eq!(&b[52..56], &2048u32.to_ne_bytes());
        assert_eq!(&b[56..58], &1u16.to_ne_bytes());
        assert!(b[58..].iter().all(|&x| x == 0));
        assert_eq!(Params::decode(&b), p);
        let none = Params { discard: None, ..p }.encode();
        assert_eq!(Params::decode(&none), Params { discard: None, ..p });
        assert_eq!(&none[4..8], &1u32.to_ne_bytes());
        assert!(none[40..].iter().all(|&x| x == 0));
    }

    #[test]
    fn io_desc_and_io_cmd_layouts() {
        let d = IoDesc {
            op_flags: OP_WRITE as u32 | IO_F_FUA,
            nr_sectors: 8,
            start_sector: 2048,
            addr: 0xdead_beef,
        };
        let b = d.encode();
        assert_eq!(IoDesc::decode(&b), d);
        assert_eq!(&b[0..4], &0x2001u32.to_ne_bytes());
        assert_eq!(&b[8..16], &2048u64.to_ne_bytes());
        assert_eq!(d.op(), OP_WRITE);
        assert_eq!(d.flags(), IO_F_FUA);
        let c = IoCmd {
            q_id: 1,
            tag: 63,
            result: -5,
            addr: 0x7f00_0000_1000,
        }
        .encode();
        assert_eq!(&c[0..2], &1u16.to_ne_bytes());
        assert_eq!(&c[2..4], &63u16.to_ne_bytes());
        assert_eq!(&c[4..8], &(-5i32).to_ne_bytes());
        assert_eq!(&c[8..16], &0x7f00_0000_1000u64.to_ne_bytes());
        assert!(c[16..].iter().all(|&x| x == 0));
    }

    #[test]
    fn descriptor_mmap_geometry() {
        // 4096 tags * 24 bytes = 96 KiB per queue slot, whatever the actual depth.
        assert_eq!(desc_mmap_offset(0), 0);
        assert_eq!(desc_mmap_offset(1), 98304);
        assert_eq!(desc_mmap_offset(3), 3 * 98304);
        assert_eq!(desc_mmap_len(64), 4096);
        assert_eq!(desc_mmap_len(128), 4096);
        assert_eq!(desc_mmap_len(171), 8192);
    }
}
