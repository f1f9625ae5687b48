//! The kernel's own iSCSI initiator (open-iscsi's iscsiadm + iscsi_tcp) against hablockd's
//! target on the host, in a guest booted by shared/vm/guest-run: SendTargets discovery, login
//! with mutual CHAP (SHA-256 or MD5, whatever open-iscsi offers first), mkfs.ext4 on a LUN
//! backed by the replicated resource r0 (`--bstype hablock`), mount, write, unmount, remount,
//! compare, logout.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const IQN: &str = "iqn.2026-11.org.hablock:guest";

fn hbtgtadm(node: &Node, line: &str) {
    let out = run_timeout(
        Command::new(bin("hbtgtadm"))
            .env("HABLOCK_CONFIG", &node.config)
            .env("HABLOCK_NODE", &node.name)
            .args(line.split_whitespace()),
        CLIENT_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "hbtgtadm {line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kernel_iscsi_initiator_mounts_ext4_on_hablock() {
    let Some(guest) = prepared_guest("kernel_iscsi_initiator_mounts_ext4_on_hablock") else {
        return;
    };
    // The guest runs the host's filesystem, so the host needs open-iscsi.
    if !require(
        "kernel_iscsi_initiator_mounts_ext4_on_hablock",
        &[("iscsiadm", "open-iscsi")],
    ) {
        return;
    }
    let mut node = Node::new(NodeOptions {
        size_mib: 96,
        ..Default::default()
    });
    let portal = free_port();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&node.config).unwrap();
        write!(f, "\n[iscsi.on.alpha]\nportal = \"127.0.0.1:{portal}\"\n").unwrap();
    }
    node.hbadm_ok(&["create-md", "r0"]);
    node.start();
    node.hbadm_ok(&["primary", "--force", "r0"]);
    hbtgtadm(&node, &format!("--lld iscsi --op new --mode target --tid 1 -T {IQN}"));
    hbtgtadm(
        &node,
        "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype hablock --backing-store r0",
    );
    hbtgtadm(&node, "--lld iscsi --op bind --mode target --tid 1 -I ALL");
    hbtgtadm(
        &node,
        "--lld iscsi --op new --mode account --user guestuser --password guestsecret12",
    );
    hbtgtadm(&node, "--lld iscsi --op bind --mode account --tid 1 --user guestuser");
    hbtgtadm(
        &node,
        "--lld iscsi --op new --mode account --user hbtarget --password targetsecret1",
    );
    hbtgtadm(
        &node,
        "--lld iscsi --op bind --mode account --tid 1 --user hbtarget --outgoing",
    );

    let p = format!("127.0.0.1:{portal}");
    let set = |k: &str, v: &str| format!("iscsiadm -m node -T {IQN} -p {p} -o update -n {k} -v {v}; ");
    let script = format!(
        "set -e; modprobe iscsi_tcp; modprobe sd_mod; iscsid; sleep 0.5; \
         iscsiadm -m discovery -t sendtargets -p {p} | tee /tmp/disc; grep -q '{IQN}' /tmp/disc; \
         {a}{b}{c}{d}{e} \
         iscsiadm -m node -T {IQN} -p {p} -l; \
         for i in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.1; done; \
         mkfs.ext4 -q -F /dev/sda; mkdir -p /mnt/hb; mount /dev/sda /mnt/hb; \
         dd if=/dev/urandom of=/mnt/hb/a bs=1M count=16 status=none; \
         for i in $(seq 20); do echo file $i > /mnt/hb/small.$i; done; \
         (cd /mnt/hb && sha256sum a small.* > /tmp/sums); umount /mnt/hb; \
         sync; echo 3 > /proc/sys/vm/drop_caches; \
         mount /dev/sda /mnt/hb; (cd /mnt/hb && sha256sum -c --quiet /tmp/sums); umount /mnt/hb; \
         iscsiadm -m node -T {IQN} -p {p} -u; echo GUEST-ISCSI-OK",
        a = set("node.session.auth.authmethod", "CHAP"),
        b = set("node.session.auth.username", "guestuser"),
        c = set("node.session.auth.password", "guestsecret12"),
        d = set("node.session.auth.username_in", "hbtarget"),
        e = set("node.session.auth.password_in", "targetsecret1"),
    );
    let out = run_timeout(
        Command::new(&guest)
            .args(["-t", "900", "-p", &portal.to_string()])
            .arg(&script),
        Duration::from_secs(960),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_guest_lived("kernel_iscsi_initiator_mounts_ext4_on_hablock", &out, &text);
    assert!(
        out.status.success() && text.contains("GUEST-ISCSI-OK"),
        "guest run failed ({:?}):\n{text}\ndaemon log:\n{}",
        out.status,
        node.log()
    );
    let log = node.log();
    assert!(log.contains("logged in to iqn.2026-11.org.hablock:guest"), "{log}");
    assert_eq!(node.stop(), Some(0));
}
