//! The quick-sync bitmap: one bit per `bytes_per_bit` (4 KiB) of data, one
//! bitmap per peer slot. A set bit means "this block may differ on that peer"
//! (out of sync).
//!
//! In memory the bitmap is a flat array of `AtomicU64` words, so marking a
//! range is lock-free and safe from any thread ([`Bitmap::set_range`] is on
//! the write path). Every API takes the peer slot index (`0..nslots`); slot
//! `s` is the bitmap towards the peer recorded in the superblock's peer slot
//! `s` (`Superblock::peers[s]`, `Generations::bitmap[s]`).
//!
//! On disk each slot occupies `bm_slot_size` bytes (whole 4 KiB pages) at
//! `bm_offset + s * bm_slot_size`; bit `i` of a slot is bit `i % 64` of the
//! little-endian u64 word `i / 64`. Bits past the data size are zero.
//!
//! A dirty-page tracker (one bit per 4 KiB page) records which pages changed
//! since the last flush, so a flush writes only those.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of one on-disk bitmap page.
pub const PAGE_BYTES: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE_BYTES / 8;

/// In-memory bitmaps of all peer slots with dirty-page tracking.
pub struct Bitmap {
    words: Box<[AtomicU64]>,
    words_per_slot: usize,
    nslots: usize,
    /// Valid bits per slot.
    nbits: u64,
    data_size: u64,
    bit_shift: u32,
    /// One bit per page of `words`.
    dirty: Box<[AtomicU64]>,
    /// Set bits per slot.
    counts: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bitmap")
            .field("nslots", &self.nslots)
            .field("nbits", &self.nbits)
            .field("bytes_per_bit", &self.bytes_per_bit())
            .field("set", &(0..self.nslots).map(|s| self.count_set(s)).collect::<Vec<_>>())
            .finish()
    }
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// Mask of bits `lo..hi` (0 <= lo < hi <= 64) of a word.
fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

impl Bitmap {
    /// An all-clear bitmap of `nslots` slots of `slot_bytes` bytes each
    /// (a multiple of 4096) for `data_size` bytes of data at `bytes_per_bit`
    /// (a power of two). Panics if the slot is too small for the data.
    pub fn new(nslots: usize, slot_bytes: u64, data_size: u64, bytes_per_bit: u32) -> Bitmap {
        assert!(bytes_per_bit.is_power_of_two());
        assert_eq!(slot_bytes % PAGE_BYTES as u64, 0);
        let nbits = data_size.div_ceil(bytes_per_bit as u64);
        assert!(slot_bytes * 8 >= nbits, "bitmap slot too small for the data");
        let words_per_slot = (slot_bytes / 8) as usize;
        let total_words = words_per_slot * nslots;
        let pages = total_words / WORDS_PER_PAGE;
        Bitmap {
            words: atomics(total_words),
            words_per_slot,
            nslots,
            nbits,
            data_size,
            bit_shift: bytes_per_bit.trailing_zeros(),
            dirty: atomics(pages.div_ceil(64)),
            counts: atomics(nslots),
        }
    }

    /// Number of peer slots.
    pub fn nslots(&self) -> usize {
        self.nslots
    }
    /// Bits per slot covering the data.
    pub fn nbits(&self) -> u64 {
        self.nbits
    }
    /// Bytes of data per bit.
    pub fn bytes_per_bit(&self) -> u64 {
        1 << self.bit_shift
    }
    /// Bytes of data covered.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }
    /// Number of on-disk pages of all slots.
    pub fn pages(&self) -> usize {
        self.words.len() / WORDS_PER_PAGE
    }
    /// Number of u64 words per slot (on-disk, including padding).
    pub fn words_per_slot(&self) -> usize {
        self.words_per_slot
    }

    fn word(&self, slot: usize, w: u64) -> &AtomicU64 {
        assert!(slot < self.nslots, "bitmap slot {slot} out of range");
        assert!((w as usize) < self.words_per_slot, "bitmap word {w} out of range");
        &self.words[slot * self.words_per_slot + w as usize]
    }

    fn mark_dirty_word(&self, slot: usize, w: u64) {
        let page = (slot * self.words_per_slot + w as usize) / WORDS_PER_PAGE;
        self.mark_dirty(page);
    }

    /// Marks on-disk page `page` (index over all slots) as needing a write.
    pub fn mark_dirty(&self, page: usize) {
        self.dirty[page / 64].fetch_or(1 << (page % 64), Ordering::Release);
    }

