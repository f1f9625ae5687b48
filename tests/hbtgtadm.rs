//! hbtgtadm against a real hablockd: the seed's tgtadm commands, tgtadm's show text and
//! errors, declared targets from the cluster file, the targets.conf importer, and targets
//! surviving a daemon restart.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Output};

fn hbtgtadm(node: &Node, args: &[&str]) -> Output {
    run_tool("hbtgtadm", &node.config, &node.name, args)
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

/// Runs a stock OCF agent from Debian's resource-agents with `tgtadm` resolving to hbtgtadm.
fn ocf(node: &Node, agent: &str, action: &str, keys: &[(&str, &str)]) -> i32 {
    let shim = node.path("shim");
    if !shim.exists() {
        std::fs::create_dir_all(&shim).unwrap();
        std::os::unix::fs::symlink(bin("hbtgtadm"), shim.join("tgtadm")).unwrap();
    }
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(format!("/usr/lib/ocf/resource.d/heartbeat/{agent}"));
    cmd.arg(action)
        .env("PATH", path)
        .env("OCF_ROOT", "/usr/lib/ocf")
        .env("OCF_RESOURCE_INSTANCE", format!("test-{agent}"))
        .env("HA_RSCTMP", node.path("rsctmp"))
        .env("HA_LOGFILE", node.path("ocf.log"))
        .env("HA_debug", "0")
        .env("HABLOCK_CONFIG", &node.config)
        .env("HABLOCK_NODE", &node.name);
    std::fs::create_dir_all(node.path("rsctmp")).unwrap();
    for (k, v) in keys {
        cmd.env(format!("OCF_RESKEY_{k}"), v);
    }
    let out = run_timeout(&mut cmd, CLIENT_TIMEOUT);
    out.status.code().unwrap_or(-1)
}

/// The stock iSCSITarget and iSCSILogicalUnit agents (implementation=tgt) start, monitor and
/// stop a target and a LUN through hbtgtadm: they parse its `--op show` text.
#[test]
fn stock_ocf_agents_drive_hbtgtadm() {
    if !require_file(
        "stock_ocf_agents_drive_hbtgtadm",
        "/usr/lib/ocf/resource.d/heartbeat/iSCSITarget",
        "resource-agents",
    ) {
        return;
    }
    let mut node = Node::new(NodeOptions::default());
    node.hbadm_ok(&["create-md", "r0"]);
    node.start();
    let lun_file = node.path("lun1.img");
    std::fs::File::create(&lun_file).unwrap().set_len(16 << 20).unwrap();
    let lun_path = lun_file.display().to_string();
    let iqn = "iqn.2026-11.com.example:ocf";
    let target = [
        ("implementation", "tgt"),
        ("iqn", iqn),
        ("tid", "7"),
        // The agent binds nothing when this is empty (its default), so nobody could log in.
        ("allowed_initiators", "127.0.0.1 192.168.1.0/24"),
        ("incoming_username", "ocfuser"),
        ("incoming_password", "ocfsecret12"),
        (
            "additional_parameters",
            "MaxRecvDataSegmentLength=65536 ImmediateData=No",
        ),
    ];
    let lu = [
        ("implementation", "tgt"),
        ("target_iqn", iqn),
        ("lun", "1"),
        ("path", lun_path.as_str()),
        ("scsi_sn", "OCFSN1"),
        ("vendor_id", "HABLOCK"),
    ];
    const OCF_SUCCESS: i32 = 0;
    const OCF_NOT_RUNNING: i32 = 7;
    assert_eq!(ocf(&node, "iSCSITarget", "monitor", &target), OCF_NOT_RUNNING);
    assert_eq!(
        ocf(&node, "iSCSITarget", "start", &target),
        OCF_SUCCESS,
        "{}",
        node.log()
    );
    assert_eq!(ocf(&node, "iSCSITarget", "monitor", &target), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "monitor", &lu), OCF_NOT_RUNNING);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "start", &lu), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "monitor", &lu), OCF_SUCCESS);

    // A replicated LUN through the same agent: tgt_bstype=hablock, and the resource named by
    // its backing disk, a path that exists (the agent's monitor tests it with `-e`).
    let disk = node.disk.display().to_string();
    let lu2 = [
        ("implementation", "tgt"),
        ("target_iqn", iqn),
        ("lun", "2"),
        ("path", disk.as_str()),
        ("tgt_bstype", "hablock"),
    ];
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "start", &lu2), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "monitor", &lu2), OCF_SUCCESS);

    let show = tgt_ok(&node, "--lld iscsi --mode target --op show");
    assert!(show.starts_with(&format!("Target 7: {iqn}\n")), "{show}");
    assert!(
        show.contains(&format!(
            "            Backing store type: hablock\n            Backing store path: {disk}\n"
        )),
        "{show}"
    );
    assert!(show.contains("            SCSI SN: OCFSN1\n"), "{show}");
    assert!(show.contains("    Account information:\n        ocfuser\n    ACL information:\n        127.0.0.1\n        192.168.1.0/24\n"), "{show}");
    let params = tgt_ok(&node, "--lld iscsi --mode target --op show --tid 7");
    assert!(params.contains("\nMaxRecvDataSegmentLength=65536\n") && params.contains("\nImmediateData=No\n"));

    assert_eq!(ocf(&node, "iSCSILogicalUnit", "stop", &lu2), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "stop", &lu), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSILogicalUnit", "monitor", &lu), OCF_NOT_RUNNING);
    assert_eq!(ocf(&node, "iSCSITarget", "stop", &target), OCF_SUCCESS);
    assert_eq!(ocf(&node, "iSCSITarget", "monitor", &target), OCF_NOT_RUNNING);
    assert_eq!(tgt_ok(&node, "--lld iscsi --mode target --op show"), "");
    assert_eq!(tgt_ok(&node, "--lld iscsi --mode account --op show"), "Account list:\n");
}

