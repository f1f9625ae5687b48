use super::*;

const T: Timing = Timing {
    keepalive: 100,
    warntime: 300,
    deadtime: 500,
    initdead: 1000,
};

fn cfg(local: u8, n: u8, links: u8, secret: &[u8]) -> MembershipConfig {
    let ids: NodeSet = (0..n).map(NodeId).collect();
    MembershipConfig {
        cluster_name: "hacluster".into(),
        key: AuthKey::new(secret).unwrap(),
        local: NodeId(local),
        nodes: ids
            .iter()
            .map(|id| NodeSpec {
                id,
                name: format!("n{}", id.0),
            })
            .collect(),
        links,
        timing: T,
        quorum: QuorumConfig::majority(ids),
        no_quorum_policy: NoQuorumPolicy::Stop,
    }
}

/// A lossless instant network of `n` nodes; `cut[link]` silences a link.
struct Net {
    nodes: Vec<Option<Membership>>,
    cut: Vec<bool>,
    log: Vec<(NodeId, Action)>,
}

impl Net {
    fn new(n: u8, links: u8) -> Net {
        Net {
            nodes: (0..n)
                .map(|i| Some(Membership::new(cfg(i, n, links, b"k"), 1, 0).unwrap()))
                .collect(),
            cut: vec![false; links as usize],
            log: Vec::new(),
        }
    }

    fn run_until(&mut self, until: Millis) {
        let mut now = 0;
        while now <= until {
            let mut q: Vec<(NodeId, Action)> = Vec::new();
            for (i, m) in self.nodes.iter_mut().enumerate() {
                if let Some(m) = m {
                    q.extend(m.tick(now).into_iter().map(|a| (NodeId(i as u8), a)));
                }
            }
            while let Some((from, a)) = q.pop() {
                if let Action::Send { to, link, packet } = &a {
                    if !self.cut[*link as usize] {
                        if let Some(m) = self.nodes[to.0 as usize].as_mut() {
                            q.extend(m.receive(now, *link, packet).into_iter().map(|a| (*to, a)));
                        }
                    }
                } else {
                    self.log.push((from, a));
                }
            }
            now += 10;
        }
    }

    fn m(&self, i: u8) -> &Membership {
        self.nodes[i as usize].as_ref().unwrap()
    }
}

#[test]
fn config_is_validated() {
    let mut c = cfg(0, 3, 1, b"k");
    assert!(c.validate().is_ok());
    c.timing.deadtime = 150;
    assert!(c.validate().unwrap_err().contains("deadtime"));
    let mut c = cfg(0, 3, 1, b"k");
    c.timing.initdead = 400;
    assert!(c.validate().unwrap_err().contains("initdead"));
    let mut c = cfg(0, 3, 1, b"k");
    c.local = NodeId(9);
    assert!(c.validate().is_err());
    let mut c = cfg(0, 3, 0, b"k");
    assert!(c.validate().is_err());
    c.links = 9;
    assert!(c.validate().is_err());
}

#[test]
fn three_nodes_join_elect_and_detect_a_crash() {
    let mut net = Net::new(3, 1);
    net.run_until(300);
    for i in 0..3 {
        assert_eq!(net.m(i).view(), NodeSet(0b111));
        assert!(net.m(i).quorate());
        assert_eq!(net.m(i).dc(), Some(NodeId(0)), "node {i}");
    }
    // Node 0 crashes at ~300: the others drop it within deadtime and, after the DC hold-off
    // (two heartbeat intervals, not another deadtime), elect node 1.
    net.nodes[0] = None;
    net.run_until(300 + T.deadtime + 20);
    assert_eq!(net.m(1).view(), NodeSet(0b110));
    assert_eq!(net.m(1).peer_state(NodeId(0)), Some(PeerState::Dead));
    assert!(net.m(1).quorate());
    assert_eq!(net.m(1).dc(), None, "no new DC before the hold-off");
    net.run_until(300 + T.deadtime + 2 * T.keepalive + 2 * T.keepalive);
    assert_eq!(net.m(1).dc(), Some(NodeId(1)));
    assert_eq!(net.m(2).dc(), Some(NodeId(1)));
}

#[test]
fn restart_with_new_incarnation_is_reported() {
    let mut net = Net::new(3, 1);
    net.run_until(300);
    net.nodes[2] = Some(Membership::new(cfg(2, 3, 1, b"k"), 2, 300).unwrap());
    net.run_until(600);
    assert!(net.log.iter().any(|(by, a)| *by == NodeId(0)
        && *a
            == Action::NodeRestarted {
                node: NodeId(2),
                incarnation: 2
            }));
    assert_eq!(net.m(0).view(), NodeSet(0b111));
    // The old life's packets are now stale.
    let old = Membership::new(cfg(2, 3, 1, b"k"), 1, 0).unwrap().tick(700);
    let Some(Action::Send { packet, .. }) = old.into_iter().find(|a| matches!(a, Action::Send { .. })) else {
        panic!("no heartbeat")
    };
    let m0 = net.nodes[0].as_mut().unwrap();
    let before = m0.dropped().stale_incarnation;
    assert!(m0.receive(700, 0, &packet).is_empty());
    assert_eq!(m0.dropped().stale_incarnation, before + 1);
}

#[test]
fn orderly_leave_is_immediate() {
    let mut net = Net::new(3, 1);
    net.run_until(300);
    let acts = net.nodes[2].as_mut().unwrap().leave(300);
    for a in acts {
        if let Action::Send { to, link, packet } = a {
            net.nodes[to.0 as usize].as_mut().unwrap().receive(300, link, &packet);
        }
    }
    net.nodes[2] = None;
    assert_eq!(net.m(0).view(), NodeSet(0b011));
    assert_eq!(net.m(0).peer_state(NodeId(2)), Some(PeerState::Left));
}

