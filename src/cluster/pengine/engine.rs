//! The scheduler's steps: read the current state, decide which nodes may run what, place every
//! resource (colocation dependencies first), enforce mandatory orders and colocations, then turn
//! the difference into actions and ordering edges.

use super::instances::{self, instance_id, instance_number};
use super::state::{base_id, fail_count, not_installed, observe, on_fail_of, op_failed, Observed, OnFail};
use super::{ActionKind, ClusterState, NodeState, PlannedAction, Transition};
use crate::cluster::cib::config::{
    parse_bool, parse_duration_ms, Action, Attrs, CloneSet, Constraint, LocationTarget, Operation, OrderKind, Resource,
    Role,
};
use crate::cluster::cib::status::ResourceHistory;
use crate::cluster::cib::{Configuration, Score, Status};
use crate::cluster::quorum::NoQuorumPolicy;
use std::collections::{BTreeMap, BTreeSet};

/// Something placed as a whole: a primitive, a group (members on one node), or a clone of either
/// (instances, at most one per node).
struct Unit {
    id: String,
    /// The primitives, in start order.
    members: Vec<String>,
    clone: Option<CloneSet>,
    /// The group's id when the unit (or the clone's child) is a group.
    group: Option<String>,
    /// A globally-unique clone: (instances, instances per node). Its instances are the
    /// primitives `m:N` for every member `m`.
    unique: Option<(usize, usize)>,
}

impl Unit {
    fn promotable(&self) -> bool {
        self.clone.as_ref().is_some_and(|c| c.is_promotable()) && self.group.is_none()
    }
}

pub(super) struct Engine<'a> {
    cfg: &'a Configuration,
    status: &'a Status,
    now: u64,
    nodes: Vec<String>,
    attrs: BTreeMap<String, Attrs>,
    usable: BTreeSet<String>,
    fence: BTreeSet<String>,
    /// Nodes whose resources nobody may touch: lost but not fenced, or in maintenance.
    hands_off: BTreeSet<String>,
    frozen: bool,
    stop_all: bool,
    /// prim -> node -> what runs there (active states only; fenced nodes left out).
    cur: BTreeMap<String, BTreeMap<String, Observed>>,
    /// (prim, node) instances nothing may change.
    pinned: BTreeSet<(String, String)>,
    units: Vec<Unit>,
    unit_of: BTreeMap<String, usize>,
    target: Vec<Option<Vec<(String, Role)>>>,
    fixed: Vec<bool>,
    /// Unique clones: per unit, instance number -> node and role.
    assign: Vec<BTreeMap<usize, (String, Role)>>,
    /// Primitives of unique clones -> their number of instances.
    unique: BTreeMap<String, usize>,
    /// Primitives stopped for good by a failure whose `on-fail` is `stop`.
    stopped_on_fail: BTreeSet<String>,
    stonith: bool,
    warnings: Vec<String>,
}

fn is_promoted(r: Role) -> bool {
    r == Role::Promoted
}

