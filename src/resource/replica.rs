//! The replication driver of one resource: runs the pure core
//! ([`crate::replication::Node`]) against the real backing store, metadata and a TCP
//! connection to the peer.
//!
//! Everything the core decides happens here, in the order it says: every
//! [`Replica::step`] locks the core, feeds it one event and executes the actions it
//! returns before unlocking. Local I/O runs as spawned tasks whose completion is the
//! next event; metadata and bitmap writes are synchronous (they must be durable before
//! the next action, and they are rare); messages go, in order, to the connection's
//! writer task, which encodes them outside the lock.
//!
//! Connections: the node with the higher node id listens on its `address`, the other
//! connects from its own address every `connect_interval` while the core is
//! Connecting. One connection at a time; a connection from any address but the
//! peer's is dropped before a byte is read. The core's handshake (HMAC with the
//! shared secret) decides whether it is the peer.

use crate::config::{Fencing, NetOptions, Protocol};
use crate::replication::msg::{data_flags, Message, MAX_DATA};
use crate::replication::node::{
    refusal_is_transient, Action, Event, MetaState, Node, NodeConfig, Notice, Persisted, ReqError, Status,
};
use crate::replication::wire;
use crate::replication::{ConnState, DiskState, ReplState, Role};
use crate::store::backing::Backing;
use crate::store::meta::gi::SyncDecision;
use crate::store::meta::superblock::MdFlags;
use crate::store::meta::MetaDisk;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Who this node is towards its one peer, and how to reach it.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub resource: String,
    pub node_name: String,
    pub peer_name: String,
    pub node_id: u32,
    pub peer_node_id: u32,
    pub local_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub protocol: Protocol,
    pub net: NetOptions,
    /// The cluster file (handlers get it as `HABLOCK_CONFIG`).
    pub cluster_file: std::path::PathBuf,
}

/// Resync progress as `hbadm status` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResyncProgress {
    pub total: u64,
    pub done: u64,
    /// Bytes per second over the last few seconds.
    pub speed: u64,
    /// Seconds left at that speed (`None` while the speed is unknown).
    pub eta_secs: Option<u64>,
}

/// A snapshot for status displays.
#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub peer: String,
    pub core: Status,
    pub resync: Option<ResyncProgress>,
    /// The last thing that went wrong with the connection, for the operator.
    pub last_problem: String,
}

/// Bytes queued for the peer beyond which client writes wait (DRBD's default
/// `on-congestion block`). With protocol A a write is done once it is on the local disk
/// and queued for the peer, so without a bound a link slower than the disk grows the
/// queue, and the daemon's memory, without end.
pub const MAX_BACKLOG: u64 = 32 << 20;

/// What one connection's writer still has to send.
struct Backlog {
    bytes: AtomicU64,
    /// The connection is closing: nobody waits for room any more.
    closed: AtomicBool,
    room: tokio::sync::Notify,
    /// The replica's flag: set while a backlog is full, so that writes look no further
    /// (and take no lock) while it is not.
    congested: Arc<AtomicBool>,
}

impl Backlog {
    fn new(congested: Arc<AtomicBool>) -> Backlog {
        Backlog {
            bytes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            room: tokio::sync::Notify::new(),
            congested,
        }
    }

    /// Roughly what `m` takes in the queue: its data, and a header's worth.
    fn size_of(m: &Message) -> u64 {
        64 + match m {
            Message::Data(d) => d.payload.len() as u64,
            Message::ResyncData(r) => r.payload.len() as u64,
            _ => 0,
        }
    }

    fn queued(&self, m: &Message) {
        let n = Self::size_of(m);
        if self.bytes.fetch_add(n, Relaxed) + n >= MAX_BACKLOG {
            self.congested.store(true, Relaxed);
        }
    }

    fn sent(&self, m: &Message) {
        let n = Self::size_of(m);
        let before = self.bytes.fetch_sub(n, Relaxed);
        if before >= MAX_BACKLOG && before - n < MAX_BACKLOG {
            self.congested.store(false, Relaxed);
            self.room.notify_waiters();
        }
    }

    fn close(&self) {
        self.closed.store(true, Relaxed);
        self.congested.store(false, Relaxed);
        self.room.notify_waiters();
    }

    /// Returns once the queue is below [`MAX_BACKLOG`] or the connection is closing.
    async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.bytes.load(Relaxed) < MAX_BACKLOG || self.closed.load(Relaxed) {
                return;
            }
            room.await;
        }
    }
}

/// One connection's sending side.
struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
    backlog: Arc<Backlog>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Conn {
    /// Stops reading; the writer ends by itself once the channel closes, after
    /// sending what is queued (e.g. a Disconnect). Returns the writer to await.
    fn close(self) -> JoinHandle<()> {
        self.reader.abort();
        self.backlog.close();
        drop(self.tx);
        self.writer
    }
}

/// Where a client request's result goes.
type ReqReply = oneshot::Sender<Result<(), ReqError>>;

struct Inner {
    node: Node,
    conn: Option<Conn>,
    next_conn: u64,
    next_req: u64,
    reqs: HashMap<u64, ReqReply>,
    promote_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    demote_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// (when, bytes done) samples of the running resync, for speed and ETA.
    samples: VecDeque<(Instant, u64)>,
    last_problem: String,
    /// The writer of the last closed connection, still sending its queue.
    closing_writer: Option<JoinHandle<()>>,
    /// The peer was Connected (its disk state known) since the last connection loss:
    /// only losing such a peer calls for fencing it.
    peer_connected: bool,
    /// The fence-peer handler is running.
    fencing: bool,
    /// resource-and-stonith: client completions are held (not acknowledged) while the
    /// fence-peer handler runs.
    frozen: bool,
    held: Vec<(ReqReply, Result<(), ReqError>)>,
    /// `down` is under way: the connection loss it causes fences nobody.
    shutting_down: bool,
    /// The fence-peer handler succeeded since the peer was last connected: the peer
    /// cannot be promoted with stale data (DRBD's peer disk Outdated).
    peer_fenced: bool,
    /// The peer was fenced and has reconnected, but is UpToDate only once this node has
    /// resynced it: the unfence-peer handler runs then.
    unfence_after_resync: bool,
}

