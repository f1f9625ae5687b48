//! hablock's iSCSI target in hablockd against real initiators: libiscsi's iscsi-ls, iscsi-inq
//! and iscsi-readcapacity16 (discovery, CHAP one-way and mutual, right and wrong secrets, ACL
//! refusal, header digests), data written and read through a raw client with digests and
//! compared with the backing file, `hbtgtadm --op show` listing the live session, LUNs added
//! and a target deleted at run time, and malformed PDUs that each close or are rejected while a
//! good session on the same target keeps working.

mod common;
mod iscsi_common;
use common::*;
use iscsi_common::*;
use std::io::{Read, Seek, SeekFrom, Write};

fn file_bytes(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn libiscsi_discovery_inquiry_chap_acl_digests() {
    if !require(
        "libiscsi_discovery_inquiry_chap_acl_digests",
        &[
            ("iscsi-ls", "libiscsi-bin"),
            ("iscsi-inq", "libiscsi-bin"),
            ("iscsi-readcapacity16", "libiscsi-bin"),
        ],
    ) {
        return;
    }
    let t = Target::start();
    let portal = format!("iscsi://127.0.0.1:{}", t.portal);

    // Discovery lists the target with this portal.
    let (ok, out) = t.libiscsi("iscsi-ls", &portal);
    assert!(ok, "{out}\n{}", t.node.log());
    assert!(
        out.contains(&format!("Target:{IQN} Portal:127.0.0.1:{},1", t.portal)),
        "{out}"
    );

    // INQUIRY and READ CAPACITY(16) of LUN 1 (16 MiB, 512-byte blocks); header digests too.
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("", 1, ""));
    assert!(ok && out.contains("Product:VIRTUAL-DISK"), "{out}");
    let (ok, out) = t.libiscsi("iscsi-readcapacity16", &t.url("", 1, "?header_digest=crc32c"));
    assert!(ok, "{out}");
    assert!(
        out.contains("Total size:16777216") && out.contains("BYTES:512"),
        "{out}"
    );

    // One-way CHAP: right secret in, wrong secret and none refused.
    t.tgt_ok("--lld iscsi --op new --mode account --user alice --password alicesecret12");
    t.tgt_ok("--lld iscsi --op bind --mode account --tid 1 --user alice");
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("alice%alicesecret12@", 1, ""));
    assert!(ok, "right CHAP secret: {out}");
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("alice%wrongsecret99@", 1, ""));
    assert!(!ok, "wrong CHAP secret logged in: {out}");
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("", 1, ""));
    assert!(!ok, "no CHAP logged in: {out}");

    // Mutual CHAP: libiscsi checks the target's answer against target_user/target_password.
    t.tgt_ok("--lld iscsi --op new --mode account --user tgtuser --password tgtsecret1234");
    t.tgt_ok("--lld iscsi --op bind --mode account --tid 1 --user tgtuser --outgoing");
    let (ok, out) = t.libiscsi(
        "iscsi-inq",
        &t.url(
            "alice%alicesecret12@",
            1,
            "?target_user=tgtuser&target_password=tgtsecret1234",
        ),
    );
    assert!(ok, "mutual CHAP: {out}");
    let (ok, out) = t.libiscsi(
        "iscsi-inq",
        &t.url(
            "alice%alicesecret12@",
            1,
            "?target_user=tgtuser&target_password=notthesecret1",
        ),
    );
    assert!(!ok, "initiator accepted a target with the wrong secret: {out}");
    t.tgt_ok("--lld iscsi --op unbind --mode account --tid 1 --user tgtuser --outgoing");
    t.tgt_ok("--lld iscsi --op unbind --mode account --tid 1 --user alice");

    // ACL: only 10.9.9.9 may log in now; discovery hides the target too.
    t.tgt_ok("--lld iscsi --op unbind --mode target --tid 1 -I ALL");
    t.tgt_ok("--lld iscsi --op bind --mode target --tid 1 -I 10.9.9.9");
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("", 1, ""));
    assert!(!ok, "ACL let 127.0.0.1 in: {out}");
    let (_, out) = t.libiscsi("iscsi-ls", &portal);
    assert!(!out.contains(IQN), "{out}");
    t.tgt_ok("--lld iscsi --op bind --mode target --tid 1 -I 127.0.0.1");
    let (ok, out) = t.libiscsi("iscsi-inq", &t.url("", 1, ""));
    assert!(ok, "ACL change not applied: {out}");
    assert!(t.node.log().contains("logged in"), "{}", t.node.log());
}