impl<'a> Engine<'a> {
    pub(super) fn new(cfg: &'a Configuration, status: &'a Status, cl: &'a ClusterState) -> Engine<'a> {
        let mut names: BTreeSet<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
        names.extend(cl.nodes.keys().cloned());
        let nodes: Vec<String> = names.into_iter().collect();
        let stonith = cl.stonith_enabled.unwrap_or_else(|| cfg.stonith_enabled());
        let nqp = cl.no_quorum_policy.unwrap_or_else(|| cfg.no_quorum_policy());
        let may_act = cl.has_quorum || nqp == NoQuorumPolicy::Ignore;
        let frozen = cfg.maintenance_mode() || (!cl.has_quorum && nqp == NoQuorumPolicy::Freeze);
        let suicide = !cl.has_quorum && nqp == NoQuorumPolicy::Suicide;
        let stop_all = !cl.has_quorum && matches!(nqp, NoQuorumPolicy::Stop | NoQuorumPolicy::Suicide);

        let mut e = Engine {
            cfg,
            status,
            now: cl.now_unix_ms,
            nodes: nodes.clone(),
            attrs: BTreeMap::new(),
            usable: BTreeSet::new(),
            fence: BTreeSet::new(),
            hands_off: BTreeSet::new(),
            frozen,
            stop_all,
            cur: BTreeMap::new(),
            pinned: BTreeSet::new(),
            units: Vec::new(),
            unit_of: BTreeMap::new(),
            target: Vec::new(),
            fixed: Vec::new(),
            assign: Vec::new(),
            unique: BTreeMap::new(),
            stopped_on_fail: BTreeSet::new(),
            stonith,
            warnings: Vec::new(),
        };
        for r in &cfg.resources {
            if let Resource::Clone(c) = r {
                if instances::is_unique(cfg, c) {
                    let max = instances::clone_max(c, nodes.len());
                    for p in cfg.primitives_of(&c.id) {
                        e.unique.insert(p.id.clone(), max);
                    }
                }
            }
        }

        let mut online = BTreeSet::new();
        for n in &nodes {
            let ns: NodeState = cl.nodes.get(n).copied().unwrap_or_default();
            let mut a = cfg.node(n).map(|x| x.attributes.clone()).unwrap_or_default();
            if let Some(s) = status.nodes.get(n) {
                for (k, v) in &s.transient_attributes {
                    a.insert(k.clone(), v.clone());
                }
            }
            let flag = |k: &str| a.get(k).and_then(|v| parse_bool(v)).unwrap_or(false);
            let standby = ns.standby || flag("standby");
            let maint = ns.maintenance || flag("maintenance");
            e.attrs.insert(n.clone(), a);
            if ns.online {
                online.insert(n.clone());
                if maint {
                    e.hands_off.insert(n.clone());
                }
                if !standby && !maint {
                    e.usable.insert(n.clone());
                }
            } else if ns.unclean {
                if ns.fencing_failed {
                    e.hands_off.insert(n.clone());
                    e.warnings.push(format!(
                        "node {n} is unclean and fencing it failed too often (stonith-max-attempts): \
                         its resources stay blocked there until it is seen again or confirmed down \
                         (hbcrm node clearstate {n})"
                    ));
                } else if stonith && may_act && !frozen {
                    e.fence.insert(n.clone());
                } else {
                    e.hands_off.insert(n.clone());
                    e.warnings.push(format!(
                        "node {n} is unclean and cannot be fenced: its resources stay blocked there"
                    ));
                }
            }
        }
        if suicide && stonith {
            e.fence.extend(online.iter().cloned());
        }

        // Current state from the history of nodes whose history means something.
        for n in &nodes {
            if !(online.contains(n) || e.hands_off.contains(n)) || e.fence.contains(n) {
                continue;
            }
            let Some(ns) = status.nodes.get(n) else { continue };
            for (sid, h) in &ns.resources {
                let prim = e.key_of(sid);
                let mut obs = observe(h);
                if !obs.is_active() {
                    continue;
                }
                let on_fail = match obs {
                    Observed::Failed(_) | Observed::StopFailed => e.on_fail(&prim, h),
                    _ => None,
                };
                let hands_off = e.hands_off.contains(n);
                match (obs, on_fail) {
                    (Observed::Failed(r), Some(OnFail::Ignore)) => obs = Observed::Running(r),
                    (Observed::StopFailed, Some(OnFail::Ignore)) => continue,
                    (_, Some(OnFail::Block)) => {
                        e.pinned.insert((prim.clone(), n.clone()));
                        e.warnings
                            .push(format!("{prim} failed on {n} and its on-fail is block: left as it is"));
                    }
                    (Observed::Failed(_) | Observed::StopFailed, Some(OnFail::Fence))
                    | (Observed::StopFailed, Some(_))
                        if !hands_off =>
                    {
                        if stonith && may_act && !frozen {
                            e.fence.insert(n.clone());
                        } else {
                            e.pinned.insert((prim.clone(), n.clone()));
                            e.warnings
                                .push(format!("{prim} failed on {n} and cannot be fenced: blocked"));
                        }
                    }
                    _ => {}
                }
                e.cur.entry(prim).or_default().entry(n.clone()).or_insert(obs);
            }
        }
        // Failures whose on-fail is stop (the resource stays stopped) or standby (the node
        // stays drained) count until they are cleaned up, not only while the resource is failed.
        for n in &online {
            let Some(ns) = status.nodes.get(n) else { continue };
            let mut prims: BTreeSet<String> = ns.resources.keys().map(|sid| e.key_of(sid)).collect();
            prims.extend(
                ns.transient_attributes
                    .keys()
                    .filter_map(|k| k.strip_prefix("fail-count-")?.split_once('#'))
                    .map(|(p, _)| p.to_string()),
            );
            for p in prims {
                let policies = e.lasting_policies(&p, n);
                if policies.contains(&OnFail::Stop) {
                    e.stopped_on_fail.insert(p);
                }
                if policies.contains(&OnFail::Standby) {
                    e.usable.remove(n);
                }
            }
        }
        // A node fenced for a failed stop runs nothing afterwards.
        for m in e.cur.values_mut() {
            m.retain(|n, _| !e.fence.contains(n));
        }
        e.cur.retain(|_, m| !m.is_empty());
        for n in &e.fence {
            e.usable.remove(n);
        }
        // Instances on hands-off nodes, of unmanaged resources, or everything when frozen.
        let pins: Vec<(String, String)> = e
            .cur
            .iter()
            .flat_map(|(p, m)| m.keys().map(move |n| (p.clone(), n.clone())))
            .filter(|(p, n)| e.frozen || e.hands_off.contains(n) || !e.managed(p))
            .collect();
        e.pinned.extend(pins);
        e.build_units();
        e
    }

    fn build_units(&mut self) {
        for r in &self.cfg.resources {
            if self.cfg.parent_of(r.id()).is_some() {
                continue;
            }
            let (members, clone, group) = match r {
                Resource::Primitive(p) => (vec![p.id.clone()], None, None),
                Resource::Group(_) => {
                    let members = self.cfg.primitives_of(r.id()).iter().map(|p| p.id.clone()).collect();
                    (members, None, Some(r.id().to_string()))
                }
                Resource::Clone(c) => {
                    let group = match self.cfg.resource(&c.child) {
                        Some(Resource::Group(g)) => Some(g.id.clone()),
                        _ => None,
                    };
                    let members = self.cfg.primitives_of(&c.id).iter().map(|p| p.id.clone()).collect();
                    (members, Some(c.clone()), group)
                }
            };
            if members.is_empty() {
                // A group or clone of nothing that exists (validation reports it): nothing to place.
                continue;
            }
            let unique = match &clone {
                Some(c) if instances::is_unique(self.cfg, c) => Some((
                    instances::clone_max(c, self.nodes.len()),
                    instances::node_max(self.cfg, c),
                )),
                Some(c) => {
                    if c.clone_node_max() > 1 {
                        self.warnings.push(format!(
                            "clone {}: clone-node-max is ignored: an anonymous clone runs at most one instance per \
                             node (set globally-unique=true for more)",
                            c.id
                        ));
                    }
                    None
                }
                None => None,
            };
            let idx = self.units.len();
            self.unit_of.insert(r.id().to_string(), idx);
            if let Some(g) = &group {
                self.unit_of.insert(g.clone(), idx);
            }
            if let Some(c) = &clone {
                self.unit_of.insert(c.child.clone(), idx);
            }
            for m in &members {
                self.unit_of.insert(m.clone(), idx);
                if let Some((max, _)) = unique {
                    for n in 0..max {
                        self.unit_of.insert(instance_id(m, n), idx);
                    }
                }
            }
            self.units.push(Unit {
                id: r.id().to_string(),
                members,
                clone,
                group,
                unique,
            });
        }
        self.target = vec![None; self.units.len()];
        self.fixed = vec![false; self.units.len()];
        self.assign = vec![BTreeMap::new(); self.units.len()];
    }

    /// The key a status entry is known by here: the instance `p:N` of a unique clone, else the
    /// primitive.
    fn key_of(&self, sid: &str) -> String {
        let b = base_id(sid);
        if b != sid && self.unique.contains_key(b) {
            sid.to_string()
        } else {
            b.to_string()
        }
    }

    /// The configured id behind a primitive or a unique clone's instance.
    fn cfg_id<'b>(&self, id: &'b str) -> &'b str {
        if self.cfg.resource(id).is_some() {
            id
        } else {
            base_id(id)
        }
    }

    /// Every primitive the unit schedules: its members, or for a unique clone every member's
    /// every instance (instance by instance).
    fn unit_prims(&self, u: usize) -> Vec<String> {
        let unit = &self.units[u];
        match unit.unique {
            Some((max, _)) => (0..max)
                .flat_map(|n| unit.members.iter().map(move |m| instance_id(m, n)))
                .collect(),
            None => unit.members.clone(),
        }
    }

    /// The primitives `id` (a resource named by a constraint) stands for, instances expanded.
    fn prims_of(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.cfg.primitives_of(id) {
            match self.unique.get(&p.id) {
                Some(&max) => out.extend((0..max).map(|n| instance_id(&p.id, n))),
                None => out.push(p.id.clone()),
            }
        }
        out
    }

    /// Whether `id` (a resource named by a constraint) is a clone or inside one, and that clone
    /// has `interleave=true`.
    fn interleaved(&self, id: &str) -> bool {
        self.unit_of
            .get(id)
            .and_then(|&u| self.units[u].clone.as_ref())
            .is_some_and(|c| c.interleave())
    }

    fn is_clone(&self, id: &str) -> bool {
        self.unit_of.get(id).is_some_and(|&u| self.units[u].clone.is_some())
    }

    /// Whether some primitive of unit `u` is pinned on `node`.
    fn pinned_on(&self, u: usize, node: &str) -> bool {
        self.unit_prims(u)
            .into_iter()
            .any(|m| self.pinned.contains(&(m, node.to_string())))
    }

    /// A meta attribute of a primitive, inherited from its group and clone, then `rsc_defaults`.
    fn meta(&self, prim: &str, key: &str) -> Option<&'a str> {
        let mut id = self.cfg_id(prim);
        for _ in 0..3 {
            if let Some(v) = self.cfg.resource(id).and_then(|r| r.meta().get(key)) {
                return Some(v);
            }
            match self.cfg.parent_of(id) {
                Some(p) => id = p.id(),
                None => break,
            }
        }
        self.cfg.rsc_defaults.get(key).map(String::as_str)
    }

    fn managed(&self, prim: &str) -> bool {
        if self.cfg.resource(self.cfg_id(prim)).is_none() {
            return true; // orphans are stopped
        }
        self.meta(prim, "is-managed").and_then(parse_bool).unwrap_or(true)
    }

    fn target_role(&self, prim: &str) -> Option<Role> {
        if self.stopped_on_fail.contains(prim) {
            return Some(Role::Stopped);
        }
        self.meta(prim, "target-role").and_then(|v| v.parse().ok())
    }

    /// The `on-fail` of the operation that failed last in `h` (None when none failed).
    fn on_fail(&self, prim: &str, h: &ResourceHistory) -> Option<OnFail> {
        let failed = h.ops.iter().filter(|o| op_failed(o)).max_by_key(|o| o.call_id)?;
        Some(on_fail_of(
            self.cfg,
            self.cfg_id(prim),
            failed.action,
            failed.interval_ms,
            self.stonith,
        ))
    }

    /// The `on-fail` policies of every failure of `prim` on `node` that still counts: a fail
    /// count attribute (`fail-count-PRIM#OP_INTERVAL`, until cleanup) or a failed record in the
    /// history. `stop` and `standby` outlast the failed operation itself (the resource stays
    /// stopped; the node stays drained) until the failure is cleaned up.
    fn lasting_policies(&self, prim: &str, node: &str) -> BTreeSet<OnFail> {
        let mut out = BTreeSet::new();
        let id = self.cfg_id(prim);
        if let Some(ns) = self.status.nodes.get(node) {
            let prefix = format!("fail-count-{prim}#");
            for (k, v) in &ns.transient_attributes {
                let Some(op) = k.strip_prefix(&prefix) else { continue };
                if v.parse::<Score>().is_ok_and(|c| c <= Score::ZERO) {
                    continue;
                }
                let Some((name, interval)) = op.rsplit_once('_') else {
                    continue;
                };
                if let (Ok(action), Ok(interval)) = (name.parse::<Action>(), interval.parse::<u64>()) {
                    out.insert(on_fail_of(self.cfg, id, action, interval, self.stonith));
                }
            }
        }
        if let Some(h) = self.history(prim, node) {
            for o in h.ops.iter().filter(|o| op_failed(o)) {
                out.insert(on_fail_of(self.cfg, id, o.action, o.interval_ms, self.stonith));
            }
        }
        out
    }

    fn stickiness(&self, prim: &str) -> Score {
        self.meta(prim, "resource-stickiness")
            .or_else(|| self.meta(prim, "stickiness"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| self.cfg.default_resource_stickiness())
    }

    fn history(&self, prim: &str, node: &str) -> Option<&'a ResourceHistory> {
        let ns = self.status.nodes.get(node)?;
        if let Some(h) = ns.resources.get(prim) {
            return Some(h);
        }
        ns.resources
            .iter()
            .find(|(sid, _)| self.key_of(sid) == prim)
            .map(|(_, h)| h)
    }

    /// Whether `prim` is kept off `node`: by its fail count (`migration-threshold`, with
    /// `failure-timeout` expiry), or by a probe that found it not installed there.
    fn banned(&self, prim: &str, node: &str) -> bool {
        if self.history(prim, node).is_some_and(not_installed) {
            return true;
        }
        if self
            .history(prim, node)
            .is_some_and(|h| self.on_fail(prim, h) == Some(OnFail::Ignore))
        {
            return false;
        }
        // Failures of operations whose on-fail is ignore do not count towards the threshold.
        let id = self.cfg_id(prim);
        let prefix = format!("fail-count-{prim}#");
        let attrs: Attrs = self
            .status
            .nodes
            .get(node)
            .map(|s| &s.transient_attributes)
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                let op = k.strip_prefix(&prefix).and_then(|op| op.rsplit_once('_'));
                !op.is_some_and(|(name, interval)| {
                    matches!(
                        (name.parse::<Action>(), interval.parse::<u64>()),
                        (Ok(a), Ok(i)) if on_fail_of(self.cfg, id, a, i, self.stonith) == OnFail::Ignore
                    )
                })
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (count, last) = fail_count(prim, &attrs, self.history(prim, node));
        if count <= Score::ZERO {
            return false;
        }
        let timeout = self
            .meta(prim, "failure-timeout")
            .and_then(|v| parse_duration_ms(v).ok())
            .unwrap_or(0);
        if timeout > 0 && last.is_some_and(|l| l.saturating_add(timeout) <= self.now) {
            return false;
        }
        let threshold: Score = self
            .meta(prim, "migration-threshold")
            .and_then(|v| v.parse().ok())
            .unwrap_or(Score::INFINITY);
        threshold > Score::ZERO && count >= threshold
    }

    fn running_on(&self, prim: &str, node: &str) -> Option<Observed> {
        self.cur.get(prim).and_then(|m| m.get(node)).copied()
    }

    /// Location scores of a unit on a node for the role given (None: any-role constraints).
    /// Returns (sum, whether a non-negative constraint names the node).
    fn location(&self, u: usize, node: &str, promoted: bool) -> (Score, bool) {
        let mut s = Score::ZERO;
        let mut explicit = false;
        let attrs = &self.attrs[node];
        for c in &self.cfg.constraints {
            let Constraint::Location(l) = c else { continue };
            if self.unit_of.get(&l.rsc) != Some(&u) {
                continue;
            }
            let for_promoted = l.role == Some(Role::Promoted);
            if for_promoted != promoted || (!promoted && l.role == Some(Role::Unpromoted)) {
                continue;
            }
            match &l.target {
                LocationTarget::Node { node: n, score } => {
                    if n == node {
                        s += *score;
                        explicit |= *score >= Score::ZERO;
                    }
                }
                LocationTarget::Rules(rules) => {
                    for r in rules {
                        if r.matches(node, attrs) {
                            s += r.score;
                            explicit |= r.score >= Score::ZERO;
                        }
                    }
                }
            }
        }
        (s, explicit)
    }

    /// A dependent's own wish for a node (locations + stickiness), for pulling what it is
    /// colocated with; only finite values count.
    fn preference(&self, u: usize, node: &str) -> Score {
        let (mut s, _) = self.location(u, node, false);
        for m in &self.units[u].members {
            if self.running_on(m, node).is_some_and(Observed::is_active) {
                s += self.stickiness(m);
            }
        }
        if s.is_infinite() {
            Score::ZERO
        } else {
            s
        }
    }

    fn scaled(pref: Score, by: Score) -> Score {
        Score::new(pref.value() * by.value() / crate::cluster::cib::score::INFINITY)
    }

    /// Nodes where unit `w` is (to be) placed, in the role asked for.
    fn nodes_in_role(&self, w: usize, role: Option<Role>) -> Option<BTreeSet<String>> {
        let t = self.target[w].as_ref()?;
        Some(
            t.iter()
                .filter(|(_, r)| match role {
                    Some(Role::Promoted) => is_promoted(*r),
                    Some(Role::Unpromoted) => !is_promoted(*r),
                    _ => true,
                })
                .map(|(n, _)| n.clone())
                .collect(),
        )
    }

    /// The score of placing unit `u` (an instance of it) on `node`; None when it may not run
    /// there.
    fn score(&self, u: usize, node: &str) -> Option<Score> {
        if !self.usable.contains(node) {
            return None;
        }
        let (mut s, explicit) = self.location(u, node, false);
        if !self.cfg.symmetric_cluster() && !explicit {
            return None;
        }
        for m in &self.units[u].members {
            if self.banned(m, node) {
                return None;
            }
            if self.running_on(m, node).is_some_and(Observed::is_active) {
                s += self.stickiness(m);
            }
        }
        for c in &self.cfg.constraints {
            let Constraint::Colocation(c) = c else { continue };
            let (Some(&d), Some(&w)) = (self.unit_of.get(&c.rsc), self.unit_of.get(&c.with_rsc)) else {
                continue;
            };
            if d == w {
                continue;
            }
            if d == u && !matches!(c.rsc_role, Some(Role::Promoted)) {
                if let Some(wn) = self.nodes_in_role(w, c.with_rsc_role) {
                    let here = wn.contains(node);
                    if c.score > Score::ZERO {
                        if here {
                            s += c.score;
                        } else if c.score.is_pos_infinity() {
                            s = Score::NEG_INFINITY;
                        }
                    } else if c.score < Score::ZERO && here {
                        s += c.score;
                    }
                }
            } else if w == u && c.score > Score::ZERO && !matches!(c.with_rsc_role, Some(Role::Promoted)) {
                s += Self::scaled(self.preference(d, node), c.score);
            }
        }
        (s >= Score::ZERO).then_some(s)
    }

    /// The promotion score of unit `u`'s instance on `node`; None when it may not be promoted.
    /// `prim` is the clone's primitive, or the instance of a unique clone (whose own
    /// `master-p:N` attribute counts, else the primitive's).
    fn promotion_score(&self, u: usize, node: &str, prim: &str) -> Option<Score> {
        let (loc, explicit) = self.location(u, node, true);
        let attr = |p: &str| {
            self.attrs[node]
                .get(&format!("master-{p}"))
                .and_then(|v| v.parse().ok())
        };
        let base: Option<Score> = attr(prim).or_else(|| attr(base_id(prim)));
        if base.is_none() && !explicit {
            return None;
        }
        let mut s = base.unwrap_or(Score::ZERO) + loc;
        if matches!(self.running_on(prim, node), Some(Observed::Running(Role::Promoted))) {
            s += self.stickiness(prim);
        }
        for c in &self.cfg.constraints {
            let Constraint::Colocation(c) = c else { continue };
            let (Some(&d), Some(&w)) = (self.unit_of.get(&c.rsc), self.unit_of.get(&c.with_rsc)) else {
                continue;
            };
            if d == w {
                continue;
            }
            if d == u && c.rsc_role == Some(Role::Promoted) {
                if let Some(wn) = self.nodes_in_role(w, c.with_rsc_role) {
                    let here = wn.contains(node);
                    if c.score > Score::ZERO {
                        if here {
                            s += c.score;
                        } else if c.score.is_pos_infinity() {
                            s = Score::NEG_INFINITY;
                        }
                    } else if here {
                        s += c.score;
                    }
                }
            } else if w == u && c.with_rsc_role == Some(Role::Promoted) && c.score > Score::ZERO {
                s += Self::scaled(self.preference(d, node), c.score);
            }
        }
        (s >= Score::ZERO).then_some(s)
    }

    /// Colocation dependencies first, then configuration order.
    fn placement_order(&self) -> Vec<usize> {
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); self.units.len()];
        for c in &self.cfg.constraints {
            if let Constraint::Colocation(c) = c {
                if let (Some(&d), Some(&w)) = (self.unit_of.get(&c.rsc), self.unit_of.get(&c.with_rsc)) {
                    if d != w {
                        deps[d].push(w);
                    }
                }
            }
        }
        let mut state = vec![0u8; self.units.len()];
        let mut out = Vec::new();
        fn visit(u: usize, deps: &[Vec<usize>], state: &mut [u8], out: &mut Vec<usize>) {
            if state[u] != 0 {
                return;
            }
            state[u] = 1;
            for &w in &deps[u] {
                visit(w, deps, state, out);
            }
            state[u] = 2;
            out.push(u);
        }
        for u in 0..self.units.len() {
            visit(u, &deps, &mut state, &mut out);
        }
        out
    }

    fn current_of_unit(&self, u: usize) -> Vec<(String, Role)> {
        let mut m: BTreeMap<String, Role> = BTreeMap::new();
        for p in &self.unit_prims(u) {
            if let Some(nodes) = self.cur.get(p) {
                for (n, o) in nodes {
                    let r = match o {
                        Observed::Running(r) | Observed::Failed(r) => *r,
                        _ => Role::Started,
                    };
                    let r = self.role_for(u, r);
                    let e = m.entry(n.clone()).or_insert(r);
                    if is_promoted(r) {
                        *e = r;
                    }
                }
            }
        }
        m.into_iter().collect()
    }

    fn role_for(&self, u: usize, r: Role) -> Role {
        if self.units[u].promotable() {
            if is_promoted(r) {
                Role::Promoted
            } else {
                Role::Unpromoted
            }
        } else {
            Role::Started
        }
    }

    /// Whether the unit as a whole may run at all (target-role, quorum).
    fn wants_to_run(&self, u: usize) -> bool {
        if self.stop_all {
            return false;
        }
        let unit = &self.units[u];
        let first = &unit.members[0];
        if self.target_role(first) == Some(Role::Stopped) {
            return false;
        }
        if let Some(c) = &unit.clone {
            if c.meta.get("target-role").and_then(|v| v.parse::<Role>().ok()) == Some(Role::Stopped) {
                return false;
            }
        }
        true
    }

    /// Places every unit; `overrides` are placements an earlier round had to correct.
    fn place(&mut self, overrides: &BTreeMap<usize, Vec<(String, Role)>>) {
        self.target = vec![None; self.units.len()];
        for u in self.placement_order() {
            if let Some(o) = overrides.get(&u) {
                self.target[u] = Some(o.clone());
                self.resync(u);
                continue;
            }
            let unit_fixed = self.units[u].members.iter().any(|m| !self.managed(m)) || self.frozen;
            if unit_fixed {
                self.fixed[u] = true;
                self.target[u] = Some(self.current_of_unit(u));
                continue;
            }
            if self.units[u].unique.is_some() {
                let t = self.place_unique(u);
                self.target[u] = Some(t);
                continue;
            }
            let pinned: Vec<(String, Role)> = self
                .current_of_unit(u)
                .into_iter()
                .filter(|(n, _)| {
                    self.units[u]
                        .members
                        .iter()
                        .any(|m| self.pinned.contains(&(m.clone(), n.clone())))
                })
                .collect();
            let t = if self.units[u].clone.is_some() {
                self.place_clone(u, pinned)
            } else if let Some(p) = pinned.into_iter().next() {
                vec![p]
            } else if !self.wants_to_run(u) {
                Vec::new()
            } else {
                self.place_single(u)
            };
            self.target[u] = Some(t);
        }
    }

    fn load(&self, node: &str) -> usize {
        self.target
            .iter()
            .flatten()
            .filter(|t| t.iter().any(|(n, _)| n == node))
            .count()
    }

    fn is_current(&self, u: usize, node: &str) -> bool {
        self.units[u]
            .members
            .iter()
            .any(|m| self.running_on(m, node).is_some_and(Observed::is_active))
    }

    fn place_single(&self, u: usize) -> Vec<(String, Role)> {
        let mut best: Option<(Score, bool, usize, &String)> = None;
        for n in &self.nodes {
            let Some(s) = self.score(u, n) else { continue };
            let cand = (s, self.is_current(u, n), self.load(n), n);
            let better = match &best {
                None => true,
                Some(b) => (cand.0, cand.1, std::cmp::Reverse(cand.2)) > (b.0, b.1, std::cmp::Reverse(b.2)),
            };
            if better {
                best = Some(cand);
            }
        }
        best.map(|b| vec![(b.3.clone(), Role::Started)]).unwrap_or_default()
    }

    fn place_clone(&self, u: usize, pinned: Vec<(String, Role)>) -> Vec<(String, Role)> {
        let unit = &self.units[u];
        let c = unit.clone.as_ref().expect("clone unit");
        let max = c.clone_max().map(|m| m as usize).unwrap_or(self.nodes.len());
        let mut chosen: BTreeMap<String, Role> = pinned.into_iter().collect();
        if self.wants_to_run(u) {
            let mut cands: Vec<(Score, bool, &String)> = self
                .nodes
                .iter()
                .filter(|n| !chosen.contains_key(*n))
                .filter_map(|n| self.score(u, n).map(|s| (s, self.is_current(u, n), n)))
                .collect();
            cands.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(b.2)));
            for (_, _, n) in cands {
                if chosen.len() >= max {
                    break;
                }
                chosen.insert(n.clone(), self.role_for(u, Role::Started));
            }
        }
        if unit.promotable() {
            let pinned_promoted = chosen.values().filter(|r| is_promoted(**r)).count();
            let prim = &unit.members[0];
            // target-role=Unpromoted (on the primitive or inherited from the clone) forbids promotion.
            let no_promotion = self.target_role(prim) == Some(Role::Unpromoted);
            let pmax = if no_promotion { 0 } else { c.promoted_max() as usize };
            let mut cands: Vec<(Score, bool, String)> = chosen
                .iter()
                .filter(|(n, r)| !is_promoted(**r) && !self.pinned.contains(&(prim.clone(), (*n).clone())))
                .filter_map(|(n, _)| {
                    let cur = matches!(self.running_on(prim, n), Some(Observed::Running(Role::Promoted)));
                    self.promotion_score(u, n, prim).map(|s| (s, cur, n.clone()))
                })
                .collect();
            cands.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(&b.2)));
            for (_, _, n) in cands.into_iter().take(pmax.saturating_sub(pinned_promoted)) {
                chosen.insert(n, Role::Promoted);
            }
        }
        chosen.into_iter().collect()
    }

    /// Where instance `n` of unique unit `u` runs now (its first member's node; a running one
    /// before a failed one), and in which role.
    fn instance_now(&self, u: usize, n: usize) -> Option<(String, Role)> {
        let m = instance_id(&self.units[u].members[0], n);
        let nodes = self.cur.get(&m)?;
        let mut found: Option<(String, Role)> = None;
        for (node, o) in nodes {
            match o {
                Observed::Running(r) => return Some((node.clone(), self.role_for(u, *r))),
                Observed::Failed(r) if found.is_none() => found = Some((node.clone(), self.role_for(u, *r))),
                _ => {}
            }
        }
        found
    }

    /// Whether a fail count keeps instance `n` of unique unit `u` off `node`.
    fn instance_banned(&self, u: usize, n: usize, node: &str) -> bool {
        self.units[u]
            .members
            .iter()
            .any(|m| self.banned(&instance_id(m, n), node))
    }

    /// The stickiness instance `n` of unit `u` has to `node` (its members active there).
    fn instance_stickiness(&self, u: usize, n: usize, node: &str) -> Score {
        let mut s = Score::ZERO;
        for m in &self.units[u].members {
            let id = instance_id(m, n);
            if self.running_on(&id, node).is_some_and(Observed::is_active) {
                s += self.stickiness(&id);
            }
        }
        s
    }

    /// Places a globally-unique clone's instances, each on its own, as Pacemaker does: first
    /// every instance that runs somewhere it may stay keeps its node (promoted ones first), as
    /// long as that node has fewer than its fair share (`clone-max` / usable nodes, at least 1);
    /// then each other instance, the most constrained first, goes to the best node (score plus
    /// its own stickiness, then the node it runs on, then the fewest instances, then the name)
    /// that has fewer than `clone-node-max`, or, when every node it may use is full, to one
    /// where another instance makes room by moving to a node with room. A promotable one then
    /// promotes the best instances by promotion score, up to `promoted-max` in all and
    /// `promoted-node-max` per node. Returns the unit's slots (a node once per instance).
    fn place_unique(&mut self, u: usize) -> Vec<(String, Role)> {
        let (max, node_max) = self.units[u].unique.expect("a unique clone");
        let mut assign: BTreeMap<usize, (String, Role)> = BTreeMap::new();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        // Pinned instances stay as they are.
        for n in 0..max {
            for m in &self.units[u].members {
                let id = instance_id(m, n);
                let Some(nodes) = self.cur.get(&id) else { continue };
                for (node, o) in nodes {
                    if self.pinned.contains(&(id.clone(), node.clone())) && !assign.contains_key(&n) {
                        let r = match o {
                            Observed::Running(r) | Observed::Failed(r) => *r,
                            _ => Role::Started,
                        };
                        assign.insert(n, (node.clone(), self.role_for(u, r)));
                        *count.entry(node.clone()).or_default() += 1;
                    }
                }
            }
        }
        let pinned: BTreeSet<usize> = assign.keys().copied().collect();
        if self.wants_to_run(u) {
            let allowed: Vec<(String, Score)> = self
                .nodes
                .iter()
                .filter_map(|n| self.score(u, n).map(|s| (n.clone(), s)))
                .collect();
            let fair = if allowed.is_empty() {
                1
            } else {
                (max / allowed.len()).max(1)
            };
            // Promoted instances keep their node first, then the others by number.
            let mut order: Vec<(bool, usize, String)> = (0..max)
                .filter_map(|n| self.instance_now(u, n).map(|(node, r)| (!is_promoted(r), n, node)))
                .collect();
            order.sort();
            for (_, n, node) in order {
                if assign.len() >= max || assign.contains_key(&n) {
                    continue;
                }
                let c = count.get(&node).copied().unwrap_or(0);
                if allowed.iter().any(|(a, _)| *a == node)
                    && c < fair.min(node_max)
                    && !self.instance_banned(u, n, &node)
                {
                    assign.insert(n, (node.clone(), Role::Started));
                    *count.entry(node).or_default() += 1;
                }
            }
            // The rest, those with the fewest nodes to go to first (fail counts ban an instance
            // from some), so that a free one does not take the only place of a constrained one.
            let mut rest: Vec<(usize, usize)> = (0..max)
                .filter(|n| !assign.contains_key(n))
                .map(|n| {
                    let options = allowed
                        .iter()
                        .filter(|(node, _)| !self.instance_banned(u, n, node))
                        .count();
                    (options, n)
                })
                .collect();
            rest.sort();
            for (_, n) in rest {
                if assign.len() >= max || assign.contains_key(&n) {
                    continue;
                }
                let now = self.instance_now(u, n).map(|x| x.0);
                let mut best: Option<(Score, bool, std::cmp::Reverse<usize>, &String)> = None;
                for (node, s) in &allowed {
                    let c = count.get(node).copied().unwrap_or(0);
                    if c >= node_max || self.instance_banned(u, n, node) {
                        continue;
                    }
                    let here = now.as_ref() == Some(node);
                    let cand = (
                        *s + self.instance_stickiness(u, n, node),
                        here,
                        std::cmp::Reverse(c),
                        node,
                    );
                    // Higher score, then where it runs, then fewer instances; ties go to the
                    // first node by name.
                    if best.as_ref().is_none_or(|b| (cand.0, cand.1, cand.2) > (b.0, b.1, b.2)) {
                        best = Some(cand);
                    }
                }
                if let Some((_, _, _, node)) = best {
                    let node = node.clone();
                    assign.insert(n, (node.clone(), Role::Started));
                    *count.entry(node).or_default() += 1;
                    continue;
                }
                // Every node it may use is full: make room by moving an instance from one of
                // them to a node with room that it may use.
                'room: for (a, _) in &allowed {
                    if self.instance_banned(u, n, a) {
                        continue;
                    }
                    let movable: Vec<usize> = assign
                        .iter()
                        .filter(|(j, (node, _))| node == a && !pinned.contains(j))
                        .map(|(j, _)| *j)
                        .collect();
                    for j in movable {
                        let to = allowed.iter().map(|(b, _)| b).find(|b| {
                            *b != a && count.get(*b).copied().unwrap_or(0) < node_max && !self.instance_banned(u, j, b)
                        });
                        if let Some(b) = to {
                            let b = b.clone();
                            assign.insert(j, (b.clone(), Role::Started));
                            *count.entry(b).or_default() += 1;
                            assign.insert(n, (a.clone(), Role::Started));
                            break 'room;
                        }
                    }
                }
            }
        }
        let promotable = self.units[u].promotable();
        for (n, (_, r)) in assign.iter_mut() {
            if !pinned.contains(n) {
                *r = self.role_for(u, Role::Started);
            }
        }
        if promotable {
            let c = self.units[u].clone.clone().expect("clone unit");
            let first = self.units[u].members[0].clone();
            let no_promotion = self.target_role(&first) == Some(Role::Unpromoted);
            let pmax = if no_promotion { 0 } else { c.promoted_max() as usize };
            let pnode_max = c.promoted_node_max() as usize;
            let mut promoted: BTreeMap<String, usize> = BTreeMap::new();
            let mut total = 0;
            for (node, r) in assign.values() {
                if is_promoted(*r) {
                    *promoted.entry(node.clone()).or_default() += 1;
                    total += 1;
                }
            }
            let mut cands: Vec<(Score, bool, usize, String)> = assign
                .iter()
                .filter(|(n, (_, r))| !pinned.contains(n) && !is_promoted(*r))
                .filter_map(|(n, (node, _))| {
                    let id = instance_id(&first, *n);
                    let cur = matches!(self.running_on(&id, node), Some(Observed::Running(Role::Promoted)));
                    self.promotion_score(u, node, &id).map(|s| (s, cur, *n, node.clone()))
                })
                .collect();
            cands.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.cmp(&b.2)));
            for (_, _, n, node) in cands {
                let here = promoted.get(&node).copied().unwrap_or(0);
                if total >= pmax || here >= pnode_max {
                    continue;
                }
                assign.insert(n, (node.clone(), Role::Promoted));
                promoted.insert(node, here + 1);
                total += 1;
            }
        }
        let mut slots: Vec<(String, Role)> = assign.values().cloned().collect();
        slots.sort();
        self.assign[u] = assign;
        slots
    }

    /// After a unique clone's slots were changed (a placement taken away or a promotion
    /// dropped by enforcing constraints, or fixed from an earlier round), keeps every instance
    /// whose node still has a slot for it (in the same role if possible) and gives the slots
    /// left to the free instances, lowest number first.
    fn resync(&mut self, u: usize) {
        let Some((max, _)) = self.units[u].unique else { return };
        let Some(t) = &self.target[u] else { return };
        let mut slots = t.clone();
        let mut old: Vec<(usize, (String, Role))> = self.assign[u].iter().map(|(n, x)| (*n, x.clone())).collect();
        old.sort_by_key(|(n, (_, r))| (!is_promoted(*r), *n));
        let mut new: BTreeMap<usize, (String, Role)> = BTreeMap::new();
        for (n, x) in &old {
            if let Some(pos) = slots.iter().position(|s| s == x) {
                new.insert(*n, slots.remove(pos));
            }
        }
        for (n, (node, _)) in &old {
            if new.contains_key(n) {
                continue;
            }
            if let Some(pos) = slots.iter().position(|s| &s.0 == node) {
                new.insert(*n, slots.remove(pos));
            }
        }
        for s in slots {
            if let Some(n) = (0..max).find(|n| !new.contains_key(n) && !self.instance_banned(u, *n, &s.0)) {
                new.insert(n, s);
            }
        }
        self.assign[u] = new;
    }

    /// The nodes and roles one primitive should have.
    fn prim_target(&self, prim: &str) -> Vec<(String, Role)> {
        let Some(&u) = self.unit_of.get(prim) else {
            return Vec::new();
        };
        let Some(t) = &self.target[u] else { return Vec::new() };
        let unit = &self.units[u];
        if self.fixed[u] {
            return self
                .cur
                .get(prim)
                .map(|m| {
                    m.iter()
                        .map(|(n, o)| {
                            let r = match o {
                                Observed::Running(r) | Observed::Failed(r) => *r,
                                _ => Role::Started,
                            };
                            (n.clone(), self.role_for(u, r))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        // A unique clone's instance: its own slot.
        let base = self.cfg_id(prim);
        let inst: Vec<(String, Role)>;
        let t = if unit.unique.is_some() {
            let Some(n) = (base != prim).then(|| instance_number(prim)).flatten() else {
                return Vec::new();
            };
            inst = self.assign[u].get(&n).cloned().into_iter().collect();
            &inst
        } else {
            t
        };
        // Group members after one with target-role=Stopped stay stopped too (each is colocated
        // with the one before). Pinned instances stay where they are regardless.
        let idx = unit.members.iter().position(|m| m == base).unwrap_or(0);
        let stopped_before = unit.members[..=idx]
            .iter()
            .any(|m| m != &unit.members[0] && self.cfg.resource(m).is_some_and(|r| r.target_role() == Role::Stopped));
        t.iter()
            .filter(|(n, _)| !stopped_before || self.pinned.contains(&(prim.to_string(), n.clone())))
            .cloned()
            .collect()
    }

    /// Mandatory orders (`then` cannot run without `first`) and mandatory colocations, to a
    /// fixpoint.
    fn enforce(&mut self) {
        for _ in 0..=self.units.len() * 2 {
            let mut changed = false;
            for c in &self.cfg.constraints {
                match c {
                    Constraint::Order(o) if o.kind == OrderKind::Mandatory => {
                        let (Some(&f), Some(&t)) = (self.unit_of.get(&o.first), self.unit_of.get(&o.then)) else {
                            continue;
                        };
                        if f == t || self.fixed[t] {
                            continue;
                        }
                        let fprims: Vec<String> =
                            self.cfg.primitives_of(&o.first).iter().map(|p| p.id.clone()).collect();
                        let promotions_only = o.then_action == Action::Promote;
                        if self.is_clone(&o.first) && self.is_clone(&o.then) && self.interleaved(&o.then) {
                            // Interleaved: each instance of `then` needs `first`'s on its node.
                            let ok: Option<BTreeSet<String>> = match o.first_action {
                                Action::Start => fprims
                                    .iter()
                                    .map(|p| self.placed_nodes(p, false))
                                    .reduce(|a, b| a.intersection(&b).cloned().collect()),
                                Action::Promote => {
                                    Some(fprims.iter().flat_map(|p| self.placed_nodes(p, true)).collect())
                                }
                                _ => None,
                            };
                            if let Some(ok) = ok {
                                changed |= self.drop_where(t, |n| ok.contains(n), promotions_only);
                            }
                            continue;
                        }
                        let ok = match o.first_action {
                            Action::Start => fprims.iter().all(|p| !self.placed_nodes(p, false).is_empty()),
                            Action::Promote => fprims.iter().any(|p| !self.placed_nodes(p, true).is_empty()),
                            _ => true,
                        };
                        if ok {
                            continue;
                        }
                        changed |= self.drop_where(t, |_| false, promotions_only);
                    }
                    Constraint::Colocation(col) if col.score.is_infinite() => {
                        let (Some(&d), Some(&w)) = (self.unit_of.get(&col.rsc), self.unit_of.get(&col.with_rsc)) else {
                            continue;
                        };
                        if d == w || self.fixed[d] {
                            continue;
                        }
                        let Some(wn) = self.nodes_in_role(w, col.with_rsc_role) else {
                            continue;
                        };
                        let only_promoted = col.rsc_role == Some(Role::Promoted);
                        let keep = |n: &String| {
                            if col.score.is_pos_infinity() {
                                wn.contains(n)
                            } else {
                                !wn.contains(n)
                            }
                        };
                        let pinned_nodes: BTreeSet<String> =
                            self.nodes.iter().filter(|n| self.pinned_on(d, n)).cloned().collect();
                        let promotable = self.units[d].promotable();
                        let t = self.target[d].as_mut().expect("placed");
                        let before = t.clone();
                        let mut kept = Vec::new();
                        for (n, r) in t.drain(..) {
                            let pinned = pinned_nodes.contains(&n);
                            if pinned || keep(&n) || (only_promoted && !is_promoted(r)) {
                                kept.push((n, r));
                            } else if only_promoted && promotable {
                                // Only the promoted role is constrained: keep the instance.
                                kept.push((n, Role::Unpromoted));
                            }
                        }
                        *t = kept;
                        if *t != before {
                            changed = true;
                            self.resync(d);
                        }
                    }
                    _ => {}
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// The nodes where (some instance of) configured primitive `prim` is placed, or promoted.
    fn placed_nodes(&self, prim: &str, promoted: bool) -> BTreeSet<String> {
        let ids = match self.unique.get(prim) {
            Some(&max) => (0..max).map(|n| instance_id(prim, n)).collect(),
            None => vec![prim.to_string()],
        };
        ids.iter()
            .flat_map(|id| self.prim_target(id))
            .filter(|(_, r)| !promoted || is_promoted(*r))
            .map(|(n, _)| n)
            .collect()
    }

    /// Takes away unit `u`'s placements on the nodes `keep` refuses (only the promotions when
    /// `promotions_only`), except pinned instances. Returns whether anything changed.
    fn drop_where(&mut self, u: usize, keep: impl Fn(&String) -> bool, promotions_only: bool) -> bool {
        let pinned_nodes: BTreeSet<String> = self.nodes.iter().filter(|n| self.pinned_on(u, n)).cloned().collect();
        let t = self.target[u].as_mut().expect("placed");
        let before = t.clone();
        let mut kept = Vec::new();
        for (n, r) in t.drain(..) {
            if pinned_nodes.contains(&n) || keep(&n) {
                kept.push((n, r));
            } else if promotions_only {
                kept.push((n, if is_promoted(r) { Role::Unpromoted } else { r }));
            }
        }
        *t = kept;
        let changed = *t != before;
        if changed {
            self.resync(u);
        }
        changed
    }

    fn monitors(&self, prim: &str, role: Role) -> Vec<&'a Operation> {
        let Some(Resource::Primitive(p)) = self.cfg.resource(self.cfg_id(prim)) else {
            return Vec::new();
        };
        let promotable = self.unit_of.get(prim).is_some_and(|&u| self.units[u].promotable());
        p.ops
            .iter()
            .filter(|o| o.name == Action::Monitor && o.interval_ms > 0)
            .filter(|o| match (promotable, role, o.role) {
                (_, Role::Promoted, r) => r == Some(Role::Promoted),
                (_, _, None | Some(Role::Started) | Some(Role::Unpromoted)) => true,
                _ => false,
            })
            .collect()
    }

    fn monitor_action(prim: &str, node: &str, op: &Operation, role: Role) -> PlannedAction {
        PlannedAction {
            kind: ActionKind::Monitor,
            rsc: prim.to_string(),
            node: node.to_string(),
            interval_ms: op.interval_ms,
            role: Some(if role == Role::Promoted {
                Role::Promoted
            } else {
                Role::Started
            }),
            timeout_ms: op.timeout_ms,
        }
    }

    /// Whether the history shows a successful recurring monitor of `interval` since the last
    /// start/promote/demote.
    fn monitor_running(&self, prim: &str, node: &str, interval: u64) -> bool {
        let Some(h) = self.history(prim, node) else {
            return false;
        };
        let last_change = h
            .ops
            .iter()
            .filter(|o| matches!(o.action, Action::Start | Action::Promote | Action::Demote))
            .map(|o| o.call_id)
            .max()
            .unwrap_or(0);
        h.ops.iter().any(|o| {
            o.action == Action::Monitor
                && o.interval_ms == interval
                && o.call_id > last_change
                && o.status == crate::cluster::cib::status::OpStatus::Done
                && matches!(o.rc, 0 | 8)
        })
    }

    fn act(kind: ActionKind, prim: &str, node: &str) -> PlannedAction {
        PlannedAction {
            kind,
            rsc: prim.to_string(),
            node: node.to_string(),
            interval_ms: 0,
            role: None,
            timeout_ms: None,
        }
    }

    fn actions_for(&self, prim: &str, tgt: &BTreeMap<String, Role>, out: &mut BTreeSet<PlannedAction>) {
        let empty = BTreeMap::new();
        let cur = self.cur.get(prim).unwrap_or(&empty);
        let nodes: BTreeSet<&String> = cur.keys().chain(tgt.keys()).collect();
        for n in nodes {
            if self.pinned.contains(&(prim.to_string(), n.clone())) || self.hands_off.contains(n) {
                continue;
            }
            let c = cur.get(n).copied();
            let t = tgt.get(n).copied();
            let want_promoted = t.is_some_and(is_promoted);
            match (c, t) {
                (None, None) | (Some(Observed::Stopped), None) => {}
                (Some(o), None) => {
                    if matches!(o, Observed::Running(Role::Promoted) | Observed::Failed(Role::Promoted)) {
                        out.insert(Self::act(ActionKind::Demote, prim, n));
                    }
                    out.insert(Self::act(ActionKind::Stop, prim, n));
                }
                (c, Some(t)) => {
                    let restart = matches!(c, Some(Observed::Failed(_) | Observed::StopFailed));
                    let running = matches!(c, Some(Observed::Running(_)));
                    if !running && !self.usable.contains(n) {
                        // Cannot start here: only stop what failed.
                        if restart {
                            out.insert(Self::act(ActionKind::Stop, prim, n));
                        }
                        continue;
                    }
                    let mut changed = true;
                    if restart {
                        if c == Some(Observed::Failed(Role::Promoted)) {
                            out.insert(Self::act(ActionKind::Demote, prim, n));
                        }
                        out.insert(Self::act(ActionKind::Stop, prim, n));
                        out.insert(Self::act(ActionKind::Start, prim, n));
                        if want_promoted {
                            out.insert(Self::act(ActionKind::Promote, prim, n));
                        }
                    } else if let Some(Observed::Running(r)) = c {
                        match (is_promoted(r), want_promoted) {
                            (true, false) => {
                                out.insert(Self::act(ActionKind::Demote, prim, n));
                            }
                            (false, true) => {
                                out.insert(Self::act(ActionKind::Promote, prim, n));
                            }
                            _ => changed = false,
                        }
                    } else {
                        out.insert(Self::act(ActionKind::Start, prim, n));
                        if want_promoted {
                            out.insert(Self::act(ActionKind::Promote, prim, n));
                        }
                    }
                    for op in self.monitors(prim, t) {
                        if changed || !self.monitor_running(prim, n, op.interval_ms) {
                            out.insert(Self::monitor_action(prim, n, op, t));
                        }
                    }
                }
            }
        }
    }

    pub(super) fn run(mut self) -> Transition {
        // Enforcing mandatory orders and colocations can take a placement away; what was
        // placed around it may then have been placed differently, so place again with the
        // corrections fixed, until nothing more changes.
        let mut overrides = BTreeMap::new();
        for _ in 0..=self.units.len() {
            self.place(&overrides);
            let before = self.target.clone();
            self.enforce();
            let mut changed = false;
            for (u, (b, a)) in before.iter().zip(&self.target).enumerate() {
                if b != a {
                    overrides.insert(u, a.clone().unwrap_or_default());
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }

        let mut placement = BTreeMap::new();
        let mut acts = BTreeSet::new();
        for n in &self.fence {
            acts.insert(PlannedAction {
                kind: ActionKind::Fence,
                rsc: String::new(),
                node: n.clone(),
                interval_ms: 0,
                role: None,
                timeout_ms: None,
            });
        }
        let prims: Vec<String> = (0..self.units.len()).flat_map(|u| self.unit_prims(u)).collect();
        for p in &prims {
            let t = self.prim_target(p);
            let map: BTreeMap<String, Role> = t.iter().cloned().collect();
            self.actions_for(p, &map, &mut acts);
            placement.insert(p.clone(), map.into_iter().collect::<Vec<_>>());
        }
        // Orphans: in the history, no longer configured (or an instance of a unique clone
        // beyond its clone-max, or its primitive under its plain name).
        let scheduled: BTreeSet<&String> = prims.iter().collect();
        let orphans: Vec<String> = self.cur.keys().filter(|p| !scheduled.contains(p)).cloned().collect();
        for p in &orphans {
            self.actions_for(p, &BTreeMap::new(), &mut acts);
        }
        self.propagate_restarts(&placement, &mut acts);

        let actions: Vec<PlannedAction> = acts.into_iter().map(|a| self.with_timeout(a)).collect();
        let edges = self.edges(&actions);
        let (actions, edges) = topo_sort(actions, edges);
        Transition {
            placement,
            actions,
            edges,
            warnings: self.warnings,
        }
    }

    /// Fills in a one-shot action's timeout from its `op` (interval 0) or `op_defaults`.
    fn with_timeout(&self, mut a: PlannedAction) -> PlannedAction {
        if a.kind == ActionKind::Fence || a.kind == ActionKind::Monitor && a.timeout_ms.is_some() {
            return a;
        }
        let op = match self.cfg.resource(self.cfg_id(&a.rsc)) {
            Some(Resource::Primitive(p)) => p
                .ops
                .iter()
                .find(|o| o.name.as_str() == a.kind.as_str() && (o.interval_ms == a.interval_ms))
                .and_then(|o| o.timeout_ms),
            _ => None,
        };
        a.timeout_ms = op.or_else(|| {
            self.cfg
                .op_defaults
                .get("timeout")
                .and_then(|v| parse_duration_ms(v).ok())
        });
        a
    }

    /// A mandatory order's `then` (and a group's later members) must not keep running across a
    /// stop of what it depends on: when `first` stops (or, for `first:promote`, demotes) on some
    /// node in this transition, every instance of `then` that stays where it is gets restarted
    /// (stopped after, and started again after `first` is back), to a fixpoint.
    fn propagate_restarts(
        &self,
        placement: &BTreeMap<String, Vec<(String, Role)>>,
        acts: &mut BTreeSet<PlannedAction>,
    ) {
        // (first prims, the action of first that forces the restart, then prims, whether only
        // the instances on the node where first stopped restart: interleaved clones, the
        // members of a cloned group)
        let mut deps: Vec<(Vec<String>, ActionKind, Vec<String>, bool)> = Vec::new();
        for c in &self.cfg.constraints {
            let Constraint::Order(o) = c else { continue };
            if o.kind != OrderKind::Mandatory || o.then_action != Action::Start {
                continue;
            }
            let trigger = match o.first_action {
                Action::Start => ActionKind::Stop,
                Action::Promote => ActionKind::Demote,
                _ => continue,
            };
            let f = self.prims_of(&o.first);
            let t = self.prims_of(&o.then);
            let per_node = self.is_clone(&o.first) && self.is_clone(&o.then) && self.interleaved(&o.then);
            deps.push((f, trigger, t, per_node));
        }
        for u in &self.units {
            if u.group.is_some() {
                let instances: Vec<Option<usize>> = match u.unique {
                    Some((max, _)) => (0..max).map(Some).collect(),
                    None => vec![None],
                };
                for inst in instances {
                    let id = |m: &String| inst.map_or_else(|| m.clone(), |n| instance_id(m, n));
                    for w in u.members.windows(2) {
                        deps.push((vec![id(&w[0])], ActionKind::Stop, vec![id(&w[1])], u.clone.is_some()));
                    }
                }
            }
        }
        for _ in 0..=deps.len() {
            let mut added = false;
            for (first, trigger, then, per_node) in &deps {
                let fired: BTreeSet<String> = acts
                    .iter()
                    .filter(|a| a.kind == *trigger && first.contains(&a.rsc))
                    .map(|a| a.node.clone())
                    .collect();
                if fired.is_empty() {
                    continue;
                }
                for t in then {
                    let Some(cur) = self.cur.get(t) else { continue };
                    let Some(tgt) = placement.get(t) else { continue };
                    for (n, o) in cur {
                        let Observed::Running(r) = o else { continue };
                        if *per_node && !fired.contains(n) {
                            continue;
                        }
                        let pinned = self.pinned.contains(&(t.clone(), n.clone())) || self.hands_off.contains(n);
                        let stays = tgt.iter().find(|(tn, _)| tn == n).map(|(_, role)| *role);
                        let already = acts
                            .iter()
                            .any(|a| a.kind == ActionKind::Stop && &a.rsc == t && &a.node == n);
                        let (Some(role), false, false) = (stays, pinned, already) else {
                            continue;
                        };
                        if is_promoted(*r) {
                            acts.insert(Self::act(ActionKind::Demote, t, n));
                        }
                        acts.insert(Self::act(ActionKind::Stop, t, n));
                        acts.insert(Self::act(ActionKind::Start, t, n));
                        if is_promoted(role) {
                            acts.insert(Self::act(ActionKind::Promote, t, n));
                        }
                        for op in self.monitors(t, role) {
                            acts.insert(Self::monitor_action(t, n, op, role));
                        }
                        added = true;
                    }
                }
            }
            if !added {
                break;
            }
        }
    }

    fn edges(&mut self, actions: &[PlannedAction]) -> Vec<(usize, usize)> {
        let mut g = Graph::new(actions.len());
        let by = |kind: ActionKind, rsc: &str| -> Vec<usize> {
            actions
                .iter()
                .enumerate()
                .filter(|(_, a)| a.kind == kind && a.rsc == rsc)
                .map(|(i, _)| i)
                .collect()
        };
        let all = |kind: ActionKind| -> Vec<usize> {
            actions
                .iter()
                .enumerate()
                .filter(|(_, a)| a.kind == kind)
                .map(|(i, _)| i)
                .collect()
        };
        let rscs: BTreeSet<&String> = actions.iter().filter(|a| !a.rsc.is_empty()).map(|a| &a.rsc).collect();
        let mut drop = Vec::new();
        // Fencing first.
        for f in all(ActionKind::Fence) {
            for k in [ActionKind::Start, ActionKind::Promote] {
                for b in all(k) {
                    g.add(f, b, &mut drop, "fencing");
                }
            }
        }
        // Per primitive: demote < stop < start < promote; demote < promote; role changes < the
        // monitors of that node.
        use ActionKind::*;
        for r in &rscs {
            for (x, y) in [(Demote, Stop), (Demote, Promote), (Stop, Start), (Start, Promote)] {
                for a in by(x, r) {
                    for b in by(y, r) {
                        g.add(a, b, &mut drop, "implicit");
                    }
                }
            }
            for m in by(Monitor, r) {
                for k in [Start, Promote, Demote] {
                    for a in by(k, r) {
                        if actions[a].node == actions[m].node {
                            g.add(a, m, &mut drop, "implicit");
                        }
                    }
                }
            }
        }
        // Groups: members start in order, stop in reverse.
        for u in &self.units {
            let Some(_) = &u.group else { continue };
            let per_node = u.clone.is_some();
            let instances: Vec<Option<usize>> = match u.unique {
                Some((max, _)) => (0..max).map(Some).collect(),
                None => vec![None],
            };
            for inst in instances {
                let id = |m: &String| inst.map_or_else(|| m.clone(), |n| instance_id(m, n));
                for w in u.members.windows(2) {
                    let (w0, w1) = (id(&w[0]), id(&w[1]));
                    for (kind, a_r, b_r) in [(Start, &w0, &w1), (Stop, &w1, &w0)] {
                        for a in by(kind, a_r) {
                            for b in by(kind, b_r) {
                                if !per_node || actions[a].node == actions[b].node {
                                    g.add(a, b, &mut drop, &format!("group {}", u.id));
                                }
                            }
                        }
                    }
                }
            }
        }
        // Order constraints.
        for c in &self.cfg.constraints {
            let Constraint::Order(o) = c else { continue };
            let f: Vec<String> = self.prims_of(&o.first);
            let t: Vec<String> = self.prims_of(&o.then);
            let clones = self.is_clone(&o.first) && self.is_clone(&o.then);
            let mut pairs = vec![(o.first_action, &f, &o.first, o.then_action, &t, &o.then)];
            let inv = |a: Action| match a {
                Action::Start => Some(Action::Stop),
                Action::Stop => Some(Action::Start),
                Action::Promote => Some(Action::Demote),
                Action::Demote => Some(Action::Promote),
                _ => None,
            };
            if o.is_symmetrical() {
                if let (Some(ti), Some(fi)) = (inv(o.then_action), inv(o.first_action)) {
                    pairs.push((ti, &t, &o.then, fi, &f, &o.first));
                }
            }
            for (fa, fr, f_id, ta, tr, t_id) in pairs {
                let (Some(fk), Some(tk)) = (kind_of(fa), kind_of(ta)) else {
                    continue;
                };
                // Between two clones, `interleave` (of the side that acts second, or for a
                // stop or demote of the side that acts first, as Pacemaker reads it) orders
                // each instance only after the other clone's instance on the same node.
                let interleave = clones
                    && if matches!(tk, Stop | Demote) {
                        self.interleaved(f_id)
                    } else {
                        self.interleaved(t_id)
                    };
                for x in fr.iter().flat_map(|r| by(fk, r)) {
                    for y in tr.iter().flat_map(|r| by(tk, r)) {
                        if !interleave || actions[x].node == actions[y].node {
                            g.add(x, y, &mut drop, &format!("order {}", o.id));
                        }
                    }
                }
            }
        }
        for d in drop {
            self.warnings.push(d);
        }
        g.edges
    }
}

fn kind_of(a: Action) -> Option<ActionKind> {
    match a {
        Action::Start => Some(ActionKind::Start),
        Action::Stop => Some(ActionKind::Stop),
        Action::Promote => Some(ActionKind::Promote),
        Action::Demote => Some(ActionKind::Demote),
        _ => None,
    }
}

/// Edges added one at a time; one that would close a cycle is dropped with a warning.
struct Graph {
    succ: Vec<BTreeSet<usize>>,
    edges: Vec<(usize, usize)>,
}

impl Graph {
    fn new(n: usize) -> Graph {
        Graph {
            succ: vec![BTreeSet::new(); n],
            edges: Vec::new(),
        }
    }

    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = vec![false; self.succ.len()];
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            if x == to {
                return true;
            }
            for &y in &self.succ[x] {
                if !seen[y] {
                    seen[y] = true;
                    stack.push(y);
                }
            }
        }
        false
    }

    fn add(&mut self, a: usize, b: usize, dropped: &mut Vec<String>, why: &str) {
        if a == b || self.succ[a].contains(&b) {
            return;
        }
        if self.reaches(b, a) {
            dropped.push(format!(
                "{why}: an ordering edge would make a loop and was dropped ({a} -> {b})"
            ));
            return;
        }
        self.succ[a].insert(b);
        self.edges.push((a, b));
    }
}

/// Orders the actions topologically (smallest ready action first) and renumbers the edges.
fn topo_sort(actions: Vec<PlannedAction>, edges: Vec<(usize, usize)>) -> (Vec<PlannedAction>, Vec<(usize, usize)>) {
    let n = actions.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in &edges {
        indeg[b] += 1;
        succ[a].push(b);
    }
    let mut ready: BTreeSet<(PlannedAction, usize)> = (0..n)
        .filter(|&i| indeg[i] == 0)
        .map(|i| (actions[i].clone(), i))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(first) = ready.iter().next().cloned() {
        ready.remove(&first);
        let i = first.1;
        order.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                ready.insert((actions[s].clone(), s));
            }
        }
    }
    debug_assert_eq!(order.len(), n, "the graph is acyclic by construction");
    let mut pos = vec![0usize; n];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p;
    }
    let mut e: Vec<(usize, usize)> = edges.into_iter().map(|(a, b)| (pos[a], pos[b])).collect();
    e.sort_unstable();
    e.dedup();
    let acts = order.into_iter().map(|i| actions[i].clone()).collect();
    (acts, e)
}
