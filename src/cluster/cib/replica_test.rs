use super::*;
use crate::cluster::cib::config::{Primitive, Resource};

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

fn cfg(local: u8) -> ReplicaConfig {
    ReplicaConfig {
        local: NodeId(local),
        nodes: NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (NodeId(i as u8), n.to_string()))
            .collect(),
        retry: 100,
        sync_timeout: 500,
        request_timeout: 2000,
        first_message_id: 1000 * (local as u64 + 1),
    }
}

fn prop(name: &str, value: &str) -> CibOp {
    CibOp::SetProperty {
        name: name.into(),
        value: Some(value.into()),
    }
}

/// Three replicas with a perfect network that the test partitions by hand; messages are
/// delivered in order, and `links` copies of each go out (as over redundant rings).
struct Net {
    nodes: Vec<Replica>,
    now: Millis,
    /// Which nodes can talk: group per node.
    groups: [u8; 3],
    queue: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    replies: Vec<(NodeId, u64, Result<ChangeDone, ChangeError>)>,
    persisted: Vec<NodeId>,
    links: usize,
}

impl Net {
    fn new() -> Net {
        let nodes = (0..3u8)
            .map(|i| Replica::new(cfg(i), initial_cib(&cfg(i).nodes), false))
            .collect();
        Net {
            nodes,
            now: 0,
            groups: [0; 3],
            queue: VecDeque::new(),
            replies: Vec::new(),
            persisted: Vec::new(),
            links: 2,
        }
    }

    fn view_of(&self, n: usize) -> MembershipView {
        let view: NodeSet = (0..3u8)
            .filter(|o| self.groups[*o as usize] == self.groups[n])
            .map(NodeId)
            .collect();
        let quorate = view.len() >= 2;
        let dc = if quorate { view.first() } else { None };
        MembershipView {
            view,
            dc,
            quorate,
            dc_version: dc.map(|d| self.nodes[d.0 as usize].version()),
        }
    }

    fn take(&mut self, from: usize, acts: Vec<ReplicaAction>) {
        for a in acts {
            match a {
                ReplicaAction::Send { to, payload } => {
                    for _ in 0..self.links {
                        self.queue.push_back((NodeId(from as u8), to, payload.clone()));
                    }
                }
                ReplicaAction::Reply { req, result } => self.replies.push((NodeId(from as u8), req, result)),
                ReplicaAction::Persist { .. } => self.persisted.push(NodeId(from as u8)),
                ReplicaAction::VersionChanged(_) | ReplicaAction::Log { .. } => {}
            }
        }
    }

    /// Delivers everything (dropping messages between partitions) and ticks until quiet.
    fn settle(&mut self) {
        for _ in 0..200 {
            self.tick(|_, _, _, _| true);
        }
    }

    /// One 50 ms step: every node observes, then the queue is delivered (but between
    /// partitions); `keep(now, from, to, payload)` sees each message first and may drop it.
    fn tick(&mut self, mut keep: impl FnMut(Millis, NodeId, NodeId, &[u8]) -> bool) {
        self.now += 50;
        for i in 0..3 {
            let mv = self.view_of(i);
            let acts = self.nodes[i].observe(self.now, mv);
            self.take(i, acts);
        }
        while let Some((from, to, payload)) = self.queue.pop_front() {
            if self.groups[from.0 as usize] != self.groups[to.0 as usize] || !keep(self.now, from, to, &payload) {
                continue;
            }
            let acts = self.nodes[to.0 as usize].receive(self.now, from, &payload);
            self.take(to.0 as usize, acts);
        }
    }

    fn submit(&mut self, n: usize, req: u64, ops: Vec<CibOp>, force: bool) {
        let acts = self.nodes[n].submit(self.now, req, ops, force);
        self.take(n, acts);
    }

    fn reply(&self, n: u8, req: u64) -> Option<&Result<ChangeDone, ChangeError>> {
        self.replies
            .iter()
            .find(|(f, r, _)| *f == NodeId(n) && *r == req)
            .map(|(_, _, res)| res)
    }

    fn digests(&self) -> Vec<(CibVersion, String)> {
        self.nodes.iter().map(|r| (r.version(), r.cib().digest())).collect()
    }
}

