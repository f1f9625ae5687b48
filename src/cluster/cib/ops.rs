//! Changes to the CIB as operations. The DC applies them (see [`super::Cib::apply`]) and ships
//! either the operations or the whole document; a member with the same base version applying
//! the same operations reaches the same document.

use super::config::{Attrs, Configuration, Constraint, FencingLevel, Node, Resource};
use super::status::{ActionRequest, FenceEvent, NodeStatus, OpRecord, Status, FENCING_HISTORY_MAX};
use serde::{Deserialize, Serialize};

/// One change. Configuration changes bump `epoch`; status changes bump `num_updates`.
/// A value of `None` deletes the attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum CibOp {
    // --- configuration ---
    /// `property NAME=VALUE`.
    SetProperty {
        name: String,
        value: Option<String>,
    },
    /// `rsc_defaults NAME=VALUE`.
    SetRscDefault {
        name: String,
        value: Option<String>,
    },
    /// `op_defaults NAME=VALUE`.
    SetOpDefault {
        name: String,
        value: Option<String>,
    },
    AddNode {
        node: Node,
    },
    /// Removes the node, its status, and fails if a constraint still names it.
    DeleteNode {
        name: String,
    },
    /// A permanent node attribute (`crm node attribute NODE set NAME VALUE`).
    SetNodeAttribute {
        node: String,
        name: String,
        value: Option<String>,
    },
    /// `crm node standby|online NODE`.
    SetStandby {
        node: String,
        standby: bool,
    },
    /// `crm node maintenance|ready NODE`.
    SetNodeMaintenance {
        node: String,
        maintenance: bool,
    },
    /// Fails if the id is taken.
    AddResource {
        resource: Resource,
    },
    /// Fails if no resource has this id.
    ReplaceResource {
        resource: Resource,
    },
    /// Without `cascade`, fails while a group, clone, constraint or fencing level refers to the
    /// resource. With it, also removes it from its group (deleting the group if it empties) and
    /// from fencing levels (deleting levels that empty), deletes the clone wrapping it and every
    /// constraint naming any of those.
    DeleteResource {
        id: String,
        cascade: bool,
    },
    /// A meta attribute of one resource (`crm resource meta`, `target-role` for start/stop).
    SetResourceMeta {
        id: String,
        name: String,
        value: Option<String>,
    },
    /// Fails if the id is taken.
    AddConstraint {
        constraint: Constraint,
    },
    ReplaceConstraint {
        constraint: Constraint,
    },
    DeleteConstraint {
        id: String,
    },
    /// Replaces the whole fencing topology (`fencing_topology`); an empty list removes it.
    SetFencingTopology {
        levels: Vec<FencingLevel>,
    },
    /// The administrator's override: raises `admin_epoch` so this document beats any other.
    BumpAdminEpoch,
    // --- status ---
    /// Membership facts about a node, as the DC sees them.
    SetNodeState {
        node: String,
        member: bool,
        incarnation: Option<u64>,
        last_seen_unix_ms: Option<u64>,
    },
    /// A transient attribute (fail counts, promotion scores, ping).
    SetTransientAttribute {
        node: String,
        name: String,
        value: Option<String>,
    },
    /// The local resource manager's result of one operation.
    RecordOperation {
        node: String,
        rsc: String,
        agent: String,
        record: OpRecord,
    },
    /// `crm resource cleanup`: forgets a resource's history (on one node or all), so the policy
    /// engine probes it again.
    ClearResourceHistory {
        rsc: String,
        node: Option<String>,
    },
    /// The DC asks `node` to carry out these actions (added to its `pending` list; a request
    /// whose key is already there is not added twice).
    RequestActions {
        node: String,
        requests: Vec<ActionRequest>,
    },
    /// Forgets a node's pending requests (it was lost, fenced or restarted) and, with
    /// `history`, its whole resource history and transient attributes (it runs nothing now, or
    /// will be probed).
    ResetNode {
        node: String,
        history: bool,
    },
    /// The DC's record of a fencing attempt (kept in `Status::fencing`, oldest dropped first).
    RecordFencing {
        event: FenceEvent,
    },
}

