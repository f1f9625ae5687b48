//! A seeded, deterministic simulator that runs the real [`Membership`] cores of two or three
//! nodes over one or two faulty links.
//!
//! A history alternates chaos and calm. In chaos, nodes crash, restart with a new incarnation or
//! leave in order; links drop, delay (and so reorder) packets and partition the nodes, each link
//! its own way; an adversary injects garbage, forged packets (a wrong key), mutated and replayed
//! packets. In calm, the network is stable: one clean partition (the same groups on every link
//! that is up), no loss, delays within `max_delay`. At the end of every calm phase the checks run:
//!
//! - convergence: every live node's view is exactly the live nodes it can reach;
//! - agreement: views that include each other are equal;
//! - quorum: every node's quorum matches the rule applied to its partition;
//! - DC: every quorate partition has exactly one DC, which all its members name, and nodes
//!   without quorum name none;
//! - link health: every live pair reports each link up exactly when that link carries traffic.
//!
//! - CIB (with `SimConfig::cib`): every member of a quorate partition holds the DC's document
//!   (same version, same digest), and the DC has finished synchronising.
//!
//! Throughout: a crashed node leaves every live view within `deadtime + max_delay + tick`, and
//! every injected garbage, forged or mutated packet is dropped and counted. With the CIB, tools
//! submit changes on random nodes (forced ones, by one node per history, while it is cut off
//! from a majority that has a DC):
//! every request is answered within its timeout, and a value forced on such a minority never
//! appears in a synchronised DC's document. Each node's CIB survives its crashes (what it
//! persisted is what it restarts with).
//!
//! The same seed always gives the same history.

use super::cib::ops::CibOp;
use super::cib::replica::{initial_cib, MembershipView, Replica, ReplicaAction, ReplicaConfig};
use super::cib::Cib;
use super::heartbeat::{encode, AuthKey, CibVersion, Heartbeat, PayloadKind};
use super::membership::{Action, Membership, MembershipConfig, NodeSpec, Timing};
use super::quorum::{has_quorum, NoQuorumPolicy, QuorumConfig};
use super::{LinkId, Millis, NodeId, NodeSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

/// SplitMix64: tiny, fast, and its output is fixed forever (unlike a library RNG across versions).
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The shape of the simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    pub nodes: u8,
    pub links: u8,
    pub two_node: bool,
    pub timing: Timing,
    /// The simulator's clock step; every node ticks this often.
    pub tick: Millis,
    /// The longest a delivered packet is in flight.
    pub max_delay: Millis,
    /// Chaos/calm pairs per history.
    pub phases: usize,
    /// Record every membership event of every node in the history text.
    pub verbose: bool,
    /// Run a CIB replica on every node and submit changes during chaos.
    pub cib: bool,
}

impl SimConfig {
    pub fn new(nodes: u8, links: u8) -> SimConfig {
        SimConfig {
            nodes,
            links,
            two_node: nodes == 2,
            timing: Timing {
                keepalive: 100,
                warntime: 300,
                deadtime: 500,
                initdead: 1000,
            },
            tick: 10,
            max_delay: 30,
            phases: 6,
            verbose: false,
            cib: true,
        }
    }
}

/// What one history found.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    pub checks: u64,
    pub violations: Vec<String>,
    pub history: String,
    pub crashes: u64,
    pub restarts: u64,
    pub restarts_detected: u64,
    pub leaves: u64,
    pub partitions: u64,
    pub injected: u64,
    pub replays_injected: u64,
    pub dropped: u64,
    /// The longest time from a crash to its removal from a live view.
    pub max_detection: Millis,
    /// Ticks (during chaos) where two nodes in one majority cluster both considered themselves DC.
    pub transient_dual_dc: u64,
    pub packets_sent: u64,
    /// CIB changes submitted, answered Ok, answered with an error.
    pub changes_submitted: u64,
    pub changes_ok: u64,
    pub changes_failed: u64,
    /// Forced changes made on a minority while a majority had a DC.
    pub forced_on_minority: u64,
    /// Updates members applied (rather than whole documents).
    pub updates_applied: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Millis,
    order: u64,
    to: NodeId,
    link: LinkId,
    bytes: Vec<u8>,
}

