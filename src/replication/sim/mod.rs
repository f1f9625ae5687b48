//! A seeded, deterministic simulator of two replicating nodes.
//!
//! It runs the real [`Node`] core against a faulty world: a connection that is
//! one ordered byte stream per direction (every message goes through the wire
//! codec), and that breaks (loss = the connection drops and must be rebuilt);
//! local disks whose I/O completes in any order; crashes of either node at any
//! step (volatile state lost, each in-flight write either reached the disk or
//! not; what the core persisted through `PersistMeta`/`FlushBitmap` kept);
//! restarts, failovers, flushes and random client writes.
//!
//! Checks (counted in [`SimStats::checks`]):
//!
//! * after every step: never two Primaries; a Primary is never a sync target;
//!   a sync target's source has consistent data;
//! * whenever a node becomes Primary: every write acknowledged with
//!   `peer_durable` (protocol C's promise) has its content, or a newer one, on
//!   that node's disk;
//! * at the end of every history, after healing (restart, reconnect, resolve a
//!   split brain by discarding the Secondary's data, let the resync run): both
//!   nodes Connected and Established, both UpToDate, no out-of-sync bits, and
//!   the two disks byte-identical.
//!
//! Each written block carries a stamp (a write counter in its first 8 bytes), so
//! "content or newer" is a comparison of stamps.

use super::msg::data_flags;
use super::node::{Action, Event, MetaState, Node, NodeConfig, Notice, Persisted, ReqId};
use super::policy::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, AfterSbPolicy};
use super::state::{ConnState, ReplState, Role};
use super::wire;
use crate::config::Protocol;
use crate::store::meta::gi::Generations;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

/// Block size of the simulated device.
pub const BLOCK: u64 = 4096;

/// Shape of the simulated histories.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Device size in blocks.
    pub blocks: u64,
    /// Random steps per history (healing comes after).
    pub steps: usize,
    /// Protocol; `None` picks one per history.
    pub protocol: Option<Protocol>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            blocks: 48,
            steps: 400,
            protocol: None,
        }
    }
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    pub histories: u64,
    pub steps: u64,
    pub checks: u64,
    pub writes_acked: u64,
    pub writes_peer_durable: u64,
    pub crashes: u64,
    pub failovers: u64,
    pub resyncs: u64,
    /// `SplitBrain` notices (unresolved: StandAlone), counted per node.
    pub split_brains: u64,
    pub promotions_refused: u64,
    /// Split-brain scenarios ([`run_split_brain`]) run.
    pub sb_histories: u64,
    /// Of those, histories where both sides diverged (a split brain must be detected).
    pub sb_expected: u64,
    /// Histories where the handshake detected a split brain.
    pub sb_detected: u64,
    /// Detected and resolved by the after-sb policy (a resync from the survivor).
    pub sb_resolved: u64,
    /// Detected and left unresolved (both disks kept their own data).
    pub sb_unresolved: u64,
    /// Resolutions where the losing Primary gave up its role (call-pri-lost-after-sb).
    pub sb_primary_demoted: u64,
    /// Resyncs after a resolution that were cut and resumed.
    pub sb_resync_interrupted: u64,
}

impl SimStats {
    pub fn add(&mut self, o: &SimStats) {
        self.histories += o.histories;
        self.steps += o.steps;
        self.checks += o.checks;
        self.writes_acked += o.writes_acked;
        self.writes_peer_durable += o.writes_peer_durable;
        self.crashes += o.crashes;
        self.failovers += o.failovers;
        self.resyncs += o.resyncs;
        self.split_brains += o.split_brains;
        self.promotions_refused += o.promotions_refused;
        self.sb_histories += o.sb_histories;
        self.sb_expected += o.sb_expected;
        self.sb_detected += o.sb_detected;
        self.sb_resolved += o.sb_resolved;
        self.sb_unresolved += o.sb_unresolved;
        self.sb_primary_demoted += o.sb_primary_demoted;
        self.sb_resync_interrupted += o.sb_resync_interrupted;
    }
}

#[derive(Debug)]
enum Io {
    Write { offset: u64, data: Vec<u8> },
    Read { offset: u64, len: u64 },
    Flush,
}

struct SimNode {
    core: Option<Node>,
    disk: Vec<u8>,
    meta: MetaState,
    /// The driver's bitmap slot in memory, and what is durable.
    bm_mem: super::bitmap::SyncBitmap,
    bm_disk: Vec<u64>,
    io: BTreeMap<u64, Io>,
    /// Outstanding client writes: request id -> (first block, stamp, blocks).
    reqs: BTreeMap<ReqId, (u64, u64, u64)>,
    restarts: u64,
}

