//! Command tests against a memory device (and the real FileDevice on a temporary file).

use super::cdb::op;
use super::pr::PrState;
use super::sense::{asc, key, parse};
use super::*;
use crate::iscsi::types::{Nexus, TaskAttr};
use kernel_shim::BlockSizes;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;

/// A block device in memory. Reads and writes yield once, so concurrent commands interleave.
struct Mem {
    data: Mutex<Vec<u8>>,
    standby: AtomicBool,
    /// errno every I/O fails with (0: none).
    fail: AtomicI32,
}

impl Mem {
    fn new(size: usize) -> Mem {
        Mem {
            data: Mutex::new(vec![0; size]),
            standby: AtomicBool::new(false),
            fail: AtomicI32::new(0),
        }
    }
    fn err(&self) -> io::Result<()> {
        match self.fail.load(Ordering::Relaxed) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl BlockDevice for Mem {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 20,
        }
    }
    fn read_only(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }
    async fn read(&self, offset: u64, len: u32) -> io::Result<IoBuf> {
        tokio::task::yield_now().await;
        self.err()?;
        let d = self.data.lock().unwrap();
        Ok(IoBuf::copy_from(&d[offset as usize..offset as usize + len as usize]))
    }
    async fn write(&self, offset: u64, data: IoBuf, _fua: bool) -> io::Result<()> {
        tokio::task::yield_now().await;
        self.err()?;
        self.data.lock().unwrap()[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        self.err()
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> io::Result<()> {
        self.write_zeroes(offset, len, false, true).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32, _fua: bool, _unmap: bool) -> io::Result<()> {
        self.err()?;
        self.data.lock().unwrap()[offset as usize..(offset + len as u64) as usize].fill(0);
        Ok(())
    }
}

const BLOCKS: u64 = 2048;

fn nexus(name: &str) -> Nexus {
    Nexus {
        initiator_name: format!("iqn.2026-01.test:{name}"),
        isid: [0x80, 0, 0, 0, 0, 1],
        tpgt: 1,
    }
}

fn lu_with(f: impl FnOnce(&mut LuParams)) -> LogicalUnit<Mem> {
    let mut p = LuParams::new(1, 1);
    f(&mut p);
    LogicalUnit::new(Mem::new((BLOCKS * 512) as usize), p)
}

fn lu() -> LogicalUnit<Mem> {
    lu_with(|_| {})
}

fn task(cdb: &[u8], data: Option<&[u8]>, n: &Nexus) -> ScsiTask {
    ScsiTask {
        lun: 0,
        cdb: cdb.to_vec(),
        data_out: data.map(IoBuf::copy_from),
        expected_data_in: 1 << 20,
        attr: TaskAttr::Simple,
        nexus: n.clone(),
    }
}

async fn run(lu: &LogicalUnit<Mem>, cdb: &[u8], data: Option<&[u8]>, n: &Nexus) -> ScsiOutcome {
    lu.execute(task(cdb, data, n)).await
}

/// Runs a command on a LU that `n` has already met (its POWER ON attention consumed).
async fn ok(lu: &LogicalUnit<Mem>, cdb: &[u8], data: Option<&[u8]>, n: &Nexus) -> Vec<u8> {
    let out = run(lu, cdb, data, n).await;
    assert_eq!(out.status, status::GOOD, "cdb {cdb:02x?} sense {:02x?}", out.sense);
    out.data_in.map(|b| b.to_vec()).unwrap_or_default()
}

async fn sense(lu: &LogicalUnit<Mem>, cdb: &[u8], data: Option<&[u8]>, n: &Nexus) -> (u8, u8, u8) {
    let out = run(lu, cdb, data, n).await;
    assert_eq!(out.status, status::CHECK_CONDITION, "cdb {cdb:02x?}");
    parse(&out.sense).expect("well-formed sense")
}

async fn meet(lu: &LogicalUnit<Mem>, n: &Nexus) {
    assert_eq!(sense(lu, &[0; 6], None, n).await, (key::UNIT_ATTENTION, 0x29, 0x00));
    ok(lu, &[0; 6], None, n).await;
}

fn illegal(code: (u8, u8)) -> (u8, u8, u8) {
    (key::ILLEGAL_REQUEST, code.0, code.1)
}

fn rw10(opc: u8, lba: u32, n: u16) -> Vec<u8> {
    let mut c = vec![opc, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&n.to_be_bytes());
    c
}

fn rw16(opc: u8, lba: u64, n: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opc;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&n.to_be_bytes());
    c
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn lun_field_decoding() {
    assert_eq!(decode_lun(0), Some(0));
    assert_eq!(decode_lun(0x0005_0000_0000_0000), Some(5));
    assert_eq!(decode_lun(0x4105_0000_0000_0000), Some(0x105));
    assert_eq!(
        decode_lun(0x4005_0000_0000_0000),
        Some(5),
        "flat addressing of a small LUN"
    );
    assert_eq!(decode_lun(0x0105_0000_0000_0000), None, "bus 1 is not served");
    assert_eq!(decode_lun(0x0005_0001_0000_0000), None, "second level is not served");
    assert_eq!(decode_lun(0xc000_0000_0000_0000), None, "extended addressing");
    for n in [0u16, 1, 255, 256, MAX_LUN] {
        assert_eq!(decode_lun(encode_lun(n)), Some(n));
    }
}

#[test]
fn sense_formats() {
    let s = Sense::invalid_cdb(7, Some(3)).with_information(0x1234);
    let f = s.encode(SenseFormat::Fixed);
    assert_eq!(f.len(), 18);
    assert_eq!(f[0], 0xf0, "current, VALID");
    assert_eq!(&f[3..7], &[0, 0, 0x12, 0x34]);
    assert_eq!((f[2], f[12], f[13]), (5, 0x24, 0));
    assert_eq!(&f[15..18], &[0x80 | 0x40 | 0x08 | 3, 0, 7]);
    let d = s.encode(SenseFormat::Descriptor);
    assert_eq!(&d[..4], &[0x72, 5, 0x24, 0]);
    assert_eq!(d[7] as usize, d.len() - 8);
    assert_eq!(&d[8..12], &[0, 0x0a, 0x80, 0]);
    assert_eq!(&d[12..20], &0x1234u64.to_be_bytes());
    assert_eq!(&d[20..28], &[2, 6, 0, 0, 0xc8 | 3, 0, 7, 0]);
    assert_eq!(parse(&f), Some((5, 0x24, 0)));
    assert_eq!(parse(&d), Some((5, 0x24, 0)));
    assert_eq!(parse(&d[..10]), None);
    // An INFORMATION value beyond 32 bits is not claimed VALID in fixed format.
    let big = Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR).with_information(1 << 40);
    assert_eq!(big.encode(SenseFormat::Fixed)[0], 0x70);
}

#[tokio::test]
async fn unit_attention_power_on_and_exempt_commands() {
    let lu = lu();
    let a = nexus("a");
    // INQUIRY is served and does not clear it.
    let inq = ok(&lu, &[op::INQUIRY, 0, 0, 0, 96, 0], None, &a).await;
    assert_eq!(inq[0], 0);
    // REQUEST SENSE reports it and clears it.
    let rs = ok(&lu, &[op::REQUEST_SENSE, 0, 0, 0, 252, 0], None, &a).await;
    assert_eq!(parse(&rs), Some((key::UNIT_ATTENTION, 0x29, 0)));
    ok(&lu, &[0; 6], None, &a).await;
    let rs = ok(&lu, &[op::REQUEST_SENSE, 1, 0, 0, 252, 0], None, &a).await;
    assert_eq!(rs[0], 0x72, "DESC bit asks for descriptor format");
    assert_eq!(parse(&rs), Some((key::NO_SENSE, 0, 0)));
    // Another nexus still gets its own.
    let b = nexus("b");
    meet(&lu, &b).await;
    // LUN reset: everyone but the resetter sees POWER ON again.
    lu.lun_reset(Some(&a));
    ok(&lu, &[0; 6], None, &a).await;
    assert_eq!(sense(&lu, &[0; 6], None, &b).await, (key::UNIT_ATTENTION, 0x29, 0));
}

#[tokio::test]
async fn capacity_change_is_announced() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    lu.device().data.lock().unwrap().resize((BLOCKS * 1024) as usize, 0);
    assert_eq!(sense(&lu, &[0; 6], None, &a).await, (key::UNIT_ATTENTION, 0x2a, 0x09));
    let cap = ok(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, &a).await;
    assert_eq!(u32::from_be_bytes(cap[..4].try_into().unwrap()) as u64, BLOCKS * 2 - 1);
}

