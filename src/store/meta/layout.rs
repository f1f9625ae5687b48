//! Placement of the metadata areas (superblock, activity log, bitmap) on a
//! backing device (internal metadata) or on a separate device (external).
//!
//! Everything here is pure arithmetic so it can be tested without a disk.
//! All offsets and sizes are multiples of [`BLOCK`] (4 KiB), so the data path
//! may use `O_DIRECT` on the same file.
//!
//! Internal metadata, at the end of the backing device (DRBD's order):
//!
//! ```text
//!  0                         md_offset = bm_offset   al_offset    sb_offset  S4
//!  |<--------- data --------->|<-- bitmap slots -->|<-- AL ring -->|<- SB ->|
//!                              slot0 slot1 ...        8 x 4 KiB      4 KiB
//! ```
//!
//! External metadata, at the start of the metadata device:
//!
//! ```text
//!  0        4096                 4096 + al_size                    md_size
//!  |<- SB ->|<----- AL ring ----->|<------- bitmap slots ------->|  (rest unused)
//! ```

/// The unit of every metadata offset and size.
pub const BLOCK: u64 = 4096;
/// Size of the superblock.
pub const SB_SIZE: u64 = BLOCK;
/// Default (and, in format version 1, only) number of bytes of data per bitmap bit.
pub const DEFAULT_BYTES_PER_BIT: u32 = 4096;
/// Default number of 4 KiB transaction blocks in the activity-log ring (32 KiB).
pub const DEFAULT_AL_RING_BLOCKS: u32 = 8;
/// Number of peer slots the superblock has room for (DRBD 9: 32 nodes).
pub const MAX_PEER_SLOTS: usize = 32;
/// Largest `max_peers`: 32 nodes in all, one of them ourselves.
pub const MAX_PEERS: u32 = 31;
/// Node ids are `0..MAX_NODE_ID_EXCL`.
pub const MAX_NODE_ID_EXCL: u32 = 32;

/// Where the metadata areas of one device are, in bytes from the start of the
/// file/device that holds the metadata (the backing device itself for internal
/// metadata, the external device otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// True when the metadata shares the backing device with the data.
    pub internal: bool,
    /// Largest data size the layout (its bitmap) can describe, in bytes, a
    /// multiple of 4096. For internal metadata this is also where the metadata
    /// begins.
    pub data_capacity: u64,
    /// First byte of the metadata (lowest of the three areas).
    pub md_offset: u64,
    /// Bytes of metadata in all: bitmap + activity log + superblock.
    pub md_size: u64,
    /// Offset of the superblock.
    pub sb_offset: u64,
    /// Offset of the activity-log ring.
    pub al_offset: u64,
    /// Number of 4 KiB transaction blocks in the ring.
    pub al_ring_blocks: u32,
    /// Offset of the first bitmap slot.
    pub bm_offset: u64,
    /// Bytes of one peer slot's bitmap (a multiple of 4096).
    pub bm_slot_size: u64,
    /// Number of bitmap slots (one per possible peer).
    pub max_peers: u32,
    /// Bytes of data per bitmap bit.
    pub bytes_per_bit: u32,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The backing device cannot hold the metadata plus one block of data.
    BackingTooSmall { size: u64, need: u64 },
    /// A parameter is out of range.
    Param(String),
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::BackingTooSmall { size, need } => write!(
                f,
                "backing device of {size} bytes is too small: it needs at least {need} bytes \
                 (metadata plus 4 KiB of data)"
            ),
            LayoutError::Param(s) => f.write_str(s),
        }
    }
}

/// Rounds `v` down to a multiple of [`BLOCK`].
pub const fn align_down(v: u64) -> u64 {
    v & !(BLOCK - 1)
}

/// Rounds `v` up to a multiple of [`BLOCK`] (saturating near `u64::MAX`).
pub const fn align_up(v: u64) -> u64 {
    match v.checked_add(BLOCK - 1) {
        Some(x) => x & !(BLOCK - 1),
        None => align_down(u64::MAX),
    }
}

