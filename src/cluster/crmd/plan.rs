//! The DC's pure decisions around the scheduler: what the membership means for the scheduler
//! (online, offline, unclean), the status facts to write first, which probes a node needs, and
//! turning planned actions into requests and recorded results into confirmations.

use super::super::cib::config::{Action, Agent, Attrs, Primitive, Resource, ResourceClass, Role};
use super::super::cib::ops::CibOp;
use super::super::cib::status::{ActionRequest, OpStatus};
use super::super::cib::Cib;
use super::super::driver::Snapshot;
use super::super::pengine::instances;
use super::super::pengine::state::{base_id, observe, OCF_NOT_RUNNING, OCF_RUNNING_PROMOTED, OCF_SUCCESS};
use super::super::pengine::{ActionKind, ClusterState, NodeState, PlannedAction};

/// Operations without a configured timeout get Pacemaker's default.
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;

/// Whether `name` is alive in this partition, and its incarnation.
fn liveness(s: &Snapshot, name: &str) -> (bool, Option<u64>) {
    if name == s.local {
        return (true, Some(s.incarnation));
    }
    let alive = s.view.iter().any(|v| v == name);
    (alive, s.peers.iter().find(|p| p.0 == name).and_then(|p| p.2))
}

/// The node announced an orderly shutdown (Pacemaker's transient `shutdown` attribute).
pub fn shutting_down(cib: &Cib, name: &str) -> bool {
    cib.status
        .nodes
        .get(name)
        .and_then(|n| n.transient_attributes.get("shutdown"))
        .is_some_and(|v| v != "0")
}

/// Whether the node's history says something may still be active there.
fn has_active(cib: &Cib, name: &str) -> bool {
    cib.status
        .nodes
        .get(name)
        .is_some_and(|n| n.resources.values().any(|h| observe(h).is_active()))
}

/// The scheduler's view of the nodes. A node outside this partition whose history says it may
/// still run something is unclean when fencing is enabled: it is fenced before that runs
/// elsewhere (this covers a node that died, one that left without stopping everything, and, at
/// cluster start, one never seen whose saved history shows resources: Pacemaker's
/// startup-fencing). With fencing disabled it is taken as down, as Pacemaker does with
/// `stonith-enabled=false`.
pub fn cluster_state(s: &Snapshot, now_unix_ms: u64) -> ClusterState {
    let stonith = s.cib.configuration.stonith_enabled();
    let max_attempts = crate::cluster::fencing::stonith_max_attempts(&s.cib.configuration);
    let mut cs = ClusterState {
        has_quorum: s.quorate,
        now_unix_ms,
        ..ClusterState::default()
    };
    for n in &s.cib.configuration.nodes {
        let (alive, _) = liveness(s, &n.name);
        let ns = if alive {
            NodeState {
                // A node shutting down in order hands its resources over first.
                standby: shutting_down(&s.cib, &n.name),
                ..NodeState::online()
            }
        } else if stonith && has_active(&s.cib, &n.name) {
            NodeState {
                fencing_failed: s.cib.status.fencing_failures(&n.name) >= max_attempts,
                ..NodeState::unclean()
            }
        } else {
            NodeState::offline()
        };
        cs.nodes.insert(n.name.clone(), ns);
    }
    cs
}

/// Status facts the DC writes before it schedules (the CIB replica keeps `member` itself): a
/// node back with a new incarnation loses its old history and attributes (it is probed again);
/// requests to nodes that are gone are dropped; without fencing, a lost node's history goes too
/// (its resources are taken as stopped, and recovered elsewhere).
pub fn membership_ops(s: &Snapshot, now_unix_ms: u64) -> Vec<CibOp> {
    let stonith = s.cib.configuration.stonith_enabled();
    let mut ops = Vec::new();
    for n in &s.cib.configuration.nodes {
        let name = &n.name;
        let (alive, inc) = liveness(s, name);
        let st = s.cib.status.nodes.get(name).cloned().unwrap_or_default();
        if alive {
            if inc.is_some() && st.incarnation != inc {
                if st.incarnation.is_some() {
                    ops.push(CibOp::ResetNode {
                        node: name.clone(),
                        history: true,
                    });
                }
                ops.push(CibOp::SetNodeState {
                    node: name.clone(),
                    member: true,
                    incarnation: inc,
                    last_seen_unix_ms: Some(now_unix_ms),
                });
            }
        } else if !stonith && has_active(&s.cib, name) {
            ops.push(CibOp::ResetNode {
                node: name.clone(),
                history: true,
            });
        } else if !st.pending.is_empty() {
            ops.push(CibOp::ResetNode {
                node: name.clone(),
                history: false,
            });
        }
    }
    ops
}

