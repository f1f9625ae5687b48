//! hbadm's verbs, exit codes and the metadata's survival across crashes.

mod common;
use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn create_md_refuses_to_overwrite_and_dump_md_shows_it() {
    let node = Node::new(NodeOptions::default());
    let out = node.hbadm_ok(&["create-md", "r0"]);
    assert!(out.contains("r0"), "{out}");
    let again = node.hbadm(&["create-md", "r0"]);
    assert_eq!(code(&again), 30, "{}", stderr(&again));
    assert!(
        stderr(&again).contains("--force"),
        "message must say how: {}",
        stderr(&again)
    );
    node.hbadm_ok(&["create-md", "--force", "r0"]);
    let dump = node.hbadm_ok(&["dump-md", "r0"]);
    assert!(dump.to_lowercase().contains("version"), "{dump}");
    // Unknown resource.
    let nosuch = node.hbadm(&["create-md", "r9"]);
    assert_eq!(code(&nosuch), 10, "{}", stderr(&nosuch));
}

#[test]
fn external_metadata_works_and_leaves_the_whole_disk_to_data() {
    let node = Node::ready(NodeOptions {
        external_meta: true,
        ..Default::default()
    });
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["size"].as_u64().unwrap(), 64 << 20);
    assert_eq!(
        st["resources"][0]["backing"]["meta_disk"],
        node.path("alpha-r0.md").display().to_string()
    );
}

