use super::*;
use crate::cluster::sim::SimRng;

fn key() -> AuthKey {
    AuthKey::new(&b"a long shared secret"[..]).unwrap()
}

fn sample() -> Heartbeat {
    Heartbeat {
        cluster: cluster_id("hacluster"),
        sender: NodeId(2),
        link: 1,
        incarnation: 0x0102_0304_0506_0708,
        seq: 42,
        leaving: false,
        quorate: true,
        view: NodeSet(0b111),
        cib: CibVersion {
            admin_epoch: 1,
            epoch: 7,
            num_updates: 99,
        },
        dc: Some(NodeId(0)),
        payload_kind: PayloadKind::Cib,
        payload: b"{\"cib\":1}".to_vec(),
    }
}

#[test]
fn round_trip() {
    let k = key();
    let c = cluster_id("hacluster");
    let mut hb = sample();
    let b = encode(&hb, &k);
    assert_eq!(b.len(), MIN_PACKET + hb.payload.len());
    assert_eq!(decode(&b, &k, c), Ok(hb.clone()));
    hb.dc = None;
    hb.leaving = true;
    hb.quorate = false;
    hb.payload = vec![];
    hb.payload_kind = PayloadKind::None;
    let b = encode(&hb, &k);
    assert_eq!(b.len(), MIN_PACKET);
    assert_eq!(decode(&b, &k, c), Ok(hb));
}

