//! One ublk hardware queue: a thread that owns the queue's io_uring.
//!
//! The thread posts FETCH_REQ for every tag, then loops: a fetch completing means the
//! tag's descriptor holds a request. Two ways to serve it:
//!
//! - direct (the device offers a [`DirectFile`]: no replication): READ, WRITE and
//!   FLUSH become a read, write or fdatasync of that file on this same ring, into and
//!   out of the tag's buffer; its completion is committed right away. No other thread
//!   takes part and no copy is made. A buffered file's reads and writes are first
//!   tried on the spot with RWF_NOWAIT (page cache hits complete in that one call;
//!   io_uring would hand a buffered request on a file system without non-blocking
//!   support, like tmpfs, to a kernel worker thread); what would block goes to the
//!   ring. Where the file system refuses RWF_NOWAIT (EOPNOTSUPP: tmpfs, network file
//!   systems) the call is made blocking instead.
//! - otherwise (replicated devices, DISCARD, WRITE_ZEROES, unaligned requests): the
//!   request is handed to the tokio runtime; when the block device answers, the result
//!   is put on the completion list and the eventfd is written, which completes the
//!   eventfd read posted in the ring and wakes the thread.
//!
//! Either way the result goes back with COMMIT_AND_FETCH_REQ (which also fetches the
//! tag's next request). Every command and file operation made ready in one turn of
//! the loop is submitted with a single io_uring_enter.
//!
//! Data: without USER_COPY the kernel copies a WRITE's data into the tag's buffer
//! before the fetch completes and a READ's out of it at the commit. With USER_COPY
//! (`QueueSetup::user_copy`) the commands carry no buffer: the thread moves the data
//! itself with `pread`/`pwrite` on /dev/ublkcN at the tag's offset. With the backing
//! file mapped (`QueueSetup::map`) that is the only copy a request costs: the kernel
//! copies the request's pages straight into (WRITE) or out of (READ) the file's page
//! cache, as a loop device does.

use super::request::{self, Request};
use super::sys::{self, IoCmd, IoDesc};
use super::UblkError;
use crate::{BlockDevice, DirectFile, DirectOp, IoBuf};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// user_data of the eventfd read (tags are u16).
const WAKE: u64 = u64::MAX;
/// user_data bit of a direct file operation (the tag in the low 16 bits); ublk
/// commands carry the bare tag.
const FILE_IO: u64 = 1 << 32;
/// How often writes held back (see `QueueSetup::hold_writes`) look at the role again.
const HOLD_POLL: Duration = Duration::from_millis(100);

pub(super) struct QueueSetup {
    pub dev_id: u32,
    pub q_id: u16,
    pub depth: u16,
    pub max_io: u32,
    pub cdev: Arc<OwnedFd>,
    /// Serve READ/WRITE/FLUSH on this thread through this file (see the module doc).
    pub direct: Option<DirectFile>,
    /// The device has UBLK_F_USER_COPY: data moves by pread/pwrite on `cdev`.
    pub user_copy: bool,
    /// With `user_copy` and `direct`: the direct file mapped shared over the device's
    /// whole size, so reads and writes are one copy between the request and the page
    /// cache.
    pub map: Option<Arc<Mapping>>,
    /// After a recovery: writes that arrive while the device is read-only (the
    /// restarted daemon's resource not yet Primary) wait up to this long for it to
    /// become writable instead of failing at once.
    pub hold_writes: Option<Duration>,
    /// How long to look for more work before sleeping (see `UblkConfig::poll`).
    pub poll: Duration,
}

/// A request the runtime answered: tag, result, and (READ on a USER_COPY device) the
/// data for the queue thread to write into the request before committing.
type Done = (u16, i32, Option<IoBuf>);

struct Shared {
    done: Mutex<Vec<Done>>,
    efd: OwnedFd,
    quit: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(self.efd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    fn complete(&self, tag: u16, res: i32, data: Option<IoBuf>) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tag, res, data));
        self.wake();
    }
}

/// Completes the request with -EIO if its future is dropped without answering
/// (a panic in the device, or the runtime shutting down).
struct Answer {
    shared: Arc<Shared>,
    tag: u16,
    sent: bool,
}

impl Answer {
    fn send(mut self, res: i32, data: Option<IoBuf>) {
        self.sent = true;
        self.shared.complete(self.tag, res, data);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            self.shared.complete(self.tag, -libc::EIO, None);
        }
    }
}

/// An mmap'ed region, unmapped on drop.
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who writes which part is arranged by the tag
// protocol (one request per tag at a time).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(super) fn new(fd: i32, len: usize, prot: i32, flags: i32, offset: u64) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping; the kernel validates fd/offset.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset as libc::off_t) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p as *mut u8, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

