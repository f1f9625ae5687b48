//! ublk server: exports any [`BlockDevice`] as /dev/ublkbN (Linux 6.0+, ublk_drv).
//!
//! - [`sys`]: the kernel ABI as explicit byte layouts (pure, tested on any host);
//! - [`request`]: descriptor → block-device request, with FLUSH handled before any
//!   range check (pure);
//! - `ctrl`: the control commands (ADD_DEV, SET_PARAMS, START_DEV, STOP_DEV, DEL_DEV)
//!   through /dev/ublk-control, as io_uring URING_CMDs on a small ring of its own;
//! - `queue`: one thread per hardware queue owning that queue's io_uring (the kernel
//!   requires every command of a queue to come from one task). Requests run on the
//!   tokio runtime handed to [`UblkDevice::start`]; their results come back to the
//!   queue thread through a completion list and an eventfd read posted in its ring.
//!
//! Data travels through a per-tag buffer in the server's memory (the kernel copies
//! into it before a WRITE is fetched and out of it when a READ is committed).
//! See docs/ublk.md.

pub mod request;
pub mod sys;

mod ctrl;
mod queue;

use crate::BlockDevice;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to create the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UblkConfig {
    /// A fixed device number (/dev/ublkbN), or `None` to let the kernel pick.
    pub dev_id: Option<u32>,
    /// Hardware queues (each served by one thread); capped at the number of CPUs.
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Largest request in bytes (also the size of each tag's buffer).
    pub max_io_bytes: u32,
}

impl Default for UblkConfig {
    fn default() -> Self {
        UblkConfig {
            dev_id: None,
            queues: 4,
            depth: 64,
            max_io_bytes: 512 << 10,
        }
    }
}

/// Why a ublk device could not be created or removed.
#[derive(Debug)]
pub enum UblkError {
    /// /dev/ublk-control is missing: the module is not loaded or the kernel is too old.
    NotAvailable,
    /// A control command failed.
    Command { what: &'static str, err: io::Error },
    /// Other I/O trouble (opening /dev/ublkcN, mmap, io_uring setup, threads).
    Io { what: String, err: io::Error },
}

impl fmt::Display for UblkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UblkError::NotAvailable => f.write_str(sys::NOT_AVAILABLE),
            UblkError::Command { what, err } => write!(f, "ublk {what} failed: {err}"),
            UblkError::Io { what, err } => write!(f, "ublk: {what}: {err}"),
        }
    }
}

impl std::error::Error for UblkError {}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UblkError {
    let what = what.into();
    move |err| UblkError::Io { what, err }
}

/// A started ublk device. Stop it with [`stop`](Self::stop) (dropping it stops it too,
/// blocking).
pub struct UblkDevice {
    id: u32,
    ctrl: Option<ctrl::Control>,
    queues: Vec<queue::QueueHandle>,
    cdev: Option<Arc<OwnedFd>>,
}

