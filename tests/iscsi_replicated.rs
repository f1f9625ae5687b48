//! iSCSI LUNs on a replicated resource (`--bstype hablock --backing-store r0`), two real
//! hablockd daemons (alpha Primary, beta Secondary, connected and in sync) and real initiators:
//! qemu-io/qemu-img through qemu's iSCSI driver (libiscsi) write, and the bytes are compared on
//! the peer's backing disk; libiscsi's iscsi-readcapacity16 and iscsi-test-cu show the
//! Secondary's LUN answering NOT READY (sense key 2, LU in standby); after a switchover the
//! roles of the two LUNs swap and writes through beta's portal reach alpha's disk.

mod common;
mod iscsi_common;
use common::*;
use iscsi_common::*;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the initiators need: libiscsi's tools and qemu's iSCSI block driver.
const TOOLS: &[(&str, &str)] = &[
    ("iscsi-inq", "libiscsi-bin"),
    ("iscsi-readcapacity16", "libiscsi-bin"),
    ("iscsi-test-cu", "libiscsi-bin"),
    ("qemu-io", "qemu-utils"),
    ("qemu-img", "qemu-utils"),
];

/// qemu's libiscsi driver, loaded by qemu-io/qemu-img for `iscsi://` URLs.
const QEMU_ISCSI: &str = "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so";

/// Both nodes of r0 with a portal each (alpha 127.0.0.1, beta 127.0.0.2) and the same target
/// on both: LUN 1 `--bstype hablock --backing-store r0`. Alpha is Primary, the pair in sync.
struct Pair {
    alpha: Node,
    beta: Node,
    alpha_portal: String,
    beta_portal: String,
}

impl Pair {
    /// None (after [`skip`]) when an initiator tool is missing.
    fn start(test: &str) -> Option<Pair> {
        if !(require(test, TOOLS) && require_file(test, QEMU_ISCSI, "qemu-block-extra")) {
            return None;
        }
        let (pa, pb) = (free_port(), free_port());
        let alpha_portal = format!("127.0.0.1:{pa}");
        let beta_portal = format!("127.0.0.2:{pb}");
        let (alpha, beta) = synced_pair(NodeOptions {
            size_mib: 16,
            resource_extra: FAST_NET.into(),
            config_extra: format!(
                "\n[iscsi.on.alpha]\nportal = \"{alpha_portal}\"\n\n[iscsi.on.beta]\nportal = \"{beta_portal}\"\n"
            ),
            ..Default::default()
        });
        let p = Pair {
            alpha,
            beta,
            alpha_portal,
            beta_portal,
        };
        for (node, portal) in [(&p.alpha, &p.alpha_portal), (&p.beta, &p.beta_portal)] {
            tgt_ok(node, &format!("--lld iscsi --op new --mode target --tid 1 -T {IQN}"));
            tgt_ok(
                node,
                "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype hablock --backing-store r0",
            );
            tgt_ok(node, "--lld iscsi --op bind --mode target --tid 1 -I ALL");
            wait_lun(node, portal);
        }
        Some(p)
    }

    /// r0's data size (what the LUN serves: the backing disk less its internal metadata).
    fn data_size(&self) -> u64 {
        resource_status(&self.alpha)["resources"][0]["size"].as_u64().unwrap()
    }

    fn logs(&self) -> String {
        format!("alpha log:\n{}\nbeta log:\n{}", self.alpha.log(), self.beta.log())
    }
}

fn lun_url(portal: &str) -> String {
    format!("iscsi://{portal}/{IQN}/1")
}

/// What libiscsi says when a command (or the TEST UNIT READY it sends right after login)
/// ends in CHECK CONDITION, NOT READY / LOGICAL UNIT NOT READY, TARGET PORT IN STANDBY STATE.
const LIBISCSI_STANDBY: &str = "SENSE KEY:NOT READY(2) ASCQ:(null)(0x040b)";

