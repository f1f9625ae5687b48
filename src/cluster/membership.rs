//! The per-node membership state machine.
//!
//! Inputs: [`Membership::receive`] (a datagram arrived on link L at time T), [`Membership::tick`]
//! (the clock reached T), [`Membership::leave`] (orderly shutdown) and the local facts the layer
//! above owns (the CIB version, the tie-breaker's answer). Outputs: [`Action`]s, for the driver to
//! carry out in order. Nothing here reads a clock or touches a socket.
//!
//! Timing follows Heartbeat's ha.cf:
//!
//! - `keepalive`: a heartbeat goes to every peer on every link this often (and at once when this
//!   node's view, quorum or DC changes, so that peers learn it without waiting);
//! - `warntime`: a heartbeat arriving more than this after the previous one is logged as late;
//! - `deadtime`: a link that has heard nothing from a node for this long is down; a node whose
//!   links are all down is dead and leaves the view;
//! - `initdead`: after start, a node never heard is "pending", not "dead", until this much time
//!   has passed, and no DC is elected before then unless every configured node has been heard.
//!
//! A node is alive while ANY link hears it. A heartbeat with a newer incarnation from a node is a
//! restart: the node's previous life ended (crashed or stopped) and it rejoined.

use super::dc::{elect, ElectionInput};
use super::heartbeat::{
    cluster_id, decode, encode, AuthKey, CibVersion, DropCounters, DropReason, Fresh, Heartbeat, PayloadKind,
    ReplayGuard, MAX_PAYLOAD,
};
use super::quorum::{NoQuorumPolicy, Quorum, QuorumConfig};
use super::{LinkId, Millis, NodeId, NodeSet, MAX_LINKS, MAX_NODES};
use std::fmt;

/// ha.cf's timing knobs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub keepalive: Millis,
    pub warntime: Millis,
    pub deadtime: Millis,
    pub initdead: Millis,
}

impl Timing {
    pub fn validate(&self) -> Result<(), String> {
        if self.keepalive == 0 {
            return Err("keepalive must be above zero".into());
        }
        if self.warntime < self.keepalive || self.warntime >= self.deadtime {
            return Err(format!(
                "warntime ({} ms) must be at least keepalive ({} ms) and below deadtime ({} ms)",
                self.warntime, self.keepalive, self.deadtime
            ));
        }
        if self.deadtime < 2 * self.keepalive {
            return Err(format!(
                "deadtime ({} ms) must be at least twice keepalive ({} ms), or one lost packet kills a node",
                self.deadtime, self.keepalive
            ));
        }
        if self.initdead < self.deadtime {
            return Err(format!(
                "initdead ({} ms) must be at least deadtime ({} ms); twice is customary",
                self.initdead, self.deadtime
            ));
        }
        Ok(())
    }
}

/// A configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: NodeId,
    pub name: String,
}

/// Everything the state machine needs to start.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub cluster_name: String,
    pub key: AuthKey,
    pub local: NodeId,
    pub nodes: Vec<NodeSpec>,
    /// How many heartbeat links (rings) every node has, `1..=MAX_LINKS`.
    pub links: u8,
    pub timing: Timing,
    /// Votes and options; its node set must be the configured nodes.
    pub quorum: QuorumConfig,
    pub no_quorum_policy: NoQuorumPolicy,
}