/// Number of bitmap bits needed to cover `data_bytes`.
pub fn bits_for(data_bytes: u64, bytes_per_bit: u32) -> u64 {
    data_bytes.div_ceil(bytes_per_bit as u64)
}

/// Bytes of one bitmap slot covering `data_bytes`: one bit per
/// `bytes_per_bit`, rounded up to whole 4 KiB pages.
pub fn bitmap_slot_bytes(data_bytes: u64, bytes_per_bit: u32) -> u64 {
    align_up(bits_for(data_bytes, bytes_per_bit).div_ceil(8))
}

/// Bytes of the activity-log ring.
pub fn al_bytes(al_ring_blocks: u32) -> u64 {
    al_ring_blocks as u64 * BLOCK
}

fn check_params(max_peers: u32, bytes_per_bit: u32, al_ring_blocks: u32) -> Result<(), LayoutError> {
    if max_peers == 0 || max_peers > MAX_PEERS {
        return Err(LayoutError::Param(format!(
            "max-peers {max_peers} out of range 1..={MAX_PEERS}"
        )));
    }
    if !bytes_per_bit.is_power_of_two() || !(4096..=1 << 20).contains(&bytes_per_bit) {
        return Err(LayoutError::Param(format!(
            "bytes-per-bit {bytes_per_bit} must be a power of two in 4096..=1048576"
        )));
    }
    if !(2..=1024).contains(&al_ring_blocks) {
        return Err(LayoutError::Param(format!(
            "activity-log ring of {al_ring_blocks} blocks out of range 2..=1024"
        )));
    }
    Ok(())
}

/// Metadata size for internal metadata on a backing device of `backing_size`
/// bytes:
///
/// ```text
/// S4      = floor(backing_size / 4096) * 4096
/// slot    = ceil(ceil(S4 / bytes_per_bit) / 8) rounded up to 4096
/// md_size = 4096 (superblock) + al_ring_blocks * 4096 + max_peers * slot
/// data    = S4 - md_size
/// ```
///
/// The bitmap covers all of `S4` (a slight overestimate, as in DRBD) which
/// breaks the circularity between data size and bitmap size.
pub fn internal_md_size(backing_size: u64, max_peers: u32, bytes_per_bit: u32, al_ring_blocks: u32) -> u64 {
    let s4 = align_down(backing_size);
    SB_SIZE
        .saturating_add(al_bytes(al_ring_blocks))
        .saturating_add((max_peers as u64).saturating_mul(bitmap_slot_bytes(s4, bytes_per_bit)))
}

/// Metadata size for external metadata describing `data_size` bytes of data:
/// `4096 + al_ring_blocks * 4096 + max_peers * slot(data_size)`.
pub fn external_md_size(data_size: u64, max_peers: u32, bytes_per_bit: u32, al_ring_blocks: u32) -> u64 {
    SB_SIZE
        .saturating_add(al_bytes(al_ring_blocks))
        .saturating_add((max_peers as u64).saturating_mul(bitmap_slot_bytes(align_down(data_size), bytes_per_bit)))
}

impl Layout {
    /// Layout of internal metadata on a backing device of `backing_size` bytes.
    pub fn internal(
        backing_size: u64,
        max_peers: u32,
        bytes_per_bit: u32,
        al_ring_blocks: u32,
    ) -> Result<Layout, LayoutError> {
        check_params(max_peers, bytes_per_bit, al_ring_blocks)?;
        let s4 = align_down(backing_size);
        let slot = bitmap_slot_bytes(s4, bytes_per_bit);
        let md_size = internal_md_size(backing_size, max_peers, bytes_per_bit, al_ring_blocks);
        if s4 < md_size.saturating_add(BLOCK) {
            // The smallest device that works: metadata for itself plus one block.
            let mut need = md_size + BLOCK;
            while align_down(need) < internal_md_size(need, max_peers, bytes_per_bit, al_ring_blocks) + BLOCK {
                need += BLOCK;
            }
            return Err(LayoutError::BackingTooSmall {
                size: backing_size,
                need,
            });
        }
        let sb_offset = s4 - SB_SIZE;
        let al_offset = sb_offset - al_bytes(al_ring_blocks);
        let md_offset = s4 - md_size;
        Ok(Layout {
            internal: true,
            data_capacity: md_offset,
            md_offset,
            md_size,
            sb_offset,
            al_offset,
            al_ring_blocks,
            bm_offset: md_offset,
            bm_slot_size: slot,
            max_peers,
            bytes_per_bit,
        })
    }