#[test]
fn changes_on_any_node_reach_every_node_through_the_dc() {
    let mut net = Net::new();
    net.settle();
    assert!(net.nodes[0].dc_ready());
    let start = net.nodes[0].version();
    // On a member: forwarded to the DC, answered once applied and replicated here.
    net.submit(2, 1, vec![prop("stonith-enabled", "false")], false);
    net.settle();
    let done = net.reply(2, 1).expect("answered").clone().expect("applied");
    assert!(done.changed && !done.forced);
    assert_eq!(done.version.epoch, start.epoch + 1);
    // On the DC itself.
    net.submit(
        0,
        2,
        vec![CibOp::SetStandby {
            node: "beta".into(),
            standby: true,
        }],
        false,
    );
    net.settle();
    assert!(net.reply(0, 2).unwrap().is_ok());
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    assert_eq!(
        net.nodes[1].cib().configuration.property("stonith-enabled"),
        Some("false")
    );
    assert!(net.nodes[2].cib().configuration.node("beta").unwrap().standby());
    // An invalid change is refused by the DC with its reason; nothing moves.
    let before = net.digests();
    net.submit(
        1,
        3,
        vec![CibOp::SetStandby {
            node: "delta".into(),
            standby: true,
        }],
        false,
    );
    net.settle();
    match net.reply(1, 3) {
        Some(Err(ChangeError::Refused(e))) => assert!(e.contains("delta"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(net.digests(), before);
    // The same value again: answered, nothing changes.
    net.submit(1, 4, vec![prop("stonith-enabled", "false")], false);
    net.settle();
    assert!(!net.reply(1, 4).unwrap().as_ref().unwrap().changed);
    assert_eq!(net.digests(), before);
}

#[test]
fn updates_apply_in_the_same_order_everywhere() {
    let mut net = Net::new();
    net.settle();
    // Many changes from all nodes at once, to the same property: the DC serialises them, and
    // every node ends with the same document.
    for i in 0..30u64 {
        net.submit(
            (i % 3) as usize,
            100 + i,
            vec![prop("cluster-name", &format!("c{i}"))],
            false,
        );
    }
    net.settle();
    for i in 0..30u64 {
        assert!(net.reply((i % 3) as u8, 100 + i).unwrap().is_ok());
    }
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    // Members applied updates (not whole documents) to get there.
    assert!(net.nodes[1].counters().updates_applied >= 29);
}

#[test]
fn a_partition_without_quorum_refuses_and_a_forced_change_loses_on_heal() {
    let mut net = Net::new();
    net.settle();
    for n in NAMES {
        assert!(net.nodes[1].cib().status.nodes[n].member, "{n}");
    }
    // gamma alone: the DC records it in the status section (num_updates moves).
    let before = net.nodes[0].version();
    net.groups = [0, 0, 1];
    net.settle();
    for r in &net.nodes[..2] {
        assert!(!r.cib().status.nodes["gamma"].member);
        assert_eq!(r.version().epoch, before.epoch);
        assert!(r.version().num_updates > before.num_updates);
    }
    net.submit(2, 1, vec![prop("no-quorum-policy", "ignore")], false);
    assert_eq!(net.reply(2, 1), Some(&Err(ChangeError::NoQuorum)));
    // Forced: only gamma's copy, marked as made without quorum, and even with more changes
    // (a higher version) than the majority made...
    for (i, v) in ["ignore", "freeze", "stop", "suicide"].iter().enumerate() {
        net.submit(2, 10 + i as u64, vec![prop("no-quorum-policy", v)], true);
        assert!(net.reply(2, 10 + i as u64).unwrap().as_ref().unwrap().forced);
    }
    assert!(!net.nodes[2].origin_quorate());
    net.submit(1, 20, vec![prop("stonith-enabled", "false")], false);
    net.settle();
    assert!(net.reply(1, 20).unwrap().is_ok());
    assert!(net.nodes[2].version() > net.nodes[0].version());
    // ...it loses when the partitions meet.
    net.groups = [0, 0, 0];
    net.settle();
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    let cfg = &net.nodes[2].cib().configuration;
    assert_eq!(cfg.property("stonith-enabled"), Some("false"));
    assert_eq!(cfg.property("no-quorum-policy"), None);
    assert!(net.nodes[2].origin_quorate());
}

#[test]
fn a_newer_document_on_a_member_wins_when_it_becomes_reachable() {
    let mut net = Net::new();
    net.settle();
    // alpha (the DC) is cut off; beta becomes DC of the majority and changes the configuration.
    net.groups = [1, 0, 0];
    net.settle();
    assert!(net.nodes[1].dc_ready());
    net.submit(2, 1, vec![prop("stonith-enabled", "false")], false);
    net.settle();
    assert!(net.reply(2, 1).unwrap().is_ok());
    // alpha rejoins and is DC again (lowest id) with the older document: it must take beta's.
    net.groups = [0, 0, 0];
    net.settle();
    assert!(net.nodes[0].dc_ready());
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    assert_eq!(
        net.nodes[0].cib().configuration.property("stonith-enabled"),
        Some("false")
    );
}

#[test]
fn a_member_that_missed_updates_catches_up_and_big_documents_cross_in_fragments() {
    let mut net = Net::new();
    net.settle();
    net.groups = [0, 0, 1];
    net.settle();
    // Enough resources that the document needs several fragments.
    for i in 0..300u64 {
        let p = Primitive::new(&format!("rsc{i:03}"), "ocf:heartbeat:Dummy")
            .unwrap()
            .param(
                "state",
                &format!(
                    "/run/resource-agents/dummy-{i:03}-with-a-long-name-{}.state",
                    "x".repeat(200)
                ),
            );
        net.submit(
            0,
            1000 + i,
            vec![CibOp::AddResource {
                resource: Resource::Primitive(p),
            }],
            false,
        );
    }
    net.settle();
    for i in 0..300u64 {
        assert!(net.reply(0, 1000 + i).unwrap().is_ok(), "{:?}", net.reply(0, 1000 + i));
    }
    assert!(net.nodes[0].cib().to_json().len() > 2 * super::super::wire::FRAGMENT_DATA);
    net.groups = [0, 0, 0];
    net.settle();
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    assert_eq!(net.nodes[2].cib().configuration.resources.len(), 300);
}

#[test]
fn garbage_and_messages_from_non_dcs_change_nothing() {
    let mut net = Net::new();
    net.settle();
    let before = net.digests();
    let mut evil = net.nodes[2].cib().clone();
    evil.epoch += 10;
    evil.configuration
        .properties
        .insert("stonith-enabled".into(), "false".into());
    let doc = CibMsg::Document {
        origin_quorate: true,
        cib: Box::new(evil),
    }
    .encode();
    // gamma is not the DC: beta ignores its document.
    let frags = super::super::wire::fragment(1, &doc).unwrap();
    for f in &frags {
        let acts = net.nodes[1].receive(net.now, NodeId(2), f);
        assert!(!acts.iter().any(|a| matches!(a, ReplicaAction::Persist { .. })));
    }
    for junk in [&b""[..], &b"0123456789abcdefXYZ"[..], &[0xffu8; 40][..]] {
        net.nodes[1].receive(net.now, NodeId(0), junk);
    }
    assert!(net.nodes[1].counters().bad_messages >= 2);
    net.settle();
    assert_eq!(net.digests(), before);
}

#[test]
fn random_bytes_and_random_messages_never_panic_or_change_anything() {
    let mut net = Net::new();
    net.settle();
    let before = net.digests();
    let mut rng = crate::cluster::sim::SimRng::new(99);
    for i in 0..2000u64 {
        let len = rng.below(200) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if i % 2 == 0 {
            // Well-framed fragments carrying junk or truncated/mutated real messages.
            let real = CibMsg::Announce {
                version: net.nodes[0].version(),
                digest: "x".into(),
                origin_quorate: true,
            }
            .encode();
            let body = if i % 4 == 0 {
                b.clone()
            } else {
                let mut r = real.clone();
                let at = rng.below(r.len() as u64) as usize;
                r[at] ^= 1 + (rng.next_u64() % 255) as u8;
                r.truncate(r.len() - rng.below(3) as usize);
                r
            };
            if body.is_empty() {
                continue;
            }
            b = super::super::wire::fragment(1_000_000 + i, &body).unwrap().remove(0);
        }
        let to = (i % 3) as usize;
        let from = NodeId(((i + 1) % 3) as u8);
        let acts = net.nodes[to].receive(net.now, from, &b);
        assert!(
            !acts.iter().any(|a| matches!(a, ReplicaAction::Persist { .. })),
            "junk changed node {to}"
        );
    }
    net.settle();
    assert_eq!(net.digests(), before);
}

#[test]
fn a_member_never_takes_a_dc_document_that_loses_to_its_own() {
    let mut net = Net::new();
    net.settle();
    net.submit(1, 1, vec![prop("stonith-enabled", "false")], false);
    net.settle();
    let mine = net.nodes[2].version();
    // An older document from the DC (as if it had not seen gamma's copy): refused, announced.
    let old = initial_cib(&cfg(0).nodes);
    let msg = CibMsg::Document {
        origin_quorate: true,
        cib: Box::new(old),
    }
    .encode();
    let frag = super::super::wire::fragment(77, &msg).unwrap().remove(0);
    let acts = net.nodes[2].receive(net.now, NodeId(0), &frag);
    assert!(!acts.iter().any(|a| matches!(a, ReplicaAction::Persist { .. })));
    assert!(acts
        .iter()
        .any(|a| matches!(a, ReplicaAction::Send { to, .. } if *to == NodeId(0))));
    assert_eq!(net.nodes[2].version(), mine);
}

/// membership-sim (two nodes, two links, seeds 422, 607, 929): a member holding its own copy
/// at a version the DC's log also has (each side of a split made its own 0.N.0) misses the
/// DC's document after the heal. The DC's next update is made against the DC's 0.N.0, does not
/// fit, and the member must then ask for the whole document: asking for "the updates since
/// 0.N.0" brings the same update back, is refused again, and so on without end.
#[test]
fn a_member_whose_copy_diverged_asks_for_the_whole_document() {
    let mut net = Net::new();
    net.settle();
    net.groups = [0, 1, 0];
    net.settle();
    net.submit(1, 1, vec![prop("cluster-name", "beta-alone")], true);
    net.submit(0, 2, vec![prop("cluster-name", "quorate")], false);
    net.settle();
    let (alpha, beta) = (net.nodes[0].version(), net.nodes[1].version());
    assert_eq!(alpha, beta, "both sides made their own {alpha}");
    assert_ne!(net.nodes[0].cib().digest(), net.nodes[1].cib().digest());
    // Heal, losing what alpha and beta say to each other until alpha has synchronised
    // without beta (sync_timeout 500 ms); then a change on alpha sends beta updates made
    // against alpha's copy before any document can reach it.
    net.groups = [0, 0, 0];
    let mut delivered = 0;
    let mut from_beta = Reassembler::default();
    let mut beta_wants = Vec::new();
    for tick in 0..40 {
        if tick == 12 {
            assert!(net.nodes[0].dc_ready());
            net.submit(0, 3, vec![prop("stonith-enabled", "false")], false);
        }
        net.tick(|now, from, to, payload| {
            let between = [from.0, to.0] == [0, 1] || [from.0, to.0] == [1, 0];
            if between && tick < 12 {
                return false;
            }
            delivered += 1;
            assert!(delivered < 2000, "alpha and beta keep exchanging the same update");
            if from.0 == 1 {
                if let Ok(Some(bytes)) = from_beta.push(now, from, payload) {
                    if let Ok(CibMsg::Want { have }) = CibMsg::decode(&bytes) {
                        beta_wants.push(have);
                    }
                }
            }
            true
        });
    }
    let d = net.digests();
    assert!(d.iter().all(|x| *x == d[0]), "not converged: {d:?}");
    assert_eq!(
        net.nodes[1].cib().configuration.property("cluster-name"),
        Some("quorate")
    );
    // Once an update showed the copies apart, beta asked for the whole document, and never
    // again for "the updates since" its own version.
    let first_whole = beta_wants.iter().position(|h| h.is_none());
    assert!(
        first_whole.is_some(),
        "beta never asked for the whole document: {beta_wants:?}"
    );
    assert!(
        beta_wants[first_whole.unwrap()..].iter().all(|h| h.is_none()),
        "{beta_wants:?}"
    );
}