impl MembershipConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.timing.validate()?;
        self.quorum.validate()?;
        if self.links == 0 || self.links as usize > MAX_LINKS {
            return Err(format!(
                "a node needs 1 to {MAX_LINKS} heartbeat links, not {}",
                self.links
            ));
        }
        let ids: NodeSet = self.nodes.iter().map(|n| n.id).collect();
        if ids.len() != self.nodes.len() || self.nodes.iter().any(|n| n.id.0 as usize >= MAX_NODES) {
            return Err(format!("node ids must be distinct and below {MAX_NODES}"));
        }
        if !ids.contains(self.local) {
            return Err(format!("the local node {} is not a configured node", self.local));
        }
        if self.quorum.nodes() != ids {
            return Err("the quorum votes must name exactly the configured nodes".into());
        }
        Ok(())
    }

    pub fn name_of(&self, id: NodeId) -> &str {
        self.nodes.iter().find(|n| n.id == id).map_or("?", |n| n.name.as_str())
    }
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `packet` to `to` over link `link` (unicast; a multicast driver may send once per link).
    Send {
        to: NodeId,
        link: LinkId,
        packet: Vec<u8>,
    },
    /// The set of nodes this node considers alive and reachable changed.
    ViewChanged {
        view: NodeSet,
        joined: NodeSet,
        left: NodeSet,
    },
    /// `node` came back with a new incarnation: its previous life ended (crash or restart).
    NodeRestarted {
        node: NodeId,
        incarnation: u64,
    },
    /// One link to `node` went up or down (the node may still be alive on another link).
    LinkChanged {
        node: NodeId,
        link: LinkId,
        up: bool,
    },
    QuorumChanged {
        quorate: bool,
    },
    DcChanged {
        dc: Option<NodeId>,
    },
    /// A payload (CIB request or document) arrived from an authenticated member.
    Payload {
        from: NodeId,
        kind: PayloadKind,
        data: Vec<u8>,
    },
    Log {
        level: Level,
        message: String,
    },
}

/// A peer as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Not heard since this node started, and initdead has not passed.
    Pending,
    Alive,
    /// Not heard for deadtime (or never, after initdead).
    Dead,
    /// Announced an orderly leave; ignored until it comes back with a new incarnation.
    Left,
}

#[derive(Debug, Clone)]
struct Peer {
    state: PeerState,
    guard: ReplayGuard,
    left_incarnation: Option<u64>,
    last_heard: Option<Millis>,
    link_heard: [Option<Millis>; MAX_LINKS],
    link_up: [bool; MAX_LINKS],
    /// Highest sequence number accepted per link: only a packet newer than this refreshes the
    /// link's liveness, so an old packet replayed (or long delayed) cannot keep a node alive.
    link_seq: [u64; MAX_LINKS],
    view: NodeSet,
    quorate: bool,
    dc: Option<NodeId>,
    cib: CibVersion,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            state: PeerState::Pending,
            guard: ReplayGuard::default(),
            left_incarnation: None,
            last_heard: None,
            link_heard: [None; MAX_LINKS],
            link_up: [false; MAX_LINKS],
            link_seq: [0; MAX_LINKS],
            view: NodeSet::EMPTY,
            quorate: false,
            dc: None,
            cib: CibVersion::default(),
        }
    }
}

/// One node's status line, for `hbcrm status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub id: u8,
    pub name: String,
    pub state: PeerState,
    pub incarnation: Option<u64>,
    /// Milliseconds since the last accepted heartbeat, if any.
    pub last_heard_ago: Option<Millis>,
    /// Per link: is it hearing this node?
    pub links_up: Vec<bool>,
    pub cib: CibVersion,
}

/// The whole membership status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MembershipStatus {
    pub local: u8,
    pub incarnation: u64,
    pub view: Vec<u8>,
    pub quorate: bool,
    pub dc: Option<u8>,
    pub settled: bool,
    pub no_quorum_policy: NoQuorumPolicy,
    pub peers: Vec<NodeStatus>,
    pub dropped: DropCounters,
}

/// The membership state machine of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    cfg: MembershipConfig,
    cluster: u64,
    incarnation: u64,
    seq: u64,
    started: Millis,
    next_send: Millis,
    stopped: bool,
    peers: Vec<Option<Peer>>,
    view: NodeSet,
    quorum: Quorum,
    dc: Option<NodeId>,
    /// After a member leaves the view, no new DC is named before this time (see `recompute`).
    dc_holdoff_until: Millis,
    /// The DC when the last loss started the holdoff: it may be named again at once.
    dc_before_loss: Option<NodeId>,
    /// The last DC this node named (views briefly disagree, and so name none, around a loss).
    last_dc: Option<NodeId>,
    /// The latest time the driver reported.
    now: Millis,
    settled: bool,
    cib: CibVersion,
    dropped: DropCounters,
}

