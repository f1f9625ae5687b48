//! The replication state machine of one resource towards one peer (sans-IO).
//!
//! A driver owns a [`Node`], feeds it [`Event`]s (a client request, a message
//! from the peer, a local I/O completion, a timer tick, an operator command)
//! through [`Node::step`], and executes the returned [`Action`]s **in order**:
//!
//! * [`Action::Send`] goes to the peer connection (one ordered stream);
//! * [`Action::Write`], [`Action::Read`], [`Action::Flush`] go to the local
//!   backing store; their completion comes back as [`Event::IoDone`] with the
//!   same [`IoId`], in any order;
//! * [`Action::PersistMeta`] and [`Action::FlushBitmap`] must be durable
//!   (written through `MetaDisk` and synced) **before the driver executes any
//!   later action**; [`Action::SetOutOfSync`] / [`Action::ClearInSync`] update
//!   the in-memory bitmap slot of the peer;
//! * [`Action::Complete`] answers a client request; [`Action::Notify`] is for
//!   logs, `hbadm status` and events;
//! * [`Action::CloseTransport`] drops the connection. The driver then brings up
//!   a new one whenever [`Status::conn`] is [`ConnState::Connecting`] and reports
//!   it with [`Event::TransportUp`].
//!
//! Rules the core enforces (docs/replication.md §3 explains them):
//!
//! * completion per protocol: A = local done (the data was handed to the
//!   connection before the local write was issued), B = local done + peer
//!   `RecvAck`, C = local done + peer `WriteAck`; without a connection a write
//!   completes on the local disk and its blocks are marked out of sync;
//! * overlapping local I/O is issued in arrival order, one at a time, and a
//!   flush or barrier waits for everything before it: so the secondary applies
//!   writes in the primary's order and resync data never overwrites a newer
//!   application write (the source reads a block only after the writes before
//!   it completed, and sends the data before any later write's data);
//! * handshake: Hello (version range, features, node id, resource), optional
//!   HMAC challenge/response, then Sizes, Uuids, State; the generation
//!   identifiers decide no-sync, bitmap resync, full sync or split brain
//!   ([`uuid_compare`]); a Primary never becomes sync target;
//! * promotion: refused while the peer is Primary (unless two primaries are
//!   allowed) and, without `force`, unless the local disk is UpToDate; while
//!   connected the peer's consent is asked first, so two nodes never both
//!   become Primary at once.

use super::auth;
use super::bitmap::SyncBitmap;
use super::msg::{self, *};
use super::policy::{self, AfterSbPolicy, SbVerdict, SbView};
use super::state::{ConnState, DiskState, ReplState, Role};
use crate::config::Protocol;
use crate::store::meta::gi::{
    random_uuid, uuid_compare, uuid_value, Generations, GiView, SyncDecision, UUID_JUST_CREATED,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};

/// A client request id, chosen by the driver.
pub type ReqId = u64;
/// A local I/O id, chosen by the core.
pub type IoId = u64;

/// Static configuration of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u32,
    pub peer_node_id: u32,
    /// This node's and the peer's names (DRBD's `on NAME`), for `discard-node-NAME`.
    pub node_name: String,
    pub peer_name: String,
    pub resource: String,
    pub protocol: Protocol,
    /// `shared-secret`; `None` = no authentication (both sides must agree).
    pub shared_secret: Option<Vec<u8>>,
    pub allow_two_primaries: bool,
    /// after-sb-0pri/1pri/2pri; both peers must configure the same.
    pub after_sb: AfterSbPolicy,
    /// [`msg::features`] offered.
    pub features: u64,
    /// Send a CRC32C with every data block (when the peer offers the feature too).
    pub data_integrity: bool,
    /// Use checksum-based resync (when the peer offers the feature too).
    pub csums: bool,
    /// Bytes per bitmap bit (4096).
    pub block_size: u64,
    /// Resync rate in bytes per second; 0 = unlimited.
    pub resync_rate: u64,
    /// Bytes per resync request (a multiple of `block_size`).
    pub resync_request: u64,
    /// Most resync requests in flight.
    pub max_resync_requests: usize,
    /// Send a Ping after this long without traffic.
    pub ping_interval_ms: u64,
    /// Drop the connection after this long without any message.
    pub timeout_ms: u64,
    /// Seed of the core's random numbers (UUIDs, challenges). The daemon seeds it
    /// from the OS; the simulator from its history seed.
    pub seed: u64,
}

impl NodeConfig {
    /// Defaults for the given identity (protocol C, 4 KiB blocks, 100 MiB/s resync).
    pub fn new(node_id: u32, peer_node_id: u32, resource: &str) -> NodeConfig {
        NodeConfig {
            node_id,
            peer_node_id,
            node_name: format!("node{node_id}"),
            peer_name: format!("node{peer_node_id}"),
            resource: resource.to_string(),
            protocol: Protocol::C,
            shared_secret: None,
            allow_two_primaries: false,
            after_sb: AfterSbPolicy::default(),
            features: msg::features::ALL,
            data_integrity: false,
            csums: false,
            block_size: 4096,
            resync_rate: 100 << 20,
            resync_request: 64 << 10,
            max_resync_requests: 16,
            ping_interval_ms: 10_000,
            timeout_ms: 60_000,
            seed: 0,
        }
    }
}

/// The persistent part of the state, as `MetaDisk` keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaState {
    pub gi: Generations,
    /// MDF consistent.
    pub consistent: bool,
    /// MDF was-up-to-date.
    pub up_to_date: bool,
    /// MDF primary indicator: set while Primary, so a crash is recognised.
    pub primary: bool,
    /// MDF crashed-primary: crashed as Primary and not resynced since.
    pub crashed_primary: bool,
}

/// What the driver loads from `MetaDisk` to start a [`Node`].
#[derive(Debug, Clone)]
pub struct Persisted {
    pub meta: MetaState,
    /// Bitmap slot of the peer (index into `gi.bitmap`).
    pub slot: usize,
    /// Data size in bytes.
    pub size: u64,
    /// The peer slot's bitmap words.
    pub bitmap: Vec<u64>,
}

/// Why a client request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqError {
    /// Writes are only accepted on the Primary.
    NotPrimary,
    /// The local disk reported an error.
    Io(String),
    /// Outside the device.
    OutOfRange,
}

/// Inputs of [`Node::step`].
#[derive(Debug, Clone)]
pub enum Event {
    /// Operator: connect to the peer (leaves StandAlone). `discard_my_data`
    /// resolves a split brain in the peer's favour (`connect --discard-my-data`).
    Connect { discard_my_data: bool },
    /// Operator: disconnect and stay StandAlone.
    Disconnect,
    /// The driver established a transport to the peer.
    TransportUp,
    /// The transport broke (or closed). Ignored when not connected.
    TransportLost,
    /// A whole message from the peer.
    Received(Message),
    /// Operator: become Primary (`force`: declare the local data good).
    Promote { force: bool },
    /// Operator: become Secondary.
    Demote,
    /// A client write (flags: [`msg::data_flags`] FUA, FLUSH, TRIM, ZEROES).
    /// For TRIM/ZEROES `data` is empty and `len` gives the length.
    Write {
        req: ReqId,
        offset: u64,
        len: u64,
        data: Bytes,
        flags: u32,
    },
    /// A client flush (make every completed write durable on the replicas).
    Flush { req: ReqId },
    /// A local I/O finished: read data, or empty for writes and flushes.
    IoDone { id: IoId, result: Result<Bytes, String> },
    /// Time passed (drives ping, timeout and the resync rate budget).
    Tick { elapsed_ms: u64 },
    /// The driver's device is held open by a client (true) or by none (false). A node held
    /// open never gives up Primary on its own: call-pri-lost-after-sb then emits
    /// `PriLostAfterSb` and disconnects, as DRBD's role change fails with SS_DEVICE_IN_USE.
    HeldOpen(bool),
}