#[tokio::test]
async fn inquiry_standard_and_vpd() {
    let lu = lu_with(|p| {
        p.thin_provisioning = true;
        p.target_port_name = Some("iqn.2026-01.t:x,t,0x0001".into());
    });
    let a = nexus("a");
    meet(&lu, &a).await;
    let d = ok(&lu, &[op::INQUIRY, 0, 0, 0, 255, 0], None, &a).await;
    assert_eq!(d.len(), 66);
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(&d[8..16], b"HABLOCK ");
    assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
    assert_eq!(d[2], 6);
    // Allocation length truncates.
    assert_eq!(ok(&lu, &[op::INQUIRY, 0, 0, 0, 5, 0], None, &a).await.len(), 5);
    // Page code without EVPD, CMDDT, unknown page: field pointers.
    let out = run(&lu, &[op::INQUIRY, 0, 0x80, 0, 255, 0], None, &a).await;
    assert_eq!(&out.sense[15..18], &[0xc0, 0, 2]);
    let out = run(&lu, &[op::INQUIRY, 2, 0, 0, 255, 0], None, &a).await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::INVALID_FIELD_IN_CDB)));
    assert_eq!(&out.sense[15..18], &[0xc8 | 1, 0, 1], "byte 1 bit 1 (CMDDT)");
    assert_eq!(
        sense(&lu, &[op::INQUIRY, 1, 0x99, 0, 255, 0], None, &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    let p0 = ok(&lu, &[op::INQUIRY, 1, 0, 0, 255, 0], None, &a).await;
    assert_eq!(&p0[4..], &[0, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let sn = ok(&lu, &[op::INQUIRY, 1, 0x80, 0, 255, 0], None, &a).await;
    assert_eq!(&sn[4..], b"beaf11");
    let id = ok(&lu, &[op::INQUIRY, 1, 0x83, 0, 255, 0], None, &a).await;
    assert_eq!(u16::from_be_bytes([id[2], id[3]]) as usize, id.len() - 4);
    // Walk the designators: NAA, T10, relative port, SCSI name.
    let mut at = 4;
    let mut types = Vec::new();
    while at < id.len() {
        types.push(id[at + 1] & 0x0f);
        at += 4 + id[at + 3] as usize;
    }
    assert_eq!(at, id.len());
    assert_eq!(types, vec![3, 1, 4, 8]);
    assert_eq!(id[8] >> 4, 3, "locally assigned NAA");
    let bl = ok(&lu, &[op::INQUIRY, 1, 0xb0, 0, 255, 0], None, &a).await;
    assert_eq!(bl.len(), 0x40);
    assert_eq!(bl[5], 128, "COMPARE AND WRITE limit");
    assert_eq!(u32::from_be_bytes(bl[8..12].try_into().unwrap()), 2048, "1 MiB / 512");
    assert_eq!(
        u32::from_be_bytes(bl[24..28].try_into().unwrap()),
        256,
        "unmap descriptors"
    );
    let lbp = ok(&lu, &[op::INQUIRY, 1, 0xb2, 0, 255, 0], None, &a).await;
    assert_eq!(lbp[5], 0xe0);
    let b1 = ok(&lu, &[op::INQUIRY, 1, 0xb1, 0, 255, 0], None, &a).await;
    assert_eq!(&b1[4..6], &[0, 1]);
}

#[tokio::test]
async fn read_capacity() {
    let lu = lu_with(|p| p.thin_provisioning = true);
    let a = nexus("a");
    meet(&lu, &a).await;
    let c = ok(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, &a).await;
    assert_eq!(c, [0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    assert_eq!(
        sense(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0], None, &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB),
        "LBA without PMI"
    );
    let mut cdb = rw16(op::SERVICE_ACTION_IN_16, 0, 32);
    cdb[1] = 0x10;
    let c = ok(&lu, &cdb, None, &a).await;
    assert_eq!(c.len(), 32);
    assert_eq!(u64::from_be_bytes(c[..8].try_into().unwrap()), BLOCKS - 1);
    assert_eq!(c[13], 3, "8 logical blocks per 4 KiB physical block");
    assert_eq!(c[14] & 0x80, 0x80, "LBPME when thin");
    cdb[13] = 12;
    assert_eq!(ok(&lu, &cdb, None, &a).await.len(), 12);
    // Unknown service action of SERVICE ACTION IN(16).
    cdb[1] = 0x1f;
    assert_eq!(sense(&lu, &cdb, None, &a).await, illegal(asc::INVALID_FIELD_IN_CDB));
}

#[tokio::test]
async fn read_write_all_sizes() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let data = pattern(4 * 512, 7);
    // WRITE(6) at 3, READ back with every size.
    ok(&lu, &[op::WRITE_6, 0, 0, 3, 4, 0], Some(&data), &a).await;
    assert_eq!(ok(&lu, &[op::READ_6, 0, 0, 3, 4, 0], None, &a).await, data);
    assert_eq!(ok(&lu, &rw10(op::READ_10, 3, 4), None, &a).await, data);
    let mut r12 = vec![op::READ_12, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0];
    assert_eq!(ok(&lu, &r12, None, &a).await, data);
    assert_eq!(ok(&lu, &rw16(op::READ_16, 3, 4), None, &a).await, data);
    let d2 = pattern(2 * 512, 99);
    ok(&lu, &rw16(op::WRITE_16, BLOCKS - 2, 2), Some(&d2), &a).await;
    r12[0] = op::WRITE_12;
    r12[5] = 100;
    r12[9] = 2;
    ok(&lu, &r12, Some(&d2), &a).await;
    let mut wv = rw10(op::WRITE_VERIFY_10, 200, 2);
    wv[1] = 0x02;
    ok(&lu, &wv, Some(&d2), &a).await;
    assert_eq!(ok(&lu, &rw16(op::READ_16, BLOCKS - 2, 2), None, &a).await, d2);
    assert_eq!(ok(&lu, &rw10(op::READ_10, 100, 2), None, &a).await, d2);
    assert_eq!(ok(&lu, &rw10(op::READ_10, 200, 2), None, &a).await, d2);
    // READ(6) with length 0 means 256 blocks; READ(10) with 0 moves nothing.
    assert_eq!(ok(&lu, &[op::READ_6, 0, 0, 0, 0, 0], None, &a).await.len(), 256 * 512);
    assert!(ok(&lu, &rw10(op::READ_10, 0, 0), None, &a).await.is_empty());
    // FUA and DPO are accepted.
    let mut w = rw10(op::WRITE_10, 10, 1);
    w[1] = 0x18;
    ok(&lu, &w, Some(&data[..512]), &a).await;
    // A longer Data-Out than the CDB says is cut to size.
    ok(&lu, &rw10(op::WRITE_10, 11, 1), Some(&data), &a).await;
    assert_eq!(ok(&lu, &rw10(op::READ_10, 11, 1), None, &a).await, data[..512]);
}

#[tokio::test]
async fn read_write_errors() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let lba_oor = illegal(asc::LBA_OUT_OF_RANGE);
    assert_eq!(
        sense(&lu, &rw10(op::READ_10, BLOCKS as u32 - 1, 2), None, &a).await,
        lba_oor
    );
    assert_eq!(sense(&lu, &rw16(op::READ_16, u64::MAX, 1), None, &a).await, lba_oor);
    assert_eq!(
        sense(&lu, &rw10(op::READ_10, BLOCKS as u32 + 1, 0), None, &a).await,
        lba_oor
    );
    assert_eq!(
        sense(&lu, &rw10(op::WRITE_10, BLOCKS as u32, 1), Some(&[0; 512]), &a).await,
        lba_oor
    );
    // Too little Data-Out (ExpectedDataTransferLength below the CDB's length): only the
    // whole blocks that came are written, GOOD, and the outcome carries the CDB's length so
    // the session reports the overflow residual (libiscsi's iSCSIResiduals tests, tgt, LIO).
    ok(&lu, &rw10(op::WRITE_10, 0, 2), Some(&[5; 1024]), &a).await;
    let out = run(&lu, &rw10(op::WRITE_10, 0, 2), Some(&[6; 512]), &a).await;
    assert_eq!(out.status, status::GOOD);
    assert_eq!(out.write_len, Some(1024));
    let mut expect = vec![6; 512];
    expect.extend_from_slice(&[5; 512]);
    assert_eq!(ok(&lu, &rw10(op::READ_10, 0, 2), None, &a).await, expect);
    let out = run(&lu, &rw10(op::WRITE_10, 0, 1), Some(&[7; 200]), &a).await;
    assert_eq!((out.status, out.write_len), (status::GOOD, Some(512)));
    let out = run(&lu, &rw10(op::WRITE_10, 0, 1), None, &a).await;
    assert_eq!((out.status, out.write_len), (status::GOOD, Some(512)));
    assert_eq!(ok(&lu, &rw10(op::READ_10, 0, 2), None, &a).await, expect);
    // Reserved / unsupported bits (RDPROTECT) with a bit pointer.
    let mut r = rw10(op::READ_10, 0, 1);
    r[1] = 0x20;
    let out = run(&lu, &r, None, &a).await;
    assert_eq!(&out.sense[15..18], &[0xc8 | 5, 0, 1]);
    // Over the maximum transfer length.
    assert_eq!(
        sense(&lu, &rw10(op::READ_10, 0, 2049), None, &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    // NACA in the control byte.
    let mut r = rw10(op::READ_10, 0, 1);
    r[9] = 0x04;
    assert_eq!(sense(&lu, &r, None, &a).await, illegal(asc::INVALID_FIELD_IN_CDB));
    // Unknown opcode.
    assert_eq!(
        sense(&lu, &[0xc7, 0, 0, 0, 0, 0], None, &a).await,
        illegal(asc::INVALID_OPCODE)
    );
    assert_eq!(sense(&lu, &[], None, &a).await, illegal(asc::INVALID_OPCODE));
    // Medium errors.
    lu.device().fail.store(libc::EIO, Ordering::Relaxed);
    let out = run(&lu, &rw10(op::READ_10, 5, 1), None, &a).await;
    assert_eq!(parse(&out.sense), Some((key::MEDIUM_ERROR, 0x11, 0)));
    assert_eq!(&out.sense[3..7], &[0, 0, 0, 5], "failing LBA in INFORMATION");
    assert_eq!(
        sense(&lu, &rw10(op::WRITE_10, 5, 1), Some(&[1; 512]), &a).await,
        (key::MEDIUM_ERROR, 0x0c, 0)
    );
    // A full thin store, and a resource that lost Primary under the command.
    lu.device().fail.store(libc::ENOSPC, Ordering::Relaxed);
    assert_eq!(
        sense(&lu, &rw10(op::WRITE_10, 5, 1), Some(&[1; 512]), &a).await,
        (key::DATA_PROTECT, 0x27, 0x07)
    );
    lu.device().fail.store(libc::EPERM, Ordering::Relaxed);
    assert_eq!(
        sense(&lu, &rw10(op::WRITE_10, 5, 1), Some(&[1; 512]), &a).await,
        (key::NOT_READY, 0x04, 0x0b)
    );
    lu.device().fail.store(0, Ordering::Relaxed);
    // Standby (a resource that is not Primary): NOT READY, LU in standby; INQUIRY still works.
    lu.device().standby.store(true, Ordering::Relaxed);
    let standby = (key::NOT_READY, 0x04, 0x0b);
    assert_eq!(sense(&lu, &rw10(op::READ_10, 0, 1), None, &a).await, standby);
    assert_eq!(sense(&lu, &[0; 6], None, &a).await, standby);
    ok(&lu, &[op::INQUIRY, 0, 0, 0, 96, 0], None, &a).await;
    let rs = ok(&lu, &[op::REQUEST_SENSE, 0, 0, 0, 18, 0], None, &a).await;
    assert_eq!(parse(&rs), Some(standby));
    let ms = ok(&lu, &[op::MODE_SENSE_6, 0, 0x3f, 0, 255, 0], None, &a).await;
    assert_eq!(ms[2] & 0x80, 0x80, "WP while standby");
    lu.device().standby.store(false, Ordering::Relaxed);
}

#[tokio::test]
async fn readonly_lu_is_write_protected() {
    let lu = lu_with(|p| {
        p.readonly = true;
        p.thin_provisioning = true;
    });
    let a = nexus("a");
    meet(&lu, &a).await;
    let wp = (key::DATA_PROTECT, 0x27, 0);
    assert_eq!(sense(&lu, &rw10(op::WRITE_10, 0, 1), Some(&[0; 512]), &a).await, wp);
    let mut ws = rw10(op::WRITE_SAME_10, 0, 1);
    assert_eq!(sense(&lu, &ws, Some(&[0; 512]), &a).await, wp);
    ws[1] = 0x08;
    assert_eq!(sense(&lu, &ws, Some(&[0; 512]), &a).await, wp);
    let mut caw = rw16(op::COMPARE_AND_WRITE, 0, 0);
    caw[13] = 1;
    assert_eq!(sense(&lu, &caw, Some(&[0; 1024]), &a).await, wp);
    let ms = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], None, &a).await;
    assert_eq!(ms[2] & 0x80, 0x80, "WP bit");
    ok(&lu, &rw10(op::READ_10, 0, 1), None, &a).await;
}

#[tokio::test]
async fn software_write_protect_in_control_page() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let ch = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x4a, 0, 255, 0], None, &a).await;
    assert_eq!(ch[4 + 4] & 0x08, 0x08, "SWP changeable");
    let mut ctl = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], None, &a).await[4..].to_vec();
    ctl[4] |= 0x08;
    let mut pl = vec![0u8; 4];
    pl.extend_from_slice(&ctl);
    ok(&lu, &[op::MODE_SELECT_6, 0x10, 0, 0, pl.len() as u8, 0], Some(&pl), &a).await;
    let ms = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], None, &a).await;
    assert_eq!(ms[2] & 0x80, 0x80, "WP");
    assert_eq!(ms[4 + 4] & 0x08, 0x08, "SWP");
    assert_eq!(
        sense(&lu, &rw10(op::WRITE_10, 0, 1), Some(&[0; 512]), &a).await,
        (key::DATA_PROTECT, 0x27, 0)
    );
    pl[4 + 4] &= !0x08;
    ok(&lu, &[op::MODE_SELECT_6, 0x10, 0, 0, pl.len() as u8, 0], Some(&pl), &a).await;
    ok(&lu, &rw10(op::WRITE_10, 0, 1), Some(&[0; 512]), &a).await;
}