/// The running replication of one resource towards its peer.
pub struct Replica {
    cfg: ReplicaConfig,
    inner: Mutex<Inner>,
    backing: Arc<Backing>,
    meta: Arc<RwLock<MetaDisk>>,
    slot: usize,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// A connection's queue to the peer is full (see [`MAX_BACKLOG`]).
    congested: Arc<AtomicBool>,
}

const TICK: Duration = Duration::from_millis(50);
const SPEED_WINDOW: Duration = Duration::from_secs(5);
/// How long an operator's role change may wait for the peer's answer.
const ROLE_CHANGE_TIMEOUT: Duration = Duration::from_secs(15);

fn meta_state(m: &MetaDisk) -> MetaState {
    let sb = m.superblock();
    MetaState {
        gi: sb.gi.clone(),
        consistent: sb.flags.has(MdFlags::CONSISTENT),
        up_to_date: sb.flags.has(MdFlags::WAS_UP_TO_DATE),
        primary: sb.flags.has(MdFlags::PRIMARY_IND),
        crashed_primary: sb.flags.has(MdFlags::CRASHED_PRIMARY),
    }
}

fn store_meta_state(m: &mut MetaDisk, s: &MetaState) {
    let sb = m.superblock_mut();
    sb.gi = s.gi.clone();
    sb.flags.set(MdFlags::CONSISTENT, s.consistent);
    sb.flags.set(MdFlags::WAS_UP_TO_DATE, s.up_to_date);
    sb.flags.set(MdFlags::PRIMARY_IND, s.primary);
    sb.flags.set(MdFlags::CRASHED_PRIMARY, s.crashed_primary);
}

/// Tells everyone waiting for a role change how it ended.
fn answer(waiters: &mut Vec<oneshot::Sender<Result<(), String>>>, r: Result<(), String>) {
    for w in waiters.drain(..) {
        let _ = w.send(r.clone());
    }
}

/// How a handler run ended.
struct HandlerOutcome {
    /// The exit code; `None` when it could not run, overran or died by a signal.
    code: Option<i32>,
    detail: String,
}

impl HandlerOutcome {
    fn describe(&self) -> &str {
        &self.detail
    }
}

/// What a fence-peer handler's exit code means (DRBD's convention, as crm-fence-peer
/// uses it), and whether the peer is now known not to be promoted with stale data.
pub fn fence_peer_meaning(code: i32) -> (bool, &'static str) {
    match code {
        3 => (true, "peer's disk was already Inconsistent or Outdated"),
        4 => (true, "peer outdated (banned from the promoted role)"),
        5 => (true, "peer unreachable; assumed down"),
        6 => (
            false,
            "peer is Primary: refusing to outdate it; this node's data may be the stale copy",
        ),
        7 => (true, "peer fenced (STONITH)"),
        _ => (false, "fence-peer handler failed (expected exit 3..7)"),
    }
}