pub(super) struct QueueHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl QueueHandle {
    /// Starts the queue thread and returns once it has fetched every tag.
    pub fn spawn<D: BlockDevice>(
        setup: QueueSetup,
        device: Arc<D>,
        rt: tokio::runtime::Handle,
    ) -> Result<QueueHandle, UblkError> {
        // SAFETY: plain syscall; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(UblkError::Io {
                what: "eventfd".into(),
                err: io::Error::last_os_error(),
            });
        }
        let shared = Arc::new(Shared {
            done: Mutex::new(Vec::new()),
            // SAFETY: just created, owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(efd) },
            quit: AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let name = format!("ublk{}q{}", setup.dev_id, setup.q_id);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || run(setup, s, device, rt, tx))
            .map_err(|err| UblkError::Io {
                what: format!("starting thread {name}"),
                err,
            })?;
        let mut h = QueueHandle {
            shared,
            thread: Some(thread),
        };
        match rx.recv() {
            Ok(Ok(())) => Ok(h),
            Ok(Err(e)) => {
                h.quit_and_join_mut();
                Err(e)
            }
            Err(_) => {
                h.quit_and_join_mut();
                Err(UblkError::Io {
                    what: format!("thread {name}"),
                    err: io::Error::other("ended during setup"),
                })
            }
        }
    }

    /// Tells the thread to stop (after STOP_DEV, nothing more will come) and waits.
    /// Dropping its ring cancels the fetches still posted.
    pub fn quit_and_join(mut self) {
        self.quit_and_join_mut();
    }

    fn quit_and_join_mut(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.quit_and_join_mut();
    }
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

struct Queue {
    ring: Ring,
    descs: Mapping,
    bufs: Arc<Mapping>,
    setup: QueueSetup,
}

impl Queue {
    fn buf_addr(&self, tag: u16) -> u64 {
        self.bufs.ptr as u64 + tag as u64 * self.setup.max_io as u64
    }

    fn desc(&self, tag: u16) -> IoDesc {
        // SAFETY: tag < depth, and the mapping holds depth descriptors; the kernel wrote
        // this one before completing the tag's fetch.
        let raw =
            unsafe { std::ptr::read_volatile(self.descs.ptr.add(tag as usize * sys::IO_DESC_LEN) as *const [u8; 24]) };
        IoDesc::decode(&raw)
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry names (tag buffers, the eventfd word) lives
            // as long as the ring.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn io_cmd(&mut self, nr: u8, tag: u16, result: i32) -> io::Result<()> {
        let cmd = IoCmd {
            q_id: self.setup.q_id,
            tag,
            result,
            // USER_COPY: the kernel refuses a buffer address.
            addr: if self.setup.user_copy { 0 } else { self.buf_addr(tag) },
        };
        let sqe = opcode::UringCmd80::new(types::Fd(self.setup.cdev.as_raw_fd()), sys::io_op(nr))
            .cmd(cmd.encode())
            .build()
            .user_data(tag as u64);
        self.push(sqe)
    }
}

fn setup_queue(setup: QueueSetup) -> io::Result<Queue> {
    let fd = setup.cdev.as_raw_fd();
    let descs = Mapping::new(
        fd,
        sys::desc_mmap_len(setup.depth),
        libc::PROT_READ,
        libc::MAP_SHARED | libc::MAP_POPULATE,
        sys::desc_mmap_offset(setup.q_id),
    )?;
    let bufs = Arc::new(Mapping::new(
        -1,
        setup.depth as usize * setup.max_io as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        0,
    )?);
    let entries = (setup.depth as u32 + 2).next_power_of_two();
    // Only this thread submits (SINGLE_ISSUER), and completions it has not asked for yet
    // need not interrupt it (COOP_TASKRUN): the kernel's ublk task work then runs when
    // the thread next enters the ring instead of kicking it with an interrupt, which
    // under emulation costs more than the request. Kernels before 6.0 refuse the
    // flags: then without them.
    let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_cqsize(entries * 2)
        .setup_coop_taskrun()
        .setup_single_issuer()
        .build(entries)
        .or_else(|_| {
            IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .setup_cqsize(entries * 2)
                .build(entries)
        })?;
    let mut q = Queue {
        ring,
        descs,
        bufs,
        setup,
    };
    for tag in 0..q.setup.depth {
        q.io_cmd(sys::IO_FETCH_REQ, tag, -1)?;
    }
    q.ring.submit()?;
    Ok(q)
}

fn errno_of(e: &io::Error) -> i32 {
    -(e.raw_os_error().filter(|&c| c > 0).unwrap_or(libc::EIO))
}

/// A direct file operation in flight for a tag.
#[derive(Debug, Clone, Copy)]
struct FileOp {
    kind: DirectOp,
    offset: u64,
    len: u32,
    /// Bytes already done (a short read or write is continued).
    done: u32,
    fua: bool,
    /// A FUA write whose data is already in the mapped file (USER_COPY): what is left
    /// is making the range durable (an fdatasync of just that range).
    copied: bool,
}