/// Outputs of [`Node::step`]; execute in order (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Message),
    CloseTransport,
    /// Local write (flags: FUA, TRIM, ZEROES as in [`msg::data_flags`]).
    Write {
        id: IoId,
        offset: u64,
        len: u64,
        data: Bytes,
        flags: u32,
    },
    Read {
        id: IoId,
        offset: u64,
        len: u64,
    },
    Flush {
        id: IoId,
    },
    /// Write the superblock (GIs and flags); durable before the next action.
    PersistMeta(Box<MetaState>),
    /// Mark bytes out of sync in the peer's bitmap slot (memory).
    SetOutOfSync {
        offset: u64,
        len: u64,
    },
    /// Mark the whole blocks inside the range in sync in the peer's slot (memory).
    ClearInSync {
        offset: u64,
        len: u64,
    },
    /// Make the bitmap slot durable before the next action.
    FlushBitmap,
    /// Answer a client request. `peer_durable`: the peer confirmed the write on
    /// its disk before completion (always true for a protocol C write done
    /// while connected).
    Complete {
        req: ReqId,
        result: Result<(), ReqError>,
        peer_durable: bool,
    },
    Notify(Notice),
}

/// Things an operator (or the simulator) wants to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Connected {
        decision: SyncDecision,
    },
    ConnectionLost {
        reason: String,
    },
    /// Refused to connect: split brain or unrelated data that no policy resolved.
    /// Manual resolution needed (DRBD's `split-brain` handler).
    SplitBrain {
        decision: SyncDecision,
    },
    /// The handshake found a split brain (DRBD's `initial-split-brain` handler);
    /// followed by [`Notice::SplitBrainResolved`] or [`Notice::SplitBrain`].
    SplitBrainDetected {
        decision: SyncDecision,
    },
    /// A split brain was resolved, by an after-sb policy or `--discard-my-data`
    /// (`rule` says which). `discard_mine`: this node's changes are overwritten by
    /// a resync from the peer.
    SplitBrainResolved {
        rule: String,
        discard_mine: bool,
    },
    /// call-pri-lost-after-sb: this Primary's data lost the split brain and it
    /// could not give up its role (client requests in flight). The driver runs the
    /// `pri-lost-after-sb` handler; the connection goes StandAlone.
    PriLostAfterSb,
    AuthFailed,
    ProtocolError(String),
    /// The handshake found a configuration mismatch that retrying will not fix.
    Refused(String),
    ResyncStarted {
        source: bool,
        bytes: u64,
    },
    ResyncFinished {
        source: bool,
    },
    Promoted,
    PromoteRefused(String),
    Demoted,
    DemoteRefused(String),
}

/// Refusal texts that only mean "not now": the connection is changing state, and the same
/// request can succeed a moment later. Drivers retry these instead of failing the operator.
pub const REFUSED_NEGOTIATING: &str = "the connection is being negotiated; retry";
pub const REFUSED_CONNECTION_LOST: &str = "connection lost; retry";

/// Whether a promote/demote refusal (possibly prefixed with context) is transient.
pub fn refusal_is_transient(reason: &str) -> bool {
    reason.ends_with(REFUSED_NEGOTIATING) || reason.ends_with(REFUSED_CONNECTION_LOST)
}

/// A snapshot for `hbadm status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub role: Role,
    pub disk: DiskState,
    pub conn: ConnState,
    pub repl: ReplState,
    pub peer_role: Role,
    pub peer_disk: DiskState,
    pub out_of_sync_bytes: u64,
    /// Bytes to resync when the current resync started, and bytes done.
    pub resync_total: u64,
    pub resync_done: u64,
    /// Writes sent and not yet confirmed on the peer's disk.
    pub unacked: usize,
    /// Local I/O in flight plus queued.
    pub local_pending: usize,
}

#[derive(Debug)]
enum OpKind {
    App {
        wid: u64,
        data: Bytes,
        flags: u32,
    },
    AppFlush {
        fid: u64,
    },
    Peer {
        seq: u64,
        gen: u64,
        data: Bytes,
        flags: u32,
    },
    PeerFlush {
        epoch: u64,
        gen: u64,
    },
    ResyncRead {
        gen: u64,
        digest: Option<[u8; DIGEST_LEN]>,
    },
    ResyncWrite {
        gen: u64,
        data: Bytes,
    },
    CsumRead {
        gen: u64,
    },
}

#[derive(Debug)]
struct Op {
    kind: OpKind,
    offset: u64,
    len: u64,
    write: bool,
    /// Orders against everything (flushes).
    barrier: bool,
}

impl Op {
    fn conflicts(&self, o: &Op) -> bool {
        self.barrier
            || o.barrier
            || ((self.write || o.write) && self.offset < o.offset + o.len && o.offset < self.offset + self.len)
    }
    fn is_app(&self) -> bool {
        matches!(self.kind, OpKind::App { .. } | OpKind::AppFlush { .. })
    }
}

#[derive(Debug)]
struct WriteState {
    req: ReqId,
    local_done: bool,
    local_err: Option<String>,
    seq: Option<u64>,
    recv_acked: bool,
    write_acked: bool,
    /// The connection went away before the peer confirmed it.
    peer_gone: bool,
}

#[derive(Debug)]
struct FlushState {
    req: ReqId,
    local_done: bool,
    local_err: Option<String>,
    /// Waiting for this barrier's ack (protocol C, connected).
    epoch: Option<u64>,
}

#[derive(Debug)]
struct TlEntry {
    offset: u64,
    len: u64,
    wid: u64,
}

#[derive(Debug, Default)]
struct Handshake {
    challenge: Option<[u8; AUTH_LEN]>,
    hello: bool,
    authed: bool,
    features: u64,
    sizes: Option<Sizes>,
    uuids: Option<Uuids>,
    state: Option<StateMsg>,
    after_sb: Option<AfterSbInfo>,
    /// The out-of-sync count we sent in our AfterSb message.
    my_changes: u64,
    bitmap_received: bool,
}

#[derive(Debug, Default)]
struct Resync {
    /// Next bit the target considers.
    pos: u64,
    inflight: usize,
    total_bits: u64,
    /// The source's current UUID, adopted by the target at the end.
    source_current: u64,
    /// Target after a resolved split brain: the current UUID to roll back to when
    /// the resync starts (the common ancestor, or "just created" for a full sync),
    /// so an interrupted resync resumes as a plain resync and never flips sides.
    rollback: Option<u64>,
}

/// The replication state machine; see the module docs.
pub struct Node {
    cfg: NodeConfig,
    rng: StdRng,
    meta: MetaState,
    slot: usize,
    size: u64,
    bm: SyncBitmap,
    out: Vec<Action>,

    role: Role,
    disk: DiskState,
    conn: ConnState,
    repl: ReplState,
    peer_role: Role,
    peer_disk: DiskState,
    want_connect: bool,
    discard_my_data: bool,
    /// A client holds the device open ([`Event::HeldOpen`]).
    held_open: bool,
    /// Incremented whenever a connection ends: stale completions carry an old one.
    gen: u64,
    hs: Handshake,
    idle_ms: u64,
    silent_ms: u64,
    /// The first write after losing the peer as Primary starts a new generation.
    rotate_pending: bool,

    next_io: IoId,
    inflight: BTreeMap<IoId, Op>,
    waiting: VecDeque<Op>,
    next_wid: u64,
    writes: BTreeMap<u64, WriteState>,
    flushes: BTreeMap<u64, FlushState>,
    next_seq: u64,
    tl: BTreeMap<u64, TlEntry>,
    epoch: u64,