/// One simulated history.
pub struct Sim {
    rng: StdRng,
    cfg: SimConfig,
    protocol: Protocol,
    seed: u64,
    nodes: [SimNode; 2],
    /// Connection: up, and the frames in flight towards node i.
    net_up: bool,
    net: [VecDeque<Vec<u8>>; 2],
    events: VecDeque<(usize, Event)>,
    next_req: ReqId,
    next_stamp: u64,
    /// Per block: the newest stamp acknowledged with peer_durable.
    required: Vec<u64>,
    stats: SimStats,
    failure: Option<String>,
    /// After-sb policy of both nodes.
    after_sb: AfterSbPolicy,
    /// The link is cut on purpose: no transport comes up.
    partitioned: bool,
    /// Two Primaries are expected while disconnected (split-brain scenario).
    split_scenario: bool,
    /// Per node: notices seen (split brain detected / resolved, demoted) since the last reset.
    sb_seen: [SbSeen; 2],
}

#[derive(Debug, Clone, Copy, Default)]
struct SbSeen {
    detected: bool,
    resolved: bool,
    unresolved: bool,
    demoted: bool,
}

fn stamp_block(stamp: u64, block: u64) -> Vec<u8> {
    let mut v = vec![0u8; BLOCK as usize];
    v[..8].copy_from_slice(&stamp.to_le_bytes());
    let mut x = stamp.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ block;
    for c in v[8..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    v
}

impl Sim {
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let protocol = cfg
            .protocol
            .unwrap_or_else(|| [Protocol::A, Protocol::B, Protocol::C][rng.gen_range(0..3)]);
        let size = cfg.blocks * BLOCK;
        let mk = || SimNode {
            core: None,
            disk: vec![0; size as usize],
            meta: MetaState {
                gi: Generations::just_created(),
                consistent: false,
                up_to_date: false,
                primary: false,
                crashed_primary: false,
            },
            bm_mem: super::bitmap::SyncBitmap::new(size, BLOCK),
            bm_disk: vec![0; cfg.blocks.div_ceil(64) as usize],
            io: BTreeMap::new(),
            reqs: BTreeMap::new(),
            restarts: 0,
        };
        let required = vec![0; cfg.blocks as usize];
        let mut s = Sim {
            rng,
            protocol,
            seed,
            nodes: [mk(), mk()],
            net_up: false,
            net: [VecDeque::new(), VecDeque::new()],
            events: VecDeque::new(),
            next_req: 1,
            next_stamp: 1,
            required,
            stats: SimStats::default(),
            failure: None,
            after_sb: AfterSbPolicy::default(),
            partitioned: false,
            split_scenario: false,
            sb_seen: [SbSeen::default(); 2],
            cfg,
        };
        s.start(0);
        s.start(1);
        s
    }

    fn node_cfg(&self, i: usize) -> NodeConfig {
        let mut c = NodeConfig::new(i as u32, 1 - i as u32, "r0");
        c.protocol = self.protocol;
        c.shared_secret = Some(b"sim-secret".to_vec());
        c.data_integrity = self.seed & 1 == 0;
        c.csums = matches!(self.seed % 3, 0);
        c.resync_rate = 64 << 10;
        c.resync_request = 4 * BLOCK;
        c.max_resync_requests = 4;
        c.ping_interval_ms = 1_000;
        c.timeout_ms = 1_000_000;
        c.after_sb = self.after_sb.clone();
        c.seed = self
            .seed
            .wrapping_mul(31)
            .wrapping_add(i as u64 * 7 + self.nodes[i].restarts * 1000);
        c
    }

    fn start(&mut self, i: usize) {
        let n = &self.nodes[i];
        let p = Persisted {
            meta: n.meta.clone(),
            slot: 0,
            size: self.cfg.blocks * BLOCK,
            bitmap: n.bm_disk.clone(),
        };
        let (core, actions) = Node::new(self.node_cfg(i), p);
        let n = &mut self.nodes[i];
        n.bm_mem = super::bitmap::SyncBitmap::from_words(self.cfg.blocks * BLOCK, BLOCK, &n.bm_disk);
        n.core = Some(core);
        self.apply(i, actions);
        self.events.push_back((i, Event::Connect { discard_my_data: false }));
        self.drain();
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("seed {}: {what}", self.seed));
        }
    }

    fn break_net(&mut self) {
        if !self.net_up {
            return;
        }
        self.net_up = false;
        self.net = [VecDeque::new(), VecDeque::new()];
        for i in 0..2 {
            if self.nodes[i].core.is_some() {
                self.events.push_back((i, Event::TransportLost));
            }
        }
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(m) => {
                    if self.net_up {
                        self.net[1 - i].push_back(wire::encode_to_vec(&m));
                    }
                }
                Action::CloseTransport => self.break_net(),
                Action::Write {
                    id,
                    offset,
                    len,
                    data,
                    flags,
                } => {
                    let data = if flags & (data_flags::TRIM | data_flags::ZEROES) != 0 {
                        vec![0; len as usize]
                    } else {
                        data.to_vec()
                    };
                    self.nodes[i].io.insert(id, Io::Write { offset, data });
                }
                Action::Read { id, offset, len } => {
                    self.nodes[i].io.insert(id, Io::Read { offset, len });
                }
                Action::Flush { id } => {
                    self.nodes[i].io.insert(id, Io::Flush);
                }
                Action::PersistMeta(m) => self.nodes[i].meta = *m,
                Action::SetOutOfSync { offset, len } => {
                    self.nodes[i].bm_mem.set_range(offset, len);
                }
                Action::ClearInSync { offset, len } => {
                    let first = offset.div_ceil(BLOCK);
                    let end = if offset + len >= self.cfg.blocks * BLOCK {
                        self.cfg.blocks
                    } else {
                        (offset + len) / BLOCK
                    };
                    self.nodes[i].bm_mem.clear_blocks(first, end);
                }
                Action::FlushBitmap => {
                    self.nodes[i].bm_disk = self.nodes[i].bm_mem.words().to_vec();
                }
                Action::Complete {
                    req,
                    result,
                    peer_durable,
                } => {
                    if let Some((first, stamp, nb)) = self.nodes[i].reqs.remove(&req) {
                        if result.is_ok() {
                            self.stats.writes_acked += 1;
                            if peer_durable {
                                self.stats.writes_peer_durable += 1;
                                for b in first..first + nb {
                                    let r = &mut self.required[b as usize];
                                    *r = (*r).max(stamp);
                                }
                            }
                        }
                    }
                }
                Action::Notify(n) => match n {
                    Notice::SplitBrain { .. } => {
                        self.stats.split_brains += 1;
                        self.sb_seen[i].unresolved = true;
                    }
                    Notice::SplitBrainDetected { .. } => self.sb_seen[i].detected = true,
                    Notice::SplitBrainResolved { .. } => self.sb_seen[i].resolved = true,
                    Notice::Demoted => self.sb_seen[i].demoted = true,
                    Notice::ResyncStarted { source: true, .. } => self.stats.resyncs += 1,
                    Notice::Promoted => self.check_promoted(i),
                    Notice::PromoteRefused(_) => self.stats.promotions_refused += 1,
                    Notice::ProtocolError(e) => self.fail(format!("node {i}: protocol error {e}")),
                    _ => {}
                },
            }
        }
    }

    fn drain(&mut self) {
        while let Some((i, ev)) = self.events.pop_front() {
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            let acts = core.step(ev);
            self.apply(i, acts);
        }
    }

    fn stamp_at(&self, i: usize, block: u64) -> u64 {
        let o = (block * BLOCK) as usize;
        u64::from_le_bytes(self.nodes[i].disk[o..o + 8].try_into().expect("8"))
    }

    fn check_promoted(&mut self, i: usize) {
        self.stats.checks += 1;
        for b in 0..self.cfg.blocks {
            let have = self.stamp_at(i, b);
            let need = self.required[b as usize];
            if have < need {
                self.fail(format!(
                    "node {i} promoted without an acknowledged write: block {b} has stamp {have}, needs {need}"
                ));
                return;
            }
        }
    }

    fn check_step(&mut self) {
        self.stats.checks += 1;
        let st: Vec<_> = self.nodes.iter().map(|n| n.core.as_ref().map(|c| c.status())).collect();
        if let (Some(a), Some(b)) = (&st[0], &st[1]) {
            let connected = a.conn == ConnState::Connected || b.conn == ConnState::Connected;
            if a.role == Role::Primary && b.role == Role::Primary && (connected || !self.split_scenario) {
                return self.fail("two primaries".into());
            }
        }
        for (i, s) in st.iter().enumerate() {
            let Some(s) = s else { continue };
            if s.role == Role::Primary && s.repl.is_target() {
                return self.fail(format!("node {i} is Primary and {}", s.repl));
            }
            if s.repl == ReplState::SyncTarget {
                if let Some(p) = &st[1 - i] {
                    if p.conn == ConnState::Connected && p.repl == ReplState::SyncSource && !p.disk.is_consistent() {
                        return self.fail(format!("node {i} syncs from an {} source", p.disk));
                    }
                }
            }
        }
    }

    fn app_write(&mut self, i: usize) {
        let nb = self.rng.gen_range(1..=3u64.min(self.cfg.blocks));
        let first = self.rng.gen_range(0..=self.cfg.blocks - nb);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let mut data = Vec::with_capacity((nb * BLOCK) as usize);
        for b in first..first + nb {
            data.extend(stamp_block(stamp, b));
        }
        let req = self.next_req;
        self.next_req += 1;
        self.nodes[i].reqs.insert(req, (first, stamp, nb));
        let flags = if self.rng.gen_ratio(1, 10) { data_flags::FUA } else { 0 };
        self.events.push_back((
            i,
            Event::Write {
                req,
                offset: first * BLOCK,
                len: nb * BLOCK,
                data: data.into(),
                flags,
            },
        ));
    }

    fn complete_io(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.io.is_empty() {
            return;
        }
        let k = *n.io.keys().nth(self.rng.gen_range(0..n.io.len())).expect("index");
        let io = n.io.remove(&k).expect("key");
        let result = match io {
            Io::Write { offset, data } => {
                n.disk[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                Ok(bytes::Bytes::new())
            }
            Io::Read { offset, len } => Ok(bytes::Bytes::copy_from_slice(
                &n.disk[offset as usize..(offset + len) as usize],
            )),
            Io::Flush => Ok(bytes::Bytes::new()),
        };
        self.events.push_back((i, Event::IoDone { id: k, result }));
    }

    fn deliver(&mut self, i: usize) {
        let Some(frame) = self.net[i].pop_front() else { return };
        match wire::decode(&frame) {
            Ok(m) => self.events.push_back((i, Event::Received(m))),
            Err(e) => self.fail(format!("codec: {e}")),
        }
    }

    fn crash(&mut self, i: usize) {
        self.stats.crashes += 1;
        let n = &mut self.nodes[i];
        n.core = None;
        let ios = std::mem::take(&mut n.io);
        for (_, io) in ios {
            if let Io::Write { offset, data } = io {
                if self.rng.gen_bool(0.5) {
                    n.disk[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
                }
            }
        }
        n.reqs.clear();
        self.break_net();
    }

    fn connect_if_possible(&mut self) {
        let ready = |n: &SimNode| {
            n.core
                .as_ref()
                .is_some_and(|c| c.status().conn == ConnState::Connecting)
        };
        if !self.net_up && !self.partitioned && ready(&self.nodes[0]) && ready(&self.nodes[1]) {
            self.net_up = true;
            self.events.push_back((0, Event::TransportUp));
            self.events.push_back((1, Event::TransportUp));
        }
    }

    fn role(&self, i: usize) -> Option<Role> {
        self.nodes[i].core.as_ref().map(|c| c.status().role)
    }

    /// One random step.
    fn step(&mut self) {
        self.stats.steps += 1;
        let r = self.rng.gen_range(0..1000);
        let i = self.rng.gen_range(0..2);
        match r {
            0..=299 => self.deliver(i),
            300..=549 => self.complete_io(i),
            550..=749 => {
                if self.role(i) == Some(Role::Primary) {
                    self.app_write(i);
                }
            }
            750..=779 => {
                if self.role(i) == Some(Role::Primary) {
                    let req = self.next_req;
                    self.next_req += 1;
                    self.events.push_back((i, Event::Flush { req }));
                }
            }
            780..=869 => {
                self.events.push_back((0, Event::Tick { elapsed_ms: 100 }));
                self.events.push_back((1, Event::Tick { elapsed_ms: 100 }));
            }
            870..=899 => self.connect_if_possible(),
            900..=909 => self.break_net(),
            910..=911 => {
                if self.nodes[i].core.is_some() {
                    self.crash(i);
                }
            }
            912..=949 => {
                if self.nodes[i].core.is_none() {
                    self.nodes[i].restarts += 1;
                    self.start(i);
                }
            }
            950..=979 => {
                // Failover when the peer is down; otherwise a promotion attempt that
                // must be refused while the peer is Primary.
                if self.role(i) == Some(Role::Secondary) {
                    if self.nodes[1 - i].core.is_none() {
                        self.stats.failovers += 1;
                    }
                    if self.nodes[1 - i].core.is_none() || self.role(1 - i) == Some(Role::Primary) {
                        self.events.push_back((i, Event::Promote { force: false }));
                    }
                }
            }
            980..=989 => {
                // Switchover: demote a Primary whose peer is connected.
                if self.role(i) == Some(Role::Primary)
                    && self.nodes[i]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.status().conn == ConnState::Connected)
                {
                    self.events.push_back((i, Event::Demote));
                }
            }
            _ => {
                let st = self.nodes[i].core.as_ref().map(|c| c.status());
                let peer_primary = self.role(1 - i) == Some(Role::Primary);
                if let Some(s) = st {
                    if s.role == Role::Secondary && !peer_primary && s.conn == ConnState::Connected {
                        self.events.push_back((i, Event::Promote { force: false }));
                    }
                }
            }
        }
        self.drain();
        self.check_step();
    }

    /// Restarts, reconnects and runs until quiet; resolves a split brain by
    /// discarding the non-Primary's data, as an operator would.
    fn heal(&mut self) {
        for i in 0..2 {
            if self.nodes[i].core.is_none() {
                self.nodes[i].restarts += 1;
                self.start(i);
            }
        }
        for round in 0..20_000 {
            self.drain();
            let st: Vec<_> = self
                .nodes
                .iter()
                .map(|n| n.core.as_ref().expect("up").status())
                .collect();
            let quiet = st
                .iter()
                .all(|s| s.conn == ConnState::Connected && s.repl == ReplState::Established && s.local_pending == 0)
                && self.net[0].is_empty()
                && self.net[1].is_empty()
                && self.nodes.iter().all(|n| n.io.is_empty());
            if quiet {
                return;
            }
            for i in 0..2 {
                if st[i].conn == ConnState::StandAlone {
                    let discard = st[i].role != Role::Primary && (st[1 - i].role == Role::Primary || i == 1);
                    self.events.push_back((
                        i,
                        Event::Connect {
                            discard_my_data: discard,
                        },
                    ));
                }
            }
            // A history may end with both Secondary: fine. Deliver, complete, tick.
            self.connect_if_possible();
            for i in 0..2 {
                self.deliver(i);
                self.complete_io(i);
            }
            if round % 4 == 0 {
                self.events.push_back((0, Event::Tick { elapsed_ms: 100 }));
                self.events.push_back((1, Event::Tick { elapsed_ms: 100 }));
            }
            self.drain();
            self.check_step();
            if self.failure.is_some() {
                return;
            }
        }
        let st: Vec<_> = self.nodes.iter().map(|n| n.core.as_ref().map(|c| c.status())).collect();
        self.fail(format!("did not settle after healing: {st:?}"));
    }

    fn check_final(&mut self) {
        self.stats.checks += 1;
        let st: Vec<_> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().expect("up").status())
            .collect();
        for (i, s) in st.iter().enumerate() {
            if s.out_of_sync_bytes != 0 || s.disk != super::state::DiskState::UpToDate {
                return self.fail(format!("after healing node {i}: {s:?}"));
            }
        }
        if self.nodes[0].disk != self.nodes[1].disk {
            let b = (0..self.cfg.blocks).find(|&b| self.stamp_at(0, b) != self.stamp_at(1, b));
            return self.fail(format!("replicas differ after resync (first block {b:?})"));
        }
        if let Some(p) = (0..2).find(|&i| st[i].role == Role::Primary) {
            self.check_promoted(p);
        }
    }

    /// Runs the whole history: bring-up with `primary --force` on node 0 and
    /// the initial full sync, random steps, healing, final checks.
    pub fn run(mut self) -> Result<SimStats, String> {
        self.connect_if_possible();
        self.drain();
        for _ in 0..50 {
            self.deliver(0);
            self.deliver(1);
            self.drain();
        }
        self.events.push_back((0, Event::Promote { force: true }));
        self.drain();
        for _ in 0..4 {
            self.deliver(0);
            self.deliver(1);
            self.drain();
        }
        if self.role(0) != Some(Role::Primary) {
            let st = self.nodes[0].core.as_ref().map(|c| c.status());
            self.fail(format!("bring-up: node 0 did not become Primary: {st:?}"));
        }
        for _ in 0..self.cfg.steps {
            self.step();
            if self.failure.is_some() {
                break;
            }
        }
        if self.failure.is_none() {
            self.heal();
        }
        if self.failure.is_none() {
            self.check_final();
        }
        self.stats.histories = 1;
        match self.failure {
            Some(f) => Err(f),
            None => Ok(self.stats),
        }
    }
}

