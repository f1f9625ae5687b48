//! The kernel's own NBD client (nbd-client + the nbd module) against hablockd on the
//! host, in a guest booted by shared/vm/guest-run: mkfs, mount, write, remount, verify.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn kernel_nbd_client_mounts_ext4_on_hablock() {
    let Some(guest) = prepared_guest("kernel_nbd_client_mounts_ext4_on_hablock") else {
        return;
    };
    let mut node = Node::ready(NodeOptions {
        size_mib: 96,
        ..Default::default()
    });
    let script = format!(
        "set -e; modprobe nbd; \
         nbd-client 10.0.2.2 {port} /dev/nbd0 -N r0 -b 4096; \
         mkfs.ext4 -q -F /dev/nbd0; mkdir -p /mnt/hb; mount /dev/nbd0 /mnt/hb; \
         dd if=/dev/urandom of=/mnt/hb/a bs=1M count=16 status=none; \
         for i in $(seq 20); do echo file $i > /mnt/hb/small.$i; done; \
         (cd /mnt/hb && sha256sum a small.* > /tmp/sums); umount /mnt/hb; \
         sync; echo 3 > /proc/sys/vm/drop_caches; \
         mount /dev/nbd0 /mnt/hb; (cd /mnt/hb && sha256sum -c --quiet /tmp/sums); \
         umount /mnt/hb; nbd-client -d /dev/nbd0; echo GUEST-NBD-OK",
        port = node.port
    );
    let out = run_timeout(
        Command::new(&guest).args(["-t", "900"]).arg(&script),
        Duration::from_secs(960),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_guest_lived("kernel_nbd_client_mounts_ext4_on_hablock", &out, &text);
    assert!(
        out.status.success() && text.contains("GUEST-NBD-OK"),
        "guest run failed ({:?}):\n{text}\ndaemon log:\n{}",
        out.status,
        node.log()
    );
    // The file system the kernel wrote is intact on the backing store, checked on the host.
    assert_eq!(node.stop(), Some(0));
    if !require("kernel_nbd_client_mounts_ext4_on_hablock", &[("e2fsck", "e2fsprogs")]) {
        return;
    }
    let fsck = run_timeout(Command::new("e2fsck").arg("-fn").arg(&node.disk), CLIENT_TIMEOUT);
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}