    /// Layout of external metadata for a backing device of `backing_size`
    /// bytes (all of it, rounded down to 4 KiB, is data).
    pub fn external(
        backing_size: u64,
        max_peers: u32,
        bytes_per_bit: u32,
        al_ring_blocks: u32,
    ) -> Result<Layout, LayoutError> {
        check_params(max_peers, bytes_per_bit, al_ring_blocks)?;
        let data = align_down(backing_size);
        if data < BLOCK {
            return Err(LayoutError::BackingTooSmall {
                size: backing_size,
                need: BLOCK,
            });
        }
        let slot = bitmap_slot_bytes(data, bytes_per_bit);
        let al_offset = SB_SIZE;
        let bm_offset = al_offset + al_bytes(al_ring_blocks);
        Ok(Layout {
            internal: false,
            data_capacity: data,
            md_offset: 0,
            md_size: external_md_size(data, max_peers, bytes_per_bit, al_ring_blocks),
            sb_offset: 0,
            al_offset,
            al_ring_blocks,
            bm_offset,
            bm_slot_size: slot,
            max_peers,
            bytes_per_bit,
        })
    }

    /// Bytes of the whole bitmap area (all slots).
    pub fn bm_size(&self) -> u64 {
        self.bm_slot_size * self.max_peers as u64
    }

    /// Bytes of the activity-log ring.
    pub fn al_size(&self) -> u64 {
        al_bytes(self.al_ring_blocks)
    }

    /// Offset of bitmap slot `slot`.
    pub fn bm_slot_offset(&self, slot: usize) -> u64 {
        self.bm_offset + slot as u64 * self.bm_slot_size
    }

    /// One past the last metadata byte.
    pub fn md_end(&self) -> u64 {
        self.md_offset + self.md_size
    }

