//! What a logical unit sits on: a plain file or block device (tgt's `rdwr` backing store),
//! or a hablock resource.

use crate::resource::device::{Device, MAX_REQUEST};
use crate::store::backing::Backing;
use kernel_shim::{BlockDevice, BlockSizes, IoBuf};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A file or block device served whole, through [`Backing`] (io_uring, O_DIRECT where the
/// file system allows it, buffered I/O otherwise).
pub struct FileDevice {
    backing: Backing,
}

impl FileDevice {
    /// Opens `path` read-write and serves all of it. The file is locked (flock) against a
    /// second hablock user, as a resource's backing store is.
    pub fn open(path: &Path, direct: bool) -> io::Result<FileDevice> {
        let size = {
            let f = std::fs::File::open(path)?;
            crate::store::meta::device_size(&f)?
        };
        Ok(FileDevice {
            backing: Backing::open(path, size, direct)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.backing.path()
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.backing.size()
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: self.backing.alignment().max(512) as u32,
            preferred: 4096,
            maximum: MAX_REQUEST,
        }
    }

    fn read_only(&self) -> bool {
        false
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        self.backing.read(offset, len as usize).await
    }

    async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        self.backing.write(offset, data, fua).await
    }

    async fn flush(&self) -> io::Result<()> {
        self.backing.flush().await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        self.backing.trim(offset, len as u64, fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool, may_unmap: bool) -> io::Result<()> {
        self.backing.write_zeroes(offset, len as u64, fua, may_unmap).await
    }
}

/// The device under a LUN: a file, or an attached resource's data path. A resource that is
/// not Primary reports [`BlockDevice::read_only`], which the LU presents as standby.
pub enum LunDevice {
    File(FileDevice),
    Resource(Arc<Device>),
}

macro_rules! delegate {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            LunDevice::File($d) => $e,
            LunDevice::Resource($d) => $e,
        }
    };
}

impl BlockDevice for LunDevice {
    fn size(&self) -> u64 {
        delegate!(self, d => d.size())
    }

    fn block_sizes(&self) -> BlockSizes {
        delegate!(self, d => d.block_sizes())
    }

    fn read_only(&self) -> bool {
        delegate!(self, d => d.read_only())
    }

    fn read_only_once_open(&self) -> bool {
        delegate!(self, d => d.read_only_once_open())
    }

    fn open(&self) -> Result<(), String> {
        delegate!(self, d => d.open())
    }

    fn close(&self) {
        delegate!(self, d => d.close())
    }

    fn multi_conn_safe(&self) -> bool {
        delegate!(self, d => d.multi_conn_safe())
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        delegate!(self, d => d.read(offset, len).await)
    }

    async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        delegate!(self, d => d.write(offset, data, fua).await)
    }

    async fn flush(&self) -> io::Result<()> {
        delegate!(self, d => d.flush().await)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        delegate!(self, d => d.trim(offset, len, fua).await)
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool, may_unmap: bool) -> io::Result<()> {
        delegate!(self, d => d.write_zeroes(offset, len, fua, may_unmap).await)
    }
}