    /// Marks every page dirty (e.g. after a failed flush of unknown extent).
    pub fn mark_all_dirty(&self) {
        for p in 0..self.pages() {
            self.mark_dirty(p);
        }
    }

    /// Takes the set of dirty pages (ascending), clearing it. The caller
    /// must read the pages *after* this call (see [`Bitmap::page_bytes`]), and
    /// re-mark them with [`Bitmap::mark_dirty`] if writing fails.
    pub fn take_dirty(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, d) in self.dirty.iter().enumerate() {
            let mut bits = d.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                out.push(i * 64 + b);
                bits &= bits - 1;
            }
        }
        out
    }

    /// Number of dirty pages.
    pub fn dirty_pages(&self) -> usize {
        self.dirty
            .iter()
            .map(|d| d.load(Ordering::Acquire).count_ones() as usize)
            .sum()
    }

    /// The on-disk bytes of page `page` (little-endian words), written into `out`.
    pub fn page_bytes(&self, page: usize, out: &mut [u8]) {
        let words = &self.words[page * WORDS_PER_PAGE..(page + 1) * WORDS_PER_PAGE];
        for (w, chunk) in words.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
        }
    }

    /// Loads on-disk bytes starting at page `first_page` (used at open). Bits
    /// past the data size are dropped and their pages marked dirty so the
    /// next flush cleans them. Counts are recomputed.
    pub fn load_pages(&self, first_page: usize, bytes: &[u8]) {
        assert_eq!(bytes.len() % PAGE_BYTES, 0);
        let first_word = first_page * WORDS_PER_PAGE;
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let g = first_word + i;
            let (slot, w) = (g / self.words_per_slot, (g % self.words_per_slot) as u64);
            let mut v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let valid = self.valid_mask(w);
            if v & !valid != 0 {
                v &= valid;
                self.mark_dirty(g / WORDS_PER_PAGE);
            }
            let old = self.words[g].swap(v, Ordering::AcqRel);
            let c = &self.counts[slot];
            c.fetch_sub(old.count_ones() as u64, Ordering::AcqRel);
            c.fetch_add(v.count_ones() as u64, Ordering::AcqRel);
        }
    }

    /// Mask of the bits of word `w` that lie below `nbits`.
    fn valid_mask(&self, w: u64) -> u64 {
        let lo = w * 64;
        if lo >= self.nbits {
            0
        } else if lo + 64 <= self.nbits {
            u64::MAX
        } else {
            mask(0, self.nbits - lo)
        }
    }

    /// Sets bits `first..end` (clamped to the data). Returns how many were newly set.
    pub fn set_bits(&self, slot: usize, first: u64, end: u64) -> u64 {
        self.change_bits(slot, first, end, true)
    }

    /// Clears bits `first..end` (clamped). Returns how many were set before.
    pub fn clear_bits(&self, slot: usize, first: u64, end: u64) -> u64 {
        self.change_bits(slot, first, end, false)
    }

    fn change_bits(&self, slot: usize, first: u64, end: u64, set: bool) -> u64 {
        assert!(slot < self.nslots, "bitmap slot {slot} out of range");
        let end = end.min(self.nbits);
        if first >= end {
            return 0;
        }
        let mut changed = 0u64;
        let (fw, lw) = (first / 64, (end - 1) / 64);
        for w in fw..=lw {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { (end - 1) % 64 + 1 } else { 64 };
            let m = mask(lo, hi);
            let word = self.word(slot, w);
            // A plain load first: on the write path the bits are usually
            // already set, and skipping the read-modify-write keeps the cache
            // line shared between CPUs.
            let cur = word.load(Ordering::Acquire);
            if (set && cur & m == m) || (!set && cur & m == 0) {
                continue;
            }
            let n = if set {
                let prev = word.fetch_or(m, Ordering::AcqRel);
                (m & !prev).count_ones()
            } else {
                let prev = word.fetch_and(!m, Ordering::AcqRel);
                (m & prev).count_ones()
            };
            if n != 0 {
                changed += n as u64;
                self.mark_dirty_word(slot, w);
            }
        }
        if changed != 0 {
            if set {
                self.counts[slot].fetch_add(changed, Ordering::AcqRel);
            } else {
                self.counts[slot].fetch_sub(changed, Ordering::AcqRel);
            }
        }
        changed
    }

    /// Marks the data bytes `offset..offset + len` out of sync towards `slot`:
    /// every bit the range touches is set. Lock-free; call it on every write
    /// the peer misses. Returns the number of newly set bits.
    ///
    /// A [`MetaDisk::flush_bitmap`](super::MetaDisk::flush_bitmap) that starts
    /// after this returns includes the bits. (If another thread set the same
    /// bit a moment earlier and has not yet marked its page dirty, the bit
    /// reaches the disk with that thread's flush instead.)
    pub fn set_range(&self, slot: usize, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = offset >> self.bit_shift;
        let end = ((offset.saturating_add(len) - 1) >> self.bit_shift) + 1;
        self.set_bits(slot, first, end)
    }

    /// Marks `offset..offset + len` in sync towards `slot`: only bits whose
    /// whole block lies inside the range are cleared (a partly covered block
    /// stays out of sync); the partial block at the end of the data counts as
    /// whole. Returns the number of bits cleared.
    pub fn clear_range(&self, slot: usize, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let bpb = self.bytes_per_bit();
        let first = offset.div_ceil(bpb);
        let stop = offset.saturating_add(len);
        let end = if stop >= self.data_size {
            self.nbits
        } else {
            stop >> self.bit_shift
        };
        self.clear_bits(slot, first, end)
    }

    /// Sets every bit of `slot` (full sync).
    pub fn set_all(&self, slot: usize) -> u64 {
        self.set_bits(slot, 0, self.nbits)
    }

    /// Clears every bit of `slot`.
    pub fn clear_all(&self, slot: usize) -> u64 {
        self.clear_bits(slot, 0, self.nbits)
    }

    /// Is bit `bit` set?
    pub fn test_bit(&self, slot: usize, bit: u64) -> bool {
        bit < self.nbits && self.word(slot, bit / 64).load(Ordering::Acquire) & (1 << (bit % 64)) != 0
    }

    /// Is the block holding data byte `offset` out of sync towards `slot`?
    pub fn is_set(&self, slot: usize, offset: u64) -> bool {
        self.test_bit(slot, offset >> self.bit_shift)
    }

    /// Number of set bits (out-of-sync blocks) of `slot`.
    pub fn count_set(&self, slot: usize) -> u64 {
        self.counts[slot].load(Ordering::Acquire)
    }

    /// Out-of-sync bytes towards `slot` (set bits times bytes per bit, the
    /// last block counted only up to the data size).
    pub fn out_of_sync_bytes(&self, slot: usize) -> u64 {
        let n = self.count_set(slot);
        let full = n.saturating_mul(self.bytes_per_bit());
        if n > 0 && self.nbits > 0 && self.test_bit(slot, self.nbits - 1) {
            let tail = self.nbits * self.bytes_per_bit() - self.data_size;
            full - tail
        } else {
            full
        }
    }

    /// First set bit at or after `from`.
    pub fn next_set_bit(&self, slot: usize, from: u64) -> Option<u64> {
        self.next_bit(slot, from, false)
    }

    /// First clear bit at or after `from` (below `nbits`).
    pub fn next_clear_bit(&self, slot: usize, from: u64) -> Option<u64> {
        self.next_bit(slot, from, true)
    }

    fn next_bit(&self, slot: usize, from: u64, clear: bool) -> Option<u64> {
        if from >= self.nbits {
            return None;
        }
        let last_w = (self.nbits - 1) / 64;
        let mut w = from / 64;
        let mut v = self.word(slot, w).load(Ordering::Acquire);
        if clear {
            v = !v;
        }
        v &= !((1u64 << (from % 64)) - 1);
        loop {
            if v != 0 {
                let bit = w * 64 + v.trailing_zeros() as u64;
                return (bit < self.nbits).then_some(bit);
            }
            w += 1;
            if w > last_w {
                return None;
            }
            v = self.word(slot, w).load(Ordering::Acquire);
            if clear {
                v = !v;
            }
        }
    }

    /// Out-of-sync byte ranges `(offset, len)` of `slot`, ascending and
    /// merged, clamped to the data size.
    pub fn set_ranges(&self, slot: usize) -> SetRanges<'_> {
        assert!(slot < self.nslots, "bitmap slot {slot} out of range");
        SetRanges {
            bm: self,
            slot,
            next: 0,
        }
    }

    /// Raw word `w` of `slot` (for sending the bitmap to a peer).
    pub fn load_word(&self, slot: usize, w: u64) -> u64 {
        self.word(slot, w).load(Ordering::Acquire)
    }

    /// ORs `values` into `slot` starting at word `first_word` (merging a
    /// peer's bitmap). Bits past the data are ignored. Returns newly set bits.
    pub fn or_words(&self, slot: usize, first_word: u64, values: &[u64]) -> u64 {
        let mut changed = 0;
        for (i, &v) in values.iter().enumerate() {
            let w = first_word + i as u64;
            let v = v & self.valid_mask(w);
            if v == 0 {
                continue;
            }
            let prev = self.word(slot, w).fetch_or(v, Ordering::AcqRel);
            let n = (v & !prev).count_ones() as u64;
            if n != 0 {
                changed += n;
                self.mark_dirty_word(slot, w);
            }
        }
        self.counts[slot].fetch_add(changed, Ordering::AcqRel);
        changed
    }
}

