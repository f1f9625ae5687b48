//! A heap buffer aligned for O_DIRECT, so request payloads travel from the socket to
//! the disk (and back) without a copy.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Alignment of every buffer: the largest logical block size O_DIRECT may demand.
pub const IO_ALIGN: usize = 4096;

/// An owned, 4 KiB-aligned byte buffer with a length (capacity rounded up to 4 KiB).
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: IoBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for IoBuf {}
unsafe impl Sync for IoBuf {}

/// Buffers up to this capacity are recycled instead of freed.
const POOL_MAX_CAP: usize = 32 << 20;
/// Size classes are powers of two from 4 KiB (class 0) up to POOL_MAX_CAP.
const POOL_CLASSES: usize = (POOL_MAX_CAP / IO_ALIGN).trailing_zeros() as usize + 1;
/// Bytes the pool may keep per size class.
const POOL_BYTES_PER_CLASS: usize = 16 << 20;
/// Bytes the pool may keep in all: the most idle buffer memory a daemon holds on to.
const POOL_BYTES_TOTAL: usize = 64 << 20;
static POOLED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Freed buffers by size class. Reuse saves the zeroing and the mmap/munmap that
/// large allocations otherwise cost on every request.
static POOL: [Mutex<Vec<Chunk>>; POOL_CLASSES] = [const { Mutex::new(Vec::new()) }; POOL_CLASSES];

struct Chunk(NonNull<u8>);
// SAFETY: a pooled chunk is owned by nobody but the pool.
unsafe impl Send for Chunk {}

fn class_of(cap: usize) -> Option<usize> {
    (cap <= POOL_MAX_CAP).then(|| (cap / IO_ALIGN).trailing_zeros() as usize)
}

impl IoBuf {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, IO_ALIGN).expect("IoBuf layout")
    }

    fn capacity_for(len: usize) -> usize {
        let pages = len.max(1).div_ceil(IO_ALIGN);
        if pages * IO_ALIGN <= POOL_MAX_CAP {
            pages.next_power_of_two() * IO_ALIGN
        } else {
            pages * IO_ALIGN
        }
    }

    fn with_alloc(len: usize, zeroed: bool) -> IoBuf {
        let cap = Self::capacity_for(len);
        if let Some(c) = class_of(cap) {
            if let Some(Chunk(ptr)) = POOL[c].lock().unwrap_or_else(|e| e.into_inner()).pop() {
                POOLED_BYTES.fetch_sub(cap, Ordering::Relaxed);
                let mut b = IoBuf { ptr, len, cap };
                if zeroed {
                    b.as_mut_slice().fill(0);
                }
                return b;
            }
        }
        let layout = Self::layout(cap);
        // SAFETY: layout has non-zero size. Fresh memory is always zeroed so that
        // every IoBuf is initialised (pooled ones hold earlier, initialised data).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        IoBuf { ptr, len, cap }
    }

    /// A zero-filled buffer of `len` bytes.
    pub fn zeroed(len: usize) -> IoBuf {
        Self::with_alloc(len, true)
    }

    /// A buffer of `len` bytes with unspecified (but initialised) contents, for
    /// callers that overwrite it whole: a recycled buffer is not cleared.
    pub fn uninit(len: usize) -> IoBuf {
        Self::with_alloc(len, false)
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> IoBuf {
        let mut b = Self::with_alloc(data.len(), false);
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity, always a multiple of [`IO_ALIGN`].
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Shrinks or grows (within capacity) the visible length.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "IoBuf::set_len beyond capacity");
        self.len = len;
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        if let Some(c) = class_of(self.cap) {
            let mut pool = POOL[c].lock().unwrap_or_else(|e| e.into_inner());
            let fits_class = (pool.len() + 1) * self.cap <= POOL_BYTES_PER_CLASS;
            let fits_total = POOLED_BYTES.load(Ordering::Relaxed) + self.cap <= POOL_BYTES_TOTAL;
            if fits_class && fits_total {
                POOLED_BYTES.fetch_add(self.cap, Ordering::Relaxed);
                pool.push(Chunk(self.ptr));
                return;
            }
        }
        // SAFETY: allocated in with_alloc with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for IoBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf(len={})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for len in [0usize, 1, 511, 4096, 4097, 1 << 20] {
            let b = IoBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.capacity() >= len && b.capacity().is_multiple_of(IO_ALIGN));
            assert!(b.iter().all(|&x| x == 0));
        }
        let c = IoBuf::copy_from(b"hello");
        assert_eq!(&c[..], b"hello");
    }

    #[test]
    fn recycled_buffers_are_reused_and_zeroed_on_request() {
        let mut a = IoBuf::uninit(8192);
        a.fill(0xee);
        let p = a.as_ptr() as usize;
        drop(a);
        // The same class comes back from the pool (other tests may race; allow both).
        let z = IoBuf::zeroed(5000);
        assert!(z.iter().all(|&x| x == 0), "zeroed() must clear a recycled buffer");
        let _ = p;
        let big = IoBuf::uninit(40 << 20);
        assert_eq!(big.capacity(), 40 << 20);
    }
}
