//! The core's own copy of the out-of-sync bitmap towards its peer.
//!
//! The persistent bitmap lives in `store::meta::Bitmap` (one slot per peer). The
//! core keeps this plain copy so it stays pure, and tells the driver about every
//! change with [`super::Action::SetOutOfSync`] / [`super::Action::ClearInSync`];
//! the driver applies them to the slot and makes them durable on
//! [`super::Action::FlushBitmap`]. Same layout as the on-disk slot: bit `i` of
//! word `w` covers block `64 w + i`.

/// One bit per block of `block_size` bytes; a set bit = may differ on the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncBitmap {
    words: Vec<u64>,
    nbits: u64,
    block_size: u64,
    count: u64,
}

impl SyncBitmap {
    /// An all-clear bitmap for `size` bytes at `block_size` (a power of two) per bit.
    pub fn new(size: u64, block_size: u64) -> SyncBitmap {
        assert!(block_size.is_power_of_two());
        let nbits = size.div_ceil(block_size);
        SyncBitmap {
            words: vec![0; nbits.div_ceil(64) as usize],
            nbits,
            block_size,
            count: 0,
        }
    }

    /// Bitmap from words (as loaded from the metadata); bits past the end are dropped.
    pub fn from_words(size: u64, block_size: u64, words: &[u64]) -> SyncBitmap {
        let mut b = SyncBitmap::new(size, block_size);
        b.or_words(0, words);
        b
    }

    pub fn nbits(&self) -> u64 {
        self.nbits
    }
    pub fn block_size(&self) -> u64 {
        self.block_size
    }
    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Number of 64-bit words.
    pub fn nwords(&self) -> u64 {
        self.words.len() as u64
    }
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn test(&self, bit: u64) -> bool {
        bit < self.nbits && self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    fn change(&mut self, bit: u64, set: bool) -> bool {
        let w = &mut self.words[(bit / 64) as usize];
        let m = 1u64 << (bit % 64);
        let was = *w & m != 0;
        if was != set {
            *w ^= m;
            if set {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
        was != set
    }

    /// Blocks `first..end` touched by the byte range `offset..offset+len`.
    pub fn blocks_touched(&self, offset: u64, len: u64) -> (u64, u64) {
        if len == 0 {
            return (0, 0);
        }
        let first = offset / self.block_size;
        let end = (offset.saturating_add(len) - 1) / self.block_size + 1;
        (first.min(self.nbits), end.min(self.nbits))
    }

    /// Sets every bit the byte range touches. Returns newly set bits.
    pub fn set_range(&mut self, offset: u64, len: u64) -> u64 {
        let (first, end) = self.blocks_touched(offset, len);
        (first..end).filter(|&b| self.change(b, true)).count() as u64
    }

    /// Clears the bits of blocks `first..end`. Returns how many were set.
    pub fn clear_blocks(&mut self, first: u64, end: u64) -> u64 {
        (first..end.min(self.nbits)).filter(|&b| self.change(b, false)).count() as u64
    }

    pub fn set_all(&mut self) -> u64 {
        (0..self.nbits).filter(|&b| self.change(b, true)).count() as u64
    }

    /// First set bit at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut bit = from;
        while bit < self.nbits {
            let w = self.words[(bit / 64) as usize] >> (bit % 64);
            if w != 0 {
                let b = bit + w.trailing_zeros() as u64;
                return (b < self.nbits).then_some(b);
            }
            bit = (bit / 64 + 1) * 64;
        }
        None
    }

    /// ORs `values` in starting at word `first_word`; bits past the end are ignored.
    /// Returns newly set bits.
    pub fn or_words(&mut self, first_word: u64, values: &[u64]) -> u64 {
        let mut n = 0;
        for (i, &v) in values.iter().enumerate() {
            let w = first_word.saturating_add(i as u64);
            if w >= self.nwords() {
                break;
            }
            let lo = w * 64;
            let valid = if lo + 64 <= self.nbits {
                u64::MAX
            } else {
                (1u64 << (self.nbits - lo)) - 1
            };
            let add = v & valid & !self.words[w as usize];
            self.words[w as usize] |= add;
            n += add.count_ones() as u64;
        }
        self.count += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_count_next() {
        let mut b = SyncBitmap::new(130 * 4096 - 100, 4096);
        assert_eq!(b.nbits(), 130);
        assert_eq!(b.set_range(4095, 2), 2);
        assert_eq!(b.set_range(4096, 4096), 0);
        assert_eq!(b.count(), 2);
        assert_eq!(b.next_set(0), Some(0));
        assert_eq!(b.next_set(2), None);
        b.set_range(129 * 4096, 1 << 20);
        assert_eq!(b.next_set(2), Some(129));
        assert_eq!(b.clear_blocks(0, 200), 3);
        assert_eq!(b.count(), 0);
        assert_eq!(b.or_words(1, &[u64::MAX, u64::MAX, 7]), 66);
        assert_eq!(b.count(), 66);
        assert_eq!(b.set_all(), 64);
    }
}