impl CibOp {
    /// Whether the operation changes the configuration (bumps `epoch`) rather than the status.
    pub fn is_config(&self) -> bool {
        !matches!(
            self,
            CibOp::SetNodeState { .. }
                | CibOp::SetTransientAttribute { .. }
                | CibOp::RecordOperation { .. }
                | CibOp::ClearResourceHistory { .. }
                | CibOp::RequestActions { .. }
                | CibOp::ResetNode { .. }
                | CibOp::RecordFencing { .. }
        )
    }
}

fn set_attr(map: &mut Attrs, name: &str, value: &Option<String>) {
    match value {
        Some(v) => {
            map.insert(name.to_string(), v.clone());
        }
        None => {
            map.remove(name);
        }
    }
}

fn bool_word(b: bool) -> Option<String> {
    Some(if b { "on" } else { "off" }.to_string())
}

/// Applies one operation in place. Referential checks of the whole document are left to
/// validation, which the caller runs before committing; this only rejects what cannot be
/// applied at all.
pub(super) fn apply(cfg: &mut Configuration, status: &mut Status, op: &CibOp) -> Result<(), String> {
    match op {
        CibOp::SetProperty { name, value } => set_attr(&mut cfg.properties, name, value),
        CibOp::SetRscDefault { name, value } => set_attr(&mut cfg.rsc_defaults, name, value),
        CibOp::SetOpDefault { name, value } => set_attr(&mut cfg.op_defaults, name, value),
        CibOp::AddNode { node } => {
            if cfg.node(&node.name).is_some() {
                return Err(format!("node {:?} is already configured", node.name));
            }
            cfg.nodes.push(node.clone());
        }
        CibOp::DeleteNode { name } => {
            node_mut(cfg, name)?;
            cfg.nodes.retain(|n| &n.name != name);
            status.nodes.remove(name);
        }
        CibOp::SetNodeAttribute { node, name, value } => set_attr(&mut node_mut(cfg, node)?.attributes, name, value),
        CibOp::SetStandby { node, standby } => {
            set_attr(&mut node_mut(cfg, node)?.attributes, "standby", &bool_word(*standby))
        }
        CibOp::SetNodeMaintenance { node, maintenance } => set_attr(
            &mut node_mut(cfg, node)?.attributes,
            "maintenance",
            &bool_word(*maintenance),
        ),
        CibOp::AddResource { resource } => {
            if let Some(r) = cfg.resource(resource.id()) {
                return Err(format!(
                    "resource id {:?} is already taken by a {}",
                    resource.id(),
                    r.kind_name()
                ));
            }
            cfg.resources.push(resource.clone());
        }
        CibOp::ReplaceResource { resource } => {
            let slot = cfg
                .resources
                .iter_mut()
                .find(|r| r.id() == resource.id())
                .ok_or_else(|| format!("no resource {:?} to replace", resource.id()))?;
            *slot = resource.clone();
        }
        CibOp::DeleteResource { id, cascade } => delete_resource(cfg, id, *cascade)?,
        CibOp::SetResourceMeta { id, name, value } => {
            let r = cfg
                .resources
                .iter_mut()
                .find(|r| r.id() == id)
                .ok_or_else(|| format!("no resource {id:?}"))?;
            set_attr(r.meta_mut(), name, value);
        }
        CibOp::AddConstraint { constraint } => {
            if cfg.constraint(constraint.id()).is_some() {
                return Err(format!("constraint id {:?} is already taken", constraint.id()));
            }
            cfg.constraints.push(constraint.clone());
        }
        CibOp::ReplaceConstraint { constraint } => {
            let slot = cfg
                .constraints
                .iter_mut()
                .find(|c| c.id() == constraint.id())
                .ok_or_else(|| format!("no constraint {:?} to replace", constraint.id()))?;
            *slot = constraint.clone();
        }
        CibOp::DeleteConstraint { id } => {
            let before = cfg.constraints.len();
            cfg.constraints.retain(|c| c.id() != id);
            if cfg.constraints.len() == before {
                return Err(format!("no constraint {id:?} to delete"));
            }
        }
        CibOp::SetFencingTopology { levels } => cfg.fencing_topology = levels.clone(),
        // The version arithmetic is the caller's.
        CibOp::BumpAdminEpoch => {}
        CibOp::SetNodeState {
            node,
            member,
            incarnation,
            last_seen_unix_ms,
        } => {
            let st = node_status_mut(cfg, status, node)?;
            st.member = *member;
            st.incarnation = *incarnation;
            st.last_seen_unix_ms = *last_seen_unix_ms;
        }
        CibOp::SetTransientAttribute { node, name, value } => set_attr(
            &mut node_status_mut(cfg, status, node)?.transient_attributes,
            name,
            value,
        ),
        CibOp::RecordOperation {
            node,
            rsc,
            agent,
            record,
        } => {
            let st = node_status_mut(cfg, status, node)?;
            if let Some(key) = &record.transition {
                st.pending.retain(|p| &p.key != key);
            }
            let h = st.resources.entry(rsc.clone()).or_default();
            h.agent = agent.clone();
            h.record(record.clone());
        }
        CibOp::RequestActions { node, requests } => {
            let st = node_status_mut(cfg, status, node)?;
            for r in requests {
                if !st.pending.iter().any(|p| p.key == r.key) {
                    st.pending.push(r.clone());
                }
            }
        }
        CibOp::ResetNode { node, history } => {
            let st = node_status_mut(cfg, status, node)?;
            st.pending.clear();
            if *history {
                st.resources.clear();
                st.transient_attributes.clear();
            }
        }
        CibOp::RecordFencing { event } => {
            node_mut(cfg, &event.target)?;
            status.fencing.push(event.clone());
            let extra = status.fencing.len().saturating_sub(FENCING_HISTORY_MAX);
            status.fencing.drain(..extra);
        }
        CibOp::ClearResourceHistory { rsc, node } => {
            if let Some(n) = node {
                node_mut(cfg, n)?;
            }
            for (name, st) in status.nodes.iter_mut() {
                if node.as_ref().is_none_or(|n| n == name) {
                    st.resources.remove(rsc);
                }
            }
        }
    }
    Ok(())
}

