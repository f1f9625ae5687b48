//! Unit tests of single rules; the simulator (`sim`) covers whole histories.

use super::*;
use crate::replication::wire;
use std::collections::VecDeque;

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
        data: bytes::Bytes::from(vec![0; 4096]),
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
        data: bytes::Bytes::from(vec![1; 4096]),
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
    let done = a.step(Event::IoDone {
        id,
        result: Ok(bytes::Bytes::from(vec![])),
    });
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
        result: Ok(bytes::Bytes::from(vec![])),
    });
    assert_eq!(ack, vec![Action::Send(Message::WriteAck { seq: 1 })]);
    let fin = a.step(Event::Received(Message::WriteAck { seq: 1 }));
    assert!(fin.contains(&Action::Complete {
        req: 9,
        result: Ok(()),
        peer_durable: true
    }));
}

// ---- data-driven handshake table (testdata/handshake.txt)

const HANDSHAKE_TABLE: &str = include_str!("../testdata/handshake.txt");

fn hex(s: &str) -> u64 {
    if s == "-" {
        0
    } else {
        u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad uuid {s:?}"))
    }
}

fn parse_policy(words: &[&str]) -> AfterSbPolicy {
    let mut p = AfterSbPolicy::default();
    for w in words {
        match w.split_once('=') {
            Some(("0pri", v)) => p.pri0 = v.parse().unwrap(),
            Some(("1pri", v)) => p.pri1 = v.parse().unwrap(),
            Some(("2pri", v)) => p.pri2 = v.parse().unwrap(),
            None if *w == "asbp" => p.always_asbp = true,
            _ => panic!("bad policy word {w:?}"),
        }
    }
    p
}

/// Builds node `id` from a table line; returns it and whether to connect with discard-my-data.
fn table_node(id: u32, words: &[&str], policy: &AfterSbPolicy) -> (Node, bool) {
    let mut cfg = NodeConfig::new(id, 1 - id, "r0");
    cfg.after_sb = policy.clone();
    let mut meta = MetaState {
        gi: Generations::just_created(),
        consistent: true,
        up_to_date: true,
        primary: false,
        crashed_primary: false,
    };
    let (mut primary, mut changes, mut discard, mut busy, mut open) = (false, 0u64, false, false, false);
    for w in words {
        match w.split_once('=') {
            Some(("cur", v)) => meta.gi.current = hex(v),
            Some(("bm", v)) => meta.gi.bitmap[0] = hex(v),
            Some(("hist", v)) => {
                for (i, h) in v.split(',').enumerate() {
                    meta.gi.history[i] = hex(h);
                }
            }
            Some(("role", "primary")) => primary = true,
            Some(("disk", "outdated")) => meta.up_to_date = false,
            Some(("disk", "inconsistent")) => (meta.consistent, meta.up_to_date) = (false, false),
            Some(("changes", v)) => changes = v.parse().unwrap(),
            None if *w == "crashed" => meta.crashed_primary = true,
            None if *w == "discard" => discard = true,
            None if *w == "busy" => busy = true,
            None if *w == "open" => open = true,
            _ => panic!("bad node word {w:?}"),
        }
    }
    if hex("4") == meta.gi.current {
        (meta.consistent, meta.up_to_date) = (false, false);
    }
    let size = 1u64 << 20;
    let mut bitmap = vec![0u64; (size / 4096).div_ceil(64) as usize];
    for b in 0..changes {
        bitmap[(b / 64) as usize] |= 1 << (b % 64);
    }
    let (mut n, _) = Node::new(
        cfg,
        Persisted {
            meta,
            slot: 0,
            size,
            bitmap,
        },
    );
    if primary {
        // Set the role directly: a disconnected promotion would start a new generation.
        n.role = Role::Primary;
        n.meta.primary = true;
    }
    if open {
        assert!(n.step(Event::HeldOpen(true)).is_empty());
    }
    if busy {
        let out = n.step(Event::Write {
            req: 1,
            offset: 0,
            len: 4096,
            data: bytes::Bytes::from(vec![7; 4096]),
            flags: 0,
        });
        assert!(
            out.iter().any(|a| matches!(a, Action::Write { .. })),
            "busy write not issued"
        );
    }
    (n, discard)
}