/// The policies the split-brain scenario cycles through (with the seed).
fn scenario_policy(k: u64) -> AfterSbPolicy {
    let pri0 = match k % 7 {
        0 => AfterSb0Pri::Disconnect,
        1 => AfterSb0Pri::DiscardYoungerPrimary,
        2 => AfterSb0Pri::DiscardOlderPrimary,
        3 => AfterSb0Pri::DiscardZeroChanges,
        4 => AfterSb0Pri::DiscardLeastChanges,
        5 => AfterSb0Pri::DiscardNode("node0".into()),
        _ => AfterSb0Pri::DiscardNode("node1".into()),
    };
    let pri1 = [
        AfterSb1Pri::Disconnect,
        AfterSb1Pri::Consensus,
        AfterSb1Pri::DiscardSecondary,
        AfterSb1Pri::CallPriLostAfterSb,
    ][(k / 7 % 4) as usize];
    let pri2 = [AfterSb2Pri::Disconnect, AfterSb2Pri::CallPriLostAfterSb][(k / 28 % 2) as usize];
    AfterSbPolicy {
        pri0,
        pri1,
        pri2,
        always_asbp: false,
    }
}

/// Independent model of the after-sb rules for the scenario, where node 0 was
/// Primary at the split and node 1 was promoted after it: which node's data
/// survives, or `None` (disconnect). `primary[i]`: node i is Primary at heal
/// time; `changes[i]`: its out-of-sync blocks.
fn expected_survivor(p: &AfterSbPolicy, primary: [bool; 2], changes: [u64; 2]) -> Option<usize> {
    let least = || Some(if changes[0] >= changes[1] { 0 } else { 1 });
    let zero = || match (changes[0] == 0, changes[1] == 0) {
        (true, true) | (false, true) => Some(0),
        (true, false) => Some(1),
        (false, false) => None,
    };
    let p0 = match &p.pri0 {
        AfterSb0Pri::Disconnect => None,
        // Node 1 is the younger Primary.
        AfterSb0Pri::DiscardYoungerPrimary => Some(0),
        AfterSb0Pri::DiscardOlderPrimary => Some(1),
        AfterSb0Pri::DiscardZeroChanges => zero(),
        AfterSb0Pri::DiscardLeastChanges => zero().or_else(least),
        AfterSb0Pri::DiscardNode(n) if n == "node0" => Some(1),
        AfterSb0Pri::DiscardNode(n) if n == "node1" => Some(0),
        AfterSb0Pri::DiscardNode(_) => None,
    };
    match primary {
        [false, false] => p0,
        [true, true] => match p.pri2 {
            AfterSb2Pri::Disconnect => None,
            AfterSb2Pri::CallPriLostAfterSb => p0,
        },
        _ => {
            let pri = if primary[0] { 0 } else { 1 };
            match p.pri1 {
                AfterSb1Pri::Disconnect => None,
                AfterSb1Pri::DiscardSecondary => Some(pri),
                AfterSb1Pri::Consensus => p0.filter(|&s| s == pri),
                AfterSb1Pri::CallPriLostAfterSb => p0,
            }
        }
    }
}

