//! Unit tests of single rules; the simulator (`sim`) covers whole histories.

use super::*;
use crate::replication::wire;

fn fresh(node: u32, secret: &[u8]) -> Node {
    let mut cfg = NodeConfig::new(node, 1 - node, "r0");
    cfg.shared_secret = Some(secret.to_vec());
    let p = Persisted {
        meta: MetaState {
            gi: Generations::just_created(),
            consistent: false,
            up_to_date: false,
            primary: false,
            crashed_primary: false,
        },
        slot: 0,
        size: 1 << 20,
        bitmap: vec![],
    };
    Node::new(cfg, p).0
}

/// Runs both nodes until no message is left; returns every notice.
fn pump(a: &mut Node, b: &mut Node, first: [Vec<Action>; 2]) -> Vec<Notice> {
    let mut notices = Vec::new();
    let mut queues = first;
    loop {
        let mut any = false;
        for i in 0..2 {
            for act in std::mem::take(&mut queues[i]) {
                match act {
                    Action::Send(m) => {
                        any = true;
                        let m = wire::decode(&wire::encode_to_vec(&m)).expect("codec");
                        let dst = if i == 0 { &mut *b } else { &mut *a };
                        let out = dst.step(Event::Received(m));
                        queues[1 - i].extend(out);
                    }
                    Action::Notify(n) => notices.push(n),
                    _ => {}
                }
            }
        }
        if !any {
            return notices;
        }
    }
}

fn connect(a: &mut Node, b: &mut Node) -> Vec<Notice> {
    a.step(Event::Connect { discard_my_data: false });
    b.step(Event::Connect { discard_my_data: false });
    let qa = a.step(Event::TransportUp);
    let qb = b.step(Event::TransportUp);
    pump(a, b, [qa, qb])
}

#[test]
fn handshake_with_right_secret_connects_empty_devices() {
    let (mut a, mut b) = (fresh(0, b"s"), fresh(1, b"s"));
    let n = connect(&mut a, &mut b);
    assert!(n.contains(&Notice::Connected {
        decision: SyncDecision::BothEmpty
    }));
    assert_eq!(a.status().conn, ConnState::Connected);
    assert_eq!(b.status().repl, ReplState::Established);
}

#[test]
fn wrong_secret_goes_standalone() {
    let (mut a, mut b) = (fresh(0, b"s"), fresh(1, b"other"));
    let n = connect(&mut a, &mut b);
    assert!(n.contains(&Notice::AuthFailed));
    assert_eq!(a.status().conn, ConnState::StandAlone);
}

#[test]
fn secondary_refuses_writes_and_promotion_needs_force() {
    let mut a = fresh(0, b"s");
    let out = a.step(Event::Write {
        req: 1,
        offset: 0,
        len: 4096,
        data: vec![0; 4096],
        flags: 0,
    });
    assert!(out.contains(&Action::Complete {
        req: 1,
        result: Err(ReqError::NotPrimary),
        peer_durable: false
    }));
    let out = a.step(Event::Promote { force: false });
    assert!(matches!(out.as_slice(), [Action::Notify(Notice::PromoteRefused(_))]));
    let out = a.step(Event::Promote { force: true });
    assert!(out.iter().any(|x| matches!(x, Action::PersistMeta(_))));
    assert_eq!(a.status().role, Role::Primary);
}

#[test]
fn peer_primary_blocks_promotion_and_c_write_waits_for_write_ack() {
    let (mut a, mut b) = (fresh(0, b"s"), fresh(1, b"s"));
    connect(&mut a, &mut b);
    let qa = a.step(Event::Promote { force: true });
    pump(&mut a, &mut b, [qa, vec![]]);
    assert_eq!(a.status().role, Role::Primary);
    let out = b.step(Event::Promote { force: true });
    assert!(matches!(out.as_slice(), [Action::Notify(Notice::PromoteRefused(_))]));
    // A protocol C write: local completion alone does not complete it.
    let out = a.step(Event::Write {
        req: 9,
        offset: 0,
        len: 4096,
        data: vec![1; 4096],
        flags: 0,
    });
    let id = out
        .iter()
        .find_map(|x| match x {
            Action::Write { id, .. } => Some(*id),
            _ => None,
        })
        .expect("local write");
    let data = out
        .iter()
        .find_map(|x| match x {
            Action::Send(m @ Message::Data(_)) => Some(m.clone()),
            _ => None,
        })
        .expect("replicated");
    let done = a.step(Event::IoDone { id, result: Ok(vec![]) });
    assert!(!done.iter().any(|x| matches!(x, Action::Complete { .. })));
    let sec = b.step(Event::Received(data));
    let sid = sec
        .iter()
        .find_map(|x| match x {
            Action::Write { id, .. } => Some(*id),
            _ => None,
        })
        .expect("secondary writes");
    let ack = b.step(Event::IoDone {
        id: sid,
        result: Ok(vec![]),
    });
    assert_eq!(ack, vec![Action::Send(Message::WriteAck { seq: 1 })]);
    let fin = a.step(Event::Received(Message::WriteAck { seq: 1 }));
    assert!(fin.contains(&Action::Complete {
        req: 9,
        result: Ok(()),
        peer_durable: true
    }));
}
