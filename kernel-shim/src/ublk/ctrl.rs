//! Control commands through /dev/ublk-control: io_uring URING_CMDs with 128-byte SQEs.

use super::sys::{self, CtrlCmd, DevInfo, Params};
use super::UblkError;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

pub(super) struct Control {
    fd: OwnedFd,
    ring: Mutex<IoUring<squeue::Entry128, cqueue::Entry>>,
}

impl Control {
    pub fn open(path: &str) -> Result<Control, UblkError> {
        let c = std::ffi::CString::new(path).map_err(|_| UblkError::NotAvailable)?;
        // SAFETY: c is a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return Err(if err.kind() == io::ErrorKind::NotFound {
                UblkError::NotAvailable
            } else {
                UblkError::Io {
                    what: format!("opening {path}"),
                    err,
                }
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(4)
            .map_err(|err| UblkError::Io {
                what: "creating the control io_uring".into(),
                err,
            })?;
        Ok(Control {
            fd,
            ring: Mutex::new(ring),
        })
    }

    /// Runs one command and waits for its result (>= 0, or the kernel's errno).
    fn run(&self, what: &'static str, nr: u8, cmd: CtrlCmd) -> Result<i32, UblkError> {
        let fail = |err| UblkError::Command { what, err };
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd.as_raw_fd()), sys::ctrl_op(nr))
            .cmd(cmd.encode())
            .build()
            .user_data(nr as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the buffer `cmd.addr` points to outlives this call, which waits for
        // the completion before returning.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| fail(io::Error::other("control ring full")))?;
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(fail(e)),
            }
            if let Some(cqe) = ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(fail(io::Error::from_raw_os_error(-res)))
                } else {
                    Ok(res)
                };
            }
        }
    }

    /// ADD_DEV: returns the device info as the kernel completed it (with the id it chose).
    pub fn add_dev(&self, info: &DevInfo) -> Result<DevInfo, UblkError> {
        let mut buf = info.encode();
        self.run(
            "ADD_DEV",
            sys::CMD_ADD_DEV,
            CtrlCmd {
                dev_id: info.dev_id,
                queue_id: u16::MAX,
                len: buf.len() as u16,
                addr: buf.as_mut_ptr() as u64,
                data: 0,
            },
        )?;
        Ok(DevInfo::decode(&buf))
    }

    /// GET_DEV_INFO of an existing device.
    pub fn dev_info(&self, dev_id: u32) -> Result<DevInfo, UblkError> {
        let mut buf = [0u8; sys::DEV_INFO_LEN];
        self.run(
            "GET_DEV_INFO",
            sys::CMD_GET_DEV_INFO,
            CtrlCmd {
                dev_id,
                queue_id: u16::MAX,
                len: buf.len() as u16,
                addr: buf.as_mut_ptr() as u64,
                data: 0,
            },
        )?;
        Ok(DevInfo::decode(&buf))
    }

    /// GET_PARAMS: the parameters the device was started with.
    pub fn params(&self, dev_id: u32) -> Result<Params, UblkError> {
        let mut buf = [0u8; sys::PARAMS_LEN];
        buf[0..4].copy_from_slice(&(sys::PARAMS_LEN as u32).to_ne_bytes());
        self.run(
            "GET_PARAMS",
            sys::CMD_GET_PARAMS,
            CtrlCmd {
                dev_id,
                queue_id: u16::MAX,
                len: buf.len() as u16,
                addr: buf.as_mut_ptr() as u64,
                data: 0,
            },
        )?;
        Ok(Params::decode(&buf))
    }

    pub fn set_params(&self, dev_id: u32, params: &Params) -> Result<(), UblkError> {
        let buf = params.encode();
        self.run(
            "SET_PARAMS",
            sys::CMD_SET_PARAMS,
            CtrlCmd {
                dev_id,
                queue_id: u16::MAX,
                len: buf.len() as u16,
                addr: buf.as_ptr() as u64,
                data: 0,
            },
        )
        .map(drop)
    }

    /// START_DEV: the kernel waits until every queue has fetched all its tags, then
    /// adds the disk (reading its partition table through the queues).
    pub fn start_dev(&self, dev_id: u32, pid: u32) -> Result<(), UblkError> {
        self.simple("START_DEV", sys::CMD_START_DEV, dev_id, pid as u64)
    }

    pub fn stop_dev(&self, dev_id: u32) -> Result<(), UblkError> {
        self.simple("STOP_DEV", sys::CMD_STOP_DEV, dev_id, 0)
    }

    /// START_USER_RECOVERY: EBUSY until the dead server's /dev/ublkcN is closed and the
    /// device QUIESCED.
    pub fn start_user_recovery(&self, dev_id: u32) -> Result<(), UblkError> {
        self.simple("START_USER_RECOVERY", sys::CMD_START_USER_RECOVERY, dev_id, 0)
    }

    /// END_USER_RECOVERY: waits until every queue has fetched all its tags, then lets
    /// the queued requests through to the new server (`pid`).
    pub fn end_user_recovery(&self, dev_id: u32, pid: u32) -> Result<(), UblkError> {
        self.simple("END_USER_RECOVERY", sys::CMD_END_USER_RECOVERY, dev_id, pid as u64)
    }

    /// DEL_DEV: waits until /dev/ublkcN is closed by everyone.
    pub fn del_dev(&self, dev_id: u32) -> Result<(), UblkError> {
        self.simple("DEL_DEV", sys::CMD_DEL_DEV, dev_id, 0)
    }

    fn simple(&self, what: &'static str, nr: u8, dev_id: u32, data: u64) -> Result<(), UblkError> {
        self.run(
            what,
            nr,
            CtrlCmd {
                dev_id,
                queue_id: u16::MAX,
                len: 0,
                addr: 0,
                data,
            },
        )
        .map(drop)
    }
}