#[test]
fn a_wrong_key_is_never_admitted() {
    let mut net = Net::new(3, 1);
    net.nodes[2] = Some(Membership::new(cfg(2, 3, 1, b"wrong"), 1, 0).unwrap());
    net.run_until(2000);
    assert_eq!(net.m(0).view(), NodeSet(0b011));
    assert_eq!(net.m(2).view(), NodeSet(0b100));
    assert!(!net.m(2).quorate());
    assert_eq!(net.m(2).dc(), None);
    assert!(net.m(0).dropped().forged > 10);
    assert_eq!(net.m(0).peer_state(NodeId(2)), Some(PeerState::Dead), "after initdead");
}

#[test]
fn one_of_two_links_cut_keeps_the_cluster_whole() {
    let mut net = Net::new(3, 2);
    net.run_until(300);
    assert!(net.m(0).link_up(NodeId(1), 0) && net.m(0).link_up(NodeId(1), 1));
    net.cut[0] = true;
    net.run_until(300 + T.deadtime + 200);
    assert_eq!(net.m(0).view(), NodeSet(0b111));
    assert!(!net.m(0).link_up(NodeId(1), 0) && net.m(0).link_up(NodeId(1), 1));
    assert!(net.log.iter().any(|(_, a)| *a
        == Action::LinkChanged {
            node: NodeId(1),
            link: 0,
            up: false
        }));
    let st = net.m(0).status(900);
    assert_eq!(st.peers[0].links_up, vec![false, true]);
    assert_eq!(st.dc, Some(0));
    assert!(serde_json::to_string(&st).unwrap().contains("\"state\":\"alive\""));
}

#[test]
fn initdead_keeps_unheard_nodes_pending_and_defers_the_dc() {
    // Two of three nodes up: quorate at once, but no DC until initdead has passed.
    let mut net = Net::new(3, 1);
    net.nodes[2] = None;
    net.run_until(500);
    assert!(net.m(0).quorate());
    assert_eq!(net.m(0).peer_state(NodeId(2)), Some(PeerState::Pending));
    assert_eq!(net.m(0).dc(), None);
    assert!(!net.m(0).settled());
    net.run_until(T.initdead + 50);
    assert_eq!(net.m(0).peer_state(NodeId(2)), Some(PeerState::Dead));
    assert_eq!(net.m(0).dc(), Some(NodeId(0)));
    assert_eq!(net.m(1).dc(), Some(NodeId(0)));
}

#[test]
fn late_heartbeats_are_logged() {
    let mut a = Membership::new(cfg(0, 2, 1, b"k"), 1, 0).unwrap();
    let mut b = Membership::new(cfg(1, 2, 1, b"k"), 1, 0).unwrap();
    let first = b.tick(0);
    let second = b.tick(100);
    let pkt = |acts: Vec<Action>| match acts.into_iter().find(|x| matches!(x, Action::Send { .. })) {
        Some(Action::Send { packet, .. }) => packet,
        _ => panic!("no send"),
    };
    a.receive(0, 0, &pkt(first));
    let acts = a.receive(400, 0, &pkt(second));
    assert!(acts
        .iter()
        .any(|x| matches!(x, Action::Log { level: Level::Warn, message } if message.contains("late heartbeat"))));
}

#[test]
fn garbage_and_own_packets_change_nothing() {
    let mut a = Membership::new(cfg(0, 3, 1, b"k"), 1, 0).unwrap();
    let own = a.tick(0);
    for act in own {
        if let Action::Send { packet, .. } = act {
            assert!(a.receive(1, 0, &packet).is_empty());
        }
    }
    assert!(a.receive(1, 0, b"short").is_empty());
    assert!(a.receive(1, 0, &[0u8; 200]).is_empty());
    assert_eq!(a.dropped().truncated, 1);
    assert_eq!(a.dropped().bad_magic, 1);
    assert_eq!(a.view(), NodeSet(1));
    assert!(a.poll_at() >= 1);
}

#[test]
fn losing_a_node_that_is_not_the_dc_keeps_the_dc_without_a_holdoff() {
    let mut net = Net::new(3, 1);
    net.run_until(300);
    assert_eq!(net.m(1).dc(), Some(NodeId(0)));
    // Node 2 crashes at ~300: the survivors drop it within deadtime and name node 0 again at
    // once (views agree a heartbeat later), not after another deadtime.
    net.nodes[2] = None;
    net.log.clear();
    net.run_until(300 + T.deadtime + 3 * T.keepalive);
    for i in 0..2 {
        assert_eq!(net.m(i).view(), NodeSet(0b011), "node {i}");
        assert_eq!(net.m(i).dc(), Some(NodeId(0)), "node {i}");
    }
}

#[test]
fn a_loss_right_after_start_up_does_not_wait_for_initdead() {
    let mut net = Net::new(3, 1);
    // Everyone heard everyone well before initdead (1000 ms).
    net.run_until(150);
    assert_eq!(net.m(0).dc(), Some(NodeId(0)));
    net.nodes[2] = None;
    net.run_until(150 + T.deadtime + 3 * T.keepalive);
    const { assert!(150 + T.deadtime + 3 * T.keepalive < T.initdead) };
    assert_eq!(net.m(1).view(), NodeSet(0b011));
    assert_eq!(net.m(0).dc(), Some(NodeId(0)));
    assert_eq!(net.m(1).dc(), Some(NodeId(0)));
}
