//! Carries out a transition on a copy of the status as if every action succeeded (Pacemaker's
//! `crm_simulate`): fenced nodes go cleanly offline and lose their history, the rest of the
//! actions are recorded as successful operations. Used by the tests to check that the scheduler
//! converges, and usable by tools that want to show what a transition would lead to.

use super::state::base_id;
use super::{ActionKind, ClusterState, Transition};
use crate::cluster::cib::config::{Action, Role};
use crate::cluster::cib::status::{OpRecord, OpStatus, Status};

/// Applies every action of `t` in order, at time `cluster.now_unix_ms`.
pub fn apply(status: &Status, cluster: &ClusterState, t: &Transition) -> (Status, ClusterState) {
    let mut st = status.clone();
    let mut cl = cluster.clone();
    for a in &t.actions {
        if a.kind == ActionKind::Fence {
            let ns = cl.nodes.entry(a.node.clone()).or_default();
            ns.online = false;
            ns.unclean = false;
            if let Some(n) = st.nodes.get_mut(&a.node) {
                n.resources.clear();
                n.transient_attributes.clear();
            }
            continue;
        }
        let (action, rc) = match a.kind {
            ActionKind::Stop => (Action::Stop, 0),
            ActionKind::Start => (Action::Start, 0),
            ActionKind::Promote => (Action::Promote, 0),
            ActionKind::Demote => (Action::Demote, 0),
            ActionKind::Monitor => (Action::Monitor, if a.role == Some(Role::Promoted) { 8 } else { 0 }),
            ActionKind::Fence => unreachable!("handled above"),
            // Notifications change nothing the scheduler reads.
            ActionKind::Notify => continue,
        };
        record(&mut st, &a.node, &a.rsc, action, a.interval_ms, rc, cluster.now_unix_ms);
    }
    (st, cl)
}

/// Records a completed operation in `node`'s history of `rsc` with the next call id.
pub fn record(st: &mut Status, node: &str, rsc: &str, action: Action, interval_ms: u64, rc: i32, now: u64) {
    let ns = st.nodes.entry(node.to_string()).or_default();
    let call_id = ns
        .resources
        .values()
        .flat_map(|h| h.ops.iter().map(|o| o.call_id))
        .max()
        .unwrap_or(0)
        + 1;
    let key = ns
        .resources
        .keys()
        .find(|k| base_id(k) == rsc)
        .cloned()
        .unwrap_or_else(|| rsc.to_string());
    let h = ns.resources.entry(key).or_default();
    h.record(OpRecord {
        action,
        interval_ms,
        call_id,
        rc,
        status: OpStatus::Done,
        last_rc_change_unix_ms: now,
        exec_time_ms: 0,
        queue_time_ms: 0,
        transition: None,
        exit_reason: String::new(),
    });
}
