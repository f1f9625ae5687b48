//! The metadata superblock: one 4 KiB block, little-endian, fixed offsets,
//! CRC32C-protected. The byte-by-byte format is in docs/metadata.md; the
//! offsets below are the authority and the doc mirrors them.

use super::gi::{Generations, HISTORY_UUIDS};
use super::layout::{Layout, BLOCK, MAX_NODE_ID_EXCL, MAX_PEER_SLOTS, SB_SIZE};
use std::fmt;

/// First 8 bytes of every hablock superblock.
pub const MAGIC: [u8; 8] = *b"HBLKMETA";
/// Format version written by this code. Readers refuse newer versions.
pub const VERSION: u32 = 1;
/// Node id meaning "no node" in a peer slot.
pub const NODE_ID_NONE: u32 = u32::MAX;

/// Offset of DRBD's big-endian magic in its superblocks (v07, v08 and v09).
const DRBD_MAGIC_AT: usize = 60;
/// DRBD's base magic; the metadata magics are this plus 3 (v07), 4 (v08),
/// 5 (v08 unclean) and 6 (v09).
const DRBD_MAGIC: u32 = 0x8374_0267;

// Field offsets (bytes from the start of the block).
mod off {
    pub const MAGIC: usize = 0x000;
    pub const VERSION: usize = 0x008;
    pub const SB_SIZE: usize = 0x00c;
    pub const CRC: usize = 0x010;
    pub const FLAGS: usize = 0x014;
    pub const NODE_ID: usize = 0x018;
    pub const MAX_PEERS: usize = 0x01c;
    pub const DEVICE_UUID: usize = 0x020;
    pub const LA_SIZE: usize = 0x028;
    pub const DATA_CAPACITY: usize = 0x030;
    pub const MD_OFFSET: usize = 0x038;
    pub const MD_SIZE: usize = 0x040;
    pub const SB_OFFSET: usize = 0x048;
    pub const AL_OFFSET: usize = 0x050;
    pub const AL_RING_BLOCKS: usize = 0x058;
    pub const AL_EXTENTS: usize = 0x05c;
    pub const AL_EXTENT_SIZE: usize = 0x060;
    pub const BM_BYTES_PER_BIT: usize = 0x064;
    pub const BM_OFFSET: usize = 0x068;
    pub const BM_SLOT_SIZE: usize = 0x070;
    pub const BM_SIZE: usize = 0x078;
    pub const CURRENT_UUID: usize = 0x080;
    pub const WRITE_SEQ: usize = 0x088;
    pub const CREATED: usize = 0x090;
    pub const LOCATION: usize = 0x098;
    // 0x09c..0x100 reserved, zero.
    pub const PEERS: usize = 0x100;
    pub const PEER_SIZE: usize = 64;
    pub const HISTORY: usize = PEERS + super::MAX_PEER_SLOTS * PEER_SIZE; // 0x900
    pub const RESERVED_TAIL: usize = HISTORY + super::HISTORY_UUIDS * 8; // 0xa00
                                                                         // Peer slot record.
    pub const P_BITMAP_UUID: usize = 0;
    pub const P_NODE_ID: usize = 8;
    pub const P_FLAGS: usize = 12;
    pub const P_DAGTAG: usize = 16;
    pub const P_RESYNC_POS: usize = 24;
    pub const P_LA_PEER_SIZE: usize = 32;
    // 40..64 reserved, zero.
}

