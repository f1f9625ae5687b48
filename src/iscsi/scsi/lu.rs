//! One logical unit: its settings (tgt's `--params`), its state (unit attentions,
//! reservations, mode pages) and the SPC-4/SBC-3 commands executed against its device.
//!
//! READ and WRITE pass the initiator's buffers straight to the device (no copies) and take
//! no LU-wide lock: a write holds a shared range lock over its blocks, which only COMPARE
//! AND WRITE (exclusive on its range) ever waits for.

use super::cdb::{self, be16, be24, be32, be64, lookup, op, sa, CmdInfo, COMMANDS};
use super::mode::{self, ModeState, PageControl};
use super::pr::{OutParams, PrError, PrState};
use super::sense::{asc, key, Sense, SenseFormat};
use crate::iscsi::types::{status, Nexus, ScsiOutcome, ScsiTask};
use kernel_shim::{BlockDevice, IoBuf};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Unit attentions queued per nexus (oldest first); more are dropped (SAM allows it).
const MAX_UAS: usize = 16;
/// Largest buffer built for WRITE SAME patterns and zero fills.
const FILL_CHUNK: u64 = 1 << 20;
/// Largest single trim/zero request handed to the device.
const TRIM_CHUNK: u64 = 1 << 30;

/// Settings of a logical unit, named as tgt's `--params` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuParams {
    pub vendor_id: String,
    pub product_id: String,
    pub product_rev: String,
    pub scsi_id: String,
    pub scsi_sn: String,
    pub removable: bool,
    pub readonly: bool,
    pub thin_provisioning: bool,
    pub online: bool,
    pub sense_format: SenseFormat,
    /// Logical block size: 512 (tgt's default) or 4096.
    pub block_size: u32,
    /// Initial WCE (tgt starts with the write cache enabled).
    pub write_cache: bool,
    /// NAA designator (VPD 0x83); `None` derives a locally assigned NAA 3 from `scsi_id`.
    pub naa: Option<u64>,
    /// SCSI name of the target port ("iqn...,t,0x0001") for VPD 0x83, when the owner knows it.
    pub target_port_name: Option<String>,
    pub max_unmap_blocks: u32,
    pub max_unmap_descriptors: u32,
    pub max_write_same_blocks: u32,
    pub max_compare_and_write_blocks: u8,
}

impl LuParams {
    /// tgt's defaults for LUN `lun` of target `tid` (vendor "HABLOCK" where tgt says "IET").
    pub fn new(tid: u32, lun: u16) -> LuParams {
        LuParams {
            vendor_id: "HABLOCK".into(),
            product_id: "VIRTUAL-DISK".into(),
            product_rev: "0001".into(),
            scsi_id: format!("HABLOCK {tid:04x}{lun:04x}"),
            scsi_sn: format!("beaf{tid}{lun}"),
            removable: false,
            readonly: false,
            thin_provisioning: false,
            online: true,
            sense_format: SenseFormat::Fixed,
            block_size: 512,
            write_cache: true,
            naa: None,
            target_port_name: None,
            max_unmap_blocks: 1 << 22,
            max_unmap_descriptors: 256,
            max_write_same_blocks: 1 << 22,
            max_compare_and_write_blocks: 128,
        }
    }

    /// Sets one `--params key=value` as tgtadm spells it; the error names what is wrong.
    pub fn set(&mut self, k: &str, v: &str) -> Result<(), String> {
        let flag = |v: &str| match v {
            "0" | "no" | "off" | "false" => Ok(false),
            "1" | "yes" | "on" | "true" => Ok(true),
            _ => Err(format!("{k}: expected 0 or 1, got {v:?}")),
        };
        let text = |v: &str, max: usize| {
            if v.is_ascii() && v.len() <= max && !v.is_empty() {
                Ok(v.to_string())
            } else {
                Err(format!("{k}: expected 1 to {max} ASCII characters"))
            }
        };
        match k {
            "vendor_id" => self.vendor_id = text(v, 8)?,
            "product_id" => self.product_id = text(v, 16)?,
            "product_rev" => self.product_rev = text(v, 4)?,
            "scsi_id" => self.scsi_id = text(v, 200)?,
            "scsi_sn" => self.scsi_sn = text(v, 200)?,
            "removable" => self.removable = flag(v)?,
            "readonly" => self.readonly = flag(v)?,
            "thin_provisioning" => self.thin_provisioning = flag(v)?,
            "online" => self.online = flag(v)?,
            "sense_format" => {
                self.sense_format = if flag(v)? {
                    SenseFormat::Descriptor
                } else {
                    SenseFormat::Fixed
                }
            }
            "blocksize" | "block_size" => {
                self.block_size = match v {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(format!("{k}: expected 512 or 4096, got {v:?}")),
                }
            }
            "write_cache" => self.write_cache = flag(v)?,
            _ => return Err(format!("unknown logical unit parameter {k:?}")),
        }
        Ok(())
    }
}

/// Why a command did not complete with GOOD.
#[derive(Debug)]
pub(crate) enum Fail {
    Check(Sense),
    Conflict,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Fail {
        Fail::Check(s)
    }
}

type Res<T> = Result<T, Fail>;

/// Mutable state shared by all nexuses, behind one short-held lock.
#[derive(Default)]
struct State {
    /// Nexuses that have seen the LU since it was created or last reset.
    known: HashSet<Nexus>,
    uas: HashMap<Nexus, VecDeque<(u8, u8)>>,
    pr: PrState,
    /// SPC-2 RESERVE holder.
    spc2: Option<Nexus>,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT=1.
    prevent: HashSet<Nexus>,
}

impl State {
    fn post(&mut self, n: &Nexus, code: (u8, u8)) {
        if !self.known.contains(n) {
            return; // it will see POWER ON first, which covers everything
        }
        let q = self.uas.entry(n.clone()).or_default();
        if q.len() < MAX_UAS && !q.contains(&code) {
            q.push_back(code);
        }
    }

    fn post_all(&mut self, except: Option<&Nexus>, code: (u8, u8)) {
        let all: Vec<Nexus> = self.known.iter().filter(|n| Some(*n) != except).cloned().collect();
        for n in all {
            self.post(&n, code);
        }
    }
}

/// A lock over block ranges: shared holders (writes) overlap freely, an exclusive holder
/// (COMPARE AND WRITE) excludes every overlapping holder.
struct RangeLock {
    held: Mutex<Vec<(u64, u64, bool, u64)>>,
    notify: tokio::sync::Notify,
    waiters: AtomicUsize,
    next: AtomicU64,
}

struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    fn new() -> RangeLock {
        RangeLock {
            held: Mutex::new(Vec::new()),
            notify: tokio::sync::Notify::new(),
            waiters: AtomicUsize::new(0),
            next: AtomicU64::new(0),
        }
    }

    fn try_take(&self, start: u64, end: u64, excl: bool) -> Option<RangeGuard<'_>> {
        let mut held = self.held.lock().expect("range lock");
        if held.iter().any(|&(s, e, x, _)| s < end && start < e && (excl || x)) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        held.push((start, end, excl, id));
        Some(RangeGuard { lock: self, id })
    }

    async fn lock(&self, start: u64, end: u64, excl: bool) -> RangeGuard<'_> {
        if let Some(g) = self.try_take(start, end, excl) {
            return g;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(g) = self.try_take(start, end, excl) {
                break g;
            }
            notified.await;
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        g
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.lock.held.lock().expect("range lock").retain(|h| h.3 != self.id);
        if self.lock.waiters.load(Ordering::SeqCst) > 0 {
            self.lock.notify.notify_waiters();
        }
    }
}

/// A logical unit over a block device `D`.
pub struct LogicalUnit<D: BlockDevice> {
    dev: D,
    params: RwLock<Arc<LuParams>>,
    state: RwLock<State>,
    mode: Mutex<ModeState>,
    wce: AtomicBool,
    d_sense: AtomicBool,
    /// A removable medium ejected by START STOP UNIT.
    ejected: AtomicBool,
    swp: AtomicBool,
    blocks_seen: AtomicU64,
    ranges: RangeLock,
    aptpl_path: Option<PathBuf>,
    /// Serializes APTPL file writes so the newest state is the one left on disk.
    persist: tokio::sync::Mutex<()>,
    aborts: Mutex<Vec<Nexus>>,
}

/// Everything a command handler needs besides the LU.
struct Ctx<'a> {
    p: &'a LuParams,
    cdb: &'a [u8],
    nexus: &'a Nexus,
    data_out: Option<IoBuf>,
    bs: u64,
    blocks: u64,
}

/// The bytes a WRITE or WRITE AND VERIFY CDB transfers (None for other commands).
fn write_transfer_len(cdb: &[u8], block_size: u32) -> Option<u32> {
    let blocks = match (cdb.first()?, cdb.len()) {
        (&op::WRITE_6, 6..) => match cdb[4] {
            0 => 256,
            n => n as u32,
        },
        (&(op::WRITE_10 | op::WRITE_VERIFY_10), 10..) => be16(cdb, 7) as u32,
        (&(op::WRITE_12 | op::WRITE_VERIFY_12), 12..) => be32(cdb, 6),
        (&(op::WRITE_16 | op::WRITE_VERIFY_16), 16..) => be32(cdb, 10),
        _ => return None,
    };
    Some(blocks.saturating_mul(block_size))
}

fn good(data: Option<IoBuf>) -> ScsiOutcome {
    ScsiOutcome {
        status: status::GOOD,
        sense: Vec::new(),
        data_in: data,
        write_len: None,
    }
}

/// Data for the initiator, cut to the allocation length.
fn reply(mut d: Vec<u8>, alloc: usize) -> Option<IoBuf> {
    d.truncate(alloc);
    if d.is_empty() {
        None
    } else {
        Some(IoBuf::copy_from(&d))
    }
}

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(n).collect();
    v.resize(n, b' ');
    v
}

fn out_of_range() -> Fail {
    Fail::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE))
}

fn write_protected() -> Fail {
    Fail::Check(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED))
}

fn standby() -> Fail {
    Fail::Check(Sense::new(key::NOT_READY, asc::LU_NOT_READY_STANDBY))
}

/// Maps a device error to sense: a resource that lost Primary (EPERM) is standby, a full
/// thin store is SPACE ALLOCATION FAILED, anything else a medium error at `lba`.
fn io_fail(e: io::Error, write: bool, lba: u64) -> Fail {
    tracing::debug!("SCSI I/O error at LBA {lba}: {e}");
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EROFS) => standby(),
        Some(libc::ENOSPC) if write => Fail::Check(Sense::new(key::DATA_PROTECT, asc::SPACE_ALLOCATION_FAILED)),
        _ => {
            let code = if write {
                asc::WRITE_ERROR
            } else {
                asc::UNRECOVERED_READ_ERROR
            };
            Fail::Check(Sense::new(key::MEDIUM_ERROR, code).with_information(lba))
        }
    }
}

/// Checks the CDB against the usage mask: any bit set that this server does not look at
/// is an INVALID FIELD IN CDB pointing at it. NACA in the control byte is refused too.
fn check_reserved(cdb: &[u8], info: &CmdInfo) -> Res<()> {
    let n = info.usage.len();
    for (i, &mask) in info.usage.iter().enumerate().take(n - 1).skip(1) {
        let bad = cdb[i] & !mask;
        if bad != 0 {
            return Err(Sense::invalid_cdb(i as u16, Some(7 - bad.leading_zeros() as u8)).into());
        }
    }
    if cdb[n - 1] & 0x04 != 0 {
        return Err(Sense::invalid_cdb((n - 1) as u16, Some(2)).into());
    }
    Ok(())
}

impl<D: BlockDevice> LogicalUnit<D> {
    /// A logical unit over `dev`. Every nexus sees POWER ON first.
    pub fn new(dev: D, params: LuParams) -> LogicalUnit<D> {
        let m = ModeState {
            wce: params.write_cache,
            d_sense: params.sense_format == SenseFormat::Descriptor,
            swp: false,
        };
        let blocks = dev.size() / params.block_size as u64;
        LogicalUnit {
            dev,
            wce: AtomicBool::new(m.wce),
            d_sense: AtomicBool::new(m.d_sense),
            ejected: AtomicBool::new(false),
            swp: AtomicBool::new(false),
            mode: Mutex::new(m),
            params: RwLock::new(Arc::new(params)),
            state: RwLock::new(State::default()),
            blocks_seen: AtomicU64::new(blocks),
            ranges: RangeLock::new(),
            aptpl_path: None,
            persist: tokio::sync::Mutex::new(()),
            aborts: Mutex::new(Vec::new()),
        }
    }

