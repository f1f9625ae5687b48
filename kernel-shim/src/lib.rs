//! How a hablock device reaches a kernel (or any block client).
//!
//! This crate knows nothing about replication or metadata: it exports anything that
//! implements [`BlockDevice`]. The NBD server lives in [`nbd`]; ublk and FUSE exports
//! will sit beside it.

pub mod iobuf;
pub mod nbd;
pub mod ublk;

pub use iobuf::IoBuf;

use std::future::Future;
use std::io;
use std::os::fd::RawFd;

/// Block size constraints a device wants its clients to honour (NBD_INFO_BLOCK_SIZE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest unit the device can address without read-modify-write.
    pub minimum: u32,
    /// Size that performs best (usually the page or the bitmap granule).
    pub preferred: u32,
    /// Largest single request payload the device accepts.
    pub maximum: u32,
}

/// What a kernel-facing export needs from a block device.
///
/// Every method may be called concurrently from many requests; ordering between
/// overlapping requests in flight is the client's business, as in NBD and SCSI.
/// Offsets and lengths have been bounds-checked by the caller against [`size`](Self::size).
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes exposed to clients.
    fn size(&self) -> u64;
    /// Constraints advertised to clients.
    fn block_sizes(&self) -> BlockSizes;
    /// True when writes would be refused right now (e.g. a secondary).
    fn read_only(&self) -> bool;
    /// What [`read_only`](Self::read_only) will say once a client has opened the device
    /// (a device that promotes itself on open says false); NBD_OPT_INFO reports this,
    /// so that it matches what NBD_OPT_GO will give.
    fn read_only_once_open(&self) -> bool {
        self.read_only()
    }
    /// Called when a client opens the export; an error refuses the client with that
    /// message (e.g. "resource is Secondary and the peer is Primary").
    fn open(&self) -> Result<(), String> {
        Ok(())
    }
    /// Called once for every successful [`open`](Self::open) when that client goes away.
    fn close(&self) {}
    /// True when concurrent connections see each other's flushed writes (NBD multi-conn).
    fn multi_conn_safe(&self) -> bool {
        true
    }

    /// Reads `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = io::Result<IoBuf>> + Send;
    /// Writes `data` at `offset`; with `fua` the data is on stable storage before returning.
    fn write(&self, offset: u64, data: IoBuf, fua: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Discards a range; later reads may return anything (zeroes here).
    fn trim(&self, offset: u64, len: u32, fua: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Zeroes a range; `may_unmap` allows deallocating it.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        may_unmap: bool,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// A file holding the device's bytes at the same offsets, when plain reads, writes
    /// and `fdatasync` of it are all that [`read`](Self::read), [`write`](Self::write)
    /// and [`flush`](Self::flush) would do (no replication, nothing to mark for a peer).
    /// A server may then do that I/O itself (the ublk queue threads do, on their own
    /// io_uring), calling [`direct_begin_write`](Self::direct_begin_write) before each
    /// write and [`direct_done`](Self::direct_done) after each request. `None` (the
    /// default): every request goes through the async methods.
    fn direct_file(&self) -> Option<DirectFile> {
        None
    }
    /// Whether a write through the [`direct_file`](Self::direct_file) may go ahead now
    /// (e.g. `EPERM` on a Secondary).
    fn direct_begin_write(&self) -> io::Result<()> {
        Ok(())
    }
    /// Accounts a request served through the [`direct_file`](Self::direct_file).
    fn direct_done(&self, _op: DirectOp, _bytes: u64, _ok: bool) {}
}

/// See [`BlockDevice::direct_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectFile {
    /// Open read-write for as long as the device lives.
    pub fd: RawFd,
    /// Offsets, lengths and buffer addresses must be multiples of this (O_DIRECT);
    /// 1 when anything goes.
    pub align: u64,
    /// Opened without O_DIRECT: reads and writes go through the page cache, so they
    /// often complete at once, and a server may try them on the spot (without
    /// blocking) before queueing them.
    pub buffered: bool,
}

/// A request served through a [`DirectFile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOp {
    Read,
    Write,
    Flush,
}
