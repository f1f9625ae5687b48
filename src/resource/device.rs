//! An attached resource as a block device: the I/O path every export (NBD today,
//! ublk and iSCSI later) goes through.
//!
//! Writes mark the dirty bitmap for every peer that is not connected (so a returning
//! peer resyncs only what changed), then go to the backing store. A flush makes both
//! the data and those bitmap bits durable.

use super::activity_log::ActivityLog;
use super::replica::Replica;
use super::state::{DiskState, Role};
use crate::control::Counters;
use crate::replication::msg::data_flags;
use crate::store::backing::Backing;
use crate::store::meta::MetaDisk;
use kernel_shim::{BlockDevice, BlockSizes, DirectFile, DirectOp, IoBuf};
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// Largest request any export may send us.
pub const MAX_REQUEST: u32 = 32 << 20;

/// Role and disk state, changed only under the lock.
#[derive(Debug, Clone, Copy)]
pub struct States {
    pub role: Role,
    pub disk: DiskState,
    /// Promoted by a client opening the device (auto-promote), so demote on last close.
    pub auto_promoted: bool,
}

#[derive(Default)]
struct AtomicCounters {
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
    io_errors: AtomicU64,
}

/// The data path of one attached resource.
pub struct Device {
    name: String,
    backing: Arc<Backing>,
    meta: Arc<RwLock<MetaDisk>>,
    al: ActivityLog,
    /// Bitmap slots of peers that are away; their bits are set on every write.
    absent_peer_slots: Vec<usize>,
    auto_promote: bool,
    states: Mutex<States>,
    opens: AtomicU32,
    counters: AtomicCounters,
    /// Replication to the peer. When present it decides roles, disk states, when a
    /// write is done and what is out of sync; `states` then only tracks auto-promotion.
    replica: Option<Arc<Replica>>,
}

fn repl_role(r: crate::replication::Role) -> Role {
    match r {
        crate::replication::Role::Primary => Role::Primary,
        _ => Role::Secondary,
    }
}

fn repl_disk(d: crate::replication::DiskState) -> DiskState {
    use crate::replication::DiskState as D;
    match d {
        D::Diskless | D::Failed | D::DUnknown | D::Detaching => DiskState::Diskless,
        D::Attaching | D::Negotiating => DiskState::Attaching,
        D::Inconsistent => DiskState::Inconsistent,
        D::Outdated => DiskState::Outdated,
        D::Consistent => DiskState::Consistent,
        D::UpToDate => DiskState::UpToDate,
    }
}