#[test]
fn layout_is_fixed() {
    let b = encode(&sample(), &key());
    assert_eq!(&b[0..4], b"HBHB");
    assert_eq!(b[4], 1);
    assert_eq!(b[5], FLAG_QUORATE | FLAG_HAS_DC);
    assert_eq!(b[6], 2);
    assert_eq!(b[7], 1);
    assert_eq!(&b[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(u64::from_be_bytes(b[24..32].try_into().unwrap()), 42);
    assert_eq!(u64::from_be_bytes(b[32..40].try_into().unwrap()), 7);
    assert_eq!(u32::from_be_bytes(b[40..44].try_into().unwrap()), 1);
    assert_eq!(u64::from_be_bytes(b[44..52].try_into().unwrap()), 7);
    assert_eq!(u64::from_be_bytes(b[52..60].try_into().unwrap()), 99);
    assert_eq!(b[60], 0);
    assert_eq!(b[61], 1);
    assert_eq!(u32::from_be_bytes(b[64..68].try_into().unwrap()), 9);
    assert_eq!(&b[68..77], b"{\"cib\":1}");
}

#[test]
fn length_magic_version_then_mac() {
    let k = key();
    let c = cluster_id("hacluster");
    let b = encode(&sample(), &k);
    assert_eq!(decode(&b[..MIN_PACKET - 1], &k, c), Err(DropReason::Truncated));
    assert_eq!(decode(&[], &k, c), Err(DropReason::Truncated));
    assert_eq!(decode(&vec![0u8; MAX_PACKET + 1], &k, c), Err(DropReason::Oversized));
    let mut x = b.clone();
    x[0] ^= 1;
    assert_eq!(decode(&x, &k, c), Err(DropReason::BadMagic));
    let mut x = b.clone();
    x[4] = 2;
    assert_eq!(decode(&x, &k, c), Err(DropReason::BadVersion));
    // Truncating a valid packet moves the MAC: forged, never a short read.
    assert_eq!(decode(&b[..b.len() - 1], &k, c), Err(DropReason::Forged));
    // Every single-bit flip past the version byte is caught by the MAC.
    for i in 5..b.len() {
        for bit in 0..8 {
            let mut x = b.clone();
            x[i] ^= 1 << bit;
            assert_eq!(decode(&x, &k, c), Err(DropReason::Forged), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn wrong_key_and_wrong_cluster() {
    let c = cluster_id("hacluster");
    let b = encode(&sample(), &key());
    let other = AuthKey::new(&b"another secret"[..]).unwrap();
    assert_eq!(decode(&b, &other, c), Err(DropReason::Forged));
    assert_eq!(decode(&b, &key(), cluster_id("other")), Err(DropReason::ForeignCluster));
    assert!(AuthKey::new(Vec::new()).is_err());
    assert_eq!(format!("{:?}", key()), "AuthKey(20 bytes)");
}

/// Authentic packets with out-of-range fields (as a buggy or hostile key holder could send).
#[test]
fn authentic_but_malformed() {
    let k = key();
    let c = cluster_id("hacluster");
    let reseal = |mut b: Vec<u8>| {
        let n = b.len() - MAC_LEN;
        b.truncate(n);
        let mut m = k.mac();
        m.update(&b);
        b.extend_from_slice(&m.finalize().into_bytes());
        b
    };
    let good = encode(&sample(), &k);
    for (at, val) in [
        (5usize, 0x80u8),
        (6, 64),
        (7, 8),
        (61, 3),
        (62, 1),
        (63, 1),
        (60, 64),
        (67, 10),
    ] {
        let mut x = good.clone();
        x[at] = val;
        assert_eq!(decode(&reseal(x), &k, c), Err(DropReason::Malformed), "offset {at}");
    }
}

#[test]
fn seeded_garbage_never_panics() {
    let k = key();
    let c = cluster_id("hacluster");
    let good = encode(&sample(), &k);
    for seed in 0..2000u64 {
        let mut r = SimRng::new(seed);
        let len = r.below(200) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        if r.chance(0.5) && len >= 5 {
            g[..4].copy_from_slice(b"HBHB");
            g[4] = 1;
        }
        assert!(decode(&g, &k, c).is_err(), "seed {seed}");
        // Mutations of a valid packet: flips, truncation, extension.
        let mut m = good.clone();
        for _ in 0..1 + r.below(4) {
            match r.below(3) {
                0 => {
                    let i = r.below(m.len() as u64) as usize;
                    m[i] ^= 1 + (r.next_u64() as u8 % 255);
                }
                1 => m.truncate(r.below(m.len() as u64) as usize),
                _ => m.extend((0..r.below(40)).map(|_| r.next_u64() as u8)),
            }
            if m.is_empty() {
                break;
            }
        }
        if m != good {
            assert!(decode(&m, &k, c).is_err(), "seed {seed}");
        }
    }
}

#[test]
fn replay_guard() {
    let mut g = ReplayGuard::default();
    assert_eq!(g.incarnation(), None);
    assert_eq!(g.check(10, 5), Ok(Fresh::First));
    assert_eq!(g.check(10, 5), Err(DropReason::Replayed));
    assert_eq!(g.check(10, 7), Ok(Fresh::Newest));
    // 6 arrives late over the other link: accepted once.
    assert_eq!(g.check(10, 6), Ok(Fresh::Late));
    assert_eq!(g.check(10, 6), Err(DropReason::Replayed));
    assert_eq!(g.check(10, 4), Ok(Fresh::Late));
    assert_eq!(g.check(10, 7 + REPLAY_WINDOW), Ok(Fresh::Newest));
    assert_eq!(g.check(10, 7), Err(DropReason::Replayed), "outside the window");
    assert_eq!(g.check(10, 8), Ok(Fresh::Late), "inside the window, never seen");
    assert_eq!(g.check(9, 1000), Err(DropReason::StaleIncarnation));
    assert_eq!(g.check(11, 0), Ok(Fresh::NewIncarnation { previous: 10 }));
    assert_eq!(g.incarnation(), Some(11));
    assert_eq!(g.check(10, 1 << 40), Err(DropReason::StaleIncarnation));
    assert_eq!(g.check(11, 1 << 40), Ok(Fresh::Newest));
    assert_eq!(g.check(11, 0), Err(DropReason::Replayed));
}

#[test]
fn counters() {
    let mut c = DropCounters::default();
    c.count(DropReason::Forged);
    c.count(DropReason::Forged);
    c.count(DropReason::Replayed);
    assert_eq!((c.forged, c.replayed, c.total()), (2, 1, 3));
}
