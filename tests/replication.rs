//! Two hablockd processes replicating r0 (alpha on 127.0.0.1, beta on 127.0.0.2): full
//! sync, byte-for-byte comparison, a secondary stopped mid-write (only dirty blocks
//! resync), a cut link, and SIGKILL of the primary with every acknowledged write checked.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAST_NET: &str = "ping_interval = \"100ms\"\ntimeout = \"600ms\"\nconnect_interval = \"100ms\"\n";

fn in_sync(st: &serde_json::Value) -> bool {
    let p = peer(st);
    p["connection"] == "Connected" && p["replication"] == "Established" && p["out_of_sync"] == 0
}

fn data_size(n: &Node) -> usize {
    resource_status(n)["resources"][0]["size"].as_u64().unwrap() as usize
}

/// The data areas of both backing files (internal metadata at the end excluded).
fn assert_same_data(a: &Node, b: &Node, size: usize) {
    let da = std::fs::read(&a.disk).unwrap();
    let db = std::fs::read(&b.disk).unwrap();
    let first_diff = (0..size).step_by(4096).find(|&o| da[o..o + 4096] != db[o..o + 4096]);
    assert!(
        first_diff.is_none(),
        "replicas differ at byte {:?}\nalpha log:\n{}\nbeta log:\n{}",
        first_diff,
        a.log(),
        b.log()
    );
}