impl Device {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        backing: Arc<Backing>,
        meta: Arc<RwLock<MetaDisk>>,
        al: ActivityLog,
        absent_peer_slots: Vec<usize>,
        auto_promote: bool,
        disk: DiskState,
        replica: Option<Arc<Replica>>,
    ) -> Device {
        Device {
            name: name.to_string(),
            backing,
            meta,
            al,
            absent_peer_slots,
            auto_promote,
            states: Mutex::new(States {
                role: Role::Secondary,
                disk,
                auto_promoted: false,
            }),
            opens: AtomicU32::new(0),
            counters: AtomicCounters::default(),
            replica,
        }
    }

    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    pub fn meta(&self) -> &Arc<RwLock<MetaDisk>> {
        &self.meta
    }

    pub fn states(&self) -> States {
        let mut st = *self.states.lock().expect("states");
        if let Some(r) = &self.replica {
            let s = r.status().core;
            st.role = repl_role(s.role);
            st.disk = repl_disk(s.disk);
        }
        st
    }

    /// Clients that have the device open right now.
    pub fn open_count(&self) -> u32 {
        self.opens.load(Relaxed)
    }

    pub fn counters(&self) -> Counters {
        let c = &self.counters;
        Counters {
            read_bytes: c.read_bytes.load(Relaxed),
            written_bytes: c.written_bytes.load(Relaxed),
            reads: c.reads.load(Relaxed),
            writes: c.writes.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            trims: c.trims.load(Relaxed),
            io_errors: c.io_errors.load(Relaxed),
        }
    }

    /// Makes this node Primary. Without `force` the local data must be UpToDate;
    /// `force` declares it UpToDate (a new data generation), as `drbdadm primary --force`.
    pub async fn promote(&self, force: bool) -> Result<(), String> {
        if let Some(r) = &self.replica {
            r.promote(force).await?;
            self.states.lock().expect("states").auto_promoted = false;
            return Ok(());
        }
        let mut st = self.states.lock().expect("states");
        self.promote_locked(&mut st, force, false)
    }

    fn promote_locked(&self, st: &mut States, force: bool, auto: bool) -> Result<(), String> {
        if let Some(r) = &self.replica {
            // With a peer, data is only good when the generations say so: never
            // promote just-created metadata by opening it (`primary --force` does).
            r.promote_blocking(false)?;
            st.auto_promoted = auto;
            return Ok(());
        }
        if st.role == Role::Primary {
            return Ok(());
        }
        let mut meta = self.meta.write().expect("meta");
        let fresh = meta.is_just_created();
        if !(st.disk.may_promote() || force || (auto && fresh)) {
            return Err(format!(
                "{}: cannot become Primary: local disk is {} (no UpToDate data); use `hbadm primary --force {}` to declare this node's data the good copy",
                self.name, st.disk, self.name
            ));
        }
        if fresh || force {
            // This node's data becomes a new generation every peer will sync from.
            meta.start_new_generation();
            if auto && fresh {
                tracing::warn!(
                    "{}: promoting freshly created metadata on first open; this node is now the sync source",
                    self.name
                );
            }
        }
        meta.set_primary(true);
        meta.write_superblock()
            .map_err(|e| format!("{}: writing metadata failed: {e}", self.name))?;
        st.role = Role::Primary;
        st.disk = DiskState::UpToDate;
        st.auto_promoted = auto;
        tracing::info!("{}: role Primary", self.name);
        Ok(())
    }

    /// Makes this node Secondary; refused while a client holds the device open.
    pub async fn demote(&self, force: bool) -> Result<(), String> {
        let opens = self.open_count();
        if opens > 0 && !force {
            return Err(format!(
                "{}: device is held open by {opens} client(s); disconnect them first",
                self.name
            ));
        }
        self.flush()
            .await
            .map_err(|e| format!("{}: flush before demote failed: {e}", self.name))?;
        if let Some(r) = &self.replica {
            r.demote().await?;
            self.states.lock().expect("states").auto_promoted = false;
            return Ok(());
        }
        let mut st = self.states.lock().expect("states");
        self.demote_locked(&mut st)
    }

    fn demote_locked(&self, st: &mut States) -> Result<(), String> {
        if let Some(r) = &self.replica {
            r.demote_now();
            st.auto_promoted = false;
            return Ok(());
        }
        if st.role != Role::Primary {
            return Ok(());
        }
        let mut meta = self.meta.write().expect("meta");
        meta.set_primary(false);
        meta.write_superblock()
            .map_err(|e| format!("{}: writing metadata failed: {e}", self.name))?;
        st.role = Role::Secondary;
        st.auto_promoted = false;
        tracing::info!("{}: role Secondary", self.name);
        Ok(())
    }

    /// Flushes data and bitmap, and records a clean stop in the metadata.
    pub async fn shutdown(&self) -> io::Result<()> {
        if let Some(r) = &self.replica {
            if r.role() == crate::replication::Role::Primary {
                if let Err(e) = r.flush().await {
                    tracing::warn!("{}: flush before stopping replication failed: {e}", self.name);
                }
            }
            r.shutdown().await;
        }
        self.backing.flush().await?;
        let meta = self.meta.clone();
        // The bitmap first: once the log is emptied, it alone says what peers lack.
        meta.read().expect("meta").flush_bitmap()?;
        self.al.close()?;
        tokio::task::spawn_blocking(move || {
            let mut m = meta.write().expect("meta");
            m.set_primary(false);
            m.set_clean(true);
            m.write_superblock()
        })
        .await
        .map_err(io::Error::other)?
    }

    fn mark_out_of_sync(&self, offset: u64, len: u64) {
        if self.absent_peer_slots.is_empty() || len == 0 {
            return;
        }
        let meta = self.meta.read().expect("meta");
        for &slot in &self.absent_peer_slots {
            meta.bitmap().set_range(slot, offset, len);
        }
    }

    async fn persist_bitmap(&self) -> io::Result<()> {
        if self.absent_peer_slots.is_empty() || self.meta.read().expect("meta").bitmap().dirty_pages() == 0 {
            return Ok(());
        }
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.read().expect("meta").flush_bitmap())
            .await
            .map_err(io::Error::other)?
    }

    fn writable(&self) -> io::Result<()> {
        if self.replica.is_some() {
            // The core refuses writes on a Secondary itself.
            return Ok(());
        }
        if self.states.lock().expect("states").role == Role::Primary {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        }
    }

    fn count<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.counters.io_errors.fetch_add(1, Relaxed);
        }
        r
    }
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        self.backing.size()
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: self.backing.alignment().max(512) as u32,
            preferred: 4096,
            // Replicated writes larger than one peer message are split by the replica, so
            // clients may send up to MAX_REQUEST. (The kernel's NBD client does not honour a
            // smaller advertised maximum: its 1.25 MiB writes were refused and ext4 lost data.)
            maximum: MAX_REQUEST,
        }
    }

    fn read_only(&self) -> bool {
        self.states().role != Role::Primary
    }

    fn read_only_once_open(&self) -> bool {
        if let Some(r) = &self.replica {
            let s = r.status().core;
            return !(s.role == crate::replication::Role::Primary
                || (self.auto_promote
                    && s.disk == crate::replication::DiskState::UpToDate
                    && s.peer_role != crate::replication::Role::Primary));
        }
        let st = self.states.lock().expect("states");
        if st.role == Role::Primary {
            return false;
        }
        let fresh = self.meta.read().expect("meta").is_just_created();
        !(self.auto_promote && (st.disk.may_promote() || fresh))
    }

    fn open(&self) -> Result<(), String> {
        let mut st = self.states.lock().expect("states");
        let role = match &self.replica {
            Some(r) => repl_role(r.role()),
            None => st.role,
        };
        if role != Role::Primary && self.auto_promote {
            // Clients open for writing; a failed auto-promote still allows reading.
            if let Err(e) = self.promote_locked(&mut st, false, true) {
                tracing::info!("{e}; serving read-only");
            }
        }
        // Under the states lock (as in close), so the core hears opens and closes in order.
        if self.opens.fetch_add(1, Relaxed) == 0 {
            if let Some(r) = &self.replica {
                r.set_held_open(true);
            }
        }
        Ok(())
    }

    fn close(&self) {
        let mut st = self.states.lock().expect("states");
        let left = self.opens.fetch_sub(1, Relaxed) - 1;
        if left == 0 {
            if let Some(r) = &self.replica {
                r.set_held_open(false);
            }
            if st.auto_promoted {
                // DRBD 9 auto-demotes when the last opener goes; data is already
                // flushed by clients that care, and the bitmap is persisted on stop.
                if let Err(e) = self.demote_locked(&mut st) {
                    tracing::warn!("{e}");
                }
            }
        }
    }

    /// Only a resource without any peer: then a write needs no replication and no
    /// bitmap bits, and the activity log (which only ever says what a peer must
    /// resync) has nobody to serve. Anything replicated keeps the async path.
    fn direct_file(&self) -> Option<DirectFile> {
        if self.replica.is_some() || !self.absent_peer_slots.is_empty() {
            return None;
        }
        Some(DirectFile {
            fd: self.backing.raw_fd(),
            align: self.backing.alignment().max(1),
            buffered: !self.backing.direct_io(),
        })
    }

    fn direct_begin_write(&self) -> io::Result<()> {
        self.writable()
    }

    fn direct_done(&self, op: DirectOp, bytes: u64, ok: bool) {
        let c = &self.counters;
        match op {
            DirectOp::Read => {
                c.reads.fetch_add(1, Relaxed);
                c.read_bytes.fetch_add(bytes, Relaxed);
            }
            DirectOp::Write => {
                c.writes.fetch_add(1, Relaxed);
                c.written_bytes.fetch_add(bytes, Relaxed);
            }
            DirectOp::Flush => {
                c.flushes.fetch_add(1, Relaxed);
            }
        }
        if !ok {
            c.io_errors.fetch_add(1, Relaxed);
        }
    }

    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        self.counters.reads.fetch_add(1, Relaxed);
        self.counters.read_bytes.fetch_add(len as u64, Relaxed);
        let r = self.backing.read(offset, len as usize).await;
        self.count(r)
    }

    async fn write(&self, offset: u64, data: IoBuf, fua: bool) -> io::Result<()> {
        self.writable()?;
        let len = data.len() as u64;
        self.counters.writes.fetch_add(1, Relaxed);
        self.counters.written_bytes.fetch_add(len, Relaxed);
        let _hot = self.al.hold(offset, len).await?;
        if let Some(rep) = &self.replica {
            let flags = if fua { data_flags::FUA } else { 0 };
            let r = rep.write(offset, len, bytes::Bytes::from_owner(data), flags).await;
            return self.count(r);
        }
        self.mark_out_of_sync(offset, len);
        let r = self.backing.write(offset, data, fua).await;
        let r = match r {
            Ok(()) if fua => self.persist_bitmap().await,
            r => r,
        };
        self.count(r)
    }

    async fn flush(&self) -> io::Result<()> {
        self.counters.flushes.fetch_add(1, Relaxed);
        if let Some(rep) = &self.replica {
            let r = rep.flush().await;
            return self.count(r);
        }
        let r = self.backing.flush().await;
        let r = match r {
            Ok(()) => self.persist_bitmap().await,
            r => r,
        };
        self.count(r)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> io::Result<()> {
        self.writable()?;
        self.counters.trims.fetch_add(1, Relaxed);
        let _hot = self.al.hold(offset, len as u64).await?;
        if let Some(rep) = &self.replica {
            let flags = data_flags::TRIM | if fua { data_flags::FUA } else { 0 };
            let r = rep.write(offset, len as u64, bytes::Bytes::new(), flags).await;
            return self.count(r);
        }
        self.mark_out_of_sync(offset, len as u64);
        let r = self.backing.trim(offset, len as u64, fua).await;
        self.count(r)
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool, may_unmap: bool) -> io::Result<()> {
        self.writable()?;
        self.counters.writes.fetch_add(1, Relaxed);
        let _hot = self.al.hold(offset, len as u64).await?;
        if let Some(rep) = &self.replica {
            let flags = data_flags::ZEROES | if fua { data_flags::FUA } else { 0 };
            let r = rep.write(offset, len as u64, bytes::Bytes::new(), flags).await;
            return self.count(r);
        }
        self.mark_out_of_sync(offset, len as u64);
        let r = self.backing.write_zeroes(offset, len as u64, fua, may_unmap).await;
        self.count(r)
    }
}