/// Bit tests, updates and a readable Display for a u32 flag word with a NAMES table.
macro_rules! flag_ops {
    ($t:ty) => {
        impl $t {
            pub fn has(self, f: u32) -> bool {
                self.0 & f == f
            }
            pub fn set(&mut self, f: u32, on: bool) {
                if on {
                    self.0 |= f
                } else {
                    self.0 &= !f
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                names(f, self.0, &Self::NAMES)
            }
        }
    };
}

/// Device flags (DRBD's `MDF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MdFlags(pub u32);

impl MdFlags {
    /// The data is consistent (not in the middle of a resync as target).
    pub const CONSISTENT: u32 = 1 << 0;
    /// The node is primary; found set on open = it crashed as primary.
    pub const PRIMARY_IND: u32 = 1 << 1;
    /// The node was connected to its peer(s) when the flags were written.
    pub const CONNECTED_IND: u32 = 1 << 2;
    /// A full sync was requested and has not completed.
    pub const FULL_SYNC: u32 = 1 << 3;
    /// The data was UpToDate (not only Consistent) when last written.
    pub const WAS_UP_TO_DATE: u32 = 1 << 4;
    /// A peer was marked Outdated by fencing (DRBD 8 compatibility; per-peer in slots).
    pub const PEER_OUTDATED: u32 = 1 << 5;
    /// The node crashed while primary: resync the activity log's extents.
    pub const CRASHED_PRIMARY: u32 = 1 << 6;
    /// Clean shutdown: the activity log is empty, no replay needed.
    pub const AL_CLEAN: u32 = 1 << 7;
    /// `al-updates no`: the activity log is not maintained (crash = full sync).
    pub const AL_DISABLED: u32 = 1 << 8;
    /// Primary lost quorum (DRBD 9).
    pub const PRIMARY_LOST_QUORUM: u32 = 1 << 9;
    /// The node had quorum when last written (DRBD 9).
    pub const HAVE_QUORUM: u32 = 1 << 10;
    /// The initial full sync (or `new-current-uuid --clear-bitmap`) completed once.
    pub const INITIAL_SYNC_DONE: u32 = 1 << 11;

    const NAMES: [(u32, &'static str); 12] = [
        (Self::CONSISTENT, "consistent"),
        (Self::PRIMARY_IND, "primary"),
        (Self::CONNECTED_IND, "connected"),
        (Self::FULL_SYNC, "full-sync"),
        (Self::WAS_UP_TO_DATE, "was-up-to-date"),
        (Self::PEER_OUTDATED, "peer-outdated"),
        (Self::CRASHED_PRIMARY, "crashed-primary"),
        (Self::AL_CLEAN, "al-clean"),
        (Self::AL_DISABLED, "al-disabled"),
        (Self::PRIMARY_LOST_QUORUM, "primary-lost-quorum"),
        (Self::HAVE_QUORUM, "have-quorum"),
        (Self::INITIAL_SYNC_DONE, "initial-sync-done"),
    ];
}

flag_ops!(MdFlags);

/// Per-peer-slot flags (DRBD 9's `MDF_PEER_*`, `MDF_NODE_EXISTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerFlags(pub u32);

impl PeerFlags {
    /// Connected to this peer when last written.
    pub const CONNECTED: u32 = 1 << 0;
    /// The peer's disk is Outdated (we fenced it / it was told so).
    pub const OUTDATED: u32 = 1 << 1;
    /// Fencing policy towards this peer is active.
    pub const FENCING: u32 = 1 << 2;
    /// A full sync to this peer is pending.
    pub const FULL_SYNC: u32 = 1 << 3;
    /// The peer's disk was seen (attached) at least once.
    pub const DEVICE_SEEN: u32 = 1 << 4;
    /// The slot is assigned to a configured node.
    pub const NODE_EXISTS: u32 = 1 << 5;
    /// A resync with this peer was interrupted; `resync_pos` says where to resume.
    pub const RESYNC_PENDING: u32 = 1 << 6;
    /// We were the resync target of that interrupted resync.
    pub const RESYNC_TARGET: u32 = 1 << 7;

    const NAMES: [(u32, &'static str); 8] = [
        (Self::CONNECTED, "connected"),
        (Self::OUTDATED, "outdated"),
        (Self::FENCING, "fencing"),
        (Self::FULL_SYNC, "full-sync"),
        (Self::DEVICE_SEEN, "device-seen"),
        (Self::NODE_EXISTS, "node-exists"),
        (Self::RESYNC_PENDING, "resync-pending"),
        (Self::RESYNC_TARGET, "resync-target"),
    ];
}

flag_ops!(PeerFlags);

fn names(f: &mut fmt::Formatter<'_>, bits: u32, table: &[(u32, &str)]) -> fmt::Result {
    write!(f, "0x{bits:08x} [")?;
    let mut first = true;
    let mut rest = bits;
    for &(bit, name) in table {
        if bits & bit != 0 {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            first = false;
            rest &= !bit;
        }
    }
    if rest != 0 {
        if !first {
            f.write_str(",")?;
        }
        write!(f, "unknown:0x{rest:x}")?;
    }
    f.write_str("]")
}

/// What the superblock records about one peer slot (the bitmap UUID is in
/// [`Generations::bitmap`], same index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSlot {
    /// Node id of the peer using this slot, or [`NODE_ID_NONE`].
    pub node_id: u32,
    pub flags: PeerFlags,
    /// Reserved for dual-primary / multi-node ordering (DRBD's bitmap dagtag).
    pub dagtag: u64,
    /// Byte offset in the data where an interrupted resync resumes.
    pub resync_pos: u64,
    /// Last data size this peer agreed to (bytes).
    pub la_peer_size: u64,
}

impl Default for PeerSlot {
    fn default() -> Self {
        PeerSlot {
            node_id: NODE_ID_NONE,
            flags: PeerFlags(0),
            dagtag: 0,
            resync_pos: 0,
            la_peer_size: 0,
        }
    }
}

/// Decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub flags: MdFlags,
    /// This node's id.
    pub node_id: u32,
    /// Random id of this device's metadata, fixed at create-md.
    pub device_uuid: u64,
    /// Last agreed data size in bytes ("la-size"): what the replicated device
    /// exposes. A multiple of 4096, at most `layout.data_capacity`.
    pub la_size: u64,
    /// Where the areas are.
    pub layout: Layout,
    /// Number of activity-log extents (`al-extents`).
    pub al_extents: u32,
    /// Bytes per activity-log extent (4 MiB).
    pub al_extent_size: u32,
    /// Generation identifiers.
    pub gi: Generations,
    /// Per-slot peer records; entries `>= layout.max_peers` are unused.
    pub peers: [PeerSlot; MAX_PEER_SLOTS],
    /// Incremented on each write of the superblock.
    pub write_seq: u64,
    /// Unix time (seconds) of create-md.
    pub created: u64,
}

/// Why a block is not a usable superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Every byte is zero: nothing was ever written there.
    Zeroed,
    /// DRBD's metadata (its magic at byte 60).
    Drbd { magic: u32, version: &'static str },
    /// Neither ours, nor DRBD's, nor empty.
    Foreign { first_bytes: [u8; 8] },
    /// A format version this code does not read.
    UnsupportedVersion { found: u32 },
    /// The CRC32C does not match.
    Checksum { stored: u32, computed: u32 },
    /// The checksum matches but a field is impossible.
    Invalid(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Zeroed => {
                f.write_str("no metadata (the superblock area is all zeroes); run `hbadm create-md` to create it")
            }
            DecodeError::Drbd { magic, version } => write!(
                f,
                "this is DRBD metadata ({version}, magic 0x{magic:08x}), not hablock metadata; \
                 hablock cannot use it: create hablock metadata with `hbadm create-md --force` \
                 (this discards the DRBD metadata, not the data)"
            ),
            DecodeError::Foreign { first_bytes } => write!(
                f,
                "not hablock metadata (unknown content, first bytes {first_bytes:02x?}); \
                 check the device path, or run `hbadm create-md` if it really is unused"
            ),
            DecodeError::UnsupportedVersion { found } if *found > VERSION => write!(
                f,
                "metadata format version {found} is newer than this hablock reads (up to {VERSION}); \
                 upgrade hablock to a release that supports metadata version {found}"
            ),
            DecodeError::UnsupportedVersion { found } => write!(
                f,
                "metadata format version {found} is not supported (this hablock reads {VERSION}); \
                 the superblock may be corrupt"
            ),
            DecodeError::Checksum { stored, computed } => write!(
                f,
                "metadata superblock checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}): \
                 corrupt; restore it or re-create it with `hbadm create-md --force` \
                 (destroys the bitmap, not the data)"
            ),
            DecodeError::Invalid(why) => write!(
                f,
                "metadata superblock is invalid ({why}); restore it or re-create it with \
                 `hbadm create-md --force` (destroys the bitmap, not the data)"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CRC32C of a 4 KiB block with its CRC field taken as zero.
fn block_crc(b: &[u8]) -> u32 {
    let c = crc32c::crc32c(&b[..off::CRC]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[off::CRC + 4..SB_SIZE as usize])
}

/// Recognises DRBD metadata in a block (its magic at byte 60, big-endian).
pub fn drbd_magic(block: &[u8]) -> Option<(u32, &'static str)> {
    if block.len() < DRBD_MAGIC_AT + 4 {
        return None;
    }
    let m = u32::from_be_bytes(block[DRBD_MAGIC_AT..DRBD_MAGIC_AT + 4].try_into().ok()?);
    let v = match m.wrapping_sub(DRBD_MAGIC) {
        3 => "DRBD 0.7",
        4 => "DRBD 8",
        5 => "DRBD 8.4, unclean",
        6 => "DRBD 9",
        _ => return None,
    };
    Some((m, v))
}

/// Limits on `al-extents` for a ring of `al_ring_blocks` transactions.
pub fn al_extents_range(al_ring_blocks: u32) -> std::ops::RangeInclusive<u32> {
    7..=super::al::max_al_extents(al_ring_blocks)
}

impl Superblock {
    /// A superblock for freshly created metadata.
    pub fn new(layout: Layout, node_id: u32, al_extents: u32, device_uuid: u64, created: u64) -> Self {
        Superblock {
            flags: MdFlags(MdFlags::AL_CLEAN),
            node_id,
            device_uuid,
            la_size: layout.data_capacity,
            layout,
            al_extents,
            al_extent_size: super::al::AL_EXTENT_SIZE,
            gi: Generations::just_created(),
            peers: [PeerSlot::default(); MAX_PEER_SLOTS],
            write_seq: 0,
            created,
        }
    }

    /// Checks every field for values that cannot occur in a well-formed
    /// superblock (without reference to a device).
    pub fn validate(&self) -> Result<(), String> {
        self.layout.check()?;
        let l = &self.layout;
        if self.node_id >= MAX_NODE_ID_EXCL {
            return Err(format!("node id {} out of range 0..{}", self.node_id, MAX_NODE_ID_EXCL));
        }
        if !self.la_size.is_multiple_of(BLOCK) {
            return Err(format!("la-size {} is not a multiple of 4096", self.la_size));
        }
        if self.la_size > l.data_capacity {
            return Err(format!(
                "la-size {} is larger than the data capacity {} the bitmap covers",
                self.la_size, l.data_capacity
            ));
        }
        if !al_extents_range(l.al_ring_blocks).contains(&self.al_extents) {
            return Err(format!(
                "al-extents {} out of range {:?}",
                self.al_extents,
                al_extents_range(l.al_ring_blocks)
            ));
        }
        if !self.al_extent_size.is_power_of_two() || self.al_extent_size < l.bytes_per_bit {
            return Err(format!("al extent size {} is not valid", self.al_extent_size));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if i >= l.max_peers as usize {
                if *p != PeerSlot::default() || self.gi.bitmap[i] != 0 {
                    return Err(format!("peer slot {i} beyond max-peers {} is in use", l.max_peers));
                }
            } else if p.node_id != NODE_ID_NONE && p.node_id >= MAX_NODE_ID_EXCL {
                return Err(format!("peer slot {i} has node id {} out of range", p.node_id));
            } else if p.node_id == self.node_id {
                return Err(format!("peer slot {i} has this node's own id {}", p.node_id));
            }
        }
        Ok(())
    }

    /// Encodes into one 4 KiB block. The caller should [`validate`](Self::validate)
    /// first; encoding never fails.
    pub fn encode(&self) -> [u8; SB_SIZE as usize] {
        let mut b = [0u8; SB_SIZE as usize];
        let l = &self.layout;
        b[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, off::VERSION, VERSION);
        put_u32(&mut b, off::SB_SIZE, SB_SIZE as u32);
        put_u32(&mut b, off::FLAGS, self.flags.0);
        put_u32(&mut b, off::NODE_ID, self.node_id);
        put_u32(&mut b, off::MAX_PEERS, l.max_peers);
        put_u64(&mut b, off::DEVICE_UUID, self.device_uuid);
        put_u64(&mut b, off::LA_SIZE, self.la_size);
        put_u64(&mut b, off::DATA_CAPACITY, l.data_capacity);
        put_u64(&mut b, off::MD_OFFSET, l.md_offset);
        put_u64(&mut b, off::MD_SIZE, l.md_size);
        put_u64(&mut b, off::SB_OFFSET, l.sb_offset);
        put_u64(&mut b, off::AL_OFFSET, l.al_offset);
        put_u32(&mut b, off::AL_RING_BLOCKS, l.al_ring_blocks);
        put_u32(&mut b, off::AL_EXTENTS, self.al_extents);
        put_u32(&mut b, off::AL_EXTENT_SIZE, self.al_extent_size);
        put_u32(&mut b, off::BM_BYTES_PER_BIT, l.bytes_per_bit);
        put_u64(&mut b, off::BM_OFFSET, l.bm_offset);
        put_u64(&mut b, off::BM_SLOT_SIZE, l.bm_slot_size);
        put_u64(&mut b, off::BM_SIZE, l.bm_size());
        put_u64(&mut b, off::CURRENT_UUID, self.gi.current);
        put_u64(&mut b, off::WRITE_SEQ, self.write_seq);
        put_u64(&mut b, off::CREATED, self.created);
        put_u32(&mut b, off::LOCATION, if l.internal { 0 } else { 1 });
        for (i, p) in self.peers.iter().enumerate() {
            let at = off::PEERS + i * off::PEER_SIZE;
            put_u64(&mut b, at + off::P_BITMAP_UUID, self.gi.bitmap[i]);
            put_u32(&mut b, at + off::P_NODE_ID, p.node_id);
            put_u32(&mut b, at + off::P_FLAGS, p.flags.0);
            put_u64(&mut b, at + off::P_DAGTAG, p.dagtag);
            put_u64(&mut b, at + off::P_RESYNC_POS, p.resync_pos);
            put_u64(&mut b, at + off::P_LA_PEER_SIZE, p.la_peer_size);
        }
        for (i, h) in self.gi.history.iter().enumerate() {
            put_u64(&mut b, off::HISTORY + i * 8, *h);
        }
        let crc = block_crc(&b);
        put_u32(&mut b, off::CRC, crc);
        b
    }

    /// Decodes and checks one block: magic, version, checksum, then field
    /// sanity. Never panics on any input of any length.
    pub fn decode(b: &[u8]) -> Result<Superblock, DecodeError> {
        if b.len() != SB_SIZE as usize {
            return Err(DecodeError::Invalid(format!(
                "superblock must be {SB_SIZE} bytes, got {}",
                b.len()
            )));
        }
        if b[off::MAGIC..off::MAGIC + 8] != MAGIC {
            if b.iter().all(|&x| x == 0) {
                return Err(DecodeError::Zeroed);
            }
            if let Some((magic, version)) = drbd_magic(b) {
                return Err(DecodeError::Drbd { magic, version });
            }
            let mut first_bytes = [0u8; 8];
            first_bytes.copy_from_slice(&b[..8]);
            return Err(DecodeError::Foreign { first_bytes });
        }
        let version = get_u32(b, off::VERSION);
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let stored = get_u32(b, off::CRC);
        let computed = block_crc(b);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        fn inv<T>(s: String) -> Result<T, DecodeError> {
            Err(DecodeError::Invalid(s))
        }
        let sb_size = get_u32(b, off::SB_SIZE);
        if sb_size as u64 != SB_SIZE {
            return inv(format!("superblock size field {sb_size}, expected {SB_SIZE}"));
        }
        let location = get_u32(b, off::LOCATION);
        if location > 1 {
            return inv(format!("unknown metadata location kind {location}"));
        }
        let max_peers = get_u32(b, off::MAX_PEERS);
        let layout = Layout {
            internal: location == 0,
            data_capacity: get_u64(b, off::DATA_CAPACITY),
            md_offset: get_u64(b, off::MD_OFFSET),
            md_size: get_u64(b, off::MD_SIZE),
            sb_offset: get_u64(b, off::SB_OFFSET),
            al_offset: get_u64(b, off::AL_OFFSET),
            al_ring_blocks: get_u32(b, off::AL_RING_BLOCKS),
            bm_offset: get_u64(b, off::BM_OFFSET),
            bm_slot_size: get_u64(b, off::BM_SLOT_SIZE),
            max_peers,
            bytes_per_bit: get_u32(b, off::BM_BYTES_PER_BIT),
        };
        layout.check().map_err(DecodeError::Invalid)?;
        let bm_size = get_u64(b, off::BM_SIZE);
        if bm_size != layout.bm_size() {
            return inv(format!(
                "bitmap size {bm_size} is not {} slots of {} bytes",
                max_peers, layout.bm_slot_size
            ));
        }
        let mut gi = Generations {
            current: get_u64(b, off::CURRENT_UUID),
            ..Generations::default()
        };
        let mut peers = [PeerSlot::default(); MAX_PEER_SLOTS];
        for (i, p) in peers.iter_mut().enumerate() {
            let at = off::PEERS + i * off::PEER_SIZE;
            gi.bitmap[i] = get_u64(b, at + off::P_BITMAP_UUID);
            *p = PeerSlot {
                node_id: get_u32(b, at + off::P_NODE_ID),
                flags: PeerFlags(get_u32(b, at + off::P_FLAGS)),
                dagtag: get_u64(b, at + off::P_DAGTAG),
                resync_pos: get_u64(b, at + off::P_RESYNC_POS),
                la_peer_size: get_u64(b, at + off::P_LA_PEER_SIZE),
            };
        }
        for (i, h) in gi.history.iter_mut().enumerate() {
            *h = get_u64(b, off::HISTORY + i * 8);
        }
        let sb = Superblock {
            flags: MdFlags(get_u32(b, off::FLAGS)),
            node_id: get_u32(b, off::NODE_ID),
            device_uuid: get_u64(b, off::DEVICE_UUID),
            la_size: get_u64(b, off::LA_SIZE),
            layout,
            al_extents: get_u32(b, off::AL_EXTENTS),
            al_extent_size: get_u32(b, off::AL_EXTENT_SIZE),
            gi,
            peers,
            write_seq: get_u64(b, off::WRITE_SEQ),
            created: get_u64(b, off::CREATED),
        };
        sb.validate().map_err(DecodeError::Invalid)?;
        Ok(sb)
    }
}

// Keep the constants honest: the tail of the block is reserved.
const _: () = assert!(off::RESERVED_TAIL <= SB_SIZE as usize);
const _: () = assert!(off::LOCATION + 4 <= off::PEERS);

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let layout = Layout::internal(1 << 30, 2, 4096, 8).unwrap();
        let mut sb = Superblock::new(layout, 0, 1237, 0x1122_3344_5566_7788, 1_700_000_000);
        sb.flags.set(MdFlags::CONSISTENT | MdFlags::WAS_UP_TO_DATE, true);
        sb.gi.current = 0xdead_beef_0000_1001;
        sb.gi.bitmap[1] = 0xabcd_0000_0000_0000;
        sb.gi.history[0] = 0x1234;
        sb.gi.history[31] = 0x5678;
        sb.peers[0] = PeerSlot {
            node_id: 1,
            flags: PeerFlags(PeerFlags::NODE_EXISTS | PeerFlags::CONNECTED),
            dagtag: 9,
            resync_pos: 4096 * 7,
            la_peer_size: sb.la_size,
        };
        sb.peers[1].node_id = 2;
        sb.write_seq = 42;
        sb
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        sb.validate().unwrap();
        let b = sb.encode();
        assert_eq!(&b[..8], b"HBLKMETA");
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        // Re-encoding is byte-identical.
        assert_eq!(Superblock::decode(&b).unwrap().encode(), b);
    }

    #[test]
    fn fixed_offsets() {
        let sb = sample();
        let b = sb.encode();
        assert_eq!(get_u32(&b, 0x08), 1);
        assert_eq!(get_u32(&b, 0x0c), 4096);
        assert_eq!(get_u64(&b, 0x20), 0x1122_3344_5566_7788);
        assert_eq!(get_u64(&b, 0x28), sb.la_size);
        assert_eq!(get_u64(&b, 0x80), 0xdead_beef_0000_1001);
        assert_eq!(get_u64(&b, 0x100 + 64), 0xabcd_0000_0000_0000);
        assert_eq!(get_u32(&b, 0x100 + 8), 1);
        assert_eq!(get_u64(&b, 0x900), 0x1234);
        assert_eq!(get_u64(&b, 0x900 + 31 * 8), 0x5678);
        assert!(b[0xa00..].iter().all(|&x| x == 0));
        assert!(b[0x9c..0x100].iter().all(|&x| x == 0));
    }

    #[test]
    fn every_single_byte_corruption_is_caught() {
        let b = sample().encode();
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(Superblock::decode(&c).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn checksum_error() {
        let mut b = sample().encode();
        b[0x300] ^= 1;
        match Superblock::decode(&b) {
            Err(e @ DecodeError::Checksum { .. }) => {
                assert!(e.to_string().contains("checksum mismatch"));
                assert!(e.to_string().contains("create-md --force"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zeroed_foreign_drbd() {
        let z = [0u8; 4096];
        assert_eq!(Superblock::decode(&z), Err(DecodeError::Zeroed));
        assert!(DecodeError::Zeroed.to_string().contains("create-md"));
        let mut d = [0u8; 4096];
        d[60..64].copy_from_slice(&(DRBD_MAGIC + 6).to_be_bytes());
        match Superblock::decode(&d) {
            Err(DecodeError::Drbd { version, .. }) => assert_eq!(version, "DRBD 9"),
            other => panic!("{other:?}"),
        }
        let mut f = [0u8; 4096];
        f[..4].copy_from_slice(b"XFSB");
        assert!(matches!(Superblock::decode(&f), Err(DecodeError::Foreign { .. })));
        assert!(Superblock::decode(&[0u8; 100]).is_err());
        assert!(Superblock::decode(&[]).is_err());
    }

    #[test]
    fn newer_version_refused() {
        let mut b = sample().encode();
        put_u32(&mut b, off::VERSION, 2);
        let e = Superblock::decode(&b).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedVersion { found: 2 });
        assert!(e.to_string().contains("upgrade hablock"));
    }

    fn resealed(mutate: impl Fn(&mut [u8; 4096])) -> Result<Superblock, DecodeError> {
        let mut b = sample().encode();
        mutate(&mut b);
        let crc = block_crc(&b);
        put_u32(&mut b, off::CRC, crc);
        Superblock::decode(&b)
    }

    #[test]
    fn insane_fields_with_valid_crc_are_invalid() {
        type Mutation = Box<dyn Fn(&mut [u8; 4096])>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("la-size too big", Box::new(|b| put_u64(b, off::LA_SIZE, 1 << 40))),
            ("la-size unaligned", Box::new(|b| put_u64(b, off::LA_SIZE, 4097))),
            ("max-peers 0", Box::new(|b| put_u32(b, off::MAX_PEERS, 0))),
            ("al offset", Box::new(|b| put_u64(b, off::AL_OFFSET, 12345 * 4096))),
            ("bm size", Box::new(|b| put_u64(b, off::BM_SIZE, 4096))),
            ("al-extents", Box::new(|b| put_u32(b, off::AL_EXTENTS, 3))),
            ("node id", Box::new(|b| put_u32(b, off::NODE_ID, 99))),
            ("sb size", Box::new(|b| put_u32(b, off::SB_SIZE, 512))),
            ("location", Box::new(|b| put_u32(b, off::LOCATION, 7))),
            ("bpb", Box::new(|b| put_u32(b, off::BM_BYTES_PER_BIT, 4095))),
            (
                "slot beyond max-peers",
                Box::new(|b| put_u32(b, off::PEERS + 5 * 64 + off::P_NODE_ID, 3)),
            ),
            ("peer is self", Box::new(|b| put_u32(b, off::PEERS + off::P_NODE_ID, 0))),
        ];
        for (name, m) in cases {
            match resealed(m) {
                Err(DecodeError::Invalid(_)) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn flags_display() {
        let f = MdFlags(MdFlags::CONSISTENT | MdFlags::AL_CLEAN | 1 << 30);
        assert_eq!(f.to_string(), "0x40000081 [consistent,al-clean,unknown:0x40000000]");
        assert_eq!(MdFlags(0).to_string(), "0x00000000 []");
    }
}