/// Iterator of [`Bitmap::set_ranges`].
pub struct SetRanges<'a> {
    bm: &'a Bitmap,
    slot: usize,
    next: u64,
}

impl Iterator for SetRanges<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let start = self.bm.next_set_bit(self.slot, self.next)?;
        let end = self.bm.next_clear_bit(self.slot, start).unwrap_or(self.bm.nbits);
        self.next = end;
        let bpb = self.bm.bytes_per_bit();
        let off = start * bpb;
        let stop = (end * bpb).min(self.bm.data_size);
        Some((off, stop - off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn bm(nslots: usize, data: u64) -> Bitmap {
        let slot = super::super::layout::bitmap_slot_bytes(data, 4096);
        Bitmap::new(nslots, slot, data, 4096)
    }

    #[test]
    fn set_clear_count() {
        let b = bm(2, 64 * MIB);
        assert_eq!(b.nbits(), 16384);
        assert_eq!(b.set_range(0, 0, 1), 1);
        assert_eq!(b.set_range(0, 0, 4096), 0);
        assert_eq!(b.set_range(0, 4095, 2), 1); // touches blocks 0 and 1
        assert_eq!(b.count_set(0), 2);
        assert_eq!(b.count_set(1), 0);
        assert!(b.is_set(0, 8191));
        assert!(!b.is_set(0, 8192));
        assert!(!b.is_set(1, 0));
        // Crossing word boundaries.
        assert_eq!(b.set_range(1, 60 * 4096, 10 * 4096), 10);
        assert_eq!(b.set_ranges(1).collect::<Vec<_>>(), vec![(60 * 4096, 10 * 4096)]);
        // A partial clear leaves partly covered blocks set.
        assert_eq!(b.clear_range(1, 60 * 4096 + 1, 4096), 0);
        assert_eq!(b.clear_range(1, 61 * 4096, 3 * 4096 + 100), 3);
        assert_eq!(
            b.set_ranges(1).collect::<Vec<_>>(),
            vec![(60 * 4096, 4096), (64 * 4096, 6 * 4096)]
        );
        assert_eq!(b.count_set(1), 7);
        assert_eq!(b.out_of_sync_bytes(1), 7 * 4096);
        // Clamped at the end of the data.
        assert_eq!(b.set_range(0, 64 * MIB - 4096, 1 << 40), 1);
        assert_eq!(b.set_range(0, 1 << 40, 4096), 0);
        assert_eq!(b.set_all(0), 16384 - 3);
        assert_eq!(b.count_set(0), 16384);
        assert_eq!(b.set_ranges(0).collect::<Vec<_>>(), vec![(0, 64 * MIB)]);
        assert_eq!(b.clear_all(0), 16384);
        assert_eq!(b.set_ranges(0).next(), None);
        assert_eq!(b.set_range(0, 5, 0), 0);
    }

    #[test]
    fn next_bits() {
        let b = bm(1, MIB);
        assert_eq!(b.next_set_bit(0, 0), None);
        assert_eq!(b.next_clear_bit(0, 0), Some(0));
        b.set_bits(0, 100, 200);
        assert_eq!(b.next_set_bit(0, 0), Some(100));
        assert_eq!(b.next_set_bit(0, 150), Some(150));
        assert_eq!(b.next_clear_bit(0, 100), Some(200));
        assert_eq!(b.next_set_bit(0, 200), None);
        b.set_all(0);
        assert_eq!(b.next_clear_bit(0, 0), None);
        assert_eq!(b.next_set_bit(0, 255), Some(255));
        assert_eq!(b.next_set_bit(0, 256), None);
    }

    #[test]
    fn dirty_tracking_per_page() {
        // 2 slots of 1 GiB: 32 KiB = 8 pages per slot.
        let b = bm(2, 1 << 30);
        assert_eq!(b.pages(), 16);
        assert!(b.take_dirty().is_empty());
        b.set_range(0, 0, 4096);
        b.set_range(1, 0, 4096);
        // One page covers 32768 bits = 128 MiB of data.
        b.set_range(0, 300 * MIB, 4096);
        assert_eq!(b.take_dirty(), vec![0, 2, 8]);
        assert!(b.take_dirty().is_empty());
        // Setting an already set bit does not dirty anything.
        b.set_range(0, 0, 4096);
        assert!(b.take_dirty().is_empty());
        b.clear_range(0, 0, 4096);
        assert_eq!(b.take_dirty(), vec![0]);
    }

    #[test]
    fn page_bytes_and_load_round_trip() {
        let a = bm(2, 256 * MIB);
        a.set_range(0, 12345, 999_999);
        a.set_range(1, 200 * MIB, 3 * MIB);
        let mut disk = vec![0u8; a.pages() * PAGE_BYTES];
        for p in 0..a.pages() {
            a.page_bytes(p, &mut disk[p * PAGE_BYTES..(p + 1) * PAGE_BYTES]);
        }
        // Bit 0 of word 0 is byte 0 bit 0 (little-endian words).
        assert_eq!(disk[0] & 1, 0);
        assert_eq!(disk[0] & 0b1000, 0b1000); // block 3 holds byte 12345
        let b = bm(2, 256 * MIB);
        b.load_pages(0, &disk);
        assert!(b.take_dirty().is_empty());
        for s in 0..2 {
            assert_eq!(a.count_set(s), b.count_set(s));
            assert_eq!(a.set_ranges(s).collect::<Vec<_>>(), b.set_ranges(s).collect::<Vec<_>>());
        }
    }

    #[test]
    fn load_drops_bits_past_the_data() {
        // 10 blocks of data in a one-page slot.
        let b = Bitmap::new(1, 4096, 10 * 4096, 4096);
        let page = [0xffu8; 4096];
        b.load_pages(0, &page);
        assert_eq!(b.count_set(0), 10);
        assert_eq!(b.take_dirty(), vec![0]);
        let mut out = [0u8; 4096];
        b.page_bytes(0, &mut out);
        assert_eq!(&out[..2], &[0xff, 0x03]);
        assert!(out[2..].iter().all(|&x| x == 0));
    }

    #[test]
    fn larger_bytes_per_bit_and_partial_tail() {
        // 64 KiB per bit; 1 MiB + 4 KiB of data => 17 bits, last one partial.
        let b = Bitmap::new(1, 4096, MIB + 4096, 65536);
        assert_eq!(b.nbits(), 17);
        b.set_range(0, MIB, 1);
        assert_eq!(b.out_of_sync_bytes(0), 4096);
        assert_eq!(b.set_ranges(0).collect::<Vec<_>>(), vec![(MIB, 4096)]);
        assert_eq!(b.clear_range(0, MIB, 4096), 1);
        b.set_range(0, 0, 10);
        assert_eq!(b.clear_range(0, 0, 4096), 0);
    }

    #[test]
    fn or_words_merges() {
        let b = bm(1, MIB);
        b.set_bits(0, 0, 1);
        assert_eq!(b.or_words(0, 0, &[0b11]), 1);
        assert_eq!(b.or_words(0, 0, &[u64::MAX; 5]), 62 + 192);
        assert_eq!(b.count_set(0), 256);
        assert_eq!(b.load_word(0, 0), u64::MAX);
    }

    #[test]
    fn concurrent_set_range_counts_exactly() {
        let b = std::sync::Arc::new(bm(1, 64 * MIB));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let off = ((i * 7919 + t * 104729) % 16000) * 4096;
                        b.set_range(0, off, 3 * 4096);
                        if i % 3 == 0 {
                            b.clear_range(0, off, 4096);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let real: u64 = (0..b.nbits()).filter(|&i| b.test_bit(0, i)).count() as u64;
        assert_eq!(b.count_set(0), real);
    }
}
