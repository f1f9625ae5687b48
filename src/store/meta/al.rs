//! The activity log (AL) area: a ring of 4 KiB transaction blocks.
//!
//! The AL names the "hot" extents (4 MiB each) of the data that may have
//! writes in flight. Before a write touches an extent not in the AL, a
//! transaction is appended to the ring saying "slot S now holds extent E".
//! After a crash, replaying the ring gives the set of extents to resync.
//!
//! Each transaction also carries a chunk of the full slot table (the
//! *context*), rotating through it, so the newest `ring_blocks - 1` valid
//! transactions always describe every slot even after the oldest entries of
//! the ring were overwritten. Hence the limit
//! `al_extents <= (ring_blocks - 1) * AL_CONTEXT_PER_TRANSACTION`.
//!
//! Transaction block format (little-endian; docs/metadata.md §AL):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"HBAL"` |
//! | 4 | 2 | version (1) |
//! | 6 | 2 | type: 0 update, 1 initialized (empty AL) |
//! | 8 | 8 | tr_number |
//! | 16 | 4 | crc32c of the block with this field zero |
//! | 20 | 2 | n_updates (<= 64) |
//! | 22 | 2 | context_size (<= 888) |
//! | 24 | 4 | context_start_slot |
//! | 28 | 4 | reserved, zero |
//! | 32 | 512 | 64 x { slot u32, extent u32 } |
//! | 544 | 3552 | 888 x extent u32 (context) |

use super::layout::BLOCK;
use std::fmt;

/// Magic of an AL transaction block.
pub const AL_MAGIC: [u8; 4] = *b"HBAL";
/// Version of the AL transaction format.
pub const AL_VERSION: u16 = 1;
/// Bytes of data per AL extent (4 MiB).
pub const AL_EXTENT_SIZE: u32 = 4 << 20;
/// Default number of AL extents (DRBD's default).
pub const AL_DEFAULT_EXTENTS: u32 = 1237;
/// Slot updates that fit in one transaction.
pub const AL_UPDATES_PER_TRANSACTION: usize = 64;
/// Context entries that fit in one transaction.
pub const AL_CONTEXT_PER_TRANSACTION: usize = 888;
/// Extent number meaning "slot unused".
pub const AL_FREE: u32 = u32::MAX;

const TR_SIZE: usize = BLOCK as usize;
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_TYPE: usize = 6;
const OFF_TR_NUMBER: usize = 8;
const OFF_CRC: usize = 16;
const OFF_N_UPDATES: usize = 20;
const OFF_CONTEXT_SIZE: usize = 22;
const OFF_CONTEXT_START: usize = 24;
const OFF_UPDATES: usize = 32;
const OFF_CONTEXT: usize = OFF_UPDATES + AL_UPDATES_PER_TRANSACTION * 8;
const _: () = assert!(OFF_CONTEXT + AL_CONTEXT_PER_TRANSACTION * 4 == TR_SIZE);

/// Largest `al-extents` a ring of `ring_blocks` transactions supports.
pub fn max_al_extents(ring_blocks: u32) -> u32 {
    let per = AL_CONTEXT_PER_TRANSACTION as u64;
    let v = (ring_blocks.saturating_sub(1) as u64) * per;
    v.min(65534) as u32
}

/// Index in the ring of transaction `tr_number`.
pub fn ring_index(tr_number: u64, ring_blocks: u32) -> u32 {
    (tr_number % ring_blocks as u64) as u32
}

/// Kind of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlTransactionType {
    /// Normal transaction: updates plus a context chunk.
    Update,
    /// Written when the AL is (re)initialised: the AL is empty; replay starts
    /// from scratch at this transaction.
    Initialized,
}

/// One slot change: `slot` now holds `extent` (or [`AL_FREE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlUpdate {
    pub slot: u32,
    pub extent: u32,
}

/// An AL transaction in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlTransaction {
    pub tr_number: u64,
    pub kind: AlTransactionType,
    pub updates: Vec<AlUpdate>,
    /// Slot number of `context[0]`.
    pub context_start: u32,
    /// Extent numbers of slots `context_start..context_start + context.len()`.
    pub context: Vec<u32>,
}