/// What the DC records once `node` is fenced: it runs nothing now and is no longer a member.
pub fn fenced_ops(s: &Snapshot, node: &str) -> Vec<CibOp> {
    let st = s.cib.status.nodes.get(node).cloned().unwrap_or_default();
    vec![
        CibOp::ResetNode {
            node: node.to_string(),
            history: true,
        },
        CibOp::SetNodeState {
            node: node.to_string(),
            member: false,
            incarnation: st.incarnation,
            last_seen_unix_ms: st.last_seen_unix_ms,
        },
    ]
}

/// Every primitive the LRM runs (stonith devices are the fencer's).
fn lrm_primitives(cib: &Cib) -> impl Iterator<Item = &Primitive> {
    cib.configuration.resources.iter().filter_map(|r| match r {
        Resource::Primitive(p) if p.agent.class != ResourceClass::Stonith => Some(p),
        _ => None,
    })
}

/// Probes (one-shot monitors) for every primitive an online node has no history of, so the
/// scheduler knows what already runs there before it starts anything (Pacemaker's probes).
/// Each instance `p:N` of a globally-unique clone is probed on its own (its agent's state is
/// per instance).
pub fn probes(cib: &Cib, online: &[String]) -> Vec<PlannedAction> {
    let cfg = &cib.configuration;
    let mut out = Vec::new();
    for node in online {
        let st = cib.status.nodes.get(node);
        for p in lrm_primitives(cib) {
            for id in instances::instance_ids(cfg, &p.id, cfg.nodes.len()) {
                let known = st.is_some_and(|st| st.resources.keys().any(|k| instances::history_id(cfg, k) == id));
                if !known {
                    out.push(PlannedAction {
                        kind: ActionKind::Monitor,
                        rsc: id,
                        node: node.clone(),
                        interval_ms: 0,
                        role: None,
                        timeout_ms: Some(op_timeout(p, Action::Monitor, 0)),
                    });
                }
            }
        }
    }
    out
}

/// The configured timeout of an operation, else the monitor's, else the default.
pub fn op_timeout(p: &Primitive, action: Action, interval_ms: u64) -> u64 {
    p.ops
        .iter()
        .find(|o| o.name == action && o.interval_ms == interval_ms)
        .or_else(|| p.ops.iter().find(|o| o.name == action))
        .and_then(|o| o.timeout_ms)
        .unwrap_or(DEFAULT_TIMEOUT_MS)
}

fn action_of(kind: ActionKind) -> Option<Action> {
    Some(match kind {
        ActionKind::Fence => return None,
        ActionKind::Demote => Action::Demote,
        ActionKind::Stop => Action::Stop,
        ActionKind::Start => Action::Start,
        ActionKind::Promote => Action::Promote,
        ActionKind::Monitor => Action::Monitor,
        ActionKind::Notify => Action::Notify,
    })
}

/// The request for a planned action (`None` for fencing, which the DC runs itself).
pub fn request(a: &PlannedAction, key: String) -> Option<ActionRequest> {
    Some(ActionRequest {
        key,
        rsc: a.rsc.clone(),
        action: action_of(a.kind)?,
        interval_ms: a.interval_ms,
        role: a.role,
        timeout_ms: a.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        env: Vec::new(),
    })
}

/// Whether a result is what the action wanted. Probes accept any definite answer; a
/// notification never fails anything (as in Pacemaker: agents without `notify` answer 3).
pub fn result_ok(action: Action, interval_ms: u64, role: Option<Role>, rc: i32, status: OpStatus) -> bool {
    if action == Action::Notify {
        return true;
    }
    if status != OpStatus::Done {
        return false;
    }
    match action {
        Action::Monitor if interval_ms == 0 => matches!(rc, OCF_SUCCESS | OCF_NOT_RUNNING | OCF_RUNNING_PROMOTED),
        Action::Monitor if role == Some(Role::Promoted) => rc == OCF_RUNNING_PROMOTED,
        Action::Monitor => rc == OCF_SUCCESS,
        _ => rc == OCF_SUCCESS,
    }
}

/// The outcome of the request `key` for `rsc` on `node`, once its result is in the CIB.
pub fn outcome(cib: &Cib, node: &str, a: &PlannedAction, key: &str) -> Option<bool> {
    let h = cib.status.nodes.get(node)?.resources.get(&a.rsc)?;
    let r = h.ops.iter().find(|o| o.transition.as_deref() == Some(key))?;
    Some(result_ok(r.action, r.interval_ms, a.role, r.rc, r.status))
}

