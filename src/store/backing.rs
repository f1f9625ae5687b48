//! The data area of a backing file or block device, read and written through io_uring.
//!
//! O_DIRECT is used where the backing store allows it (and `cache = "none"`, the
//! default), so the page cache neither doubles memory nor hides when data reaches the
//! disk; a file system that refuses O_DIRECT (tmpfs) falls back to buffered I/O with
//! explicit syncs, as does `cache = "writeback"`. Requests that are
//! not aligned to the device's direct-I/O granule are served by read-modify-write,
//! which runs alone (an exclusive lock) so it never clobbers a neighbour in flight.

use super::meta::device_size;
use super::uring::Uring;
use kernel_shim::IoBuf;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tokio::sync::RwLock;

/// Largest chunk written when zeroes must be written by hand.
const ZERO_CHUNK: u64 = 1 << 20;

/// The data area `[0, size)` of a backing store.
pub struct Backing {
    path: PathBuf,
    // Declared before `file` so the ring thread stops before the descriptor closes.
    ring: Uring,
    file: File,
    size: u64,
    direct: bool,
    align: u64,
    /// Shared by aligned requests, exclusive for read-modify-write.
    rmw: RwLock<()>,
}

impl Backing {
    /// Opens `path` read-write and serves its first `size` bytes (the rest may hold
    /// internal metadata, which this type never touches). With `direct` the page cache
    /// is bypassed where the file system allows it.
    pub fn open(path: &Path, size: u64, direct: bool) -> io::Result<Backing> {
        let flags = if direct { libc::O_DIRECT } else { 0 };
        let (file, direct) = match OpenOptions::new().read(true).write(true).custom_flags(flags).open(path) {
            Ok(f) => (f, direct),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!("{}: O_DIRECT not supported here, using buffered I/O", path.display());
                (OpenOptions::new().read(true).write(true).open(path)?, false)
            }
            Err(e) => return Err(e),
        };
        let have = device_size(&file)?;
        if have < size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds {have} bytes, fewer than the {size} the metadata expects",
                    path.display()
                ),
            ));
        }
        lock_exclusive(&file, path)?;
        let align = if direct { probe_direct_align(&file) } else { 1 };
        let ring = Uring::new(
            file.as_raw_fd(),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("backing"),
        )?;
        Ok(Backing {
            path: path.to_path_buf(),
            ring,
            file,
            size,
            direct,
            align,
            rmw: RwLock::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the page cache is bypassed.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// The open file or device, for callers that do their own aligned I/O on it (the
    /// ublk fast path). Valid while this `Backing` lives.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// The granule below which requests need read-modify-write.
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request beyond the end of the device",
            )),
        }
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        offset.is_multiple_of(self.align) && len.is_multiple_of(self.align)
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> io::Result<IoBuf> {
        self.check(offset, len as u64)?;
        let _shared = self.rmw.read().await;
        if self.aligned(offset, len as u64) {
            return self.read_exact(IoBuf::uninit(len), offset).await;
        }
        let (start, span) = self.widen(offset, len as u64);
        let wide = self.read_exact(IoBuf::uninit(span as usize), start).await?;
        let skip = (offset - start) as usize;
        Ok(IoBuf::copy_from(&wide[skip..skip + len]))
    }

    /// Writes `data` at `offset`; with `fua` it is durable on return.
    pub async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        self.check(offset, data.len() as u64)?;
        if self.aligned(offset, data.len() as u64) {
            let _shared = self.rmw.read().await;
            return self.write_exact(data, offset, fua).await;
        }
        let _alone = self.rmw.write().await;
        let (start, span) = self.widen(offset, data.len() as u64);
        let mut wide = self.read_exact(IoBuf::uninit(span as usize), start).await?;
        let skip = (offset - start) as usize;
        wide[skip..skip + data.len()].copy_from_slice(&data);
        self.write_exact(wide, start, fua).await
    }

    /// Writes shared memory (a replicated payload) at `offset` without copying it when
    /// its address and range suit the file's alignment; otherwise as [`Backing::write`].
    pub async fn write_shared(&self, offset: u64, data: bytes::Bytes, fua: bool) -> io::Result<()> {
        let len = data.len() as u64;
        self.check(offset, len)?;
        let addr_ok = (data.as_ptr() as u64).is_multiple_of(self.align.max(1));
        if !(self.aligned(offset, len) && addr_ok) || (!self.direct && !fua) {
            return self.write(offset, IoBuf::copy_from(&data), fua).await;
        }
        let _shared = self.rmw.read().await;
        let done = self.ring.write_shared_at(data.clone(), offset, fua).await?;
        if done < data.len() {
            // Short writes are rare (a full disk); finish with an owned copy.
            let rest = IoBuf::copy_from(&data[done..]);
            return self.write_exact(rest, offset + done as u64, fua).await;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub async fn flush(&self) -> io::Result<()> {
        self.ring.sync(true).await
    }

    /// Discards what can be discarded in the range (whole aligned granules only).
    pub async fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check(offset, len)?;
        let start = offset.div_ceil(4096) * 4096;
        let end = (offset + len) / 4096 * 4096;
        if end > start {
            let _shared = self.rmw.read().await;
            match self.punch(start, end - start).await {
                Ok(()) => {}
                // Discard is advisory: a store without it keeps the old data.
                Err(e) if is_unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Zeroes the range; `may_unmap` allows deallocating it.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool, may_unmap: bool) -> io::Result<()> {
        self.check(offset, len)?;
        let start = offset.div_ceil(self.align.max(4096)) * self.align.max(4096);
        let end = (offset + len) / self.align.max(4096) * self.align.max(4096);
        if end <= start {
            return self.write_zero_bytes(offset, len, fua).await;
        }
        if start > offset {
            self.write_zero_bytes(offset, start - offset, false).await?;
        }
        if offset + len > end {
            self.write_zero_bytes(end, offset + len - end, false).await?;
        }
        let done = {
            let _shared = self.rmw.read().await;
            let r = if may_unmap {
                self.punch(start, end - start).await
            } else {
                self.ring
                    .fallocate(
                        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                        start,
                        end - start,
                    )
                    .await
            };
            match r {
                Ok(()) => true,
                Err(e) if is_unsupported(&e) => false,
                Err(e) => return Err(e),
            }
        };
        if !done {
            self.write_zero_bytes(start, end - start, false).await?;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        // Block devices implement PUNCH_HOLE as discard-with-zeroes too (blkdev_fallocate).
        self.ring
            .fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
            .await
    }

    async fn write_zero_bytes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(ZERO_CHUNK);
            self.write(at, IoBuf::zeroed(n as usize), false).await?;
            at += n;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    fn widen(&self, offset: u64, len: u64) -> (u64, u64) {
        let start = offset / self.align * self.align;
        let end = (offset + len).div_ceil(self.align) * self.align;
        (start, end - start)
    }

    async fn read_exact(&self, mut buf: IoBuf, offset: u64) -> io::Result<IoBuf> {
        let total = buf.len();
        if !self.direct && self.read_cached(&mut buf, offset) {
            return Ok(buf);
        }
        let (b, r) = self.ring.read_at(buf, offset).await;
        buf = b;
        let n = r?;
        if n == total {
            return Ok(buf);
        }
        // A short read (rare: signals, EOF races) is finished with a bounce buffer.
        let mut got = n;
        while got < total {
            let rest = IoBuf::uninit(total - got);
            let (rest, r) = self.ring.read_at(rest, offset + got as u64).await;
            let n = r?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backing store ended early",
                ));
            }
            buf[got..got + n].copy_from_slice(&rest[..n]);
            got += n;
        }
        Ok(buf)
    }

    /// Serves a read from the page cache on this thread when every byte is cached
    /// (RWF_NOWAIT never blocks on the disk); false sends it through the ring.
    fn read_cached(&self, buf: &mut IoBuf, offset: u64) -> bool {
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over the buffer we own exclusively, valid for its length.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT) };
        n >= 0 && n as usize == buf.len()
    }

    async fn write_exact(&self, buf: IoBuf, offset: u64, fua: bool) -> io::Result<()> {
        if !self.direct && !fua {
            // A write into the page cache is a memory copy. io_uring would hand it to a
            // kernel worker thread (ext4 cannot do buffered writes without blocking), and
            // that hop costs more than the copy, so do it here.
            return self.file.write_all_at(&buf, offset);
        }
        let total = buf.len();
        let (buf, r) = self.ring.write_at(buf, offset, fua).await;
        let mut done = r?;
        while done < total {
            if done == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "backing store accepted no data",
                ));
            }
            let rest = IoBuf::copy_from(&buf[done..]);
            let (_, r) = self.ring.write_at(rest, offset + done as u64, fua).await;
            done += r?;
        }
        Ok(())
    }
}