impl Sim {
    fn status(&self, i: usize) -> super::node::Status {
        self.nodes[i].core.as_ref().expect("up").status()
    }

    fn quiet_connected(&self) -> bool {
        (0..2).all(|i| {
            let s = self.status(i);
            s.conn == ConnState::Connected && s.repl == ReplState::Established && s.local_pending == 0
        }) && self.net.iter().all(|q| q.is_empty())
            && self.nodes.iter().all(|n| n.io.is_empty())
    }

    /// Completes every local I/O (and what it triggers) without delivering messages.
    fn finish_io(&mut self) {
        for _ in 0..10_000 {
            if self.nodes.iter().all(|n| n.io.is_empty()) {
                return;
            }
            for i in 0..2 {
                self.complete_io(i);
            }
            self.drain();
        }
        self.fail("local I/O did not finish".into());
    }

    /// Delivers, completes and ticks until both nodes are connected and quiet, or
    /// until no connection can come up (a node StandAlone). `cut_resync`: break the
    /// link once while a node is SyncTarget, to check the resync resumes.
    fn settle(&mut self, mut cut_resync: bool) {
        for round in 0..20_000 {
            self.drain();
            if self.quiet_connected() {
                return;
            }
            let standalone = (0..2).any(|i| self.status(i).conn == ConnState::StandAlone);
            if standalone && !self.net_up && self.nodes.iter().all(|n| n.io.is_empty()) {
                return;
            }
            if cut_resync && (0..2).any(|i| self.status(i).repl == ReplState::SyncTarget) && self.rng.gen_ratio(1, 4) {
                cut_resync = false;
                self.stats.sb_resync_interrupted += 1;
                self.break_net();
                self.drain();
            }
            self.connect_if_possible();
            for i in 0..2 {
                self.deliver(i);
                if self.rng.gen_bool(0.8) {
                    self.complete_io(i);
                }
            }
            if round % 4 == 0 {
                self.events.push_back((0, Event::Tick { elapsed_ms: 100 }));
                self.events.push_back((1, Event::Tick { elapsed_ms: 100 }));
            }
            self.drain();
            self.check_step();
            if self.failure.is_some() {
                return;
            }
        }
        let st: Vec<_> = (0..2).map(|i| self.status(i)).collect();
        self.fail(format!("did not settle: {st:?}"));
    }

