use super::plan::*;
use crate::cluster::cib::config::{Action, Role};
use crate::cluster::cib::ops::CibOp;
use crate::cluster::cib::status::{ActionRequest, OpRecord, OpStatus};
use crate::cluster::cib::Cib;
use crate::cluster::driver::Snapshot;
use crate::cluster::membership::PeerState;
use crate::cluster::pengine::{crm_syntax, ActionKind, NodeState, PlannedAction};

const CONFIG: &str = "\
node n1
node n2
node n3
primitive ip IPaddr2 params ip=10.9.0.10 meta migration-threshold=2 op monitor interval=10s timeout=7s
primitive web Dummy op start timeout=30s
primitive fence_all stonith:fence_hablock_netns
group g ip web meta resource-stickiness=100
rsc_defaults resource-stickiness=10 failure-timeout=60s
";

fn cib(extra: &str) -> Cib {
    let mut c = Cib::new();
    c.configuration = crm_syntax::parse(&format!("{CONFIG}{extra}")).expect("config parses");
    c
}

/// n1 is this node and DC; n2 alive; n3 in the given state.
fn snap(cib: Cib, n3: PeerState) -> Snapshot {
    let mut view = vec!["n1".to_string(), "n2".to_string()];
    if n3 == PeerState::Alive {
        view.push("n3".into());
    }
    Snapshot {
        local: "n1".into(),
        incarnation: 100,
        cib,
        dc: Some("n1".into()),
        dc_ready: true,
        quorate: true,
        peers: vec![("n2".into(), PeerState::Alive, Some(200)), ("n3".into(), n3, Some(300))],
        view,
    }
}

fn apply(c: &mut Cib, ops: &[CibOp]) {
    c.apply(ops).expect("ops apply");
}

fn record(c: &mut Cib, node: &str, rsc: &str, action: Action, interval_ms: u64, rc: i32, key: Option<&str>) {
    let call_id = c.status.nodes.get(node).map_or(0, |n| n.resources.len() as u64 * 10) + 1;
    apply(
        c,
        &[CibOp::RecordOperation {
            node: node.into(),
            rsc: rsc.into(),
            agent: "ocf:heartbeat:Dummy".into(),
            record: OpRecord {
                last_rc_change_unix_ms: 1,
                exec_time_ms: 1,
                transition: key.map(str::to_string),
                ..OpRecord::done(action, interval_ms, call_id, rc)
            },
        }],
    );
}

#[test]
fn incarnations_are_written_and_a_new_life_loses_its_history() {
    let mut c = cib("");
    let s = snap(c.clone(), PeerState::Alive);
    let ops = membership_ops(&s, 5);
    assert_eq!(ops.len(), 3, "{ops:?}");
    apply(&mut c, &ops);
    assert!(c.status.nodes["n3"].member);
    assert_eq!(c.status.nodes["n3"].incarnation, Some(300));
    assert!(
        membership_ops(&snap(c.clone(), PeerState::Alive), 6).is_empty(),
        "settled"
    );
    // n3 restarts: a new incarnation wipes its history before it is probed again.
    record(&mut c, "n3", "web", Action::Start, 0, 0, None);
    let mut s = snap(c.clone(), PeerState::Alive);
    s.peers[1].2 = Some(301);
    let ops = membership_ops(&s, 7);
    assert!(
        matches!(&ops[0], CibOp::ResetNode { node, history: true } if node == "n3"),
        "{ops:?}"
    );
    apply(&mut c, &ops);
    assert!(c.status.nodes["n3"].resources.is_empty());
    assert_eq!(c.status.nodes["n3"].incarnation, Some(301));
}

#[test]
fn a_lost_node_that_may_run_something_is_unclean_only_with_fencing() {
    let mut c = cib("");
    record(&mut c, "n3", "web", Action::Start, 0, 0, None);
    for lost in [PeerState::Dead, PeerState::Left, PeerState::Pending] {
        let s = snap(c.clone(), lost);
        assert_eq!(cluster_state(&s, 0).nodes["n3"], NodeState::unclean(), "{lost:?}");
        let about_n3 = membership_ops(&s, 2)
            .into_iter()
            .filter(|o| matches!(o, CibOp::ResetNode { node, .. } | CibOp::SetNodeState { node, .. } if node == "n3"))
            .count();
        assert_eq!(about_n3, 0, "its history stays until it is fenced");
    }
    // Fenced: nothing in its history, so offline.
    let s = snap(c.clone(), PeerState::Dead);
    let ops = fenced_ops(&s, "n3");
    apply(&mut c, &ops);
    let s = snap(c.clone(), PeerState::Dead);
    assert_eq!(cluster_state(&s, 0).nodes["n3"], NodeState::offline());
    // A lost node whose resources are all stopped needs no fencing.
    let mut c = cib("");
    record(&mut c, "n3", "web", Action::Start, 0, 0, None);
    record(&mut c, "n3", "web", Action::Stop, 0, 0, None);
    assert_eq!(
        cluster_state(&snap(c, PeerState::Dead), 0).nodes["n3"],
        NodeState::offline()
    );
    // Without fencing, a lost node is taken as down and its history is dropped.
    let mut c = cib("property stonith-enabled=false\n");
    record(&mut c, "n3", "web", Action::Start, 0, 0, None);
    let s = snap(c.clone(), PeerState::Dead);
    assert_eq!(cluster_state(&s, 0).nodes["n3"], NodeState::offline());
    let ops = membership_ops(&s, 2);
    assert!(
        ops.iter()
            .any(|o| matches!(o, CibOp::ResetNode { node, history: true } if node == "n3")),
        "{ops:?}"
    );
}