#[tokio::test]
async fn verify_compares() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let data = pattern(2 * 512, 3);
    ok(&lu, &rw10(op::WRITE_10, 50, 2), Some(&data), &a).await;
    ok(&lu, &rw10(op::VERIFY_10, 50, 2), None, &a).await; // BYTCHK 0
    let mut v = rw10(op::VERIFY_10, 50, 2);
    v[1] = 0x02;
    ok(&lu, &v, Some(&data), &a).await;
    let mut bad = data.clone();
    bad[700] ^= 1;
    let out = run(&lu, &v, Some(&bad), &a).await;
    assert_eq!(parse(&out.sense), Some((key::MISCOMPARE, 0x1d, 0)));
    assert_eq!(&out.sense[3..7], &700u32.to_be_bytes());
    // BYTCHK 11b: one block compared with each.
    ok(&lu, &rw10(op::WRITE_10, 60, 2), Some(&[9; 1024]), &a).await;
    v[1] = 0x06;
    v[2..6].copy_from_slice(&60u32.to_be_bytes());
    ok(&lu, &v, Some(&[9; 512]), &a).await;
    let mut v16 = rw16(op::VERIFY_16, 59, 2);
    v16[1] = 0x06;
    let out = run(&lu, &v16, Some(&[9; 512]), &a).await;
    assert_eq!(&out.sense[3..7], &0u32.to_be_bytes());
    v[1] = 0x04;
    assert_eq!(
        sense(&lu, &v, Some(&[9; 512]), &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    assert_eq!(
        sense(&lu, &rw10(op::VERIFY_10, BLOCKS as u32, 1), None, &a).await,
        illegal(asc::LBA_OUT_OF_RANGE)
    );
    let mut v12 = vec![op::VERIFY_12, 0x02, 0, 0, 0, 50, 0, 0, 0, 2, 0, 0];
    ok(&lu, &v12, Some(&data), &a).await;
    v12[5] = 51;
    assert_eq!(sense(&lu, &v12, Some(&data), &a).await.0, key::MISCOMPARE);
}

#[tokio::test]
async fn sync_cache_and_start_stop() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    ok(&lu, &rw10(op::SYNC_CACHE_10, 0, 0), None, &a).await;
    ok(&lu, &rw16(op::SYNC_CACHE_16, 10, 10), None, &a).await;
    assert_eq!(
        sense(&lu, &rw10(op::SYNC_CACHE_10, BLOCKS as u32, 1), None, &a).await,
        illegal(asc::LBA_OUT_OF_RANGE)
    );
    ok(&lu, &[op::START_STOP_UNIT, 0, 0, 0, 1, 0], None, &a).await;
    ok(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], None, &a).await;
    assert_eq!(
        sense(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 4, 0], None, &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
}

#[tokio::test]
async fn removable_medium_eject_load_and_prevent() {
    let lu = lu_with(|p| p.removable = true);
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    let inq = ok(&lu, &[op::INQUIRY, 0, 0, 0, 36, 0], None, &a).await;
    assert_eq!(inq[1], 0x80, "RMB");
    let eject = [op::START_STOP_UNIT, 1, 0, 0, 0x02, 0];
    let load = [op::START_STOP_UNIT, 1, 0, 0, 0x03, 0];
    let prevented = illegal(asc::MEDIUM_REMOVAL_PREVENTED);
    let no_medium = (key::NOT_READY, 0x3a, 0);
    ok(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], None, &a).await;
    assert_eq!(sense(&lu, &eject, None, &a).await, prevented);
    assert_eq!(sense(&lu, &eject, None, &b).await, prevented, "any nexus prevents");
    ok(&lu, &[0; 6], None, &a).await;
    ok(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 0, 0], None, &a).await;
    ok(&lu, &eject, None, &a).await;
    assert_eq!(sense(&lu, &[0; 6], None, &a).await, no_medium);
    assert_eq!(sense(&lu, &rw10(op::READ_10, 0, 1), None, &b).await, no_medium);
    assert_eq!(
        sense(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, &a).await,
        no_medium
    );
    ok(&lu, &[op::INQUIRY, 0, 0, 0, 36, 0], None, &a).await;
    ok(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], None, &b).await;
    assert_eq!(sense(&lu, &load, None, &a).await, prevented);
    // Loss of the preventing nexus lifts it.
    lu.nexus_lost(&b);
    ok(&lu, &load, None, &a).await;
    ok(&lu, &[0; 6], None, &a).await;
    // LUN reset lifts prevention too.
    ok(&lu, &[op::PREVENT_ALLOW, 0, 0, 0, 1, 0], None, &a).await;
    lu.lun_reset(Some(&a));
    ok(&lu, &eject, None, &a).await;
    ok(&lu, &load, None, &a).await;
    // A fixed medium ignores LOEJ.
    let fixed = lu_with(|_| {});
    meet(&fixed, &a).await;
    ok(&fixed, &eject, None, &a).await;
    ok(&fixed, &[0; 6], None, &a).await;
}

