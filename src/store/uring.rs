//! io_uring for async callers, driven from the tokio runtime itself.
//!
//! A caller pushes its operation into the ring and submits it at once (for O_DIRECT
//! the submission is where the block layer gets the request, so there is nothing to
//! gain by delaying it), then awaits a oneshot. The ring signals an eventfd on every
//! completion; a reaper task watches that eventfd through tokio's reactor and hands
//! results back. No extra thread, no cross-thread hop per request: on a small
//! machine those wake-ups cost more than the I/O.

use io_uring::{opcode, squeue, types, IoUring};
use kernel_shim::IoBuf;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Bound on operations in flight in the ring; more wait in a backlog.
const RING_ENTRIES: u32 = 256;

enum OpKind {
    Read {
        buf: IoBuf,
        offset: u64,
    },
    Write {
        buf: IoBuf,
        offset: u64,
        dsync: bool,
    },
    /// A write from memory shared with others (a replicated write's payload).
    WriteShared {
        buf: bytes::Bytes,
        offset: u64,
        dsync: bool,
    },
    Fsync {
        datasync: bool,
    },
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
}

type Done = oneshot::Sender<(i32, Option<IoBuf>)>;

struct Op {
    kind: OpKind,
    done: Done,
}

/// What keeps an in-flight operation's memory alive.
enum Held {
    Nothing,
    Own(IoBuf),
    Shared(#[allow(dead_code)] bytes::Bytes),
}

struct RingState {
    ring: IoUring,
    fd: RawFd,
    /// The buffer of each in-flight operation stays here until the kernel is done with it,
    /// even if the caller gave up waiting.
    slots: Vec<Option<(Held, Done)>>,
    free: Vec<usize>,
    in_flight: usize,
    backlog: VecDeque<Op>,
}

impl RingState {
    fn entry(&self, kind: &mut OpKind) -> squeue::Entry {
        let fd = types::Fd(self.fd);
        match kind {
            OpKind::Read { buf, offset } => opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                .offset(*offset)
                .build(),
            OpKind::Write { buf, offset, dsync } => opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(*offset)
                .rw_flags(if *dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            OpKind::WriteShared { buf, offset, dsync } => opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(*offset)
                .rw_flags(if *dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            OpKind::Fsync { datasync } => {
                let f = opcode::Fsync::new(fd);
                if *datasync {
                    f.flags(types::FsyncFlags::DATASYNC)
                } else {
                    f
                }
                .build()
            }
            OpKind::Fallocate { mode, offset, len } => {
                opcode::Fallocate::new(fd, *len).offset(*offset).mode(*mode).build()
            }
        }
    }

    /// Puts `op` in the ring (or the backlog when full); true if the ring took it.
    fn push(&mut self, mut op: Op) -> bool {
        if self.in_flight >= RING_ENTRIES as usize {
            self.backlog.push_back(op);
            return false;
        }
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let entry = self.entry(&mut op.kind).user_data(idx as u64);
        // SAFETY: every buffer the entry points to is kept in slots[idx] until its
        // completion is reaped; the SQ has room because in_flight < RING_ENTRIES.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.free.push(idx);
            self.backlog.push_back(op);
            return false;
        }
        let buf = match op.kind {
            OpKind::Read { buf, .. } | OpKind::Write { buf, .. } => Held::Own(buf),
            OpKind::WriteShared { buf, .. } => Held::Shared(buf),
            _ => Held::Nothing,
        };
        self.slots[idx] = Some((buf, op.done));
        self.in_flight += 1;
        true
    }

    fn submit(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY/EAGAIN: the kernel is short of resources; completions will
                // free some and the reaper submits again.
                Err(e) => {
                    tracing::debug!("io_uring submit: {e}");
                    return;
                }
            }
        }
    }

    /// Completes everything the kernel has finished, then feeds the backlog.
    fn reap(&mut self) {
        let mut done = Vec::new();
        for cqe in self.ring.completion() {
            done.push((cqe.user_data() as usize, cqe.result()));
        }
        for (idx, res) in done {
            if let Some((held, tx)) = self.slots.get_mut(idx).and_then(Option::take) {
                let buf = match held {
                    Held::Own(b) => Some(b),
                    _ => None,
                };
                let _ = tx.send((res, buf));
                self.free.push(idx);
                self.in_flight -= 1;
            }
        }
        let mut pushed = false;
        while self.in_flight < RING_ENTRIES as usize {
            let Some(op) = self.backlog.pop_front() else { break };
            pushed |= self.push(op);
        }
        if pushed {
            self.submit();
        }
    }
}