/// `hbtgtadm --import` of a targets.conf ends in the same state as running, through
/// hbtgtadm, the tgtadm commands Debian's tgt-admin itself prints for that file
/// (`tgt-admin -e -c targets.conf.sample -p`, kept in tests/data/tgtadm/).
#[test]
fn import_matches_what_tgt_admin_runs() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tgtadm");
    let mut ours = Node::new(NodeOptions::default());
    let mut theirs = Node::new(NodeOptions::default());
    // Both use the same image files, so show prints the same paths and sizes.
    let images = ours.path("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::File::create(images.join("disk1.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    std::fs::File::create(images.join("disk2.img"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let local = |text: String| text.replace("/tmp/tgtcap/", &format!("{}/", images.display()));
    for n in [&ours, &theirs] {
        n.hbadm_ok(&["create-md", "r0"]);
    }
    ours.start();
    theirs.start();

    let conf = ours.path("targets.conf");
    std::fs::write(
        &conf,
        local(std::fs::read_to_string(data.join("targets.conf.sample")).unwrap()),
    )
    .unwrap();
    tgt_ok(&ours, &format!("--import {}", conf.display()));

    let shim = theirs.path("shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::os::unix::fs::symlink(bin("hbtgtadm"), shim.join("tgtadm")).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let script = local(std::fs::read_to_string(data.join("tgt-admin-pretend.txt")).unwrap());
    let mut ran = 0;
    for line in script.lines().filter(|l| l.starts_with("tgtadm ")) {
        let out = run_timeout(
            Command::new("sh")
                .arg("-c")
                .arg(line)
                .env("PATH", &path)
                .env("HABLOCK_CONFIG", &theirs.config)
                .env("HABLOCK_NODE", &theirs.name),
            CLIENT_TIMEOUT,
        );
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        ran += 1;
    }
    assert!(ran >= 20, "the tgt-admin transcript has its commands");
    for q in [
        "--lld iscsi --mode target --op show",
        "--lld iscsi --mode account --op show",
        "--lld iscsi --mode target --op show --tid 1",
    ] {
        let a = tgt_ok(&ours, q);
        assert_eq!(a, tgt_ok(&theirs, q), "{q}");
        assert!(!a.is_empty());
    }
    let show = tgt_ok(&ours, "--lld iscsi --mode target --op show");
    assert!(show.contains("Target 3: iqn.2026-11.com.example:t3\n"), "{show}");
    assert!(show.contains("            SCSI SN: SN1\n"), "{show}");
    assert_eq!(ours.stop(), Some(0));
    assert_eq!(theirs.stop(), Some(0));
}

/// A corrupt iscsi.toml does not stop the daemon and is never overwritten: every hbtgtadm
/// command says what is wrong, and the node's resources still answer.
#[test]
fn corrupt_state_file_is_reported_not_overwritten() {
    let mut node = Node::new(NodeOptions::default());
    node.hbadm_ok(&["create-md", "r0"]);
    let state = node.path("state/alpha/iscsi.toml");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, "[[target]]\ntid = \"one\"\n").unwrap();
    node.start();
    let out = hbtgtadm(
        &node,
        &[
            "--lld",
            "iscsi",
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            "1",
            "--targetname",
            "iqn.2026-11.a.b:c",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tgtadm: the iSCSI targets of this node could not be loaded: "),
        "{err}"
    );
    assert!(err.contains("iscsi.toml"), "{err}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "[[target]]\ntid = \"one\"\n");
    node.hbadm_ok(&["status", "r0"]);
}