#[tokio::test]
async fn write_same_and_unmap() {
    let lu = lu_with(|p| p.thin_provisioning = true);
    let a = nexus("a");
    meet(&lu, &a).await;
    let block = pattern(512, 5);
    ok(&lu, &rw10(op::WRITE_SAME_10, 10, 3), Some(&block), &a).await;
    let got = ok(&lu, &rw10(op::READ_10, 10, 3), None, &a).await;
    assert!(got.chunks(512).all(|c| c == block));
    // UNMAP bit with zeroes, NDOB.
    let mut ws = rw10(op::WRITE_SAME_10, 10, 1);
    ws[1] = 0x08;
    ok(&lu, &ws, Some(&[0; 512]), &a).await;
    let mut ws16 = rw16(op::WRITE_SAME_16, 11, 1);
    ws16[1] = 0x09;
    ok(&lu, &ws16, None, &a).await;
    let got = ok(&lu, &rw10(op::READ_10, 10, 3), None, &a).await;
    assert!(got[..1024].iter().all(|&b| b == 0));
    assert_eq!(&got[1024..], &block[..]);
    // Zero blocks means to the end of the medium (WSNZ 0, as tgt); ANCHOR, beyond the end,
    // missing data are refused.
    let inval = illegal(asc::INVALID_FIELD_IN_CDB);
    ok(&lu, &rw10(op::WRITE_SAME_10, BLOCKS as u32 - 2, 0), Some(&block), &a).await;
    let tail = ok(&lu, &rw10(op::READ_10, BLOCKS as u32 - 2, 2), None, &a).await;
    assert_eq!(&tail[..512], &block[..]);
    assert_eq!(&tail[512..], &block[..]);
    ws[1] = 0x10;
    assert_eq!(sense(&lu, &ws, Some(&block), &a).await, inval);
    assert_eq!(
        sense(&lu, &rw16(op::WRITE_SAME_16, BLOCKS - 1, 2), Some(&block), &a).await,
        illegal(asc::LBA_OUT_OF_RANGE)
    );
    assert_eq!(
        sense(&lu, &rw16(op::WRITE_SAME_16, 0, 2), None, &a).await,
        illegal(asc::INVALID_FIELD_IN_COMMAND_IU)
    );

    // UNMAP: two descriptors.
    ok(&lu, &rw10(op::WRITE_10, 100, 4), Some(&[7; 2048]), &a).await;
    let mut pl = vec![0u8; 8 + 32];
    pl[0..2].copy_from_slice(&38u16.to_be_bytes());
    pl[2..4].copy_from_slice(&32u16.to_be_bytes());
    pl[8..16].copy_from_slice(&100u64.to_be_bytes());
    pl[16..20].copy_from_slice(&1u32.to_be_bytes());
    pl[24..32].copy_from_slice(&102u64.to_be_bytes());
    pl[32..36].copy_from_slice(&2u32.to_be_bytes());
    let mut um = vec![op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 40, 0];
    ok(&lu, &um, Some(&pl), &a).await;
    let got = ok(&lu, &rw10(op::READ_10, 100, 4), None, &a).await;
    assert!(got[..512].iter().all(|&b| b == 0));
    assert!(got[512..1024].iter().all(|&b| b == 7));
    assert!(got[1024..].iter().all(|&b| b == 0));
    // Out of range descriptor, short parameter list, too many descriptors, ANCHOR.
    pl[24..32].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    assert_eq!(sense(&lu, &um, Some(&pl), &a).await, illegal(asc::LBA_OUT_OF_RANGE));
    um[8] = 4;
    assert_eq!(
        sense(&lu, &um, Some(&pl), &a).await,
        illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
    );
    um[8] = 0;
    ok(&lu, &um, None, &a).await;
    um[1] = 1;
    assert_eq!(sense(&lu, &um, None, &a).await, illegal(asc::INVALID_FIELD_IN_CDB));

    // Without thin provisioning: UNMAP is not served, WRITE SAME refuses the UNMAP bit.
    let thick = lu_with(|_| {});
    meet(&thick, &a).await;
    let um = vec![op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 40, 0];
    assert_eq!(sense(&thick, &um, Some(&pl), &a).await, illegal(asc::INVALID_OPCODE));
    let mut ws = rw10(op::WRITE_SAME_10, 10, 1);
    ws[1] = 0x08;
    let out = run(&thick, &ws, Some(&[0; 512]), &a).await;
    assert_eq!(&out.sense[15..18], &[0xc8 | 3, 0, 1]);
}

#[tokio::test]
async fn get_lba_status() {
    let lu = lu_with(|p| p.thin_provisioning = true);
    let a = nexus("a");
    meet(&lu, &a).await;
    let mut c = rw16(op::SERVICE_ACTION_IN_16, 100, 64);
    c[1] = 0x12;
    let d = ok(&lu, &c, None, &a).await;
    assert_eq!(d.len(), 24);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 100);
    assert_eq!(u32::from_be_bytes(d[16..20].try_into().unwrap()) as u64, BLOCKS - 100);
    assert_eq!(d[20], 0, "mapped");
    c[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    assert_eq!(sense(&lu, &c, None, &a).await, illegal(asc::LBA_OUT_OF_RANGE));
}