struct Node {
    m: Option<Membership>,
    cib: Option<Replica>,
    /// What the node last persisted: it restarts with this.
    saved: Option<(Cib, bool)>,
    incarnation: u64,
    /// When it crashed (or left) and who still had it in view then.
    down_since: Option<(Millis, NodeSet)>,
    started: Millis,
}

/// One simulated history.
pub struct Sim {
    cfg: SimConfig,
    rng: SimRng,
    now: Millis,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    /// Per link: down entirely?
    link_down: Vec<bool>,
    /// Per link, per node: partition group; packets pass only within a group.
    groups: Vec<Vec<u8>>,
    drop: f64,
    captured: Vec<(NodeId, u64, LinkId, Vec<u8>)>,
    injected_bad: u64,
    report: SimReport,
    next_req: u64,
    /// Outstanding tool requests: (node, req, submitted at).
    requests: Vec<(NodeId, u64, Millis)>,
    /// Values forced on a minority; none may appear in a synchronised DC's document.
    forbidden: Vec<String>,
    /// The one node that makes forced changes in this history.
    forcer: Option<NodeId>,
}

fn key() -> AuthKey {
    AuthKey::new(&b"simulated shared secret"[..]).expect("non-empty")
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64) -> Sim {
        assert!((2..=3).contains(&cfg.nodes) && (1..=2).contains(&cfg.links));
        let mut s = Sim {
            cfg,
            rng: SimRng::new(seed),
            now: 0,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            link_down: vec![false; cfg.links as usize],
            groups: vec![vec![0; cfg.nodes as usize]; cfg.links as usize],
            drop: 0.0,
            captured: Vec::new(),
            injected_bad: 0,
            next_req: 1,
            requests: Vec::new(),
            forbidden: Vec::new(),
            forcer: None,
            report: SimReport {
                seed,
                ..SimReport::default()
            },
        };
        for i in 0..cfg.nodes {
            s.nodes.push(Node {
                m: None,
                cib: None,
                saved: None,
                incarnation: 0,
                down_since: None,
                started: 0,
            });
            // Nodes boot a little apart.
            s.now = s.rng.below(cfg.timing.keepalive);
            s.start(NodeId(i));
        }
        s.now = 0;
        s
    }

    fn membership_config(&self, local: NodeId) -> MembershipConfig {
        let ids: NodeSet = (0..self.cfg.nodes).map(NodeId).collect();
        let mut quorum = QuorumConfig::majority(ids);
        quorum.two_node = self.cfg.two_node;
        MembershipConfig {
            cluster_name: "simcluster".into(),
            key: key(),
            local,
            nodes: ids
                .iter()
                .map(|id| NodeSpec {
                    id,
                    name: ["alpha", "beta", "gamma"][id.0 as usize].into(),
                })
                .collect(),
            links: self.cfg.links,
            timing: self.cfg.timing,
            quorum,
            no_quorum_policy: NoQuorumPolicy::Stop,
        }
    }

    fn note(&mut self, line: String) {
        let _ = writeln!(self.report.history, "{:>7} {line}", self.now);
    }

    fn start(&mut self, n: NodeId) {
        let cfg = self.membership_config(n);
        let node = &mut self.nodes[n.0 as usize];
        node.incarnation += 1 + self.rng.below(1000);
        let rcfg = ReplicaConfig {
            local: n,
            nodes: cfg.nodes.iter().map(|x| (x.id, x.name.clone())).collect(),
            retry: 2 * cfg.timing.keepalive,
            sync_timeout: cfg.timing.deadtime,
            request_timeout: 4 * cfg.timing.deadtime,
            first_message_id: node.incarnation << 16,
        };
        let mut m = Membership::new(cfg, node.incarnation, self.now).expect("valid simulated config");
        if self.cfg.cib {
            let (doc, oq) = node.saved.clone().unwrap_or_else(|| (initial_cib(&rcfg.nodes), false));
            m.set_cib_version(doc.version());
            node.cib = Some(Replica::new(rcfg, doc, oq));
        }
        node.m = Some(m);
        node.down_since = None;
        node.started = self.now;
        let inc = node.incarnation;
        self.note(format!("start {n} incarnation {inc}"));
    }

    fn live(&self) -> NodeSet {
        (0..self.cfg.nodes)
            .map(NodeId)
            .filter(|n| self.nodes[n.0 as usize].m.is_some())
            .collect()
    }

    fn views_holding(&self, n: NodeId) -> NodeSet {
        self.live()
            .iter()
            .filter(|o| {
                *o != n
                    && self.nodes[o.0 as usize]
                        .m
                        .as_ref()
                        .is_some_and(|m| m.view().contains(n))
            })
            .collect()
    }

    fn crash(&mut self, n: NodeId, orderly: bool) {
        if orderly {
            let acts = self.nodes[n.0 as usize].m.as_mut().expect("live").leave(self.now);
            self.apply(n, acts);
            self.report.leaves += 1;
        } else {
            self.report.crashes += 1;
        }
        let holders = self.views_holding(n);
        self.requests.retain(|r| r.0 != n);
        let node = &mut self.nodes[n.0 as usize];
        node.m = None;
        node.cib = None;
        node.down_since = Some((self.now, holders));
        self.note(format!("{} {n}", if orderly { "leave" } else { "crash" }));
    }

    fn apply(&mut self, from: NodeId, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send { to, link, packet } => {
                    self.report.packets_sent += 1;
                    let l = link as usize;
                    if self.link_down[l]
                        || self.groups[l][from.0 as usize] != self.groups[l][to.0 as usize]
                        || self.rng.chance(self.drop)
                    {
                        continue;
                    }
                    let at = self.now + self.rng.below(self.cfg.max_delay + 1);
                    self.order += 1;
                    self.queue.push(Reverse(InFlight {
                        at,
                        order: self.order,
                        to,
                        link,
                        bytes: packet,
                    }));
                }
                Action::NodeRestarted { node, incarnation } => {
                    self.report.restarts_detected += 1;
                    if self.cfg.verbose {
                        self.note(format!("{from}: {node} restarted as {incarnation}"));
                    }
                }
                Action::ViewChanged { view, .. } if self.cfg.verbose => self.note(format!("{from}: view {view}")),
                Action::QuorumChanged { quorate } if self.cfg.verbose => {
                    self.note(format!("{from}: quorate={quorate}"))
                }
                Action::DcChanged { dc } if self.cfg.verbose => self.note(format!("{from}: dc={dc:?}")),
                _ => {}
            }
        }
    }

    /// Membership actions of node `n`, then its CIB replica's part (payloads in, observe, out).
    fn pump(&mut self, n: NodeId, acts: Vec<Action>) {
        let now = self.now;
        let mut cib_acts = Vec::new();
        if let Some(r) = self.nodes[n.0 as usize].cib.as_mut() {
            for a in &acts {
                match a {
                    Action::Payload {
                        from,
                        kind: PayloadKind::Cib,
                        data,
                    } => cib_acts.extend(r.receive(now, *from, data)),
                    Action::NodeRestarted { node, .. } => r.peer_restarted(*node),
                    _ => {}
                }
            }
        }
        self.apply(n, acts);
        let node = &mut self.nodes[n.0 as usize];
        if let (Some(m), Some(r)) = (node.m.as_ref(), node.cib.as_mut()) {
            let dc = m.dc();
            let mv = MembershipView {
                view: m.view(),
                dc,
                quorate: m.quorate(),
                dc_version: dc.and_then(|d| m.peer_report(d)).map(|(_, v)| v),
            };
            cib_acts.extend(r.observe(now, mv));
        }
        self.carry_cib(n, cib_acts);
    }

    fn carry_cib(&mut self, n: NodeId, acts: Vec<ReplicaAction>) {
        for a in acts {
            let node = &mut self.nodes[n.0 as usize];
            let Some(m) = node.m.as_mut() else { return };
            match a {
                ReplicaAction::Send { to, payload } => {
                    let sends = m.send_payload(to, PayloadKind::Cib, payload).expect("fits a heartbeat");
                    self.apply(n, sends);
                }
                ReplicaAction::Persist { cib, origin_quorate } => node.saved = Some((*cib, origin_quorate)),
                ReplicaAction::VersionChanged(v) => m.set_cib_version(v),
                ReplicaAction::Reply { req, result } => {
                    let before = self.requests.len();
                    self.requests.retain(|r| !(r.0 == n && r.1 == req));
                    if self.requests.len() == before {
                        self.violation(format!("{n}: an answer to request {req} nobody is waiting for"));
                    }
                    match result {
                        Ok(_) => self.report.changes_ok += 1,
                        Err(_) => self.report.changes_failed += 1,
                    }
                    if self.cfg.verbose {
                        self.note(format!("{n}: request {req} answered {result:?}"));
                    }
                }
                ReplicaAction::Log { message, .. } => {
                    if self.cfg.verbose {
                        self.note(format!("{n}: {message}"));
                    }
                }
            }
        }
    }

    /// A tool on a random live node asks for a change.
    fn submit_change(&mut self) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let n = live
            .iter()
            .nth(self.rng.below(live.len() as u64) as usize)
            .expect("non-empty");
        let req = self.next_req;
        self.next_req += 1;
        let node = &self.nodes[n.0 as usize];
        let (Some(m), Some(_)) = (node.m.as_ref(), node.cib.as_ref()) else {
            return;
        };
        let quorate = m.quorate();
        // Forced only where the rest of the cluster is a majority with a synchronised DC.
        let majority_elsewhere = !self.cfg.two_node
            && live.iter().any(|o| {
                o != n
                    && self.nodes[o.0 as usize].cib.as_ref().is_some_and(|r| r.dc_ready())
                    && self.nodes[o.0 as usize]
                        .m
                        .as_ref()
                        .is_some_and(|x| !x.view().contains(n))
            });
        // One node per history forces: were two to force, both minorities' copies could be
        // unconfirmed and meet without any copy made with quorum, and then a forced one may
        // rightly win.
        let force = !quorate && majority_elsewhere && self.forcer.is_none_or(|f| f == n) && self.rng.chance(0.9);
        if force {
            self.forcer = Some(n);
        }
        let (name, value) = if force {
            self.report.forced_on_minority += 1;
            let v = format!("forced-{req}");
            self.forbidden.push(v.clone());
            ("cluster-name", v)
        } else {
            ("cluster-name", format!("change-{req}"))
        };
        let ops = vec![CibOp::SetProperty {
            name: name.into(),
            value: Some(value.clone()),
        }];
        self.report.changes_submitted += 1;
        self.requests.push((n, req, self.now));
        if self.cfg.verbose {
            self.note(format!("{n}: submit {req} {name}={value} force={force}"));
        }
        let acts = self.nodes[n.0 as usize]
            .cib
            .as_mut()
            .expect("checked")
            .submit(self.now, req, ops, force);
        self.carry_cib(n, acts);
    }

    /// Checks that hold at every step.
    fn check_cib_running(&mut self) {
        if !self.cfg.cib {
            return;
        }
        // Every request is answered within its timeout (plus a step).
        let limit = 4 * self.cfg.timing.deadtime + 2 * self.cfg.tick;
        if let Some(r) = self.requests.iter().find(|r| self.now > r.2 + limit) {
            let line = format!("{}: request {} unanswered after {} ms", r.0, r.1, self.now - r.2);
            self.requests.retain(|x| x.2 + limit >= self.now);
            self.violation(line);
        }
        // A forced minority value never reaches a synchronised DC's document.
        for n in self.live().iter() {
            let Some(r) = self.nodes[n.0 as usize].cib.as_ref() else {
                continue;
            };
            if !r.dc_ready() {
                continue;
            }
            if let Some(v) = r.cib().configuration.property("cluster-name") {
                if self.forbidden.iter().any(|f| f == v) {
                    let v = v.to_string();
                    self.violation(format!("{n}: DC's document has {v}, forced on a minority"));
                }
            }
        }
    }

    fn sniff(&mut self, to: NodeId, link: LinkId, bytes: &[u8]) {
        // The adversary sniffs what was delivered, to replay it later to the same life of the
        // receiver (a restarted receiver has forgotten what it saw: see docs/membership.md).
        let life = self.nodes[to.0 as usize].incarnation;
        if self.nodes[to.0 as usize].m.is_some() {
            if self.captured.len() < 256 {
                self.captured.push((to, life, link, bytes.to_vec()));
            } else if self.rng.chance(0.05) {
                let i = self.rng.below(256) as usize;
                self.captured[i] = (to, life, link, bytes.to_vec());
            }
        }
    }

    fn deliver(&mut self, to: NodeId, link: LinkId, bytes: &[u8]) {
        if let Some(m) = self.nodes[to.0 as usize].m.as_mut() {
            let acts = m.receive(self.now, link, bytes);
            self.pump(to, acts);
        }
    }

    /// One clock step: deliver what is due, tick every node, check the running invariants.
    fn step(&mut self) {
        self.now += self.cfg.tick;
        while self.queue.peek().is_some_and(|Reverse(p)| p.at <= self.now) {
            let Reverse(p) = self.queue.pop().expect("peeked");
            self.sniff(p.to, p.link, &p.bytes);
            self.deliver(p.to, p.link, &p.bytes);
        }
        for i in 0..self.cfg.nodes {
            if let Some(m) = self.nodes[i as usize].m.as_mut() {
                let acts = m.tick(self.now);
                self.pump(NodeId(i), acts);
            }
        }
        self.check_detection();
        self.check_cib_running();
        if !self.cfg.two_node {
            let claims = self
                .live()
                .iter()
                .filter(|n| self.nodes[n.0 as usize].m.as_ref().is_some_and(|m| m.dc() == Some(*n)))
                .count();
            if claims > 1 {
                self.report.transient_dual_dc += 1;
            }
        }
    }

    fn check_detection(&mut self) {
        let bound = self.cfg.timing.deadtime + self.cfg.max_delay + self.cfg.tick;
        for x in 0..self.cfg.nodes {
            let Some((since, holders)) = self.nodes[x as usize].down_since else {
                continue;
            };
            let mut still = NodeSet::EMPTY;
            for y in holders.iter() {
                let node = &self.nodes[y.0 as usize];
                let holds = node.started <= since && node.m.as_ref().is_some_and(|m| m.view().contains(NodeId(x)));
                if holds {
                    still.insert(y);
                    if self.now > since + bound {
                        let v = format!(
                            "t={}: {y} still has crashed node{x} in its view {} ms after the crash (bound {bound})",
                            self.now,
                            self.now - since
                        );
                        self.report.violations.push(v);
                    }
                } else {
                    self.report.max_detection = self.report.max_detection.max(self.now - since);
                }
            }
            self.nodes[x as usize].down_since = Some((since, still));
        }
    }

    fn inject(&mut self) {
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let to = live
            .iter()
            .nth(self.rng.below(live.len() as u64) as usize)
            .expect("non-empty");
        let link = self.rng.below(self.cfg.links as u64) as LinkId;
        let kind = self.rng.below(4);
        let bytes = match kind {
            // Random bytes.
            0 => {
                let n = self.rng.below(300) as usize;
                (0..n).map(|_| self.rng.next_u64() as u8).collect()
            }
            // A well-formed heartbeat under the wrong key, claiming to be another node.
            1 => {
                let sender = NodeId(self.rng.below(self.cfg.nodes as u64) as u8);
                let hb = Heartbeat {
                    cluster: super::heartbeat::cluster_id("simcluster"),
                    sender,
                    link,
                    incarnation: u64::MAX,
                    seq: u64::MAX,
                    leaving: true,
                    quorate: true,
                    view: NodeSet::single(sender),
                    cib: CibVersion {
                        admin_epoch: u32::MAX,
                        epoch: 0,
                        num_updates: 0,
                    },
                    dc: Some(sender),
                    payload_kind: PayloadKind::None,
                    payload: vec![],
                };
                encode(&hb, &AuthKey::new(&b"an intruder's key"[..]).expect("non-empty"))
            }
            // A captured packet, mutated.
            2 if !self.captured.is_empty() => {
                let i = self.rng.below(self.captured.len() as u64) as usize;
                let mut b = self.captured[i].3.clone();
                let at = self.rng.below(b.len() as u64) as usize;
                b[at] ^= 1 + (self.rng.next_u64() % 255) as u8;
                b
            }
            // A delivered packet, replayed verbatim to its receiver on its link.
            _ if !self.captured.is_empty() => {
                let i = self.rng.below(self.captured.len() as u64) as usize;
                let (to, life, link, b) = self.captured[i].clone();
                if self.nodes[to.0 as usize].incarnation != life {
                    return;
                }
                let Some(m) = self.nodes[to.0 as usize].m.as_mut() else {
                    return;
                };
                self.report.replays_injected += 1;
                let (before, view) = (m.dropped().total(), m.view());
                let acts = m.receive(self.now, link, &b);
                let (after, view_after) = (m.dropped().total(), m.view());
                self.apply(to, acts);
                self.report.checks += 1;
                if after != before + 1 || view_after != view {
                    let v = format!("t={}: a replayed packet to {to} was not dropped and counted", self.now);
                    self.report.violations.push(v);
                }
                return;
            }
            _ => return,
        };
        self.report.injected += 1;
        let before = self.nodes[to.0 as usize].m.as_ref().map(|m| m.dropped().total());
        let view_before = self.nodes[to.0 as usize].m.as_ref().map(|m| m.view());
        self.deliver(to, link, &bytes);
        self.injected_bad += 1;
        let after = self.nodes[to.0 as usize].m.as_ref().map(|m| m.dropped().total());
        let view_after = self.nodes[to.0 as usize].m.as_ref().map(|m| m.view());
        self.report.checks += 1;
        if after != before.map(|b| b + 1) || view_after != view_before {
            let v = format!(
                "t={}: a bad packet (kind {kind}) to {to} was not dropped and counted",
                self.now
            );
            self.report.violations.push(v);
        }
    }

    fn random_groups(&mut self) -> Vec<u8> {
        (0..self.cfg.nodes).map(|_| self.rng.below(2) as u8).collect()
    }

    fn chaos(&mut self, len: Millis) {
        let end = self.now + len;
        while self.now < end {
            let n = NodeId(self.rng.below(self.cfg.nodes as u64) as u8);
            let live = self.nodes[n.0 as usize].m.is_some();
            if live && self.rng.chance(0.003) {
                let orderly = self.rng.chance(0.25);
                self.crash(n, orderly);
            } else if !live && self.rng.chance(0.01) {
                self.start(n);
                self.report.restarts += 1;
            }
            if self.rng.chance(0.01) {
                let l = self.rng.below(self.cfg.links as u64) as usize;
                self.groups[l] = self.random_groups();
                self.link_down[l] = self.rng.chance(0.2);
                self.report.partitions += 1;
                let g = self.groups[l].clone();
                let down = self.link_down[l];
                self.note(format!("link {l} groups {g:?} down={down}"));
            }
            if self.rng.chance(0.01) {
                self.drop = [0.0, 0.1, 0.3, 0.6, 1.0][self.rng.below(5) as usize];
                let d = self.drop;
                self.note(format!("drop rate {d}"));
            }
            if self.rng.chance(0.05) {
                self.inject();
            }
            if self.cfg.cib && self.rng.chance(0.02) {
                self.submit_change();
            }
            self.step();
        }
    }

    /// A stable network for long enough, then the checks.
    fn calm(&mut self) {
        let groups = self.random_groups();
        let healed = self.rng.chance(0.5);
        for l in 0..self.cfg.links as usize {
            self.groups[l] = if healed {
                vec![0; self.cfg.nodes as usize]
            } else {
                groups.clone()
            };
            self.link_down[l] = self.cfg.links > 1 && self.rng.chance(0.25);
        }
        self.drop = 0.0;
        if self.rng.chance(0.5) {
            for i in 0..self.cfg.nodes {
                if self.nodes[i as usize].m.is_none() {
                    self.start(NodeId(i));
                    self.report.restarts += 1;
                }
            }
        }
        let (g, d) = (self.groups.clone(), self.link_down.clone());
        self.note(format!("calm: groups {g:?} links down {d:?}"));
        let t = self.cfg.timing;
        // deadtime to notice who is gone, a keepalive and a delay to hear who is there, and another
        // deadtime of DC hold-off after a loss.
        let mut len = 2 * t.deadtime + t.keepalive + 2 * self.cfg.max_delay + 2 * self.cfg.tick;
        if self.cfg.cib {
            // Synchronisation after the DC is named (announcements, maybe a fetch, the pushes),
            // and requests still in flight.
            len += 2 * t.deadtime + 4 * t.keepalive + 4 * self.cfg.max_delay;
        }
        let latest_start = self
            .nodes
            .iter()
            .filter(|n| n.m.is_some())
            .map(|n| n.started)
            .max()
            .unwrap_or(0);
        // A node that just started waits out initdead before it may elect a DC.
        len = len.max((latest_start + t.initdead + t.keepalive + 2 * self.cfg.max_delay).saturating_sub(self.now));
        let end = self.now + len;
        while self.now < end {
            self.step();
        }
        self.check_stable();
    }

    /// Nodes reachable from `n` (the stable phase keeps partitions clean and symmetric).
    fn component(&self, n: NodeId) -> NodeSet {
        let live = self.live();
        let mut c = NodeSet::single(n);
        for o in live.iter() {
            let linked = (0..self.cfg.links as usize)
                .any(|l| !self.link_down[l] && self.groups[l][n.0 as usize] == self.groups[l][o.0 as usize]);
            if linked {
                c.insert(o);
            }
        }
        c
    }

    fn violation(&mut self, what: String) {
        let line = format!("t={}: {what}", self.now);
        self.note(format!("VIOLATION {line}"));
        self.report.violations.push(line);
    }

    fn check_stable(&mut self) {
        let live = self.live();
        let ids: NodeSet = (0..self.cfg.nodes).map(NodeId).collect();
        let mut qcfg = QuorumConfig::majority(ids);
        qcfg.two_node = self.cfg.two_node;
        let mut summary = String::new();
        for n in live.iter() {
            let m = self.nodes[n.0 as usize].m.as_ref().expect("live");
            let _ = write!(summary, " [{m}]");
        }
        self.note(format!("check:{summary}"));
        for n in live.iter() {
            let comp = self.component(n);
            let m = self.nodes[n.0 as usize].m.as_ref().expect("live");
            let (view, quorate, dc, wfa) = (m.view(), m.quorate(), m.dc(), m.quorum_wait_for_all_done());
            let mut links_wrong = Vec::new();
            for o in comp.iter().filter(|o| *o != n) {
                for l in 0..self.cfg.links {
                    let carried = !self.link_down[l as usize];
                    if m.link_up(o, l) != carried {
                        links_wrong.push((o, l));
                    }
                }
            }
            self.report.checks += 4;
            if view != comp {
                self.violation(format!("{n}: view {view} but reachable live nodes are {comp}"));
                continue;
            }
            let want_q = has_quorum(&qcfg, comp, wfa, false);
            if quorate != want_q {
                self.violation(format!("{n}: quorate={quorate} for {comp}, expected {want_q}"));
            }
            let want_dc = if want_q { comp.first() } else { None };
            if dc != want_dc {
                self.violation(format!("{n}: DC {dc:?} in {comp}, expected {want_dc:?}"));
            }
            if !links_wrong.is_empty() {
                self.violation(format!("{n}: link health wrong for (peer, link) {links_wrong:?}"));
            }
        }
        // Agreement and one DC per partition.
        for a in live.iter() {
            for b in live.iter().filter(|b| *b > a) {
                let ma = self.nodes[a.0 as usize].m.as_ref().expect("live");
                let mb = self.nodes[b.0 as usize].m.as_ref().expect("live");
                self.report.checks += 1;
                if ma.view().contains(b) && mb.view().contains(a) && ma.view() != mb.view() {
                    let (va, vb) = (ma.view(), mb.view());
                    self.violation(format!("{a} and {b} see each other but disagree: {va} vs {vb}"));
                }
            }
            let m = self.nodes[a.0 as usize].m.as_ref().expect("live");
            let claimers = m
                .view()
                .iter()
                .filter(|n| self.nodes[n.0 as usize].m.as_ref().is_some_and(|x| x.dc() == Some(*n)))
                .count();
            self.report.checks += 1;
            if claimers > 1 {
                self.violation(format!("{claimers} DCs in the partition {}", m.view()));
            }
        }
        if self.cfg.cib {
            self.check_cib_stable();
        }
        if !self.cfg.two_node {
            let claimers = live
                .iter()
                .filter(|n| self.nodes[n.0 as usize].m.as_ref().is_some_and(|x| x.dc() == Some(*n)))
                .count();
            self.report.checks += 1;
            if claimers > 1 {
                self.violation(format!("{claimers} DCs in a majority-quorum cluster"));
            }
        }
    }

    /// After calm: every member of a partition with a DC holds the DC's document.
    fn check_cib_stable(&mut self) {
        let live = self.live();
        for n in live.iter() {
            let node = &self.nodes[n.0 as usize];
            let (Some(m), Some(r)) = (node.m.as_ref(), node.cib.as_ref()) else {
                continue;
            };
            let Some(dc) = m.dc() else { continue };
            let Some(dr) = self.nodes[dc.0 as usize].cib.as_ref() else {
                continue;
            };
            self.report.checks += 1;
            if !dr.dc_ready() {
                self.violation(format!("{dc} is DC but has not finished synchronising the CIB"));
                continue;
            }
            let (mine, theirs) = ((r.version(), r.cib().digest()), (dr.version(), dr.cib().digest()));
            if mine != theirs {
                self.violation(format!(
                    "{n}: CIB {} {} differs from DC {dc}'s {} {}",
                    mine.0,
                    &mine.1[..12],
                    theirs.0,
                    &theirs.1[..12]
                ));
            }
        }
    }

    /// Runs the whole history and returns what it found.
    pub fn run(mut self) -> SimReport {
        // Start-up: everyone joins on a clean network.
        self.calm_start();
        for _ in 0..self.cfg.phases {
            let len = self.cfg.timing.deadtime / 2 + self.rng.below(4 * self.cfg.timing.deadtime);
            self.chaos(len);
            self.calm();
        }
        let dropped: u64 = self
            .nodes
            .iter()
            .filter_map(|n| n.m.as_ref())
            .map(|m| m.dropped().total())
            .sum();
        self.report.dropped = dropped;
        self.report.updates_applied = self
            .nodes
            .iter()
            .filter_map(|n| n.cib.as_ref())
            .map(|r| r.counters().updates_applied)
            .sum();
        self.report
    }

    fn calm_start(&mut self) {
        let t = self.cfg.timing;
        let mut len = t.initdead + t.keepalive + 2 * self.cfg.max_delay;
        if self.cfg.cib {
            len += t.deadtime + 4 * t.keepalive + 4 * self.cfg.max_delay;
        }
        while self.now < len {
            self.step();
        }
        self.check_stable();
    }
}