impl Queue {
    fn file_op(&mut self, file: DirectFile, tag: u16, op: &FileOp) -> io::Result<()> {
        let fd = types::Fd(file.fd);
        let addr = self.buf_addr(tag) + op.done as u64;
        let rest = op.len - op.done;
        let pos = op.offset + op.done as u64;
        let sqe = match op.kind {
            DirectOp::Write if op.copied => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .offset(op.offset)
                .len(op.len)
                .build(),
            DirectOp::Read => opcode::Read::new(fd, addr as *mut u8, rest).offset(pos).build(),
            DirectOp::Write => opcode::Write::new(fd, addr as *const u8, rest)
                .offset(pos)
                .rw_flags(if op.fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            DirectOp::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
        };
        self.push(sqe.user_data(FILE_IO | tag as u64).into())
    }
}

const FLUSH: FileOp = FileOp {
    kind: DirectOp::Flush,
    offset: 0,
    len: 0,
    done: 0,
    fua: false,
    copied: false,
};

/// Which way [`user_copy`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyDir {
    /// A WRITE's data, out of the request into memory (`pread` on /dev/ublkcN).
    OutOfRequest,
    /// A READ's data, from memory into the request (`pwrite` on /dev/ublkcN).
    IntoRequest,
}

/// Moves `len` bytes between memory at `addr` and a request's data at `pos` of the
/// USER_COPY char device `fd`, continuing short transfers: `len`, or -errno (-EIO when
/// nothing moves, e.g. a mapping past the end of a file that shrank: the kernel's copy
/// faults, which is an error for this call and never a signal for the process).
fn user_copy(fd: i32, dir: CopyDir, addr: u64, len: u32, pos: u64) -> i32 {
    let mut done = 0u32;
    while done < len {
        let p = (addr + done as u64) as *mut libc::c_void;
        let n = (len - done) as usize;
        let at = (pos + done as u64) as libc::off_t;
        // SAFETY: `addr..addr+len` is memory the caller owns for this request (a
        // buffer, or the mapped file's range for it); the kernel checks the rest.
        let r = unsafe {
            match dir {
                CopyDir::OutOfRequest => libc::pread(fd, p, n, at),
                CopyDir::IntoRequest => libc::pwrite(fd, p, n, at),
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return errno_of(&e);
        }
        if r == 0 {
            return -libc::EIO;
        }
        done += (r as u32).min(len - done);
    }
    len as i32
}

/// A buffered read or write tried on the spot: `Some(result)` (bytes, or -errno) when
/// it ran, `None` when it would block (then it goes to the ring). `blocking` is set
/// (and used from then on) when the file system refuses RWF_NOWAIT.
fn try_now(file: &DirectFile, op: &FileOp, addr: u64, blocking: &mut bool) -> Option<i32> {
    if op.kind == DirectOp::Flush || op.fua || op.copied || !file.buffered {
        return None;
    }
    let iov = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: (op.len - op.done) as usize,
    };
    let pos = (op.offset + op.done as u64) as libc::off_t;
    let call = |flags: i32| {
        // SAFETY: the iovec names the tag's buffer (at least len bytes, ours until the
        // commit); fd is open while the device lives.
        let r = unsafe {
            match op.kind {
                DirectOp::Read => libc::preadv2(file.fd, &iov, 1, pos, flags),
                _ => libc::pwritev2(file.fd, &iov, 1, pos, flags),
            }
        };
        if r < 0 {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
        } else {
            Ok(r as i32)
        }
    };
    let r = if *blocking { call(0) } else { call(libc::RWF_NOWAIT) };
    match r {
        Ok(n) => Some(n),
        Err(libc::EAGAIN) => None,
        Err(libc::EOPNOTSUPP) if !*blocking => {
            *blocking = true;
            Some(call(0).unwrap_or_else(|e| -e))
        }
        Err(e) => Some(-e),
    }
}

/// True when a request can go straight to the direct file: O_DIRECT wants offset,
/// length and buffer aligned (tag buffers are page-aligned).
fn direct_fits(file: &DirectFile, offset: u64, len: u32) -> bool {
    offset.is_multiple_of(file.align) && (len as u64).is_multiple_of(file.align) && len > 0
}

/// The loop's state besides the ring.
struct Server<D: BlockDevice> {
    name: String,
    device: Arc<D>,
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    /// Per tag: the direct file operation in flight.
    ops: Vec<Option<FileOp>>,
    /// Requests handed out (runtime or direct file) and not yet committed.
    in_flight: usize,
    /// Writes held back until the device is writable (see `QueueSetup::hold_writes`).
    held: Vec<(u16, Request)>,
    hold_until: Option<Instant>,
    /// The direct file refuses RWF_NOWAIT: buffered calls on the spot block instead.
    blocking: bool,
}

impl<D: BlockDevice> Server<D> {
    fn commit(&mut self, q: &mut Queue, tag: u16, res: i32) -> io::Result<()> {
        q.io_cmd(sys::IO_COMMIT_AND_FETCH_REQ, tag, res)
    }