impl Membership {
    /// Starts a node at time `now`. `incarnation` must be larger than any this node used before
    /// (a persisted counter, or the wall clock in nanoseconds): peers drop older incarnations.
    pub fn new(cfg: MembershipConfig, incarnation: u64, now: Millis) -> Result<Membership, String> {
        cfg.validate()?;
        let mut peers: Vec<Option<Peer>> = vec![None; MAX_NODES];
        for n in &cfg.nodes {
            if n.id != cfg.local {
                peers[n.id.0 as usize] = Some(Peer::new());
            }
        }
        let mut quorum = Quorum::new(cfg.quorum.clone());
        let view = NodeSet::single(cfg.local);
        quorum.update(view);
        let mut m = Membership {
            cluster: cluster_id(&cfg.cluster_name),
            cfg,
            incarnation,
            seq: 0,
            started: now,
            next_send: now,
            stopped: false,
            peers,
            view,
            quorum,
            dc: None,
            dc_holdoff_until: now,
            dc_before_loss: None,
            last_dc: None,
            now,
            settled: false,
            cib: CibVersion::default(),
            dropped: DropCounters::default(),
        };
        // A cluster of one is settled and quorate at once; its DC is itself.
        let mut sink = Vec::new();
        m.recompute(now, &mut sink);
        Ok(m)
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }
    pub fn local(&self) -> NodeId {
        self.cfg.local
    }
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn view(&self) -> NodeSet {
        self.view
    }
    pub fn quorate(&self) -> bool {
        self.quorum.quorate()
    }
    pub fn dc(&self) -> Option<NodeId> {
        self.dc
    }
    pub fn settled(&self) -> bool {
        self.settled
    }
    /// Has every configured node been in the view at once since start (wait-for-all)?
    pub fn quorum_wait_for_all_done(&self) -> bool {
        self.quorum.wait_for_all_done()
    }
    pub fn dropped(&self) -> &DropCounters {
        &self.dropped
    }
    pub fn no_quorum_policy(&self) -> NoQuorumPolicy {
        self.cfg.no_quorum_policy
    }
    pub fn peer_state(&self, n: NodeId) -> Option<PeerState> {
        self.peer(n).map(|p| p.state)
    }
    /// The view `n` last reported, and the CIB version it advertises.
    pub fn peer_report(&self, n: NodeId) -> Option<(NodeSet, CibVersion)> {
        self.peer(n).filter(|p| p.last_heard.is_some()).map(|p| (p.view, p.cib))
    }
    pub fn link_up(&self, n: NodeId, link: LinkId) -> bool {
        self.peer(n)
            .is_some_and(|p| (link as usize) < MAX_LINKS && p.link_up[link as usize])
    }

    fn peer(&self, n: NodeId) -> Option<&Peer> {
        self.peers.get(n.0 as usize).and_then(|p| p.as_ref())
    }

    /// The CIB version this node advertises (set by the CIB layer whenever it changes).
    pub fn set_cib_version(&mut self, v: CibVersion) {
        self.cib = v;
    }

    /// The external tie-breaker's answer (ping node or quorum device).
    pub fn set_tie_breaker_grant(&mut self, now: Millis, grant: bool) -> Vec<Action> {
        self.quorum.set_external_grant(grant);
        let mut out = Vec::new();
        self.recompute(now, &mut out);
        out
    }

    /// The earliest time at which [`Membership::tick`] has something to do.
    pub fn poll_at(&self) -> Millis {
        let t = &self.cfg.timing;
        let mut at = self.next_send;
        if !self.settled {
            at = at.min(self.started + t.initdead);
        }
        if self.dc_holdoff_until > self.now {
            at = at.min(self.dc_holdoff_until);
        }
        for p in self.peers.iter().flatten() {
            if p.state == PeerState::Alive {
                for h in p.link_heard.iter().take(self.cfg.links as usize).flatten() {
                    at = at.min(h + t.deadtime);
                }
            }
        }
        at
    }

    /// Orderly shutdown: tells every peer on every link, then goes quiet.
    pub fn leave(&mut self, _now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.stopped {
            self.broadcast(true, &mut out);
            self.stopped = true;
        }
        out
    }

