//! ublk server: exports any [`BlockDevice`] as /dev/ublkbN (Linux 6.0+, ublk_drv).
//!
//! - [`sys`]: the kernel ABI as explicit byte layouts (pure, tested on any host);
//! - [`request`]: descriptor → block-device request, with FLUSH handled before any
//!   range check (pure);
//! - `ctrl`: the control commands (ADD_DEV, SET_PARAMS, START_DEV, STOP_DEV, DEL_DEV)
//!   through /dev/ublk-control, as io_uring URING_CMDs on a small ring of its own;
//! - `queue`: one thread per hardware queue owning that queue's io_uring (the kernel
//!   requires every command of a queue to come from one task). A device that offers a
//!   [`DirectFile`](crate::DirectFile) has its reads, writes and flushes done on that
//!   ring by that thread; other requests run on the tokio runtime handed to
//!   [`UblkDevice::start`], and their results come back to the queue thread through a
//!   completion list and an eventfd read posted in its ring.
//!
//! Devices are added with USER_RECOVERY and USER_RECOVERY_REISSUE where the kernel
//! has them: if the server dies, the kernel keeps /dev/ublkbN with its requests
//! queued, and the next [`UblkDevice::start`] with the same `owner` mark takes it over
//! (START_USER_RECOVERY, new queues, END_USER_RECOVERY) instead of creating one.
//!
//! Data travels through a per-tag buffer in the server's memory (the kernel copies
//! into it before a WRITE is fetched and out of it when a READ is committed), except
//! for a device served on its queue threads from a buffered file: that one is added
//! with UBLK_F_USER_COPY (Linux 6.5+) and the file is mapped, so the queue thread has
//! the kernel copy a request's data straight between the request and the file's page
//! cache (`pread`/`pwrite` of /dev/ublkcN), one copy like a loop device.
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
    /// Whose device this is (see [`owner_mark`]), kept by the kernel with the device:
    /// a later start with the same mark recovers a device whose server died. 0: no
    /// mark (a device left behind is only recovered when asked for by number).
    pub owner: u64,
    /// Serve reads, writes and flushes on the queue threads through the device's
    /// [`direct_file`](crate::BlockDevice::direct_file) when it has one.
    pub direct: bool,
    /// With `direct` and a buffered direct file: ask for UBLK_F_USER_COPY (Linux 6.5+)
    /// and map the file, so that a read or write is one copy between the request and
    /// the page cache instead of two (through the tag's buffer).
    pub user_copy: bool,
    /// After a recovery, how long writes that find the device read-only (the
    /// restarted server not yet Primary) wait for it to become writable before failing.
    pub hold_writes: Duration,
    /// After serving what arrived, a queue thread keeps looking for more this long
    /// before it sleeps (zero: sleep at once). Under load the next requests arrive
    /// within the window, which saves the sleep and the kernel's wake-up per batch.
    pub poll: Duration,
}

/// [`UblkConfig::poll`] unless configured (`ublk_poll_us`).
pub const DEFAULT_POLL: Duration = Duration::from_micros(200);

impl Default for UblkConfig {
    fn default() -> Self {
        UblkConfig {
            dev_id: None,
            queues: 4,
            depth: 64,
            max_io_bytes: 1 << 20,
            owner: 0,
            direct: true,
            user_copy: true,
            hold_writes: Duration::from_secs(60),
            poll: DEFAULT_POLL,
        }
    }
}

