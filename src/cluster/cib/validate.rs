//! Whole-document validation: ids, references, the resource tree, and the attribute values the
//! cluster interprets. Every problem is reported, not just the first.

use super::config::{
    parse_bool, parse_duration_ms, Configuration, Constraint, LocationTarget, Resource, ResourceClass, Role,
};
use super::score::Score;
use super::status::Status;
use crate::cluster::quorum::NoQuorumPolicy;
use crate::cluster::MAX_NODES;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One thing wrong with a CIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// An id is empty or has characters a CIB id may not have.
    BadId {
        what: &'static str,
        id: String,
    },
    /// Two elements share an id (resources and constraints share one namespace, as XML ids).
    DuplicateId {
        id: String,
        first: &'static str,
        second: &'static str,
    },
    DuplicateNodeName(String),
    DuplicateNodeId {
        id: u8,
        first: String,
        second: String,
    },
    NodeIdOutOfRange {
        node: String,
        id: u8,
    },
    /// A constraint, group or clone names a resource that is not configured.
    UnknownResource {
        referrer: String,
        rsc: String,
    },
    /// A constraint or the status section names a node that is not configured.
    UnknownNode {
        referrer: String,
        node: String,
    },
    EmptyGroup(String),
    /// Groups hold primitives only.
    GroupMemberNotPrimitive {
        group: String,
        member: String,
        kind: &'static str,
    },
    DuplicateGroupMember {
        group: String,
        member: String,
    },
    /// A primitive may be in one group only.
    MemberOfTwoGroups {
        rsc: String,
        first: String,
        second: String,
    },
    /// A clone's child must be a primitive or a group.
    CloneOfClone {
        clone: String,
        child: String,
    },
    /// A resource may be cloned once, and a group member is cloned through its group.
    AlreadyContained {
        rsc: String,
        container: String,
        other: String,
    },
    BadAgent {
        rsc: String,
        reason: String,
    },
    DuplicateOperation {
        rsc: String,
        op: String,
        interval_ms: u64,
    },
    /// A role or action only promotable clones have, on a resource that is not in one.
    NotPromotable {
        referrer: String,
        rsc: String,
        what: String,
    },
    SelfReference {
        constraint: String,
        rsc: String,
    },
    BadOrderAction {
        constraint: String,
        action: String,
    },
    SerializeSymmetrical(String),
    EmptyRule(String),
    BadExpression {
        constraint: String,
        reason: String,
    },
    /// An attribute the cluster interprets has a value it cannot read.
    BadValue {
        context: String,
        name: String,
        value: String,
        expected: &'static str,
    },
    /// An option given under both its old and new name with different values.
    ConflictingAlias {
        new: String,
        old: String,
    },
    /// A fencing level that cannot be used (index, duplicates, devices that are not stonith).
    BadFencingLevel {
        target: String,
        index: u32,
        reason: String,
    },
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ValidationError::*;
        match self {
            BadId { what, id } => write!(
                f,
                "{what} id {id:?} is not valid: use a letter or '_' first, then letters, digits, '_', '-', '.' or ':'"
            ),
            DuplicateId { id, first, second } => write!(f, "id {id:?} is used by a {first} and a {second}"),
            DuplicateNodeName(n) => write!(f, "node {n:?} is configured twice"),
            DuplicateNodeId { id, first, second } => write!(f, "nodes {first:?} and {second:?} both have id {id}"),
            NodeIdOutOfRange { node, id } => {
                write!(f, "node {node:?} has id {id}; ids must be below {MAX_NODES}")
            }
            UnknownResource { referrer, rsc } => write!(f, "{referrer} names resource {rsc:?}, which is not configured"),
            UnknownNode { referrer, node } => write!(f, "{referrer} names node {node:?}, which is not configured"),
            EmptyGroup(g) => write!(f, "group {g:?} has no members"),
            GroupMemberNotPrimitive { group, member, kind } => {
                write!(f, "group {group:?} lists {member:?}, a {kind}; groups hold primitives only")
            }
            DuplicateGroupMember { group, member } => write!(f, "group {group:?} lists {member:?} twice"),
            MemberOfTwoGroups { rsc, first, second } => {
                write!(f, "primitive {rsc:?} is a member of both group {first:?} and group {second:?}")
            }
            CloneOfClone { clone, child } => {
                write!(f, "clone {clone:?} clones {child:?}, which is a clone itself; clone a primitive or a group")
            }
            AlreadyContained { rsc, container, other } => write!(
                f,
                "{rsc:?} is already inside {container:?}, so {other:?} cannot contain it too (clone the group instead of its members)"
            ),
            BadAgent { rsc, reason } => write!(f, "resource {rsc:?}: {reason}"),
            DuplicateOperation { rsc, op, interval_ms } => write!(
                f,
                "resource {rsc:?} has two {op} operations with interval {interval_ms} ms; intervals must differ (per-role monitors too)"
            ),
            NotPromotable { referrer, rsc, what } => {
                write!(f, "{referrer} uses {what} of {rsc:?}, which is not (inside) a promotable clone")
            }
            SelfReference { constraint, rsc } => write!(f, "constraint {constraint:?} relates {rsc:?} to itself"),
            BadOrderAction { constraint, action } => write!(
                f,
                "order {constraint:?} uses action {action:?}; orders take start, stop, promote or demote"
            ),
            SerializeSymmetrical(c) => write!(f, "order {c:?} is of kind Serialize, which cannot be symmetrical"),
            EmptyRule(c) => write!(f, "location {c:?} has a rule without expressions, or no rules"),
            BadExpression { constraint, reason } => write!(f, "location {constraint:?}: {reason}"),
            BadValue { context, name, value, expected } => {
                write!(f, "{context}: {name}={value:?} is not valid; expected {expected}")
            }
            ConflictingAlias { new, old } => {
                write!(f, "cluster option {new} and its old name {old} are both set, to different values")
            }
            BadFencingLevel { target, index, reason } => {
                write!(f, "fencing level {index} of node {target:?}: {reason}")
            }
        }
    }
}