/// Why an AL block cannot be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlError {
    BadMagic,
    UnsupportedVersion(u16),
    Checksum { stored: u32, computed: u32 },
    Invalid(String),
}

impl fmt::Display for AlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlError::BadMagic => f.write_str("not an activity-log transaction (bad magic)"),
            AlError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "activity-log transaction version {v} not supported (this hablock reads {AL_VERSION})"
                )
            }
            AlError::Checksum { stored, computed } => write!(
                f,
                "activity-log transaction checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
            ),
            AlError::Invalid(s) => write!(f, "invalid activity-log transaction: {s}"),
        }
    }
}

impl std::error::Error for AlError {}

fn block_crc(b: &[u8]) -> u32 {
    let c = crc32c::crc32c(&b[..OFF_CRC]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &b[OFF_CRC + 4..TR_SIZE])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl AlTransaction {
    /// A normal transaction carrying `updates` and the context chunk due at
    /// `tr_number`, taken from the full slot table `slots` (after the updates
    /// were applied to it). Chunks rotate: chunk `tr_number % n_chunks`.
    pub fn with_context(tr_number: u64, updates: Vec<AlUpdate>, slots: &[u32]) -> AlTransaction {
        let per = AL_CONTEXT_PER_TRANSACTION;
        let n_chunks = slots.len().div_ceil(per).max(1) as u64;
        let start = (tr_number % n_chunks) as usize * per;
        let end = (start + per).min(slots.len());
        AlTransaction {
            tr_number,
            kind: AlTransactionType::Update,
            updates,
            context_start: start as u32,
            context: slots.get(start..end).unwrap_or(&[]).to_vec(),
        }
    }

    /// Encodes into one 4 KiB block.
    pub fn encode(&self) -> Result<[u8; TR_SIZE], AlError> {
        if self.updates.len() > AL_UPDATES_PER_TRANSACTION {
            return Err(AlError::Invalid(format!(
                "{} updates, at most {AL_UPDATES_PER_TRANSACTION}",
                self.updates.len()
            )));
        }
        if self.context.len() > AL_CONTEXT_PER_TRANSACTION {
            return Err(AlError::Invalid(format!(
                "{} context entries, at most {AL_CONTEXT_PER_TRANSACTION}",
                self.context.len()
            )));
        }
        let mut b = [0u8; TR_SIZE];
        b[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&AL_MAGIC);
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&AL_VERSION.to_le_bytes());
        let t: u16 = match self.kind {
            AlTransactionType::Update => 0,
            AlTransactionType::Initialized => 1,
        };
        b[OFF_TYPE..OFF_TYPE + 2].copy_from_slice(&t.to_le_bytes());
        b[OFF_TR_NUMBER..OFF_TR_NUMBER + 8].copy_from_slice(&self.tr_number.to_le_bytes());
        b[OFF_N_UPDATES..OFF_N_UPDATES + 2].copy_from_slice(&(self.updates.len() as u16).to_le_bytes());
        b[OFF_CONTEXT_SIZE..OFF_CONTEXT_SIZE + 2].copy_from_slice(&(self.context.len() as u16).to_le_bytes());
        b[OFF_CONTEXT_START..OFF_CONTEXT_START + 4].copy_from_slice(&self.context_start.to_le_bytes());
        for (i, u) in self.updates.iter().enumerate() {
            let at = OFF_UPDATES + i * 8;
            b[at..at + 4].copy_from_slice(&u.slot.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&u.extent.to_le_bytes());
        }
        for (i, e) in self.context.iter().enumerate() {
            let at = OFF_CONTEXT + i * 4;
            b[at..at + 4].copy_from_slice(&e.to_le_bytes());
        }
        let crc = block_crc(&b);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Decodes one block. `Ok(None)` for an all-zero block (a ring entry never
    /// written). Never panics on any input.
    pub fn decode(b: &[u8]) -> Result<Option<AlTransaction>, AlError> {
        if b.len() != TR_SIZE {
            return Err(AlError::Invalid(format!(
                "block of {} bytes, expected {TR_SIZE}",
                b.len()
            )));
        }
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[OFF_MAGIC..OFF_MAGIC + 4] != AL_MAGIC {
            return Err(AlError::BadMagic);
        }
        let version = le16(b, OFF_VERSION);
        if version != AL_VERSION {
            return Err(AlError::UnsupportedVersion(version));
        }
        let stored = le32(b, OFF_CRC);
        let computed = block_crc(b);
        if stored != computed {
            return Err(AlError::Checksum { stored, computed });
        }
        let kind = match le16(b, OFF_TYPE) {
            0 => AlTransactionType::Update,
            1 => AlTransactionType::Initialized,
            t => return Err(AlError::Invalid(format!("unknown transaction type {t}"))),
        };
        let n_updates = le16(b, OFF_N_UPDATES) as usize;
        let context_size = le16(b, OFF_CONTEXT_SIZE) as usize;
        if n_updates > AL_UPDATES_PER_TRANSACTION || context_size > AL_CONTEXT_PER_TRANSACTION {
            return Err(AlError::Invalid(format!(
                "{n_updates} updates / {context_size} context entries exceed the block"
            )));
        }
        let context_start = le32(b, OFF_CONTEXT_START);
        if context_start.checked_add(context_size as u32).is_none() {
            return Err(AlError::Invalid("context range overflows".into()));
        }
        let updates = (0..n_updates)
            .map(|i| {
                let at = OFF_UPDATES + i * 8;
                AlUpdate {
                    slot: le32(b, at),
                    extent: le32(b, at + 4),
                }
            })
            .collect();
        let context = (0..context_size).map(|i| le32(b, OFF_CONTEXT + i * 4)).collect();
        Ok(Some(AlTransaction {
            tr_number: u64::from_le_bytes(b[OFF_TR_NUMBER..OFF_TR_NUMBER + 8].try_into().expect("8")),
            kind,
            updates,
            context_start,
            context,
        }))
    }
}

/// Result of replaying a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlReplay {
    /// Extent held by each slot (`AL_FREE` when unused), `al_extents` long.
    pub slots: Vec<u32>,
    /// Number of the newest valid transaction, if any.
    pub last_tr: Option<u64>,
    /// Ring entries that were not valid transactions (torn or corrupt writes).
    pub bad_blocks: usize,
}

impl AlReplay {
    /// The active extents, sorted, without duplicates.
    pub fn active_extents(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.slots.iter().copied().filter(|&e| e != AL_FREE).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Replays the ring blocks (in any order) for an AL of `al_extents` slots:
/// valid transactions are applied oldest first, context then updates.
/// Entries out of range are ignored. A transaction of type `Initialized`
/// resets the table.
pub fn replay<'a>(blocks: impl IntoIterator<Item = &'a [u8]>, al_extents: u32) -> AlReplay {
    let mut trs = Vec::new();
    let mut bad_blocks = 0;
    for b in blocks {
        match AlTransaction::decode(b) {
            Ok(Some(t)) => trs.push(t),
            Ok(None) => {}
            Err(_) => bad_blocks += 1,
        }
    }
    trs.sort_by_key(|t| t.tr_number);
    let n = al_extents as usize;
    let mut slots = vec![AL_FREE; n];
    for t in &trs {
        if t.kind == AlTransactionType::Initialized {
            slots.iter_mut().for_each(|s| *s = AL_FREE);
        }
        for (i, &e) in t.context.iter().enumerate() {
            if let Some(s) = slots.get_mut(t.context_start as usize + i) {
                *s = e;
            }
        }
        for u in &t.updates {
            if let Some(s) = slots.get_mut(u.slot as usize) {
                *s = u.extent;
            }
        }
    }
    AlReplay {
        slots,
        last_tr: trs.last().map(|t| t.tr_number),
        bad_blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AlTransaction {
        AlTransaction {
            tr_number: 0x0102_0304_0506_0708,
            kind: AlTransactionType::Update,
            updates: vec![
                AlUpdate { slot: 3, extent: 77 },
                AlUpdate {
                    slot: 4,
                    extent: AL_FREE,
                },
            ],
            context_start: 888,
            context: (0..888).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let b = t.encode().unwrap();
        assert_eq!(&b[..4], b"HBAL");
        assert_eq!(AlTransaction::decode(&b).unwrap(), Some(t));
        let empty = AlTransaction {
            tr_number: 0,
            kind: AlTransactionType::Initialized,
            updates: vec![],
            context_start: 0,
            context: vec![],
        };
        assert_eq!(AlTransaction::decode(&empty.encode().unwrap()).unwrap(), Some(empty));
    }

    #[test]
    fn zero_block_is_unused() {
        assert_eq!(AlTransaction::decode(&[0u8; 4096]).unwrap(), None);
    }

    #[test]
    fn corrupt_input() {
        let b = sample().encode().unwrap();
        for i in 0..b.len() {
            let mut c = b;
            c[i] ^= 0x01;
            assert!(AlTransaction::decode(&c).is_err(), "flip at {i}");
        }
        let mut c = b;
        c[0] = b'X';
        assert_eq!(AlTransaction::decode(&c), Err(AlError::BadMagic));
        assert!(AlTransaction::decode(&b[..100]).is_err());
        // Too many entries claimed, with a valid checksum.
        let mut c = b;
        c[OFF_N_UPDATES..OFF_N_UPDATES + 2].copy_from_slice(&65u16.to_le_bytes());
        let crc = block_crc(&c);
        c[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(AlTransaction::decode(&c), Err(AlError::Invalid(_))));
        // Random garbage never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            let mut g = [0u8; 4096];
            for byte in g.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            g[..4].copy_from_slice(b"HBAL");
            g[4..6].copy_from_slice(&1u16.to_le_bytes());
            let _ = AlTransaction::decode(&g);
        }
    }

    #[test]
    fn encode_limits() {
        let mut t = sample();
        t.updates = vec![AlUpdate { slot: 0, extent: 0 }; 65];
        assert!(t.encode().is_err());
        let mut t = sample();
        t.context = vec![0; 889];
        assert!(t.encode().is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(max_al_extents(8), 7 * 888);
        assert!(max_al_extents(8) >= AL_DEFAULT_EXTENTS);
        assert_eq!(ring_index(17, 8), 1);
    }

    /// Simulates a writer cycling through many transactions in an 8-block
    /// ring; replay of the ring must give back its slot table.
    #[test]
    fn replay_reconstructs_table_after_wraparound() {
        let al_extents = 2000u32;
        let ring = 8u32;
        let mut table = vec![AL_FREE; al_extents as usize];
        let mut disk = vec![[0u8; 4096]; ring as usize];
        let mut x: u64 = 12345;
        for tr in 0..100u64 {
            let mut ups = Vec::new();
            for _ in 0..5 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let slot = ((x >> 33) % al_extents as u64) as u32;
                let extent = ((x >> 13) % 100_000) as u32;
                table[slot as usize] = extent;
                ups.push(AlUpdate { slot, extent });
            }
            let t = AlTransaction::with_context(tr, ups, &table);
            disk[ring_index(tr, ring) as usize] = t.encode().unwrap();
            if tr >= 3 {
                let r = replay(disk.iter().map(|b| &b[..]), al_extents);
                assert_eq!(r.slots, table, "after tr {tr}");
                assert_eq!(r.last_tr, Some(tr));
            }
        }
        // A torn newest block: the table is as of the previous transaction,
        // except the torn one's updates are lost (they never completed).
        let mut torn = disk.clone();
        let newest = ring_index(99, ring) as usize;
        torn[newest][2000] ^= 0xff;
        let r = replay(torn.iter().map(|b| &b[..]), al_extents);
        assert_eq!(r.bad_blocks, 1);
        assert_eq!(r.last_tr, Some(98));
    }

    #[test]
    fn initialized_resets() {
        let t1 = AlTransaction::with_context(1, vec![AlUpdate { slot: 0, extent: 5 }], &[5, AL_FREE]);
        let t2 = AlTransaction {
            tr_number: 2,
            kind: AlTransactionType::Initialized,
            updates: vec![],
            context_start: 0,
            context: vec![],
        };
        let (a, b) = (t1.encode().unwrap(), t2.encode().unwrap());
        let r = replay([&a[..], &b[..]], 2);
        assert_eq!(r.slots, vec![AL_FREE, AL_FREE]);
        let r = replay([&a[..]], 2);
        assert_eq!(r.active_extents(), vec![5]);
    }
}
