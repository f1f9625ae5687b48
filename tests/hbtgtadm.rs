//! hbtgtadm against a real hablockd: the seed's tgtadm commands, tgtadm's show text and
//! errors, declared targets from the cluster file, the targets.conf importer, and targets
//! surviving a daemon restart.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Output};

fn hbtgtadm(node: &Node, args: &[&str]) -> Output {
    run_timeout(
        Command::new(bin("hbtgtadm"))
            .env("HABLOCK_CONFIG", &node.config)
            .env("HABLOCK_NODE", &node.name)
            .args(args),
        CLIENT_TIMEOUT,
    )
}

fn tgt_ok(node: &Node, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = hbtgtadm(node, &args);
    assert!(
        out.status.success(),
        "hbtgtadm {line} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// tgtadm's layout of one LUN (defaults: online, writable, no thin provisioning).
fn lun_text(tid: u32, lun: u64, mb: u64, bstype: &str, path: &str) -> String {
    let (ty, bs) = if lun == 0 { ("controller", 1) } else { ("disk", 512) };
    format!(
        "        LUN: {lun}\n            Type: {ty}\n            SCSI ID: IET     {tid:04x}{lun:04x}\n            \
         SCSI SN: beaf{tid}{lun}\n            Size: {mb} MB, Block size: {bs}\n            Online: Yes\n            \
         Removable media: No\n            Prevent removal: No\n            Readonly: No\n            SWP: No\n            \
         Thin-provisioning: No\n            Backing store type: {bstype}\n            Backing store path: {path}\n            \
         Backing store flags: \n"
    )
}

fn target_head(tid: u32, name: &str) -> String {
    format!(
        "Target {tid}: {name}\n    System information:\n        Driver: iscsi\n        State: ready\n    \
         I_T nexus information:\n    LUN information:\n"
    )
}

#[test]
fn seed_commands_show_errors_import_and_restart() {
    let mut node = Node::new(NodeOptions::default());
    let portal = free_port();
    let mut f = std::fs::OpenOptions::new().append(true).open(&node.config).unwrap();
    write!(
        f,
        r#"
[iscsi.on.alpha]
portal = "127.0.0.1:{portal}"

[[iscsi.target]]
name = "iqn.2026-11.com.example:declared"
[[iscsi.target.lun]]
lun = 1
resource = "r0"
"#
    )
    .unwrap();
    drop(f);
    let lun_file = node.path("lun1.img");
    std::fs::File::create(&lun_file).unwrap().set_len(32 << 20).unwrap();
    let lun_path = lun_file.display().to_string();
    node.hbadm_ok(&["create-md", "r0"]);
    node.start();

    // The seed's notes (shared/seeds/004_*, "tgtadm命令"): --lld/-L, --mode/-m, --op/-o,
    // --tid/-t, --lun/-l, --backing-store/-b, --initiator-address/-i, --targetname/-T, and
    // its example name iqn.2015-06.com.magedu:i1.c2.
    tgt_ok(
        &node,
        "--lld iscsi --mode target --op new --tid 2 --targetname iqn.2015-06.com.magedu:i1.c2",
    );
    tgt_ok(
        &node,
        &format!("-L iscsi -m logicalunit -o new -t 2 -l 1 -b {lun_path}"),
    );
    tgt_ok(&node, "-L iscsi -m target -o bind -t 2 -i 172.16.0.0/16");
    tgt_ok(
        &node,
        "--lld iscsi --mode account --op new --user alice --password secret1234",
    );
    tgt_ok(&node, "--lld iscsi --mode account --op bind --tid 2 --user alice");
    tgt_ok(
        &node,
        "--lld iscsi --mode target --op update --tid 2 --name MaxRecvDataSegmentLength --value 65536",
    );

    let r0_mb = ((64u64 << 20) + 500_000) / 1_000_000;
    let expected = format!(
        "{}{}{}    Account information:\n    ACL information:\n        ALL\n{}{}{}    Account information:\n        \
         alice\n    ACL information:\n        172.16.0.0/16\n",
        target_head(1, "iqn.2026-11.com.example:declared"),
        lun_text(1, 0, 0, "null", "None"),
        lun_text(1, 1, r0_mb, "hablock", "r0"),
        target_head(2, "iqn.2015-06.com.magedu:i1.c2"),
        lun_text(2, 0, 0, "null", "None"),
        lun_text(2, 1, 34, "rdwr", &lun_path),
    );
    let show = tgt_ok(&node, "--lld iscsi --mode target --op show");
    assert_eq!(show, expected);
    assert_eq!(
        tgt_ok(&node, "--lld iscsi --mode account --op show"),
        "Account list:\n    alice\n"
    );
    assert_eq!(
        tgt_ok(&node, "--lld iscsi --mode portal --op show"),
        format!("Portal: 127.0.0.1:{portal},1\n")
    );
    let params = tgt_ok(&node, "--lld iscsi --mode target --op show --tid 2");
    assert!(params.contains("\nMaxRecvDataSegmentLength=65536\n"), "{params}");

    // tgtadm's errors and exit codes.
    for (line, code, err) in [
        (
            "--lld iscsi --mode target --op new --tid 2 --targetname iqn.2026-11.com.example:x",
            22,
            "tgtadm: this target already exists\n",
        ),
        (
            "--lld iscsi --mode target --op show --tid 9",
            22,
            "tgtadm: can't find the target\n",
        ),
        (
            "--lld iscsi --mode logicalunit --op new --tid 2 --lun 2 --backing-store /no/such/file",
            22,
            "tgtadm: invalid request\n",
        ),
        ("--lld iscsi --mode bogus --op show", 1, "tgtadm: unknown mode: bogus\n"),
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = hbtgtadm(&node, &args);
        assert_eq!(out.status.code(), Some(code), "{line}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), err, "{line}");
        assert!(out.stdout.is_empty());
    }

    // tgt-admin's targets.conf (the seed's example, with files for disks).
    let conf = node.path("targets.conf");
    std::fs::write(
        &conf,
        format!(
            "<target iqn.2015-06.com.magedu:s2.t1>\n    backing-store {lun_path}\n    initiator-address 172.16.0.0/16\n</target>\n"
        ),
    )
    .unwrap();
    let dry = tgt_ok(&node, &format!("--import {} --dry-run", conf.display()));
    assert!(
        dry.starts_with(
            "tgtadm --lld iscsi --mode target --op new --tid 1 --targetname iqn.2015-06.com.magedu:s2.t1\n"
        ),
        "{dry}"
    );
    tgt_ok(&node, &format!("--import {}", conf.display()));
    let show2 = tgt_ok(&node, "--lld iscsi --mode target --op show");
    let t3 = format!(
        "{}{}{}    Account information:\n    ACL information:\n        172.16.0.0/16\n",
        target_head(3, "iqn.2015-06.com.magedu:s2.t1"),
        lun_text(3, 0, 0, "null", "None"),
        lun_text(3, 1, 34, "rdwr", &lun_path),
    );
    assert_eq!(show2, format!("{expected}{t3}"));

    // Everything survives a restart (iscsi.toml), and the declared target is not doubled.
    assert!(node.path("state/alpha/iscsi.toml").exists());
    assert_eq!(node.stop(), Some(0));
    node.start();
    assert_eq!(tgt_ok(&node, "--lld iscsi --mode target --op show"), show2);
    assert_eq!(
        tgt_ok(&node, "--lld iscsi --mode account --op show"),
        "Account list:\n    alice\n"
    );

    // A deleted run-time target stays deleted; a deleted declared one comes back at the next
    // start, because the cluster file still declares it.
    tgt_ok(&node, "--lld iscsi --mode target --op delete --tid 1");
    tgt_ok(&node, "--lld iscsi --mode target --op delete --tid 2");
    assert_eq!(node.stop(), Some(0));
    node.start();
    let show3 = tgt_ok(&node, "--lld iscsi --mode target --op show");
    assert!(!show3.contains("Target 2:"), "{show3}");
    assert!(
        show3.starts_with("Target 1: iqn.2026-11.com.example:declared\n"),
        "{show3}"
    );
}

#[test]
fn no_daemon_is_a_clear_error() {
    let node = Node::new(NodeOptions::default());
    let out = hbtgtadm(&node, &["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert_eq!(out.status.code(), Some(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hablockd"), "{err}");
}
