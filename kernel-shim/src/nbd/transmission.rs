//! Transmission phase, pure part: turning a request header into a validated command
//! (or the error the protocol wants), and mapping device errors to NBD error values.

use std::io;

use super::handshake::TxParams;
use super::proto::{errno, *};

/// A request that passed every check and can go to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        len: u32,
    },
    /// `len` payload bytes follow the header on the wire.
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
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
    /// `NBD_CMD_DISC`: finish in-flight requests, then close; no reply.
    Disconnect,
}

/// A request refused before reaching the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub error: u32,
    pub message: &'static str,
    /// Payload bytes that follow the header and must be read and dropped so the stream
    /// stays in step (a refused WRITE still carries its data).
    pub discard: u32,
}

fn reject(error: u32, message: &'static str, discard: u32) -> Rejection {
    Rejection {
        error,
        message,
        discard,
    }
}

/// Checks `req` against the export. `read_only_now` is the device's current state (a
/// resource may be demoted while a client is connected).
pub fn check(req: &Request, p: &TxParams, read_only_now: bool) -> Result<Command, Rejection> {
    let read_only = p.read_only || read_only_now;
    // Payload bytes on the wire: only WRITE carries one in the compact header format.
    let payload = if req.command == CMD_WRITE { req.len } else { 0 };
    let end = req.offset.checked_add(u64::from(req.len));
    let in_range = matches!(end, Some(e) if e <= p.size);

    let allowed = |mask: u16| -> Result<(), Rejection> {
        if req.flags & !mask != 0 {
            Err(reject(
                errno::EINVAL,
                "command flag not valid for this command",
                payload,
            ))
        } else {
            Ok(())
        }
    };

    match req.command {
        CMD_READ => {
            // FUA means nothing for a read; tolerate it as several servers do.
            let df = if p.structured { CMD_FLAG_DF } else { 0 };
            allowed(CMD_FLAG_FUA | df)?;
            if req.len == 0 {
                return Err(reject(errno::EINVAL, "zero-length read", 0));
            }
            if req.len > p.max_payload {
                let e = if req.flags & CMD_FLAG_DF != 0 {
                    errno::EOVERFLOW
                } else {
                    errno::EINVAL
                };
                return Err(reject(e, "read larger than the maximum block size", 0));
            }
            if !in_range {
                return Err(reject(errno::EINVAL, "read beyond the end of the export", 0));
            }
            Ok(Command::Read {
                offset: req.offset,
                len: req.len,
            })
        }
        CMD_WRITE => {
            allowed(CMD_FLAG_FUA)?;
            if req.len > p.max_payload {
                return Err(reject(
                    errno::EINVAL,
                    "write larger than the maximum block size",
                    payload,
                ));
            }
            if read_only {
                return Err(reject(errno::EPERM, "export is read-only", payload));
            }
            if req.len == 0 {
                return Err(reject(errno::EINVAL, "zero-length write", 0));
            }
            if !in_range {
                return Err(reject(errno::ENOSPC, "write beyond the end of the export", payload));
            }
            Ok(Command::Write {
                offset: req.offset,
                len: req.len,
                fua: req.flags & CMD_FLAG_FUA != 0,
            })
        }
        CMD_DISC => Ok(Command::Disconnect),
        CMD_FLUSH => {
            // Offset and length are reserved (zero); a nonzero value is harmless.
            allowed(CMD_FLAG_FUA)?;
            Ok(Command::Flush)
        }
        CMD_TRIM | CMD_WRITE_ZEROES => {
            let mask = if req.command == CMD_TRIM {
                CMD_FLAG_FUA
            } else {
                CMD_FLAG_FUA | CMD_FLAG_NO_HOLE
            };
            allowed(mask)?;
            if read_only {
                return Err(reject(errno::EPERM, "export is read-only", 0));
            }
            if req.len == 0 {
                return Err(reject(errno::EINVAL, "zero-length request", 0));
            }
            // No payload travels, so no size cap beyond the export's end (the spec asks
            // servers not to refuse large trims/zeroes by length alone).
            if !in_range {
                return Err(reject(errno::ENOSPC, "request beyond the end of the export", 0));
            }
            let fua = req.flags & CMD_FLAG_FUA != 0;
            if req.command == CMD_TRIM {
                Ok(Command::Trim {
                    offset: req.offset,
                    len: req.len,
                    fua,
                })
            } else {
                Ok(Command::WriteZeroes {
                    offset: req.offset,
                    len: req.len,
                    fua,
                    may_unmap: req.flags & CMD_FLAG_NO_HOLE == 0,
                })
            }
        }
        _ => Err(reject(errno::EINVAL, "command not supported", 0)),
    }
}