    /// Client writes on node `i`, completed with random interleaving.
    fn writes(&mut self, i: usize, n: u64) {
        for _ in 0..n {
            self.app_write(i);
            self.drain();
            if self.rng.gen_bool(0.5) {
                self.complete_io(i);
                self.drain();
            }
        }
    }

    /// The split-brain scenario: bring-up, writes, the link is cut, node 1 is
    /// promoted with force while node 0 keeps (or not) writing, a random number
    /// of Primaries is demoted, the link heals. Checks that a split brain is
    /// detected exactly when both sides diverged, and that the outcome is the
    /// policy's: the survivor's data on both disks, or both disks untouched and
    /// no connection.
    pub fn run_split_brain(mut self) -> Result<SimStats, String> {
        self.split_scenario = true;
        self.after_sb = scenario_policy(self.seed);
        for i in 0..2 {
            // Restart both with the scenario's policy.
            self.nodes[i].core = None;
            self.start(i);
        }
        self.connect_if_possible();
        self.drain();
        self.settle(false);
        self.events.push_back((0, Event::Promote { force: true }));
        self.drain();
        self.settle(false);
        let n = self.rng.gen_range(0..6);
        self.writes(0, n);
        self.settle(false);
        if self.failure.is_none() && !self.quiet_connected() {
            self.fail("bring-up did not connect".into());
        }
        // Sometimes cut the link with writes in flight.
        if self.rng.gen_bool(0.3) {
            let n = self.rng.gen_range(1..3);
            self.writes(0, n);
            for _ in 0..self.rng.gen_range(0..6) {
                let i = self.rng.gen_range(0..2);
                self.deliver(i);
                self.drain();
            }
        }
        let s0 = self.status(0);
        let unconfirmed = s0.unacked > 0 || s0.local_pending > 0 || !self.nodes[0].reqs.is_empty();
        self.partitioned = true;
        self.break_net();
        self.drain();
        // The partition: node 1 is promoted; both may write.
        let k0 = if self.rng.gen_bool(0.25) {
            0
        } else {
            self.rng.gen_range(1..7)
        };
        let k1 = if self.rng.gen_bool(0.25) {
            0
        } else {
            self.rng.gen_range(1..7)
        };
        self.writes(0, k0);
        self.events.push_back((1, Event::Promote { force: true }));
        self.drain();
        if self.role(1) != Some(Role::Primary) {
            let st = self.status(1);
            self.fail(format!("forced promotion in the partition refused: {st:?}"));
        }
        self.writes(1, k1);
        self.writes(0, k0 / 2);
        self.finish_io();
        let diverged = k0 > 0 || unconfirmed;
        // How many Primaries meet again.
        let demote = match self.rng.gen_range(0..4) {
            0 => [true, true],
            1 => [true, false],
            2 => [false, true],
            _ => [false, false],
        };
        for (i, d) in demote.into_iter().enumerate() {
            if d {
                self.events.push_back((i, Event::Demote));
            }
        }
        self.drain();
        let primary = [self.role(0) == Some(Role::Primary), self.role(1) == Some(Role::Primary)];
        let changes = [
            self.status(0).out_of_sync_bytes / BLOCK,
            self.status(1).out_of_sync_bytes / BLOCK,
        ];
        let snap = [self.nodes[0].disk.clone(), self.nodes[1].disk.clone()];
        self.sb_seen = [SbSeen::default(); 2];
        self.partitioned = false;
        self.settle(true);
        self.stats.sb_histories = 1;
        if self.failure.is_none() {
            self.check_split_brain(diverged, primary, changes, &snap);
        }
        self.stats.histories = 1;
        match self.failure {
            Some(f) => Err(format!("{f} (split-brain scenario, {:?})", self.after_sb)),
            None => Ok(self.stats),
        }
    }