#[test]
fn verbs_and_one_line_answers() {
    let mut node = Node::new(NodeOptions::default());
    // No daemon: a clear error and its own exit code.
    let out = node.hbadm(&["status"]);
    assert_eq!(code(&out), 20, "{}", stderr(&out));
    assert!(stderr(&out).contains("hablockd"));

    node.hbadm_ok(&["create-md", "r0"]);
    node.start();
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "Inconsistent/DUnknown");
    // The peer is configured but never started: this node keeps trying.
    assert_eq!(node.hbadm_ok(&["cstate", "r0"]).trim(), "Connecting");
    // Inconsistent data cannot be promoted without --force.
    let out = node.hbadm(&["primary", "r0"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"));
    node.hbadm_ok(&["primary", "--force", "r0"]);
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Primary/Unknown");
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/DUnknown");

    let text = node.hbadm_ok(&["status", "r0"]);
    assert!(text.starts_with("r0 role:Primary\n"), "{text}");
    assert!(text.contains("  disk:UpToDate"), "{text}");
    assert!(text.contains(&node.uri()), "{text}");
    assert!(text.contains("  beta role:Unknown connection:Connecting"), "{text}");

    // Writes while the peer is away are counted out of sync for it.
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(3, 1 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    let peer = &st["resources"][0]["peers"][0];
    assert_eq!(peer["name"], "beta");
    assert!(peer["out_of_sync"].as_u64().unwrap() >= 1 << 20, "{peer}");

    // Metadata verbs are refused while attached.
    let out = node.hbadm(&["dump-md", "r0"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(stderr(&out).contains("down"));

    // detach / attach / down / up.
    node.hbadm_ok(&["detach", "r0"]);
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "Diskless/DUnknown");
    let out = run_timeout(Command::new("nbdinfo").arg(node.uri()), CLIENT_TIMEOUT);
    assert!(!out.status.success(), "a detached resource must not be served");
    node.hbadm_ok(&["attach", "r0"]);
    node.hbadm_ok(&["down", "r0"]);
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Unconfigured/Unknown");
    let dump = node.hbadm_ok(&["dump-md", "r0"]);
    assert!(!dump.is_empty());
    node.hbadm_ok(&["up", "r0"]);
    // The data generation survived down/up: no --force needed any more.
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/DUnknown");
    node.hbadm_ok(&["primary", "r0"]);
    let back = node.path("out.bin");
    let got = nbd_read_prefix(&node.uri(), &back, 1 << 20);
    assert!(got == std::fs::read(&src).unwrap(), "data read back differs");
    // Unknown resource through the daemon.
    let out = node.hbadm(&["up", "r7"]);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert_eq!(node.stop(), Some(0), "clean SIGTERM exit");
}

#[test]
fn down_is_refused_while_a_client_holds_the_device() {
    let node = Node::ready(NodeOptions::default());
    // nbdfuse-free way to hold the export open: a raw NBD connection in transmission.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&2u32.to_be_bytes());
    opt.extend_from_slice(b"r0");
    s.write_all(&opt).unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).unwrap();
    let out = node.hbadm(&["down", "r0"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(stderr(&out).contains("held open"), "{}", stderr(&out));
    let out = node.hbadm(&["secondary", "r0"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    node.hbadm_ok(&["down", "--force", "r0"]);
    drop(s);
}

/// The superblock sits in the last 4 KiB of the backing file (docs/metadata.md).
fn corrupt_superblock(node: &Node, at_from_end: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node.disk)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start(len - at_from_end)).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(len - at_from_end)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

#[test]
fn corrupt_superblock_is_refused_not_reinitialised() {
    let mut node = Node::new(NodeOptions::default());
    node.hbadm_ok(&["create-md", "r0"]);
    let before = std::fs::read(&node.disk).unwrap();
    corrupt_superblock(&node, 4096 - 40);
    let out = node.hbadm(&["dump-md", "r0"]);
    assert_eq!(code(&out), 30, "{}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("checksum"), "{}", stderr(&out));
    node.start();
    // The daemon refuses to attach and says why; it does not re-initialise.
    let out = node.hbadm(&["up", "r0"]);
    assert_eq!(code(&out), 30, "{}", stderr(&out));
    let text = node.hbadm_ok(&["status", "r0"]);
    assert!(text.to_lowercase().contains("checksum"), "{text}");
    assert!(
        run_timeout(Command::new("nbdinfo").arg(node.uri()), CLIENT_TIMEOUT)
            .status
            .code()
            != Some(0)
    );
    let after = std::fs::read(&node.disk).unwrap();
    let diff = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 1, "only the byte we flipped may differ");

    // A zeroed (never created) superblock: "no metadata", pointing at create-md.
    let fresh = Node::new(NodeOptions::default());
    let out = fresh.hbadm(&["dump-md", "r0"]);
    assert_eq!(code(&out), 30);
    assert!(stderr(&out).contains("create-md"), "{}", stderr(&out));
}

#[test]
fn data_and_metadata_survive_sigkill() {
    let mut node = Node::ready(NodeOptions::default());
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(4, 16 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    let pid = node.pid().unwrap();
    node.kill();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            s.contains(") Z")
        }
    );
    node.start();
    // Metadata is intact: UpToDate, and the peer owes a resync of (at least) what we wrote.
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/DUnknown");
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert!(st["resources"][0]["peers"][0]["out_of_sync"].as_u64().unwrap() >= 16 << 20);
    node.hbadm_ok(&["primary", "r0"]);
    let back = node.path("out.bin");
    let got = nbd_read_prefix(&node.uri(), &back, 16 << 20);
    assert!(got == std::fs::read(&src).unwrap(), "data read back differs");
    // A clean stop after the crash records a clean shutdown.
    assert_eq!(node.stop(), Some(0));
    let dump = node.hbadm_ok(&["dump-md", "r0"]);
    assert!(!dump.is_empty());
}

#[test]
fn opening_the_export_auto_promotes_and_closing_demotes() {
    let mut node = Node::new(NodeOptions::default());
    node.hbadm_ok(&["create-md", "r0"]);
    node.start();
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    // With a peer in the cluster file, fresh metadata is not good data: opening it
    // must not make it Primary (only `primary --force` declares it the good copy).
    let out = ok(Command::new("nbdinfo").arg("--json").arg(node.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true, "{out}");
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    node.hbadm_ok(&["primary", "--force", "r0"]);
    node.hbadm_ok(&["secondary", "r0"]);
    // DRBD 9's auto-promote: a client opening the device makes the node Primary, and
    // it sees a writable export (the flags are computed after the promotion).
    let out = ok(Command::new("nbdinfo").arg("--json").arg(node.uri()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], false, "{out}");
    // Closing the last connection demotes again; the data is now a generation of its own.
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Secondary/Unknown");
    assert_eq!(node.hbadm_ok(&["dstate", "r0"]).trim(), "UpToDate/DUnknown");
    let src = node.path("in.bin");
    std::fs::write(&src, random_bytes(5, 1 << 20)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(node.uri()));
    let got = nbd_read_prefix(&node.uri(), &node.path("out.bin"), 1 << 20);
    assert!(got == std::fs::read(&src).unwrap());
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn a_running_node_s_disk_cannot_be_reformatted_behind_its_back() {
    let node = Node::ready(NodeOptions::default());
    // A second cluster file naming the same disk, with its own (empty) control dir, so
    // hbadm cannot ask the running daemon: the disk's lock still refuses.
    let other = node.path("other.toml");
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("/run\"", "/run-other\"");
    std::fs::write(&other, text).unwrap();
    let out = run_timeout(
        Command::new(bin("hbadm"))
            .arg("--config")
            .arg(&other)
            .args(["--node", "alpha", "create-md", "--force", "r0"]),
        CLIENT_TIMEOUT,
    );
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert!(stderr(&out).contains("running hablockd"), "{}", stderr(&out));
    // And a second daemon cannot attach it either: it stays up, Diskless, and says why.
    let mut second = std::process::Command::new(bin("hablockd"))
        .arg("--config")
        .arg(&other)
        .args(["--node", "alpha"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        let out = run_timeout(
            Command::new(bin("hbadm"))
                .arg("--config")
                .arg(&other)
                .args(["--node", "alpha", "status", "r0"]),
            CLIENT_TIMEOUT,
        );
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = second.kill();
    let _ = second.wait();
    assert!(text.contains("in use by another process"), "{text}");
    assert_eq!(node.hbadm_ok(&["role", "r0"]).trim(), "Primary/Unknown");
}

#[test]
fn the_activity_log_bounds_what_a_crashed_primary_resyncs() {
    let mut node = Node::ready(NodeOptions::default());
    // Two writes 40 MiB apart, acknowledged but never flushed: the in-memory bitmap
    // bits for them die with the process; the activity log must bring them back.
    let mut c = RawNbd::connect(node.port, "r0");
    assert_eq!(c.request(1, 1, 4096, 4096, &[0xa5; 4096]), 0);
    assert_eq!(c.request(1, 2, 40 << 20, 4096, &[0x5a; 4096]), 0);
    node.kill();
    drop(c);
    node.start();
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    let oos = st["resources"][0]["peers"][0]["out_of_sync"].as_u64().unwrap();
    // Exactly the two 4 MiB extents that were hot: not zero (lost), not the whole device.
    assert_eq!(oos, 8 << 20, "out-of-sync after the crash: {oos}");
    // A clean stop empties the log: the next start adds nothing.
    assert_eq!(node.stop(), Some(0));
    node.start();
    let st: serde_json::Value = serde_json::from_str(&node.hbadm_ok(&["status", "--json", "r0"])).unwrap();
    assert_eq!(st["resources"][0]["peers"][0]["out_of_sync"].as_u64().unwrap(), 8 << 20);
}