/// Takes the advisory lock that marks a backing store as in use, so that a second
/// daemon (or `hbadm create-md`) cannot write under a running one. Released when the
/// file is closed, including when the process dies.
pub fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("{} is in use by another process (another hablockd?)", path.display()),
        ));
    }
    Err(e)
}

/// True when another process holds the backing store (see [`lock_exclusive`]).
pub fn in_use(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => matches!(lock_exclusive(&f, path), Err(e) if e.kind() == io::ErrorKind::ResourceBusy),
        Err(_) => false,
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
    )
}

/// The smallest offset/length granule O_DIRECT accepts on this file: 512 or 4096.
fn probe_direct_align(file: &File) -> u64 {
    let buf = IoBuf::zeroed(4096);
    for align in [512usize, 4096] {
        // SAFETY: reading `align` bytes into a 4096-byte, 4096-aligned buffer.
        let rc = unsafe { libc::pread(file.as_raw_fd(), buf.as_ptr() as *mut libc::c_void, align, align as i64) };
        if rc >= 0 {
            return align as u64;
        }
    }
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(size: u64) -> (tempfile::TempDir, Backing) {
        let dir = tempfile::tempdir_in(std::env::var("CARGO_TARGET_TMPDIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let p = dir.path().join("b.img");
        File::create(&p).unwrap().set_len(size + 8192).unwrap();
        let b = Backing::open(&p, size, true).unwrap();
        (dir, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aligned_and_unaligned_round_trip() {
        let (_d, b) = setup(1 << 20);
        b.write(0, IoBuf::copy_from(&[1u8; 8192]), false).await.unwrap();
        // Unaligned write in the middle of the first block keeps its neighbours.
        b.write(100, IoBuf::copy_from(&[2u8; 10]), true).await.unwrap();
        let r = b.read(0, 8192).await.unwrap();
        assert!(r[..100].iter().all(|&x| x == 1));
        assert!(r[100..110].iter().all(|&x| x == 2));
        assert!(r[110..].iter().all(|&x| x == 1));
        let u = b.read(105, 7).await.unwrap();
        assert_eq!(&u[..], &[2, 2, 2, 2, 2, 1, 1]);
        b.flush().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backing_store_is_held_by_one_opener() {
        let (d, b) = setup(1 << 20);
        let p = d.path().join("b.img");
        assert!(in_use(&p));
        let e = Backing::open(&p, 1 << 20, true).err().expect("second open must fail");
        assert!(e.to_string().contains("in use"), "{e}");
        drop(b);
        assert!(!in_use(&p));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zeroes_trim_and_bounds() {
        let (_d, b) = setup(1 << 20);
        b.write(0, IoBuf::copy_from(&vec![7u8; 1 << 20]), false).await.unwrap();
        b.write_zeroes(1000, 20000, false, false).await.unwrap();
        let r = b.read(0, 30000).await.unwrap();
        assert!(r[..1000].iter().all(|&x| x == 7));
        assert!(r[1000..21000].iter().all(|&x| x == 0));
        assert!(r[21000..].iter().all(|&x| x == 7));
        b.write_zeroes(65536, 65536, true, true).await.unwrap();
        assert!(b.read(65536, 65536).await.unwrap().iter().all(|&x| x == 0));
        b.trim(4096 * 40, 4096 * 4, false).await.unwrap();
        assert!(b.read((1 << 20) - 1, 2).await.is_err());
        assert!(b.write(u64::MAX, IoBuf::zeroed(1), false).await.is_err());
    }
}