/// Async access to one file descriptor through its own io_uring.
pub struct Uring {
    state: Arc<Mutex<RingState>>,
    fd: RawFd,
    reaper: tokio::task::JoinHandle<()>,
}

impl Uring {
    /// Sets up a ring for `fd`, which must stay open for the life of `Uring`.
    /// Must be called inside a tokio runtime.
    pub fn new(fd: RawFd, _name: &str) -> io::Result<Uring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: plain eventfd creation; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor we own.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd.as_raw_fd())?;
        let state = Arc::new(Mutex::new(RingState {
            ring,
            fd,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            backlog: VecDeque::new(),
        }));
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open for its whole life.
        let afd = unsafe { AsyncFd::register(efd) }?;
        let reaper = tokio::spawn(reap_forever(afd, state.clone()));
        Ok(Uring { state, fd, reaper })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    async fn submit(&self, kind: OpKind) -> (i32, Option<IoBuf>) {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.state.lock().expect("uring state");
            if st.push(Op { kind, done: tx }) {
                st.submit();
            }
        }
        rx.await.unwrap_or((-libc::ECANCELED, None))
    }

    /// Reads into `buf` (its full length) at `offset`; returns the buffer and bytes read.
    pub async fn read_at(&self, buf: IoBuf, offset: u64) -> (IoBuf, io::Result<usize>) {
        let len = buf.len();
        let (res, buf) = self.submit(OpKind::Read { buf, offset }).await;
        (buf.unwrap_or_else(|| IoBuf::zeroed(len)), to_result(res))
    }

    /// Writes `buf` at `offset`; with `dsync` the write is durable on completion (FUA).
    pub async fn write_at(&self, buf: IoBuf, offset: u64, dsync: bool) -> (IoBuf, io::Result<usize>) {
        let len = buf.len();
        let (res, buf) = self.submit(OpKind::Write { buf, offset, dsync }).await;
        (buf.unwrap_or_else(|| IoBuf::zeroed(len)), to_result(res))
    }

    /// Writes shared memory at `offset` (kept alive until the kernel is done with it).
    pub async fn write_shared_at(&self, buf: bytes::Bytes, offset: u64, dsync: bool) -> io::Result<usize> {
        to_result(self.submit(OpKind::WriteShared { buf, offset, dsync }).await.0)
    }

    pub async fn sync(&self, datasync: bool) -> io::Result<()> {
        to_result(self.submit(OpKind::Fsync { datasync }).await.0).map(|_| ())
    }

    pub async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        to_result(self.submit(OpKind::Fallocate { mode, offset, len }).await.0).map(|_| ())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.reaper.abort();
        // The kernel may still write into buffers of abandoned requests: wait them out
        // before the buffers (in the slots) are freed with the ring.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.backlog.clear();
        while st.in_flight > 0 {
            if let Err(e) = st.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    tracing::error!("io_uring drain on close failed: {e}");
                    // Leak the buffers rather than free memory the kernel may write.
                    std::mem::forget(std::mem::take(&mut st.slots));
                    return;
                }
            }
            st.reap();
        }
    }
}

async fn reap_forever(afd: AsyncFd<OwnedFd>, state: Arc<Mutex<RingState>>) {
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("io_uring eventfd: {e}");
                return;
            }
        };
        // Reset the counter, then look at the ring: a completion posted after the
        // read re-arms readiness, and one posted before it is reaped below.
        let mut count = [0u8; 8];
        // SAFETY: reading 8 bytes from a non-blocking eventfd into a local array.
        unsafe { libc::read(afd.get_ref().as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        guard.clear_ready();
        state.lock().expect("uring state").reap();
    }
}

fn to_result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_write_sync_fallocate() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        let ring = Arc::new(Uring::new(f.as_raw_fd(), "test").unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let r = ring.clone();
            tasks.push(tokio::spawn(async move {
                let buf = IoBuf::copy_from(&[i as u8; 4096]);
                let (_, n) = r.write_at(buf, i * 4096, i % 2 == 0).await;
                assert_eq!(n.unwrap(), 4096);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        ring.sync(true).await.unwrap();
        let (buf, n) = ring.read_at(IoBuf::zeroed(4096), 7 * 4096).await;
        assert_eq!(n.unwrap(), 4096);
        assert!(buf.iter().all(|&b| b == 7));
        ring.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 4096, 4096)
            .await
            .unwrap();
        let mut plain = [9u8; 4096];
        f.read_exact_at(&mut plain, 4096).unwrap();
        assert!(plain.iter().all(|&b| b == 0));
        // Errors come back as io::Error, not panics.
        let (_, e) = ring.read_at(IoBuf::zeroed(4096), u64::MAX - 10).await;
        assert!(e.is_err());
    }
}