    /// Serves one decoded request: directly, by the runtime, or held.
    fn dispatch(&mut self, q: &mut Queue, tag: u16, req: Request) -> io::Result<()> {
        let writes = matches!(
            req,
            Request::Write { .. } | Request::Discard { .. } | Request::WriteZeroes { .. }
        );
        if writes && self.hold_until.is_some() && self.device.read_only() {
            if self.held.is_empty() {
                tracing::info!(
                    "{}: holding writes until the resource is Primary (recovered device)",
                    self.name
                );
            }
            self.held.push((tag, req));
            return Ok(());
        }
        if q.setup.user_copy {
            return self.dispatch_user_copy(q, tag, req);
        }
        let op = match (q.setup.direct, req) {
            (Some(f), Request::Read { offset, len }) if direct_fits(&f, offset, len) => Some(FileOp {
                kind: DirectOp::Read,
                offset,
                len,
                done: 0,
                fua: false,
                copied: false,
            }),
            (Some(f), Request::Write { offset, len, fua }) if direct_fits(&f, offset, len) => {
                if let Err(e) = self.device.direct_begin_write() {
                    return self.commit(q, tag, errno_of(&e));
                }
                Some(FileOp {
                    kind: DirectOp::Write,
                    offset,
                    len,
                    done: 0,
                    fua,
                    copied: false,
                })
            }
            (Some(_), Request::Flush) => Some(FLUSH),
            _ => None,
        };
        self.in_flight += 1;
        match op {
            Some(op) => {
                self.ops[tag as usize] = Some(op);
                self.start_file_op(q, tag, op)
            }
            None => {
                let carrier = Carrier::Tag {
                    bufs: q.bufs.clone(),
                    addr: q.buf_addr(tag),
                };
                spawn_request(&self.rt, self.device.clone(), self.shared.clone(), carrier, tag, req);
                Ok(())
            }
        }
    }

    /// [`dispatch`](Self::dispatch) on a USER_COPY device. With the file mapped, a READ
    /// or WRITE is one copy between the request and the page cache, done here; a FUA
    /// write then syncs its range on the ring, a FLUSH is an fdatasync on the ring.
    /// Anything else (or everything, without a mapping) goes to the runtime, the
    /// data read out of the request first (WRITE) or written into it after (READ).
    fn dispatch_user_copy(&mut self, q: &mut Queue, tag: u16, req: Request) -> io::Result<()> {
        let cdev = q.setup.cdev.as_raw_fd();
        let pos = sys::user_copy_pos(q.setup.q_id, tag, 0);
        if let (Some(map), Some(file)) = (q.setup.map.clone(), q.setup.direct) {
            match req {
                Request::Read { offset, len } => {
                    // The range is within the device (request::decode), the mapping
                    // covers all of it.
                    let res = user_copy(cdev, CopyDir::IntoRequest, map.ptr as u64 + offset, len, pos);
                    self.device.direct_done(DirectOp::Read, res.max(0) as u64, res >= 0);
                    return self.commit(q, tag, res);
                }
                Request::Write { offset, len, fua } => {
                    if let Err(e) = self.device.direct_begin_write() {
                        return self.commit(q, tag, errno_of(&e));
                    }
                    let res = user_copy(cdev, CopyDir::OutOfRequest, map.ptr as u64 + offset, len, pos);
                    if res < 0 || !fua {
                        self.device.direct_done(DirectOp::Write, res.max(0) as u64, res >= 0);
                        return self.commit(q, tag, res);
                    }
                    let op = FileOp {
                        kind: DirectOp::Write,
                        offset,
                        len,
                        done: 0,
                        fua: true,
                        copied: true,
                    };
                    self.in_flight += 1;
                    self.ops[tag as usize] = Some(op);
                    return q.file_op(file, tag, &op);
                }
                Request::Flush => {
                    self.in_flight += 1;
                    self.ops[tag as usize] = Some(FLUSH);
                    return q.file_op(file, tag, &FLUSH);
                }
                _ => {}
            }
        }
        let data = match req {
            Request::Write { len, .. } => {
                let mut b = IoBuf::uninit(len as usize);
                let res = user_copy(cdev, CopyDir::OutOfRequest, b.as_mut_ptr() as u64, len, pos);
                if res < 0 {
                    return self.commit(q, tag, res);
                }
                Some(b)
            }
            _ => None,
        };
        self.in_flight += 1;
        spawn_request(
            &self.rt,
            self.device.clone(),
            self.shared.clone(),
            Carrier::User(data),
            tag,
            req,
        );
        Ok(())
    }

    /// Runs `op` (or what is left of it) on the spot if it can, else on the ring.
    fn start_file_op(&mut self, q: &mut Queue, tag: u16, op: FileOp) -> io::Result<()> {
        let file = q.setup.direct.expect("direct ops only with a direct file");
        match try_now(&file, &op, q.buf_addr(tag) + op.done as u64, &mut self.blocking) {
            Some(res) => self.file_done(q, tag, res),
            None => q.file_op(file, tag, &op),
        }
    }

    /// A direct file operation completed: continue a short one, or commit.
    fn file_done(&mut self, q: &mut Queue, tag: u16, res: i32) -> io::Result<()> {
        let Some(mut op) = self.ops.get_mut(tag as usize).and_then(|o| o.take()) else {
            tracing::warn!("{}: completion for tag {tag} with no file operation", self.name);
            return Ok(());
        };
        let result = if res < 0 {
            res
        } else if op.kind == DirectOp::Flush {
            0
        } else if op.copied {
            op.done = op.len;
            op.len as i32
        } else if res == 0 {
            // The file is at least as long as the device: nothing moved means trouble.
            -libc::EIO
        } else {
            op.done += (res as u32).min(op.len - op.done);
            if op.done < op.len {
                self.ops[tag as usize] = Some(op);
                return self.start_file_op(q, tag, op);
            }
            op.len as i32
        };
        self.device.direct_done(op.kind, op.done as u64, result >= 0);
        self.in_flight -= 1;
        self.commit(q, tag, result)
    }

