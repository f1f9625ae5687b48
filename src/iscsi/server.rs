//! The iSCSI target's only driver: a TCP listener on the node's portal and one task per
//! connection that runs the pure cores ([`LoginMachine`], then [`Session`]) against the
//! socket, the LUN tables and the registry.
//!
//! Per connection:
//! - a reader loop owns the [`Deframer`] and the core, and reads straight into the deframer;
//! - a writer task gets encoded PDUs through a channel and writes them, Data-In payloads as
//!   `[header, &buffer[range], trailer]` with one vectored write (no copy of read data);
//! - SCSI commands run as their own tokio tasks on the target's [`Luns`]; their outcomes come
//!   back through a channel into [`Session::on_scsi_done`]. The session's command window bounds
//!   how many run at once, so memory per connection is bounded by window x largest transfer.
//!
//! The server keeps one [`Luns`] per target, made from the registry's LUN table and refreshed
//! once a second (and before each login), so LUNs added or removed with `hbtgtadm` show up on
//! running sessions; a deleted target's sessions are closed. Sessions and connections are
//! registered in the registry so `hbtgtadm --op show` lists the I_T nexus.

use super::chap::ChapAccount;
use super::login::{
    self, send_targets_answer, LoginAction, LoginContext, LoginMachine, LoginOutcome, PortalInfo, SendTargetsQuery,
    SessionKind, VisibleTarget,
};
use super::params::TargetParamConfig;
use super::pdu::{self, Digests, Pdu};
use super::scsi::{self, FileDevice, LogicalUnit, LunDevice, Luns};
use super::session::{Action, Session, SessionConfig, TaskId};
use super::target::{Backing, IscsiAdmin, LunView, TargetRegistry};
use super::types::{Nexus, ScsiOutcome};
use crate::resource::device::Device;
use crate::resource::Resource;
use kernel_shim::IoBuf;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Commands in flight per session (MaxCmdSN - ExpCmdSN + 1 when idle).
pub const CMD_WINDOW: u32 = 128;
/// A login must finish within this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Data segment limit while logging in (RFC 7143's default).
const LOGIN_MAX_SEGMENT: u32 = 8192;
/// Portal group tag of every portal (tgt uses 1).
const TPGT: u16 = 1;
/// Socket reads ask for at least this much room.
const READ_CHUNK: usize = 64 * 1024;
/// After SIGTERM, sessions get this long to log out before they are cut.
const LOGOUT_GRACE: Duration = Duration::from_secs(3);

/// What a connection is known as to the rest of the server.
struct Live {
    tid: u32,
    sid: u64,
    initiator: String,
    isid: [u8; 6],
    tsih: u16,
    kill: Arc<Notify>,
}

/// The LUN table of one target and what it was built from.
struct TargetLuns {
    luns: Arc<Luns>,
    /// Per LUN number: the registry's row and, for a resource, the device it was made with.
    built: HashMap<u16, (LunView, Option<usize>)>,
}

/// The running iSCSI target of one node.
pub struct Server {
    admin: Arc<IscsiAdmin>,
    resources: Vec<Arc<Resource>>,
    /// APTPL files: `<state_dir>/iscsi-pr/<target>-<lun>.pr`.
    state_dir: PathBuf,
    local: SocketAddr,
    targets: tokio::sync::Mutex<HashMap<u32, TargetLuns>>,
    live: Mutex<HashMap<u64, Live>>,
    next_conn: AtomicU64,
    next_tsih: Mutex<u16>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local", &self.local).finish()
    }
}