fn node_mut<'a>(cfg: &'a mut Configuration, name: &str) -> Result<&'a mut Node, String> {
    cfg.nodes
        .iter_mut()
        .find(|n| n.name == name)
        .ok_or_else(|| format!("node {name:?} is not configured"))
}

fn node_status_mut<'a>(cfg: &Configuration, status: &'a mut Status, name: &str) -> Result<&'a mut NodeStatus, String> {
    if cfg.node(name).is_none() {
        return Err(format!("node {name:?} is not configured"));
    }
    Ok(status.nodes.entry(name.to_string()).or_default())
}

fn delete_resource(cfg: &mut Configuration, id: &str, cascade: bool) -> Result<(), String> {
    if cfg.resource(id).is_none() {
        return Err(format!("no resource {id:?} to delete"));
    }
    let users: Vec<String> = cfg
        .constraints
        .iter()
        .filter(|c| c.resources().contains(&id))
        .map(|c| format!("constraint {:?}", c.id()))
        .chain(cfg.parent_of(id).map(|p| format!("{} {:?}", p.kind_name(), p.id())))
        .chain(
            cfg.fencing_topology
                .iter()
                .filter(|l| l.devices.iter().any(|d| d == id))
                .map(|l| format!("fencing level {} of {:?}", l.index, l.target)),
        )
        .collect();
    if !cascade && !users.is_empty() {
        return Err(format!(
            "resource {id:?} is still used by {}; delete those first or delete with cascade",
            users.join(", ")
        ));
    }
    cfg.resources.retain(|r| r.id() != id);
    cfg.constraints.retain(|c| !c.resources().contains(&id));
    // A fencing level loses the device; a level left without devices goes.
    for l in cfg.fencing_topology.iter_mut() {
        l.devices.retain(|d| d != id);
    }
    cfg.fencing_topology.retain(|l| !l.devices.is_empty());
    // Its container: a group loses a member (and goes when empty); a clone goes.
    let mut doomed = Vec::new();
    for r in cfg.resources.iter_mut() {
        match r {
            Resource::Group(g) if g.members.iter().any(|m| m == id) => {
                g.members.retain(|m| m != id);
                if g.members.is_empty() {
                    doomed.push(g.id.clone());
                }
            }
            Resource::Clone(c) if c.child == id => doomed.push(c.id.clone()),
            _ => {}
        }
    }
    for d in doomed {
        delete_resource(cfg, &d, true)?;
    }
    Ok(())
}
