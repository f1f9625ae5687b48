//! What a ublk request descriptor asks of the block device (pure).

use super::sys::{self, IoDesc};

/// One request, validated against the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        may_unmap: bool,
    },
}

impl Request {
    /// What a successful request reports back to the kernel: the bytes moved for
    /// READ/WRITE (the kernel completes that much of the request), 0 otherwise.
    pub fn ok_result(&self) -> i32 {
        match *self {
            Request::Read { len, .. } | Request::Write { len, .. } => len as i32,
            _ => 0,
        }
    }
}

/// Turns a descriptor into a [`Request`], or the negative errno to complete it with.
///
/// FLUSH is recognised before any range check: the kernel sends it with
/// `start_sector == u64::MAX` and no sectors, and failing it breaks every fsync.
pub fn decode(desc: &IoDesc, dev_size: u64, max_io: u32) -> Result<Request, i32> {
    let op = desc.op();
    if op == sys::OP_FLUSH {
        return Ok(Request::Flush);
    }
    let fua = desc.flags() & sys::IO_F_FUA != 0;
    let offset = desc.start_sector.checked_mul(512).ok_or(-libc::EINVAL)?;
    let len64 = desc.nr_sectors as u64 * 512;
    if offset.checked_add(len64).is_none_or(|end| end > dev_size) {
        return Err(-libc::EINVAL);
    }
    let len = u32::try_from(len64).map_err(|_| -libc::EINVAL)?;
    match op {
        sys::OP_READ | sys::OP_WRITE if len > max_io => Err(-libc::EINVAL),
        sys::OP_READ => Ok(Request::Read { offset, len }),
        sys::OP_WRITE => Ok(Request::Write { offset, len, fua }),
        sys::OP_DISCARD => Ok(Request::Discard { offset, len, fua }),
        sys::OP_WRITE_ZEROES => Ok(Request::WriteZeroes {
            offset,
            len,
            fua,
            may_unmap: desc.flags() & sys::IO_F_NOUNMAP == 0,
        }),
        _ => Err(-libc::EOPNOTSUPP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ublk::sys::*;

    const SIZE: u64 = 64 << 20;
    const MAX: u32 = 512 << 10;

    fn desc(op: u8, flags: u32, start: u64, sectors: u32) -> IoDesc {
        IoDesc {
            op_flags: op as u32 | flags,
            nr_sectors: sectors,
            start_sector: start,
            addr: 0,
        }
    }

    #[test]
    fn flush_with_start_sector_max_is_a_flush() {
        assert_eq!(decode(&desc(OP_FLUSH, 0, u64::MAX, 0), SIZE, MAX), Ok(Request::Flush));
        assert_eq!(decode(&desc(OP_FLUSH, IO_F_FUA, 0, 0), SIZE, MAX), Ok(Request::Flush));
    }

    #[test]
    fn read_write_with_fua() {
        assert_eq!(
            decode(&desc(OP_READ, 0, 8, 16), SIZE, MAX),
            Ok(Request::Read {
                offset: 4096,
                len: 8192
            })
        );
        assert_eq!(
            decode(&desc(OP_WRITE, IO_F_FUA, 0, 8), SIZE, MAX),
            Ok(Request::Write {
                offset: 0,
                len: 4096,
                fua: true
            })
        );
        assert_eq!(
            decode(&desc(OP_WRITE, 0, 0, 8), SIZE, MAX),
            Ok(Request::Write {
                offset: 0,
                len: 4096,
                fua: false
            })
        );
        assert_eq!(Request::Read { offset: 0, len: 8192 }.ok_result(), 8192);
        assert_eq!(Request::Flush.ok_result(), 0);
    }

    #[test]
    fn ranges_are_checked() {
        let last = SIZE / 512 - 8;
        assert!(decode(&desc(OP_READ, 0, last, 8), SIZE, MAX).is_ok());
        assert_eq!(decode(&desc(OP_READ, 0, last, 16), SIZE, MAX), Err(-libc::EINVAL));
        assert_eq!(decode(&desc(OP_WRITE, 0, u64::MAX, 8), SIZE, MAX), Err(-libc::EINVAL));
        assert_eq!(
            decode(&desc(OP_WRITE, 0, u64::MAX / 512, 8), SIZE, MAX),
            Err(-libc::EINVAL)
        );
        // Larger than the per-tag buffer.
        assert_eq!(decode(&desc(OP_READ, 0, 0, 2048), SIZE, MAX), Err(-libc::EINVAL));
        // Discards may be larger than the data buffer: no data travels.
        assert_eq!(
            decode(&desc(OP_DISCARD, 0, 0, 4096), SIZE, MAX),
            Ok(Request::Discard {
                offset: 0,
                len: 2 << 20,
                fua: false
            })
        );
    }

    #[test]
    fn write_zeroes_unmap_and_unknown_ops() {
        assert_eq!(
            decode(&desc(OP_WRITE_ZEROES, 0, 8, 8), SIZE, MAX),
            Ok(Request::WriteZeroes {
                offset: 4096,
                len: 4096,
                fua: false,
                may_unmap: true
            })
        );
        assert_eq!(
            decode(&desc(OP_WRITE_ZEROES, IO_F_NOUNMAP | IO_F_FUA, 8, 8), SIZE, MAX),
            Ok(Request::WriteZeroes {
                offset: 4096,
                len: 4096,
                fua: true,
                may_unmap: false
            })
        );
        assert_eq!(decode(&desc(OP_WRITE_SAME, 0, 0, 8), SIZE, MAX), Err(-libc::EOPNOTSUPP));
        assert_eq!(decode(&desc(13, 0, 0, 8), SIZE, MAX), Err(-libc::EOPNOTSUPP));
    }
}