#[test]
fn two_nodes_sync_and_replicate_byte_for_byte() {
    let (mut a, mut b) = synced_pair(NodeOptions {
        resource_extra: FAST_NET.into(),
        ..Default::default()
    });
    assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");
    assert_eq!(b.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Primary");
    assert_eq!(a.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");
    assert_eq!(a.hbadm_ok(&["cstate", "r0"]).trim(), "Connected");
    let text = a.hbadm_ok(&["status", "r0"]);
    assert!(
        text.contains("beta role:Secondary connection:Connected") && text.contains("replication:Established"),
        "{text}"
    );
    // Never two Primaries: beta's promotion is refused while alpha is Primary.
    let out = b.hbadm(&["primary", "r0"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("Primary"), "{err}");
    println!("beta primary while alpha is Primary: {}", err.trim());
    // A Secondary refuses writers (DRBD: only the Primary may be opened read-write).
    let info = ok(Command::new("nbdinfo").arg("--json").arg(b.uri()));
    assert!(info.contains("\"is_read_only\": true"), "{info}");

    let size = data_size(&a);
    // One request bigger than a peer message (the kernel's NBD client sends such).
    let big = random_bytes(10, 5 << 20);
    let mut raw = RawNbd::connect(a.port, "r0");
    assert_eq!(
        raw.request(1, 1, 40 << 20, big.len() as u32, &big),
        0,
        "5 MiB write refused"
    );
    drop(raw);
    let src = a.path("in.bin");
    std::fs::write(&src, random_bytes(11, 24 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(a.uri()));
    // Protocol C: what nbdcopy saw acknowledged is on beta's disk already.
    wait_status(&a, "in sync", Duration::from_secs(10), in_sync);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    assert_same_data(&a, &b, size);
}

#[test]
fn a_secondary_stopped_mid_write_resyncs_only_what_changed() {
    let (mut a, mut b) = synced_pair(NodeOptions {
        resource_extra: FAST_NET.into(),
        ..Default::default()
    });
    let size = data_size(&a);
    // A writer keeps writing 256 KiB requests over the first 16 MiB until told to
    // stop; beta is killed while it runs, and it goes on for a while after.
    let stop = Arc::new(AtomicBool::new(false));
    let (port, st) = (a.port, stop.clone());
    let writer = std::thread::spawn(move || {
        let mut raw = RawNbd::connect(port, "r0");
        let chunk = random_bytes(12, 256 << 10);
        let mut i = 0u64;
        while !st.load(Ordering::SeqCst) {
            let err = raw.request(1, i, (i % 64) * (256 << 10), chunk.len() as u32, &chunk);
            assert_eq!(err, 0, "write {i} failed");
            i += 1;
        }
        i
    });
    std::thread::sleep(Duration::from_millis(150));
    b.kill();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writes must go on without the peer");
    println!("{writes} writes of 256 KiB, beta killed after 150 ms");
    let st = resource_status(&a);
    let oos = peer(&st)["out_of_sync"].as_u64().unwrap();
    assert!(oos > 0 && oos <= 16 << 20, "out of sync after the peer left: {oos}");
    b.start();
    wait_status(&a, "resynced", Duration::from_secs(60), in_sync);
    let resynced: Vec<String> = b
        .log()
        .lines()
        .filter(|l| l.contains("resync started"))
        .map(|l| l.to_string())
        .collect();
    let last = resynced.last().expect("beta logged its resync");
    println!(
        "secondary killed mid-write: {} out of sync of {} MiB device; beta: {last}",
        oos,
        size >> 20
    );
    assert!(!last.contains(&format!("{} MiB", size >> 20)), "a full resync: {last}");
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    assert_same_data(&a, &b, size);
}

#[test]
fn a_cut_link_is_noticed_and_healing_it_resyncs() {
    let (mut a, mut b) = synced_pair(NodeOptions {
        resource_extra: FAST_NET.into(),
        ..Default::default()
    });
    let size = data_size(&a);
    let Some(cut) = LinkCut::new("a_cut_link_is_noticed_and_healing_it_resyncs", replication_port(&a)) else {
        return;
    };
    // Protocol C writes block until the timeout notices the dead link, then go on.
    let src = a.path("in.bin");
    std::fs::write(&src, random_bytes(13, 8 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(a.uri()));
    wait_status(&a, "link loss noticed", Duration::from_secs(10), |st| {
        peer(st)["connection"] == "Connecting" && peer(st)["out_of_sync"].as_u64().unwrap() >= 8 << 20
    });
    wait_status(&b, "link loss noticed", Duration::from_secs(10), |st| {
        peer(st)["connection"] == "Connecting"
    });
    assert_eq!(b.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    drop(cut);
    wait_status(&a, "reconnected and resynced", Duration::from_secs(60), in_sync);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    assert_same_data(&a, &b, size);
}

/// An NBD writer with several requests in flight that records which writes were
/// acknowledged. Every write goes to a distinct 4 KiB block, filled with its stamp.
struct AckLog {
    acked: Mutex<HashMap<u64, u64>>,
}

fn block_of(stamp: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(4096);
    while v.len() < 4096 {
        v.extend_from_slice(&stamp.to_le_bytes());
    }
    v
}

fn write_until_error(port: u16, blocks: Vec<u64>, log: Arc<AckLog>, depth: usize) {
    let mut s = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(_) => return,
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = [0u8; 18];
    if s.read_exact(&mut hello).is_err() {
        return;
    }
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&2u32.to_be_bytes());
    opt.extend_from_slice(b"r0");
    if s.write_all(&opt).is_err() {
        return;
    }
    let mut info = [0u8; 10];
    if s.read_exact(&mut info).is_err() {
        return;
    }
    let mut rd = s.try_clone().unwrap();
    let inflight: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let (inf, dn, lg) = (inflight.clone(), done.clone(), log.clone());
    let (slots_tx, slots_rx) = std::sync::mpsc::sync_channel::<()>(depth);
    for _ in 0..depth {
        slots_tx.send(()).unwrap();
    }
    let reader = std::thread::spawn(move || {
        let mut reply = [0u8; 16];
        while rd.read_exact(&mut reply).is_ok() {
            let handle = u64::from_be_bytes(reply[8..16].try_into().unwrap());
            let err = u32::from_be_bytes(reply[4..8].try_into().unwrap());
            let block = inf.lock().unwrap().remove(&handle);
            if err != 0 {
                break;
            }
            if let Some(b) = block {
                lg.acked.lock().unwrap().insert(b, handle);
            }
            if slots_tx.send(()).is_err() {
                break;
            }
        }
        dn.store(true, Ordering::SeqCst);
    });
    for (i, b) in blocks.into_iter().enumerate() {
        if slots_rx.recv_timeout(Duration::from_secs(30)).is_err() || done.load(Ordering::SeqCst) {
            break;
        }
        let stamp = (i as u64 + 1) << 20 | b;
        inflight.lock().unwrap().insert(stamp, b);
        let mut r = Vec::with_capacity(28 + 4096);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes()); // WRITE
        r.extend_from_slice(&stamp.to_be_bytes()); // the handle is the stamp
        r.extend_from_slice(&(b * 4096).to_be_bytes());
        r.extend_from_slice(&4096u32.to_be_bytes());
        r.extend_from_slice(&block_of(stamp));
        if s.write_all(&r).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = reader.join();
}

#[test]
fn sigkill_of_the_primary_loses_no_acknowledged_write_under_protocol_c() {
    let rounds: u64 = std::env::var("HABLOCK_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut total_acked = 0;
    for round in 0..rounds {
        let (mut a, mut b) = synced_pair(NodeOptions {
            size_mib: 32,
            resource_extra: FAST_NET.into(),
            ..Default::default()
        });
        let nblocks = (data_size(&a) / 4096) as u64;
        // A permutation of the blocks (distinct blocks: an acknowledged block can
        // only hold its own stamp).
        let mut order: Vec<u64> = (0..nblocks).collect();
        let mut x = 0x9E37_79B9u64 ^ round;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let log = Arc::new(AckLog {
            acked: Mutex::new(HashMap::new()),
        });
        let port = a.port;
        let lg = log.clone();
        let writer = std::thread::spawn(move || write_until_error(port, order, lg, 16));
        std::thread::sleep(Duration::from_millis(300 + 137 * round));
        a.kill();
        writer.join().unwrap();
        let acked = log.acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        // The survivor notices, is promoted, and holds every acknowledged write.
        wait_status(&b, "peer loss noticed", Duration::from_secs(10), |st| {
            peer(st)["connection"] != "Connected"
        });
        b.hbadm_ok(&["primary", "r0"]);
        let got = nbd_read_prefix(&b.uri(), &b.path("survivor.bin"), data_size(&b));
        let mut lost = Vec::new();
        for (&blk, &stamp) in &acked {
            let o = (blk * 4096) as usize;
            if got[o..o + 4096] != block_of(stamp)[..] {
                lost.push(blk);
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged writes missing on the survivor (blocks {:?}...)\nalpha:\n{}\nbeta:\n{}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)],
            a.log(),
            b.log()
        );
        total_acked += acked.len();
        if round == rounds - 1 {
            // The old Primary comes back: it crashed with writes the survivor may not
            // have, and the survivor has written since, so it must become SyncTarget and
            // end identical to the survivor.
            let src = b.path("after.bin");
            std::fs::write(&src, random_bytes(99, 2 << 20)).unwrap();
            ok(Command::new("nbdcopy").arg(&src).arg(b.uri()));
            a.start();
            wait_status(&b, "the old primary resynced", Duration::from_secs(60), in_sync);
            assert_eq!(a.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Primary");
            assert!(a.log().contains("resync started as SyncTarget"), "{}", a.log());
            assert_eq!(a.stop(), Some(0));
            let size = data_size(&b);
            assert_eq!(b.stop(), Some(0));
            assert_same_data(&a, &b, size);
        } else {
            assert_eq!(b.stop(), Some(0));
        }
    }
    println!("{rounds} SIGKILL rounds: {total_acked} acknowledged writes, all present on the promoted survivor");
}

#[test]
fn a_running_resync_shows_progress_speed_and_time_left() {
    let (mut a, mut b) = forced_pair(NodeOptions {
        resource_extra: format!("{FAST_NET}resync_rate = \"16M\"\n"),
        ..Default::default()
    });
    // 64 MiB at 16 MiB/s: about four seconds of SyncSource to watch.
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(20) {
        let text = a.hbadm_ok(&["status", "r0"]);
        if text.contains("replication:SyncSource") && text.contains("speed:") && !text.contains("finish:?") {
            seen = Some(text);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = seen.expect("status never showed a running resync with speed and time left");
    println!("{text}");
    assert!(text.contains("done:") && text.contains("finish:0:00:"), "{text}");
    let bt = b.hbadm_ok(&["status", "r0"]);
    assert!(
        bt.contains("replication:SyncTarget") || bt.contains("replication:Established"),
        "{bt}"
    );
    assert_eq!(b.hbadm_ok(&["dstate", "r0"]).trim().split('/').nth(1), Some("UpToDate"));
    // Application writes go on during the resync and land on both replicas.
    let src = a.path("during.bin");
    std::fs::write(&src, random_bytes(31, 24 << 20)).unwrap();
    let t = Instant::now();
    ok(Command::new("nbdcopy").arg(&src).arg(a.uri()));
    println!("24 MiB written during the resync in {:?}", t.elapsed());
    wait_status(&a, "in sync", Duration::from_secs(30), in_sync);
    assert_eq!(b.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/UpToDate");
    let size = data_size(&a);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    assert_same_data(&a, &b, size);
    assert!(std::fs::read(&a.disk).unwrap()[..24 << 20] == std::fs::read(&src).unwrap()[..]);
}

#[test]
fn a_peer_with_the_wrong_shared_secret_is_never_connected() {
    let (mut a, mut b) = Node::pair(NodeOptions {
        resource_extra: format!("{FAST_NET}shared_secret = \"right secret\"\n"),
        ..Default::default()
    });
    // beta reads its own copy of the cluster file, with another secret.
    let other = b.path("beta.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&b.config)
            .unwrap()
            .replace("right secret", "wrong secret"),
    )
    .unwrap();
    b.config = other;
    a.hbadm_ok(&["create-md", "r0"]);
    b.hbadm_ok(&["create-md", "r0"]);
    a.start();
    b.start();
    a.hbadm_ok(&["primary", "--force", "r0"]);
    wait_status(&a, "authentication failure reported", Duration::from_secs(20), |st| {
        peer(st)["problem"].as_str().unwrap_or("").contains("authentication")
    });
    let st = resource_status(&a);
    assert_ne!(peer(&st)["connection"], "Connected", "{st}");
    assert_eq!(b.hbadm_ok(&["dstate", "r0"]).trim(), "Inconsistent/DUnknown");
    // The node keeps serving its own clients meanwhile.
    let src = a.path("in.bin");
    std::fs::write(&src, random_bytes(21, 1 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(a.uri()));
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
}

/// VmRSS of a process, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// Protocol A acknowledges a write once it is on the local disk and queued for the peer.
/// With the peer stalled (SIGSTOP: it stops reading, and the 60 s timeout keeps the
/// connection up), the queue must stop at MAX_BACKLOG (32 MiB) and hold the writer back,
/// not keep every written byte in the daemon's memory; once the peer runs again the writes
/// finish and both copies are equal.
#[test]
fn protocol_a_holds_writes_back_while_the_peer_cannot_keep_up() {
    let (mut a, mut b) = synced_pair(NodeOptions {
        size_mib: 96,
        writeback: true,
        protocol: "A",
        resource_extra: "ping_interval = \"10s\"\ntimeout = \"60s\"\n".into(),
        ..Default::default()
    });
    let size = data_size(&a);
    let (apid, bpid) = (a.pid().expect("alpha runs"), b.pid().expect("beta runs"));
    let signal = |sig: &str| {
        let st = Command::new("kill").args([sig, &bpid.to_string()]).status().unwrap();
        assert!(st.success(), "kill {sig} {bpid}");
    };
    let rss_before = rss_of(apid);
    signal("-STOP");
    const TOTAL: u64 = 80 << 20;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (port, d) = (a.port, done.clone());
    let writer = std::thread::spawn(move || {
        let mut raw = RawNbd::connect(port, "r0");
        let chunk = random_bytes(21, 256 << 10);
        let mut at = 0u64;
        while at < TOTAL {
            let err = raw.request(1, at, at, chunk.len() as u32, &chunk);
            assert_eq!(err, 0, "write at {at} failed");
            at += chunk.len() as u64;
            d.store(at, Ordering::SeqCst);
        }
    });
    let mut rss_max = rss_before;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        rss_max = rss_max.max(rss_of(apid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let held_at = done.load(Ordering::SeqCst);
    signal("-CONT");
    println!(
        "peer stopped: {} MiB of {} MiB written after 4 s; alpha's RSS {} MiB -> at most {} MiB",
        held_at >> 20,
        TOTAL >> 20,
        rss_before >> 20,
        rss_max >> 20
    );
    assert!(
        held_at < 64 << 20,
        "writes were not held back: {held_at} bytes acknowledged with the peer stopped"
    );
    assert!(
        rss_max < rss_before + (64 << 20),
        "alpha's memory grew from {rss_before} to {rss_max} bytes with the peer stopped"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !writer.is_finished() {
        assert!(
            Instant::now() < deadline,
            "writes did not finish after the peer resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().expect("writer");
    wait_status(&a, "in sync", Duration::from_secs(60), in_sync);
    assert_eq!(a.stop(), Some(0));
    assert_eq!(b.stop(), Some(0));
    assert_same_data(&a, &b, size);
}