fn describe(n: &Notice) -> Option<String> {
    use SyncDecision::*;
    let dec = |d: &SyncDecision| match d {
        BothEmpty => "both-empty",
        FullSyncSource => "full-source",
        FullSyncTarget => "full-target",
        NoSync => "no-sync",
        BitmapSource => "bitmap-source",
        BitmapTarget => "bitmap-target",
        SplitBrainCommonAncestor => "split-brain common",
        SplitBrainUnrelated => "split-brain unrelated",
        UnrelatedData => "unrelated",
    };
    Some(match n {
        Notice::Connected { decision } => format!("connected {}", dec(decision)),
        Notice::SplitBrainDetected { decision } => dec(decision).to_string(),
        Notice::SplitBrainResolved { rule, discard_mine } => format!(
            "resolved by {rule} ({})",
            if *discard_mine { "discard mine" } else { "discard peer" }
        ),
        Notice::SplitBrain { decision } => format!("standalone {}", dec(decision)),
        Notice::PriLostAfterSb => "pri-lost-after-sb".into(),
        Notice::Demoted => "demoted".into(),
        Notice::Refused(_) => "refused".into(),
        Notice::ConnectionLost { reason } if reason.contains("connection lost") => "connection lost".into(),
        _ => return None,
    })
}

/// Connects the two nodes and delivers messages (in both directions, in order)
/// until none is left; a node that closes the transport stops receiving, and its
/// peer then gets TransportLost. Returns each node's notices.
fn run_handshake(nodes: &mut [Node; 2], discard: [bool; 2]) -> [Vec<Notice>; 2] {
    let mut queues: [VecDeque<Message>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut notices: [Vec<Notice>; 2] = [vec![], vec![]];
    let mut closed = [false; 2];
    let mut lost_sent = [false; 2];
    let mut handle = |i: usize, acts: Vec<Action>, queues: &mut [VecDeque<Message>; 2], closed: &mut [bool; 2]| {
        for a in acts {
            match a {
                Action::Send(m) if !closed[i] => {
                    queues[1 - i].push_back(wire::decode(&wire::encode_to_vec(&m)).expect("codec"))
                }
                Action::CloseTransport => closed[i] = true,
                Action::Notify(n) => notices[i].push(n),
                _ => {}
            }
        }
    };
    for (i, n) in nodes.iter_mut().enumerate() {
        let a = n.step(Event::Connect {
            discard_my_data: discard[i],
        });
        handle(i, a, &mut queues, &mut closed);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        let a = n.step(Event::TransportUp);
        handle(i, a, &mut queues, &mut closed);
    }
    loop {
        let mut any = false;
        for i in 0..2 {
            if let Some(m) = queues[i].pop_front() {
                any = true;
                if !closed[i] {
                    let a = nodes[i].step(Event::Received(m));
                    handle(i, a, &mut queues, &mut closed);
                }
            }
        }
        if !any {
            for i in 0..2 {
                if closed[1 - i] && !closed[i] && !lost_sent[i] {
                    lost_sent[i] = true;
                    any = true;
                    let a = nodes[i].step(Event::TransportLost);
                    handle(i, a, &mut queues, &mut closed);
                }
            }
        }
        if !any {
            break;
        }
    }
    notices
}

fn run_case(lines: &[&str]) -> String {
    let (mut a, mut b, mut pol, mut bpol) = (None, None, AfterSbPolicy::default(), None);
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w[0] {
            "a" => a = Some(w[1..].to_vec()),
            "b" => b = Some(w[1..].to_vec()),
            "policy" => pol = parse_policy(&w[1..]),
            "b-policy" => bpol = Some(parse_policy(&w[1..])),
            other => panic!("bad line start {other:?}"),
        }
    }
    let (na, da) = table_node(0, &a.expect("a line"), &pol);
    let (nb, db) = table_node(1, &b.expect("b line"), bpol.as_ref().unwrap_or(&pol));
    let mut nodes = [na, nb];
    let notices = run_handshake(&mut nodes, [da, db]);
    let mut out = String::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let d: Vec<String> = notices[i].iter().filter_map(describe).collect();
        let s = nodes[i].status();
        out += &format!("{name}: {} => {} {} {}\n", d.join(", "), s.conn, s.role, s.disk);
    }
    out
}

#[test]
fn handshake_table() {
    let rewrite = std::env::var_os("REWRITE").is_some();
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let mut cases = 0;
    let all: Vec<&str> = HANDSHAKE_TABLE.lines().collect();
    let mut i = 0;
    while i < all.len() {
        let line = all[i];
        if !line.starts_with("case ") {
            rewritten += line;
            rewritten.push('\n');
            i += 1;
            continue;
        }
        let start = i;
        while all[i] != "----" {
            i += 1;
        }
        let input = &all[start + 1..i];
        i += 1;
        let exp_start = i;
        while i < all.len() && !all[i].trim().is_empty() {
            i += 1;
        }
        let expected: String = all[exp_start..i].iter().map(|l| format!("{l}\n")).collect();
        let got = run_case(input);
        cases += 1;
        if got != expected {
            failures.push(format!("{}\n--- expected\n{expected}--- got\n{got}", all[start]));
        }
        for l in &all[start..exp_start] {
            rewritten += l;
            rewritten.push('\n');
        }
        rewritten += &got;
    }
    if rewrite {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/replication/testdata/handshake.txt");
        std::fs::write(path, rewritten).expect("rewrite");
        return;
    }
    assert!(cases >= 25, "only {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