/// Whether `id` is a valid CIB id (an XML NCName, restricted to ASCII).
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Node names are host names: letters, digits, '-', '_', '.'.
fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Score,
    Uint,
    /// A clone's instance count: 0 ..= `pengine::instances::MAX_INSTANCES`.
    Count,
    Int,
    Duration,
    Role,
    NoQuorum,
    OneOf(&'static [&'static str]),
}

impl Kind {
    fn check(self, v: &str) -> Result<(), &'static str> {
        let ok = match self {
            Kind::Bool => parse_bool(v).is_some(),
            Kind::Score => v.parse::<Score>().is_ok(),
            Kind::Uint => v.trim().parse::<u32>().is_ok(),
            Kind::Count => v
                .trim()
                .parse::<usize>()
                .is_ok_and(|n| n <= crate::cluster::pengine::instances::MAX_INSTANCES),
            Kind::Int => v.trim().parse::<i64>().is_ok(),
            Kind::Duration => parse_duration_ms(v).is_ok(),
            Kind::Role => v.parse::<Role>().is_ok(),
            Kind::NoQuorum => v.parse::<NoQuorumPolicy>().is_ok(),
            Kind::OneOf(set) => set.contains(&v),
        };
        if ok {
            return Ok(());
        }
        Err(match self {
            Kind::Bool => "true or false (yes/no, on/off, 1/0)",
            Kind::Score => "an integer, INFINITY or -INFINITY",
            Kind::Uint => "a non-negative integer",
            Kind::Count => "a non-negative integer up to 1024",
            Kind::Int => "an integer",
            Kind::Duration => "a duration such as 30, 20s, 500ms or 2min",
            Kind::Role => "Stopped, Started, Unpromoted or Promoted",
            Kind::NoQuorum => "stop, freeze, ignore or suicide",
            Kind::OneOf(_) => "one of the documented values",
        })
    }
}

/// Cluster options the cluster interprets; others are kept as they are.
const PROPERTIES: &[(&str, Kind)] = &[
    ("stonith-enabled", Kind::Bool),
    ("fencing-enabled", Kind::Bool),
    ("stonith-action", Kind::OneOf(&["reboot", "off", "poweroff"])),
    ("fencing-action", Kind::OneOf(&["reboot", "off", "poweroff"])),
    ("stonith-timeout", Kind::Duration),
    ("stonith-max-attempts", Kind::Uint),
    ("fencing-max-attempts", Kind::Uint),
    ("fencing-timeout", Kind::Duration),
    ("no-quorum-policy", Kind::NoQuorum),
    ("default-resource-stickiness", Kind::Score),
    ("symmetric-cluster", Kind::Bool),
    ("maintenance-mode", Kind::Bool),
    ("start-failure-is-fatal", Kind::Bool),
    ("cluster-recheck-interval", Kind::Duration),
    ("batch-limit", Kind::Int),
    ("expected-quorum-votes", Kind::Uint),
    ("priority-fencing-delay", Kind::Duration),
];