/// Maps a device error to the NBD error value sent to the client.
pub fn errno_of(e: &io::Error) -> u32 {
    if let Some(raw) = e.raw_os_error() {
        return match raw {
            libc::EPERM | libc::EACCES | libc::EROFS => errno::EPERM,
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => errno::ENOSPC,
            libc::EINVAL => errno::EINVAL,
            libc::ENOMEM => errno::ENOMEM,
            libc::EOVERFLOW => errno::EOVERFLOW,
            libc::EOPNOTSUPP => errno::ENOTSUP,
            libc::ESHUTDOWN => errno::ESHUTDOWN,
            _ => errno::EIO,
        };
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => errno::EPERM,
        io::ErrorKind::InvalidInput => errno::EINVAL,
        io::ErrorKind::OutOfMemory => errno::ENOMEM,
        io::ErrorKind::Unsupported => errno::ENOTSUP,
        _ => errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 20;

    fn params(structured: bool, read_only: bool) -> TxParams {
        TxParams {
            size: SIZE,
            flags: 0,
            read_only,
            structured,
            max_payload: 64 * 1024,
        }
    }

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            len,
        }
    }

    fn err(r: Result<Command, Rejection>) -> (u32, u32) {
        let e = r.expect_err("must be rejected");
        (e.error, e.discard)
    }

    #[test]
    fn good_requests() {
        let p = params(false, false);
        assert_eq!(
            check(&req(CMD_READ, 0, 0, 4096), &p, false),
            Ok(Command::Read { offset: 0, len: 4096 })
        );
        assert_eq!(
            check(&req(CMD_WRITE, CMD_FLAG_FUA, SIZE - 512, 512), &p, false),
            Ok(Command::Write {
                offset: SIZE - 512,
                len: 512,
                fua: true
            })
        );
        assert_eq!(check(&req(CMD_FLUSH, 0, 0, 0), &p, false), Ok(Command::Flush));
        assert_eq!(check(&req(CMD_DISC, 0, 7, 7), &p, false), Ok(Command::Disconnect));
        // Trim and zeroes may exceed the payload cap.
        assert_eq!(
            check(&req(CMD_TRIM, 0, 0, SIZE as u32), &p, false),
            Ok(Command::Trim {
                offset: 0,
                len: SIZE as u32,
                fua: false
            })
        );
        assert_eq!(
            check(&req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 4096), &p, false),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 4096,
                fua: false,
                may_unmap: false
            })
        );
        assert_eq!(
            check(&req(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 0, 4096), &p, false),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 4096,
                fua: true,
                may_unmap: true
            })
        );
    }

    #[test]
    fn bounds() {
        let p = params(false, false);
        assert_eq!(err(check(&req(CMD_READ, 0, SIZE, 1), &p, false)), (errno::EINVAL, 0));
        assert_eq!(
            err(check(&req(CMD_READ, 0, u64::MAX, 4096), &p, false)),
            (errno::EINVAL, 0)
        );
        assert_eq!(
            err(check(&req(CMD_WRITE, 0, SIZE - 1, 2), &p, false)),
            (errno::ENOSPC, 2)
        );
        assert_eq!(
            err(check(&req(CMD_WRITE, 0, u64::MAX - 1, 4), &p, false)),
            (errno::ENOSPC, 4)
        );
        assert_eq!(err(check(&req(CMD_TRIM, 0, SIZE, 1), &p, false)), (errno::ENOSPC, 0));
        assert_eq!(
            err(check(&req(CMD_WRITE_ZEROES, 0, u64::MAX, 1), &p, false)),
            (errno::ENOSPC, 0)
        );
        // Zero lengths.
        for c in [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(err(check(&req(c, 0, 0, 0), &p, false)), (errno::EINVAL, 0));
        }
    }

    #[test]
    fn oversize_payloads() {
        let p = params(false, false);
        assert_eq!(
            err(check(&req(CMD_READ, 0, 0, 64 * 1024 + 1), &p, false)),
            (errno::EINVAL, 0)
        );
        assert_eq!(
            err(check(&req(CMD_WRITE, 0, 0, u32::MAX), &p, false)),
            (errno::EINVAL, u32::MAX)
        );
        let ps = params(true, false);
        assert_eq!(
            err(check(&req(CMD_READ, CMD_FLAG_DF, 0, 64 * 1024 + 1), &ps, false)),
            (errno::EOVERFLOW, 0)
        );
    }

    #[test]
    fn read_only() {
        let p = params(false, true);
        assert!(check(&req(CMD_READ, 0, 0, 512), &p, false).is_ok());
        assert!(check(&req(CMD_FLUSH, 0, 0, 0), &p, false).is_ok());
        assert_eq!(err(check(&req(CMD_WRITE, 0, 0, 512), &p, false)), (errno::EPERM, 512));
        assert_eq!(err(check(&req(CMD_TRIM, 0, 0, 512), &p, false)), (errno::EPERM, 0));
        assert_eq!(
            err(check(&req(CMD_WRITE_ZEROES, 0, 0, 512), &p, false)),
            (errno::EPERM, 0)
        );
        // Demoted after the client connected.
        let p = params(false, false);
        assert_eq!(err(check(&req(CMD_WRITE, 0, 0, 512), &p, true)), (errno::EPERM, 512));
    }

    #[test]
    fn flags_and_commands() {
        let p = params(false, false);
        // DF only with structured replies.
        assert_eq!(
            err(check(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &p, false)),
            (errno::EINVAL, 0)
        );
        assert!(check(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &params(true, false), false).is_ok());
        // NO_HOLE is for WRITE_ZEROES only; a refused write still drains its payload.
        assert_eq!(
            err(check(&req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 512), &p, false)),
            (errno::EINVAL, 512)
        );
        assert_eq!(
            err(check(&req(CMD_TRIM, CMD_FLAG_NO_HOLE, 0, 512), &p, false)),
            (errno::EINVAL, 0)
        );
        assert_eq!(
            err(check(&req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512), &p, false)),
            (errno::EINVAL, 0)
        );
        for c in [CMD_CACHE, CMD_BLOCK_STATUS, CMD_RESIZE, 99, u16::MAX] {
            assert_eq!(err(check(&req(c, 0, 0, 512), &p, false)), (errno::EINVAL, 0));
        }
    }

    #[test]
    fn io_errors_map_to_protocol_values() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(errno_of(&os(libc::ENOSPC)), errno::ENOSPC);
        assert_eq!(errno_of(&os(libc::EDQUOT)), errno::ENOSPC);
        assert_eq!(errno_of(&os(libc::EFBIG)), errno::ENOSPC);
        assert_eq!(errno_of(&os(libc::EROFS)), errno::EPERM);
        assert_eq!(errno_of(&os(libc::EPERM)), errno::EPERM);
        assert_eq!(errno_of(&os(libc::EINVAL)), errno::EINVAL);
        assert_eq!(errno_of(&os(libc::ENOMEM)), errno::ENOMEM);
        assert_eq!(errno_of(&os(libc::EOVERFLOW)), errno::EOVERFLOW);
        assert_eq!(errno_of(&os(libc::EBADF)), errno::EIO);
        assert_eq!(
            errno_of(&io::Error::new(io::ErrorKind::PermissionDenied, "x")),
            errno::EPERM
        );
        assert_eq!(
            errno_of(&io::Error::new(io::ErrorKind::InvalidInput, "x")),
            errno::EINVAL
        );
        assert_eq!(errno_of(&io::Error::other("x")), errno::EIO);
    }
}