/// The environment a handler runs with: hablock's names and DRBD's, so that scripts
/// written for DRBD's handlers find what they look for.
pub fn handler_env(cfg: &ReplicaConfig, handler: &str) -> Vec<(String, String)> {
    let af = |a: &SocketAddr| if a.is_ipv4() { "ipv4" } else { "ipv6" };
    let mut env = vec![
        ("HABLOCK_HANDLER", handler.to_string()),
        ("HABLOCK_RESOURCE", cfg.resource.clone()),
        ("HABLOCK_NODE", cfg.node_name.clone()),
        ("HABLOCK_PEER", cfg.peer_name.clone()),
        ("HABLOCK_PEER_ADDRESS", cfg.peer_addr.ip().to_string()),
        ("HABLOCK_FENCING", cfg.net.fencing.to_string()),
        ("HABLOCK_CONFIG", cfg.cluster_file.display().to_string()),
        ("DRBD_RESOURCE", cfg.resource.clone()),
        ("DRBD_PEER", cfg.peer_name.clone()),
        ("DRBD_PEERS", cfg.peer_name.clone()),
        ("DRBD_PEER_ADDRESS", cfg.peer_addr.ip().to_string()),
        ("DRBD_PEER_AF", af(&cfg.peer_addr).to_string()),
        ("DRBD_MY_ADDRESS", cfg.local_addr.ip().to_string()),
        ("DRBD_MY_AF", af(&cfg.local_addr).to_string()),
        ("DRBD_PEER_NODE_ID", cfg.peer_node_id.to_string()),
        ("DRBD_MY_NODE_ID", cfg.node_id.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect::<Vec<_>>();
    env.push((format!("DRBD_NODE_ID_{}", cfg.node_id), cfg.node_name.clone()));
    env.push((format!("DRBD_NODE_ID_{}", cfg.peer_node_id), cfg.peer_name.clone()));
    env
}

fn req_error(e: ReqError) -> io::Error {
    match e {
        ReqError::NotPrimary => io::Error::from_raw_os_error(libc::EPERM),
        ReqError::OutOfRange => io::Error::from_raw_os_error(libc::EINVAL),
        ReqError::Io(m) => io::Error::other(m),
    }
}

impl Replica {
    /// Starts the core from the metadata (the activity log was already replayed into
    /// the peer's bitmap slot by the caller) and starts connecting.
    pub fn start(
        cfg: ReplicaConfig,
        backing: Arc<Backing>,
        meta: Arc<RwLock<MetaDisk>>,
        slot: usize,
        crashed_primary: bool,
    ) -> io::Result<Arc<Replica>> {
        let persisted = {
            let m = meta.read().expect("meta");
            let mut ms = meta_state(&m);
            // The caller marked the activity log's hot extents out of sync, which is
            // what a crashed Primary owes its peer: tell the core it crashed, but not
            // that it is still Primary (which would make it resync everything).
            ms.primary = false;
            ms.crashed_primary |= crashed_primary;
            let bm = m.bitmap();
            let words = (0..bm.words_per_slot() as u64).map(|w| bm.load_word(slot, w)).collect();
            Persisted {
                meta: ms,
                slot,
                size: m.data_size(),
                bitmap: words,
            }
        };
        let mut nc = NodeConfig::new(cfg.node_id, cfg.peer_node_id, &cfg.resource);
        nc.node_name = cfg.node_name.clone();
        nc.peer_name = cfg.peer_name.clone();
        nc.protocol = cfg.protocol;
        nc.shared_secret = cfg.net.shared_secret.as_ref().map(|s| s.as_bytes().to_vec());
        nc.after_sb = cfg.net.after_sb.clone();
        nc.data_integrity = cfg.net.data_integrity;
        nc.csums = cfg.net.csums;
        nc.resync_rate = cfg.net.resync_rate;
        nc.ping_interval_ms = cfg.net.ping_interval.as_millis() as u64;
        nc.timeout_ms = cfg.net.timeout.as_millis() as u64;
        nc.seed = rand::random();
        let (node, actions) = Node::new(nc, persisted);
        let (stop, _) = watch::channel(false);
        let r = Arc::new(Replica {
            cfg,
            inner: Mutex::new(Inner {
                node,
                conn: None,
                next_conn: 1,
                next_req: 1,
                reqs: HashMap::new(),
                promote_waiters: Vec::new(),
                demote_waiters: Vec::new(),
                samples: VecDeque::new(),
                last_problem: String::new(),
                closing_writer: None,
                peer_connected: false,
                fencing: false,
                frozen: false,
                held: Vec::new(),
                shutting_down: false,
                peer_fenced: false,
                unfence_after_resync: false,
            }),
            backing,
            meta,
            slot,
            stop,
            tasks: Mutex::new(Vec::new()),
            congested: Arc::new(AtomicBool::new(false)),
        });
        {
            let mut g = r.inner.lock().expect("replica");
            r.execute(&mut g, actions);
        }
        r.start_transport()?;
        r.step(Event::Connect { discard_my_data: false });
        Ok(r)
    }

    fn start_transport(self: &Arc<Self>) -> io::Result<()> {
        let mut tasks = Vec::new();
        if self.cfg.node_id > self.cfg.peer_node_id {
            let std_listener = std::net::TcpListener::bind(self.cfg.local_addr).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: cannot listen for the peer on {}: {e}",
                        self.cfg.resource, self.cfg.local_addr
                    ),
                )
            })?;
            std_listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_listener)?;
            tasks.push(tokio::spawn(self.clone().accept_loop(listener)));
        } else {
            tasks.push(tokio::spawn(self.clone().connect_loop()));
        }
        tasks.push(tokio::spawn(self.clone().tick_loop()));
        self.tasks.lock().expect("tasks").extend(tasks);
        Ok(())
    }

    pub fn peer_name(&self) -> &str {
        &self.cfg.peer_name
    }

    /// Feeds one event to the core and carries out what it decides.
    fn step(self: &Arc<Self>, ev: Event) {
        let mut g = self.inner.lock().expect("replica");
        let actions = g.node.step(ev);
        self.execute(&mut g, actions);
    }

    /// Like [`Replica::step`], for events of one connection: dropped when that
    /// connection is no longer the current one.
    fn step_conn(self: &Arc<Self>, conn: u64, ev: Event) {
        let mut g = self.inner.lock().expect("replica");
        if g.conn.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        if matches!(ev, Event::TransportLost) {
            if let Some(c) = g.conn.take() {
                c.close();
            }
        }
        let actions = g.node.step(ev);
        self.execute(&mut g, actions);
    }

    fn execute(self: &Arc<Self>, g: &mut Inner, actions: Vec<Action>) {
        // resource-and-stonith: a Primary losing its peer holds every completion (those
        // the loss itself releases included) until the fence-peer handler has run.
        if self.cfg.net.fencing == Fencing::ResourceAndStonith
            && g.peer_connected
            && !g.shutting_down
            && !g.frozen
            && actions
                .iter()
                .any(|a| matches!(a, Action::Notify(Notice::ConnectionLost { .. })))
            && g.node.status().role == Role::Primary
        {
            tracing::warn!(
                "{}: lost {} while Primary: holding write acknowledgements until fence-peer returns",
                self.cfg.resource,
                self.cfg.peer_name
            );
            g.frozen = true;
        }
        for a in actions {
            match a {
                Action::Send(m) => {
                    if let Some(c) = &g.conn {
                        c.backlog.queued(&m);
                        let _ = c.tx.send(m);
                    }
                }
                Action::CloseTransport => {
                    if let Some(c) = g.conn.take() {
                        g.closing_writer = Some(c.close());
                    }
                }
                Action::Write {
                    id,
                    offset,
                    len,
                    data,
                    flags,
                } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let fua = flags & data_flags::FUA != 0;
                        let r = if flags & data_flags::TRIM != 0 {
                            this.backing.trim(offset, len, fua).await
                        } else if flags & data_flags::ZEROES != 0 {
                            this.backing.write_zeroes(offset, len, fua, false).await
                        } else {
                            this.backing.write_shared(offset, data, fua).await
                        };
                        this.step(Event::IoDone {
                            id,
                            result: r.map(|()| Bytes::new()).map_err(|e| e.to_string()),
                        });
                    });
                }
                Action::Read { id, offset, len } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let r = this.backing.read(offset, len as usize).await;
                        this.step(Event::IoDone {
                            id,
                            result: r.map(Bytes::from_owner).map_err(|e| e.to_string()),
                        });
                    });
                }
                Action::Flush { id } => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let r = this.backing.flush().await;
                        this.step(Event::IoDone {
                            id,
                            result: r.map(|()| Bytes::new()).map_err(|e| e.to_string()),
                        });
                    });
                }
                Action::PersistMeta(m) => {
                    let mut md = self.meta.write().expect("meta");
                    store_meta_state(&mut md, &m);
                    if let Err(e) = md.write_superblock() {
                        // The core cannot be told; the next attach finds the older
                        // superblock, which errs towards resyncing more.
                        tracing::error!("{}: writing metadata failed: {e}", self.cfg.resource);
                    }
                }
                Action::SetOutOfSync { offset, len } => {
                    self.meta
                        .read()
                        .expect("meta")
                        .bitmap()
                        .set_range(self.slot, offset, len);
                }
                Action::ClearInSync { offset, len } => {
                    self.meta
                        .read()
                        .expect("meta")
                        .bitmap()
                        .clear_range(self.slot, offset, len);
                }
                Action::FlushBitmap => {
                    if let Err(e) = self.meta.read().expect("meta").flush_bitmap() {
                        tracing::error!("{}: writing the bitmap failed: {e}", self.cfg.resource);
                    }
                }
                Action::Complete { req, result, .. } => {
                    if let Some(tx) = g.reqs.remove(&req) {
                        if g.frozen {
                            g.held.push((tx, result));
                        } else {
                            let _ = tx.send(result);
                        }
                    }
                }
                Action::Notify(n) => self.notice(g, n),
            }
        }
    }

    fn notice(self: &Arc<Self>, g: &mut Inner, n: Notice) {
        let r = &self.cfg.resource;
        let peer = &self.cfg.peer_name;
        match n {
            Notice::Promoted => {
                tracing::info!("{r}: role Primary");
                answer(&mut g.promote_waiters, Ok(()));
            }
            Notice::PromoteRefused(why) => answer(
                &mut g.promote_waiters,
                Err(format!("{r}: cannot become Primary: {why}")),
            ),
            Notice::Demoted => {
                tracing::info!("{r}: role Secondary");
                answer(&mut g.demote_waiters, Ok(()));
            }
            Notice::DemoteRefused(why) => answer(
                &mut g.demote_waiters,
                Err(format!("{r}: cannot become Secondary: {why}")),
            ),
            Notice::Connected { decision } => {
                g.last_problem.clear();
                g.peer_connected = true;
                let was_fenced = std::mem::take(&mut g.peer_fenced);
                tracing::info!("{r}: connected to {peer} ({decision:?})");
                // A peer this node fenced is back: undo the fencing once its disk is UpToDate
                // (now, with nothing to sync; after the resync, with this node its source).
                g.unfence_after_resync = false;
                if was_fenced {
                    match decision {
                        SyncDecision::NoSync => self.run_unfence_peer(),
                        SyncDecision::BitmapSource | SyncDecision::FullSyncSource => g.unfence_after_resync = true,
                        _ => {}
                    }
                }
            }
            Notice::ConnectionLost { reason } => {
                tracing::warn!("{r}: connection to {peer} lost: {reason}");
                let was_connected = std::mem::take(&mut g.peer_connected);
                if was_connected
                    && !g.shutting_down
                    && self.cfg.net.fencing != Fencing::DontCare
                    && g.node.status().role == Role::Primary
                {
                    self.start_fence_peer(g);
                }
            }
            Notice::ResyncStarted { source, bytes } => {
                g.samples.clear();
                tracing::info!(
                    "{r}: resync started as {} ({} to copy)",
                    if source { "SyncSource" } else { "SyncTarget" },
                    crate::units::format_size(bytes)
                );
            }
            Notice::ResyncFinished { source } => {
                g.samples.clear();
                tracing::info!(
                    "{r}: resync finished ({})",
                    if source { "SyncSource" } else { "SyncTarget" }
                );
                if source && std::mem::take(&mut g.unfence_after_resync) {
                    self.run_unfence_peer();
                }
                if !source {
                    if let Some(cmd) = self.cfg.net.handlers.after_resync_target.clone() {
                        let this = self.clone();
                        tokio::spawn(async move {
                            let out = this.run_handler("after-resync-target", &cmd).await;
                            match out.code {
                                Some(0) => tracing::info!("{}: after-resync-target handler done", this.cfg.resource),
                                _ => tracing::warn!(
                                    "{}: after-resync-target handler failed: {}",
                                    this.cfg.resource,
                                    out.describe()
                                ),
                            }
                        });
                    }
                }
            }
            Notice::SplitBrain { decision } => {
                g.last_problem = format!(
                    "split brain with {peer} ({decision:?}): resolve it with `hbadm connect --discard-my-data {r}` on the node whose changes to drop"
                );
                tracing::error!("{r}: {}", g.last_problem);
            }
            Notice::AuthFailed => {
                g.last_problem = format!("{peer} failed authentication: check shared_secret on both nodes");
                tracing::error!("{r}: {}", g.last_problem);
            }
            Notice::Refused(why) => {
                g.last_problem = format!("connection refused: {why}");
                tracing::error!("{r}: {}", g.last_problem);
            }
            Notice::ProtocolError(why) => {
                g.last_problem = format!("protocol error from {peer}: {why}");
                tracing::error!("{r}: {}", g.last_problem);
            }
            other => tracing::info!("{r}: {other:?}"),
        }
    }

    /// Runs the unfence-peer handler, if there is one, in the background (its result is logged).
    fn run_unfence_peer(self: &Arc<Self>) {
        let Some(cmd) = self.cfg.net.handlers.unfence_peer.clone() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let r = &this.cfg.resource;
            let out = this.run_handler("unfence-peer", &cmd).await;
            match out.code {
                Some(0) => tracing::info!("{r}: unfence-peer handler for {} done", this.cfg.peer_name),
                _ => tracing::warn!("{r}: unfence-peer handler failed: {}", out.describe()),
            }
        });
    }

    /// Runs the fence-peer handler (once at a time) and, when it returns, logs what its
    /// exit code means and releases the completions held meanwhile.
    fn start_fence_peer(self: &Arc<Self>, g: &mut Inner) {
        let Some(cmd) = self.cfg.net.handlers.fence_peer.clone() else {
            g.frozen = false;
            return;
        };
        if g.fencing {
            return;
        }
        g.fencing = true;
        tracing::warn!(
            "{}: lost {} while Primary (fencing {}): running fence-peer handler",
            self.cfg.resource,
            self.cfg.peer_name,
            self.cfg.net.fencing
        );
        let this = self.clone();
        tokio::spawn(async move {
            let out = this.run_handler("fence-peer", &cmd).await;
            let (ok, meaning) = match out.code {
                Some(c) => fence_peer_meaning(c),
                None => (false, "the handler did not finish"),
            };
            let r = &this.cfg.resource;
            let peer = &this.cfg.peer_name;
            let mut g = this.inner.lock().expect("replica");
            if ok {
                g.peer_fenced = true;
                tracing::info!("{r}: fence-peer handler for {peer}: {meaning} ({})", out.describe());
            } else {
                g.last_problem = format!("fence-peer handler for {peer}: {meaning} ({})", out.describe());
                tracing::error!("{r}: {}", g.last_problem);
            }
            g.fencing = false;
            if g.frozen {
                g.frozen = false;
                let held = std::mem::take(&mut g.held);
                tracing::info!("{r}: releasing {} held write acknowledgement(s)", held.len());
                for (tx, res) in held {
                    let _ = tx.send(res);
                }
            }
        });
    }

    /// Runs a handler command with `sh -c` and the DRBD-style environment, bounded by
    /// the handlers' timeout (the shell is killed when it overruns).
    async fn run_handler(&self, which: &str, cmd: &str) -> HandlerOutcome {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(cmd)
            .envs(handler_env(&self.cfg, which))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let limit = self.cfg.net.handlers.timeout;
        let started = Instant::now();
        let out = match tokio::time::timeout(limit, c.output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return HandlerOutcome {
                    code: None,
                    detail: format!("{which} handler `{cmd}` could not run: {e}"),
                }
            }
            Err(_) => {
                return HandlerOutcome {
                    code: None,
                    detail: format!("{which} handler `{cmd}` killed after {limit:?}"),
                }
            }
        };
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .trim()
        .to_string();
        if !text.is_empty() {
            tracing::info!("{}: {which} handler said: {text}", self.cfg.resource);
        }
        HandlerOutcome {
            code: out.status.code(),
            detail: format!(
                "{which} handler exit {} after {} ms",
                out.status
                    .code()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "by signal".into()),
                started.elapsed().as_millis()
            ),
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (stream, from) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("{}: accept failed: {e}", self.cfg.resource);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if from.ip() != self.cfg.peer_addr.ip() {
                tracing::warn!(
                    "{}: dropped a connection from {from}: only {} may connect",
                    self.cfg.resource,
                    self.cfg.peer_addr.ip()
                );
                continue;
            }
            self.install(stream);
        }
    }

    async fn connect_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            let wanted = {
                let g = self.inner.lock().expect("replica");
                g.conn.is_none() && g.node.status().conn == ConnState::Connecting
            };
            if wanted {
                let attempt = async {
                    let sock = if self.cfg.local_addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(self.cfg.local_addr.ip(), 0))?;
                    sock.connect(self.cfg.peer_addr).await
                };
                let limit = self.cfg.net.connect_interval.max(Duration::from_secs(1));
                match tokio::time::timeout(limit, attempt).await {
                    Ok(Ok(stream)) => self.install(stream),
                    Ok(Err(e)) => tracing::debug!("{}: connecting to {}: {e}", self.cfg.resource, self.cfg.peer_addr),
                    Err(_) => tracing::debug!("{}: connecting to {}: timed out", self.cfg.resource, self.cfg.peer_addr),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.net.connect_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Makes `stream` the connection to the peer, unless one is up already or the
    /// core is not trying to connect.
    fn install(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut g = self.inner.lock().expect("replica");
        if g.conn.is_some() || g.node.status().conn != ConnState::Connecting {
            return;
        }
        let id = g.next_conn;
        g.next_conn += 1;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(self.congested.clone()));
        let reader = tokio::spawn(self.clone().read_loop(id, rd));
        let writer = tokio::spawn(self.clone().write_loop(id, wr, rx, backlog.clone()));
        g.conn = Some(Conn {
            id,
            tx,
            backlog,
            reader,
            writer,
        });
        let actions = g.node.step(Event::TransportUp);
        self.execute(&mut g, actions);
    }

    async fn read_loop(self: Arc<Self>, id: u64, mut rd: tokio::net::tcp::OwnedReadHalf) {
        let mut de = wire::Deframer::new(wire::DEFAULT_MAX_PAYLOAD);
        loop {
            let n = match rd.read(de.read_buf(256 << 10)).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!("{}: reading from the peer: {e}", self.cfg.resource);
                    break;
                }
            };
            de.commit(n);
            loop {
                match de.next_message() {
                    Ok(Some(m)) => self.step_conn(id, Event::Received(m)),
                    Ok(None) => break,
                    Err(e) => {
                        {
                            let mut g = self.inner.lock().expect("replica");
                            g.last_problem = format!("malformed message from the peer: {e}");
                        }
                        tracing::error!("{}: malformed message from the peer: {e}", self.cfg.resource);
                        self.step_conn(id, Event::TransportLost);
                        return;
                    }
                }
            }
        }
        self.step_conn(id, Event::TransportLost);
    }

    async fn write_loop(
        self: Arc<Self>,
        id: u64,
        wr: tokio::net::tcp::OwnedWriteHalf,
        mut rx: mpsc::UnboundedReceiver<Message>,
        backlog: Arc<Backlog>,
    ) {
        let mut wr = tokio::io::BufWriter::with_capacity(256 << 10, wr);
        let mut frame = Vec::with_capacity(64 << 10);
        while let Some(m) = rx.recv().await {
            let mut batch = Some(m);
            // Coalesce whatever is queued into one flush.
            while let Some(m) = batch.take() {
                frame.clear();
                let payload = wire::encode_head(&m, &mut frame);
                let mut r = wr.write_all(&frame).await;
                if let (Ok(()), Some(p)) = (&r, payload) {
                    r = wr.write_all(p).await;
                }
                if let Err(e) = r {
                    tracing::debug!("{}: writing to the peer: {e}", self.cfg.resource);
                    self.step_conn(id, Event::TransportLost);
                    return;
                }
                backlog.sent(&m);
                batch = rx.try_recv().ok();
            }
            if let Err(e) = wr.flush().await {
                tracing::debug!("{}: writing to the peer: {e}", self.cfg.resource);
                self.step_conn(id, Event::TransportLost);
                return;
            }
        }
        let _ = wr.shutdown().await;
    }

    async fn tick_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
            let now = Instant::now();
            let ms = now.duration_since(last).as_millis() as u64;
            last = now;
            let mut g = self.inner.lock().expect("replica");
            let actions = g.node.step(Event::Tick { elapsed_ms: ms });
            self.execute(&mut g, actions);
            let st = g.node.status();
            if st.repl.is_source() || st.repl.is_target() {
                g.samples.push_back((now, st.resync_done));
                while g.samples.len() > 2 && now.duration_since(g.samples[0].0) > SPEED_WINDOW {
                    g.samples.pop_front();
                }
            }
        }
    }

    /// A client write (flags: FUA, TRIM, ZEROES as in [`data_flags`]), acknowledged
    /// when the resource's protocol says it may be. Writes larger than one peer
    /// message are split (kernel clients send up to 32 MiB); the parts do not overlap,
    /// so their order does not matter, and the write is done when every part is.
    pub async fn write(self: &Arc<Self>, offset: u64, len: u64, data: Bytes, flags: u32) -> io::Result<()> {
        // A full queue to the peer holds new writes back until the writer catches up;
        // while none is full, no lock is taken.
        if self.congested.load(Relaxed) {
            let backlog = self
                .inner
                .lock()
                .expect("replica")
                .conn
                .as_ref()
                .map(|c| c.backlog.clone());
            if let Some(b) = backlog {
                b.wait_for_room().await;
            }
        }
        let chunk = if data.is_empty() {
            u32::MAX as u64
        } else {
            MAX_DATA as u64
        };
        let mut parts = Vec::with_capacity(len.div_ceil(chunk).max(1) as usize);
        let mut at = 0;
        loop {
            let n = (len - at).min(chunk);
            let part = if data.is_empty() {
                Bytes::new()
            } else {
                data.slice(at as usize..(at + n) as usize)
            };
            parts.push((offset + at, n, part));
            at += n;
            if at >= len {
                break;
            }
        }
        self.request(parts.into_iter().map(|(offset, len, data)| {
            move |req| Event::Write {
                req,
                offset,
                len,
                data,
                flags,
            }
        }))
        .await
    }

    /// A client flush: every completed write durable where the protocol covers it.
    pub async fn flush(self: &Arc<Self>) -> io::Result<()> {
        self.request(std::iter::once(|req| Event::Flush { req })).await
    }

    /// Submits client requests (in order, in one critical section) and waits until the
    /// core completed all of them; the first error wins.
    async fn request<F: FnOnce(u64) -> Event>(self: &Arc<Self>, events: impl Iterator<Item = F>) -> io::Result<()> {
        let rxs: Vec<_> = {
            let mut g = self.inner.lock().expect("replica");
            events
                .map(|event| {
                    let req = g.next_req;
                    g.next_req += 1;
                    let (tx, rx) = oneshot::channel();
                    g.reqs.insert(req, tx);
                    let actions = g.node.step(event(req));
                    self.execute(&mut g, actions);
                    rx
                })
                .collect()
        };
        let mut result = Ok(());
        for rx in rxs {
            let r = match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(req_error(e)),
                Err(_) => Err(io::Error::other("the resource went down")),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Asks the core to promote; waits for its answer (the peer's consent when connected).
    /// A refusal that only means "the connection is changing state" is retried until
    /// ROLE_CHANGE_TIMEOUT: an operator's `primary --force` right after start-up (a handshake
    /// under way, perhaps one that will fail authentication) should not fail for that.
    pub async fn promote(self: &Arc<Self>, force: bool) -> Result<(), String> {
        self.fence_before_promote(force).await?;
        self.retry_transient(|| self.promote_once(force)).await
    }

    /// Whether promoting now first needs the fence-peer handler: a fencing policy, a
    /// Secondary without a connected peer, and no successful fencing since the peer was
    /// last seen (DRBD refuses such a promotion while the peer's disk is unknown).
    fn needs_fence_before_promote(&self, g: &Inner) -> Option<String> {
        if self.cfg.net.fencing == Fencing::DontCare || g.peer_fenced {
            return None;
        }
        let cmd = self.cfg.net.handlers.fence_peer.clone()?;
        let st = g.node.status();
        (st.role != Role::Primary && st.conn != ConnState::Connected).then_some(cmd)
    }

    /// As DRBD does when a disconnected node is promoted under a fencing policy: run
    /// the fence-peer handler and promote only when it made sure the peer cannot be
    /// promoted too (exit 3, 4, 5 or 7). `force` promotes even when it did not.
    async fn fence_before_promote(self: &Arc<Self>, force: bool) -> Result<(), String> {
        let cmd = {
            let g = self.inner.lock().expect("replica");
            match self.needs_fence_before_promote(&g) {
                Some(cmd) => cmd,
                None => return Ok(()),
            }
        };
        let r = &self.cfg.resource;
        let peer = &self.cfg.peer_name;
        tracing::warn!("{r}: becoming Primary without {peer}: running fence-peer handler first");
        let out = self.run_handler("fence-peer", &cmd).await;
        let (ok, meaning) = match out.code {
            Some(c) => fence_peer_meaning(c),
            None => (false, "the handler did not finish"),
        };
        let mut g = self.inner.lock().expect("replica");
        if ok {
            g.peer_fenced = true;
            tracing::info!("{r}: fence-peer handler for {peer}: {meaning} ({})", out.describe());
            return Ok(());
        }
        if force {
            tracing::warn!(
                "{r}: fence-peer handler for {peer}: {meaning} ({}); promoting anyway (--force): a split brain is possible",
                out.describe()
            );
            return Ok(());
        }
        g.last_problem = format!("fence-peer handler for {peer}: {meaning} ({})", out.describe());
        tracing::error!("{r}: {}", g.last_problem);
        Err(format!(
            "{r}: cannot become Primary: {peer}'s state is unknown and the fence-peer handler did not fence it: {meaning} ({}); `hbadm primary --force {r}` promotes anyway",
            out.describe()
        ))
    }

    async fn retry_transient<F, Fut>(&self, mut attempt: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + ROLE_CHANGE_TIMEOUT;
        loop {
            match attempt().await {
                Err(e) if refusal_is_transient(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }

    async fn promote_once(self: &Arc<Self>, force: bool) -> Result<(), String> {
        let rx = {
            let mut g = self.inner.lock().expect("replica");
            if g.node.status().role == Role::Primary {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            g.promote_waiters.push(tx);
            let actions = g.node.step(Event::Promote { force });
            self.execute(&mut g, actions);
            rx
        };
        self.await_role_change(rx, "Primary").await
    }

    /// Promotes without awaiting (for `open`, which cannot await): waits on this thread
    /// where the runtime allows it, else takes only an immediate answer.
    pub fn promote_blocking(self: &Arc<Self>, force: bool) -> Result<(), String> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .unwrap_or(false);
        if multi_thread {
            let this = self.clone();
            return tokio::task::block_in_place(move || {
                tokio::runtime::Handle::current().block_on(this.promote(force))
            });
        }
        let mut g = self.inner.lock().expect("replica");
        if g.node.status().role == Role::Primary {
            return Ok(());
        }
        if self.needs_fence_before_promote(&g).is_some() {
            return Err(format!(
                "{}: cannot become Primary on open: the peer must be fenced first; run `hbadm primary {}`",
                self.cfg.resource, self.cfg.resource
            ));
        }
        let actions = g.node.step(Event::Promote { force });
        self.execute(&mut g, actions);
        if g.node.status().role == Role::Primary {
            Ok(())
        } else {
            Err(format!("{}: cannot become Primary now", self.cfg.resource))
        }
    }

    pub async fn demote(self: &Arc<Self>) -> Result<(), String> {
        self.retry_transient(|| self.demote_once()).await
    }

    async fn demote_once(self: &Arc<Self>) -> Result<(), String> {
        let rx = {
            let mut g = self.inner.lock().expect("replica");
            if g.node.status().role != Role::Primary {
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            g.demote_waiters.push(tx);
            let actions = g.node.step(Event::Demote);
            self.execute(&mut g, actions);
            rx
        };
        self.await_role_change(rx, "Secondary").await
    }

    /// Demotes from a context that cannot await (last close); an immediate answer only.
    pub fn demote_now(self: &Arc<Self>) {
        let mut g = self.inner.lock().expect("replica");
        let actions = g.node.step(Event::Demote);
        self.execute(&mut g, actions);
    }

    async fn await_role_change(&self, rx: oneshot::Receiver<Result<(), String>>, to: &str) -> Result<(), String> {
        match tokio::time::timeout(ROLE_CHANGE_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("{}: the resource went down", self.cfg.resource)),
            Err(_) => Err(format!(
                "{}: no answer from {} within {:?} to becoming {to}",
                self.cfg.resource, self.cfg.peer_name, ROLE_CHANGE_TIMEOUT
            )),
        }
    }

    /// `hbadm connect [--discard-my-data]`.
    pub fn connect(self: &Arc<Self>, discard_my_data: bool) {
        self.inner.lock().expect("replica").last_problem.clear();
        self.step(Event::Connect { discard_my_data });
    }

    /// Whether a client holds the device open (the core then never gives up Primary on
    /// its own after a split brain).
    pub fn set_held_open(self: &Arc<Self>, open: bool) {
        self.step(Event::HeldOpen(open));
    }

    /// `hbadm disconnect`: StandAlone until `connect`.
    pub fn disconnect(self: &Arc<Self>) {
        self.step(Event::Disconnect);
    }

    pub fn role(&self) -> Role {
        self.inner.lock().expect("replica").node.status().role
    }

    pub fn disk(&self) -> DiskState {
        self.inner.lock().expect("replica").node.status().disk
    }

    pub fn status(&self) -> ReplicaStatus {
        let g = self.inner.lock().expect("replica");
        let core = g.node.status();
        let resync = matches!(
            core.repl,
            ReplState::SyncSource | ReplState::SyncTarget | ReplState::PausedSyncS | ReplState::PausedSyncT
        )
        .then(|| {
            let speed = match (g.samples.front(), g.samples.back()) {
                (Some(a), Some(b)) if b.0 > a.0 => {
                    ((b.1.saturating_sub(a.1)) as f64 / b.0.duration_since(a.0).as_secs_f64()) as u64
                }
                _ => 0,
            };
            let left = core.resync_total.saturating_sub(core.resync_done);
            ResyncProgress {
                total: core.resync_total,
                done: core.resync_done,
                speed,
                eta_secs: (speed > 0).then(|| left.div_ceil(speed)),
            }
        });
        ReplicaStatus {
            peer: self.cfg.peer_name.clone(),
            core,
            resync,
            last_problem: g.last_problem.clone(),
        }
    }

    /// Stops replicating: says goodbye to the peer, stops the tasks, fails whatever
    /// is still waiting. The core is dropped with the last reference.
    pub async fn shutdown(self: &Arc<Self>) {
        let writer = {
            let mut g = self.inner.lock().expect("replica");
            g.shutting_down = true;
            let actions = g.node.step(Event::Disconnect);
            self.execute(&mut g, actions);
            if let Some(c) = g.conn.take() {
                g.closing_writer = Some(c.close());
            }
            for (_, tx) in g.reqs.drain() {
                let _ = tx.send(Err(ReqError::Io("the resource went down".into())));
            }
            // Writes held for fencing were never acknowledged; they are not now either.
            g.frozen = false;
            for (tx, _) in g.held.drain(..) {
                let _ = tx.send(Err(ReqError::Io("the resource went down".into())));
            }
            g.closing_writer.take()
        };
        if let Some(w) = writer {
            let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
        }
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks"));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ReplicaConfig {
        ReplicaConfig {
            resource: "r0".into(),
            node_name: "alpha".into(),
            peer_name: "beta".into(),
            node_id: 0,
            peer_node_id: 1,
            local_addr: "127.0.0.1:7789".parse().unwrap(),
            peer_addr: "[::1]:7790".parse().unwrap(),
            protocol: Protocol::C,
            net: NetOptions {
                fencing: Fencing::ResourceOnly,
                ..NetOptions::default()
            },
            cluster_file: "/etc/hablock/hablock.toml".into(),
        }
    }

    #[test]
    fn handlers_get_hablock_and_drbd_names() {
        let env: HashMap<String, String> = handler_env(&cfg(), "fence-peer").into_iter().collect();
        let want = [
            ("HABLOCK_HANDLER", "fence-peer"),
            ("HABLOCK_RESOURCE", "r0"),
            ("HABLOCK_NODE", "alpha"),
            ("HABLOCK_PEER", "beta"),
            ("HABLOCK_PEER_ADDRESS", "::1"),
            ("HABLOCK_FENCING", "resource-only"),
            ("HABLOCK_CONFIG", "/etc/hablock/hablock.toml"),
            ("DRBD_RESOURCE", "r0"),
            ("DRBD_PEER", "beta"),
            ("DRBD_PEERS", "beta"),
            ("DRBD_PEER_ADDRESS", "::1"),
            ("DRBD_PEER_AF", "ipv6"),
            ("DRBD_MY_ADDRESS", "127.0.0.1"),
            ("DRBD_MY_AF", "ipv4"),
            ("DRBD_PEER_NODE_ID", "1"),
            ("DRBD_MY_NODE_ID", "0"),
            ("DRBD_NODE_ID_0", "alpha"),
            ("DRBD_NODE_ID_1", "beta"),
        ];
        for (k, v) in want {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(env.len(), want.len());
    }

    #[test]
    fn fence_peer_exit_codes_follow_drbd() {
        for ok in [3, 4, 5, 7] {
            assert!(fence_peer_meaning(ok).0, "{ok}");
        }
        for bad in [0, 1, 2, 6, 8, 127] {
            assert!(!fence_peer_meaning(bad).0, "{bad}");
        }
        assert!(fence_peer_meaning(6).1.contains("peer is Primary"));
        assert!(fence_peer_meaning(7).1.contains("STONITH"));
    }
}