    /// Held writes go once the device is writable, or fail when the wait is over.
    fn release_held(&mut self, q: &mut Queue) -> io::Result<()> {
        let Some(until) = self.hold_until else { return Ok(()) };
        let writable = !self.device.read_only();
        let expired = Instant::now() >= until;
        if expired {
            // From now on writes to a read-only device fail at once, as usual.
            self.hold_until = None;
        }
        if self.held.is_empty() || !(writable || expired) {
            return Ok(());
        }
        if !writable {
            tracing::warn!(
                "{}: the resource did not become Primary in time; {} held write(s) fail",
                self.name,
                self.held.len()
            );
        }
        for (tag, req) in std::mem::take(&mut self.held) {
            if writable {
                self.dispatch(q, tag, req)?;
            } else {
                self.commit(q, tag, -libc::EPERM)?;
            }
        }
        Ok(())
    }
}

fn run<D: BlockDevice>(
    setup: QueueSetup,
    shared: Arc<Shared>,
    device: Arc<D>,
    rt: tokio::runtime::Handle,
    ready: std::sync::mpsc::Sender<Result<(), UblkError>>,
) {
    let name = format!("ublk{} queue {}", setup.dev_id, setup.q_id);
    let hold_until = setup.hold_writes.map(|d| Instant::now() + d);
    let mut q = match setup_queue(setup) {
        Ok(q) => q,
        Err(err) => {
            let _ = ready.send(Err(UblkError::Io {
                what: format!("setting up {name}"),
                err,
            }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let size = device.size();
    let max_io = q.setup.max_io;
    let mut srv = Server {
        name,
        device,
        shared: shared.clone(),
        rt,
        ops: vec![None; q.setup.depth as usize],
        in_flight: 0,
        held: Vec::new(),
        hold_until,
        blocking: false,
    };
    let name = srv.name.clone();
    let mut wake_word: Box<u64> = Box::new(0);
    let mut armed = false;
    let mut live = q.setup.depth as usize;
    let efd = shared.efd.as_raw_fd();
    let poll = types::Timespec::new()
        .sec(HOLD_POLL.as_secs())
        .nsec(HOLD_POLL.subsec_nanos());
    let mut window = PollWindow::new(q.setup.poll);
    loop {
        if !armed {
            let sqe = opcode::Read::new(types::Fd(efd), &mut *wake_word as *mut u64 as *mut u8, 8)
                .build()
                .user_data(WAKE)
                .into();
            if let Err(e) = q.push(sqe) {
                tracing::error!("{name}: {e}");
                break;
            }
            armed = true;
        }
        let waited = if srv.held.is_empty() {
            match poll_for_work(&mut q.ring, window.current()) {
                Ok(true) => {
                    window.found_work();
                    Ok(0)
                }
                Ok(false) => {
                    window.found_nothing();
                    let slept = Instant::now();
                    let r = q.ring.submit_and_wait(1);
                    window.slept(slept.elapsed());
                    r
                }
                Err(e) => Err(e),
            }
        } else {
            let args = types::SubmitArgs::new().timespec(&poll);
            q.ring.submitter().submit_with_args(1, &args)
        };
        match waited {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::ETIME)) => {}
            Err(e) => {
                tracing::error!("{name}: io_uring: {e}");
                break;
            }
        }
        let cqes: Vec<(u64, i32)> = q.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        let mut failed = false;
        for (ud, res) in cqes {
            if ud == WAKE {
                armed = false;
                continue;
            }
            let tag = ud as u16;
            let r = if ud & FILE_IO != 0 {
                srv.file_done(&mut q, tag, res)
            } else if res != sys::IO_RES_OK {
                // ABORT: the device is going away; anything else is a refused command.
                if res != sys::IO_RES_ABORT {
                    tracing::warn!(
                        "{name}: tag {tag}: command failed: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                live -= 1;
                Ok(())
            } else {
                let desc = q.desc(tag);
                match request::decode(&desc, size, max_io) {
                    Ok(req) => srv.dispatch(&mut q, tag, req),
                    Err(res) => {
                        tracing::debug!("{name}: refused {desc:?}: {res}");
                        srv.commit(&mut q, tag, res)
                    }
                }
            };
            if let Err(e) = r {
                tracing::error!("{name}: {e}");
                failed = true;
            }
        }
        let done = std::mem::take(&mut *shared.done.lock().unwrap_or_else(|e| e.into_inner()));
        for (tag, res, data) in done {
            srv.in_flight -= 1;
            let res = match data {
                Some(b) if res >= 0 => {
                    let pos = sys::user_copy_pos(q.setup.q_id, tag, 0);
                    let r = user_copy(
                        q.setup.cdev.as_raw_fd(),
                        CopyDir::IntoRequest,
                        b.as_ptr() as u64,
                        b.len() as u32,
                        pos,
                    );
                    if r < 0 {
                        r
                    } else {
                        res
                    }
                }
                _ => res,
            };
            if let Err(e) = srv.commit(&mut q, tag, res) {
                tracing::error!("{name}: {e}");
                failed = true;
            }
        }
        if let Err(e) = srv.release_held(&mut q) {
            tracing::error!("{name}: {e}");
            failed = true;
        }
        let idle = srv.in_flight == 0 && srv.held.is_empty();
        if failed || idle && (live == 0 || shared.quit.load(Ordering::SeqCst)) {
            break;
        }
    }
    // Requests still running hold the buffers (Arc) until they answer; dropping the
    // ring cancels the fetches the kernel still holds.
    drop(q);
}

/// How long a queue thread polls before it sleeps: the configured window while work keeps
/// arriving within it; halved each time a window passes empty (a device with sporadic
/// I/O soon stops spending CPU on it); back to whole when work arrives, polling or
/// within a window of going to sleep.
#[derive(Debug, Clone, Copy)]
struct PollWindow {
    whole: Duration,
    now: Duration,
}

impl PollWindow {
    /// Below this, a window is not worth a system call: no polling.
    const SHORTEST: Duration = Duration::from_micros(5);

    fn new(whole: Duration) -> PollWindow {
        PollWindow { whole, now: whole }
    }
    fn current(&self) -> Duration {
        self.now
    }
    fn found_work(&mut self) {
        self.now = self.whole;
    }
    fn found_nothing(&mut self) {
        self.now /= 2;
        if self.now < Self::SHORTEST {
            self.now = Duration::ZERO;
        }
    }
    /// The thread slept this long before work came: within a whole window, polling
    /// would have found it.
    fn slept(&mut self, slept: Duration) {
        if slept < self.whole {
            self.now = self.whole;
        }
    }
}

/// Submits what is queued, then, for up to `window`, enters the ring without waiting
/// until a completion is there: true if one came. The kernel hands this thread its new
/// requests as task work, which runs whenever the thread returns from a system call,
/// so each turn of the loop picks up requests that arrived meanwhile. Sleeping in
/// `io_uring_enter` instead costs a sleep and a wake-up (an interrupt to another CPU)
/// per batch, which under load is what limits a queue: in one benchmark guest boot, 4 KiB
/// random reads at queue depth 32 went from 0.67x to 0.79x of a loop device, random
/// writes from 0.72x to 0.88x (docs/ublk.md).
fn poll_for_work(ring: &mut Ring, window: Duration) -> io::Result<bool> {
    if !ring.completion().is_empty() {
        ring.submit()?;
        return Ok(true);
    }
    if window.is_zero() {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        match ring.submit() {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        if !ring.completion().is_empty() {
            return Ok(true);
        }
        if start.elapsed() >= window {
            return Ok(false);
        }
        std::hint::spin_loop();
    }
}

/// Where a runtime request's data is: the tag's buffer (the kernel copies), or, on a
/// USER_COPY device, a WRITE's data already read out of the request (a READ's data
/// goes back to the queue thread with the answer).
enum Carrier {
    Tag { bufs: Arc<Mapping>, addr: u64 },
    User(Option<IoBuf>),
}

fn spawn_request<D: BlockDevice>(
    rt: &tokio::runtime::Handle,
    device: Arc<D>,
    shared: Arc<Shared>,
    carrier: Carrier,
    tag: u16,
    req: Request,
) {
    let answer = Answer {
        shared,
        tag,
        sent: false,
    };
    rt.spawn(async move {
        let mut back = None;
        let r = match (req, carrier) {
            (Request::Read { offset, len }, carrier) => device.read(offset, len).await.map(|b| {
                let n = b.len().min(len as usize);
                match carrier {
                    Carrier::Tag { bufs: _keep, addr } => {
                        let p = addr as *mut u8;
                        // SAFETY: the tag's buffer holds max_io >= len bytes and is ours
                        // until the commit; `_keep` keeps it mapped.
                        unsafe {
                            std::ptr::copy_nonoverlapping(b.as_ptr(), p, n);
                            std::ptr::write_bytes(p.add(n), 0, len as usize - n);
                        }
                    }
                    Carrier::User(_) if n == len as usize => back = Some(b),
                    Carrier::User(_) => {
                        let mut full = IoBuf::zeroed(len as usize);
                        full.as_mut_slice()[..n].copy_from_slice(&b.as_slice()[..n]);
                        back = Some(full);
                    }
                }
            }),
            (Request::Write { offset, len, fua }, Carrier::Tag { bufs: _keep, addr }) => {
                let mut b = IoBuf::uninit(len as usize);
                // SAFETY: the kernel filled len bytes of the tag's buffer before the fetch
                // completed; `_keep` keeps it mapped.
                unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), len as usize) };
                device.write(offset, b, fua).await
            }
            (Request::Write { offset, fua, .. }, Carrier::User(Some(b))) => device.write(offset, b, fua).await,
            (Request::Write { .. }, Carrier::User(None)) => Err(io::Error::from_raw_os_error(libc::EIO)),
            (Request::Flush, _) => device.flush().await,
            (Request::Discard { offset, len, fua }, _) => device.trim(offset, len, fua).await,
            (
                Request::WriteZeroes {
                    offset,
                    len,
                    fua,
                    may_unmap,
                },
                _,
            ) => device.write_zeroes(offset, len, fua, may_unmap).await,
        };
        match r {
            Ok(()) => answer.send(req.ok_result(), back),
            Err(e) => answer.send(errno_of(&e), None),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    fn op(kind: DirectOp, offset: u64, len: u32, done: u32, fua: bool) -> FileOp {
        FileOp {
            kind,
            offset,
            len,
            done,
            fua,
            copied: false,
        }
    }

    #[test]
    fn polling_finds_a_completion_or_gives_up_after_its_window() {
        let mut ring = Ring::builder().build(8).expect("io_uring");
        let start = Instant::now();
        assert!(!poll_for_work(&mut ring, Duration::from_millis(2)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(2), "gave up early");
        assert!(!poll_for_work(&mut ring, Duration::ZERO).unwrap());
        // A queued entry is submitted by the poll, and its completion ends it.
        let nop = squeue::Entry128::from(opcode::Nop::new().build().user_data(7));
        // SAFETY: a NOP names no memory.
        unsafe { ring.submission().push(&nop) }.expect("room");
        assert!(poll_for_work(&mut ring, Duration::from_secs(5)).unwrap());
        assert_eq!(ring.completion().next().map(|c| c.user_data()), Some(7));
        // A completion already waiting is reported at once, even with no window.
        // SAFETY: as above.
        unsafe { ring.submission().push(&nop) }.expect("room");
        ring.submit_and_wait(1).unwrap();
        assert!(poll_for_work(&mut ring, Duration::ZERO).unwrap());
    }

    #[test]
    fn the_poll_window_shrinks_while_idle_and_comes_back_under_load() {
        let us = Duration::from_micros;
        let mut w = PollWindow::new(us(200));
        assert_eq!(w.current(), us(200));
        // Sporadic I/O: every window passes empty and the sleeps are long.
        let mut seen = Vec::new();
        for _ in 0..7 {
            w.found_nothing();
            w.slept(Duration::from_millis(5));
            seen.push(w.current().as_micros());
        }
        assert_eq!(seen, [100, 50, 25, 12, 6, 0, 0]);
        // Requests soon after going to sleep: polling would have caught them.
        w.found_nothing();
        w.slept(us(150));
        assert_eq!(w.current(), us(200));
        w.found_nothing();
        w.found_work();
        assert_eq!(w.current(), us(200));
        // Off stays off.
        let mut off = PollWindow::new(Duration::ZERO);
        off.found_work();
        off.slept(Duration::ZERO);
        assert_eq!(off.current(), Duration::ZERO);
    }

    #[test]
    fn user_copy_moves_whole_ranges_both_ways() {
        // A regular file stands in for /dev/ublkcN: pread/pwrite at a position are what
        // the queue thread does on the char device.
        let mut req = tempfile();
        req.write_all(&(0..=255u8).cycle().take(16384).collect::<Vec<_>>())
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let r = user_copy(
            req.as_raw_fd(),
            CopyDir::OutOfRequest,
            buf.as_mut_ptr() as u64,
            4096,
            8192,
        );
        assert_eq!(r, 4096);
        assert!(buf.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8));
        let data = vec![0x5au8; 1000];
        let r = user_copy(req.as_raw_fd(), CopyDir::IntoRequest, data.as_ptr() as u64, 1000, 100);
        assert_eq!(r, 1000);
        let mut back = vec![0u8; 16384];
        req.seek(SeekFrom::Start(0)).unwrap();
        req.read_exact(&mut back).unwrap();
        assert!(back[100..1100].iter().all(|&b| b == 0x5a));
        assert_eq!(back[99], 99);
        assert_eq!(back[1100], (1100 % 256) as u8);
        // Nothing to move (past the end): an error, not a hang or a short success.
        let r = user_copy(
            req.as_raw_fd(),
            CopyDir::OutOfRequest,
            buf.as_mut_ptr() as u64,
            4096,
            16384,
        );
        assert_eq!(r, -libc::EIO);
        let r = user_copy(-1, CopyDir::IntoRequest, data.as_ptr() as u64, 10, 0);
        assert_eq!(r, -libc::EBADF);
    }

    #[test]
    fn user_copy_into_a_mapped_file_lands_in_the_file() {
        // What a WRITE does on a USER_COPY device: the request's data copied by the
        // kernel straight into the mapped backing file's pages.
        let mut req = tempfile();
        req.write_all(&[0xc3u8; 8192]).unwrap();
        let mut backing = tempfile();
        backing.write_all(&[0u8; 65536]).unwrap();
        let map = Mapping::new(
            backing.as_raw_fd(),
            65536,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            0,
        )
        .unwrap();
        let r = user_copy(req.as_raw_fd(), CopyDir::OutOfRequest, map.ptr as u64 + 12288, 8192, 0);
        assert_eq!(r, 8192);
        let mut back = vec![0u8; 65536];
        backing.seek(SeekFrom::Start(0)).unwrap();
        backing.read_exact(&mut back).unwrap();
        assert!(back[12288..20480].iter().all(|&b| b == 0xc3));
        assert!(back[..12288].iter().all(|&b| b == 0) && back[20480..].iter().all(|&b| b == 0));
        // And a READ: the file's bytes written from the mapping into the request.
        let r = user_copy(req.as_raw_fd(), CopyDir::IntoRequest, map.ptr as u64 + 4096, 4096, 0);
        assert_eq!(r, 4096);
        let mut first = vec![1u8; 4096];
        req.seek(SeekFrom::Start(0)).unwrap();
        req.read_exact(&mut first).unwrap();
        assert!(first.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_mapping_past_the_end_of_a_shrunk_file_is_an_error_not_a_signal() {
        // The backing file cannot shrink while the device is attached; if it did, the
        // kernel's copy into the mapping would fault: the call fails (EFAULT), and the
        // process gets no SIGBUS because only the kernel touches the mapping.
        let req = tempfile();
        req.set_len(8192).unwrap();
        let backing = tempfile();
        backing.set_len(65536).unwrap();
        let map = Mapping::new(
            backing.as_raw_fd(),
            65536,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            0,
        )
        .unwrap();
        backing.set_len(4096).unwrap();
        let r = user_copy(req.as_raw_fd(), CopyDir::OutOfRequest, map.ptr as u64 + 32768, 4096, 0);
        assert_eq!(r, -libc::EFAULT);
    }

    #[test]
    fn direct_requests_must_be_aligned_and_not_empty() {
        let f = DirectFile {
            fd: -1,
            align: 4096,
            buffered: false,
        };
        assert!(direct_fits(&f, 8192, 4096));
        assert!(!direct_fits(&f, 512, 4096));
        assert!(!direct_fits(&f, 4096, 512));
        assert!(!direct_fits(&f, 0, 0));
        let any = DirectFile { align: 1, ..f };
        assert!(direct_fits(&any, 3, 5));
    }

    #[test]
    fn buffered_reads_and_writes_run_on_the_spot() {
        let mut file = tempfile();
        file.write_all(&[7u8; 8192]).unwrap();
        let f = DirectFile {
            fd: file.as_raw_fd(),
            align: 1,
            buffered: true,
        };
        // Blocking calls, so that the result cannot depend on what is cached; what
        // RWF_NOWAIT does is the file system's business (done, or EAGAIN -> None).
        let mut nowait = false;
        let probe = [1u8; 8];
        let p = op(DirectOp::Write, 4096, 8, 0, false);
        assert!(matches!(
            try_now(&f, &p, probe.as_ptr() as u64, &mut nowait),
            None | Some(8)
        ));
        let mut blocking = true;
        // A write of 100 bytes at 1000, then the rest of a half-done write.
        let data = [0xabu8; 100];
        let w = op(DirectOp::Write, 1000, 100, 0, false);
        assert_eq!(try_now(&f, &w, data.as_ptr() as u64, &mut blocking), Some(100));
        let w = op(DirectOp::Write, 2000, 100, 60, false);
        assert_eq!(try_now(&f, &w, data.as_ptr() as u64, &mut blocking), Some(40));
        let mut back = vec![0u8; 8192];
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_exact(&mut back).unwrap();
        assert!(back[1000..1100].iter().all(|&b| b == 0xab));
        assert!(back[2060..2100].iter().all(|&b| b == 0xab));
        assert_eq!(back[2059], 7);
        // A read into a buffer: what the file holds, from where the op has got to.
        let mut buf = [0u8; 64];
        let r = op(DirectOp::Read, 1064, 64, 0, false);
        assert_eq!(try_now(&f, &r, buf.as_mut_ptr() as u64, &mut blocking), Some(64));
        assert!(buf[..36].iter().all(|&b| b == 0xab) && buf[36..].iter().all(|&b| b == 7));
        // Past the end: a short (empty) read, for file_done to turn into an error.
        let r = op(DirectOp::Read, 8192, 64, 0, false);
        assert_eq!(try_now(&f, &r, buf.as_mut_ptr() as u64, &mut blocking), Some(0));
    }

    #[test]
    fn flushes_fua_writes_and_unbuffered_files_go_to_the_ring() {
        let file = tempfile();
        let buffered = DirectFile {
            fd: file.as_raw_fd(),
            align: 1,
            buffered: true,
        };
        let direct = DirectFile {
            buffered: false,
            ..buffered
        };
        let buf = [0u8; 512];
        let addr = buf.as_ptr() as u64;
        let mut blocking = false;
        assert_eq!(
            try_now(&buffered, &op(DirectOp::Flush, 0, 0, 0, false), addr, &mut blocking),
            None
        );
        assert_eq!(
            try_now(&buffered, &op(DirectOp::Write, 0, 512, 0, true), addr, &mut blocking),
            None
        );
        assert_eq!(
            try_now(&direct, &op(DirectOp::Write, 0, 512, 0, false), addr, &mut blocking),
            None
        );
    }

    #[test]
    fn a_bad_descriptor_is_an_errno_not_a_panic() {
        let f = DirectFile {
            fd: -1,
            align: 1,
            buffered: true,
        };
        let buf = [0u8; 16];
        let mut blocking = false;
        let r = try_now(
            &f,
            &op(DirectOp::Read, 0, 16, 0, false),
            buf.as_ptr() as u64,
            &mut blocking,
        );
        assert_eq!(r, Some(-libc::EBADF));
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "ublk-queue-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
