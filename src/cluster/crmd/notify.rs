//! Clone notifications (`notify=true`), Pacemaker's way: around each kind of operation a
//! transition runs on a clone's instances (demote, stop, start, promote, in that order), a `pre`
//! notification goes to every instance active before and a `post` one to every instance active
//! after, each carrying who starts, stops, is promoted and demoted (`OCF_RESKEY_CRM_meta_notify_*`,
//! formatted by [`crate::cluster::lrm::notify`]). Pure: a transition in, the transition with
//! notify actions and edges added, plus each notify action's environment.

use crate::cluster::cib::config::{Action, Resource, Role};
use crate::cluster::cib::Cib;
use crate::cluster::lrm::notify::{notify_env, Instance, Notification, NotifyType};
use crate::cluster::pengine::instances;
use crate::cluster::pengine::state::{base_id, observe, Observed};
use crate::cluster::pengine::{ActionKind, ClusterState, PlannedAction, Transition};
use std::collections::{BTreeMap, BTreeSet};

/// Notification timeout when the clone's primitive configures none for `notify`.
const NOTIFY_TIMEOUT_MS: u64 = 20_000;

/// Each notify action's environment, by its index in the transition.
pub type NotifyEnvs = BTreeMap<usize, Vec<(String, String)>>;

/// Adds the notifications; returns the environment of each notify action.
pub fn add_notifications(t: &mut Transition, cib: &Cib, cs: &ClusterState) -> NotifyEnvs {
    let mut envs = BTreeMap::new();
    let cfg = &cib.configuration;
    let online: BTreeSet<&String> = cs.nodes.iter().filter(|(_, n)| n.online).map(|(k, _)| k).collect();
    for r in &cfg.resources {
        let Resource::Clone(clone) = r else { continue };
        if !clone.notify() {
            continue;
        }
        let Some(Resource::Primitive(prim)) = cfg.resource(&clone.child) else {
            continue;
        };
        let id = prim.id.clone();
        // A globally-unique clone's instances are `p:N`, notified each on its own; an anonymous
        // clone's are `p`, one per node.
        let unique = instances::is_unique(cfg, clone);
        let every_instance = instances::instance_ids(cfg, &id, cfg.nodes.len());
        // Where instances are now, and in which role: (instance, node) -> role.
        let mut now: BTreeMap<Instance, Role> = BTreeMap::new();
        for (node, st) in &cib.status.nodes {
            if !online.contains(node) {
                continue;
            }
            for (sid, h) in &st.resources {
                if base_id(sid) != id {
                    continue;
                }
                let name = instances::history_id(cfg, sid);
                match observe(h) {
                    Observed::Running(role) | Observed::Failed(role) => {
                        now.insert(
                            (name, node.clone()),
                            if role == Role::Promoted {
                                Role::Promoted
                            } else {
                                Role::Started
                            },
                        );
                    }
                    _ => {}
                }
            }
        }
        let of_kind = |k: ActionKind| -> Vec<usize> {
            (0..t.actions.len())
                .filter(|&i| {
                    let a = &t.actions[i];
                    a.kind == k && base_id(&a.rsc) == id && a.interval_ms == 0
                })
                .collect()
        };
        let nodes_of = |idx: &[usize]| -> Vec<Instance> {
            let mut v: Vec<Instance> = idx
                .iter()
                .map(|&i| (t.actions[i].rsc.clone(), t.actions[i].node.clone()))
                .collect();
            v.sort();
            v
        };
        let (demote, stop, start, promote) = (
            of_kind(ActionKind::Demote),
            of_kind(ActionKind::Stop),
            of_kind(ActionKind::Start),
            of_kind(ActionKind::Promote),
        );
        if demote.is_empty() && stop.is_empty() && start.is_empty() && promote.is_empty() {
            continue;
        }
        let lists = (nodes_of(&demote), nodes_of(&stop), nodes_of(&start), nodes_of(&promote));
        let timeout = prim
            .ops
            .iter()
            .find(|o| o.name == Action::Notify)
            .and_then(|o| o.timeout_ms)
            .unwrap_or(NOTIFY_TIMEOUT_MS);
        let all_nodes: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
        let available: Vec<String> = online.iter().map(|s| s.to_string()).collect();
        let mut state = now;
        let mut previous_post: Vec<usize> = Vec::new();
        for (kind, op, idx) in [
            (ActionKind::Demote, Action::Demote, demote),
            (ActionKind::Stop, Action::Stop, stop),
            (ActionKind::Start, Action::Start, start),
            (ActionKind::Promote, Action::Promote, promote),
        ] {
            if idx.is_empty() {
                continue;
            }
            let before = state.clone();
            for &i in &idx {
                let node = (t.actions[i].rsc.clone(), t.actions[i].node.clone());
                match kind {
                    ActionKind::Demote => {
                        state.insert(node, Role::Started);
                    }
                    ActionKind::Stop => {
                        state.remove(&node);
                    }
                    ActionKind::Start => {
                        state.insert(node, Role::Started);
                    }
                    _ => {
                        state.insert(node, Role::Promoted);
                    }
                }
            }
            let note = |kind: NotifyType, roles: &BTreeMap<Instance, Role>| {
                let inst = |pred: &dyn Fn(Role) -> bool| -> Vec<Instance> {
                    roles
                        .iter()
                        .filter(|(_, r)| pred(**r))
                        .map(|(x, _)| x.clone())
                        .collect()
                };
                // Inactive: a unique clone's instances that run nowhere (no node), an anonymous
                // clone's nodes without one.
                let inactive: Vec<Instance> = if unique {
                    every_instance
                        .iter()
                        .filter(|i| !roles.keys().any(|(r, _)| r == *i))
                        .map(|i| (i.clone(), String::new()))
                        .collect()
                } else {
                    all_nodes
                        .iter()
                        .filter(|n| !roles.keys().any(|(_, rn)| rn == *n))
                        .map(|n| (id.clone(), n.clone()))
                        .collect()
                };
                Notification {
                    kind,
                    operation: op,
                    demote: lists.0.clone(),
                    stop: lists.1.clone(),
                    start: lists.2.clone(),
                    promote: lists.3.clone(),
                    active: inst(&|_| true),
                    inactive,
                    promoted: inst(&|r| r == Role::Promoted),
                    unpromoted: inst(&|r| r != Role::Promoted),
                    available_nodes: available.clone(),
                    all_nodes: all_nodes.clone(),
                }
            };
            let pre_env = notify_env(&note(NotifyType::Pre, &before));
            let post_env = notify_env(&note(NotifyType::Post, &state));
            let mut pre = Vec::new();
            for (rsc, node) in before.keys() {
                pre.push(push(t, rsc, node, timeout));
                envs.insert(*pre.last().unwrap(), pre_env.clone());
            }
            let mut post = Vec::new();
            for (rsc, node) in state.keys() {
                post.push(push(t, rsc, node, timeout));
                envs.insert(*post.last().unwrap(), post_env.clone());
            }
            for &p in &pre {
                for &a in &idx {
                    t.edges.push((p, a));
                }
                for &q in &previous_post {
                    t.edges.push((q, p));
                }
            }
            for &a in &idx {
                for &q in &post {
                    t.edges.push((a, q));
                }
            }
            if pre.is_empty() {
                for &q in &previous_post {
                    for &a in &idx {
                        t.edges.push((q, a));
                    }
                }
            }
            previous_post = post;
        }
    }
    envs
}