/// Runs `seeds` histories from `first_seed` and returns their reports.
pub fn run_many(cfg: SimConfig, first_seed: u64, seeds: u64) -> Vec<SimReport> {
    (first_seed..first_seed + seeds)
        .map(|s| Sim::new(cfg, s).run())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: SimConfig, seeds: std::ops::Range<u64>) -> (u64, u64) {
        let (mut checks, mut histories) = (0, 0);
        for seed in seeds {
            let r = Sim::new(cfg, seed).run();
            assert!(
                r.violations.is_empty(),
                "seed {seed} ({} nodes, {} links): {:#?}\n{}",
                cfg.nodes,
                cfg.links,
                r.violations,
                r.history
            );
            assert!(r.checks > 0);
            checks += r.checks;
            histories += 1;
        }
        println!(
            "{} nodes, {} link(s): {histories} histories, {checks} checks passed",
            cfg.nodes, cfg.links
        );
        (histories, checks)
    }

    #[test]
    fn three_nodes_one_link() {
        run(SimConfig::new(3, 1), 0..12);
    }

    #[test]
    fn three_nodes_two_links() {
        run(SimConfig::new(3, 2), 100..112);
    }

    #[test]
    fn two_nodes_two_node_mode() {
        run(SimConfig::new(2, 1), 200..210);
        run(SimConfig::new(2, 2), 300..310);
    }

    #[test]
    fn cib_replication_is_exercised() {
        let (mut ok, mut forced, mut updates, mut failed) = (0, 0, 0, 0);
        for seed in 400..410 {
            let r = Sim::new(SimConfig::new(3, 1 + (seed % 2) as u8), seed).run();
            assert!(
                r.violations.is_empty(),
                "seed {seed}: {:#?}\n{}",
                r.violations,
                r.history
            );
            ok += r.changes_ok;
            failed += r.changes_failed;
            forced += r.forced_on_minority;
            updates += r.updates_applied;
        }
        println!("CIB: {ok} changes applied, {failed} refused, {forced} forced on a minority, {updates} updates");
        assert!(ok > 20 && updates > 20 && failed > 0 && forced > 0);
    }

    #[test]
    fn deterministic() {
        let a = Sim::new(SimConfig::new(3, 2), 7).run();
        let b = Sim::new(SimConfig::new(3, 2), 7).run();
        assert_eq!(a.history, b.history);
        assert_eq!(a.checks, b.checks);
        assert_eq!(a.packets_sent, b.packets_sent);
    }

    #[test]
    fn rng_is_fixed() {
        let mut r = SimRng::new(1);
        let first: Vec<u64> = (0..3).map(|_| r.below(1000)).collect();
        let mut r2 = SimRng::new(1);
        assert_eq!(first, (0..3).map(|_| r2.below(1000)).collect::<Vec<_>>());
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
    }
}