/// The agent, parameters and meta attributes a request runs with: the primitive's, with
/// `rsc_defaults` and its group's and clone's meta attributes under its own (as Pacemaker
/// passes them: `CRM_meta_clone_max`, `CRM_meta_notify`, ...). A clone's child also gets the
/// clone's effective settings as Pacemaker always passes them (`clone-max`, `clone-node-max`,
/// `globally-unique`, `notify`, and for a promotable clone `promoted-max`/`master-max` and
/// `promoted-node-max`/`master-node-max`), and an instance `p:N` of a globally-unique clone
/// its number as `clone` (`OCF_RESKEY_CRM_meta_clone=N`). A resource no longer configured (an
/// orphan being stopped) runs with the agent its history names and no parameters.
pub fn resolve(cib: &Cib, node: &str, rsc: &str) -> Result<(Agent, Attrs, Attrs), String> {
    let cfg = &cib.configuration;
    let id = base_id(rsc);
    if let Some(Resource::Primitive(p)) = cfg.resource(id) {
        let mut meta = cfg.rsc_defaults.clone();
        if let Some(c) = instances::clone_of(cfg, id) {
            let unique = instances::is_unique(cfg, c);
            let max = instances::clone_max(c, cfg.nodes.len()).to_string();
            let mut set = |k: &str, v: String| {
                meta.insert(k.to_string(), v);
            };
            set("clone-max", max);
            set("clone-node-max", instances::node_max(cfg, c).to_string());
            set("globally-unique", unique.to_string());
            set("notify", c.notify().to_string());
            if c.is_promotable() {
                for k in ["promoted-max", "master-max"] {
                    set(k, c.promoted_max().to_string());
                }
                for k in ["promoted-node-max", "master-node-max"] {
                    set(k, c.promoted_node_max().to_string());
                }
            }
            if unique {
                if let Some(n) = instances::instance_number(rsc) {
                    set("clone", n.to_string());
                }
            }
        }
        let mut chain = Vec::new();
        let mut cur = cfg.parent_of(id);
        while let Some(parent) = cur {
            chain.push(parent);
            cur = cfg.parent_of(parent.id());
        }
        for parent in chain.iter().rev() {
            let m = match parent {
                Resource::Group(g) => &g.meta,
                Resource::Clone(c) => &c.meta,
                Resource::Primitive(_) => continue,
            };
            meta.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        meta.extend(p.meta.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(c) = instances::clone_of(cfg, id) {
            // What the scheduler actually applies wins over a configured value it ignores.
            meta.insert("clone-node-max".into(), instances::node_max(cfg, c).to_string());
            if !instances::is_unique(cfg, c) {
                meta.insert("globally-unique".into(), "false".into());
            }
        }
        return Ok((p.agent.clone(), p.params.clone(), meta));
    }
    let agent = cib
        .status
        .nodes
        .get(node)
        .and_then(|n| n.resources.get(rsc))
        .map(|h| h.agent.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("resource {rsc:?} is neither configured nor known on {node}"))?;
    Ok((Agent::parse(&agent)?, Attrs::new(), Attrs::new()))
}

/// Fail-count bookkeeping for a failed operation (Pacemaker's `fail-count-RSC#OP_INTERVAL` and
/// `last-failure-RSC#OP_INTERVAL`): one more, or INFINITY for a failed start
/// (`start-failure-is-fatal`, default true).
pub fn failure_ops(cib: &Cib, node: &str, rsc: &str, action: Action, interval_ms: u64, now_unix_ms: u64) -> Vec<CibOp> {
    // A unique clone's instance has its own fail count (`fail-count-p:N#...`).
    let suffix = format!(
        "{}#{}_{}",
        instances::history_id(&cib.configuration, rsc),
        action.as_str(),
        interval_ms
    );
    let name = format!("fail-count-{suffix}");
    let fatal_start = action == Action::Start
        && cib
            .configuration
            .property("start-failure-is-fatal")
            .is_none_or(|v| !matches!(v, "false" | "no" | "0" | "off"));
    let old: u64 = cib
        .status
        .nodes
        .get(node)
        .and_then(|n| n.transient_attributes.get(&name))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let value = if fatal_start {
        "INFINITY".to_string()
    } else {
        (old + 1).to_string()
    };
    vec![
        CibOp::SetTransientAttribute {
            node: node.to_string(),
            name,
            value: Some(value),
        },
        CibOp::SetTransientAttribute {
            node: node.to_string(),
            name: format!("last-failure-{suffix}"),
            value: Some(now_unix_ms.to_string()),
        },
    ]
}