    /// Keeps persistent reservations with APTPL in `path`, loading what it holds now. A missing
    /// file is an empty state; a damaged one is an error (the owner decides what to do).
    pub fn with_aptpl(mut self, path: &Path) -> io::Result<LogicalUnit<D>> {
        match std::fs::read(path) {
            Ok(b) => {
                let pr = PrState::decode(&b)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
                if pr.aptpl {
                    self.state.get_mut().expect("state").pr = pr;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.aptpl_path = Some(path.to_path_buf());
        Ok(self)
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn params(&self) -> Arc<LuParams> {
        self.params.read().expect("params").clone()
    }

    /// Replaces the settings (`--op update`); a new block size shows as changed capacity.
    pub fn set_params(&self, p: LuParams) {
        *self.params.write().expect("params") = Arc::new(p);
    }

    /// A copy of the persistent reservation state (for `--op show` and tests).
    pub fn pr_state(&self) -> PrState {
        self.state.read().expect("state").pr.clone()
    }

    /// Nexuses whose tasks a PREEMPT AND ABORT asked to abort since the last call; the
    /// session aborts their tasks on this LU (with TASK ABORTED where TAS says so).
    pub fn take_aborts(&self) -> Vec<Nexus> {
        std::mem::take(&mut *self.aborts.lock().expect("aborts"))
    }

    /// LOGICAL UNIT RESET (task management): drops the SPC-2 reservation, and every
    /// nexus but `by` sees POWER ON / RESET next. Persistent reservations survive.
    pub fn lun_reset(&self, by: Option<&Nexus>) {
        let mut st = self.state.write().expect("state");
        st.spc2 = None;
        st.prevent.clear();
        st.known.clear();
        st.uas.clear();
        if let Some(n) = by {
            st.known.insert(n.clone());
        }
    }

    /// I_T nexus loss (session gone): an SPC-2 reservation it held is released.
    pub fn nexus_lost(&self, n: &Nexus) {
        let mut st = self.state.write().expect("state");
        if st.spc2.as_ref() == Some(n) {
            st.spc2 = None;
        }
        st.prevent.remove(n);
        st.known.remove(n);
        st.uas.remove(n);
    }

    /// Tells every nexus that has seen this LU that the LUN inventory changed.
    pub fn luns_changed(&self) {
        self.state
            .write()
            .expect("state")
            .post_all(None, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    }

    /// Drops a pending unit attention `code` of nexus `n`, if any.
    pub fn clear_unit_attention(&self, n: &Nexus, code: (u8, u8)) {
        if let Some(q) = self.state.write().expect("state").uas.get_mut(n) {
            q.retain(|c| *c != code);
        }
    }

    /// Establishes a unit attention for one nexus (for owners with their own events).
    pub fn post_unit_attention(&self, n: &Nexus, code: (u8, u8)) {
        self.state.write().expect("state").post(n, code);
    }

    fn sense_format(&self, p: &LuParams) -> SenseFormat {
        if self.d_sense.load(Ordering::Relaxed) || p.sense_format == SenseFormat::Descriptor {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        }
    }

    /// Executes one command.
    pub async fn execute(&self, task: ScsiTask) -> ScsiOutcome {
        let p = self.params();
        let write_len = write_transfer_len(&task.cdb, p.block_size);
        let mut out = match self.run(&p, task).await {
            Ok(data) => good(data),
            Err(Fail::Conflict) => ScsiOutcome {
                status: status::RESERVATION_CONFLICT,
                sense: Vec::new(),
                data_in: None,
                write_len: None,
            },
            Err(Fail::Check(s)) => ScsiOutcome {
                status: status::CHECK_CONDITION,
                sense: s.encode(self.sense_format(&p)),
                data_in: None,
                write_len: None,
            },
        };
        out.write_len = write_len;
        out
    }

    /// Pending unit attention for `n` (establishing POWER ON for a new nexus); `consume`
    /// removes it from the queue.
    fn unit_attention(&self, n: &Nexus, consume: bool) -> Option<(u8, u8)> {
        {
            let st = self.state.read().expect("state");
            if st.known.contains(n) && st.uas.get(n).is_none_or(|q| q.is_empty()) {
                return None;
            }
        }
        let mut st = self.state.write().expect("state");
        if st.known.insert(n.clone()) {
            let q = st.uas.entry(n.clone()).or_default();
            q.clear();
            q.push_back(asc::POWER_ON_RESET);
        }
        let q = st.uas.get_mut(n)?;
        if consume {
            q.pop_front()
        } else {
            q.front().copied()
        }
    }

    fn check_capacity(&self, blocks: u64) {
        if self.blocks_seen.swap(blocks, Ordering::Relaxed) != blocks {
            self.state
                .write()
                .expect("state")
                .post_all(None, asc::CAPACITY_DATA_HAS_CHANGED);
        }
    }

    async fn run(&self, p: &LuParams, task: ScsiTask) -> Res<Option<IoBuf>> {
        let cdb = &task.cdb[..];
        let info = match lookup(cdb) {
            Ok(i) => i,
            Err(true) => return Err(Sense::invalid_cdb(1, Some(4)).into()),
            Err(false) => return Err(Sense::illegal(asc::INVALID_OPCODE).into()),
        };
        if cdb.len() < info.usage.len() {
            return Err(Sense::invalid_cdb(0, None).into());
        }
        let cdb = &cdb[..info.usage.len()];
        check_reserved(cdb, info)?;
        let bs = p.block_size as u64;
        let blocks = self.dev.size() / bs;
        self.check_capacity(blocks);

        // Common case in one shared lock: a known nexus, nothing pending, nothing reserved.
        let quiet = {
            let st = self.state.read().expect("state");
            st.spc2.is_none()
                && st.pr.res.is_none()
                && st.known.contains(&task.nexus)
                && st.uas.get(&task.nexus).is_none_or(|q| q.is_empty())
        };
        if !quiet {
            if !info.ua_exempt {
                if let Some(code) = self.unit_attention(&task.nexus, true) {
                    return Err(Sense::new(key::UNIT_ATTENTION, code).into());
                }
            }
            self.check_reservation(&task.nexus, info)?;
        }
        let no_medium = !p.online || self.ejected.load(Ordering::Relaxed);
        if no_medium && (info.medium || matches!(cdb[0], op::READ_CAPACITY_10 | op::SERVICE_ACTION_IN_16)) {
            return Err(Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT).into());
        }
        if info.medium && self.dev.read_only() {
            return Err(standby());
        }
        let mut c = Ctx {
            p,
            cdb,
            nexus: &task.nexus,
            data_out: task.data_out,
            bs,
            blocks,
        };
        match cdb[0] {
            op::TEST_UNIT_READY => Ok(None),
            op::REQUEST_SENSE => Ok(self.request_sense(&c)),
            op::INQUIRY => self.inquiry(&c),
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => self.read(&c).await,
            op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_VERIFY_10
            | op::WRITE_VERIFY_12
            | op::WRITE_VERIFY_16 => self.write(&mut c).await,
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(&mut c).await,
            op::SYNC_CACHE_10 | op::SYNC_CACHE_16 => self.sync_cache(&c).await,
            op::READ_CAPACITY_10 => self.read_capacity_10(&c),
            op::SERVICE_ACTION_IN_16 if cdb[1] & 0x1f == sa::READ_CAPACITY_16 as u8 => self.read_capacity_16(&c),
            op::SERVICE_ACTION_IN_16 => self.get_lba_status(&c),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(&c),
            op::MODE_SELECT_6 | op::MODE_SELECT_10 => self.mode_select(&mut c),
            op::START_STOP_UNIT => self.start_stop(&c),
            op::PREVENT_ALLOW => {
                let mut st = self.state.write().expect("state");
                if c.cdb[4] & 0x03 == 0x01 {
                    st.prevent.insert(c.nexus.clone());
                } else {
                    st.prevent.remove(c.nexus);
                }
                Ok(None)
            }
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(&mut c).await,
            op::UNMAP => self.unmap(&mut c).await,
            op::COMPARE_AND_WRITE => self.compare_and_write(&mut c).await,
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
                // Nothing to stage: the range is checked and the command succeeds (SBC-3
                // allows GOOD when the blocks are not held in a cache).
                let (lba, n) = if c.cdb[0] == op::PRE_FETCH_10 {
                    (be32(c.cdb, 2) as u64, be16(c.cdb, 7) as u64)
                } else {
                    (be64(c.cdb, 2), be32(c.cdb, 10) as u64)
                };
                Self::check_range(&c, lba, n)?;
                Ok(None)
            }
            op::ORWRITE_16 => self.or_write(&mut c).await,
            op::MAINTENANCE_IN => report_supported_opcodes(cdb),
            op::RESERVE_6 | op::RESERVE_10 => {
                let mut st = self.state.write().expect("state");
                match &st.spc2 {
                    Some(h) if h != c.nexus => Err(Fail::Conflict),
                    _ => {
                        st.spc2 = Some(c.nexus.clone());
                        Ok(None)
                    }
                }
            }
            op::RELEASE_6 | op::RELEASE_10 => {
                let mut st = self.state.write().expect("state");
                if st.spc2.as_ref() == Some(c.nexus) {
                    st.spc2 = None;
                }
                Ok(None)
            }
            op::PR_IN => self.pr_in(&c),
            op::PR_OUT => self.pr_out(&mut c).await,
            op::REPORT_LUNS => Err(Sense::illegal(asc::INVALID_OPCODE).into()), // answered by Luns
            _ => Err(Sense::illegal(asc::INVALID_OPCODE).into()),
        }
    }

    fn check_reservation(&self, n: &Nexus, info: &CmdInfo) -> Res<()> {
        if info.ua_exempt {
            return Ok(());
        }
        let st = self.state.read().expect("state");
        if let Some(h) = &st.spc2 {
            if h != n && !info.spc2_ok {
                return Err(Fail::Conflict);
            }
            return Ok(());
        }
        if st.pr.allows(n, info.access) {
            Ok(())
        } else {
            Err(Fail::Conflict)
        }
    }

    // ---- helpers -------------------------------------------------------------------

    /// LBA and transfer length of a READ/WRITE/VERIFY-shaped CDB, with the byte of the length field.
    fn lba_len(cdb: &[u8]) -> (u64, u32, u16) {
        match cdb.len() {
            6 => {
                let n = cdb[4] as u32;
                (be24(cdb, 1) as u64 & 0x1f_ffff, if n == 0 { 256 } else { n }, 4)
            }
            10 => (be32(cdb, 2) as u64, be16(cdb, 7) as u32, 7),
            12 => (be32(cdb, 2) as u64, be32(cdb, 6), 6),
            _ => (be64(cdb, 2), be32(cdb, 10), 10),
        }
    }

    fn check_range(c: &Ctx, lba: u64, n: u64) -> Res<()> {
        match lba.checked_add(n) {
            Some(end) if end <= c.blocks => Ok(()),
            _ => Err(out_of_range()),
        }
    }

    /// The first `need` bytes of the Data-Out buffer. Fewer (the initiator's expected
    /// transfer length is shorter than the CDB asks for) transfers nothing and fails with
    /// INVALID FIELD IN COMMAND INFORMATION UNIT (SAM-5 5.4.3, choice b); the session reports
    /// the residual.
    fn take_data(c: &mut Ctx, need: usize, _at: u16) -> Res<IoBuf> {
        match c.data_out.take() {
            Some(mut b) if b.len() >= need => {
                b.set_len(need);
                Ok(b)
            }
            _ => Err(Sense::illegal(asc::INVALID_FIELD_IN_COMMAND_IU).into()),
        }
    }

    fn max_transfer_blocks(&self, c: &Ctx) -> u64 {
        (self.dev.block_sizes().maximum as u64 / c.bs).max(1)
    }

    // ---- SPC -----------------------------------------------------------------------

    fn request_sense(&self, c: &Ctx) -> Option<IoBuf> {
        let fmt = if c.cdb[1] & 0x01 != 0 {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        };
        let s = if let Some(code) = self.unit_attention(c.nexus, true) {
            Sense::new(key::UNIT_ATTENTION, code)
        } else if c.p.online && self.dev.read_only() {
            Sense::new(key::NOT_READY, asc::LU_NOT_READY_STANDBY)
        } else {
            Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL)
        };
        reply(s.encode(fmt), c.cdb[4] as usize)
    }

    fn inquiry(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let alloc = be16(c.cdb, 3) as usize;
        let page = c.cdb[2];
        if c.cdb[1] & 0x01 == 0 {
            if page != 0 {
                return Err(Sense::invalid_cdb(2, None).into());
            }
            return Ok(reply(standard_inquiry(c.p, 0x00), alloc));
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x80 => c.p.scsi_sn.as_bytes().to_vec(),
            0x83 => designators(c.p),
            0xb0 => self.block_limits(c),
            0xb1 => {
                let mut b = vec![0u8; 0x3c];
                b[1] = 0x01; // MEDIUM ROTATION RATE: non-rotating
                b
            }
            0xb2 => {
                let mut b = vec![0u8; 4];
                if c.p.thin_provisioning {
                    b[1] = 0x80 | 0x40 | 0x20; // LBPU, LBPWS, LBPWS10
                    b[2] = 0x02; // thin provisioned
                }
                b
            }
            _ => return Err(Sense::invalid_cdb(2, None).into()),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(reply(d, alloc))
    }

    fn block_limits(&self, c: &Ctx) -> Vec<u8> {
        let mut b = vec![0u8; 0x3c];
        let sizes = self.dev.block_sizes();
        b[0] = 0x00; // WSNZ 0: WRITE SAME with 0 blocks writes to the end of the medium
        b[1] = c.p.max_compare_and_write_blocks;
        let gran = (sizes.preferred as u64 / c.bs).max(1) as u16;
        b[2..4].copy_from_slice(&gran.to_be_bytes());
        let max = self.max_transfer_blocks(c) as u32;
        b[4..8].copy_from_slice(&max.to_be_bytes());
        b[8..12].copy_from_slice(&max.to_be_bytes());
        if c.p.thin_provisioning {
            b[16..20].copy_from_slice(&c.p.max_unmap_blocks.to_be_bytes());
            b[20..24].copy_from_slice(&c.p.max_unmap_descriptors.to_be_bytes());
            let ug = (4096 / c.bs).max(1) as u32;
            b[24..28].copy_from_slice(&ug.to_be_bytes());
            b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
        }
        b[32..40].copy_from_slice(&(c.p.max_write_same_blocks as u64).to_be_bytes());
        b
    }

    /// The LU's `readonly` setting or SWP in the control page.
    fn write_protect(&self, p: &LuParams) -> bool {
        p.readonly || self.swp.load(Ordering::Relaxed)
    }

    fn mode_state(&self) -> ModeState {
        *self.mode.lock().expect("mode")
    }

    fn mode_sense(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let ten = c.cdb[0] == op::MODE_SENSE_10;
        let dbd = c.cdb[1] & 0x08 != 0;
        let llbaa = ten && c.cdb[1] & 0x10 != 0;
        let pc = match c.cdb[2] >> 6 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED).into()),
        };
        let code = c.cdb[2] & 0x3f;
        let sub = c.cdb[3];
        let alloc = if ten {
            be16(c.cdb, 7) as usize
        } else {
            c.cdb[4] as usize
        };
        let cur = self.mode_state();
        let dflt = ModeState {
            wce: c.p.write_cache,
            d_sense: c.p.sense_format == SenseFormat::Descriptor,
            swp: false,
        };
        if sub != 0 && sub != 0xff {
            return Err(Sense::invalid_cdb(3, None).into());
        }
        let mut body = Vec::new();
        if code == mode::ALL_PAGES {
            for pg in mode::PAGES {
                body.extend(mode::page(pg, pc, cur, dflt).expect("served page"));
            }
        } else {
            body = mode::page(code, pc, cur, dflt).ok_or(Sense::invalid_cdb(2, Some(5)))?;
        }
        let wp = self.write_protect(c.p) || self.dev.read_only();
        let dsp = if wp { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
        let mut bd = Vec::new();
        if !dbd {
            if llbaa {
                bd.extend_from_slice(&c.blocks.to_be_bytes());
                bd.extend_from_slice(&[0, 0, 0, 0]);
                bd.extend_from_slice(&(c.bs as u32).to_be_bytes());
            } else {
                let n = c.blocks.min(0xff_ffff) as u32;
                bd.push(0);
                bd.extend_from_slice(&n.to_be_bytes()[1..]);
                bd.push(0);
                bd.extend_from_slice(&(c.bs as u32).to_be_bytes()[1..]);
            }
        }
        let mut d = Vec::new();
        if ten {
            let len = 6 + bd.len() + body.len();
            d.extend_from_slice(&(len as u16).to_be_bytes());
            d.extend_from_slice(&[0, dsp, if llbaa && !dbd { 1 } else { 0 }, 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            let len = 3 + bd.len() + body.len();
            d.extend_from_slice(&[len.min(255) as u8, 0, dsp, bd.len() as u8]);
        }
        d.extend(bd);
        d.extend(body);
        Ok(reply(d, alloc))
    }

    fn mode_select(&self, c: &mut Ctx) -> Res<Option<IoBuf>> {
        let ten = c.cdb[0] == op::MODE_SELECT_10;
        if c.cdb[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)).into());
        }
        let (len, at) = if ten {
            (be16(c.cdb, 7) as usize, 7)
        } else {
            (c.cdb[4] as usize, 4)
        };
        if len == 0 {
            return Ok(None);
        }
        let d = Self::take_data(c, len, at)?;
        let plerr = || Fail::Check(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        let hdr = if ten { 8 } else { 4 };
        if len < hdr {
            return Err(plerr());
        }
        let bdlen = if ten { be16(&d, 6) as usize } else { d[3] as usize };
        let mut i = hdr + bdlen;
        if i > len {
            return Err(plerr());
        }
        if bdlen != 0 {
            let long = ten && d[4] & 0x01 != 0;
            let (want, blen) = if long {
                (16, if bdlen >= 16 { be32(&d, hdr + 12) } else { 0 })
            } else {
                (8, if bdlen >= 8 { be24(&d, hdr + 5) } else { 0 })
            };
            if bdlen != want {
                return Err(Sense::invalid_param(if ten { 6 } else { 3 } as u16, None).into());
            }
            if blen != 0 && blen as u64 != c.bs {
                return Err(Sense::invalid_param((hdr + want - 3) as u16, None).into());
            }
        }
        let mut st = self.mode_state();
        while i < len {
            if i + 2 > len {
                return Err(plerr());
            }
            if d[i] & 0x40 != 0 {
                return Err(Sense::invalid_param(i as u16, Some(6)).into());
            }
            let end = i + 2 + d[i + 1] as usize;
            if end > len {
                return Err(plerr());
            }
            let mut pg = d[i..end].to_vec();
            pg[0] &= 0x3f; // PS is reserved in MODE SELECT
            st = mode::select(&pg, st).map_err(|b| Sense::invalid_param((i + b) as u16, None))?;
            i = end;
        }
        let changed = {
            let mut m = self.mode.lock().expect("mode");
            let changed = *m != st;
            *m = st;
            changed
        };
        self.wce.store(st.wce, Ordering::Relaxed);
        self.d_sense.store(st.d_sense, Ordering::Relaxed);
        self.swp.store(st.swp, Ordering::Relaxed);
        if changed {
            self.state
                .write()
                .expect("state")
                .post_all(Some(c.nexus), asc::MODE_PARAMETERS_CHANGED);
        }
        Ok(None)
    }

    // ---- SBC -----------------------------------------------------------------------

    /// START STOP UNIT: on a removable LU, LOEJ ejects (START=0) or loads (START=1) the
    /// medium unless some nexus prevents removal. Power conditions are accepted and ignored.
    fn start_stop(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let (power, loej, start) = (c.cdb[4] >> 4, c.cdb[4] & 0x02 != 0, c.cdb[4] & 0x01 != 0);
        if power != 0 || !loej || !c.p.removable {
            return Ok(None);
        }
        if !self.state.read().expect("state").prevent.is_empty() {
            return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED).into());
        }
        self.ejected.store(!start, Ordering::Relaxed);
        Ok(None)
    }

    fn read_capacity_10(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        if c.cdb[8] & 0x01 == 0 && be32(c.cdb, 2) != 0 {
            return Err(Sense::invalid_cdb(2, None).into());
        }
        let last = c.blocks.saturating_sub(1).min(0xffff_ffff) as u32;
        let mut d = last.to_be_bytes().to_vec();
        d.extend_from_slice(&(c.bs as u32).to_be_bytes());
        Ok(reply(d, 8))
    }

    fn read_capacity_16(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let alloc = be32(c.cdb, 10) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&c.blocks.saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(c.bs as u32).to_be_bytes());
        let phys = self.dev.block_sizes().minimum.max(self.dev.block_sizes().preferred) as u64;
        if phys > c.bs && phys.is_power_of_two() {
            d[13] = (phys / c.bs).trailing_zeros() as u8;
        }
        if c.p.thin_provisioning {
            d[14] = 0x80; // LBPME
        }
        Ok(reply(d, alloc))
    }

    fn get_lba_status(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let lba = be64(c.cdb, 2);
        let alloc = be32(c.cdb, 10) as usize;
        if lba >= c.blocks {
            return Err(out_of_range());
        }
        let mut d = vec![0u8; 24];
        d[0..4].copy_from_slice(&20u32.to_be_bytes());
        d[8..16].copy_from_slice(&lba.to_be_bytes());
        d[16..20].copy_from_slice(&((c.blocks - lba).min(u32::MAX as u64) as u32).to_be_bytes());
        // Provisioning status 0: mapped (every block reads back as stored).
        Ok(reply(d, alloc))
    }

    async fn read(&self, c: &Ctx<'_>) -> Res<Option<IoBuf>> {
        let (lba, n, at) = Self::lba_len(c.cdb);
        if n as u64 > self.max_transfer_blocks(c) {
            return Err(Sense::invalid_cdb(at, None).into());
        }
        Self::check_range(c, lba, n as u64)?;
        if n == 0 {
            return Ok(None);
        }
        let buf = self
            .dev
            .read(lba * c.bs, n * c.bs as u32)
            .await
            .map_err(|e| io_fail(e, false, lba))?;
        Ok(Some(buf))
    }

    async fn write(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let (lba, n, at) = Self::lba_len(c.cdb);
        if n as u64 > self.max_transfer_blocks(c) {
            return Err(Sense::invalid_cdb(at, None).into());
        }
        Self::check_range(c, lba, n as u64)?;
        if self.write_protect(c.p) {
            return Err(write_protected());
        }
        // ExpectedDataTransferLength below the CDB's length: write only the whole blocks
        // that came (the session reports the rest as overflow residual), as tgt and LIO do.
        let sent = c.data_out.as_ref().map_or(0, |d| d.len() as u64);
        let n = n.min((sent / c.bs) as u32);
        if n == 0 {
            return Ok(None);
        }
        let data = Self::take_data(c, (n as u64 * c.bs) as usize, at)?;
        let fua = (c.cdb.len() > 6 && c.cdb[1] & 0x08 != 0) || !self.wce.load(Ordering::Relaxed);
        let _g = self.ranges.lock(lba, lba + n as u64, false).await;
        self.dev
            .write(lba * c.bs, data, fua)
            .await
            .map_err(|e| io_fail(e, true, lba))?;
        Ok(None)
    }

    async fn verify(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let (lba, n, at) = Self::lba_len(c.cdb);
        let bytchk = (c.cdb[1] >> 1) & 0x03;
        if bytchk == 2 {
            return Err(Sense::invalid_cdb(1, Some(2)).into());
        }
        if bytchk != 0 && n as u64 > self.max_transfer_blocks(c) {
            return Err(Sense::invalid_cdb(at, None).into());
        }
        Self::check_range(c, lba, n as u64)?;
        if n == 0 || bytchk == 0 {
            return Ok(None);
        }
        let bs = c.bs as usize;
        let want = Self::take_data(c, if bytchk == 1 { n as usize * bs } else { bs }, at)?;
        let have = self
            .dev
            .read(lba * c.bs, n * c.bs as u32)
            .await
            .map_err(|e| io_fail(e, false, lba))?;
        let mismatch = if bytchk == 1 {
            first_difference(&want, &have)
        } else {
            have.chunks(bs)
                .enumerate()
                .find_map(|(i, blk)| first_difference(&want, blk).map(|o| i * bs + o))
        };
        match mismatch {
            None => Ok(None),
            Some(o) => Err(miscompare(o)),
        }
    }

    async fn sync_cache(&self, c: &Ctx<'_>) -> Res<Option<IoBuf>> {
        let (lba, n) = if c.cdb[0] == op::SYNC_CACHE_10 {
            (be32(c.cdb, 2) as u64, be16(c.cdb, 7) as u64)
        } else {
            (be64(c.cdb, 2), be32(c.cdb, 10) as u64)
        };
        Self::check_range(c, lba, n)?;
        self.dev.flush().await.map_err(|e| io_fail(e, true, lba))?;
        Ok(None)
    }

    async fn write_same(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let ten = c.cdb[0] == op::WRITE_SAME_10;
        let (lba, n, at) = if ten {
            (be32(c.cdb, 2) as u64, be16(c.cdb, 7) as u64, 7)
        } else {
            (be64(c.cdb, 2), be32(c.cdb, 10) as u64, 10)
        };
        let unmap = c.cdb[1] & 0x08 != 0;
        let ndob = !ten && c.cdb[1] & 0x01 != 0;
        if unmap && !c.p.thin_provisioning {
            return Err(Sense::invalid_cdb(1, Some(3)).into());
        }
        // WSNZ is 0 (as tgt): zero blocks means up to the end of the medium.
        let n = if n == 0 { c.blocks.saturating_sub(lba) } else { n };
        Self::check_range(c, lba, n)?;
        if n == 0 || n > c.p.max_write_same_blocks as u64 {
            return Err(Sense::invalid_cdb(at, None).into());
        }
        if self.write_protect(c.p) {
            return Err(write_protected());
        }
        let block = if ndob {
            None
        } else {
            Some(Self::take_data(c, c.bs as usize, at)?)
        };
        let fua = !self.wce.load(Ordering::Relaxed);
        let zero = block.as_ref().is_none_or(|b| b.iter().all(|&x| x == 0));
        let _g = self.ranges.lock(lba, lba + n, false).await;
        let (start, end) = (lba * c.bs, (lba + n) * c.bs);
        if zero {
            let mut at = start;
            while at < end {
                let len = (end - at).min(TRIM_CHUNK);
                self.dev
                    .write_zeroes(at, len as u32, fua, unmap)
                    .await
                    .map_err(|e| io_fail(e, true, at / c.bs))?;
                at += len;
            }
            return Ok(None);
        }
        let block = block.expect("pattern");
        let per = (FILL_CHUNK / c.bs).max(1);
        let mut at = lba;
        while at < lba + n {
            let k = (lba + n - at).min(per);
            let mut buf = IoBuf::uninit((k * c.bs) as usize);
            for chunk in buf.chunks_mut(c.bs as usize) {
                chunk.copy_from_slice(&block);
            }
            self.dev
                .write(at * c.bs, buf, fua)
                .await
                .map_err(|e| io_fail(e, true, at))?;
            at += k;
        }
        Ok(None)
    }

    async fn unmap(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        if !c.p.thin_provisioning {
            return Err(Sense::illegal(asc::INVALID_OPCODE).into());
        }
        let len = be16(c.cdb, 7) as usize;
        if len == 0 {
            return Ok(None);
        }
        if self.write_protect(c.p) {
            return Err(write_protected());
        }
        let plerr = || Fail::Check(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        if len < 8 {
            return Err(plerr());
        }
        let d = Self::take_data(c, len, 7)?;
        let bdl = be16(&d, 2) as usize;
        if bdl > len - 8 {
            return Err(plerr());
        }
        let count = bdl / 16;
        if count > c.p.max_unmap_descriptors as usize {
            return Err(Sense::invalid_param(2, None).into());
        }
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let at = 8 + 16 * i;
            let (lba, n) = (be64(&d, at), be32(&d, at + 8) as u64);
            if n > c.p.max_unmap_blocks as u64 {
                return Err(Sense::invalid_param((at + 8) as u16, None).into());
            }
            Self::check_range(c, lba, n)?;
            ranges.push((lba, n));
        }
        let fua = !self.wce.load(Ordering::Relaxed);
        for (lba, n) in ranges {
            if n == 0 {
                continue;
            }
            let _g = self.ranges.lock(lba, lba + n, false).await;
            let (mut at, end) = (lba * c.bs, (lba + n) * c.bs);
            while at < end {
                let len = (end - at).min(TRIM_CHUNK);
                self.dev
                    .trim(at, len as u32, fua)
                    .await
                    .map_err(|e| io_fail(e, true, at / c.bs))?;
                at += len;
            }
        }
        Ok(None)
    }

    async fn compare_and_write(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let lba = be64(c.cdb, 2);
        let n = c.cdb[13] as u64;
        if n > c.p.max_compare_and_write_blocks as u64 {
            return Err(Sense::invalid_cdb(13, None).into());
        }
        Self::check_range(c, lba, n)?;
        if self.write_protect(c.p) {
            return Err(write_protected());
        }
        if n == 0 {
            // No blocks but a Data-Out buffer: the initiator meant 256 blocks (the count is
            // one byte); transferring data with a zero count is an invalid CDB (libiscsi's
            // CompareAndWrite tests expect this, as LIO answers).
            if c.data_out.as_ref().is_some_and(|d| !d.is_empty()) {
                return Err(Sense::invalid_cdb(13, None).into());
            }
            return Ok(None);
        }
        let half = (n * c.bs) as usize;
        let data = Self::take_data(c, 2 * half, 13)?;
        let fua = c.cdb[1] & 0x08 != 0 || !self.wce.load(Ordering::Relaxed);
        let _g = self.ranges.lock(lba, lba + n, true).await;
        let have = self
            .dev
            .read(lba * c.bs, half as u32)
            .await
            .map_err(|e| io_fail(e, false, lba))?;
        if let Some(o) = first_difference(&data[..half], &have) {
            return Err(miscompare(o));
        }
        let new = IoBuf::copy_from(&data[half..]);
        self.dev
            .write(lba * c.bs, new, fua)
            .await
            .map_err(|e| io_fail(e, true, lba))?;
        Ok(None)
    }

    /// ORWRITE(16): each block becomes old OR new, atomically against other writers.
    async fn or_write(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let (lba, n) = (be64(c.cdb, 2), be32(c.cdb, 10) as u64);
        if n > self.max_transfer_blocks(c) {
            return Err(Sense::invalid_cdb(10, None).into());
        }
        Self::check_range(c, lba, n)?;
        if self.write_protect(c.p) {
            return Err(write_protected());
        }
        if n == 0 {
            return Ok(None);
        }
        let len = (n * c.bs) as usize;
        let data = Self::take_data(c, len, 10)?;
        let fua = c.cdb[1] & 0x08 != 0 || !self.wce.load(Ordering::Relaxed);
        let _g = self.ranges.lock(lba, lba + n, true).await;
        let old = self
            .dev
            .read(lba * c.bs, len as u32)
            .await
            .map_err(|e| io_fail(e, false, lba))?;
        let mut new = IoBuf::uninit(len);
        for ((o, a), b) in new.iter_mut().zip(old.iter()).zip(data.iter()) {
            *o = a | b;
        }
        self.dev
            .write(lba * c.bs, new, fua)
            .await
            .map_err(|e| io_fail(e, true, lba))?;
        Ok(None)
    }

    // ---- persistent reservations ------------------------------------------------------

    fn pr_in(&self, c: &Ctx) -> Res<Option<IoBuf>> {
        let alloc = be16(c.cdb, 7) as usize;
        let st = self.state.read().expect("state");
        let d = match c.cdb[1] & 0x1f {
            0 => st.pr.read_keys(),
            1 => st.pr.read_reservation(),
            2 => {
                let mut d = st.pr.report_capabilities();
                if self.aptpl_path.is_none() {
                    d[2] &= !0x01; // no PTPL_C without a place to persist
                }
                d
            }
            _ => st.pr.read_full_status(),
        };
        Ok(reply(d, alloc))
    }

    async fn pr_out(&self, c: &mut Ctx<'_>) -> Res<Option<IoBuf>> {
        let service = c.cdb[1] & 0x1f;
        if c.cdb[2] >> 4 != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)).into());
        }
        let len = be32(c.cdb, 5) as usize;
        if len != 24 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let d = Self::take_data(c, 24, 5)?;
        if d[20] & 0x08 != 0 {
            return Err(Sense::invalid_param(20, Some(3)).into());
        }
        if d[20] & 0x04 != 0 {
            return Err(Sense::invalid_param(20, Some(2)).into());
        }
        let aptpl = d[20] & 0x01 != 0;
        if aptpl && self.aptpl_path.is_none() {
            return Err(Sense::invalid_param(20, Some(0)).into());
        }
        let params = OutParams {
            key: be64(&d, 0),
            sa_key: be64(&d, 8),
            aptpl,
        };
        let _persist = self.persist.lock().await;
        let saved = {
            let mut st = self.state.write().expect("state");
            let was = st.pr.aptpl;
            let fx = st
                .pr
                .out(c.nexus, service, c.cdb[2] & 0x0f, &params)
                .map_err(|e| match e {
                    PrError::Conflict => Fail::Conflict,
                    PrError::Check(s) => Fail::Check(s),
                })?;
            for (n, code) in &fx.attentions {
                st.post(n, *code);
            }
            if !fx.aborted.is_empty() {
                self.aborts.lock().expect("aborts").extend(fx.aborted);
            }
            (was || st.pr.aptpl).then(|| st.pr.encode())
        };
        if let (Some(bytes), Some(path)) = (saved, &self.aptpl_path) {
            if let Err(e) = save_file(path, &bytes) {
                tracing::error!("{}: cannot save persistent reservations: {e}", path.display());
                return Err(Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE).into());
            }
        }
        Ok(None)
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn save_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn miscompare(offset: usize) -> Fail {
    Fail::Check(Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(offset as u64))
}