#[test]
fn requests_to_a_lost_node_are_dropped() {
    let mut c = cib("");
    let ops = membership_ops(&snap(c.clone(), PeerState::Alive), 1);
    apply(&mut c, &ops);
    let req = ActionRequest {
        key: "T1-1:0".into(),
        rsc: "web".into(),
        action: Action::Start,
        interval_ms: 0,
        role: None,
        timeout_ms: 1000,
        env: Vec::new(),
    };
    apply(
        &mut c,
        &[CibOp::RequestActions {
            node: "n3".into(),
            requests: vec![req.clone(), req.clone()],
        }],
    );
    assert_eq!(c.status.nodes["n3"].pending.len(), 1, "a key is requested once");
    let ops = membership_ops(&snap(c.clone(), PeerState::Dead), 2);
    apply(&mut c, &ops);
    assert!(c.status.nodes["n3"].pending.is_empty());
}

#[test]
fn probes_cover_what_a_node_has_no_history_of() {
    let mut c = cib("");
    let online = vec!["n1".to_string(), "n2".to_string()];
    let p = probes(&c, &online);
    let text: Vec<String> = p.iter().map(|a| format!("{a} {:?}", a.timeout_ms)).collect();
    assert_eq!(
        text,
        [
            "monitor ip on n1 every 0s Some(7000)",
            "monitor web on n1 every 0s Some(20000)",
            "monitor ip on n2 every 0s Some(7000)",
            "monitor web on n2 every 0s Some(20000)"
        ],
        "stonith devices are not probed"
    );
    record(&mut c, "n2", "web", Action::Monitor, 0, 7, None);
    record(&mut c, "n2", "ip", Action::Monitor, 0, 7, None);
    assert_eq!(probes(&c, &online).len(), 2);
}

#[test]
fn results_confirm_the_request_that_asked_for_them() {
    let mut c = cib("");
    let start = PlannedAction {
        kind: ActionKind::Start,
        rsc: "web".into(),
        node: "n2".into(),
        interval_ms: 0,
        role: None,
        timeout_ms: Some(30_000),
    };
    let req = request(&start, "T9-1:4".into()).unwrap();
    assert_eq!((req.action, req.timeout_ms), (Action::Start, 30_000));
    apply(
        &mut c,
        &[CibOp::RequestActions {
            node: "n2".into(),
            requests: vec![req],
        }],
    );
    assert_eq!(outcome(&c, "n2", &start, "T9-1:4"), None);
    record(&mut c, "n2", "web", Action::Start, 0, 0, Some("T9-1:4"));
    assert_eq!(outcome(&c, "n2", &start, "T9-1:4"), Some(true));
    assert!(c.status.nodes["n2"].pending.is_empty(), "the result clears the request");
    record(&mut c, "n2", "web", Action::Start, 0, 1, Some("T9-1:5"));
    assert_eq!(outcome(&c, "n2", &start, "T9-1:5"), Some(false));
    let fence = PlannedAction {
        kind: ActionKind::Fence,
        ..start.clone()
    };
    assert!(request(&fence, "x".into()).is_none(), "the DC fences itself");
    // Probes accept any definite answer; a promoted monitor wants 8.
    assert!(result_ok(Action::Monitor, 0, None, 7, OpStatus::Done));
    assert!(!result_ok(Action::Monitor, 0, None, 1, OpStatus::Done));
    assert!(result_ok(
        Action::Monitor,
        10_000,
        Some(Role::Promoted),
        8,
        OpStatus::Done
    ));
    assert!(!result_ok(
        Action::Monitor,
        10_000,
        Some(Role::Promoted),
        0,
        OpStatus::Done
    ));
    assert!(!result_ok(Action::Start, 0, None, 0, OpStatus::Timeout));
    assert!(
        result_ok(Action::Notify, 0, None, 3, OpStatus::Done),
        "notifications never fail"
    );
}

#[test]
fn resolve_layers_meta_and_handles_orphans() {
    let mut c = cib("");
    let (agent, params, meta) = resolve(&c, "n1", "ip").unwrap();
    assert_eq!(agent.to_string(), "ocf:heartbeat:IPaddr2");
    assert_eq!(params["ip"], "10.9.0.10");
    assert_eq!(
        meta["resource-stickiness"], "100",
        "the group's meta beats rsc_defaults"
    );
    assert_eq!(meta["failure-timeout"], "60s");
    assert_eq!(meta["migration-threshold"], "2");
    assert!(resolve(&c, "n1", "gone").is_err());
    record(&mut c, "n1", "gone", Action::Start, 0, 0, None);
    let (agent, params, _) = resolve(&c, "n1", "gone").unwrap();
    assert_eq!(agent.to_string(), "ocf:heartbeat:Dummy");
    assert!(params.is_empty());
}