#[tokio::test]
async fn compare_and_write() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let old = pattern(1024, 1);
    let new = pattern(1024, 2);
    ok(&lu, &rw10(op::WRITE_10, 8, 2), Some(&old), &a).await;
    let mut caw = rw16(op::COMPARE_AND_WRITE, 8, 0);
    caw[13] = 2;
    let mut both = old.clone();
    both.extend_from_slice(&new);
    ok(&lu, &caw, Some(&both), &a).await;
    assert_eq!(ok(&lu, &rw10(op::READ_10, 8, 2), None, &a).await, new);
    // Now the old data no longer matches: MISCOMPARE at the first differing byte, nothing written.
    let out = run(&lu, &caw, Some(&both), &a).await;
    assert_eq!(parse(&out.sense), Some((key::MISCOMPARE, 0x1d, 0)));
    let first = old.iter().zip(&new).position(|(x, y)| x != y).unwrap();
    assert_eq!(&out.sense[3..7], &(first as u32).to_be_bytes());
    assert_eq!(ok(&lu, &rw10(op::READ_10, 8, 2), None, &a).await, new);
    // Too many blocks, too little data, beyond the end.
    caw[13] = 200;
    assert_eq!(
        sense(&lu, &caw, Some(&both), &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    caw[13] = 2;
    assert_eq!(
        sense(&lu, &caw, Some(&old), &a).await,
        illegal(asc::INVALID_FIELD_IN_COMMAND_IU)
    );
    caw[2..10].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    assert_eq!(sense(&lu, &caw, Some(&both), &a).await, illegal(asc::LBA_OUT_OF_RANGE));
}

#[tokio::test]
async fn compare_and_write_race_has_one_winner() {
    for round in 0..20u8 {
        let lu = lu();
        let (a, b) = (nexus("a"), nexus("b"));
        meet(&lu, &a).await;
        meet(&lu, &b).await;
        ok(&lu, &rw10(op::WRITE_10, 4, 1), Some(&[0; 512]), &a).await;
        // Both expect zeroes and write their own mark; overlapping ranges (4..6 and 4..5).
        let mut c1 = rw16(op::COMPARE_AND_WRITE, 4, 0);
        c1[13] = 1;
        let mut d1 = vec![0u8; 512];
        d1.extend(vec![1u8; 512]);
        let mut d2 = vec![0u8; 512];
        d2.extend(vec![2u8; 512]);
        let t1 = task(&c1, Some(&d1), &a);
        let t2 = task(&c1, Some(&d2), &b);
        let (o1, o2) = if round % 2 == 0 {
            tokio::join!(lu.execute(t1), lu.execute(t2))
        } else {
            let (o2, o1) = tokio::join!(lu.execute(t2), lu.execute(t1));
            (o1, o2)
        };
        let wins = [&o1, &o2].iter().filter(|o| o.status == status::GOOD).count();
        assert_eq!(wins, 1, "round {round}");
        let loser = if o1.status == status::GOOD { &o2 } else { &o1 };
        assert_eq!(parse(&loser.sense).unwrap().0, key::MISCOMPARE);
        let got = ok(&lu, &rw10(op::READ_10, 4, 1), None, &a).await;
        let mark = if o1.status == status::GOOD { 1 } else { 2 };
        assert!(got.iter().all(|&x| x == mark));
    }
}

#[tokio::test]
async fn mode_sense_and_select() {
    let lu = lu();
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    // MODE SENSE(6), caching page, block descriptor.
    let d = ok(&lu, &[op::MODE_SENSE_6, 0, 0x08, 0, 255, 0], None, &a).await;
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[3], 8);
    assert_eq!(&d[5..8], &[0, 0x08, 0], "2048 blocks");
    assert_eq!(&d[9..12], &[0, 2, 0], "512-byte blocks");
    assert_eq!(&d[12..14], &[0x08, 0x12]);
    assert_eq!(d[14] & 0x04, 0x04, "WCE on by default");
    // All pages, DBD, MODE SENSE(10) with LLBAA.
    let all = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x3f, 0, 255, 0], None, &a).await;
    assert_eq!(all[3], 0);
    let codes: Vec<u8> = {
        let mut at = 4;
        let mut v = Vec::new();
        while at < all.len() {
            v.push(all[at]);
            at += 2 + all[at + 1] as usize;
        }
        v
    };
    assert_eq!(codes, vec![0x02, 0x08, 0x0a, 0x1c]);
    let ten = ok(&lu, &[op::MODE_SENSE_10, 0x10, 0x3f, 0xff, 0, 0, 0, 1, 0, 0], None, &a).await;
    assert_eq!(u16::from_be_bytes([ten[0], ten[1]]) as usize, ten.len() - 2);
    assert_eq!(ten[4], 1, "LONGLBA");
    assert_eq!(u16::from_be_bytes([ten[6], ten[7]]), 16);
    // Changeable values, saved values, unknown page, truncation.
    let ch = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x48, 0, 255, 0], None, &a).await;
    assert_eq!(ch[6], 0x04);
    assert_eq!(
        sense(&lu, &[op::MODE_SENSE_6, 0, 0xc8, 0, 255, 0], None, &a).await,
        illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)
    );
    assert_eq!(
        sense(&lu, &[op::MODE_SENSE_6, 0, 0x19, 0, 255, 0], None, &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    assert_eq!(ok(&lu, &[op::MODE_SENSE_6, 0, 0x3f, 0, 4, 0], None, &a).await.len(), 4);

    // MODE SELECT(6): turn WCE off, with the page as MODE SENSE returned it (PS set).
    let mut pl = vec![0u8, 0, 0, 0];
    let mut page = d[12..].to_vec();
    page[0] |= 0x80;
    page[2] &= !0x04;
    pl.extend_from_slice(&page);
    ok(&lu, &[op::MODE_SELECT_6, 0x10, 0, 0, pl.len() as u8, 0], Some(&pl), &a).await;
    let d = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], None, &a).await;
    assert_eq!(d[6] & 0x04, 0);
    // The other nexus hears about it, the changer does not.
    assert_eq!(sense(&lu, &[0; 6], None, &b).await, (key::UNIT_ATTENTION, 0x2a, 0x01));
    ok(&lu, &[0; 6], None, &a).await;
    // A field that is not changeable: INVALID FIELD IN PARAMETER LIST pointing at it.
    let mut bad = pl.clone();
    bad[4 + 3] = 0xff;
    let out = run(
        &lu,
        &[op::MODE_SELECT_6, 0x10, 0, 0, bad.len() as u8, 0],
        Some(&bad),
        &a,
    )
    .await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)));
    assert_eq!(&out.sense[15..18], &[0x80, 0, 7]);
    // Wrong page length, unknown page, short list, SP.
    let mut bad = pl.clone();
    bad[5] = 3;
    assert_eq!(
        sense(
            &lu,
            &[op::MODE_SELECT_6, 0x10, 0, 0, bad.len() as u8, 0],
            Some(&bad),
            &a
        )
        .await,
        illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    let mut bad = pl.clone();
    bad[4] = 0x19;
    assert_eq!(
        sense(
            &lu,
            &[op::MODE_SELECT_6, 0x10, 0, 0, bad.len() as u8, 0],
            Some(&bad),
            &a
        )
        .await,
        illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    assert_eq!(
        sense(&lu, &[op::MODE_SELECT_6, 0x10, 0, 0, 2, 0], Some(&pl), &a).await,
        illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
    );
    assert_eq!(
        sense(&lu, &[op::MODE_SELECT_6, 0x11, 0, 0, pl.len() as u8, 0], Some(&pl), &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    // MODE SELECT(10) with a block descriptor of the wrong block size; then D_SENSE on.
    let mut pl10 = vec![0u8, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
    let mut ctl = ok(&lu, &[op::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], None, &a).await[4..].to_vec();
    ctl[2] |= 0x04;
    pl10.extend_from_slice(&ctl);
    let n = pl10.len() as u8;
    assert_eq!(
        sense(
            &lu,
            &[op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 0, n, 0],
            Some(&pl10),
            &a
        )
        .await,
        illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    pl10[14] = 0x02;
    ok(
        &lu,
        &[op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 0, n, 0],
        Some(&pl10),
        &a,
    )
    .await;
    let out = run(&lu, &rw10(op::READ_10, BLOCKS as u32, 1), None, &a).await;
    assert_eq!(out.sense[0], 0x72, "descriptor sense after D_SENSE");
}

#[tokio::test]
async fn report_supported_opcodes() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    let all = ok(
        &lu,
        &[op::MAINTENANCE_IN, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        None,
        &a,
    )
    .await;
    let len = u32::from_be_bytes(all[..4].try_into().unwrap()) as usize;
    assert_eq!(len, cdb::COMMANDS.len() * 8);
    assert_eq!(all.len(), len + 4);
    let rctd = ok(
        &lu,
        &[op::MAINTENANCE_IN, 0x0c, 0x80, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        None,
        &a,
    )
    .await;
    assert_eq!(rctd.len(), 4 + cdb::COMMANDS.len() * 20);
    // One opcode: READ(10).
    let one = ok(
        &lu,
        &[op::MAINTENANCE_IN, 0x0c, 1, op::READ_10, 0, 0, 0, 0, 0, 64, 0, 0],
        None,
        &a,
    )
    .await;
    assert_eq!(one[1] & 0x07, 3);
    assert_eq!(u16::from_be_bytes([one[2], one[3]]), 10);
    assert_eq!(one[4], op::READ_10);
    // Unsupported opcode, opcode with service action asked without one, one with SA.
    let no = ok(
        &lu,
        &[op::MAINTENANCE_IN, 0x0c, 1, 0xc7, 0, 0, 0, 0, 0, 64, 0, 0],
        None,
        &a,
    )
    .await;
    assert_eq!(no[1] & 0x07, 1);
    assert_eq!(
        sense(
            &lu,
            &[op::MAINTENANCE_IN, 0x0c, 1, op::PR_IN, 0, 0, 0, 0, 0, 64, 0, 0],
            None,
            &a
        )
        .await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    let sa = ok(
        &lu,
        &[op::MAINTENANCE_IN, 0x0c, 2, 0x9e, 0, 0x10, 0, 0, 0, 64, 0, 0],
        None,
        &a,
    )
    .await;
    assert_eq!(sa[1] & 0x07, 3);
    assert_eq!(
        sense(
            &lu,
            &[op::MAINTENANCE_IN, 0x0c, 5, 0, 0, 0, 0, 0, 0, 64, 0, 0],
            None,
            &a
        )
        .await,
        illegal(asc::INVALID_FIELD_IN_CDB)
    );
    // Every listed command's CDB length matches its opcode group.
    for i in cdb::COMMANDS {
        assert_eq!(cdb::cdb_len(i.op), Some(i.usage.len()), "{:02x}", i.op);
        assert_eq!(i.usage[0], i.op);
    }
}

#[tokio::test]
async fn luns_table_controller_and_missing() {
    let luns: Luns<Mem> = Luns::new();
    let a = nexus("a");
    let t = |lun: u64, cdb: &[u8]| {
        let mut t = task(cdb, None, &a);
        t.lun = lun;
        t
    };
    // Only the controller LUN 0.
    let rl = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let out = luns.execute(t(0, &rl)).await;
    assert_eq!(
        out.data_in.unwrap().to_vec(),
        [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let out = luns.execute(t(0, &[op::INQUIRY, 0, 0, 0, 96, 0])).await;
    assert_eq!(out.data_in.unwrap()[0], 0x0c);
    assert_eq!(luns.execute(t(0, &[0; 6])).await.status, status::GOOD);
    let out = luns.execute(t(0, &rw10(op::READ_10, 0, 1))).await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::INVALID_OPCODE)));
    // LUN 1 and 300 added.
    luns.insert(1, Arc::new(lu()));
    luns.insert(300, Arc::new(lu()));
    let out = luns.execute(t(encode_lun(300), &rl)).await;
    let d = out.data_in.unwrap().to_vec();
    assert_eq!(&d[..4], &24u32.to_be_bytes());
    assert_eq!(&d[16..18], &[0, 1]);
    assert_eq!(&d[24..26], &[0x41, 0x2c]);
    // Allocation length below 16, unknown SELECT REPORT, well-known only.
    let mut bad = rl;
    bad[9] = 8;
    bad[8] = 0;
    assert_eq!(
        parse(&luns.execute(t(0, &bad)).await.sense),
        Some(illegal(asc::INVALID_FIELD_IN_CDB))
    );
    let mut sel = rl;
    sel[2] = 0x07;
    assert_eq!(
        parse(&luns.execute(t(0, &sel)).await.sense),
        Some(illegal(asc::INVALID_FIELD_IN_CDB))
    );
    sel[2] = 0x01;
    assert_eq!(&luns.execute(t(0, &sel)).await.data_in.unwrap()[..4], &[0, 0, 0, 0]);
    // Data LUN 1 through peripheral and flat addressing.
    let out = luns.execute(t(encode_lun(1), &[op::INQUIRY, 0, 0, 0, 96, 0])).await;
    assert_eq!(out.data_in.unwrap()[0], 0x00);
    let out = luns.execute(t(0x4001_0000_0000_0000, &[0; 6])).await;
    assert_eq!(parse(&out.sense), Some((key::UNIT_ATTENTION, 0x29, 0)));
    // Missing LUN 7.
    let out = luns.execute(t(encode_lun(7), &[op::INQUIRY, 0, 0, 0, 96, 0])).await;
    assert_eq!(out.status, status::GOOD);
    assert_eq!(out.data_in.unwrap()[0], 0x7f);
    let out = luns.execute(t(encode_lun(7), &[0; 6])).await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::LU_NOT_SUPPORTED)));
    let out = luns
        .execute(t(encode_lun(7), &[op::REQUEST_SENSE, 0, 0, 0, 18, 0]))
        .await;
    assert_eq!(parse(&out.data_in.unwrap()), Some(illegal(asc::LU_NOT_SUPPORTED)));
    let out = luns.execute(t(0xc000_0000_0000_0000, &[0; 6])).await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::LU_NOT_SUPPORTED)));
    // Adding a LUN tells the nexuses of the others.
    let one = luns.get(1).unwrap();
    ok_any(&one, &a).await;
    luns.insert(2, Arc::new(lu()));
    let out = luns.execute(t(encode_lun(1), &[0; 6])).await;
    assert_eq!(parse(&out.sense), Some((key::UNIT_ATTENTION, 0x3f, 0x0e)));
    // REPORT LUNS through the LU clears that attention.
    luns.insert(3, Arc::new(lu()));
    assert_eq!(luns.execute(t(encode_lun(1), &rl)).await.status, status::GOOD);
    assert_eq!(luns.execute(t(encode_lun(1), &[0; 6])).await.status, status::GOOD);
    assert!(luns.remove(2).is_some());
    assert_eq!(luns.numbers(), vec![1, 3, 300]);
    // Target reset: POWER ON again on every LU; nexus loss drops SPC-2 reservations.
    let b = nexus("b");
    let tb = |lun: u64, cdb: &[u8]| {
        let mut t = task(cdb, None, &b);
        t.lun = lun;
        t
    };
    ok_any(&luns.get(3).unwrap(), &a).await;
    ok_any(&luns.get(3).unwrap(), &b).await;
    luns.reset_all(None);
    let out = luns.execute(t(encode_lun(3), &[0; 6])).await;
    assert_eq!(parse(&out.sense), Some((key::UNIT_ATTENTION, 0x29, 0)));
    ok_any(&luns.get(3).unwrap(), &b).await;
    assert_eq!(
        luns.execute(tb(encode_lun(3), &[op::RESERVE_6, 0, 0, 0, 0, 0]))
            .await
            .status,
        status::GOOD
    );
    let read = rw10(op::READ_10, 0, 1);
    assert_eq!(
        luns.execute(t(encode_lun(3), &read)).await.status,
        status::RESERVATION_CONFLICT
    );
    luns.nexus_lost(&b);
    assert_eq!(luns.execute(t(encode_lun(3), &read)).await.status, status::GOOD);
}