    resync: Resync,
    budget: u64,
    promote_pending: Option<(u32, bool)>,
    next_change: u32,
}

impl Node {
    /// Starts the core from what the metadata holds. The returned actions
    /// (crash recovery) must be executed before anything else.
    pub fn new(cfg: NodeConfig, p: Persisted) -> (Node, Vec<Action>) {
        assert!(cfg.block_size.is_power_of_two() && cfg.resync_request >= cfg.block_size);
        let disk = if p.meta.consistent && p.meta.up_to_date {
            DiskState::UpToDate
        } else if p.meta.consistent {
            DiskState::Outdated
        } else {
            DiskState::Inconsistent
        };
        let mut n = Node {
            rng: StdRng::seed_from_u64(cfg.seed),
            bm: SyncBitmap::from_words(p.size, cfg.block_size, &p.bitmap),
            meta: p.meta,
            slot: p.slot,
            size: p.size,
            out: Vec::new(),
            role: Role::Secondary,
            disk,
            conn: ConnState::StandAlone,
            repl: ReplState::Off,
            peer_role: Role::Unknown,
            peer_disk: DiskState::DUnknown,
            want_connect: false,
            discard_my_data: false,
            held_open: false,
            gen: 0,
            hs: Handshake::default(),
            idle_ms: 0,
            silent_ms: 0,
            rotate_pending: false,
            next_io: 1,
            inflight: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_wid: 1,
            writes: BTreeMap::new(),
            flushes: BTreeMap::new(),
            next_seq: 1,
            tl: BTreeMap::new(),
            epoch: 0,
            resync: Resync::default(),
            budget: 0,
            promote_pending: None,
            next_change: 1,
            cfg,
        };
        if n.meta.primary {
            // Crashed as Primary: writes in flight at the crash may be on our disk
            // and not on the peer's. Without an activity log replay every block is
            // suspect: mark all out of sync and remember to be the source when the
            // generations are equal.
            n.meta.primary = false;
            n.meta.crashed_primary = true;
            n.bm.set_all();
            n.out.push(Action::SetOutOfSync { offset: 0, len: n.size });
            n.out.push(Action::FlushBitmap);
            n.persist_meta();
        }
        let out = std::mem::take(&mut n.out);
        (n, out)
    }