#[test]
fn failures_count_and_a_failed_start_is_fatal() {
    let mut c = cib("");
    let ops = membership_ops(&snap(c.clone(), PeerState::Alive), 1);
    apply(&mut c, &ops);
    let ops = failure_ops(&c, "n2", "web", Action::Monitor, 10_000, 1234);
    apply(&mut c, &ops);
    let ops = failure_ops(&c, "n2", "web", Action::Monitor, 10_000, 1300);
    apply(&mut c, &ops);
    let attrs = &c.status.nodes["n2"].transient_attributes;
    assert_eq!(attrs["fail-count-web#monitor_10000"], "2");
    assert_eq!(attrs["last-failure-web#monitor_10000"], "1300");
    let ops = failure_ops(&c, "n2", "web", Action::Start, 0, 1400);
    apply(&mut c, &ops);
    assert_eq!(
        c.status.nodes["n2"].transient_attributes["fail-count-web#start_0"],
        "INFINITY"
    );
    let c = cib("property start-failure-is-fatal=false\n");
    let ops = failure_ops(&c, "n2", "web", Action::Start, 0, 1);
    assert!(matches!(&ops[0], CibOp::SetTransientAttribute { value: Some(v), .. } if v == "1"));
}

#[test]
fn a_node_shutting_down_is_scheduled_as_standby() {
    let mut c = cib("");
    let ops = membership_ops(&snap(c.clone(), PeerState::Alive), 1);
    apply(&mut c, &ops);
    assert!(!cluster_state(&snap(c.clone(), PeerState::Alive), 0).nodes["n2"].standby);
    apply(
        &mut c,
        &[CibOp::SetTransientAttribute {
            node: "n2".into(),
            name: "shutdown".into(),
            value: Some("1700000000000".into()),
        }],
    );
    let cs = cluster_state(&snap(c.clone(), PeerState::Alive), 0);
    assert!(cs.nodes["n2"].online && cs.nodes["n2"].standby);
}

#[test]
fn unique_clone_instances_are_probed_resolved_and_counted_by_name() {
    let extra = "primitive d Dummy\nclone c_d d meta clone-max=4 clone-node-max=2 globally-unique=true\n\
                 primitive s Stateful\nms ms_s s meta clone-node-max=3 promoted-node-max=2\n";
    let mut c = cib(extra);
    // Every instance is probed on its own; the anonymous clone by its plain id.
    let probed = |c: &Cib| -> Vec<String> {
        probes(c, &["n2".to_string()])
            .into_iter()
            .map(|a| a.rsc)
            .filter(|r| r.starts_with("d") || r.starts_with("s"))
            .collect()
    };
    assert_eq!(probed(&c), ["d:0", "d:1", "d:2", "d:3", "s"]);
    record(&mut c, "n2", "d:1", Action::Monitor, 0, 7, None);
    record(&mut c, "n2", "s", Action::Monitor, 0, 7, None);
    assert_eq!(probed(&c), ["d:0", "d:2", "d:3"]);

    let (_, _, meta) = resolve(&c, "n1", "d:3").unwrap();
    assert_eq!(meta["clone"], "3");
    assert_eq!(meta["clone-max"], "4");
    assert_eq!(meta["clone-node-max"], "2");
    assert_eq!(meta["globally-unique"], "true");
    assert_eq!(meta["notify"], "false");
    assert!(!meta.contains_key("promoted-max"));
    // An anonymous promotable clone: one instance per node whatever clone-node-max says, the
    // promotion limits under both names, no instance number; clone-max defaults to the nodes.
    let (_, _, meta) = resolve(&c, "n1", "s").unwrap();
    assert_eq!(meta["clone-max"], "3");
    assert_eq!(meta["clone-node-max"], "1");
    assert_eq!(meta["globally-unique"], "false");
    assert_eq!(meta["promoted-max"], "1");
    assert_eq!(meta["master-max"], "1");
    assert_eq!(meta["promoted-node-max"], "2");
    assert_eq!(meta["master-node-max"], "2");
    assert!(!meta.contains_key("clone"));
    // A primitive outside any clone gets none of it.
    let (_, _, meta) = resolve(&c, "n1", "web").unwrap();
    assert!(!meta.contains_key("clone-max"));

    let ops = failure_ops(&c, "n2", "d:1", Action::Monitor, 10_000, 5);
    assert!(matches!(&ops[0], CibOp::SetTransientAttribute { name, .. } if name == "fail-count-d:1#monitor_10000"));
    let ops = failure_ops(&c, "n2", "s:1", Action::Monitor, 10_000, 5);
    assert!(matches!(&ops[0], CibOp::SetTransientAttribute { name, .. } if name == "fail-count-s#monitor_10000"));
}