/// Clears whatever attentions `n` has on `lu`.
async fn ok_any(lu: &LogicalUnit<Mem>, n: &Nexus) {
    for _ in 0..20 {
        if run(lu, &[0; 6], None, n).await.status == status::GOOD {
            return;
        }
    }
    panic!("unit attentions never cleared");
}

#[tokio::test]
async fn spc2_reserve_release() {
    let lu = lu();
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    ok(&lu, &[op::RESERVE_6, 0, 0, 0, 0, 0], None, &a).await;
    ok(&lu, &[op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, &a).await;
    ok(&lu, &rw10(op::READ_10, 0, 1), None, &a).await;
    let conflict = |o: ScsiOutcome| assert_eq!(o.status, status::RESERVATION_CONFLICT);
    conflict(run(&lu, &rw10(op::READ_10, 0, 1), None, &b).await);
    conflict(run(&lu, &[op::RESERVE_6, 0, 0, 0, 0, 0], None, &b).await);
    conflict(run(&lu, &[0; 6], None, &b).await);
    ok(&lu, &[op::INQUIRY, 0, 0, 0, 36, 0], None, &b).await;
    ok(&lu, &[op::RELEASE_6, 0, 0, 0, 0, 0], None, &b).await; // not the holder: no-op
    conflict(run(&lu, &rw10(op::READ_10, 0, 1), None, &b).await);
    ok(&lu, &[op::RELEASE_6, 0, 0, 0, 0, 0], None, &a).await;
    ok(&lu, &rw10(op::READ_10, 0, 1), None, &b).await;
    // LUN reset drops it.
    ok(&lu, &[op::RESERVE_6, 0, 0, 0, 0, 0], None, &a).await;
    lu.lun_reset(Some(&a));
    ok_any(&lu, &b).await;
    ok(&lu, &rw10(op::READ_10, 0, 1), None, &b).await;
    // So does the holder's nexus loss.
    ok(&lu, &[op::RESERVE_6, 0, 0, 0, 0, 0], None, &b).await;
    lu.nexus_lost(&b);
    ok(&lu, &rw10(op::READ_10, 0, 1), None, &a).await;
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![op::PR_OUT, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    (cdb, p)
}

async fn pr(lu: &LogicalUnit<Mem>, n: &Nexus, sa: u8, kind: u8, key: u64, sa_key: u64) -> ScsiOutcome {
    let (c, p) = pr_out(sa, kind, key, sa_key, 0);
    run(lu, &c, Some(&p), n).await
}

async fn pr_in(lu: &LogicalUnit<Mem>, n: &Nexus, sa: u8) -> Vec<u8> {
    ok(lu, &[op::PR_IN, sa, 0, 0, 0, 0, 0, 0x10, 0, 0], None, n).await
}

/// The SPC-4 conflict table, one line per case: type, who asks (holder, a registrant,
/// someone unregistered), command, expected outcome.
const CONFLICT_TABLE: &str = "
WE     other  read     ok
WE     other  write    conflict
WE     other  tur      ok
WE     other  inquiry  ok
WE     other  readcap  ok
WE     other  sense10  ok
WE     other  sync     conflict
WE     other  reserve6 conflict
WE     reg    read     ok
WE     reg    write    conflict
WE     holder write    ok
WE     holder read     ok
WE     holder reserve6 conflict
EA     other  read     conflict
EA     other  write    conflict
EA     other  tur      ok
EA     other  inquiry  ok
EA     other  sense10  conflict
EA     reg    read     conflict
EA     reg    write    conflict
EA     holder read     ok
EA     holder write    ok
WE_RO  other  read     ok
WE_RO  other  write    conflict
WE_RO  reg    write    ok
WE_RO  holder write    ok
EA_RO  other  read     conflict
EA_RO  reg    read     ok
EA_RO  reg    write    ok
WE_AR  other  read     ok
WE_AR  other  write    conflict
WE_AR  reg    write    ok
EA_AR  other  read     conflict
EA_AR  other  readcap  ok
EA_AR  reg    read     ok
EA_AR  reg    write    ok
EA_AR  holder write    ok
";

#[tokio::test]
async fn pr_conflict_table() {
    for line in CONFLICT_TABLE.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let kind = match f[0] {
            "WE" => 1,
            "EA" => 3,
            "WE_RO" => 5,
            "EA_RO" => 6,
            "WE_AR" => 7,
            "EA_AR" => 8,
            x => panic!("type {x}"),
        };
        let lu = lu();
        let (h, r, o) = (nexus("holder"), nexus("reg"), nexus("other"));
        for n in [&h, &r, &o] {
            meet(&lu, n).await;
        }
        assert_eq!(pr(&lu, &h, 0, 0, 0, 0xaa).await.status, status::GOOD);
        assert_eq!(pr(&lu, &r, 0, 0, 0, 0xbb).await.status, status::GOOD);
        assert_eq!(pr(&lu, &h, 1, kind, 0xaa, 0).await.status, status::GOOD, "{line}");
        let who = match f[1] {
            "holder" => &h,
            "reg" => &r,
            _ => &o,
        };
        let (cdb, data): (Vec<u8>, Option<Vec<u8>>) = match f[2] {
            "read" => (rw10(op::READ_10, 0, 1), None),
            "write" => (rw10(op::WRITE_10, 0, 1), Some(vec![0; 512])),
            "tur" => (vec![0; 6], None),
            "inquiry" => (vec![op::INQUIRY, 0, 0, 0, 36, 0], None),
            "readcap" => (vec![op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
            "sense10" => (vec![op::MODE_SENSE_10, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0], None),
            "sync" => (rw10(op::SYNC_CACHE_10, 0, 0), None),
            "reserve6" => (vec![op::RESERVE_6, 0, 0, 0, 0, 0], None),
            x => panic!("command {x}"),
        };
        let out = run(&lu, &cdb, data.as_deref(), who).await;
        let want = if f[3] == "ok" {
            status::GOOD
        } else {
            status::RESERVATION_CONFLICT
        };
        assert_eq!(out.status, want, "{line}");
    }
}

#[tokio::test]
async fn pr_register_reserve_release_clear() {
    let lu = lu();
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    let conflict = status::RESERVATION_CONFLICT;
    // Register; a wrong key when registering/unregistering conflicts; REGISTER AND IGNORE does not.
    assert_eq!(pr(&lu, &a, 0, 0, 0, 0x1111).await.status, status::GOOD);
    assert_eq!(pr(&lu, &a, 0, 0, 0x9999, 0x2222).await.status, conflict);
    assert_eq!(pr(&lu, &a, 6, 0, 0x9999, 0x2222).await.status, status::GOOD);
    assert_eq!(
        pr(&lu, &b, 0, 0, 5, 0x3333).await.status,
        conflict,
        "not registered, key given"
    );
    assert_eq!(pr(&lu, &b, 0, 0, 0, 0x3333).await.status, status::GOOD);
    let keys = pr_in(&lu, &a, 0).await;
    assert_eq!(u32::from_be_bytes(keys[..4].try_into().unwrap()), 3, "generation");
    assert_eq!(&keys[4..8], &16u32.to_be_bytes());
    assert_eq!(&keys[8..16], &0x2222u64.to_be_bytes());
    assert_eq!(&keys[16..24], &0x3333u64.to_be_bytes());
    // Reserve needs a registration and the right key.
    let c = nexus("c");
    meet(&lu, &c).await;
    assert_eq!(pr(&lu, &c, 1, 1, 0, 0).await.status, conflict);
    assert_eq!(pr(&lu, &a, 1, 1, 0x1, 0).await.status, conflict);
    assert_eq!(
        pr(&lu, &a, 1, 9, 0x2222, 0).await.status,
        status::CHECK_CONDITION,
        "bad type"
    );
    assert_eq!(pr(&lu, &a, 1, 1, 0x2222, 0).await.status, status::GOOD);
    assert_eq!(pr(&lu, &a, 1, 1, 0x2222, 0).await.status, status::GOOD, "again: no-op");
    assert_eq!(pr(&lu, &a, 1, 3, 0x2222, 0).await.status, conflict, "other type");
    assert_eq!(pr(&lu, &b, 1, 1, 0x3333, 0).await.status, conflict);
    let res = pr_in(&lu, &b, 1).await;
    assert_eq!(&res[4..8], &16u32.to_be_bytes());
    assert_eq!(&res[8..16], &0x2222u64.to_be_bytes());
    assert_eq!(res[21], 1);
    // Release with the wrong type: INVALID RELEASE OF PERSISTENT RESERVATION.
    let out = pr(&lu, &a, 2, 3, 0x2222, 0).await;
    assert_eq!(parse(&out.sense), Some(illegal(asc::INVALID_RELEASE_OF_PR)));
    assert_eq!(
        pr(&lu, &b, 2, 1, 0x3333, 0).await.status,
        status::GOOD,
        "non-holder: no-op"
    );
    assert!(lu.pr_state().res.is_some());
    assert_eq!(pr(&lu, &a, 2, 1, 0x2222, 0).await.status, status::GOOD);
    assert!(lu.pr_state().res.is_none());
    // Read full status lists both with TransportIDs.
    let fs = pr_in(&lu, &a, 3).await;
    let len = u32::from_be_bytes(fs[4..8].try_into().unwrap()) as usize;
    assert_eq!(fs.len(), 8 + len);
    let tid_len = u32::from_be_bytes(fs[28..32].try_into().unwrap()) as usize;
    assert_eq!(fs[32], 0x45);
    assert!(String::from_utf8_lossy(&fs[36..32 + tid_len]).starts_with("iqn.2026-01.test:a,i,0x800000000001"));
    // Report capabilities: no PTPL_C without an APTPL path.
    let caps = pr_in(&lu, &a, 2).await;
    assert_eq!(caps[2] & 0x01, 0);
    assert_eq!((caps[4], caps[5]), (0xea, 0x01));
    // RO reservation released by unregistering holder: others hear RESERVATIONS RELEASED.
    assert_eq!(pr(&lu, &a, 1, 5, 0x2222, 0).await.status, status::GOOD);
    assert_eq!(pr(&lu, &a, 0, 0, 0x2222, 0).await.status, status::GOOD);
    assert!(lu.pr_state().res.is_none());
    assert_eq!(sense(&lu, &[0; 6], None, &b).await, (key::UNIT_ATTENTION, 0x2a, 0x04));
    // CLEAR: everything goes; the others hear RESERVATIONS PREEMPTED.
    assert_eq!(pr(&lu, &a, 0, 0, 0, 0xa).await.status, status::GOOD);
    assert_eq!(pr(&lu, &a, 1, 3, 0xa, 0).await.status, status::GOOD);
    assert_eq!(pr(&lu, &b, 3, 0, 0x3333, 0).await.status, status::GOOD);
    let st = lu.pr_state();
    assert!(st.regs.is_empty() && st.res.is_none());
    assert_eq!(sense(&lu, &[0; 6], None, &a).await, (key::UNIT_ATTENTION, 0x2a, 0x03));
    // Parameter checks.
    let (mut c, p) = pr_out(0, 0, 0, 1, 0);
    c[8] = 20;
    assert_eq!(
        sense(&lu, &c, Some(&p), &a).await,
        illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
    );
    let (c, p) = pr_out(0, 0, 0, 1, 0x08);
    assert_eq!(
        sense(&lu, &c, Some(&p), &a).await,
        illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    let (c, p) = pr_out(0, 0, 0, 1, 0x01);
    assert_eq!(
        sense(&lu, &c, Some(&p), &a).await,
        illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST)
    );
    let (c, p) = pr_out(0, 0x10, 0, 1, 0);
    assert_eq!(
        sense(&lu, &c, Some(&p), &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB),
        "scope"
    );
    let (c, p) = pr_out(7, 0, 0, 1, 0);
    assert_eq!(
        sense(&lu, &c, Some(&p), &a).await,
        illegal(asc::INVALID_FIELD_IN_CDB),
        "REGISTER AND MOVE"
    );
    // PR commands under an SPC-2 reservation of someone else conflict.
    ok(&lu, &[op::RESERVE_6, 0, 0, 0, 0, 0], None, &b).await;
    assert_eq!(pr(&lu, &a, 0, 0, 0, 1).await.status, conflict);
}

#[tokio::test]
async fn pr_preempt_and_abort() {
    let lu = lu();
    let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
    for n in [&a, &b, &c] {
        meet(&lu, n).await;
    }
    for (n, k) in [(&a, 0xa), (&b, 0xb), (&c, 0xb)] {
        assert_eq!(pr(&lu, n, 0, 0, 0, k).await.status, status::GOOD);
    }
    assert_eq!(pr(&lu, &b, 1, 1, 0xb, 0).await.status, status::GOOD);
    // A preempts the holder's key: B and C lose their registrations, A holds type EA now.
    assert_eq!(pr(&lu, &a, 5, 3, 0xa, 0xb).await.status, status::GOOD);
    let st = lu.pr_state();
    assert_eq!(st.regs.len(), 1);
    assert_eq!(st.res.as_ref().unwrap().holder, a);
    assert_eq!(st.res.as_ref().unwrap().kind as u8, 3);
    let mut aborted = lu.take_aborts();
    aborted.sort_by(|x, y| x.initiator_name.cmp(&y.initiator_name));
    assert_eq!(aborted, vec![b.clone(), c.clone()]);
    assert!(lu.take_aborts().is_empty());
    assert_eq!(sense(&lu, &[0; 6], None, &b).await, (key::UNIT_ATTENTION, 0x2a, 0x05));
    assert_eq!(
        run(&lu, &rw10(op::READ_10, 0, 1), None, &b).await.status,
        status::RESERVATION_CONFLICT
    );
    // Preempt without reservation: removes matching registrations; no match conflicts; key 0 is invalid.
    let lu = lu_with(|_| {});
    for n in [&a, &b] {
        meet(&lu, n).await;
        assert_eq!(
            pr(&lu, n, 0, 0, 0, if *n == a { 1 } else { 2 }).await.status,
            status::GOOD
        );
    }
    assert_eq!(pr(&lu, &a, 4, 1, 1, 7).await.status, status::RESERVATION_CONFLICT);
    assert_eq!(
        parse(&pr(&lu, &a, 4, 1, 1, 0).await.sense),
        Some(illegal(asc::INVALID_FIELD_IN_PARAMETER_LIST))
    );
    assert_eq!(pr(&lu, &a, 4, 1, 1, 2).await.status, status::GOOD);
    assert_eq!(lu.pr_state().regs.len(), 1);
    assert!(lu.take_aborts().is_empty(), "PREEMPT does not abort");
    // All-registrants reservation preempted with key 0: everyone else goes, A reserves.
    let lu = lu_with(|_| {});
    for (n, k) in [(&a, 1), (&b, 2), (&c, 3)] {
        meet(&lu, n).await;
        assert_eq!(pr(&lu, n, 0, 0, 0, k).await.status, status::GOOD);
    }
    assert_eq!(pr(&lu, &b, 1, 7, 2, 0).await.status, status::GOOD);
    assert_eq!(pr(&lu, &a, 4, 1, 1, 0).await.status, status::GOOD);
    let st = lu.pr_state();
    assert_eq!(st.regs.len(), 1);
    assert_eq!(st.res.unwrap().kind as u8, 1);
}

#[tokio::test]
async fn aptpl_saved_and_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.bin");
    let lu = lu().with_aptpl(&path).unwrap();
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    let caps = pr_in(&lu, &a, 2).await;
    assert_eq!(caps[2] & 0x01, 0x01, "PTPL_C");
    let (c, p) = pr_out(0, 0, 0, 0xabc, 0x01);
    ok(&lu, &c, Some(&p), &a).await;
    // Each REGISTER sets APTPL anew (SPC-4 5.12.7), so B asks for it too.
    let (c, p) = pr_out(0, 0, 0, 0xdef, 0x01);
    ok(&lu, &c, Some(&p), &b).await;
    assert_eq!(pr(&lu, &a, 1, 5, 0xabc, 0).await.status, status::GOOD);
    let caps = pr_in(&lu, &a, 2).await;
    assert_eq!(caps[3] & 0x01, 0x01, "PTPL_A");
    let before = lu.pr_state();
    drop(lu);
    let again = super::lu::LogicalUnit::new(Mem::new(4096), LuParams::new(1, 1))
        .with_aptpl(&path)
        .unwrap();
    assert_eq!(again.pr_state(), before);
    // Round trip of the codec, and damaged files refused.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(PrState::decode(&bytes).unwrap(), before);
    assert_eq!(&bytes[..4], b"HBPR");
    for i in [0, 5, 20, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(PrState::decode(&bad).is_err(), "flip at {i}");
    }
    assert!(PrState::decode(&bytes[..bytes.len() - 3]).is_err());
    assert!(PrState::decode(&[]).is_err());
    std::fs::write(&path, b"garbage that is long enough to be read").unwrap();
    let err = LogicalUnit::new(Mem::new(4096), LuParams::new(1, 1)).with_aptpl(&path);
    assert!(err.is_err());
    // Turning APTPL off records that, and a reload starts empty.
    std::fs::write(&path, &bytes).unwrap();
    let lu = LogicalUnit::new(Mem::new(4096), LuParams::new(1, 1))
        .with_aptpl(&path)
        .unwrap();
    meet(&lu, &a).await;
    let (c, p) = pr_out(0, 0, 0xabc, 0xabc, 0);
    ok(&lu, &c, Some(&p), &a).await;
    let lu = LogicalUnit::new(Mem::new(4096), LuParams::new(1, 1))
        .with_aptpl(&path)
        .unwrap();
    assert_eq!(lu.pr_state(), PrState::default());
}

#[tokio::test]
async fn all_registrants_reservation_outlives_its_maker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pr.bin");
    let lu = lu().with_aptpl(&path).unwrap();
    let (a, b) = (nexus("a"), nexus("b"));
    meet(&lu, &a).await;
    meet(&lu, &b).await;
    for (n, k) in [(&a, 1u64), (&b, 2)] {
        let (c, p) = pr_out(0, 0, 0, k, 0x01);
        ok(&lu, &c, Some(&p), n).await;
    }
    assert_eq!(pr(&lu, &a, 1, 8, 1, 0).await.status, status::GOOD);
    // The maker unregisters: the reservation stays, held by the remaining registrant.
    let (c, p) = pr_out(0, 0, 1, 0, 0x01);
    ok(&lu, &c, Some(&p), &a).await;
    let res = pr_in(&lu, &b, 1).await;
    assert_eq!(&res[4..8], &16u32.to_be_bytes());
    assert_eq!(&res[8..16], &0u64.to_be_bytes(), "all-registrants reports key 0");
    assert_eq!(
        run(&lu, &rw10(op::READ_10, 0, 1), None, &a).await.status,
        status::RESERVATION_CONFLICT
    );
    // What was saved loads back.
    let saved = PrState::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved.res.as_ref().unwrap().kind as u8, 8);
    assert_eq!(saved.regs.len(), 1);
    // The remaining registrant releases it.
    assert_eq!(pr(&lu, &b, 2, 8, 2, 0).await.status, status::GOOD);
    assert!(lu.pr_state().res.is_none());
}