/// Waits (bounded) until LUN 1 on `portal` exists: iscsi-inq logs in (libiscsi sends TEST
/// UNIT READY first) and gets an answer, or the standby sense. The server picks up a new LUN
/// on its next refresh (within a second).
fn wait_lun(node: &Node, portal: &str) {
    let start = Instant::now();
    loop {
        let (ok, out) = libiscsi("iscsi-inq", &lun_url(portal));
        if ok || out.contains(LIBISCSI_STANDBY) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}: LUN 1 on {portal} never appeared: {out}\n{}",
            node.name,
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `data` at byte `offset` of the LUN behind `portal` with qemu-io (qemu's libiscsi
/// driver; the buffer comes from a file). Returns (success, output).
fn qemu_write(dir: &Path, portal: &str, offset: u64, data: &[u8]) -> (bool, String) {
    let src = dir.join(format!("write-{offset}.bin"));
    std::fs::write(&src, data).unwrap();
    let cmd = format!("write -s {} {offset} {}", src.display(), data.len());
    let out = run_timeout(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", &cmd])
            .arg(lun_url(portal)),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io exits 0 even when a command fails; the failure is in its output.
    (
        out.status.success() && text.contains("wrote ") && !text.contains("failed"),
        text,
    )
}

/// The whole LUN behind `portal`, read with qemu-img convert (qemu's libiscsi driver).
fn qemu_read_all(dir: &Path, portal: &str) -> Vec<u8> {
    let dest = dir.join("lun-copy.raw");
    let _ = std::fs::remove_file(&dest);
    ok(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(lun_url(portal))
        .arg(&dest));
    std::fs::read(&dest).unwrap()
}

fn file_bytes(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

/// Asserts that `node`'s backing disk holds `data` at `offset`, naming the first byte that
/// differs.
fn assert_on_disk(node: &Node, offset: u64, data: &[u8], what: &str, logs: impl Fn() -> String) {
    let got = file_bytes(&node.disk, offset, data.len());
    if let Some(i) = (0..data.len()).find(|&i| got[i] != data[i]) {
        panic!(
            "{what}: {}'s disk differs at byte {} (offset {offset} + {i}): {:#04x} instead of {:#04x}\n{}",
            node.name,
            offset + i as u64,
            got[i],
            data[i],
            logs()
        );
    }
}

/// The writes of the tests: 4 KiB at the start, 1 MiB in the middle, 4 MiB (more than one
/// peer message), and the last 64 KiB of the data area (right before internal metadata).
fn writes(size: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, random_bytes(seed, 4096)),
        (3 << 20, random_bytes(seed + 1, 1 << 20)),
        (6 << 20, random_bytes(seed + 2, 4 << 20)),
        (size - (64 << 10), random_bytes(seed + 3, 64 << 10)),
    ]
}

#[test]
fn writes_through_the_primarys_lun_land_on_the_peers_disk() {
    let Some(p) = Pair::start("writes_through_the_primarys_lun_land_on_the_peers_disk") else {
        return;
    };
    let size = p.data_size();
    let (ok, out) = libiscsi("iscsi-readcapacity16", &lun_url(&p.alpha_portal));
    assert!(ok, "READ CAPACITY(16) on the Primary: {out}\n{}", p.logs());
    assert!(out.contains(&format!("Total size:{size}")), "{out}");
    for (off, data) in writes(size, 40) {
        let (ok, out) = qemu_write(p.alpha.dir.path(), &p.alpha_portal, off, &data);
        assert!(ok, "write at {off} through alpha's LUN: {out}\n{}", p.logs());
        // Protocol C: acknowledged means on the peer's disk too, while both run.
        assert_on_disk(&p.beta, off, &data, "acknowledged write", || p.logs());
        assert_on_disk(&p.alpha, off, &data, "acknowledged write", || p.logs());
    }
    // And it reads back through the same LUN.
    let all = qemu_read_all(p.alpha.dir.path(), &p.alpha_portal);
    assert_eq!(all.len() as u64, size);
    for (off, data) in writes(size, 40) {
        assert!(
            all[off as usize..off as usize + data.len()] == data[..],
            "read back at {off}"
        );
    }
    // Stopped, the two data areas are the same byte for byte (the metadata at the end is
    // each node's own).
    let (mut alpha, mut beta) = (p.alpha, p.beta);
    assert_eq!(alpha.stop(), Some(0));
    assert_eq!(beta.stop(), Some(0));
    assert_same_data(&alpha, &beta, size);
}

/// The data areas of both backing disks are equal (internal metadata excluded).
fn assert_same_data(a: &Node, b: &Node, size: u64) {
    let da = file_bytes(&a.disk, 0, size as usize);
    let db = file_bytes(&b.disk, 0, size as usize);
    let first = (0..da.len()).find(|&i| da[i] != db[i]);
    assert!(
        first.is_none(),
        "the data areas differ first at byte {first:?}\nalpha log:\n{}\nbeta log:\n{}",
        a.log(),
        b.log()
    );
}

/// Logs a raw client in to LUN 1 on `portal` (ISID `isid`); returns the client and what
/// [`tur`] says then.
fn raw_session(portal: &str, isid: u8) -> (Raw, Option<(u8, u8, u8)>) {
    let mut c = Raw::connect_to(portal);
    assert_eq!(c.login(Some(IQN), isid, false), 0, "login to {portal}");
    let sense = tur(&mut c);
    (c, sense)
}

/// TEST UNIT READY past any unit attention (power on for a new nexus): None for GOOD, else
/// the sense.
fn tur(c: &mut Raw) -> Option<(u8, u8, u8)> {
    for _ in 0..3 {
        let (status, _, sense) = c.scsi_sense(&[0, 0, 0, 0, 0, 0], 0, &[]);
        match sense {
            Some((0x6, _, _)) => continue,
            _ if status == 0 => return None,
            s => return s,
        }
    }
    panic!("TEST UNIT READY keeps answering UNIT ATTENTION");
}

/// NOT READY / LOGICAL UNIT NOT READY, TARGET PORT IN STANDBY STATE (SPC-4 0x04/0x0b).
const STANDBY: Option<(u8, u8, u8)> = Some((0x2, 0x04, 0x0b));

/// Everything that shows the LUN on `portal` is a standby LU: libiscsi's tools and qemu's
/// driver fail with the standby sense, a raw session gets it for TEST UNIT READY, READ(10) and
/// WRITE(10) (and the write does not reach `node`'s disk), and INQUIRY still answers.
fn assert_standby(node: &Node, portal: &str, logs: impl Fn() -> String) {
    let url = lun_url(portal);
    let (ok, out) = libiscsi("iscsi-readcapacity16", &url);
    assert!(
        !ok && out.contains(LIBISCSI_STANDBY),
        "{}'s LUN: iscsi-readcapacity16 should fail with NOT READY (standby): {out}\n{}",
        node.name,
        logs()
    );
    let tur = run_timeout(
        Command::new("iscsi-test-cu")
            .args(["-i", INITIATOR, "-t", "SCSI.TestUnitReady"])
            .arg(&url),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&tur.stdout).into_owned() + &String::from_utf8_lossy(&tur.stderr);
    assert!(
        !tur.status.success() && text.contains(LIBISCSI_STANDBY),
        "{}'s LUN: iscsi-test-cu TestUnitReady should fail with NOT READY (standby): {text}",
        node.name
    );
    let before = file_bytes(&node.disk, 0, 4096);
    let (ok, out) = qemu_write(node.dir.path(), portal, 0, &random_bytes(77, 4096));
    assert!(
        !ok && out.contains(LIBISCSI_STANDBY),
        "{}'s LUN: qemu-io should fail to open it with NOT READY (standby): {out}",
        node.name
    );

    let (mut c, sense) = raw_session(portal, 7);
    assert_eq!(sense, STANDBY, "{}'s LUN: TEST UNIT READY\n{}", node.name, logs());
    let (_, _, sense) = c.scsi_sense(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096, &[]);
    assert_eq!(sense, STANDBY, "{}'s LUN: READ(10)", node.name);
    let (_, _, sense) = c.scsi_sense(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0], 0, &random_bytes(78, 4096));
    assert_eq!(sense, STANDBY, "{}'s LUN: WRITE(10)", node.name);
    assert_eq!(
        file_bytes(&node.disk, 0, 4096),
        before,
        "{}: a write through the standby LUN reached the disk",
        node.name
    );
    let (status, data, _) = c.scsi_sense(&[0x12, 0, 0, 0, 36, 0], 36, &[]);
    assert_eq!(status, 0, "{}'s LUN: INQUIRY in standby", node.name);
    assert_eq!(&data[16..28], b"VIRTUAL-DISK", "{}'s LUN: INQUIRY product", node.name);
}

#[test]
fn the_secondarys_lun_answers_not_ready() {
    let Some(p) = Pair::start("the_secondarys_lun_answers_not_ready") else {
        return;
    };
    assert_standby(&p.beta, &p.beta_portal, || p.logs());
    // The same target on the Primary is ready: the difference is the role.
    let (_, sense) = raw_session(&p.alpha_portal, 7);
    assert_eq!(sense, None, "alpha's LUN: TEST UNIT READY\n{}", p.logs());
}

#[test]
fn after_a_switchover_beta_serves_and_alpha_answers_not_ready() {
    let Some(p) = Pair::start("after_a_switchover_beta_serves_and_alpha_answers_not_ready") else {
        return;
    };
    let size = p.data_size();
    let before = writes(size, 50);
    for (off, data) in &before {
        let (ok, out) = qemu_write(p.alpha.dir.path(), &p.alpha_portal, *off, data);
        assert!(ok, "write at {off} through alpha's LUN: {out}\n{}", p.logs());
    }

    // Sessions that stay logged in across the switchover, one on each node.
    let (mut on_alpha, sense) = raw_session(&p.alpha_portal, 1);
    assert_eq!(sense, None, "alpha's LUN before the switchover\n{}", p.logs());
    let (mut on_beta, sense) = raw_session(&p.beta_portal, 2);
    assert_eq!(sense, STANDBY, "beta's LUN before the switchover\n{}", p.logs());

    p.alpha.hbadm_ok(&["secondary", "r0"]);
    p.beta.hbadm_ok(&["primary", "r0"]);
    assert_eq!(p.beta.hbadm_ok(&["role", "r0"]).trim(), "Primary/Secondary");

    // The sessions see the new roles without logging in again.
    assert_eq!(tur(&mut on_alpha), STANDBY, "alpha's open session after demotion");
    let (_, _, sense) = on_alpha.scsi_sense(&[0x2a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], 0, &random_bytes(79, 4096));
    assert_eq!(sense, STANDBY, "WRITE(10) on alpha's open session after demotion");
    assert_eq!(
        tur(&mut on_beta),
        None,
        "beta's open session after promotion\n{}",
        p.logs()
    );
    let data = random_bytes(80, 4096);
    assert_eq!(on_beta.write10(0x1000, &data), 0, "WRITE(10) on beta's open session");
    assert_on_disk(&p.alpha, 0x1000 * 512, &data, "write on beta's open session", || {
        p.logs()
    });
    // Gone before the daemons stop (which would wait for them to log out).
    drop((on_alpha, on_beta));

    // Beta's LUN serves what was written through alpha...
    let (ok, out) = libiscsi("iscsi-readcapacity16", &lun_url(&p.beta_portal));
    assert!(ok, "beta's LUN after promotion: {out}\n{}", p.logs());
    let all = qemu_read_all(p.beta.dir.path(), &p.beta_portal);
    for (off, data) in &before {
        assert!(
            all[*off as usize..*off as usize + data.len()] == data[..],
            "beta's LUN does not return what was written through alpha at {off}"
        );
    }
    // ...and takes writes, which reach alpha's disk (protocol C: before the answer).
    let after = writes(size, 60);
    for (off, data) in &after {
        let (ok, out) = qemu_write(p.beta.dir.path(), &p.beta_portal, *off, data);
        assert!(ok, "write at {off} through beta's LUN: {out}\n{}", p.logs());
        assert_on_disk(&p.alpha, *off, data, "write through beta's LUN", || p.logs());
        assert_on_disk(&p.beta, *off, data, "write through beta's LUN", || p.logs());
    }
    // Beta's NBD export (the same resource) shows them too.
    let via_nbd = nbd_read_prefix(&p.beta.uri(), &p.beta.path("nbd-copy.raw"), size as usize);
    for (off, data) in &after {
        assert!(
            via_nbd[*off as usize..*off as usize + data.len()] == data[..],
            "beta's NBD export at {off}"
        );
    }

    // Alpha's LUN is the standby one now.
    assert_standby(&p.alpha, &p.alpha_portal, || p.logs());

    let (mut alpha, mut beta) = (p.alpha, p.beta);
    assert_eq!(beta.stop(), Some(0));
    assert_eq!(alpha.stop(), Some(0));
    assert_same_data(&alpha, &beta, size);
}
