//! CIB replication: the pure core that keeps every member's copy equal to the DC's.
//!
//! Inputs: [`Replica::observe`] (what the membership layer says now: view, DC, quorum, the DC's
//! advertised CIB version; call it after every membership step, it also runs the timers),
//! [`Replica::receive`] (a CIB payload from a peer), [`Replica::submit`] (a tool asks for a
//! change) and [`Replica::peer_restarted`]. Outputs: [`ReplicaAction`]s.
//!
//! The rules (docs/membership.md, "CIB replication"):
//!
//! - Only the DC changes the configuration. A change submitted on a member is forwarded to the
//!   DC, which applies it atomically, bumps the version, keeps the [`CibUpdate`] in a short log,
//!   pushes it to every member, and answers the member, which answers its tool once its own copy
//!   has reached that version.
//! - A partition without quorum has no DC and refuses changes. `force` applies a change to the
//!   local copy only and marks it as made without quorum, so it loses to any document a
//!   partition with quorum made when the partitions meet again.
//! - A node that becomes DC, or whose view changes, first synchronises: it asks every member
//!   for (version, digest, made-with-quorum), picks the winner by [`super::merge::decide`],
//!   fetches it if a member holds it, and sends it to every member whose copy differs. Changes
//!   that arrive meanwhile wait in a bounded queue.
//! - A member whose version differs from the one its DC advertises in heartbeats asks the DC
//!   for it (at most once per retry interval); the DC answers with updates from its log or the
//!   whole document. A member applies an update only on the exact base version and only if the
//!   result has the DC's digest; otherwise it asks for the document.

use super::merge::{decide, MergeSide};
use super::ops::CibOp;
use super::wire::{fragment, CibMsg, FragmentError, Reassembler};
use super::{Cib, CibError, CibUpdate, CibVersion};
use crate::cluster::membership::Level;
use crate::cluster::{Millis, NodeId, NodeSet};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Updates the DC keeps to answer a member that is a few versions behind.
pub const LOG_LEN: usize = 64;
/// Changes queued while the DC synchronises; more are refused.
pub const MAX_QUEUED: usize = 64;
/// Tool requests a node tracks at once.
pub const MAX_PENDING: usize = 256;
/// Change results the DC remembers per requester so a retried request is not applied twice.
const RECENT_RESULTS: usize = 128;

/// The core's configuration.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub local: NodeId,
    /// Every configured node, with its name (the CIB's node section must hold them).
    pub nodes: Vec<(NodeId, String)>,
    /// How often to repeat an unanswered message (Sync, Want): e.g. twice the keepalive.
    pub retry: Millis,
    /// How long a DC waits for members' announcements before it decides without them.
    pub sync_timeout: Millis,
    /// How long a tool's change may wait for its answer.
    pub request_timeout: Millis,
    /// The id of this node's first message; use something that grows across restarts (the
    /// incarnation), so that peers never confuse two lives' messages.
    pub first_message_id: u64,
}

impl ReplicaConfig {
    pub fn name_of(&self, n: NodeId) -> String {
        self.nodes
            .iter()
            .find(|(id, _)| *id == n)
            .map_or_else(|| n.to_string(), |(_, name)| name.clone())
    }
}

/// What the membership layer says at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MembershipView {
    pub view: NodeSet,
    pub dc: Option<NodeId>,
    pub quorate: bool,
    /// The CIB version the DC advertises in its heartbeats (unused when this node is the DC).
    pub dc_version: Option<CibVersion>,
}