#[test]
fn params_like_tgtadm() {
    let mut p = LuParams::new(1, 2);
    p.set("vendor_id", "ACME").unwrap();
    p.set("thin_provisioning", "1").unwrap();
    p.set("blocksize", "4096").unwrap();
    p.set("sense_format", "1").unwrap();
    assert_eq!(p.vendor_id, "ACME");
    assert!(p.thin_provisioning);
    assert_eq!(p.block_size, 4096);
    assert_eq!(p.sense_format, SenseFormat::Descriptor);
    assert!(p.set("blocksize", "1000").is_err());
    assert!(p.set("vendor_id", "MUCH TOO LONG").is_err());
    assert!(p.set("nonsense", "1").is_err());
    assert!(p.set("readonly", "maybe").is_err());
}

#[tokio::test]
async fn block_size_4096() {
    let lu = lu_with(|p| p.block_size = 4096);
    let a = nexus("a");
    meet(&lu, &a).await;
    let c = ok(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, &a).await;
    assert_eq!(c, [0, 0, 0, 255, 0, 0, 0x10, 0]);
    let d = pattern(4096, 4);
    ok(&lu, &rw10(op::WRITE_10, 255, 1), Some(&d), &a).await;
    assert_eq!(ok(&lu, &rw10(op::READ_10, 255, 1), None, &a).await, d);
    assert_eq!(&lu.device().data.lock().unwrap()[255 * 4096..256 * 4096], &d[..]);
}