/// Meta attributes of resources (and `rsc_defaults`).
const META: &[(&str, Kind)] = &[
    ("target-role", Kind::Role),
    ("is-managed", Kind::Bool),
    ("maintenance", Kind::Bool),
    ("resource-stickiness", Kind::Score),
    ("migration-threshold", Kind::Score),
    ("failure-timeout", Kind::Duration),
    ("priority", Kind::Int),
    (
        "multiple-active",
        Kind::OneOf(&["stop_start", "stop_only", "block", "stop_unexpected"]),
    ),
    ("requires", Kind::OneOf(&["nothing", "quorum", "fencing", "unfencing"])),
    ("allow-migrate", Kind::Bool),
    ("promotable", Kind::Bool),
    ("clone-max", Kind::Count),
    ("clone-node-max", Kind::Uint),
    ("promoted-max", Kind::Uint),
    ("master-max", Kind::Uint),
    ("promoted-node-max", Kind::Uint),
    ("master-node-max", Kind::Uint),
    ("notify", Kind::Bool),
    ("interleave", Kind::Bool),
    ("globally-unique", Kind::Bool),
    ("ordered", Kind::Bool),
];

const NODE_ATTRS: &[(&str, Kind)] = &[("standby", Kind::Bool), ("maintenance", Kind::Bool)];

const OP_ATTRS: &[(&str, Kind)] = &[
    (
        "on-fail",
        Kind::OneOf(&["ignore", "block", "stop", "demote", "restart", "fence", "standby"]),
    ),
    ("start-delay", Kind::Duration),
    ("enabled", Kind::Bool),
    ("record-pending", Kind::Bool),
];

/// Whether `name` is a cluster option this build knows (others are kept but not checked, as
/// Pacemaker keeps `dc-version` and friends).
pub fn known_property(name: &str) -> bool {
    PROPERTIES.iter().any(|(n, _)| *n == name)
}

/// The cluster options this build checks, for messages.
pub fn property_names() -> Vec<&'static str> {
    PROPERTIES.iter().map(|(n, _)| *n).collect()
}

fn check_attrs(
    out: &mut Vec<ValidationError>,
    context: &str,
    attrs: &BTreeMap<String, String>,
    table: &[(&str, Kind)],
) {
    for (name, value) in attrs {
        if let Some((_, kind)) = table.iter().find(|(n, _)| n == name) {
            if let Err(expected) = kind.check(value) {
                out.push(ValidationError::BadValue {
                    context: context.to_string(),
                    name: name.clone(),
                    value: value.clone(),
                    expected,
                });
            }
        }
    }
}