    fn check_split_brain(&mut self, diverged: bool, primary: [bool; 2], changes: [u64; 2], snap: &[Vec<u8>; 2]) {
        self.stats.checks += 1;
        let seen = self.sb_seen;
        let detected = seen.iter().any(|s| s.detected);
        if diverged {
            self.stats.sb_expected += 1;
        }
        if detected {
            self.stats.sb_detected += 1;
        }
        if diverged && !detected {
            return self.fail("split brain not detected (both sides diverged)".into());
        }
        if !diverged && detected {
            return self.fail("split brain detected although node 0 never diverged".into());
        }
        let st = [self.status(0), self.status(1)];
        let survivor = if diverged {
            expected_survivor(&self.after_sb, primary, changes)
        } else if primary[0] {
            // Node 0 has nothing new but is Primary: it may not become sync target.
            None
        } else {
            Some(1)
        };
        if diverged {
            match survivor {
                Some(_) if seen.iter().any(|s| s.unresolved) => {
                    return self.fail(format!(
                        "policy should resolve (changes {changes:?}) but a node went StandAlone"
                    ))
                }
                Some(_) => self.stats.sb_resolved += 1,
                None => self.stats.sb_unresolved += 1,
            }
        }
        match survivor {
            Some(s) => {
                for (i, x) in st.iter().enumerate() {
                    if x.conn != ConnState::Connected
                        || x.repl != ReplState::Established
                        || x.disk != super::state::DiskState::UpToDate
                        || x.out_of_sync_bytes != 0
                    {
                        return self.fail(format!("expected node {s} to win; node {i} ends {x:?}"));
                    }
                }
                if st[1 - s].role == Role::Primary {
                    return self.fail(format!("the losing node {} is still Primary", 1 - s));
                }
                if diverged && primary[1 - s] {
                    self.stats.sb_primary_demoted += 1;
                    if !seen[1 - s].demoted {
                        return self.fail("the losing Primary did not demote".into());
                    }
                }
                for i in 0..2 {
                    if self.nodes[i].disk != snap[s] {
                        let b = (0..self.cfg.blocks).find(|&b| {
                            let o = (b * BLOCK) as usize;
                            self.nodes[i].disk[o..o + 8] != snap[s][o..o + 8]
                        });
                        return self.fail(format!("node {i} does not hold survivor {s}'s data (block {b:?})"));
                    }
                }
            }
            None => {
                for (i, x) in st.iter().enumerate() {
                    if x.conn == ConnState::Connected {
                        return self.fail(format!("expected a disconnect; node {i} is Connected"));
                    }
                    if self.nodes[i].disk != snap[i] {
                        return self.fail(format!("node {i}'s data changed although nobody won"));
                    }
                }
                if !st.iter().any(|x| x.conn == ConnState::StandAlone) {
                    self.fail("expected StandAlone after an unresolved split brain".into());
                }
            }
        }
    }
}