/// Random CDBs, random data, random nexuses: never a panic, every CHECK CONDITION carries
/// well-formed sense, and GOOD never returns more than 1 MiB.
#[tokio::test]
async fn random_cdbs_are_handled() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5c51);
    let luns: Luns<Mem> = Luns::new();
    luns.insert(1, Arc::new(lu_with(|p| p.thin_provisioning = true)));
    luns.insert(2, Arc::new(lu_with(|p| p.sense_format = SenseFormat::Descriptor)));
    let nexuses = [nexus("a"), nexus("b")];
    let known: Vec<u8> = cdb::COMMANDS.iter().map(|i| i.op).collect();
    for i in 0..6_000 {
        let opc = if rng.gen_bool(0.8) {
            known[rng.gen_range(0..known.len())]
        } else {
            rng.gen()
        };
        let len = if rng.gen_bool(0.9) {
            cdb::cdb_len(opc).unwrap_or(16)
        } else {
            rng.gen_range(0..17)
        };
        let mut c: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Some(b) = c.first_mut() {
            *b = opc;
        }
        // Keep lengths mostly small so the test stays fast, and reserved bits mostly clear.
        if let Some(info) = cdb::lookup(&c).ok().filter(|_| rng.gen_bool(0.7)) {
            for (j, m) in info.usage.iter().enumerate().skip(1) {
                if j < c.len() {
                    c[j] &= m;
                }
            }
            if c.len() >= 10 && rng.gen_bool(0.8) {
                let l = c.len();
                c[2..l - 1].iter_mut().for_each(|b| *b &= 0x03);
            }
        }
        let data = if rng.gen_bool(0.5) {
            let n = rng.gen_range(0..5000);
            Some((0..n).map(|_| rng.gen()).collect::<Vec<u8>>())
        } else {
            None
        };
        let mut t = task(&c, data.as_deref(), &nexuses[i % 2]);
        t.lun = encode_lun(rng.gen_range(0..4));
        let out = luns.execute(t).await;
        match out.status {
            status::CHECK_CONDITION => {
                assert!(parse(&out.sense).is_some(), "cdb {c:02x?}: sense {:02x?}", out.sense);
                assert!(out.data_in.is_none());
            }
            status::GOOD | status::RESERVATION_CONFLICT => assert!(out.sense.is_empty()),
            s => panic!("status {s:#x} for {c:02x?}"),
        }
        if let Some(d) = &out.data_in {
            assert!(d.len() <= 1 << 20);
        }
    }
}

#[test]
fn file_device_through_a_logical_unit() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    // The io_uring reaper is a tokio task: open inside the runtime.
    let dev = rt.block_on(async { FileDevice::open(&path, true) }).unwrap();
    assert_eq!(dev.size(), 1 << 20);
    let lu = LogicalUnit::new(LunDevice::File(dev), LuParams::new(1, 1));
    let a = nexus("a");
    let t = |cdb: Vec<u8>, data: Option<Vec<u8>>| ScsiTask {
        lun: 0,
        cdb,
        data_out: data.map(|d| IoBuf::copy_from(&d)),
        expected_data_in: 1 << 20,
        attr: TaskAttr::Simple,
        nexus: a.clone(),
    };
    rt.block_on(async {
        assert_eq!(lu.execute(t(vec![0; 6], None)).await.status, status::CHECK_CONDITION);
        let d = pattern(3 * 512, 11);
        let out = lu.execute(t(rw10(op::WRITE_10, 7, 3), Some(d.clone()))).await;
        assert_eq!(out.status, status::GOOD);
        assert_eq!(
            lu.execute(t(rw10(op::SYNC_CACHE_10, 0, 0), None)).await.status,
            status::GOOD
        );
        let out = lu.execute(t(rw10(op::READ_10, 7, 3), None)).await;
        assert_eq!(out.data_in.unwrap().to_vec(), d);
        let out = lu.execute(t(rw10(op::READ_10, 2048, 1), None)).await;
        assert_eq!(parse(&out.sense), Some(illegal(asc::LBA_OUT_OF_RANGE)));
    });
    drop(lu);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[7 * 512..10 * 512], &pattern(3 * 512, 11)[..]);
}

/// The session spawns `execute` on a multi-threaded runtime: its future must be Send.
#[test]
fn execute_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let luns: Luns<LunDevice> = Luns::new();
    let fut = luns.execute(task(&[0; 6], None, &nexus("a")));
    assert_send(&fut);
    let lu = lu();
    let fut2 = lu.execute(task(&[0; 6], None, &nexus("a")));
    assert_send(&fut2);
}

#[tokio::test]
async fn prefetch_and_orwrite() {
    let lu = lu();
    let a = nexus("a");
    meet(&lu, &a).await;
    // PRE-FETCH checks the range and succeeds.
    ok(&lu, &rw10(op::PRE_FETCH_10, 0, 8), None, &a).await;
    ok(&lu, &rw16(op::PRE_FETCH_16, BLOCKS - 8, 8), None, &a).await;
    assert_eq!(
        sense(&lu, &rw16(op::PRE_FETCH_16, BLOCKS - 1, 2), None, &a).await,
        illegal(asc::LBA_OUT_OF_RANGE)
    );
    // ORWRITE: old | new, block by block.
    ok(&lu, &rw10(op::WRITE_10, 4, 2), Some(&[0x0f; 1024]), &a).await;
    let mut data = vec![0xf0u8; 512];
    data.extend_from_slice(&[0x01; 512]);
    ok(&lu, &rw16(op::ORWRITE_16, 4, 2), Some(&data), &a).await;
    let got = ok(&lu, &rw10(op::READ_10, 4, 2), None, &a).await;
    assert!(got[..512].iter().all(|&b| b == 0xff));
    assert!(got[512..].iter().all(|&b| b == 0x0f));
    assert_eq!(
        sense(&lu, &rw16(op::ORWRITE_16, BLOCKS, 1), Some(&[0; 512]), &a).await,
        illegal(asc::LBA_OUT_OF_RANGE)
    );
    // ORPROTECT is not supported.
    let mut c = rw16(op::ORWRITE_16, 0, 1);
    c[1] = 0x20;
    let out = run(&lu, &c, Some(&[0; 512]), &a).await;
    assert_eq!(out.status, status::CHECK_CONDITION);
}