/// Checks a configuration and status section together. `Ok` or every problem found.
pub fn validate(cfg: &Configuration, status: &Status) -> Result<(), Vec<ValidationError>> {
    use ValidationError::*;
    let mut out = Vec::new();

    // Options.
    check_attrs(&mut out, "cluster options", &cfg.properties, PROPERTIES);
    for &(new, old) in super::config::PROPERTY_ALIASES {
        if let (Some(a), Some(b)) = (cfg.properties.get(new), cfg.properties.get(old)) {
            if a != b {
                out.push(ConflictingAlias {
                    new: new.to_string(),
                    old: old.to_string(),
                });
            }
        }
    }
    check_attrs(&mut out, "rsc_defaults", &cfg.rsc_defaults, META);
    check_attrs(&mut out, "op_defaults", &cfg.op_defaults, OP_ATTRS);

    // Nodes.
    let mut names = BTreeSet::new();
    let mut ids: BTreeMap<u8, &str> = BTreeMap::new();
    for n in &cfg.nodes {
        if !valid_node_name(&n.name) {
            out.push(BadId {
                what: "node",
                id: n.name.clone(),
            });
        }
        if !names.insert(n.name.as_str()) {
            out.push(DuplicateNodeName(n.name.clone()));
        }
        if n.id as usize >= MAX_NODES {
            out.push(NodeIdOutOfRange {
                node: n.name.clone(),
                id: n.id,
            });
        }
        if let Some(first) = ids.insert(n.id, &n.name) {
            out.push(DuplicateNodeId {
                id: n.id,
                first: first.to_string(),
                second: n.name.clone(),
            });
        }
        check_attrs(&mut out, &format!("node {:?}", n.name), &n.attributes, NODE_ATTRS);
    }

    // One id namespace for resources and constraints.
    let mut seen: BTreeMap<&str, &'static str> = BTreeMap::new();
    let elements = cfg
        .resources
        .iter()
        .map(|r| (r.id(), r.kind_name(), "resource"))
        .chain(cfg.constraints.iter().map(|c| {
            let kind = match c {
                Constraint::Location(_) => "location constraint",
                Constraint::Colocation(_) => "colocation constraint",
                Constraint::Order(_) => "order constraint",
            };
            (c.id(), kind, "constraint")
        }));
    for (id, kind, what) in elements {
        if !valid_id(id) {
            out.push(BadId {
                what,
                id: id.to_string(),
            });
        }
        if let Some(first) = seen.insert(id, kind) {
            out.push(DuplicateId {
                id: id.to_string(),
                first,
                second: kind,
            });
        }
    }

    // Resources.
    let mut container: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &cfg.resources {
        let ctx = format!("{} {:?}", r.kind_name(), r.id());
        check_attrs(&mut out, &ctx, r.meta(), META);
        match r {
            Resource::Primitive(p) => {
                match (p.agent.class, &p.agent.provider) {
                    (ResourceClass::Ocf, None) => out.push(BadAgent {
                        rsc: p.id.clone(),
                        reason: format!(
                            "ocf agent {:?} needs a provider (e.g. ocf:heartbeat:{})",
                            p.agent.kind, p.agent.kind
                        ),
                    }),
                    (c, Some(prov)) if c != ResourceClass::Ocf => out.push(BadAgent {
                        rsc: p.id.clone(),
                        reason: format!(
                            "only ocf agents have a provider, not {} (provider {prov:?})",
                            c.as_str()
                        ),
                    }),
                    _ => {}
                }
                if p.agent.kind.is_empty()
                    || p.agent.kind.contains(['/', ':'])
                    || p.agent.kind.contains(char::is_whitespace)
                {
                    out.push(BadAgent {
                        rsc: p.id.clone(),
                        reason: format!("agent type {:?} is not a plain name", p.agent.kind),
                    });
                }
                if p.agent.class == ResourceClass::Stonith {
                    for reason in crate::cluster::fencing::check_device_params(p) {
                        out.push(BadAgent {
                            rsc: p.id.clone(),
                            reason,
                        });
                    }
                }
                let mut ops = BTreeSet::new();
                for op in &p.ops {
                    if !ops.insert((op.name, op.interval_ms)) {
                        out.push(DuplicateOperation {
                            rsc: p.id.clone(),
                            op: op.name.to_string(),
                            interval_ms: op.interval_ms,
                        });
                    }
                    check_attrs(&mut out, &format!("{ctx} op {}", op.name), &op.attrs, OP_ATTRS);
                }
            }
            Resource::Group(g) => {
                if g.members.is_empty() {
                    out.push(EmptyGroup(g.id.clone()));
                }
                let mut mine = BTreeSet::new();
                for m in &g.members {
                    if !mine.insert(m.as_str()) {
                        out.push(DuplicateGroupMember {
                            group: g.id.clone(),
                            member: m.clone(),
                        });
                        continue;
                    }
                    match cfg.resource(m) {
                        None => out.push(UnknownResource {
                            referrer: format!("group {:?}", g.id),
                            rsc: m.clone(),
                        }),
                        Some(Resource::Primitive(_)) => {}
                        Some(other) => out.push(GroupMemberNotPrimitive {
                            group: g.id.clone(),
                            member: m.clone(),
                            kind: other.kind_name(),
                        }),
                    }
                    if let Some(first) = container.insert(m, &g.id) {
                        out.push(MemberOfTwoGroups {
                            rsc: m.clone(),
                            first: first.to_string(),
                            second: g.id.clone(),
                        });
                    }
                }
            }
            Resource::Clone(_) => {}
        }
    }
    // Clones after groups, so that "clone of a group member" is reported against the group.
    for r in &cfg.resources {
        let Resource::Clone(c) = r else { continue };
        match cfg.resource(&c.child) {
            None => out.push(UnknownResource {
                referrer: format!("clone {:?}", c.id),
                rsc: c.child.clone(),
            }),
            Some(Resource::Clone(_)) => out.push(CloneOfClone {
                clone: c.id.clone(),
                child: c.child.clone(),
            }),
            Some(_) => {
                if let Some(first) = container.insert(&c.child, &c.id) {
                    out.push(AlreadyContained {
                        rsc: c.child.clone(),
                        container: first.to_string(),
                        other: c.id.clone(),
                    });
                }
            }
        }
    }

    // Constraints.
    for c in &cfg.constraints {
        let referrer = format!("constraint {:?}", c.id());
        let mut all_known = true;
        for rsc in c.resources() {
            if cfg.resource(rsc).is_none() {
                all_known = false;
                out.push(UnknownResource {
                    referrer: referrer.clone(),
                    rsc: rsc.to_string(),
                });
            }
        }
        let need_promotable = |out: &mut Vec<ValidationError>, rsc: &str, what: String| {
            if all_known && cfg.promotable_ancestor(rsc).is_none() {
                out.push(NotPromotable {
                    referrer: referrer.clone(),
                    rsc: rsc.to_string(),
                    what,
                });
            }
        };
        match c {
            Constraint::Location(l) => {
                if let Some(role) = l.role.filter(|r| r.needs_promotable()) {
                    need_promotable(&mut out, &l.rsc, format!("role {role}"));
                }
                match &l.target {
                    LocationTarget::Node { node, .. } => {
                        if cfg.node(node).is_none() {
                            out.push(UnknownNode {
                                referrer: referrer.clone(),
                                node: node.clone(),
                            });
                        }
                    }
                    LocationTarget::Rules(rules) => {
                        if rules.is_empty() || rules.iter().any(|r| r.expressions.is_empty()) {
                            out.push(EmptyRule(l.id.clone()));
                        }
                        for e in rules.iter().flat_map(|r| &r.expressions) {
                            if e.attribute.is_empty() || e.op.takes_value() != e.value.is_some() {
                                out.push(BadExpression {
                                    constraint: l.id.clone(),
                                    reason: format!(
                                        "expression on {:?} with {:?}: defined/not_defined take no value, the other operators one",
                                        e.attribute, e.op
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            Constraint::Colocation(k) => {
                if k.rsc == k.with_rsc {
                    out.push(SelfReference {
                        constraint: k.id.clone(),
                        rsc: k.rsc.clone(),
                    });
                }
                for (rsc, role) in [(&k.rsc, k.rsc_role), (&k.with_rsc, k.with_rsc_role)] {
                    if let Some(role) = role.filter(|r| r.needs_promotable()) {
                        need_promotable(&mut out, rsc, format!("role {role}"));
                    }
                }
            }
            Constraint::Order(o) => {
                if o.first == o.then {
                    out.push(SelfReference {
                        constraint: o.id.clone(),
                        rsc: o.first.clone(),
                    });
                }
                if o.kind == super::config::OrderKind::Serialize && o.symmetrical == Some(true) {
                    out.push(SerializeSymmetrical(o.id.clone()));
                }
                for (rsc, action) in [(&o.first, o.first_action), (&o.then, o.then_action)] {
                    if !action.orderable() {
                        out.push(BadOrderAction {
                            constraint: o.id.clone(),
                            action: action.to_string(),
                        });
                    } else if matches!(action, super::config::Action::Promote | super::config::Action::Demote) {
                        need_promotable(&mut out, rsc, format!("action {action}"));
                    }
                }
            }
        }
    }

    // Fencing topology.
    let mut levels = BTreeSet::new();
    for l in &cfg.fencing_topology {
        let referrer = format!("fencing level {} of {:?}", l.index, l.target);
        let bad = |reason: String| BadFencingLevel {
            target: l.target.clone(),
            index: l.index,
            reason,
        };
        if cfg.node(&l.target).is_none() {
            out.push(UnknownNode {
                referrer: referrer.clone(),
                node: l.target.clone(),
            });
        }
        if !(1..=9).contains(&l.index) {
            out.push(bad("the index must be 1 to 9".into()));
        }
        if !levels.insert((l.target.as_str(), l.index)) {
            out.push(bad("the node has two levels with this index".into()));
        }
        if l.devices.is_empty() {
            out.push(bad("it names no devices".into()));
        }
        let mut mine = BTreeSet::new();
        for d in &l.devices {
            if !mine.insert(d.as_str()) {
                out.push(bad(format!("device {d:?} is listed twice")));
            }
            match cfg.resource(d) {
                None => out.push(UnknownResource {
                    referrer: referrer.clone(),
                    rsc: d.clone(),
                }),
                Some(Resource::Primitive(p)) if p.agent.class == ResourceClass::Stonith => {}
                Some(Resource::Primitive(p)) => out.push(bad(format!(
                    "device {d:?} runs {}; levels name stonith: devices only",
                    p.agent
                ))),
                Some(r) => out.push(bad(format!(
                    "{d:?} is a {}; levels name stonith: devices only",
                    r.kind_name()
                ))),
            }
        }
    }

    // Status: only configured nodes have a node_state.
    for name in status.nodes.keys() {
        if cfg.node(name).is_none() {
            out.push(UnknownNode {
                referrer: "the status section".to_string(),
                node: name.clone(),
            });
        }
    }

    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}