    /// Handles one event; returns the actions to execute in order.
    pub fn step(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Connect { discard_my_data } => {
                self.want_connect = true;
                self.discard_my_data = discard_my_data;
                if self.conn == ConnState::StandAlone {
                    self.conn = ConnState::Connecting;
                }
            }
            Event::Disconnect => {
                self.want_connect = false;
                if self.transport_up() {
                    self.out.push(Action::Send(Message::Disconnect));
                    self.out.push(Action::CloseTransport);
                    self.lost("disconnected by the operator".into());
                }
                self.conn = ConnState::StandAlone;
            }
            Event::TransportUp => self.transport_established(),
            Event::TransportLost => {
                if self.transport_up() {
                    self.lost("connection lost".into());
                }
            }
            Event::Received(m) => {
                if self.transport_up() {
                    self.silent_ms = 0;
                    self.received(m);
                }
            }
            Event::Promote { force } => self.promote(force),
            Event::Demote => self.demote(),
            Event::Write {
                req,
                offset,
                len,
                data,
                flags,
            } => self.app_write(req, offset, len, data, flags),
            Event::Flush { req } => self.app_flush(req),
            Event::IoDone { id, result } => self.io_done(id, result),
            Event::Tick { elapsed_ms } => self.tick(elapsed_ms),
            Event::HeldOpen(open) => self.held_open = open,
        }
        std::mem::take(&mut self.out)
    }

    /// The current states, for status displays and checks.
    pub fn status(&self) -> Status {
        let bpb = self.cfg.block_size;
        Status {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
            repl: self.repl,
            peer_role: self.peer_role,
            peer_disk: self.peer_disk,
            out_of_sync_bytes: self.bm.count() * bpb,
            resync_total: self.resync.total_bits * bpb,
            resync_done: self.resync.total_bits.saturating_sub(self.bm.count()) * bpb,
            unacked: self.tl.len(),
            local_pending: self.inflight.len() + self.waiting.len(),
        }
    }

    /// The persistent state as the core sees it now.
    pub fn meta(&self) -> &MetaState {
        &self.meta
    }

    /// The core's bitmap towards the peer.
    pub fn bitmap(&self) -> &SyncBitmap {
        &self.bm
    }

    // ---- connection life cycle

    fn transport_up(&self) -> bool {
        matches!(
            self.conn,
            ConnState::Handshaking | ConnState::Negotiating | ConnState::Connected
        )
    }

    fn transport_established(&mut self) {
        if self.conn != ConnState::Connecting {
            // Not wanted (StandAlone) or already up: refuse this transport.
            self.out.push(Action::CloseTransport);
            return;
        }
        self.conn = ConnState::Handshaking;
        self.hs = Handshake::default();
        self.idle_ms = 0;
        self.silent_ms = 0;
        self.send(Message::Hello(Hello {
            node_id: self.cfg.node_id,
            resource: self.cfg.resource.clone(),
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            features: self.cfg.features,
        }));
        if self.cfg.shared_secret.is_some() {
            let mut ch = [0u8; AUTH_LEN];
            self.rng.fill(&mut ch);
            self.hs.challenge = Some(ch);
            self.send(Message::AuthChallenge(ch));
        }
    }

    fn send(&mut self, m: Message) {
        self.idle_ms = 0;
        self.out.push(Action::Send(m));
    }

    /// Drops the connection because of `reason`; `standalone` stops retrying.
    fn fail(&mut self, notice: Notice, standalone: bool) {
        let reason = format!("{notice:?}");
        self.out.push(Action::Notify(notice));
        self.out.push(Action::CloseTransport);
        self.lost(reason);
        if standalone {
            self.want_connect = false;
            self.conn = ConnState::StandAlone;
        }
    }

    fn protocol_error(&mut self, what: String) {
        self.fail(Notice::ProtocolError(what), false);
    }

    /// Common clean-up when a connection ends, for whatever reason.
    fn lost(&mut self, reason: String) {
        let was_connected = self.conn == ConnState::Connected;
        self.gen += 1;
        self.conn = if self.want_connect {
            ConnState::Connecting
        } else {
            ConnState::StandAlone
        };
        self.repl = ReplState::Off;
        self.peer_role = Role::Unknown;
        self.peer_disk = DiskState::DUnknown;
        self.hs = Handshake::default();
        self.resync.inflight = 0;
        self.out.push(Action::Notify(Notice::ConnectionLost { reason }));
        // Every write the peer has not confirmed on its disk is out of sync.
        let mut marked = false;
        for (_, e) in std::mem::take(&mut self.tl) {
            self.bm.set_range(e.offset, e.len);
            self.out.push(Action::SetOutOfSync {
                offset: e.offset,
                len: e.len,
            });
            marked = true;
            if let Some(w) = self.writes.get_mut(&e.wid) {
                w.peer_gone = true;
            }
        }
        if marked {
            self.out.push(Action::FlushBitmap);
        }
        for w in self.writes.values_mut() {
            if w.seq.is_some() && !w.write_acked {
                w.peer_gone = true;
            }
        }
        for f in self.flushes.values_mut() {
            f.epoch = None;
        }
        if let Some((_, _)) = self.promote_pending.take() {
            self.out
                .push(Action::Notify(Notice::PromoteRefused(REFUSED_CONNECTION_LOST.into())));
        }
        if self.role == Role::Primary && (was_connected || marked) {
            self.rotate_pending = true;
            if marked {
                self.rotate_generation();
            }
        }
        self.complete_ready();
        self.schedule();
    }

    fn received(&mut self, m: Message) {
        // Before authentication only the handshake messages are allowed.
        if !self.hs.hello {
            match m {
                Message::Hello(h) => return self.got_hello(h),
                other => return self.protocol_error(format!("expected Hello, got {:?}", other.command())),
            }
        }
        match m {
            Message::AuthChallenge(ch) => {
                let Some(secret) = self.cfg.shared_secret.clone() else {
                    return self.fail(
                        Notice::Refused("the peer requires authentication but no shared-secret is configured".into()),
                        true,
                    );
                };
                let r = auth::response(&secret, &ch, self.cfg.node_id, &self.cfg.resource);
                self.send(Message::AuthResponse(r));
                return;
            }
            Message::AuthResponse(r) => {
                let (Some(secret), Some(ch)) = (self.cfg.shared_secret.clone(), self.hs.challenge) else {
                    return self.protocol_error("unexpected AuthResponse".into());
                };
                if self.hs.authed {
                    return self.protocol_error("second AuthResponse".into());
                }
                if !auth::verify(&secret, &ch, self.cfg.peer_node_id, &self.cfg.resource, &r) {
                    return self.fail(Notice::AuthFailed, true);
                }
                self.hs.authed = true;
                self.send_params();
                return;
            }
            Message::Ping => return self.send(Message::PingAck),
            Message::PingAck => return,
            Message::Disconnect => {
                self.out.push(Action::CloseTransport);
                return self.lost("the peer disconnected".into());
            }
            _ => {}
        }
        if !self.hs.authed {
            return self.protocol_error(format!("{:?} before authentication", m.command()));
        }
        match m {
            Message::Sizes(s) => {
                if s.size != self.size {
                    return self.fail(
                        Notice::Refused(format!(
                            "device sizes differ: local {} bytes, peer {} bytes (online resize is not implemented)",
                            self.size, s.size
                        )),
                        true,
                    );
                }
                self.hs.sizes = Some(s);
            }
            Message::AfterSb(a) => self.hs.after_sb = Some(a),
            Message::Uuids(u) => {
                self.hs.uuids = Some(u);
                if self.conn == ConnState::Connected && self.repl == ReplState::Established {
                    // The peer started a new generation (forced promotion): decide again.
                    self.decide();
                }
            }
            Message::State(s) => {
                self.peer_role = s.role;
                self.peer_disk = s.disk;
                if self.conn == ConnState::Negotiating {
                    if self.hs.sizes.is_none() || self.hs.uuids.is_none() || self.hs.after_sb.is_none() {
                        return self.protocol_error("State before Sizes, Uuids and AfterSb".into());
                    }
                    self.hs.state = Some(s);
                    self.decide();
                }
            }
            Message::StateChangeRequest { id, change } => self.got_change_request(id, change),
            Message::StateChangeReply { id, reply } => self.got_change_reply(id, reply),
            other if self.conn != ConnState::Connected => {
                self.protocol_error(format!("{:?} before the handshake finished", other.command()))
            }
            Message::Bitmap(c) => self.got_bitmap(c),
            Message::Data(d) => self.got_data(d),
            Message::RecvAck { seq } => {
                if let Some(e) = self.tl.get(&seq) {
                    if let Some(w) = self.writes.get_mut(&e.wid) {
                        w.recv_acked = true;
                    }
                }
                self.complete_ready();
            }
            Message::WriteAck { seq } => {
                if let Some(e) = self.tl.remove(&seq) {
                    if let Some(w) = self.writes.get_mut(&e.wid) {
                        w.recv_acked = true;
                        w.write_acked = true;
                    }
                }
                self.complete_ready();
            }
            Message::NegAck { seq } => {
                if let Some(e) = self.tl.remove(&seq) {
                    self.bm.set_range(e.offset, e.len);
                    self.out.push(Action::SetOutOfSync {
                        offset: e.offset,
                        len: e.len,
                    });
                    if let Some(w) = self.writes.get_mut(&e.wid) {
                        w.peer_gone = true;
                    }
                }
                self.complete_ready();
            }
            Message::Barrier { epoch } => {
                if self.role == Role::Primary && !self.cfg.allow_two_primaries {
                    return self.protocol_error("Barrier received while Primary".into());
                }
                let gen = self.gen;
                self.submit(Op {
                    kind: OpKind::PeerFlush { epoch, gen },
                    offset: 0,
                    len: 0,
                    write: true,
                    barrier: true,
                });
            }
            Message::BarrierAck { epoch } => {
                for f in self.flushes.values_mut() {
                    if f.epoch == Some(epoch) {
                        f.epoch = None;
                    }
                }
                self.complete_ready();
            }
            Message::ResyncRequest { offset, len } => self.got_resync_request(offset, len, None),
            Message::ChecksumRequest { offset, len, digest } => self.got_resync_request(offset, len, Some(digest)),
            Message::ResyncData(r) => self.got_resync_data(r),
            Message::InSync { offset, len } => self.got_in_sync(offset, len),
            Message::Hello(_) | Message::AuthChallenge(_) | Message::AuthResponse(_) => {
                self.protocol_error("handshake message after the handshake".into())
            }
            Message::Ping | Message::PingAck | Message::Disconnect => {}
        }
    }

    fn got_hello(&mut self, h: Hello) {
        if h.resource != self.cfg.resource {
            return self.fail(
                Notice::Refused(format!(
                    "the peer serves resource {:?}, not {:?}",
                    h.resource, self.cfg.resource
                )),
                true,
            );
        }
        if h.node_id != self.cfg.peer_node_id {
            return self.fail(
                Notice::Refused(format!(
                    "the peer is node {}, the configuration expects node {}",
                    h.node_id, self.cfg.peer_node_id
                )),
                true,
            );
        }
        let hi = h.max_version.min(PROTOCOL_VERSION_MAX);
        let lo = h.min_version.max(PROTOCOL_VERSION_MIN);
        if lo > hi {
            return self.fail(
                Notice::Refused(format!(
                    "no common protocol version: peer {}..={}, local {}..={}",
                    h.min_version, h.max_version, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX
                )),
                true,
            );
        }
        self.hs.hello = true;
        self.hs.features = h.features & self.cfg.features;
        if self.cfg.shared_secret.is_none() {
            self.hs.authed = true;
            self.send_params();
        }
    }

    fn send_params(&mut self) {
        self.conn = ConnState::Negotiating;
        self.send(Message::Sizes(Sizes {
            capacity: self.size,
            size: self.size,
        }));
        self.send_uuids();
        self.hs.my_changes = self.bm.count();
        self.send(Message::AfterSb(AfterSbInfo {
            changes: self.hs.my_changes,
            policy: self.cfg.after_sb.clone(),
        }));
        self.send_state();
    }

    fn send_uuids(&mut self) {
        let g = &self.meta.gi;
        let mut flags = 0;
        if self.meta.crashed_primary {
            flags |= uuid_flags::CRASHED_PRIMARY;
        }
        if self.discard_my_data {
            flags |= uuid_flags::DISCARD_MY_DATA;
        }
        let m = Message::Uuids(Uuids {
            current: g.current,
            bitmap: g.bitmap[self.slot],
            history: g.history.iter().copied().filter(|&h| h != 0).collect(),
            flags,
        });
        self.send(m);
    }

    fn send_state(&mut self) {
        self.send(Message::State(StateMsg {
            role: self.role,
            disk: self.disk,
        }));
    }

    /// Applies the handshake rules once the peer's parameters are in.
    fn decide(&mut self) {
        let Some(peer) = self.hs.uuids.clone() else { return };
        let pv = GiView {
            current: peer.current,
            bitmap: peer.bitmap,
            history: &peer.history,
        };
        let mut d = uuid_compare(&self.meta.gi.view(self.slot), &pv);
        use SyncDecision::*;
        if d == NoSync {
            let mine = self.meta.crashed_primary;
            let theirs = peer.flags & uuid_flags::CRASHED_PRIMARY != 0;
            d = match (mine, theirs) {
                (true, false) => BitmapSource,
                (false, true) => BitmapTarget,
                (true, true) if self.cfg.node_id < self.cfg.peer_node_id => BitmapSource,
                (true, true) => BitmapTarget,
                (false, false) => NoSync,
            };
        }
        let Some(info) = self.hs.after_sb.clone() else {
            return self.protocol_error("handshake without AfterSb".into());
        };
        if info.policy != self.cfg.after_sb {
            let (l, p) = (&self.cfg.after_sb, &info.policy);
            return self.fail(
                Notice::Refused(format!(
                    "after-sb policies differ: local 0pri {} 1pri {} 2pri {} always-asbp {}, peer 0pri {} 1pri {} 2pri {} always-asbp {}",
                    l.pri0, l.pri1, l.pri2, l.always_asbp, p.pri0, p.pri1, p.pri2, p.always_asbp
                )),
                true,
            );
        }
        let mut rollback = None;
        if matches!(d, SplitBrainCommonAncestor | SplitBrainUnrelated) {
            match self.resolve_split_brain(d, &peer, &info) {
                Some(resolved) => {
                    rollback = resolved.1;
                    d = resolved.0;
                }
                None => return,
            }
        }
        if matches!(d, SplitBrainCommonAncestor | SplitBrainUnrelated | UnrelatedData) {
            return self.fail(Notice::SplitBrain { decision: d }, true);
        }
        if self.role == Role::Primary && self.peer_role == Role::Primary && !self.cfg.allow_two_primaries {
            return self.fail(
                Notice::Refused("both nodes are Primary and allow-two-primaries is off".into()),
                true,
            );
        }
        let target = matches!(d, FullSyncTarget | BitmapTarget);
        let source = matches!(d, FullSyncSource | BitmapSource);
        if target && self.role == Role::Primary {
            return self.fail(
                Notice::Refused("this Primary would become sync target; demote it first (rr-conflict)".into()),
                true,
            );
        }
        let source_disk = if source { self.disk } else { self.peer_disk };
        if (source || target) && !source_disk.is_consistent() {
            return self.fail(
                Notice::Refused(format!(
                    "the sync source's disk is {source_disk}; no consistent copy to sync from"
                )),
                true,
            );
        }
        self.discard_my_data = false;
        self.conn = ConnState::Connected;
        self.out.push(Action::Notify(Notice::Connected { decision: d }));
        match d {
            NoSync | BothEmpty => {
                self.repl = ReplState::Established;
                if self.bm.count() > 0 && d == NoSync {
                    self.bm.clear_blocks(0, self.bm.nbits());
                    self.out.push(Action::ClearInSync {
                        offset: 0,
                        len: self.size,
                    });
                    self.out.push(Action::FlushBitmap);
                }
                if d == NoSync && self.disk.is_consistent() && self.peer_disk == DiskState::UpToDate {
                    self.set_disk(DiskState::UpToDate);
                }
            }
            _ => {
                if matches!(d, FullSyncSource | FullSyncTarget) {
                    self.bm.set_all();
                    self.out.push(Action::SetOutOfSync {
                        offset: 0,
                        len: self.size,
                    });
                }
                self.repl = if source {
                    ReplState::WFBitMapS
                } else {
                    ReplState::WFBitMapT
                };
                self.resync = Resync {
                    source_current: peer.current,
                    rollback,
                    ..Resync::default()
                };
                // The peer's chunks always follow its State/Uuids, which led here.
                self.hs.bitmap_received = false;
                self.send_bitmap();
            }
        }
        self.schedule();
    }

    fn send_bitmap(&mut self) {
        let words = self.bm.words().to_vec();
        let chunks: Vec<&[u64]> = words.chunks(MAX_BITMAP_WORDS).collect();
        if chunks.is_empty() {
            self.send(Message::Bitmap(BitmapChunk {
                first_word: 0,
                last: true,
                words: vec![],
            }));
        }
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            self.send(Message::Bitmap(BitmapChunk {
                first_word: (i * MAX_BITMAP_WORDS) as u64,
                last: i + 1 == n,
                words: c.to_vec(),
            }));
        }
    }

    fn got_bitmap(&mut self, c: BitmapChunk) {
        if !matches!(self.repl, ReplState::WFBitMapS | ReplState::WFBitMapT) || self.hs.bitmap_received {
            return self.protocol_error("unexpected bitmap chunk".into());
        }
        let n = self.bm.or_words(c.first_word, &c.words);
        if n > 0 {
            let bpb = self.cfg.block_size;
            for (i, w) in c.words.iter().enumerate() {
                if *w != 0 {
                    let word = c.first_word + i as u64;
                    self.out.push(Action::SetOutOfSync {
                        offset: word * 64 * bpb,
                        len: (64 * bpb).min(self.size.saturating_sub(word * 64 * bpb)),
                    });
                }
            }
        }
        if c.last {
            self.hs.bitmap_received = true;
            self.bitmap_exchanged();
        }
    }

    fn bitmap_exchanged(&mut self) {
        self.out.push(Action::FlushBitmap);
        self.resync.total_bits = self.bm.count();
        let source = self.repl == ReplState::WFBitMapS;
        if !source {
            if let Some(cur) = self.resync.rollback.take() {
                // Split-brain victim: our generation is discarded. From now on we are
                // the ancestor generation being resynced (persisted with Inconsistent
                // below, before any resync write).
                let old = self.meta.gi.current;
                self.meta.gi.push_history(old);
                self.meta.gi.current = cur;
                self.meta.gi.bitmap[self.slot] = 0;
                self.persist_meta();
            }
            // Resync writes make the data inconsistent until the end.
            self.set_disk(DiskState::Inconsistent);
        }
        self.repl = if source {
            ReplState::SyncSource
        } else {
            ReplState::SyncTarget
        };
        self.out.push(Action::Notify(Notice::ResyncStarted {
            source,
            bytes: self.bm.count() * self.cfg.block_size,
        }));
        self.maybe_finish_resync();
        self.pump_resync();
    }

    // ---- roles

    fn got_change_request(&mut self, id: u32, change: StateChange) {
        let StateChange::Promote = change;
        let reply = if self.role == Role::Primary && !self.cfg.allow_two_primaries {
            ChangeReply::PeerIsPrimary
        } else if self.promote_pending.is_some() {
            ChangeReply::Concurrent
        } else if self.conn != ConnState::Connected {
            ChangeReply::Refused
        } else {
            // Until its State says otherwise the peer counts as Primary, so our own
            // promotion is refused meanwhile.
            self.peer_role = Role::Primary;
            ChangeReply::Granted
        };
        self.send(Message::StateChangeReply { id, reply });
    }

    fn got_change_reply(&mut self, id: u32, reply: ChangeReply) {
        let Some((pid, force)) = self.promote_pending else {
            return;
        };
        if pid != id {
            return;
        }
        self.promote_pending = None;
        match reply {
            ChangeReply::Granted => match self.may_promote(force) {
                Ok(()) => self.do_promote(force),
                Err(e) => {
                    self.send_state();
                    self.out.push(Action::Notify(Notice::PromoteRefused(e)));
                }
            },
            other => self.out.push(Action::Notify(Notice::PromoteRefused(format!(
                "the peer refused: {other:?}"
            )))),
        }
    }

    fn may_promote(&self, force: bool) -> Result<(), String> {
        if self.repl.is_target() {
            return Err(format!(
                "this node is {} (Inconsistent); wait for the resync to finish",
                self.repl
            ));
        }
        if self.peer_role == Role::Primary && !self.cfg.allow_two_primaries {
            return Err("the peer is Primary; demote it first (two primaries are not allowed)".into());
        }
        if self.disk != DiskState::UpToDate && !force {
            return Err(format!(
                "local disk is {}; use `hbadm primary --force` to declare this node's data the good copy",
                self.disk
            ));
        }
        Ok(())
    }

    fn promote(&mut self, force: bool) {
        if self.role == Role::Primary {
            return self.out.push(Action::Notify(Notice::Promoted));
        }
        if let Err(e) = self.may_promote(force) {
            return self.out.push(Action::Notify(Notice::PromoteRefused(e)));
        }
        match self.conn {
            ConnState::Handshaking | ConnState::Negotiating => self
                .out
                .push(Action::Notify(Notice::PromoteRefused(REFUSED_NEGOTIATING.into()))),
            ConnState::Connected => {
                if self.promote_pending.is_some() {
                    return self.out.push(Action::Notify(Notice::PromoteRefused(
                        "a promotion is in progress".into(),
                    )));
                }
                let id = self.next_change;
                self.next_change += 1;
                self.promote_pending = Some((id, force));
                self.send(Message::StateChangeRequest {
                    id,
                    change: StateChange::Promote,
                });
            }
            _ => self.do_promote(force),
        }
    }

    fn do_promote(&mut self, force: bool) {
        let connected = self.conn == ConnState::Connected;
        let new_gen = if connected {
            force && self.disk != DiskState::UpToDate
        } else {
            // A disconnected node that is promoted starts a new generation.
            true
        };
        self.role = Role::Primary;
        self.meta.primary = true;
        self.rotate_pending = false;
        if new_gen {
            let fresh = random_uuid(&mut self.rng, true);
            let away: &[usize] = if connected { &[] } else { &[self.slot] };
            self.meta.gi.new_current_uuid(fresh, true, away);
            self.meta.consistent = true;
            self.meta.up_to_date = true;
            self.disk = DiskState::UpToDate;
        } else {
            self.meta.gi.set_primary_bit(true);
        }
        self.persist_meta();
        self.out.push(Action::Notify(Notice::Promoted));
        if connected {
            self.send_state();
            if new_gen {
                self.send_uuids();
                if self.repl == ReplState::Established {
                    self.decide();
                }
            }
        }
    }

    fn demote(&mut self) {
        if self.role != Role::Primary {
            return self.out.push(Action::Notify(Notice::Demoted));
        }
        if matches!(self.conn, ConnState::Handshaking | ConnState::Negotiating) {
            // Our State is on its way: the peer decides on it (split-brain policies).
            return self
                .out
                .push(Action::Notify(Notice::DemoteRefused(REFUSED_NEGOTIATING.into())));
        }
        if !self.give_up_primary() {
            return self.out.push(Action::Notify(Notice::DemoteRefused(
                "client requests are in flight; retry when they finish".into(),
            )));
        }
        if self.conn == ConnState::Connected {
            self.send_state();
        }
    }

    /// Becomes Secondary unless client requests are in flight.
    fn give_up_primary(&mut self) -> bool {
        if !self.writes.is_empty() || !self.flushes.is_empty() || self.waiting.iter().any(Op::is_app) {
            return false;
        }
        self.role = Role::Secondary;
        self.meta.primary = false;
        self.rotate_pending = false;
        self.meta.gi.set_primary_bit(false);
        self.persist_meta();
        self.out.push(Action::Notify(Notice::Demoted));
        true
    }

    /// A split brain was found (`d` is rule 6 or 7). Applies the after-sb
    /// policies, then the operator's `--discard-my-data`. Returns the resync
    /// decision and, for the victim, the UUID to roll back to; or `None` after
    /// dropping the connection to StandAlone.
    fn resolve_split_brain(
        &mut self,
        d: SyncDecision,
        peer: &Uuids,
        info: &AfterSbInfo,
    ) -> Option<(SyncDecision, Option<u64>)> {
        self.out
            .push(Action::Notify(Notice::SplitBrainDetected { decision: d }));
        let common = d == SyncDecision::SplitBrainCommonAncestor;
        let mut resolved: Option<(bool, String)> = None;
        if common || self.cfg.after_sb.always_asbp {
            let view = SbView {
                my_role: self.role,
                peer_role: self.peer_role,
                my_bitmap_uuid: self.meta.gi.bitmap[self.slot],
                peer_bitmap_uuid: peer.bitmap,
                my_changes: self.hs.my_changes,
                peer_changes: info.changes,
                my_name: &self.cfg.node_name,
                peer_name: &self.cfg.peer_name,
                i_win_ties: self.cfg.node_id < self.cfg.peer_node_id,
            };
            let o = policy::resolve(&self.cfg.after_sb, &view);
            match o.verdict {
                SbVerdict::DiscardPeer => {
                    if o.victim_is_primary {
                        // The peer gives up its role (or disconnects with pri-lost-after-sb).
                        self.peer_role = Role::Secondary;
                    }
                    resolved = Some((false, o.rule));
                }
                SbVerdict::DiscardMine => {
                    // A device held open keeps its role (its client would see the data
                    // change under it), like one with requests in flight.
                    if o.victim_is_primary && (self.held_open || !self.give_up_primary()) {
                        self.out.push(Action::Notify(Notice::PriLostAfterSb));
                        self.fail(Notice::SplitBrain { decision: d }, true);
                        return None;
                    }
                    resolved = Some((true, o.rule));
                }
                SbVerdict::Disconnect => {}
            }
        }
        if resolved.is_none() {
            let mine = self.discard_my_data;
            let theirs = peer.flags & uuid_flags::DISCARD_MY_DATA != 0;
            if mine && !theirs {
                resolved = Some((true, "discard-my-data (this node)".into()));
            } else if theirs && !mine {
                resolved = Some((false, "discard-my-data (the peer)".into()));
            }
        }
        let Some((discard_mine, rule)) = resolved else {
            self.fail(Notice::SplitBrain { decision: d }, true);
            return None;
        };
        self.out
            .push(Action::Notify(Notice::SplitBrainResolved { rule, discard_mine }));
        use SyncDecision::*;
        // With a common ancestor both bitmaps hold every block changed since it:
        // a bitmap resync rolls the victim back. Otherwise only a full sync is safe.
        Some(match (common, discard_mine) {
            (true, true) => (BitmapTarget, Some(uuid_value(self.meta.gi.bitmap[self.slot]))),
            (true, false) => (BitmapSource, None),
            (false, true) => (FullSyncTarget, Some(UUID_JUST_CREATED)),
            (false, false) => (FullSyncSource, None),
        })
    }

    fn set_disk(&mut self, d: DiskState) {
        if self.disk == d {
            return;
        }
        self.disk = d;
        self.meta.consistent = d.is_consistent();
        self.meta.up_to_date = d == DiskState::UpToDate;
        self.persist_meta();
        if self.conn == ConnState::Connected {
            self.send_state();
        }
    }

    fn persist_meta(&mut self) {
        self.out.push(Action::PersistMeta(Box::new(self.meta.clone())));
    }

    /// Starts a new data generation because the peer misses our writes.
    fn rotate_generation(&mut self) {
        self.rotate_pending = false;
        let fresh = random_uuid(&mut self.rng, true);
        self.meta.gi.new_current_uuid(fresh, true, &[self.slot]);
        self.persist_meta();
    }

    // ---- client requests

    fn app_write(&mut self, req: ReqId, offset: u64, len: u64, data: Bytes, flags: u32) {
        if self.role != Role::Primary {
            return self.out.push(Action::Complete {
                req,
                result: Err(ReqError::NotPrimary),
                peer_durable: false,
            });
        }
        let no_payload = flags & (data_flags::TRIM | data_flags::ZEROES) != 0;
        let bad_len = if no_payload {
            !data.is_empty() || len > u32::MAX as u64
        } else {
            data.len() as u64 != len || data.len() > MAX_DATA
        };
        if bad_len || len == 0 || offset.checked_add(len).is_none_or(|e| e > self.size) {
            return self.out.push(Action::Complete {
                req,
                result: Err(ReqError::OutOfRange),
                peer_durable: false,
            });
        }
        let wid = self.next_wid;
        self.next_wid += 1;
        self.writes.insert(
            wid,
            WriteState {
                req,
                local_done: false,
                local_err: None,
                seq: None,
                recv_acked: false,
                write_acked: false,
                peer_gone: false,
            },
        );
        if flags & data_flags::FLUSH != 0 {
            // A pre-flush: nothing to wait for beyond ordering, which the barrier gives.
            self.app_flush_internal(None);
        }
        self.submit(Op {
            kind: OpKind::App {
                wid,
                data,
                flags: flags & data_flags::KNOWN & !data_flags::FLUSH,
            },
            offset,
            len,
            write: true,
            barrier: false,
        });
    }

    fn app_flush(&mut self, req: ReqId) {
        if self.role != Role::Primary {
            return self.out.push(Action::Complete {
                req,
                result: Err(ReqError::NotPrimary),
                peer_durable: false,
            });
        }
        self.app_flush_internal(Some(req));
    }

    fn app_flush_internal(&mut self, req: Option<ReqId>) {
        let fid = self.next_wid;
        self.next_wid += 1;
        let mut epoch = None;
        if self.conn == ConnState::Connected {
            let e = self.epoch;
            self.epoch += 1;
            self.send(Message::Barrier { epoch: e });
            if self.cfg.protocol == Protocol::C {
                epoch = Some(e);
            }
        }
        if let Some(req) = req {
            self.flushes.insert(
                fid,
                FlushState {
                    req,
                    local_done: false,
                    local_err: None,
                    epoch,
                },
            );
        }
        self.submit(Op {
            kind: OpKind::AppFlush { fid },
            offset: 0,
            len: 0,
            write: true,
            barrier: true,
        });
    }

    fn complete_ready(&mut self) {
        let proto = self.cfg.protocol;
        let done: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| {
                w.local_done
                    && (w.seq.is_none()
                        || w.peer_gone
                        || w.local_err.is_some()
                        || match proto {
                            Protocol::A => true,
                            Protocol::B => w.recv_acked,
                            Protocol::C => w.write_acked,
                        })
            })
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            let w = self.writes.remove(&k).expect("listed");
            self.out.push(Action::Complete {
                req: w.req,
                result: w.local_err.map_or(Ok(()), |e| Err(ReqError::Io(e))),
                peer_durable: w.write_acked,
            });
        }
        let done: Vec<u64> = self
            .flushes
            .iter()
            .filter(|(_, f)| f.local_done && (f.epoch.is_none() || f.local_err.is_some()))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            let f = self.flushes.remove(&k).expect("listed");
            self.out.push(Action::Complete {
                req: f.req,
                result: f.local_err.map_or(Ok(()), |e| Err(ReqError::Io(e))),
                peer_durable: false,
            });
        }
    }

    // ---- local I/O scheduling

    fn submit(&mut self, op: Op) {
        self.waiting.push_back(op);
        self.schedule();
    }

    /// Issues every waiting op that conflicts with nothing in flight and with no
    /// earlier waiting op. Client ops wait while a handshake is in progress, so
    /// no write is issued whose replication is undecided.
    fn schedule(&mut self) {
        let gate = matches!(self.conn, ConnState::Handshaking | ConnState::Negotiating);
        let mut i = 0;
        while i < self.waiting.len() {
            let op = &self.waiting[i];
            let blocked = (gate && op.is_app())
                || self.inflight.values().any(|o| o.conflicts(op))
                || self.waiting.iter().take(i).any(|o| o.conflicts(op));
            if blocked {
                i += 1;
                continue;
            }
            let op = self.waiting.remove(i).expect("index");
            self.issue(op);
        }
    }

    fn issue(&mut self, mut op: Op) {
        let id = self.next_io;
        self.next_io += 1;
        let (offset, len) = (op.offset, op.len);
        match &mut op.kind {
            OpKind::App { wid, data, flags } => {
                let payload = std::mem::take(data);
                if self.conn == ConnState::Connected {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.tl.insert(seq, TlEntry { offset, len, wid: *wid });
                    if let Some(w) = self.writes.get_mut(wid) {
                        w.seq = Some(seq);
                    }
                    let crc = (self.cfg.data_integrity && self.hs.features & features::CRC32C != 0)
                        .then(|| crc32c::crc32c(&payload));
                    self.send(Message::Data(Data {
                        seq,
                        offset,
                        len: len as u32,
                        flags: *flags,
                        payload: payload.clone(),
                        crc,
                    }));
                } else {
                    if self.rotate_pending {
                        self.rotate_generation();
                    }
                    self.bm.set_range(offset, len);
                    self.out.push(Action::SetOutOfSync { offset, len });
                }
                self.out.push(Action::Write {
                    id,
                    offset,
                    len,
                    data: payload,
                    flags: *flags,
                });
            }
            OpKind::Peer { data, flags, .. } => {
                let (payload, flags) = (std::mem::take(data), *flags);
                self.out.push(Action::Write {
                    id,
                    offset,
                    len,
                    data: payload,
                    flags,
                });
            }
            OpKind::ResyncWrite { data, .. } => {
                let (payload, flags) = (std::mem::take(data), 0);
                self.out.push(Action::Write {
                    id,
                    offset,
                    len,
                    data: payload,
                    flags,
                });
            }
            OpKind::AppFlush { .. } | OpKind::PeerFlush { .. } => self.out.push(Action::Flush { id }),
            OpKind::ResyncRead { .. } | OpKind::CsumRead { .. } => self.out.push(Action::Read { id, offset, len }),
        }
        self.inflight.insert(id, op);
    }

    fn io_done(&mut self, id: IoId, result: Result<Bytes, String>) {
        let Some(op) = self.inflight.remove(&id) else { return };
        let (offset, len) = (op.offset, op.len);
        match op.kind {
            OpKind::App { wid, .. } => {
                if let Some(w) = self.writes.get_mut(&wid) {
                    w.local_done = true;
                    w.local_err = result.err();
                }
            }
            OpKind::AppFlush { fid } => {
                if let Some(f) = self.flushes.get_mut(&fid) {
                    f.local_done = true;
                    f.local_err = result.err();
                }
            }
            OpKind::Peer { seq, gen, .. } => {
                if gen == self.gen {
                    self.send(match result {
                        Ok(_) => Message::WriteAck { seq },
                        Err(_) => Message::NegAck { seq },
                    });
                }
            }
            OpKind::PeerFlush { epoch, gen } => {
                if gen == self.gen && result.is_ok() {
                    self.send(Message::BarrierAck { epoch });
                } else if gen == self.gen {
                    self.protocol_error("local flush failed".into());
                }
            }
            OpKind::ResyncRead { gen, digest } => {
                if gen == self.gen {
                    match result {
                        Ok(data) => {
                            let same = digest.is_some_and(|d| <[u8; DIGEST_LEN]>::from(Sha256::digest(&data)) == d);
                            if same {
                                self.clear_in_sync(offset, len);
                                self.send(Message::InSync {
                                    offset,
                                    len: len as u32,
                                });
                                self.maybe_finish_resync();
                            } else {
                                let crc = (self.cfg.data_integrity && self.hs.features & features::CRC32C != 0)
                                    .then(|| crc32c::crc32c(&data));
                                self.send(Message::ResyncData(ResyncData {
                                    offset,
                                    payload: data,
                                    crc,
                                }));
                            }
                        }
                        Err(e) => self.protocol_error(format!("resync read failed: {e}")),
                    }
                }
            }
            OpKind::CsumRead { gen } => {
                if gen == self.gen && self.repl == ReplState::SyncTarget {
                    let digest = match result {
                        Ok(d) => Sha256::digest(&d).into(),
                        Err(_) => [0; DIGEST_LEN],
                    };
                    self.send(Message::ChecksumRequest {
                        offset,
                        len: len as u32,
                        digest,
                    });
                }
            }
            OpKind::ResyncWrite { gen, .. } => {
                // A resync write of an earlier connection clears nothing: the source
                // did not hear about it, and may have newer data for the block since.
                if gen == self.gen {
                    match result {
                        Ok(_) => {
                            self.clear_in_sync(offset, len);
                            self.send(Message::InSync {
                                offset,
                                len: len as u32,
                            });
                            self.resync.inflight = self.resync.inflight.saturating_sub(1);
                            self.maybe_finish_resync();
                            self.pump_resync();
                        }
                        Err(e) => self.protocol_error(format!("resync write failed: {e}")),
                    }
                }
            }
        }
        self.complete_ready();
        self.schedule();
    }

    // ---- secondary: peer writes

    fn got_data(&mut self, d: Data) {
        if self.role == Role::Primary && !self.cfg.allow_two_primaries {
            return self.protocol_error("Data received while Primary".into());
        }
        if let Some(c) = d.crc {
            if crc32c::crc32c(&d.payload) != c {
                return self.protocol_error(format!("data integrity: CRC32C mismatch at offset {}", d.offset));
            }
        }
        let len = d.len as u64;
        if len == 0 || d.offset.checked_add(len).is_none_or(|e| e > self.size) {
            return self.protocol_error(format!("Data outside the device: {}+{}", d.offset, len));
        }
        if self.cfg.protocol == Protocol::B {
            self.send(Message::RecvAck { seq: d.seq });
        }
        let gen = self.gen;
        self.submit(Op {
            kind: OpKind::Peer {
                seq: d.seq,
                gen,
                data: d.payload,
                flags: d.flags,
            },
            offset: d.offset,
            len,
            write: true,
            barrier: false,
        });
    }

    // ---- resync

    fn clear_in_sync(&mut self, offset: u64, len: u64) {
        let bpb = self.cfg.block_size;
        let first = offset.div_ceil(bpb);
        let end = if offset + len >= self.size {
            self.bm.nbits()
        } else {
            (offset + len) / bpb
        };
        if self.bm.clear_blocks(first, end) > 0 {
            self.out.push(Action::ClearInSync { offset, len });
        }
    }

    fn tick(&mut self, ms: u64) {
        if self.cfg.resync_rate > 0 {
            let cap = self.cfg.resync_rate.max(self.cfg.resync_request);
            self.budget = (self.budget + self.cfg.resync_rate.saturating_mul(ms) / 1000).min(cap);
        }
        if self.transport_up() {
            self.idle_ms += ms;
            self.silent_ms += ms;
            if self.silent_ms >= self.cfg.timeout_ms {
                self.out.push(Action::CloseTransport);
                return self.lost("the peer did not answer (timeout)".into());
            }
            if self.idle_ms >= self.cfg.ping_interval_ms && self.hs.hello {
                self.send(Message::Ping);
            }
        }
        self.pump_resync();
    }

    /// Target: sends resync requests in linear order while budget and the
    /// in-flight limit allow.
    fn pump_resync(&mut self) {
        if self.repl != ReplState::SyncTarget {
            return;
        }
        let bpb = self.cfg.block_size;
        let per = self.cfg.resync_request / bpb;
        while self.resync.inflight < self.cfg.max_resync_requests {
            let Some(first) = self.bm.next_set(self.resync.pos) else {
                if self.resync.pos > 0 && self.resync.inflight == 0 && self.bm.count() > 0 {
                    // Bits behind us (a failed write): go round again.
                    self.resync.pos = 0;
                    continue;
                }
                break;
            };
            let mut end = first + 1;
            while end < first + per && self.bm.test(end) {
                end += 1;
            }
            let offset = first * bpb;
            let len = (end * bpb).min(self.size) - offset;
            if self.cfg.resync_rate > 0 {
                if self.budget < len {
                    break;
                }
                self.budget -= len;
            }
            self.resync.pos = end;
            self.resync.inflight += 1;
            if self.cfg.csums && self.hs.features & features::CSUMS != 0 {
                let gen = self.gen;
                self.submit(Op {
                    kind: OpKind::CsumRead { gen },
                    offset,
                    len,
                    write: false,
                    barrier: false,
                });
            } else {
                self.send(Message::ResyncRequest {
                    offset,
                    len: len as u32,
                });
            }
        }
    }

    fn got_resync_request(&mut self, offset: u64, len: u32, digest: Option<[u8; DIGEST_LEN]>) {
        if self.repl != ReplState::SyncSource {
            return self.protocol_error(format!("resync request while {}", self.repl));
        }
        let len = len as u64;
        if len == 0 || len as usize > MAX_DATA || offset.checked_add(len).is_none_or(|e| e > self.size) {
            return self.protocol_error(format!("resync request outside the device: {offset}+{len}"));
        }
        let gen = self.gen;
        self.submit(Op {
            kind: OpKind::ResyncRead { gen, digest },
            offset,
            len,
            write: false,
            barrier: false,
        });
    }

    fn got_resync_data(&mut self, r: ResyncData) {
        if self.repl != ReplState::SyncTarget {
            return self.protocol_error(format!("resync data while {}", self.repl));
        }
        if let Some(c) = r.crc {
            if crc32c::crc32c(&r.payload) != c {
                return self.protocol_error(format!("data integrity: CRC32C mismatch at offset {}", r.offset));
            }
        }
        let len = r.payload.len() as u64;
        if len == 0 || r.offset.checked_add(len).is_none_or(|e| e > self.size) {
            return self.protocol_error(format!("resync data outside the device: {}+{len}", r.offset));
        }
        let gen = self.gen;
        self.submit(Op {
            kind: OpKind::ResyncWrite { gen, data: r.payload },
            offset: r.offset,
            len,
            write: true,
            barrier: false,
        });
    }

    fn got_in_sync(&mut self, offset: u64, len: u32) {
        match self.repl {
            ReplState::SyncSource => {
                self.clear_in_sync(offset, len as u64);
            }
            ReplState::SyncTarget => {
                // Checksum match: the source found our copy equal.
                self.clear_in_sync(offset, len as u64);
                self.resync.inflight = self.resync.inflight.saturating_sub(1);
                self.pump_resync();
            }
            other => return self.protocol_error(format!("InSync while {other}")),
        }
        self.maybe_finish_resync();
    }

    fn maybe_finish_resync(&mut self) {
        if self.bm.count() > 0 {
            return;
        }
        match self.repl {
            ReplState::SyncSource => {
                self.meta.gi.clear_bitmap_uuid(self.slot);
                self.meta.crashed_primary = false;
                self.repl = ReplState::Established;
                self.out.push(Action::FlushBitmap);
                self.persist_meta();
                self.out.push(Action::Notify(Notice::ResyncFinished { source: true }));
            }
            ReplState::SyncTarget if self.resync.inflight == 0 => {
                self.meta.gi.adopt_sync_source(self.resync.source_current);
                self.meta.gi.bitmap[self.slot] = 0;
                self.meta.crashed_primary = false;
                self.repl = ReplState::Established;
                self.out.push(Action::FlushBitmap);
                self.set_disk(DiskState::UpToDate);
                self.persist_meta();
                self.out.push(Action::Notify(Notice::ResyncFinished { source: false }));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