#[test]
fn data_through_the_target_show_and_live_changes() {
    let t = Target::start();
    // Digests on both ways: the raw client checks every data digest the target sends.
    let mut a = Raw::connect(t.portal);
    assert_eq!(a.login(Some(IQN), 1, true), 0);
    assert!(a.header_digest && a.data_digest, "digests were not negotiated");
    a.settle();
    let written = a.round_trip(2048, 7);
    assert_eq!(file_bytes(&t.lun_file, 2048 * 512, written.len()), written);
    // The file's own content comes back (written behind the target's back, then read).
    let pattern = random_bytes(99, 4096);
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&t.lun_file).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&pattern).unwrap();
    }
    assert_eq!(a.read10(((8 << 20) / 512) as u32, 8), pattern);

    // Without digests as well.
    let mut b = Raw::connect(t.portal);
    assert_eq!(b.login(Some(IQN), 2, false), 0);
    assert!(!b.header_digest && !b.data_digest);
    b.settle();
    b.round_trip(4096, 8);

    // --op show lists both nexuses with their initiator and address.
    let show = t.tgt_ok("--lld iscsi --op show --mode target");
    assert!(show.contains(&format!("Initiator: {INITIATOR}")), "{show}");
    assert!(show.contains("IP Address: 127.0.0.1"), "{show}");
    assert_eq!(show.matches("I_T nexus: ").count(), 2, "{show}");

    // A LUN added at run time appears on the running session (REPORT LUNS).
    let lun2 = t.node.path("lun2.img");
    std::fs::File::create(&lun2).unwrap().set_len(4 << 20).unwrap();
    t.tgt_ok(&format!(
        "--lld iscsi --op new --mode logicalunit --tid 1 --lun 2 -b {}",
        lun2.display()
    ));
    let mut found = false;
    for _ in 0..40 {
        let (st, d) = a.scsi(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, &[]);
        if st == 0 && d.len() >= 8 + 24 && d[8 + 16 + 1] == 2 {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(found, "LUN 2 did not appear in REPORT LUNS");

    // --params changed at run time: the LU changes in place and keeps serving.
    t.tgt_ok("--lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params vendor_id=ACME");
    let mut vendor = Vec::new();
    for _ in 0..40 {
        let (st, d) = a.scsi(&[0x12, 0, 0, 0, 36, 0], 36, &[]);
        if st == 0 && d.len() >= 16 {
            vendor = d[8..16].to_vec();
            if vendor == b"ACME    " {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(vendor, b"ACME    ", "vendor_id update not applied");
    a.round_trip(3000, 9);

    // Logout of b; deleting the target closes a's session.
    let mut lo = [0u8; 48];
    lo[0] = 0x46;
    lo[1] = 0x80;
    lo[16..20].copy_from_slice(&0x777u32.to_be_bytes());
    lo[24..28].copy_from_slice(&b.cmdsn.to_be_bytes());
    lo[28..32].copy_from_slice(&b.exp_statsn.to_be_bytes());
    b.send(lo, &[]);
    let r = b.recv().expect("logout response");
    assert_eq!(r.opcode(), 0x26);
    assert!(b.closed());
    t.tgt_ok("--lld iscsi --op delete --mode target --tid 1 --force");
    assert!(a.closed(), "session of a deleted target still open");
    let show = t.tgt_ok("--lld iscsi --op show --mode target");
    assert!(!show.contains(IQN), "{show}");
}

#[test]
fn malformed_pdus_close_only_their_connection() {
    let t = Target::start();
    let mut good = Raw::connect(t.portal);
    assert_eq!(good.login(Some(IQN), 1, true), 0);
    good.settle();
    good.round_trip(0, 1);
    let mut lba = 64;
    let mut check_good = |what: &str| {
        lba += 64;
        good.round_trip(lba, lba as u64);
        eprintln!("good session fine after: {what}");
    };

    // Truncated BHS, then the initiator goes away.
    let mut c = Raw::connect(t.portal);
    c.s.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0, 0, 1, 2, 3]).unwrap();
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    check_good("truncated BHS");

    // Garbage instead of a login.
    let mut c = Raw::connect(t.portal);
    c.s.write_all(&random_bytes(5, 4096)).unwrap();
    assert!(c.closed());
    check_good("garbage bytes");

    // Login out of order: a SCSI command first gets status 0x020b and a close.
    let mut c = Raw::connect(t.portal);
    let (b, _) = c.command(&[0x12, 0, 0, 0, 36, 0], 36, 0);
    c.send(b, &[]);
    let r = c.recv().expect("login reject");
    assert_eq!((r.opcode(), r.bhs[36], r.bhs[37]), (0x23, 0x02, 0x0b));
    assert!(c.closed());
    check_good("SCSI command before login");

    // Logged in, then: an undefined opcode is rejected (0x3f, reason 0x05) and the
    // connection goes on; an out-of-window CmdSN is ignored; both then serve a command.
    let mut c = Raw::connect(t.portal);
    assert_eq!(c.login(Some(IQN), 2, false), 0);
    c.settle();
    let mut b = [0u8; 48];
    b[0] = 0x1e;
    b[16..20].copy_from_slice(&0x55u32.to_be_bytes());
    c.send(b, &[]);
    let r = c.recv().expect("reject");
    assert_eq!((r.opcode(), r.bhs[2]), (0x3f, 0x05), "{r:?}");
    let (mut b, stray) = c.command(&[0, 0, 0, 0, 0, 0], 0, 0);
    let far = c.cmdsn.wrapping_add(5000);
    b[24..28].copy_from_slice(&far.to_be_bytes());
    c.cmdsn -= 1; // the out-of-window command does not use up a CmdSN
    c.send(b, &[]);
    let (b, itt) = c.command(&[0, 0, 0, 0, 0, 0], 0, 0);
    c.send(b, &[]);
    let r = c.recv().expect("response");
    assert_eq!(
        (r.opcode(), r.itt()),
        (0x21, itt),
        "the out-of-window command {stray} was answered"
    );
    c.round_trip(9000, 3);
    check_good("bad opcode and out-of-window CmdSN");

    // A data segment over MaxRecvDataSegmentLength closes the connection.
    let (mut b, _) = c.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0, 512);
    b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    c.s.write_all(&b).unwrap();
    c.s.write_all(&[0u8; 1024]).unwrap();
    assert!(c.closed());
    check_good("oversize data segment");

    // With digests: a wrong header digest closes; a wrong data digest is rejected (0x02).
    let mut c = Raw::connect(t.portal);
    assert_eq!(c.login(Some(IQN), 3, true), 0);
    c.settle();
    let (b, _) = c.command(&[0x2a, 0, 0, 0, 0, 0x20, 0, 0, 1, 0], 0, 512);
    let mut raw = b.to_vec();
    raw[5..8].copy_from_slice(&[0, 2, 0]);
    let mut hd = hablock::iscsi::pdu::crc32c(&raw).to_le_bytes();
    let mut wire = raw.clone();
    wire.extend_from_slice(&hd);
    wire.extend_from_slice(&[9u8; 512]);
    wire.extend_from_slice(&[0, 0, 0, 0]); // wrong data digest
    c.s.write_all(&wire).unwrap();
    let r = c.recv().expect("reject or check condition");
    assert!(
        r.opcode() == 0x3f && r.bhs[2] == 0x02 || r.opcode() == 0x21 && r.bhs[3] == 0x02,
        "{r:?}"
    );
    hd[0] ^= 0xff;
    let (b, _) = c.command(&[0, 0, 0, 0, 0, 0], 0, 0);
    let mut wire = b.to_vec();
    wire.extend_from_slice(&hd);
    c.s.write_all(&wire).unwrap();
    assert!(c.closed());
    check_good("data and header digest errors");

    // The daemon is still up and serving new logins.
    let mut c = Raw::connect(t.portal);
    assert_eq!(c.login(Some(IQN), 4, false), 0);
    c.settle();
    c.round_trip(12000, 4);
    // A login to a target that does not exist: 0x0203.
    let mut c = Raw::connect(t.portal);
    assert_eq!(c.login(Some("iqn.2026-11.org.hablock:nope"), 5, false), 0x0203);
}