/// Standard INQUIRY data with peripheral byte `periph` (SPC-4 6.6.2).
pub(crate) fn standard_inquiry(p: &LuParams, periph: u8) -> Vec<u8> {
    let mut d = vec![0u8; 66];
    d[0] = periph;
    d[1] = if p.removable { 0x80 } else { 0 };
    d[2] = 0x06; // SPC-4
    d[3] = 0x02 | 0x10; // response data format 2, HISUP
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&pad(&p.vendor_id, 8));
    d[16..32].copy_from_slice(&pad(&p.product_id, 16));
    d[32..36].copy_from_slice(&pad(&p.product_rev, 4));
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// The NAA designator: the configured one, or a locally assigned (NAA 3) one derived from scsi_id.
pub(crate) fn naa(p: &LuParams) -> u64 {
    p.naa.unwrap_or_else(|| {
        let a = crc32c::crc32c(p.scsi_id.as_bytes()) as u64;
        let b = crc32c::crc32c_append(0x5a5a_5a5a, p.scsi_id.as_bytes()) as u64;
        (0x3 << 60) | (((a << 32) | b) & 0x0fff_ffff_ffff_ffff)
    })
}

/// VPD page 0x83 designators.
fn designators(p: &LuParams) -> Vec<u8> {
    let mut d = Vec::new();
    // NAA, binary, associated with the LU.
    d.extend_from_slice(&[0x01, 0x03, 0, 8]);
    d.extend_from_slice(&naa(p).to_be_bytes());
    // T10 vendor ID, ASCII: vendor (8) + scsi_id.
    let mut t10 = pad(&p.vendor_id, 8);
    t10.extend_from_slice(p.scsi_id.as_bytes());
    d.extend_from_slice(&[0x02, 0x01, 0, t10.len() as u8]);
    d.extend_from_slice(&t10);
    // Relative target port 1 (iSCSI, PIV, target port association).
    d.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    if let Some(name) = &p.target_port_name {
        let mut s = name.as_bytes().to_vec();
        s.push(0);
        while !s.len().is_multiple_of(4) {
            s.push(0);
        }
        if s.len() <= 252 {
            d.extend_from_slice(&[0x53, 0x98, 0, s.len() as u8]);
            d.extend_from_slice(&s);
        }
    }
    d
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
pub(crate) fn report_supported_opcodes(cdb: &[u8]) -> Res<Option<IoBuf>> {
    let rctd = cdb[2] & 0x80 != 0;
    let opts = cdb[2] & 0x07;
    let (rop, rsa) = (cdb[3], be16(cdb, 4));
    let alloc = be32(cdb, 6) as usize;
    let timeouts = [0u8, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let d = match opts {
        0 => {
            let mut body = Vec::new();
            for i in COMMANDS {
                let mut flags = 0;
                if i.sa.is_some() {
                    flags |= 0x01;
                }
                if rctd {
                    flags |= 0x02;
                }
                body.extend_from_slice(&[i.op, 0]);
                body.extend_from_slice(&i.sa.unwrap_or(0).to_be_bytes());
                body.extend_from_slice(&[0, flags]);
                body.extend_from_slice(&(i.usage.len() as u16).to_be_bytes());
                if rctd {
                    body.extend_from_slice(&timeouts);
                }
            }
            let mut d = (body.len() as u32).to_be_bytes().to_vec();
            d.extend(body);
            d
        }
        1..=3 => {
            let with_sa = cdb::has_service_action(rop);
            if (opts == 1 && with_sa) || (opts == 2 && !with_sa) {
                return Err(Sense::invalid_cdb(2, None).into());
            }
            let found = COMMANDS.iter().find(|i| i.op == rop && (!with_sa || i.sa == Some(rsa)));
            let mut d = vec![0u8, if rctd { 0x80 } else { 0 }];
            match found {
                Some(i) => {
                    d[1] |= 0x03;
                    d.extend_from_slice(&(i.usage.len() as u16).to_be_bytes());
                    d.extend_from_slice(i.usage);
                    if rctd {
                        d.extend_from_slice(&timeouts);
                    }
                }
                None => {
                    d[1] = 0x01;
                    d.extend_from_slice(&[0, 0]);
                }
            }
            d
        }
        _ => return Err(Sense::invalid_cdb(2, Some(2)).into()),
    };
    Ok(reply(d, alloc))
}