impl Server {
    /// Binds `portal` and starts serving. `state_dir` is the node's state directory.
    pub async fn start(
        portal: SocketAddr,
        admin: Arc<IscsiAdmin>,
        resources: Vec<Arc<Resource>>,
        state_dir: PathBuf,
    ) -> std::io::Result<Arc<Server>> {
        let listener = TcpListener::bind(portal).await?;
        let local = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let server = Arc::new(Server {
            admin,
            resources,
            state_dir,
            local,
            targets: tokio::sync::Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_tsih: Mutex::new(0),
            shutdown,
            tasks: Mutex::new(Vec::new()),
        });
        server.refresh().await;
        let accept = tokio::spawn(server.clone().accept_loop(listener));
        let refresh = tokio::spawn(server.clone().refresh_loop());
        server.tasks.lock().expect("tasks").extend([accept, refresh]);
        tracing::info!("iSCSI target listening on {local}");
        Ok(server)
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Asks every session to log out, waits up to a few seconds, then closes what is left.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        let end = Instant::now() + LOGOUT_GRACE + Duration::from_secs(1);
        while Instant::now() < end && !self.live.lock().expect("live").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let me = self.clone();
                    tokio::spawn(async move { me.serve(stream, peer).await });
                }
                Err(e) => {
                    tracing::warn!("iSCSI accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn refresh_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }

    async fn device_of(&self, resource: &str) -> Option<Arc<Device>> {
        let r = self.resources.iter().find(|r| r.name() == resource)?;
        r.device().await
    }

    /// Brings the LUN tables in line with the registry, closes sessions of deleted targets and
    /// sessions an operator dropped.
    async fn refresh(&self) {
        let (tables, names, drops) = {
            let mut reg = self.admin.lock();
            let tables: Vec<(u32, Vec<LunView>)> = reg
                .targets()
                .iter()
                .filter_map(|t| Some((t.tid, reg.lun_table(t.tid)?)))
                .collect();
            let names: HashMap<u32, String> = reg.targets().iter().map(|t| (t.tid, t.name.clone())).collect();
            (tables, names, reg.take_drops())
        };
        let mut devices: HashMap<String, Option<Arc<Device>>> = HashMap::new();
        for (_, rows) in &tables {
            for row in rows {
                if let Backing::Hablock(r) = &row.backing {
                    if !devices.contains_key(r) {
                        devices.insert(r.clone(), self.device_of(r).await);
                    }
                }
            }
        }
        let mut targets = self.targets.lock().await;
        targets.retain(|tid, _| names.contains_key(tid));
        for (tid, rows) in tables {
            let entry = targets.entry(tid).or_insert_with(|| TargetLuns {
                luns: Arc::new(Luns::new()),
                built: HashMap::new(),
            });
            self.sync_luns(entry, tid, &names[&tid], &rows, &devices);
        }
        drop(targets);
        let live = self.live.lock().expect("live");
        for l in live.values() {
            let dropped = drops.iter().any(|d| d.tid == l.tid && d.sid == l.sid);
            if dropped || !names.contains_key(&l.tid) {
                l.kill.notify_one();
            }
        }
    }

    fn sync_luns(
        &self,
        t: &mut TargetLuns,
        tid: u32,
        name: &str,
        rows: &[LunView],
        devices: &HashMap<String, Option<Arc<Device>>>,
    ) {
        let mut wanted: HashSet<u16> = HashSet::new();
        for row in rows {
            if row.controller || row.lun > scsi::MAX_LUN as u64 {
                continue;
            }
            let n = row.lun as u16;
            let dev = match &row.backing {
                Backing::Hablock(r) => match devices.get(r).cloned().flatten() {
                    Some(d) => Some(d),
                    None => continue, // not attached: the LUN is absent until it is
                },
                _ => None,
            };
            let key = dev.as_ref().map(|d| Arc::as_ptr(d) as usize);
            wanted.insert(n);
            match t.built.get(&n) {
                Some((v, k)) if v == row && *k == key => continue,
                // Same store, other settings (--op update --params): change the LU in place;
                // reopening the file would meet our own lock on it.
                Some((v, k)) if v.backing == row.backing && v.bsoflags == row.bsoflags && *k == key => {
                    if let Some(lu) = t.luns.get(n) {
                        lu.set_params(lu_params(tid, name, row));
                        t.built.insert(n, (row.clone(), key));
                        tracing::info!("target {tid} LUN {n}: parameters changed");
                        continue;
                    }
                }
                _ => {}
            }
            let device = match (&row.backing, dev) {
                (_, Some(d)) => LunDevice::Resource(d),
                (Backing::Rdwr(path), None) => {
                    match FileDevice::open(std::path::Path::new(path), row.bsoflags.contains("direct")) {
                        Ok(f) => LunDevice::File(f),
                        Err(e) => {
                            tracing::error!("target {tid} LUN {n}: cannot open {path}: {e}");
                            wanted.remove(&n);
                            continue;
                        }
                    }
                }
                _ => continue,
            };
            let lu = match self.make_lu(device, tid, name, row) {
                Ok(lu) => lu,
                Err(e) => {
                    tracing::error!("target {tid} LUN {n}: {e}");
                    wanted.remove(&n);
                    continue;
                }
            };
            t.luns.insert(n, Arc::new(lu));
            t.built.insert(n, (row.clone(), key));
            tracing::info!("target {tid} LUN {n}: serving {:?}", row.backing);
        }
        let gone: Vec<u16> = t.built.keys().copied().filter(|n| !wanted.contains(n)).collect();
        for n in gone {
            t.built.remove(&n);
            t.luns.remove(n);
            tracing::info!("target {tid} LUN {n}: removed");
        }
    }

    fn make_lu(&self, dev: LunDevice, tid: u32, name: &str, row: &LunView) -> Result<LogicalUnit<LunDevice>, String> {
        let p = lu_params(tid, name, row);
        let dir = self.state_dir.join("iscsi-pr");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join(format!("{name}-{}.pr", row.lun));
        LogicalUnit::new(dev, p)
            .with_aptpl(&file)
            .map_err(|e| format!("reservations file {}: {e}", file.display()))
    }

    async fn luns_of(&self, tid: u32) -> Arc<Luns> {
        self.refresh().await;
        match self.targets.lock().await.get(&tid) {
            Some(t) => t.luns.clone(),
            None => Arc::new(Luns::new()),
        }
    }

    fn allocate_tsih(&self) -> Option<u16> {
        let live = self.live.lock().expect("live");
        let mut next = self.next_tsih.lock().expect("tsih");
        for _ in 0..u16::MAX {
            *next = next.wrapping_add(1).max(1);
            if !live.values().any(|l| l.tsih == *next) {
                return Some(*next);
            }
        }
        None
    }

    /// Serves one connection until it ends; never panics the daemon on bad input.
    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let local = stream.local_addr().unwrap_or(self.local);
        let (mut rd, wr) = stream.into_split();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Out>();
        let writer = tokio::spawn(write_loop(wr, out_rx));
        let mut conn = Conn {
            server: self.clone(),
            conn_id,
            peer,
            local,
            out: out_tx,
            deframer: pdu::Deframer::new(LOGIN_MAX_SEGMENT),
            digests: Digests::default(),
            registered: None,
            initiator: String::new(),
        };
        match tokio::time::timeout(LOGIN_TIMEOUT, conn.login(&mut rd)).await {
            Ok(Some((outcome, exp_cmdsn, statsn))) => conn.full_feature(&mut rd, outcome, exp_cmdsn, statsn).await,
            Ok(None) => {}
            Err(_) => tracing::info!("iSCSI {peer}: login timed out"),
        }
        conn.finish();
        drop(conn);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
}

/// The SCSI layer's settings for a LUN row of the registry.
fn lu_params(tid: u32, name: &str, row: &LunView) -> scsi::LuParams {
    let mut p = scsi::LuParams::new(tid, row.lun as u16);

    let r = &row.params;
    p.vendor_id = r.vendor_id.clone();
    p.product_id = r.product_id.clone();
    p.product_rev = r.product_rev.clone();
    p.scsi_id = row.scsi_id.clone();
    p.scsi_sn = row.scsi_sn.clone();
    p.readonly = r.readonly;
    p.thin_provisioning = r.thin_provisioning;
    p.removable = r.removable;
    p.online = r.online;
    p.sense_format = if r.sense_format != 0 {
        scsi::SenseFormat::Descriptor
    } else {
        scsi::SenseFormat::Fixed
    };
    p.target_port_name = Some(format!("{name},t,0x{TPGT:04x}"));
    p
}

/// What the writer task sends.
enum Out {
    Bytes(Vec<u8>),
    DataIn {
        header: Box<pdu::HeaderBuf>,
        data: Arc<IoBuf>,
        offset: usize,
        len: usize,
        trailer: pdu::Trailer,
    },
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Out>) {
    let mut small: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(o) = next.take() {
            let r = match o {
                Out::Bytes(b) => {
                    small.extend_from_slice(&b);
                    Ok(())
                }
                Out::DataIn {
                    header,
                    data,
                    offset,
                    len,
                    trailer,
                } => {
                    let payload = &data[offset..offset + len];
                    if len <= 16 * 1024 {
                        small.extend_from_slice(header.as_slice());
                        small.extend_from_slice(payload);
                        small.extend_from_slice(trailer.as_slice());
                        Ok(())
                    } else {
                        let r = write_all_vectored(&mut wr, &[&small, header.as_slice(), payload, trailer.as_slice()])
                            .await;
                        small.clear();
                        r
                    }
                }
            };
            if r.is_err() {
                return;
            }
            if small.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !small.is_empty() {
            if wr.write_all(&small).await.is_err() {
                return;
            }
            small.clear();
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes every byte of `parts` with as few syscalls as the socket allows.
async fn write_all_vectored(wr: &mut OwnedWriteHalf, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        if off >= parts[idx].len() {
            idx += 1;
            off = 0;
            continue;
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() - idx);
        slices.push(IoSlice::new(&parts[idx][off..]));
        for p in &parts[idx + 1..] {
            slices.push(IoSlice::new(p));
        }
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// The registry seen through the login core's questions.
struct Ctx<'a> {
    reg: &'a TargetRegistry,
    server: &'a Server,
}

fn chap_accounts(a: &[super::target::Account]) -> Vec<ChapAccount> {
    a.iter().map(|a| ChapAccount::new(&a.user, &a.password)).collect()
}

impl LoginContext for Ctx<'_> {
    fn target_exists(&self, name: &str) -> bool {
        self.reg.login_view(name).is_some()
    }
    fn initiator_allowed(&self, target: &str, initiator_name: &str, addr: IpAddr) -> bool {
        self.reg
            .login_view(target)
            .is_some_and(|v| v.allows(initiator_name, addr))
    }
    fn incoming_accounts(&self, target: &str) -> Vec<ChapAccount> {
        self.reg
            .login_view(target)
            .map(|v| chap_accounts(&v.incoming))
            .unwrap_or_default()
    }
    fn outgoing_account(&self, target: &str) -> Option<ChapAccount> {
        let v = self.reg.login_view(target)?;
        v.outgoing.map(|a| ChapAccount::new(&a.user, &a.password))
    }
    fn discovery_incoming_accounts(&self) -> Vec<ChapAccount> {
        chap_accounts(&self.reg.discovery_view().incoming)
    }
    fn discovery_outgoing_account(&self) -> Option<ChapAccount> {
        let a = self.reg.discovery_view().outgoing?;
        Some(ChapAccount::new(&a.user, &a.password))
    }
    fn portal_group_tag(&self) -> u16 {
        TPGT
    }
    fn target_params(&self, target: Option<&str>) -> TargetParamConfig {
        let mut cfg = TargetParamConfig::default();
        let Some(t) = target.and_then(|n| self.reg.targets().iter().find(|t| t.name == n)) else {
            return cfg;
        };
        // Only what an operator changed with --op update; tgt's defaults (8 KiB segments, no
        // digests) would cost throughput and refuse initiators that want digests.
        for (k, v) in &t.params {
            if k.starts_with("nop_") {
                continue;
            }
            if let Err(e) = cfg.set(k, v) {
                tracing::warn!("target {}: parameter {k}={v} not applied: {e}", t.name);
            }
        }
        cfg
    }
    fn target_state(&self, target: &str) -> login::TargetState {
        match self.reg.login_view(target) {
            Some(v) if !v.ready => login::TargetState::Unavailable,
            _ => login::TargetState::Ready,
        }
    }
    fn session_exists(&self, initiator_name: &str, isid: [u8; 6], tsih: u16) -> bool {
        self.server
            .live
            .lock()
            .expect("live")
            .values()
            .any(|l| l.tsih == tsih && l.isid == isid && l.initiator == initiator_name)
    }
    fn allocate_tsih(&mut self) -> Option<u16> {
        self.server.allocate_tsih()
    }
}

/// One connection.
struct Conn {
    server: Arc<Server>,
    conn_id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    out: mpsc::UnboundedSender<Out>,
    deframer: pdu::Deframer,
    digests: Digests,
    /// (tid, sid, nexus, luns) once a normal session is registered.
    registered: Option<(u32, u64, Nexus, Arc<Luns>)>,
    /// The initiator's name once logged in (SendTargets applies the ACLs to it).
    initiator: String,
}

enum Flow {
    Go,
    Stop,
}

impl Conn {
    fn send(&self, p: &Pdu) {
        let _ = self.out.send(Out::Bytes(p.to_bytes(self.digests)));
    }

    /// Reads until the deframer has a PDU (or the stream ends).
    async fn next_pdu(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Result<Pdu, pdu::PduError>> {
        loop {
            if let Some(r) = self.deframer.next_pdu() {
                return Some(r);
            }
            if self.deframer.is_broken() {
                return None;
            }
            let want = self.deframer.wanted().max(READ_CHUNK);
            let n = match rd.read(self.deframer.read_buf(want)).await {
                Ok(0) | Err(_) => {
                    self.deframer.commit(0);
                    return None;
                }
                Ok(n) => n,
            };
            self.deframer.commit(n);
        }
    }

    /// The login phase: returns the outcome, ExpCmdSN and the next StatSN.
    async fn login(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(LoginOutcome, u32, u32)> {
        let mut m = LoginMachine::new(self.peer.ip(), Box::new(StdRng::from_entropy()));
        let mut statsn: u32 = rand::thread_rng().gen();
        loop {
            let req = match self.next_pdu(rd).await? {
                Ok(Pdu::LoginRequest(r)) => r,
                Ok(other) => {
                    // RFC 7143 11.13.5: anything but a Login Request during login.
                    let (bhs, _) = other.encode_bhs_ahs(0);
                    let itt = u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]);
                    let st = login::status::INVALID_DURING_LOGIN;
                    self.send(&Pdu::LoginResponse(pdu::LoginResponse {
                        itt,
                        statsn,
                        status_class: (st >> 8) as u8,
                        status_detail: st as u8,
                        ..Default::default()
                    }));
                    tracing::info!("iSCSI {}: {:?} during login; closing", self.peer, other.opcode());
                    return None;
                }
                Err(e) => {
                    tracing::info!("iSCSI {}: bad PDU during login: {e}", self.peer);
                    return None;
                }
            };
            let lreq = login::LoginRequest {
                transit: req.transit,
                cont: req.cont,
                csg: req.csg,
                nsg: req.nsg,
                version_max: req.version_max,
                version_min: req.version_min,
                isid: req.isid,
                tsih: req.tsih,
                itt: req.itt,
                cid: req.cid,
                cmdsn: req.cmdsn,
                exp_statsn: req.exp_statsn,
                data: req.data,
            };
            let action = {
                let reg = self.server.admin.lock();
                let mut ctx = Ctx {
                    reg: &reg,
                    server: &self.server,
                };
                m.handle(&mut ctx, &lreq)
            };
            let wire = |r: &login::LoginResponse, statsn: u32| {
                Pdu::LoginResponse(pdu::LoginResponse {
                    transit: r.transit,
                    cont: r.cont,
                    csg: r.csg,
                    nsg: r.nsg,
                    version_max: r.version_max,
                    version_active: r.version_active,
                    isid: r.isid,
                    tsih: r.tsih,
                    itt: r.itt,
                    statsn,
                    exp_cmdsn: lreq.cmdsn,
                    max_cmdsn: lreq.cmdsn.wrapping_add(CMD_WINDOW - 1),
                    status_class: r.status_class,
                    status_detail: r.status_detail,
                    data: r.data.clone(),
                })
            };
            match action {
                LoginAction::Respond(r) => {
                    self.send(&wire(&r, statsn));
                    statsn = statsn.wrapping_add(1);
                }
                LoginAction::Complete(r, outcome) => {
                    if let SessionKind::Normal { target_name } = &outcome.session_type {
                        if !self.register(&outcome, target_name).await {
                            let st = login::status::TARGET_REMOVED;
                            let mut r = r;
                            r.transit = false;
                            r.tsih = 0;
                            r.status_class = (st >> 8) as u8;
                            r.status_detail = st as u8;
                            r.data.clear();
                            self.send(&wire(&r, statsn));
                            return None;
                        }
                    }
                    self.send(&wire(&r, statsn));
                    statsn = statsn.wrapping_add(1);
                    return Some((*outcome, lreq.cmdsn, statsn));
                }
                LoginAction::Fail(r, why) => {
                    self.send(&wire(&r, statsn));
                    tracing::info!("iSCSI {}: login refused: {why}", self.peer);
                    return None;
                }
                LoginAction::Redirect(r) => {
                    self.send(&wire(&r, statsn));
                    return None;
                }
            }
        }
    }

    /// Registers a normal session in the registry and the live table (closing a session it
    /// reinstates: same initiator and ISID on the same target, ERL 0).
    async fn register(&mut self, o: &LoginOutcome, target: &str) -> bool {
        let tid = match self.server.admin.lock().login_view(target) {
            Some(v) => v.tid,
            None => return false,
        };
        let luns = self.server.luns_of(tid).await;
        let sid = {
            let mut reg = self.server.admin.lock();
            let Some(sid) = reg.session_open(tid, &o.initiator_name, o.initiator_alias.as_deref(), o.isid) else {
                return false;
            };
            reg.conn_add(tid, sid, o.cid as u64, self.peer.ip());
            sid
        };
        {
            let mut live = self.server.live.lock().expect("live");
            for l in live.values() {
                if l.tid == tid && l.initiator == o.initiator_name && l.isid == o.isid {
                    tracing::info!("iSCSI {}: session reinstatement closes session {}", self.peer, l.sid);
                    l.kill.notify_one();
                }
            }
            live.insert(
                self.conn_id,
                Live {
                    tid,
                    sid,
                    initiator: o.initiator_name.clone(),
                    isid: o.isid,
                    tsih: o.tsih,
                    kill: Arc::new(Notify::new()),
                },
            );
        }
        let nexus = Nexus {
            initiator_name: o.initiator_name.clone(),
            isid: o.isid,
            tpgt: o.tpgt,
        };
        self.registered = Some((tid, sid, nexus, luns));
        tracing::info!(
            "iSCSI {}: {} logged in to {target} (tid {tid}, sid {sid})",
            self.peer,
            o.initiator_name
        );
        true
    }

    async fn full_feature(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        o: LoginOutcome,
        exp_cmdsn: u32,
        statsn: u32,
    ) {
        let p = o.params.clone();
        tracing::debug!("iSCSI {}: negotiated {p:?}", self.peer);
        self.initiator = o.initiator_name.clone();
        self.digests = Digests {
            header: p.header_digest,
            data: p.data_digest,
        };
        self.deframer.set_digests(self.digests);
        self.deframer
            .set_max_recv_data_segment_length(p.max_recv_data_segment_length);
        let (nop_interval, nop_count) = match &self.registered {
            Some((tid, ..)) => {
                let reg = self.server.admin.lock();
                let t = reg.target(*tid);
                let num = |k: &str| {
                    t.and_then(|t| t.param(k))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                (num("nop_interval"), num("nop_count"))
            }
            None => (0, 0),
        };
        let cfg = SessionConfig {
            exp_cmdsn,
            statsn,
            cmd_window: CMD_WINDOW,
            cid: o.cid,
            nop_interval: (nop_interval > 0).then(|| Duration::from_secs(nop_interval)),
            nop_timeout: Duration::from_secs((nop_interval * nop_count.max(1)).max(15)),
            ..SessionConfig::default()
        };
        let nexus = Nexus {
            initiator_name: o.initiator_name.clone(),
            isid: o.isid,
            tpgt: o.tpgt,
        };
        let mut session = Session::new(p, nexus, cfg);
        let luns = match &self.registered {
            Some((.., l)) => l.clone(),
            None => Arc::new(Luns::new()),
        };
        let kill = self
            .server
            .live
            .lock()
            .expect("live")
            .get(&self.conn_id)
            .map(|l| l.kill.clone())
            .unwrap_or_default();
        let mut shutdown = self.server.shutdown.subscribe();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(TaskId, ScsiOutcome)>();
        let mut aborted: HashSet<TaskId> = HashSet::new();
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut deadline: Option<tokio::time::Instant> = None;
        let target_name = match &o.session_type {
            SessionKind::Normal { target_name } => Some(target_name.clone()),
            SessionKind::Discovery => None,
        };
        loop {
            // Everything already buffered first.
            while let Some(r) = self.deframer.next_pdu() {
                let acts = match r {
                    Ok(pdu) => session.on_pdu(pdu),
                    Err(e) => {
                        if e.closes_connection() {
                            tracing::info!("iSCSI {}: {e}; closing", self.peer);
                        }
                        session.on_frame_error(e)
                    }
                };
                if let Flow::Stop = self.run(&mut session, acts, &luns, &done_tx, &mut aborted, &target_name) {
                    return;
                }
            }
            if self.deframer.is_broken() || session.is_closed() {
                return;
            }
            let want = self.deframer.wanted().max(READ_CHUNK);
            let acts = tokio::select! {
                r = rd.read(self.deframer.read_buf(want)) => match r {
                    Ok(0) | Err(_) => {
                        self.deframer.commit(0);
                        return;
                    }
                    Ok(n) => {
                        self.deframer.commit(n);
                        continue;
                    }
                },
                Some((id, out)) = done_rx.recv() => {
                    if aborted.remove(&id) {
                        continue;
                    }
                    session.on_scsi_done(id, out)
                }
                _ = tick.tick() => session.on_tick(start.elapsed()),
                _ = kill.notified() => {
                    tracing::info!("iSCSI {}: session closed by the target", self.peer);
                    return;
                }
                r = shutdown.changed(), if deadline.is_none() => {
                    if r.is_err() {
                        return;
                    }
                    deadline = Some(tokio::time::Instant::now() + LOGOUT_GRACE);
                    session.request_logout(LOGOUT_GRACE.as_secs() as u16)
                }
                _ = async { tokio::time::sleep_until(deadline.expect("deadline")).await }, if deadline.is_some() => {
                    return;
                }
            };
            if let Flow::Stop = self.run(&mut session, acts, &luns, &done_tx, &mut aborted, &target_name) {
                return;
            }
        }
    }

    /// Carries out the session's actions in order.
    fn run(
        &mut self,
        session: &mut Session,
        acts: Vec<Action>,
        luns: &Arc<Luns>,
        done: &mpsc::UnboundedSender<(TaskId, ScsiOutcome)>,
        aborted: &mut HashSet<TaskId>,
        target_name: &Option<String>,
    ) -> Flow {
        let mut queue: std::collections::VecDeque<Action> = acts.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(p) => self.send(&p),
                Action::SendDataIn {
                    header,
                    data,
                    offset,
                    len,
                } => {
                    let end = (offset + len).min(data.len());
                    let offset = offset.min(end);
                    let len = end - offset;
                    let h = Box::new(pdu::encode_header(&Pdu::DataIn(header), len, self.digests));
                    let trailer = pdu::data_trailer(&data[offset..end], self.digests.data);
                    let _ = self.out.send(Out::DataIn {
                        header: h,
                        data,
                        offset,
                        len,
                        trailer,
                    });
                }
                Action::Execute { id, task } => {
                    tracing::trace!(
                        "task {id}: LUN {:#x} CDB {:02x?} data-out {:?} data-in {}",
                        task.lun,
                        task.cdb,
                        task.data_out.as_ref().map(|d| d.len()),
                        task.expected_data_in
                    );
                    let luns = luns.clone();
                    let done = done.clone();
                    tokio::spawn(async move {
                        let pr_out = task.cdb.first() == Some(&0x5f);
                        let lun = task.lun;
                        let out = luns.execute(task).await;
                        if pr_out {
                            // PREEMPT AND ABORT: the preempted nexuses' tasks have been told
                            // by unit attention; we do not cancel I/O already under way.
                            if let Some(lu) = scsi::decode_lun(lun).and_then(|n| luns.get(n)) {
                                for n in lu.take_aborts() {
                                    tracing::info!("PR preempt-and-abort of {}", n.initiator_port());
                                }
                            }
                        }
                        let _ = done.send((id, out));
                    });
                }
                Action::Abort { ids } => aborted.extend(ids),
                Action::ClearTaskSet { lun } => tracing::debug!("clear task set on LUN {lun:#x}"),
                Action::LunReset { lun } => {
                    if let Some((.., nexus, _)) = &self.registered {
                        luns.lun_reset(lun, Some(nexus));
                    }
                }
                Action::TargetWarmReset => {
                    if let Some((.., nexus, _)) = &self.registered {
                        luns.reset_all(Some(nexus));
                    }
                }
                Action::SendTargets { itt, value } => {
                    let text = self.send_targets(&value, target_name);
                    queue.extend(session.on_text_answer(itt, text));
                }
                Action::Close(why) => {
                    tracing::info!("iSCSI {}: closing: {why:?}", self.peer);
                    return Flow::Stop;
                }
                Action::LogoutComplete { .. } => return Flow::Stop,
            }
        }
        Flow::Go
    }

    fn send_targets(&self, value: &str, target_name: &Option<String>) -> Vec<u8> {
        let names = self.server.admin.lock().discoverable(&self.initiator, self.peer.ip());
        let addr = if self.local.ip().is_unspecified() {
            self.server.local
        } else {
            self.local
        };
        let targets: Vec<VisibleTarget> = names
            .into_iter()
            .map(|name| VisibleTarget {
                name,
                portals: vec![PortalInfo { addr, tpgt: TPGT }],
            })
            .collect();
        send_targets_answer(&targets, &SendTargetsQuery::parse(value), target_name.as_deref())
    }

    /// Unregisters the connection: registry, live table, and the nexus's SCSI state.
    fn finish(&mut self) {
        self.server.live.lock().expect("live").remove(&self.conn_id);
        if let Some((tid, sid, nexus, luns)) = self.registered.take() {
            self.server.admin.lock().session_close(tid, sid);
            luns.nexus_lost(&nexus);
            tracing::info!("iSCSI {}: session {sid} of target {tid} ended", self.peer);
        }
    }
}