/// Runs split-brain scenarios `start..start + n`; stops at the first failure.
pub fn run_split_brain_seeds(start: u64, n: u64, cfg: &SimConfig) -> Result<SimStats, String> {
    let mut total = SimStats::default();
    for seed in start..start + n {
        total.add(&Sim::new(seed, cfg.clone()).run_split_brain()?);
    }
    Ok(total)
}

/// Runs histories `start..start + n`; stops at the first failure.
pub fn run_seeds(start: u64, n: u64, cfg: &SimConfig) -> Result<SimStats, String> {
    let mut total = SimStats::default();
    for seed in start..start + n {
        total.add(&Sim::new(seed, cfg.clone()).run()?);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_seed_set() {
        let s = run_seeds(0, 200, &SimConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{s:?}");
        assert_eq!(s.histories, 200);
        assert!(s.failovers > 0 && s.crashes > 0 && s.resyncs > 0 && s.writes_peer_durable > 0);
    }

    #[test]
    fn split_brain_scenarios() {
        let s = run_split_brain_seeds(0, 400, &SimConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{s:?}");
        assert_eq!(s.sb_histories, 400);
        assert_eq!(s.sb_detected, s.sb_expected);
        assert!(s.sb_expected > 200 && s.sb_resolved > 50 && s.sb_unresolved > 50);
        assert!(s.sb_primary_demoted > 0 && s.sb_resync_interrupted > 0);
    }

    #[test]
    fn expected_survivor_model() {
        let p = |s: &str| {
            let mut p = AfterSbPolicy::recommended();
            p.pri0 = s.parse().unwrap();
            p
        };
        assert_eq!(
            expected_survivor(&p("discard-zero-changes"), [false; 2], [0, 3]),
            Some(1)
        );
        assert_eq!(expected_survivor(&p("discard-zero-changes"), [false; 2], [2, 3]), None);
        assert_eq!(
            expected_survivor(&p("discard-least-changes"), [false; 2], [2, 3]),
            Some(1)
        );
        assert_eq!(expected_survivor(&p("disconnect"), [true, false], [2, 3]), Some(0));
        assert_eq!(expected_survivor(&p("disconnect"), [true, true], [2, 3]), None);
    }

    #[test]
    fn deterministic() {
        let a = run_seeds(7, 3, &SimConfig::default());
        let b = run_seeds(7, 3, &SimConfig::default());
        assert_eq!(a, b);
    }
}