/// A stable, non-zero mark for [`UblkConfig::owner`] from names (e.g. node and
/// resource): FNV-1a over the parts, each followed by a 0 byte.
pub fn owner_mark(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.as_bytes().iter().chain(&[0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// How long a restarted server waits for the kernel to quiesce the device of the
/// server that died (it does so once that server's io_uring is torn down).
const RECOVERY_WAIT: Duration = Duration::from_secs(10);

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
    recovered: bool,
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
        // HABLOCK_UBLK_CONTROL lets a test see a kernel without ublk on one that has it.
        let path = std::env::var("HABLOCK_UBLK_CONTROL").unwrap_or_else(|_| sys::CONTROL_PATH.to_string());
        Self::start_at(&path, device, cfg, rt)
    }

    /// [`start`](Self::start) with another control device path (tests).
    pub fn start_at<D: BlockDevice>(
        control_path: &str,
        device: Arc<D>,
        cfg: UblkConfig,
        rt: tokio::runtime::Handle,
    ) -> Result<UblkDevice, UblkError> {
        let ctrl = ctrl::Control::open(control_path)?;
        let ctrl = match left_behind(&ctrl, &cfg) {
            Some(info) => match Self::recover(ctrl, info, &device, &cfg, &rt) {
                Ok(dev) => return Ok(dev),
                Err((ctrl, e)) => {
                    tracing::warn!("ublk: /dev/ublkb{} could not be recovered: {e}", info.dev_id);
                    ctrl
                }
            },
            None => ctrl,
        };
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let queues = cfg.queues.clamp(1, cpus.min(u16::MAX as usize) as u16);
        let depth = cfg.depth.clamp(1, sys::MAX_QUEUE_DEPTH);
        let max_io = cfg.max_io_bytes.clamp(4096, 1 << 20) / 4096 * 4096;
        let size = device.size();
        let mut map = if cfg.user_copy {
            map_direct_file(&device, &cfg, size)
        } else {
            None
        };
        let info = sys::DevInfo {
            nr_hw_queues: queues,
            queue_depth: depth,
            max_io_buf_bytes: max_io,
            dev_id: cfg.dev_id.unwrap_or(u32::MAX),
            flags: sys::F_CMD_IOCTL_ENCODE
                | sys::F_USER_RECOVERY
                | sys::F_USER_RECOVERY_REISSUE
                | if map.is_some() { sys::F_USER_COPY } else { 0 },
            ublksrv_flags: cfg.owner,
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
        // The kernel clears the flags it does not know.
        let recovery = sys::F_USER_RECOVERY | sys::F_USER_RECOVERY_REISSUE;
        if info.flags & recovery != recovery {
            tracing::info!(
                "ublk: this kernel has no user recovery with reissue (UBLK_F_USER_RECOVERY_REISSUE, Linux 6.0+): \
                 if hablockd dies, /dev/ublkb{} fails its I/O and a restarted hablockd deletes and recreates it",
                info.dev_id
            );
        }
        let user_copy = info.flags & sys::F_USER_COPY != 0;
        if map.is_some() && !user_copy {
            tracing::info!(
                "ublk: this kernel has no UBLK_F_USER_COPY (Linux 6.5+): /dev/ublkb{} copies data through \
                 per-request buffers",
                info.dev_id
            );
            map = None;
        }
        let mut dev = UblkDevice {
            id: info.dev_id,
            recovered: false,
            ctrl: Some(ctrl),
            queues: Vec::new(),
            cdev: None,
        };
        // From here on, dropping `dev` undoes what was done.
        let bs = device.block_sizes();
        let params = params_for(bs.minimum, size, max_io);
        dev.ctrl().set_params(dev.id, &params)?;
        let copy = (user_copy, map.clone());
        dev.spawn_queues(&device, &cfg, &rt, (queues, depth, max_io), copy, None)?;
        dev.ctrl().start_dev(dev.id, std::process::id())?;
        tracing::info!(
            "ublk: /dev/ublkb{} started ({} queue(s) of depth {}, {} bytes, requests up to {} KiB{}{})",
            dev.id,
            queues,
            depth,
            size,
            max_io >> 10,
            if dev.queues_direct(&device, &cfg) {
                ", reads and writes served on the queue threads"
            } else {
                ""
            },
            if map.is_some() {
                ", one copy through the mapped backing file (user copy)"
            } else {
                ""
            }
        );
        Ok(dev)
    }

    fn queues_direct<D: BlockDevice>(&self, device: &Arc<D>, cfg: &UblkConfig) -> bool {
        cfg.direct && device.direct_file().is_some()
    }

    /// Opens /dev/ublkcN and starts the queue threads (each fetches all its tags).
    fn spawn_queues<D: BlockDevice>(
        &mut self,
        device: &Arc<D>,
        cfg: &UblkConfig,
        rt: &tokio::runtime::Handle,
        (queues, depth, max_io): (u16, u16, u32),
        (user_copy, map): (bool, Option<Arc<queue::Mapping>>),
        hold_writes: Option<Duration>,
    ) -> Result<(), UblkError> {
        let cpath = format!("/dev/ublkc{}", self.id);
        let cdev = Arc::new(open_char_dev(&cpath)?);
        self.cdev = Some(cdev.clone());
        let direct = if cfg.direct { device.direct_file() } else { None };
        for q in 0..queues {
            let h = queue::QueueHandle::spawn(
                queue::QueueSetup {
                    dev_id: self.id,
                    q_id: q,
                    depth,
                    max_io,
                    cdev: cdev.clone(),
                    direct,
                    user_copy,
                    map: map.clone(),
                    hold_writes,
                    poll: cfg.poll,
                },
                device.clone(),
                rt.clone(),
            )?;
            self.queues.push(h);
        }
        Ok(())
    }

    /// Takes over a device whose server died (USER_RECOVERY): waits for the kernel to
    /// quiesce it, checks it still fits `device`, then START_USER_RECOVERY, new queue
    /// threads with the device's own geometry, END_USER_RECOVERY. On failure the
    /// control device comes back (with the device untouched, or removed if recovery
    /// had begun) so that a fresh one can be made.
    #[allow(clippy::result_large_err)]
    fn recover<D: BlockDevice>(
        ctrl: ctrl::Control,
        info: sys::DevInfo,
        device: &Arc<D>,
        cfg: &UblkConfig,
        rt: &tokio::runtime::Handle,
    ) -> Result<UblkDevice, (ctrl::Control, UblkError)> {
        let id = info.dev_id;
        let fail = |ctrl, msg: String| {
            Err((
                ctrl,
                UblkError::Command {
                    what: "START_USER_RECOVERY",
                    err: io::Error::other(msg),
                },
            ))
        };
        let params = match ctrl.params(id) {
            Ok(p) => p,
            Err(e) => return Err((ctrl, e)),
        };
        let size = device.size();
        let want = params_for(device.block_sizes().minimum, size, info.max_io_buf_bytes);
        if params.dev_sectors != want.dev_sectors || params.logical_bs_shift != want.logical_bs_shift {
            return fail(
                ctrl,
                format!(
                    "it has {} bytes in blocks of {}, the resource {size} in blocks of {}",
                    params.dev_sectors * 512,
                    1u32 << params.logical_bs_shift.min(31),
                    1u32 << want.logical_bs_shift
                ),
            );
        }
        // The kernel quiesces the device once the dead server's io_uring is gone, and
        // refuses START_USER_RECOVERY (EBUSY) until then.
        let start = Instant::now();
        loop {
            match ctrl.start_user_recovery(id) {
                Ok(()) => break,
                Err(UblkError::Command { err, .. })
                    if err.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < RECOVERY_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err((ctrl, e)),
            }
        }
        let mut dev = UblkDevice {
            id,
            recovered: true,
            ctrl: Some(ctrl),
            queues: Vec::new(),
            cdev: None,
        };
        let geometry = (info.nr_hw_queues, info.queue_depth, info.max_io_buf_bytes);
        // The device keeps the flags it was added with: with USER_COPY the queues must
        // move data themselves (through the mapped file if it can be had, else on the
        // runtime), whatever this start would have asked for.
        let user_copy = info.flags & sys::F_USER_COPY != 0;
        let map = if user_copy {
            map_direct_file(device, cfg, size)
        } else {
            None
        };
        let mapped = map.is_some();
        let r = dev
            .spawn_queues(device, cfg, rt, geometry, (user_copy, map), Some(cfg.hold_writes))
            .and_then(|()| dev.ctrl().end_user_recovery(id, std::process::id()));
        if let Err(e) = r {
            // Half recovered: remove it (dropping the queues first), keep the control device.
            for q in dev.queues.drain(..) {
                q.quit_and_join();
            }
            let ctrl = dev.ctrl.take().expect("control device open");
            let _ = ctrl.stop_dev(id);
            dev.cdev = None;
            let _ = ctrl.del_dev(id);
            return Err((ctrl, e));
        }
        tracing::warn!(
            "ublk: /dev/ublkb{id} recovered from a server that died (pid {}): {} queue(s) of depth {}, \
             queued requests go on{}{}",
            info.ublksrv_pid,
            info.nr_hw_queues,
            info.queue_depth,
            // A USER_COPY device without the mapping sends everything to the runtime.
            if dev.queues_direct(device, cfg) && (mapped || !user_copy) {
                "; reads and writes served on the queue threads"
            } else {
                ""
            },
            match (user_copy, mapped) {
                (true, true) => ", one copy through the mapped backing file (user copy)",
                (true, false) => "; user copy, data to and from the runtime",
                _ => "",
            }
        );
        Ok(dev)
    }

    /// True when this device was taken over from a server that died rather than created.
    pub fn recovered(&self) -> bool {
        self.recovered
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

/// The device's direct file mapped shared over `size` bytes, for USER_COPY: only a
/// buffered file (an O_DIRECT one keeps the page cache out, and its reads and writes
/// from the tag buffers are already one copy). `None` when serving on the queue
/// threads is off, there is no such file, or mmap fails (logged).
fn map_direct_file<D: BlockDevice>(device: &Arc<D>, cfg: &UblkConfig, size: u64) -> Option<Arc<queue::Mapping>> {
    let file = device.direct_file().filter(|f| cfg.direct && f.buffered)?;
    let len = usize::try_from(size).ok().filter(|&l| l > 0)?;
    match queue::Mapping::new(file.fd, len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, 0) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            tracing::info!("ublk: cannot map the backing file ({e}): requests copy through buffers");
            None
        }
    }
}

/// True when the device's server process is gone (not us, not alive).
fn server_gone(info: &sys::DevInfo) -> bool {
    let pid = info.ublksrv_pid;
    // SAFETY: signal 0 only checks whether the process exists.
    pid <= 0 || pid as u32 != std::process::id() && unsafe { libc::kill(pid, 0) } != 0
}

/// A device this server may recover: asked for by number, or carrying our owner mark;
/// added with USER_RECOVERY and REISSUE; its server gone.
fn left_behind(ctrl: &ctrl::Control, cfg: &UblkConfig) -> Option<sys::DevInfo> {
    let recovery = sys::F_USER_RECOVERY | sys::F_USER_RECOVERY_REISSUE;
    let fits = |i: &sys::DevInfo| {
        i.flags & recovery == recovery
            && i.ublksrv_flags == cfg.owner
            && i.state != sys::S_DEV_DEAD
            && i.ublksrv_pid > 0
            && server_gone(i)
    };
    match cfg.dev_id {
        Some(id) => ctrl.dev_info(id).ok().filter(fits),
        None if cfg.owner != 0 => ublk_ids()
            .into_iter()
            .find_map(|id| ctrl.dev_info(id).ok().filter(fits)),
        None => None,
    }
}

/// The numbers of the ublk devices that exist (from /dev/ublkcN).
fn ublk_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("ublkc")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// ublk parameters for a device of `size` bytes whose smallest block is `minimum`.
fn params_for(minimum: u32, size: u64, max_io: u32) -> sys::Params {
    let logical = minimum.clamp(512, 4096).next_power_of_two();
    sys::Params {
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
    }
}

/// The fixed number we want is taken. A device left by a server that is gone (a
/// hablockd killed without cleanup) and not recovered is deleted: DEAD at once, a
/// QUIESCED one (kept for recovery) after STOP_DEV, which fails its queued I/O. One
/// with a live server is not touched.
fn remove_stale(ctrl: &ctrl::Control, id: u32) -> Result<(), UblkError> {
    let mut info = ctrl.dev_info(id)?;
    let pid = info.ublksrv_pid;
    let alive = !server_gone(&info);
    let settled = |i: &sys::DevInfo| i.state == sys::S_DEV_DEAD || i.state == sys::S_DEV_QUIESCED;
    // The kernel stops (or quiesces) the device of a dead server from a work item:
    // give it a moment.
    let start = Instant::now();
    while !alive && !settled(&info) && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        info = ctrl.dev_info(id)?;
    }
    if info.state == sys::S_DEV_QUIESCED && !alive {
        tracing::warn!("ublk: stopping /dev/ublkb{id} left by a server that is gone (pid {pid}); its queued I/O fails");
        ctrl.stop_dev(id)?;
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