    /// Checks the layout's own consistency (the relations that [`Layout::internal`]
    /// and [`Layout::external`] establish), independent of any device size.
    /// Returns a description of the first problem found.
    pub fn check(&self) -> Result<(), String> {
        check_params(self.max_peers, self.bytes_per_bit, self.al_ring_blocks).map_err(|e| e.to_string())?;
        for (name, v) in [
            ("data capacity", self.data_capacity),
            ("md offset", self.md_offset),
            ("md size", self.md_size),
            ("superblock offset", self.sb_offset),
            ("al offset", self.al_offset),
            ("bitmap offset", self.bm_offset),
            ("bitmap slot size", self.bm_slot_size),
        ] {
            if v % BLOCK != 0 {
                return Err(format!("{name} {v} is not a multiple of 4096"));
            }
        }
        let bm_size = self
            .bm_slot_size
            .checked_mul(self.max_peers as u64)
            .ok_or("bitmap size overflows")?;
        let expect_md = SB_SIZE
            .checked_add(self.al_size())
            .and_then(|v| v.checked_add(bm_size))
            .ok_or("metadata size overflows")?;
        if expect_md != self.md_size {
            return Err(format!(
                "md size {} does not match its areas ({} expected)",
                self.md_size, expect_md
            ));
        }
        if self.md_offset.checked_add(self.md_size).is_none() {
            return Err("metadata end overflows".into());
        }
        if self.bm_slot_size < bitmap_slot_bytes(self.data_capacity, self.bytes_per_bit) {
            return Err(format!(
                "bitmap slot of {} bytes cannot cover {} bytes of data",
                self.bm_slot_size, self.data_capacity
            ));
        }
        if self.internal {
            let ok = self.bm_offset == self.md_offset
                && self.al_offset == self.bm_offset + bm_size
                && self.sb_offset == self.al_offset + self.al_size()
                && self.data_capacity == self.md_offset;
            if !ok {
                return Err("internal metadata areas are not contiguous at the device's end".into());
            }
        } else {
            let ok = self.md_offset == 0
                && self.sb_offset == 0
                && self.al_offset == SB_SIZE
                && self.bm_offset == SB_SIZE + self.al_size();
            if !ok {
                return Err("external metadata areas are not where format version 1 puts them".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn internal_one_gib_one_peer_matches_drbd_rule_of_thumb() {
        // DRBD: 36 KiB + size / 32 KiB per peer.
        let l = Layout::internal(GIB, 1, 4096, 8).unwrap();
        assert_eq!(l.md_size, 36 * 1024 + GIB / 32768);
        assert_eq!(l.data_capacity, GIB - l.md_size);
        assert_eq!(l.sb_offset, GIB - 4096);
        assert_eq!(l.al_offset, GIB - 4096 - 32768);
        assert_eq!(l.bm_offset, l.md_offset);
        assert_eq!(l.bm_offset + l.bm_size(), l.al_offset);
        l.check().unwrap();
    }

    #[test]
    fn internal_unaligned_size_and_several_peers() {
        let size = 10 * GIB + 1234;
        let l = Layout::internal(size, 3, 4096, 8).unwrap();
        let s4 = 10 * GIB;
        let slot = align_up((s4 / 4096).div_ceil(8));
        assert_eq!(l.bm_slot_size, slot);
        assert_eq!(l.md_size, 4096 + 32768 + 3 * slot);
        assert_eq!(l.md_end(), s4);
        assert_eq!(l.data_capacity % 4096, 0);
        // The bitmap covers the data area.
        assert!(l.bm_slot_size * 8 * 4096 >= l.data_capacity);
        l.check().unwrap();
    }

    #[test]
    fn internal_tiny_device() {
        let l = Layout::internal(MIB, 1, 4096, 8).unwrap();
        assert_eq!(l.md_size, 4096 + 32768 + 4096);
        assert_eq!(l.data_capacity, MIB - 40960);
        match Layout::internal(40960, 1, 4096, 8) {
            Err(LayoutError::BackingTooSmall { need, .. }) => {
                assert_eq!(need, 45056);
                Layout::internal(need, 1, 4096, 8).unwrap();
                assert!(Layout::internal(need - 4096, 1, 4096, 8).is_err());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn external_layout() {
        let l = Layout::external(GIB + 100, 2, 4096, 8).unwrap();
        assert_eq!(l.data_capacity, GIB);
        assert_eq!(l.sb_offset, 0);
        assert_eq!(l.al_offset, 4096);
        assert_eq!(l.bm_offset, 4096 + 32768);
        assert_eq!(l.md_size, 4096 + 32768 + 2 * 32768);
        assert_eq!(l.md_size, external_md_size(GIB, 2, 4096, 8));
        l.check().unwrap();
        assert!(Layout::external(4095, 1, 4096, 8).is_err());
    }

    #[test]
    fn bad_params() {
        assert!(Layout::internal(GIB, 0, 4096, 8).is_err());
        assert!(Layout::internal(GIB, 32, 4096, 8).is_err());
        assert!(Layout::internal(GIB, 1, 3000, 8).is_err());
        assert!(Layout::internal(GIB, 1, 4096, 1).is_err());
    }

    #[test]
    fn check_catches_inconsistency() {
        let mut l = Layout::internal(GIB, 1, 4096, 8).unwrap();
        l.al_offset += 4096;
        assert!(l.check().is_err());
        let mut l = Layout::internal(GIB, 1, 4096, 8).unwrap();
        l.md_size += 1;
        assert!(l.check().is_err());
        let mut l = Layout::external(GIB, 1, 4096, 8).unwrap();
        l.bm_slot_size = 4096;
        assert!(l.check().is_err());
    }

    #[test]
    fn huge_device_does_not_overflow() {
        let l = Layout::internal(u64::MAX, 31, 4096, 8).unwrap();
        l.check().unwrap();
        assert_eq!(l.md_end(), align_down(u64::MAX));
    }
}