impl UblkDevice {
    /// Creates, configures and starts the device, serving it from `device` on `rt`.
    /// Blocking (run it on a blocking thread); returns once /dev/ublkbN exists.
    pub fn start<D: BlockDevice>(
        device: Arc<D>,
        cfg: UblkConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<UblkDevice, UblkError> {
        Self::start_at(sys::CONTROL_PATH, device, cfg, rt)
    }

    /// [`start`](Self::start) with another control device path (tests).
    pub fn start_at<D: BlockDevice>(
        control_path: &str,
        device: Arc<D>,
        cfg: UblkConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<UblkDevice, UblkError> {
        let ctrl = ctrl::Control::open(control_path)?;
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let queues = cfg.queues.clamp(1, cpus.min(u16::MAX as usize) as u16);
        let depth = cfg.depth.clamp(1, sys::MAX_QUEUE_DEPTH);
        let max_io = cfg.max_io_bytes.clamp(4096, 1 << 20) / 4096 * 4096;
        let info = sys::DevInfo {
            nr_hw_queues: queues,
            queue_depth: depth,
            max_io_buf_bytes: max_io,
            dev_id: cfg.dev_id.unwrap_or(u32::MAX),
            flags: sys::F_CMD_IOCTL_ENCODE,
            ..Default::default()
        };
        let asked = info.dev_id;
        let info = match ctrl.add_dev(&info) {
            Err(UblkError::Command { err, .. }) if asked != u32::MAX && err.raw_os_error() == Some(libc::EEXIST) => {
                remove_stale(&ctrl, asked)?;
                ctrl.add_dev(&info)?
            }
            r => r?,
        };
        if info.dev_id == u32::MAX || (asked != u32::MAX && info.dev_id != asked) {
            return Err(UblkError::Command {
                what: "ADD_DEV",
                err: io::Error::other(format!(
                    "{control_path} assigned no device id: is it the ublk control device?"
                )),
            });
        }
        let mut dev = UblkDevice {
            id: info.dev_id,
            ctrl: Some(ctrl),
            queues: Vec::new(),
            cdev: None,
        };
        // From here on, dropping `dev` undoes what was done.
        let bs = device.block_sizes();
        let size = device.size();
        let logical = bs.minimum.clamp(512, 4096).next_power_of_two();
        let params = sys::Params {
            // Not ATTR_READ_ONLY even on a Secondary: the role changes while the device
            // lives, and writes are refused by the device itself (EPERM) until Primary.
            attrs: sys::ATTR_VOLATILE_CACHE | sys::ATTR_FUA,
            logical_bs_shift: logical.trailing_zeros() as u8,
            physical_bs_shift: 12.max(logical.trailing_zeros() as u8),
            io_opt_shift: 12,
            io_min_shift: logical.trailing_zeros() as u8,
            max_sectors: max_io / 512,
            dev_sectors: size / 512,
            discard: Some(sys::DiscardParams {
                granularity: 4096,
                max_discard_sectors: (1 << 30) / 512,
                max_write_zeroes_sectors: (1 << 30) / 512,
            }),
        };
        dev.ctrl().set_params(dev.id, &params)?;
        let cpath = format!("/dev/ublkc{}", dev.id);
        let cdev = Arc::new(open_char_dev(&cpath)?);
        dev.cdev = Some(cdev.clone());
        for q in 0..queues {
            let h = queue::QueueHandle::spawn(
                queue::QueueSetup {
                    dev_id: dev.id,
                    q_id: q,
                    depth,
                    max_io,
                    cdev: cdev.clone(),
                },
                device.clone(),
                rt.clone(),
            )?;
            dev.queues.push(h);
        }
        dev.ctrl().start_dev(dev.id, std::process::id())?;
        tracing::info!(
            "ublk: /dev/ublkb{} started ({} queue(s) of depth {}, {} bytes)",
            dev.id,
            queues,
            depth,
            size
        );
        Ok(dev)
    }

    fn ctrl(&self) -> &ctrl::Control {
        self.ctrl.as_ref().expect("control device open until stop")
    }

    /// The device number N of /dev/ublkbN.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// /dev/ublkbN.
    pub fn block_path(&self) -> String {
        format!("/dev/ublkb{}", self.id)
    }

    /// STOP_DEV (the kernel drains in-flight requests and removes the disk), ends the
    /// queue threads, closes /dev/ublkcN, then DEL_DEV. Blocking.
    pub fn stop(mut self) -> Result<(), UblkError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), UblkError> {
        let Some(ctrl) = self.ctrl.take() else { return Ok(()) };
        let stopped = ctrl.stop_dev(self.id);
        for q in self.queues.drain(..) {
            q.quit_and_join();
        }
        self.cdev = None;
        let deleted = ctrl.del_dev(self.id);
        tracing::info!("ublk: /dev/ublkb{} removed", self.id);
        stopped.and(deleted)
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("ublk: removing /dev/ublkb{}: {e}", self.id);
        }
    }
}

/// The fixed number we want is taken. A device left DEAD by a server that is gone (a
/// hablockd killed without cleanup) is deleted; one with a live server is not touched.
fn remove_stale(ctrl: &ctrl::Control, id: u32) -> Result<(), UblkError> {
    let mut info = ctrl.dev_info(id)?;
    let pid = info.ublksrv_pid;
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = pid > 0 && pid as u32 != std::process::id() && unsafe { libc::kill(pid, 0) } == 0;
    // The kernel stops the device of a dead server from a work item: give it a moment.
    let start = Instant::now();
    while !alive && info.state != sys::S_DEV_DEAD && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        info = ctrl.dev_info(id)?;
    }
    if info.state != sys::S_DEV_DEAD || alive {
        return Err(UblkError::Command {
            what: "ADD_DEV",
            err: io::Error::other(format!(
                "/dev/ublkb{id} already exists (state {}, server pid {pid}); pick another number or `ublk = true`",
                info.state
            )),
        });
    }
    tracing::warn!("ublk: removing /dev/ublkb{id} left by a server that is gone (pid {pid})");
    ctrl.del_dev(id)
}

/// Opens /dev/ublkcN, waiting briefly for devtmpfs to show it.
fn open_char_dev(path: &str) -> Result<OwnedFd, UblkError> {
    let c = std::ffi::CString::new(path).expect("no NUL in a device path");
    let start = Instant::now();
    loop {
        // SAFETY: c is a valid C string; the fd returned is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: fd was just opened and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::NotFound || start.elapsed() > Duration::from_secs(3) {
            return Err(io_err(format!("opening {path}"))(err));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests;