fn push(t: &mut Transition, rsc: &str, node: &str, timeout: u64) -> usize {
    t.actions.push(PlannedAction {
        kind: ActionKind::Notify,
        rsc: rsc.to_string(),
        node: node.to_string(),
        interval_ms: 0,
        role: None,
        timeout_ms: Some(timeout),
    });
    t.actions.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pengine::{crm_syntax, schedule_cib, NodeState};

    fn env_of<'a>(env: &'a [(String, String)], k: &str) -> &'a str {
        env.iter()
            .find(|(n, _)| n == &format!("OCF_RESKEY_CRM_meta_notify_{k}"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k}"))
    }

    #[test]
    fn a_promotable_clone_with_notify_is_told_about_its_start_and_promotion() {
        let mut cib = Cib::new();
        cib.configuration = crm_syntax::parse(
            "node n1\nnode n2\nprimitive d Stateful op monitor role=Master interval=10s op monitor role=Slave interval=20s\n\
             ms ms_d d meta notify=true clone-max=2\nproperty stonith-enabled=false\n",
        )
        .unwrap();
        let cs = ClusterState {
            nodes: [("n1".into(), NodeState::online()), ("n2".into(), NodeState::online())].into(),
            has_quorum: true,
            ..ClusterState::default()
        };
        let mut t = schedule_cib(&cib, &cs);
        let before = t.actions.len();
        let envs = add_notifications(&mut t, &cib, &cs);
        // Nothing runs yet: no pre-start notifications; post-start on both; the promotion (if
        // planned) gets pre and post on both.
        let notes: Vec<usize> = (before..t.actions.len()).collect();
        assert_eq!(notes.len(), envs.len());
        let starts: Vec<usize> = (0..before)
            .filter(|&i| t.actions[i].kind == ActionKind::Start)
            .collect();
        assert_eq!(starts.len(), 2, "{}", t.render());
        let post_start: Vec<usize> = notes
            .iter()
            .copied()
            .filter(|i| env_of(&envs[i], "type") == "post" && env_of(&envs[i], "operation") == "start")
            .collect();
        assert_eq!(post_start.len(), 2);
        for &p in &post_start {
            assert_eq!(env_of(&envs[&p], "start_uname"), "n1 n2");
            assert_eq!(env_of(&envs[&p], "active_uname"), "n1 n2");
            for &s in &starts {
                assert!(t.precedes(s, p), "start before its post notification");
            }
        }
        let promotes: Vec<usize> = (0..before)
            .filter(|&i| t.actions[i].kind == ActionKind::Promote)
            .collect();
        if let Some(&p) = promotes.first() {
            let pre: Vec<usize> = notes
                .iter()
                .copied()
                .filter(|i| env_of(&envs[i], "type") == "pre" && env_of(&envs[i], "operation") == "promote")
                .collect();
            assert_eq!(pre.len(), 2);
            for &q in &pre {
                assert!(t.precedes(q, p));
                assert!(t.precedes(post_start[0], q), "post-start before pre-promote");
                assert_eq!(env_of(&envs[&q], "promote_uname"), t.actions[p].node);
            }
        }
        // Still a DAG.
        for i in 0..t.actions.len() {
            assert!(!t.precedes(i, i));
        }
    }

    #[test]
    fn a_unique_clone_notifies_each_instance_by_name() {
        let mut cib = Cib::new();
        cib.configuration = crm_syntax::parse(
            "node n1\nnode n2\nprimitive d Dummy\n\
             clone c d meta notify=true clone-max=3 clone-node-max=2 globally-unique=true\n\
             property stonith-enabled=false\n",
        )
        .unwrap();
        let cs = ClusterState {
            nodes: [("n1".into(), NodeState::online()), ("n2".into(), NodeState::online())].into(),
            has_quorum: true,
            ..ClusterState::default()
        };
        let mut t = schedule_cib(&cib, &cs);
        let before = t.actions.len();
        let envs = add_notifications(&mut t, &cib, &cs);
        // One post-start notification per instance, to that instance on its node.
        let notes: Vec<&PlannedAction> = t.actions[before..].iter().collect();
        let mut to: Vec<(String, String)> = notes.iter().map(|a| (a.rsc.clone(), a.node.clone())).collect();
        to.sort();
        let want: Vec<(String, String)> = [("d:0", "n1"), ("d:1", "n2"), ("d:2", "n1")]
            .iter()
            .map(|(r, n)| (r.to_string(), n.to_string()))
            .collect();
        assert_eq!(to, want, "{}", t.render());
        let env = &envs[&before];
        assert_eq!(env_of(env, "type"), "post");
        assert_eq!(env_of(env, "start_resource"), "d:0 d:1 d:2");
        assert_eq!(env_of(env, "start_uname"), "n1 n2 n1");
        assert_eq!(env_of(env, "active_resource"), "d:0 d:1 d:2");
        assert_eq!(env_of(env, "inactive_resource"), "");
    }

    #[test]
    fn clones_without_notify_get_none() {
        let mut cib = Cib::new();
        cib.configuration =
            crm_syntax::parse("node n1\nprimitive d Dummy\nclone c d\nproperty stonith-enabled=false\n").unwrap();
        let cs = ClusterState {
            nodes: [("n1".into(), NodeState::online())].into(),
            has_quorum: true,
            ..ClusterState::default()
        };
        let mut t = schedule_cib(&cib, &cs);
        let n = t.actions.len();
        assert!(add_notifications(&mut t, &cib, &cs).is_empty());
        assert_eq!(t.actions.len(), n);
    }
}