/// A successful change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChangeDone {
    pub version: CibVersion,
    /// False when the change left the document as it was.
    pub changed: bool,
    /// Applied to this node's copy only, without quorum (`--force`).
    pub forced: bool,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// This partition has no quorum and the change was not forced.
    NoQuorum,
    /// No DC answered in time (election or synchronisation under way, or the DC is unreachable).
    Timeout,
    /// The DC refused it (invalid result, unknown node...).
    Refused(String),
    /// Too many requests at once.
    Busy,
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::NoQuorum => f.write_str(
                "this partition has no quorum, so the configuration cannot change; \
                 restore the cluster or repeat with --force to change this node's copy only \
                 (a partition with quorum overrides it when they meet again)",
            ),
            ChangeError::Timeout => f.write_str(
                "no answer from the DC in time (election or synchronisation under way, or the DC is unreachable); \
                 check `hbcrm status` and retry",
            ),
            ChangeError::Refused(e) => write!(f, "the DC refused the change: {e}"),
            ChangeError::Busy => f.write_str("too many configuration changes at once; retry"),
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAction {
    /// Send this CIB payload to `to` (heartbeat payload kind `Cib`).
    Send {
        to: NodeId,
        payload: Vec<u8>,
    },
    /// Write the document durably before anything else is sent.
    Persist {
        cib: Box<Cib>,
        origin_quorate: bool,
    },
    /// The answer for the tool's request `req`.
    Reply {
        req: u64,
        result: Result<ChangeDone, ChangeError>,
    },
    /// The local version changed (advertise it in heartbeats).
    VersionChanged(CibVersion),
    Log {
        level: Level,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Announced {
    version: CibVersion,
    digest: String,
    origin_quorate: bool,
}

#[derive(Debug, Clone)]
enum Role {
    Member,
    /// DC collecting announcements.
    Syncing {
        announced: BTreeMap<NodeId, Announced>,
        started: Millis,
        last_sync_sent: Millis,
        /// Fetching the winning document from this member, since then.
        fetching: Option<(NodeId, Millis)>,
    },
    /// DC in charge. `known` is what each member last announced (to push documents to those
    /// that differ).
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requester {
    Local(u64),
    Remote(NodeId, u64),
}

#[derive(Debug, Clone)]
struct Pending {
    ops: Vec<CibOp>,
    deadline: Millis,
    sent_to: Option<NodeId>,
    /// The DC answered with this version; the tool is answered once the local copy has it.
    done: Option<ChangeDone>,
}

/// Counters for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaCounters {
    pub updates_applied: u64,
    pub documents_received: u64,
    pub documents_sent: u64,
    pub updates_rejected: u64,
    pub merges: u64,
    pub bad_messages: u64,
}

/// One node's CIB replica.
#[derive(Debug, Clone)]
pub struct Replica {
    cfg: ReplicaConfig,
    cib: Cib,
    origin_quorate: bool,
    mv: MembershipView,
    now: Millis,
    next_id: u64,
    asm: Reassembler,
    role: Role,
    log: VecDeque<CibUpdate>,
    queued: VecDeque<(Requester, Vec<CibOp>, Millis)>,
    recent: VecDeque<((NodeId, u64), CibMsg)>,
    pending: BTreeMap<u64, Pending>,
    last_want: Option<Millis>,
    /// This copy diverged from the DC's (an update from the DC did not fit it): ask for the
    /// whole document, not for the updates since a version the DC's log has with other content.
    need_document: bool,
    /// DC: members that did not announce before synchronisation ended; asked again every
    /// `retry` until they do (their copy may be better, or different at the same version).
    unconfirmed: NodeSet,
    last_sync_sent: Millis,
    counters: ReplicaCounters,
}

/// The document a node starts with when it has none: the configured nodes, version 0.1.0,
/// the same on every node (so fresh nodes agree without a transfer).
pub fn initial_cib(nodes: &[(NodeId, String)]) -> Cib {
    let mut cfg = super::Configuration::default();
    for (id, name) in nodes {
        cfg.nodes.push(super::config::Node::new(name, id.0));
    }
    Cib::with_configuration(cfg.clone()).unwrap_or_else(|_| Cib {
        epoch: 1,
        configuration: cfg,
        ..Cib::new()
    })
}

impl Replica {
    /// Starts with `cib` (the persisted copy, or [`initial_cib`]); `origin_quorate` says whether
    /// a partition with quorum made it (false for a fresh document).
    pub fn new(cfg: ReplicaConfig, cib: Cib, origin_quorate: bool) -> Replica {
        Replica {
            next_id: cfg.first_message_id,
            cfg,
            cib,
            origin_quorate,
            mv: MembershipView::default(),
            now: 0,
            asm: Reassembler::default(),
            role: Role::Member,
            log: VecDeque::new(),
            queued: VecDeque::new(),
            recent: VecDeque::new(),
            pending: BTreeMap::new(),
            last_want: None,
            need_document: false,
            unconfirmed: NodeSet::EMPTY,
            last_sync_sent: 0,
            counters: ReplicaCounters::default(),
        }
    }

    pub fn cib(&self) -> &Cib {
        &self.cib
    }
    pub fn version(&self) -> CibVersion {
        self.cib.version()
    }
    pub fn origin_quorate(&self) -> bool {
        self.origin_quorate
    }
    pub fn counters(&self) -> ReplicaCounters {
        self.counters
    }
    /// Is this node the DC, done synchronising, with a document made with quorum (so that it
    /// takes changes)?
    pub fn dc_ready(&self) -> bool {
        self.is_dc() && matches!(self.role, Role::Ready) && self.origin_quorate
    }
    fn is_dc(&self) -> bool {
        self.mv.dc == Some(self.cfg.local)
    }

    fn log(&self, out: &mut Vec<ReplicaAction>, level: Level, message: String) {
        out.push(ReplicaAction::Log { level, message });
    }

    fn send(&mut self, out: &mut Vec<ReplicaAction>, to: NodeId, msg: &CibMsg) {
        if to == self.cfg.local {
            return;
        }
        let bytes = msg.encode();
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match fragment(id, &bytes) {
            Ok(frags) => {
                for payload in frags {
                    out.push(ReplicaAction::Send { to, payload });
                }
            }
            Err(e) => self.log(out, Level::Warn, format!("cannot send CIB {}: {e}", msg.name())),
        }
    }

    fn members(&self) -> Vec<NodeId> {
        self.mv.view.iter().filter(|n| *n != self.cfg.local).collect()
    }

    fn announce_msg(&self) -> CibMsg {
        CibMsg::Announce {
            version: self.cib.version(),
            digest: self.cib.digest(),
            origin_quorate: self.origin_quorate,
        }
    }

    fn document_msg(&self) -> CibMsg {
        CibMsg::Document {
            origin_quorate: self.origin_quorate,
            cib: Box::new(self.cib.clone()),
        }
    }

    /// Replaces the local document and announces it.
    fn install(&mut self, out: &mut Vec<ReplicaAction>, cib: Cib, origin_quorate: bool) {
        let old = self.cib.version();
        self.cib = cib;
        self.origin_quorate = origin_quorate;
        self.need_document = false;
        out.push(ReplicaAction::Persist {
            cib: Box::new(self.cib.clone()),
            origin_quorate,
        });
        if self.cib.version() != old {
            out.push(ReplicaAction::VersionChanged(self.cib.version()));
        }
        self.answer_waiting(out);
    }

    /// Tool requests whose DC answer is in and whose version the local copy now has.
    fn answer_waiting(&mut self, out: &mut Vec<ReplicaAction>) {
        let have = self.cib.version();
        let ready: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.done.is_some_and(|d| d.version <= have))
            .map(|(r, _)| *r)
            .collect();
        for req in ready {
            let p = self.pending.remove(&req).expect("listed");
            out.push(ReplicaAction::Reply {
                req,
                result: Ok(p.done.expect("filtered")),
            });
        }
    }

    /// The membership layer's current state; also runs the timers. Call after every
    /// membership step and at least every `retry`.
    pub fn observe(&mut self, now: Millis, mv: MembershipView) -> Vec<ReplicaAction> {
        let mut out = Vec::new();
        self.now = self.now.max(now);
        let old = self.mv;
        self.mv = mv;
        let local = self.cfg.local;
        let changed = old.view != mv.view || old.dc != mv.dc;
        if self.is_dc() {
            if changed || old.dc != Some(local) {
                self.start_sync(&mut out);
            }
        } else {
            if matches!(self.role, Role::Syncing { .. } | Role::Ready) {
                self.role = Role::Member;
                self.log.clear();
                // Changes queued for this (former) DC: local ones go to the new DC, remote
                // requesters retry on their own.
                let queued: Vec<_> = self.queued.drain(..).collect();
                for (who, ops, deadline) in queued {
                    if let Requester::Local(req) = who {
                        self.pending.insert(
                            req,
                            Pending {
                                ops,
                                deadline,
                                sent_to: None,
                                done: None,
                            },
                        );
                    }
                }
            }
            if let Some(dc) = mv.dc {
                if changed {
                    let m = self.announce_msg();
                    self.send(&mut out, dc, &m);
                    self.last_want = None;
                }
            }
        }
        self.run_timers(&mut out);
        self.record_membership(&mut out);
        out
    }

    /// The DC keeps each configured node's `member` fact in the status section equal to its
    /// view (a status change: `num_updates` moves, replicated like any other).
    fn record_membership(&mut self, out: &mut Vec<ReplicaAction>) {
        if !self.dc_ready() {
            return;
        }
        let ops: Vec<CibOp> = self
            .cfg
            .nodes
            .iter()
            .filter(|(_, name)| self.cib.configuration.node(name).is_some())
            .filter_map(|(id, name)| {
                let member = self.mv.view.contains(*id);
                let st = self.cib.status.nodes.get(name);
                (st.map(|s| s.member) != Some(member)).then(|| CibOp::SetNodeState {
                    node: name.clone(),
                    member,
                    incarnation: st.and_then(|s| s.incarnation),
                    last_seen_unix_ms: st.and_then(|s| s.last_seen_unix_ms),
                })
            })
            .collect();
        if !ops.is_empty() {
            if let Err(e) = self.dc_apply(out, None, ops) {
                self.log(out, Level::Warn, format!("CIB: cannot record membership: {e}"));
            }
        }
    }

    fn run_timers(&mut self, out: &mut Vec<ReplicaAction>) {
        let now = self.now;
        self.asm.expire(now, self.cfg.sync_timeout.max(self.cfg.retry * 4));
        // Forward (or re-forward) pending changes to the current DC.
        if let Some(dc) = self.mv.dc.filter(|d| *d != self.cfg.local) {
            let to_send: Vec<(u64, Vec<CibOp>)> = self
                .pending
                .iter()
                .filter(|(_, p)| p.done.is_none() && p.sent_to != Some(dc))
                .map(|(r, p)| (*r, p.ops.clone()))
                .collect();
            for (req, ops) in to_send {
                self.send(out, dc, &CibMsg::Change { req, ops });
                if let Some(p) = self.pending.get_mut(&req) {
                    p.sent_to = Some(dc);
                }
            }
        } else if self.is_dc() {
            // Pending requests of this node that were waiting for a DC: this node is it now.
            let mine: Vec<(u64, Vec<CibOp>, Millis)> = self
                .pending
                .iter()
                .filter(|(_, p)| p.done.is_none())
                .map(|(r, p)| (*r, p.ops.clone(), p.deadline))
                .collect();
            for (req, ops, deadline) in mine {
                self.pending.remove(&req);
                self.dc_change(out, Requester::Local(req), ops, deadline);
            }
        }
        // Queued at a synchronising DC for too long: local tools get their timeout, remote
        // requesters time out on their own.
        while let Some(i) = self.queued.iter().position(|q| now >= q.2) {
            let (who, _, _) = self.queued.remove(i).expect("found");
            if let Requester::Local(req) = who {
                out.push(ReplicaAction::Reply {
                    req,
                    result: Err(ChangeError::Timeout),
                });
            }
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(r, _)| *r)
            .collect();
        for req in expired {
            let p = self.pending.remove(&req).expect("listed");
            // The DC applied it but this copy has not caught up: the change is made.
            let result = p.done.ok_or(ChangeError::Timeout);
            out.push(ReplicaAction::Reply { req, result });
        }
        match &mut self.role {
            Role::Member => {
                if let (Some(dc), Some(v)) = (self.mv.dc, self.mv.dc_version) {
                    if dc != self.cfg.local && v != self.cib.version() && self.may_ask_again() {
                        self.last_want = Some(now);
                        let have = self.want_have();
                        self.send(out, dc, &CibMsg::Want { have });
                    }
                }
            }
            Role::Syncing {
                announced,
                started,
                last_sync_sent,
                fetching,
            } => {
                if let Some((from, since)) = *fetching {
                    if now >= since + self.cfg.sync_timeout {
                        let name = self.cfg.name_of(from);
                        self.log(
                            out,
                            Level::Warn,
                            format!("CIB: {name} did not send its document in time; synchronising again"),
                        );
                        self.start_sync(out);
                    }
                    return;
                }
                let missing: Vec<NodeId> = self
                    .mv
                    .view
                    .iter()
                    .filter(|n| *n != self.cfg.local && !announced.contains_key(n))
                    .collect();
                if missing.is_empty() || now >= *started + self.cfg.sync_timeout {
                    self.decide_sync(out);
                } else if now >= *last_sync_sent + self.cfg.retry {
                    *last_sync_sent = now;
                    for n in missing {
                        self.send(out, n, &CibMsg::Sync);
                    }
                }
            }
            Role::Ready => {
                self.unconfirmed = self.unconfirmed.intersection(self.mv.view);
                if !self.unconfirmed.is_empty() && now >= self.last_sync_sent + self.cfg.retry {
                    self.last_sync_sent = now;
                    for n in self.unconfirmed.iter().collect::<Vec<_>>() {
                        self.send(out, n, &CibMsg::Sync);
                    }
                }
            }
        }
    }

    fn start_sync(&mut self, out: &mut Vec<ReplicaAction>) {
        self.role = Role::Syncing {
            announced: BTreeMap::new(),
            started: self.now,
            last_sync_sent: self.now,
            fetching: None,
        };
        self.log.clear();
        for n in self.members() {
            self.send(out, n, &CibMsg::Sync);
        }
        let members = self.members();
        if members.is_empty() {
            self.decide_sync(out);
        }
    }

    /// Picks the winning document among this node's and the announced ones.
    fn decide_sync(&mut self, out: &mut Vec<ReplicaAction>) {
        let Role::Syncing { announced, .. } = &self.role else {
            return;
        };
        let mut best: (Option<NodeId>, MergeSide) = (
            None,
            MergeSide {
                version: self.cib.version(),
                quorate: self.origin_quorate,
                digest: Some(self.cib.digest()),
            },
        );
        for (n, a) in announced {
            let side = MergeSide {
                version: a.version,
                quorate: a.origin_quorate,
                digest: Some(a.digest.clone()),
            };
            if decide(&best.1, &side).take_remote() {
                best = (Some(*n), side);
            }
        }
        match best.0 {
            Some(winner) => {
                let name = self.cfg.name_of(winner);
                self.log(
                    out,
                    Level::Info,
                    format!(
                        "CIB: {name}'s copy {} wins the merge over this DC's {}; fetching it",
                        best.1.version,
                        self.cib.version()
                    ),
                );
                if let Role::Syncing { fetching, .. } = &mut self.role {
                    *fetching = Some((winner, self.now));
                }
                self.send(out, winner, &CibMsg::Want { have: None });
            }
            None => self.finish_sync(out),
        }
    }

    fn finish_sync(&mut self, out: &mut Vec<ReplicaAction>) {
        let Role::Syncing { announced, .. } = std::mem::replace(&mut self.role, Role::Ready) else {
            return;
        };
        self.counters.merges += 1;
        let digest = self.cib.digest();
        let version = self.cib.version();
        // Until a member announces the DC's copy, it is asked again every `retry`: its copy may
        // be better, or the document pushed to it may be lost.
        self.unconfirmed = self
            .members()
            .into_iter()
            .filter(|n| {
                announced
                    .get(n)
                    .is_none_or(|a| a.version != version || a.digest != digest)
            })
            .collect();
        self.last_sync_sent = self.now;
        // Only to those that announced a different copy: one that did not announce may hold a
        // better one; it is asked again (above) and answered when it announces.
        for n in self.members() {
            let differs = announced
                .get(&n)
                .is_some_and(|a| a.version != version || a.digest != digest || !a.origin_quorate);
            if differs {
                let m = self.document_msg();
                self.send(out, n, &m);
                self.counters.documents_sent += 1;
            }
        }
        let everyone = self.members().iter().all(|n| announced.contains_key(n));
        self.log(
            out,
            Level::Info,
            format!(
                "CIB: this node is DC with version {version}{}",
                if everyone {
                    ", members synchronised"
                } else {
                    "; waiting for members that did not announce"
                }
            ),
        );
        self.confirm_if_complete(out, everyone);
    }

    /// The DC's document becomes the partition's (made with quorum) once every member has
    /// announced (so none can hold a better one); only then does the DC take changes. A
    /// document made without quorum is never promoted on the DC's word alone.
    fn confirm_if_complete(&mut self, out: &mut Vec<ReplicaAction>, everyone_announced: bool) {
        if !matches!(self.role, Role::Ready) || !self.is_dc() {
            return;
        }
        if !self.origin_quorate {
            if !everyone_announced {
                return;
            }
            // A partition with quorum now holds this document.
            let cib = self.cib.clone();
            self.install(out, cib, true);
            for n in self.members() {
                let m = self.document_msg();
                self.send(out, n, &m);
            }
        }
        // Every configured node must be in the node section.
        let missing: Vec<CibOp> = self
            .cfg
            .nodes
            .iter()
            .filter(|(_, name)| self.cib.configuration.node(name).is_none())
            .map(|(id, name)| CibOp::AddNode {
                node: super::config::Node::new(name, id.0),
            })
            .collect();
        if !missing.is_empty() {
            if let Err(e) = self.dc_apply(out, None, missing) {
                self.log(out, Level::Warn, format!("CIB: cannot add the configured nodes: {e}"));
            }
        }
        let queued: Vec<_> = self.queued.drain(..).collect();
        for (who, ops, deadline) in queued {
            self.dc_change(out, who, ops, deadline);
        }
    }

    /// The DC handles a change request (queues it while synchronising).
    fn dc_change(&mut self, out: &mut Vec<ReplicaAction>, who: Requester, ops: Vec<CibOp>, deadline: Millis) {
        if !self.dc_ready() {
            if self.queued.len() >= MAX_QUEUED {
                self.answer(out, who, Err(ChangeError::Busy));
            } else {
                self.queued.push_back((who, ops, deadline));
            }
            return;
        }
        let result = self.dc_apply(out, Some(who), ops);
        self.answer(out, who, result);
    }

    fn answer(&mut self, out: &mut Vec<ReplicaAction>, who: Requester, result: Result<ChangeDone, ChangeError>) {
        match who {
            Requester::Local(req) => out.push(ReplicaAction::Reply { req, result }),
            Requester::Remote(n, req) => {
                let msg = match result {
                    Ok(d) => CibMsg::ChangeResult {
                        req,
                        version: Some(d.version),
                        changed: d.changed,
                        error: None,
                    },
                    Err(e) => CibMsg::ChangeResult {
                        req,
                        version: None,
                        changed: false,
                        error: Some(match e {
                            ChangeError::Refused(s) => s,
                            other => other.to_string(),
                        }),
                    },
                };
                if self.recent.len() >= RECENT_RESULTS {
                    self.recent.pop_front();
                }
                self.recent.push_back(((n, req), msg.clone()));
                self.send(out, n, &msg);
            }
        }
    }

    /// Applies `ops` as DC and pushes the update to every member.
    fn dc_apply(
        &mut self,
        out: &mut Vec<ReplicaAction>,
        who: Option<Requester>,
        ops: Vec<CibOp>,
    ) -> Result<ChangeDone, ChangeError> {
        let before = self.cib.clone();
        match self.cib.apply_and_package(ops) {
            Ok(Some(update)) => {
                let version = update.result;
                let by = match who {
                    Some(Requester::Remote(n, _)) => format!(" for {}", self.cfg.name_of(n)),
                    Some(Requester::Local(_)) => " for a local tool".to_string(),
                    None => String::new(),
                };
                self.log(
                    out,
                    Level::Info,
                    format!("CIB: applied {} change(s){by}: now {version}", update.ops.len()),
                );
                let cib = std::mem::replace(&mut self.cib, before);
                self.install(out, cib, true);
                if self.log.len() >= LOG_LEN {
                    self.log.pop_front();
                }
                self.log.push_back(update.clone());
                for n in self.members() {
                    self.send(out, n, &CibMsg::Update { update: update.clone() });
                }
                Ok(ChangeDone {
                    version,
                    changed: true,
                    forced: false,
                })
            }
            Ok(None) => Ok(ChangeDone {
                version: self.cib.version(),
                changed: false,
                forced: false,
            }),
            Err(e) => Err(ChangeError::Refused(e.to_string())),
        }
    }

    /// A tool asks for a change. The answer comes as a [`ReplicaAction::Reply`] with `req`,
    /// now or later (bounded by `request_timeout`).
    pub fn submit(&mut self, now: Millis, req: u64, ops: Vec<CibOp>, force: bool) -> Vec<ReplicaAction> {
        let mut out = Vec::new();
        self.now = self.now.max(now);
        if self.pending.contains_key(&req) || self.pending.len() >= MAX_PENDING {
            out.push(ReplicaAction::Reply {
                req,
                result: Err(ChangeError::Busy),
            });
            return out;
        }
        if !self.mv.quorate {
            if !force {
                out.push(ReplicaAction::Reply {
                    req,
                    result: Err(ChangeError::NoQuorum),
                });
                return out;
            }
            let mut next = self.cib.clone();
            let result = match next.apply(&ops) {
                Ok(applied) => {
                    if applied.changed {
                        self.log(
                            &mut out,
                            Level::Warn,
                            format!(
                                "CIB: forced change without quorum applied to this node's copy only: now {}",
                                applied.version
                            ),
                        );
                        self.install(&mut out, next, false);
                    }
                    Ok(ChangeDone {
                        version: applied.version,
                        changed: applied.changed,
                        forced: true,
                    })
                }
                Err(e) => Err(ChangeError::Refused(e.to_string())),
            };
            out.push(ReplicaAction::Reply { req, result });
            return out;
        }
        if self.is_dc() {
            let deadline = self.now + self.cfg.request_timeout;
            self.dc_change(&mut out, Requester::Local(req), ops, deadline);
            return out;
        }
        self.pending.insert(
            req,
            Pending {
                ops,
                deadline: self.now + self.cfg.request_timeout,
                sent_to: None,
                done: None,
            },
        );
        self.run_timers(&mut out);
        out
    }

    /// `node` restarted: its message ids start over.
    pub fn peer_restarted(&mut self, node: NodeId) {
        self.asm.forget(node);
    }

    /// A CIB payload arrived from `from` (already authenticated by the membership layer).
    pub fn receive(&mut self, now: Millis, from: NodeId, payload: &[u8]) -> Vec<ReplicaAction> {
        let mut out = Vec::new();
        self.now = self.now.max(now);
        let bytes = match self.asm.push(self.now, from, payload) {
            Ok(Some(b)) => b,
            Ok(None) | Err(FragmentError::Duplicate) => return out,
            Err(e) => {
                self.counters.bad_messages += 1;
                let name = self.cfg.name_of(from);
                self.log(&mut out, Level::Warn, format!("CIB: {e} from {name} dropped"));
                return out;
            }
        };
        let msg = match CibMsg::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.bad_messages += 1;
                let name = self.cfg.name_of(from);
                self.log(&mut out, Level::Warn, format!("CIB: message from {name} dropped: {e}"));
                return out;
            }
        };
        self.handle(&mut out, from, msg);
        self.run_timers(&mut out);
        out
    }

    fn handle(&mut self, out: &mut Vec<ReplicaAction>, from: NodeId, msg: CibMsg) {
        let from_dc = self.mv.dc == Some(from);
        let name = self.cfg.name_of(from);
        match msg {
            CibMsg::Sync => {
                // Answered for any member of the view: this node may not yet have named the
                // sender DC (views settle at slightly different times), and an announcement
                // only tells what this node holds.
                if from_dc || self.mv.view.contains(from) {
                    let m = self.announce_msg();
                    self.send(out, from, &m);
                }
            }
            CibMsg::Announce {
                version,
                digest,
                origin_quorate,
            } => {
                if !self.is_dc() || !self.mv.view.contains(from) {
                    return;
                }
                let a = Announced {
                    version,
                    digest,
                    origin_quorate,
                };
                match &mut self.role {
                    Role::Syncing { announced, .. } => {
                        announced.insert(from, a);
                    }
                    Role::Ready => {
                        let mine = MergeSide {
                            version: self.cib.version(),
                            quorate: self.origin_quorate,
                            digest: Some(self.cib.digest()),
                        };
                        let theirs = MergeSide {
                            version: a.version,
                            quorate: a.origin_quorate,
                            digest: Some(a.digest.clone()),
                        };
                        if decide(&mine, &theirs).take_remote() {
                            // A member brought a better document: synchronise again.
                            self.start_sync(out);
                            if let Role::Syncing { announced, .. } = &mut self.role {
                                announced.insert(from, a);
                            }
                        } else if mine.version != a.version
                            || mine.digest.as_ref() != Some(&a.digest)
                            || mine.quorate != a.origin_quorate
                        {
                            self.unconfirmed.insert(from);
                            let m = self.document_msg();
                            self.send(out, from, &m);
                            self.counters.documents_sent += 1;
                        } else {
                            self.unconfirmed.remove(from);
                            if !self.origin_quorate && self.unconfirmed.is_empty() {
                                // Every member now holds this copy: it is the partition's.
                                self.confirm_if_complete(out, true);
                            }
                        }
                    }
                    Role::Member => {}
                }
            }
            CibMsg::Want { have } => {
                if from_dc && !self.is_dc() {
                    // The DC wants this node's document (it won the merge).
                    let m = self.document_msg();
                    self.send(out, from, &m);
                    self.counters.documents_sent += 1;
                } else if self.dc_ready() && self.mv.view.contains(from) {
                    self.serve_want(out, from, have);
                }
            }
            CibMsg::Document { origin_quorate, cib } => {
                self.counters.documents_received += 1;
                let fetching = match &self.role {
                    Role::Syncing { fetching, .. } => fetching.map(|f| f.0),
                    _ => None,
                };
                if self.is_dc() && fetching == Some(from) {
                    self.log(
                        out,
                        Level::Info,
                        format!("CIB: took {name}'s document {} (merge)", cib.version()),
                    );
                    self.install(out, *cib, origin_quorate);
                    self.finish_sync(out);
                } else if from_dc && !self.is_dc() {
                    let theirs = MergeSide {
                        version: cib.version(),
                        quorate: origin_quorate,
                        digest: Some(cib.digest()),
                    };
                    let mine = MergeSide {
                        version: self.cib.version(),
                        quorate: self.origin_quorate,
                        digest: Some(self.cib.digest()),
                    };
                    let d = decide(&mine, &theirs);
                    if !d.take_remote() && d.reason != super::merge::MergeReason::Identical {
                        // The DC cannot have seen this copy (it would have won the merge): tell
                        // it, rather than lose changes a partition with quorum made.
                        self.log(
                            out,
                            Level::Warn,
                            format!(
                                "CIB: the DC's {} would replace this node's better copy {}; announcing it",
                                theirs.version, mine.version
                            ),
                        );
                        let m = self.announce_msg();
                        self.send(out, from, &m);
                        return;
                    }
                    if cib.version() != self.cib.version() || cib.digest() != self.cib.digest() {
                        self.log(
                            out,
                            Level::Info,
                            format!(
                                "CIB: replaced copy {} with the DC's {}",
                                self.cib.version(),
                                cib.version()
                            ),
                        );
                    }
                    self.install(out, *cib, origin_quorate);
                }
            }
            CibMsg::Update { update } => {
                if !from_dc || self.is_dc() {
                    return;
                }
                if update.result <= self.cib.version() && update.base < self.cib.version() {
                    // Already have it (a copy from another link, or the document overtook it).
                    return;
                }
                let mut next = self.cib.clone();
                match next.apply_update(&update) {
                    Ok(()) => {
                        self.counters.updates_applied += 1;
                        self.install(out, next, true);
                    }
                    Err(e) => {
                        self.counters.updates_rejected += 1;
                        // Only a gap (made against a version this node has not reached) can be
                        // filled from the DC's log. Anything else means this copy's history left
                        // the DC's (both sides of a split made their own 0.6.1): asking with
                        // `have` would bring the same log entries back forever.
                        let gap = matches!(e, CibError::VersionMismatch { base, ours } if base > ours);
                        let first = !gap && !self.need_document;
                        self.need_document |= !gap;
                        // One question per retry interval, not one per rejected update.
                        if first || self.may_ask_again() {
                            self.log(out, Level::Info, format!("CIB: {e}; asking {name}"));
                            self.last_want = Some(self.now);
                            let have = self.want_have();
                            self.send(out, from, &CibMsg::Want { have });
                        }
                    }
                }
            }
            CibMsg::Change { req, ops } => {
                if !self.is_dc() {
                    let m = CibMsg::ChangeResult {
                        req,
                        version: None,
                        changed: false,
                        error: Some(format!("{} is not the DC", self.cfg.name_of(self.cfg.local))),
                    };
                    self.send(out, from, &m);
                    return;
                }
                if let Some((_, m)) = self.recent.iter().find(|(k, _)| *k == (from, req)) {
                    let m = m.clone();
                    self.send(out, from, &m);
                    return;
                }
                if self.queued.iter().any(|(w, _, _)| *w == Requester::Remote(from, req)) {
                    return;
                }
                let deadline = self.now + self.cfg.request_timeout;
                self.dc_change(out, Requester::Remote(from, req), ops, deadline);
            }
            CibMsg::ChangeResult {
                req,
                version,
                changed,
                error,
            } => {
                let Some(p) = self.pending.get_mut(&req) else { return };
                if p.sent_to != Some(from) || p.done.is_some() {
                    return;
                }
                match (version, error) {
                    (Some(version), None) => {
                        p.done = Some(ChangeDone {
                            version,
                            changed,
                            forced: false,
                        });
                        self.answer_waiting(out);
                    }
                    (_, e) => {
                        self.pending.remove(&req);
                        let e = e.unwrap_or_else(|| "no reason given".into());
                        out.push(ReplicaAction::Reply {
                            req,
                            result: Err(ChangeError::Refused(e)),
                        });
                    }
                }
            }
        }
    }

    /// A member asks its DC for the DC's copy at most once per retry interval.
    fn may_ask_again(&self) -> bool {
        self.last_want.is_none_or(|t| self.now >= t + self.cfg.retry)
    }

    /// What a member tells the DC it has when it asks for the DC's copy: nothing (send the
    /// whole document) once its own copy is known to have diverged.
    fn want_have(&self) -> Option<CibVersion> {
        (!self.need_document).then(|| self.cib.version())
    }

    /// Answers a member that is behind: the updates since its version if the log has them all,
    /// else the whole document.
    fn serve_want(&mut self, out: &mut Vec<ReplicaAction>, to: NodeId, have: Option<CibVersion>) {
        if let Some(h) = have {
            if h == self.cib.version() {
                return;
            }
            if let Some(start) = self.log.iter().position(|u| u.base == h) {
                let chain: Vec<CibUpdate> = self.log.iter().skip(start).cloned().collect();
                let linked = chain.windows(2).all(|w| w[0].result == w[1].base)
                    && chain.last().is_some_and(|u| u.result == self.cib.version());
                if linked {
                    for update in chain {
                        self.send(out, to, &CibMsg::Update { update });
                    }
                    return;
                }
            }
        }
        let m = self.document_msg();
        self.send(out, to, &m);
        self.counters.documents_sent += 1;
    }
}

#[cfg(test)]
#[path = "replica_test.rs"]
mod tests;