    /// Sends `kind`/`data` to `to` at once, on every link (the CIB layer's messages).
    pub fn send_payload(&mut self, to: NodeId, kind: PayloadKind, data: Vec<u8>) -> Result<Vec<Action>, String> {
        if data.len() > MAX_PAYLOAD {
            return Err(format!(
                "a {} byte payload does not fit a heartbeat (at most {MAX_PAYLOAD})",
                data.len()
            ));
        }
        if self.peer(to).is_none() {
            return Err(format!("{to} is not a configured peer"));
        }
        let mut out = Vec::new();
        if self.stopped {
            return Ok(out);
        }
        for link in 0..self.cfg.links {
            let packet = self.packet(link, false, kind, data.clone());
            out.push(Action::Send { to, link, packet });
        }
        Ok(out)
    }

    /// The clock reached `now`: send heartbeats that are due, declare silent links and nodes dead.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        let t = self.cfg.timing;
        let links = self.cfg.links as usize;
        for id in 0..MAX_NODES {
            let Some(p) = self.peers[id].as_mut() else { continue };
            let node = NodeId(id as u8);
            match p.state {
                PeerState::Alive => {
                    for l in 0..links {
                        if p.link_up[l] && p.link_heard[l].is_some_and(|h| now >= h + t.deadtime) {
                            p.link_up[l] = false;
                            out.push(Action::LinkChanged {
                                node,
                                link: l as LinkId,
                                up: false,
                            });
                            out.push(Action::Log {
                                level: Level::Warn,
                                message: format!(
                                    "link {l} to {} is down: nothing heard for {} ms",
                                    self.cfg.name_of(node),
                                    t.deadtime
                                ),
                            });
                        }
                    }
                    if p.last_heard.is_some_and(|h| now >= h + t.deadtime) {
                        p.state = PeerState::Dead;
                        out.push(Action::Log {
                            level: Level::Warn,
                            message: format!(
                                "node {} is dead: no heartbeat on any link for {} ms",
                                self.cfg.name_of(node),
                                now - p.last_heard.unwrap_or(now)
                            ),
                        });
                    }
                }
                PeerState::Pending if now >= self.started + t.initdead => {
                    p.state = PeerState::Dead;
                    out.push(Action::Log {
                        level: Level::Info,
                        message: format!(
                            "node {} not heard within initdead ({} ms): offline",
                            self.cfg.name_of(node),
                            t.initdead
                        ),
                    });
                }
                _ => {}
            }
        }
        self.recompute(now, &mut out);
        if now >= self.next_send {
            self.broadcast(false, &mut out);
            self.next_send = now + t.keepalive;
        }
        out
    }

    /// A datagram arrived on `link` at `now`.
    pub fn receive(&mut self, now: Millis, link: LinkId, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        let hb = match decode(bytes, &self.cfg.key, self.cluster) {
            Ok(hb) => hb,
            Err(r) => {
                self.dropped.count(r);
                return out;
            }
        };
        if hb.sender == self.cfg.local {
            // Our own packet looped back (multicast, broadcast): not an error.
            return out;
        }
        if hb.link != link || link >= self.cfg.links {
            // A cross-wired ring (or a packet replayed onto another link) would make link health lie.
            self.dropped.count(DropReason::Malformed);
            return out;
        }
        let t = self.cfg.timing;
        let name = self.cfg.name_of(hb.sender).to_string();
        let Some(p) = self.peers[hb.sender.0 as usize].as_mut() else {
            self.dropped.count(DropReason::UnknownSender);
            return out;
        };
        if p.left_incarnation.is_some_and(|i| hb.incarnation <= i) {
            self.dropped.count(DropReason::StaleIncarnation);
            return out;
        }
        let fresh = match p.guard.check(hb.incarnation, hb.seq) {
            Ok(f) => f,
            Err(r) => {
                self.dropped.count(r);
                return out;
            }
        };
        let l = link as usize;
        let new_life = matches!(fresh, Fresh::NewIncarnation { .. } | Fresh::First);
        if new_life {
            p.link_seq = [0; MAX_LINKS];
        }
        let live_on_link = hb.seq > p.link_seq[l] || new_life;
        if live_on_link {
            p.link_seq[l] = hb.seq;
            if let Some(prev) = p.last_heard {
                if p.state == PeerState::Alive && now.saturating_sub(prev) > t.warntime {
                    out.push(Action::Log {
                        level: Level::Warn,
                        message: format!("late heartbeat from {name}: {} ms since the previous one", now - prev),
                    });
                }
            }
            p.last_heard = Some(now);
            p.link_heard[l] = Some(now);
            if !p.link_up[l] {
                p.link_up[l] = true;
                out.push(Action::LinkChanged {
                    node: hb.sender,
                    link,
                    up: true,
                });
            }
        }
        let restarted = matches!(fresh, Fresh::NewIncarnation { .. });
        if restarted {
            out.push(Action::Log {
                level: Level::Warn,
                message: format!("node {name} restarted (incarnation {})", hb.incarnation),
            });
            out.push(Action::NodeRestarted {
                node: hb.sender,
                incarnation: hb.incarnation,
            });
            // Links other than this one have not heard the new life yet.
            for (i, up) in p.link_up.iter_mut().enumerate() {
                if i != l && *up {
                    *up = false;
                    out.push(Action::LinkChanged {
                        node: hb.sender,
                        link: i as LinkId,
                        up: false,
                    });
                }
            }
            p.link_heard = [None; MAX_LINKS];
            p.link_heard[l] = Some(now);
            p.left_incarnation = None;
        }
        if fresh != Fresh::Late {
            p.view = hb.view;
            p.quorate = hb.quorate;
            p.dc = hb.dc;
            p.cib = hb.cib;
        }
        let was_member = self.view.contains(hb.sender);
        if hb.leaving && fresh != Fresh::Late {
            p.state = PeerState::Left;
            p.left_incarnation = Some(hb.incarnation);
            p.link_up = [false; MAX_LINKS];
            p.link_heard = [None; MAX_LINKS];
            p.last_heard = None;
            out.push(Action::Log {
                level: Level::Info,
                message: format!("node {name} left the cluster"),
            });
        } else if live_on_link {
            // A Left peer only gets here with a newer incarnation (checked above): it is back.
            p.state = PeerState::Alive;
        }
        if restarted && was_member {
            // The old life left and the new one joined, even though the view is the same set.
            out.push(Action::ViewChanged {
                view: self.view,
                joined: NodeSet::single(hb.sender),
                left: NodeSet::single(hb.sender),
            });
        }
        if hb.payload_kind != PayloadKind::None {
            out.push(Action::Payload {
                from: hb.sender,
                kind: hb.payload_kind,
                data: hb.payload,
            });
        }
        self.recompute(now, &mut out);
        out
    }

    fn packet(&mut self, link: LinkId, leaving: bool, kind: PayloadKind, payload: Vec<u8>) -> Vec<u8> {
        self.seq += 1;
        let hb = Heartbeat {
            cluster: self.cluster,
            sender: self.cfg.local,
            link,
            incarnation: self.incarnation,
            seq: self.seq,
            leaving,
            quorate: self.quorum.quorate(),
            view: self.view,
            cib: self.cib,
            dc: self.dc,
            payload_kind: kind,
            payload,
        };
        encode(&hb, &self.cfg.key)
    }

    fn broadcast(&mut self, leaving: bool, out: &mut Vec<Action>) {
        let peers: Vec<NodeId> = self
            .cfg
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|n| *n != self.cfg.local)
            .collect();
        for link in 0..self.cfg.links {
            let packet = self.packet(link, leaving, PayloadKind::None, Vec::new());
            for to in &peers {
                out.push(Action::Send {
                    to: *to,
                    link,
                    packet: packet.clone(),
                });
            }
        }
    }

    /// Recomputes view, quorum and DC; announces changes at once.
    /// How long after losing a member a different DC may be named: two heartbeat intervals
    /// (the skew between two sides noticing one symmetric loss), never more than deadtime.
    fn dc_holdoff(&self) -> Millis {
        (2 * self.cfg.timing.keepalive).min(self.cfg.timing.deadtime)
    }

    fn recompute(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.now = self.now.max(now);
        let mut view = NodeSet::single(self.cfg.local);
        let mut all_heard = true;
        for (i, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                if p.state == PeerState::Alive {
                    view.insert(NodeId(i as u8));
                } else {
                    all_heard = false;
                }
            }
        }
        let mut announce = false;
        if view != self.view {
            let joined = view.difference(self.view);
            let left = self.view.difference(view);
            self.view = view;
            if !left.is_empty() {
                if now >= self.dc_holdoff_until {
                    self.dc_before_loss = self.last_dc;
                }
                self.dc_holdoff_until = now + self.dc_holdoff();
            }
            out.push(Action::ViewChanged { view, joined, left });
            out.push(Action::Log {
                level: Level::Info,
                message: format!("view is now {view} (joined {joined}, left {left})"),
            });
            announce = true;
        }
        let was = self.quorum.quorate();
        if self.quorum.update(view) != was {
            out.push(Action::QuorumChanged { quorate: !was });
            out.push(Action::Log {
                level: if was { Level::Warn } else { Level::Info },
                message: if was {
                    format!(
                        "partition {view} lost quorum (no-quorum-policy={})",
                        self.cfg.no_quorum_policy
                    )
                } else {
                    format!("partition {view} has quorum")
                },
            });
            announce = true;
        }
        // Start-up is over once every node was heard (or initdead passed): a later loss does not
        // bring it back, or losing a node early in a cluster's life would stall the election.
        self.settled = self.settled || all_heard || now >= self.started + self.cfg.timing.initdead;
        let reported: Vec<(NodeId, NodeSet)> = view
            .iter()
            .filter(|n| *n != self.cfg.local)
            .filter_map(|n| self.peer(n).map(|p| (n, p.view)))
            .collect();
        let mut dc = elect(&ElectionInput {
            me: self.cfg.local,
            view,
            quorate: self.quorum.quorate(),
            settled: self.settled,
            reported: &reported,
        });
        // The nodes that just left may not yet have noticed that they lost us, and may still
        // believe in their old partition (and its DC) until their own deadtime runs out. When
        // the loss is symmetric (a crash, a cut link) they hear the same silence as we do and
        // notice it at most about one heartbeat interval apart, so a *different* DC is named
        // only after `dc_holdoff` (two intervals): two DCs at once need a network that is
        // worse than symmetric, where no wait short of a consensus protocol helps (fencing is
        // the guard there).
        // The DC from before the loss is no new claim: it is named again as soon as the
        // survivors agree (losing a node that is not the DC costs no DC time).
        if dc != self.dc && dc.is_some() && dc != self.dc_before_loss && now < self.dc_holdoff_until {
            dc = None;
        }
        if dc != self.dc {
            self.dc = dc;
            if dc.is_some() {
                self.last_dc = dc;
            }
            out.push(Action::DcChanged { dc });
            out.push(Action::Log {
                level: Level::Info,
                message: match dc {
                    Some(d) => format!("DC is {}", self.cfg.name_of(d)),
                    None => "no DC".to_string(),
                },
            });
            announce = true;
        }
        if announce {
            self.next_send = now;
        }
    }

    /// A snapshot for status output.
    pub fn status(&self, now: Millis) -> MembershipStatus {
        let peers = self
            .cfg
            .nodes
            .iter()
            .filter(|n| n.id != self.cfg.local)
            .filter_map(|n| {
                let p = self.peer(n.id)?;
                Some(NodeStatus {
                    id: n.id.0,
                    name: n.name.clone(),
                    state: p.state,
                    incarnation: p.guard.incarnation(),
                    last_heard_ago: p.last_heard.map(|h| now.saturating_sub(h)),
                    links_up: p.link_up[..self.cfg.links as usize].to_vec(),
                    cib: p.cib,
                })
            })
            .collect();
        MembershipStatus {
            local: self.cfg.local.0,
            incarnation: self.incarnation,
            view: self.view.iter().map(|n| n.0).collect(),
            quorate: self.quorum.quorate(),
            dc: self.dc.map(|d| d.0),
            settled: self.settled,
            no_quorum_policy: self.cfg.no_quorum_policy,
            peers,
            dropped: self.dropped,
        }
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} view={} quorate={} dc={}",
            self.cfg.name_of(self.cfg.local),
            self.view,
            self.quorum.quorate(),
            self.dc.map_or("-".to_string(), |d| d.0.to_string())
        )
    }
}

#[cfg(test)]
#[path = "membership_test.rs"]
mod tests;
