//! ublk in a guest kernel (shared/vm/guest-run): hablockd runs inside the guest and
//! exposes r0 as /dev/ublkbN; the kernel's own block layer, ext4 and fio use it.
//!
//! - single node: fio (io_uring engine, verifying job), mkfs.ext4, mount, files,
//!   remount, checksums; `hbadm down` removes the device and `hbadm up` brings it back;
//!   SIGTERM removes it too; after a SIGKILL while ext4 is mounted and written, a
//!   restarted hablockd recovers the device and the writer finishes without an error;
//!   the verifying fio jobs again with an O_DIRECT backing file (cache = "none").
//! - replicated: the guest node (alpha) replicates with protocol C to a node on the host
//!   (beta) while ext4 is written through ublk; after unmount both replicas are equal.
//!   With `ublk = true` there is no number to look for after a crash: a second daemon's
//!   device sits beside r0's, both daemons are SIGKILLed, and each restarted daemon must
//!   recover its own device by its owner mark (the second one first) with its data.
//!
//! Each test boots one guest; without ../shared/vm or with HABLOCK_SKIP_GUEST set they
//! skip (a failure unless HABLOCK_ALLOW_SKIP=guest), and a guest that dies fails them.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Runs `script` in the guest; None (after saying why) when the guest did not boot.
fn run_guest(test: &str, guest: &PathBuf, args: &[&str], script: &str) -> Option<(bool, String)> {
    let out = run_timeout(
        Command::new(guest).args(["-t", "300"]).args(args).arg(script),
        Duration::from_secs(330),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture (the marks carry the guest's uptime, to see where time goes).
    eprintln!("{test}: guest output:\n{text}");
    assert_guest_lived(test, &out, &text);
    Some((out.status.success(), text))
}

/// Shell that starts hablockd in the guest with config `$CONF` as node `$NODE` and waits
/// until it answers; `$H` is hbadm for it.
const START_DAEMON: &str = r#"
H="$HBADM --config $CONF --node $NODE"
mark() { echo "[$(cut -d' ' -f1 /proc/uptime)s] $1"; }
start_daemon() {
  HABLOCK_LOG=info $HABLOCKD --config $CONF --node $NODE 2>>/run/hb/log & D=$!
  for i in $(seq 1200); do $H status r0 >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "hablockd did not answer"; cat /run/hb/log; return 1
}
"#;

#[test]
fn ublk_device_serves_fio_and_ext4_in_the_guest() {
    const T: &str = "ublk_device_serves_fio_and_ext4_in_the_guest";
    let Some(guest) = prepared_guest(T) else { return };
    let script = format!(
        r#"set -e; exec 2>&1
HABLOCKD={hablockd}; HBADM={hbadm}; NODE=alpha; CONF=/run/hb/c.toml
modprobe ublk_drv
mkdir -p /run/hb /mnt/hb
cat > $CONF <<EOT
[global]
control_dir = "/run/hb"
state_dir = "/run/hb/state"
[[resource]]
name = "r0"
[resource.on.alpha]
disk = "/run/hb/r0.img"
cache = "writeback"
ublk = 0
EOT
truncate -s 32M /run/hb/r0.img
{start}
$H create-md r0
start_daemon
mark STARTED
$H primary --force r0
$H status r0 | tee /tmp/st; grep -q '  ublk:/dev/ublkb0' /tmp/st
test -b /dev/ublkb0
echo "SIZE $(blockdev --getsize64 /dev/ublkb0)"
fio --name=verify --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse >/tmp/fio \
  || {{ cat /tmp/fio; exit 1; }}
fio --name=big --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 \
    --offset=8M --size=8M --verify=sha256 --do_verify=1 --verify_fatal=1 --output-format=terse >/tmp/fio \
  || {{ cat /tmp/fio; exit 1; }}
mark FIO-OK
mkfs.ext4 -q -F /dev/ublkb0; mount /dev/ublkb0 /mnt/hb
dd if=/dev/urandom of=/mnt/hb/a bs=1M count=8 status=none
for i in $(seq 20); do echo file $i > /mnt/hb/small.$i; done
(cd /mnt/hb && sha256sum a small.* > /tmp/sums); umount /mnt/hb
echo 3 > /proc/sys/vm/drop_caches
mount /dev/ublkb0 /mnt/hb; (cd /mnt/hb && sha256sum -c --quiet /tmp/sums); umount /mnt/hb
mark EXT4-OK
# hbadm down removes the device, hbadm up brings it back with the same number and data.
$H down r0
test ! -e /dev/ublkb0 && test ! -e /dev/ublkc0
$H up r0; $H primary r0
for i in $(seq 100); do test -b /dev/ublkb0 && break; sleep 0.05; done
mount /dev/ublkb0 /mnt/hb; (cd /mnt/hb && sha256sum -c --quiet /tmp/sums); umount /mnt/hb
mark DOWN-UP-OK
# SIGTERM: the daemon removes the device before it exits.
kill -TERM $D; wait $D
test ! -e /dev/ublkb0 && test ! -e /dev/ublkc0
mark SIGTERM-OK
# SIGKILL while ext4 is mounted and a writer runs: the kernel keeps /dev/ublkb0 with its
# requests queued (user recovery), the restarted daemon takes it over, the held writes go
# on once it is Primary again, and the writer finishes with no I/O error.
for i in $(seq 40); do head -c 196608 /dev/urandom > /run/hb/src.$i; done
(cd /run/hb && sha256sum src.* | sed 's/src\./w./' > /tmp/wsums)
start_daemon; $H primary r0
for i in $(seq 100); do test -b /dev/ublkb0 && break; sleep 0.05; done
grep -q 'served on the queue threads' /run/hb/log
grep -q 'one copy through the mapped backing file (user copy)' /run/hb/log
mount /dev/ublkb0 /mnt/hb
dmesg -c >/dev/null
( for i in $(seq 40); do dd if=/run/hb/src.$i of=/mnt/hb/w.$i bs=64k conv=fsync status=none || exit 1; done
  echo WRITER-DONE ) > /tmp/writer 2>&1 & W=$!
for i in $(seq 600); do test -e /mnt/hb/w.3 && break; sleep 0.05; done
kill -0 $W && echo "WRITER-RUNNING-AT-KILL"
kill -KILL $D; wait $D || true
mark KILLED
sleep 1
test -b /dev/ublkb0
# The restarted daemon serves everything on its runtime: the recovered device keeps
# USER_COPY, so the held writes' data is read out of the requests (and reads written
# into them) by the queue threads for the runtime.
export HABLOCK_UBLK_DIRECT=0; start_daemon; unset HABLOCK_UBLK_DIRECT; $H primary r0
wait $W || {{ echo "writer failed"; cat /tmp/writer; dmesg; cat /run/hb/log; exit 1; }}
grep -q WRITER-DONE /tmp/writer
grep -q 'recovered from a server that died' /run/hb/log
grep -q 'user copy, data to and from the runtime' /run/hb/log
$H status r0 | tee /tmp/st; grep -q '  ublk:/dev/ublkb0' /tmp/st
sync; umount /mnt/hb
echo 3 > /proc/sys/vm/drop_caches
mount /dev/ublkb0 /mnt/hb
(cd /mnt/hb && sha256sum -c --quiet /tmp/sums && sha256sum -c --quiet /tmp/wsums)
umount /mnt/hb
if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O'; then echo "kernel reported errors"; exit 1; fi
kill -TERM $D; wait $D
test ! -e /dev/ublkb0 && test ! -e /dev/ublkc0
mark SIGKILL-RECOVERY-OK
# O_DIRECT: r0 again, on a file in an ext4 (tmpfs refuses O_DIRECT) with cache = "none",
# so the queue threads read and write it through their rings instead of on the spot.
truncate -s 96M /run/hb/back.img; mkfs.ext4 -q -F /run/hb/back.img
modprobe loop 2>/dev/null || true
mkdir -p /mnt/back; mount -o loop /run/hb/back.img /mnt/back; truncate -s 32M /mnt/back/r0.img
sed -e 's|/run/hb/r0.img|/mnt/back/r0.img|' -e 's|cache = "writeback"|cache = "none"|' $CONF > /run/hb/c2.toml
CONF=/run/hb/c2.toml; H="$HBADM --config $CONF --node $NODE"
$H create-md r0
start_daemon; $H primary --force r0
$H status r0 | grep -q 'direct-io:yes'
for i in $(seq 100); do test -b /dev/ublkb0 && break; sleep 0.05; done
fio --name=verify --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --output-format=terse >/tmp/fio \
  || {{ cat /tmp/fio; exit 1; }}
fio --name=big --filename=/dev/ublkb0 --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 \
    --offset=8M --size=8M --verify=sha256 --do_verify=1 --verify_fatal=1 --output-format=terse >/tmp/fio \
  || {{ cat /tmp/fio; exit 1; }}
kill -TERM $D; wait $D
mark ODIRECT-OK
"#,
        hablockd = bin("hablockd").display(),
        hbadm = bin("hbadm").display(),
        start = START_DAEMON,
    );
    let Some((ok, text)) = run_guest(T, &guest, &[], &script) else {
        return;
    };
    for mark in [
        "FIO-OK",
        "EXT4-OK",
        "DOWN-UP-OK",
        "SIGTERM-OK",
        "SIGKILL-RECOVERY-OK",
        "ODIRECT-OK",
    ] {
        assert!(ok && text.contains(mark), "guest run failed before {mark}:\n{text}");
    }
    // The kill has to land while the writer is still writing, or nothing was tested.
    assert!(
        text.contains("WRITER-RUNNING-AT-KILL"),
        "the writer finished before the kill:\n{text}"
    );
}

#[test]
fn ublk_writes_replicate_with_protocol_c_to_a_host_node() {
    const T: &str = "ublk_writes_replicate_with_protocol_c_to_a_host_node";
    let Some(guest) = prepared_guest(T) else { return };
    // alpha (node_id 0) runs in the guest and dials beta; beta (node_id 1) listens on the
    // host's 127.0.0.1, which the guest reaches through guest-run's relay (-p).
    // 16 MiB keeps the initial sync over the emulated network (about 1 MiB/s) short.
    let (_alpha, mut beta) = Node::pair(NodeOptions {
        size_mib: 16,
        ..Default::default()
    });
    let beta_port = free_port();
    let alpha_disk = "/run/hb/alpha-r0.img";
    std::fs::write(
        &beta.config,
        format!(
            r#"[global]
control_dir = "{d}/run"
state_dir = "{d}/state"

[[resource]]
name = "r0"
protocol = "C"
[resource.on.alpha]
address = "127.0.0.1:{alpha_port}"
disk = "{alpha_disk}"
cache = "writeback"
ublk = true
node_id = 0
[resource.on.beta]
address = "127.0.0.1:{beta_port}"
disk = "{beta_disk}"
node_id = 1
"#,
            d = beta.dir.path().display(),
            alpha_port = free_port(),
            beta_disk = beta.disk.display(),
        ),
    )
    .unwrap();
    beta.hbadm_ok(&["create-md", "r0"]);
    beta.start();
    let script = format!(
        r#"set -e; exec 2>&1
HABLOCKD={hablockd}; HBADM={hbadm}; NODE=alpha; CONF={conf}
modprobe ublk_drv
mkdir -p /run/hb /mnt/hb
truncate -s 16M {alpha_disk}
{start}
$H create-md r0
start_daemon
$H primary --force r0
wait_for() {{ for i in $(seq 600); do [ "$($H $1 r0)" = "$2" ] && return 0; sleep 0.1; done;
  echo "timed out waiting for $1 = $2"; $H status r0; cat /run/hb/log; return 1; }}
wait_for cstate Connected
wait_for dstate UpToDate/UpToDate
mark SYNCED
DEV=$($H status r0 | sed -n 's/^  ublk://p'); echo "DEVICE $DEV"; test -b "$DEV"
mkfs.ext4 -q -F $DEV; mount $DEV /mnt/hb
dd if=/dev/urandom of=/mnt/hb/a bs=1M count=4 status=none
for i in $(seq 20); do echo file $i > /mnt/hb/small.$i; done
(cd /mnt/hb && sha256sum a small.* > /tmp/sums); umount /mnt/hb
mount $DEV /mnt/hb; (cd /mnt/hb && sha256sum -c --quiet /tmp/sums); umount /mnt/hb
# Recovery by owner mark (`ublk = true`: no fixed number to look for). A second daemon
# (node gamma, resource r9) holds the next device. Both daemons are SIGKILLed; gamma's
# restarts first and must take its own device, not r0's, then alpha's takes r0's.
cat > /run/hb/g.toml <<EOT
[global]
control_dir = "/run/hb/g"
state_dir = "/run/hb/g/state"
[[resource]]
name = "r9"
[resource.on.gamma]
disk = "/run/hb/g-r9.img"
cache = "writeback"
ublk = true
EOT
truncate -s 8M /run/hb/g-r9.img
G="$HBADM --config /run/hb/g.toml --node gamma"
$G create-md r9
start_gamma() {{
  HABLOCK_LOG=info $HABLOCKD --config /run/hb/g.toml --node gamma 2>>/run/hb/glog & GD=$!
  for i in $(seq 1200); do $G status r9 >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "gamma's hablockd did not answer"; cat /run/hb/glog; return 1
}}
start_gamma; $G primary --force r9
GDEV=$($G status r9 | sed -n 's/^  ublk://p'); echo "GAMMA DEVICE $GDEV"
test -b "$GDEV"; test "$GDEV" != "$DEV"
dd if=/dev/urandom of=$GDEV bs=1M count=4 oflag=direct status=none
GSUM=$(sha256sum < $GDEV); RSUM=$(sha256sum < $DEV)
kill -KILL $D $GD; wait $D $GD || true
sleep 1
test -b $DEV; test -b $GDEV
start_gamma
grep -q "$GDEV recovered from a server that died" /run/hb/glog
test "$($G status r9 | sed -n 's/^  ublk://p')" = "$GDEV"
test "$(sha256sum < $GDEV)" = "$GSUM"
start_daemon
grep -q "$DEV recovered from a server that died" /run/hb/log
test "$($H status r0 | sed -n 's/^  ublk://p')" = "$DEV"
test "$(sha256sum < $DEV)" = "$RSUM"
kill -TERM $GD; wait $GD
test ! -e $GDEV
mark OWNER-RECOVERY-OK
wait_for cstate Connected
wait_for dstate UpToDate/UpToDate
$H status r0
SIZE=$(blockdev --getsize64 $DEV)
echo "DATA $SIZE $(sha256sum < $DEV | cut -d' ' -f1)"
kill -TERM $D; wait $D
mark REPL-OK
"#,
        hablockd = bin("hablockd").display(),
        hbadm = bin("hbadm").display(),
        conf = beta.config.display(),
        start = START_DAEMON,
    );
    let port = beta_port.to_string();
    let Some((ok, text)) = run_guest(T, &guest, &["-p", &port], &script) else {
        return;
    };
    assert!(
        ok && text.contains("OWNER-RECOVERY-OK") && text.contains("REPL-OK"),
        "guest run failed:\n{text}\nbeta's log:\n{}",
        beta.log()
    );
    let line = text.lines().find(|l| l.starts_with("DATA ")).expect("DATA line");
    let mut f = line.split_whitespace().skip(1);
    let size: u64 = f.next().unwrap().parse().unwrap();
    let guest_sum = f.next().unwrap().to_string();
    assert_eq!(beta.stop(), Some(0));
    let out = ok_cmd_sha(&beta.disk, size);
    assert_eq!(
        out, guest_sum,
        "beta's replica differs from what the guest wrote through ublk"
    );
}

/// sha256 of the first `size` bytes of a file (the data area before internal metadata).
fn ok_cmd_sha(path: &std::path::Path, size: u64) -> String {
    let out = run_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(format!("head -c {size} '{}' | sha256sum", path.display())),
        CLIENT_TIMEOUT,
    );
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// On a kernel without ublk (this build host's), `ublk = true` leaves the resource up and
/// serving NBD, with the reason in `hbadm status` and the log.
#[test]
fn without_ublk_the_resource_serves_nbd_and_status_names_the_module() {
    let mut node = Node::new(NodeOptions::default());
    let text = std::fs::read_to_string(&node.config).unwrap();
    // The first `cache = ` line belongs to [resource.on.alpha].
    let text = text.replacen("cache = \"none\"\n", "cache = \"none\"\nublk = true\n", 1);
    std::fs::write(&node.config, text).unwrap();
    node.hbadm_ok(&["create-md", "r0"]);
    // A control device that is not there, as on a kernel without ublk_drv (also where it is).
    let missing = node.dir.path().join("no-ublk-control");
    node.start_env(&[("HABLOCK_UBLK_CONTROL", missing.to_str().unwrap())]);
    node.hbadm_ok(&["primary", "--force", "r0"]);
    let msg = "ublk is not available: load the ublk_drv module (modprobe ublk_drv, Linux 6.0+)";
    let st = node.hbadm_ok(&["status", "r0"]);
    assert!(st.contains(&format!("  problem: r0: {msg}")), "{st}");
    assert!(!st.contains("ublk:/dev"), "{st}");
    assert!(st.contains("  nbd:nbd://127.0.0.1:"), "{st}");
    assert!(node.log().contains(msg), "{}", node.log());
    // NBD serves: a write and a read back through the export.
    let mut c = RawNbd::connect(node.port, "r0");
    let data = random_bytes(7, 4096);
    assert_eq!(c.request(1, 1, 8192, 4096, &data), 0);
    assert_eq!(c.request(0, 2, 8192, 4096, &[]), 0);
    assert_eq!(node.stop(), Some(0));
}
