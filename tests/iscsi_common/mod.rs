//! Shared by the iSCSI integration tests: a hablockd with a portal and a target made with
//! hbtgtadm, and a small raw iSCSI client (hand-built BHS, optional CRC32C digests) for
//! data checks and malformed input.
#![allow(dead_code)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::Duration;

pub const IQN: &str = "iqn.2026-11.org.hablock:disk1";
pub const INITIATOR: &str = "iqn.2026-11.org.hablock:client";

/// A running hablockd serving target 1 ([`IQN`]) with LUN 1 on a 16 MiB file.
pub struct Target {
    pub node: Node,
    pub portal: u16,
    pub lun_file: std::path::PathBuf,
}

impl Target {
    pub fn start() -> Target {
        let mut node = Node::new(NodeOptions::default());
        let portal = free_port();
        let mut f = std::fs::OpenOptions::new().append(true).open(&node.config).unwrap();
        write!(f, "\n[iscsi.on.alpha]\nportal = \"127.0.0.1:{portal}\"\n").unwrap();
        drop(f);
        let lun_file = node.path("lun1.img");
        std::fs::File::create(&lun_file).unwrap().set_len(16 << 20).unwrap();
        node.hbadm_ok(&["create-md", "r0"]);
        node.start();
        let t = Target { node, portal, lun_file };
        t.tgt_ok(&format!("--lld iscsi --op new --mode target --tid 1 -T {IQN}"));
        t.tgt_ok(&format!(
            "--lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b {}",
            t.lun_file.display()
        ));
        t.tgt_ok("--lld iscsi --op bind --mode target --tid 1 -I ALL");
        t
    }

    pub fn hbtgtadm(&self, args: &[&str]) -> Output {
        run_tool("hbtgtadm", &self.node.config, &self.node.name, args)
    }

    pub fn tgt_ok(&self, line: &str) -> String {
        tgt_ok(&self.node, line)
    }

    /// `iscsi://[user%pw@]127.0.0.1:PORT/IQN/LUN` plus `tail` (URL arguments).
    pub fn url(&self, auth: &str, lun: u32, tail: &str) -> String {
        format!("iscsi://{auth}127.0.0.1:{}/{IQN}/{lun}{tail}", self.portal)
    }

    /// Runs a libiscsi tool; returns (success, stdout + stderr).
    pub fn libiscsi(&self, tool: &str, url: &str) -> (bool, String) {
        libiscsi(tool, url)
    }
}

/// hbtgtadm as `node` with `line` (split at spaces), which must succeed; returns stdout.
pub fn tgt_ok(node: &Node, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    node.tool_ok("hbtgtadm", &args)
}

/// Runs a libiscsi tool as [`INITIATOR`] on `url`; returns (success, stdout + stderr).
pub fn libiscsi(tool: &str, url: &str) -> (bool, String) {
    let out = run_timeout(Command::new(tool).args(["-i", INITIATOR, url]), Duration::from_secs(30));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn crc(data: &[u8]) -> [u8; 4] {
    hablock::iscsi::pdu::crc32c(data).to_le_bytes()
}

/// One received PDU.
#[derive(Debug)]
pub struct Rx {
    pub bhs: [u8; 48],
    pub data: Vec<u8>,
}

impl Rx {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn itt(&self) -> u32 {
        be32(&self.bhs[16..20])
    }
}

/// A hand-driven initiator connection.
pub struct Raw {
    pub s: TcpStream,
    pub header_digest: bool,
    pub data_digest: bool,
    pub cmdsn: u32,
    pub itt: u32,
    pub exp_statsn: u32,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw::connect_to(&format!("127.0.0.1:{port}"))
    }

    /// Connects to a portal given as `IP:PORT`.
    pub fn connect_to(portal: &str) -> Raw {
        let s = TcpStream::connect(portal).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            header_digest: false,
            data_digest: false,
            cmdsn: 1,
            itt: 1,
            exp_statsn: 0,
        }
    }

    /// Sends a PDU: `bhs` with DataSegmentLength filled in, digests as negotiated.
    pub fn send(&mut self, mut bhs: [u8; 48], data: &[u8]) {
        let len = (data.len() as u32).to_be_bytes();
        bhs[5..8].copy_from_slice(&len[1..]);
        let mut out = bhs.to_vec();
        if self.header_digest {
            out.extend_from_slice(&crc(&bhs));
        }
        if !data.is_empty() {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            out.extend_from_slice(&padded);
            if self.data_digest {
                out.extend_from_slice(&crc(&padded));
            }
        }
        self.s.write_all(&out).unwrap();
    }

    /// Reads one PDU; None when the connection is closed (or times out).
    pub fn recv(&mut self) -> Option<Rx> {
        let mut bhs = [0u8; 48];
        self.s.read_exact(&mut bhs).ok()?;
        let ahs = bhs[4] as usize * 4;
        let dsl = (be32(&bhs[4..8]) & 0xff_ffff) as usize;
        let mut skip = vec![0u8; ahs + if self.header_digest { 4 } else { 0 }];
        self.s.read_exact(&mut skip).ok()?;
        let mut data = vec![0u8; dsl.div_ceil(4) * 4];
        self.s.read_exact(&mut data).ok()?;
        if self.data_digest && dsl > 0 {
            let mut d = [0u8; 4];
            self.s.read_exact(&mut d).ok()?;
            assert_eq!(d, crc(&data), "data digest from the target");
        }
        data.truncate(dsl);
        if bhs[0] & 0x3f != 0x25 || bhs[1] & 0x01 != 0 {
            let statsn = be32(&bhs[24..28]);
            if matches!(bhs[0] & 0x3f, 0x21 | 0x22 | 0x23 | 0x24 | 0x25 | 0x26 | 0x3f) {
                self.exp_statsn = statsn.wrapping_add(1);
            }
        }
        Some(Rx { bhs, data })
    }

    /// True if the target closes the connection (EOF or reset) within the read timeout,
    /// skipping any PDUs it sends first.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Logs in to `target` (None: discovery) offering the given digests; returns the final
    /// Login Response's status (class << 8 | detail).
    pub fn login(&mut self, target: Option<&str>, isid: u8, digests: bool) -> u16 {
        let d = if digests { "CRC32C" } else { "None" };
        let mut keys = format!(
            "InitiatorName={INITIATOR}\0SessionType={}\0HeaderDigest={d}\0DataDigest={d}\0\
             MaxRecvDataSegmentLength=262144\0",
            if target.is_some() { "Normal" } else { "Discovery" }
        );
        if let Some(t) = target {
            keys.push_str(&format!("TargetName={t}\0"));
        }
        let mut first = true;
        loop {
            let mut b = [0u8; 48];
            b[0] = 0x43;
            b[1] = 0x80 | (1 << 2) | 3; // T, CSG operational, NSG full feature
            b[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid]);
            b[16..20].copy_from_slice(&self.itt.to_be_bytes());
            b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
            b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
            let data = if first { keys.as_bytes().to_vec() } else { Vec::new() };
            first = false;
            self.send(b, &data);
            let Some(r) = self.recv() else { return 0xffff };
            assert_eq!(r.opcode(), 0x23, "login response expected: {r:?}");
            let status = u16::from_be_bytes([r.bhs[36], r.bhs[37]]);
            if status != 0 {
                return status;
            }
            if r.bhs[1] & 0x80 != 0 && r.bhs[1] & 3 == 3 {
                let text = String::from_utf8_lossy(&r.data).into_owned();
                self.header_digest = text.contains("HeaderDigest=CRC32C");
                self.data_digest = text.contains("DataDigest=CRC32C");
                return 0;
            }
        }
    }

    /// A SCSI Command PDU header for `cdb` (LUN 1).
    pub fn command(&mut self, cdb: &[u8], read: u32, write: u32) -> ([u8; 48], u32) {
        let itt = self.next_itt();
        let mut b = [0u8; 48];
        b[0] = 0x01;
        b[1] = 0x80 | 0x01 | if read > 0 { 0x40 } else { 0 } | if write > 0 { 0x20 } else { 0 };
        b[9] = 1; // LUN 1
        b[16..20].copy_from_slice(&itt.to_be_bytes());
        b[20..24].copy_from_slice(&(read + write).to_be_bytes());
        b[24..28].copy_from_slice(&self.cmdsn.to_be_bytes());
        b[28..32].copy_from_slice(&self.exp_statsn.to_be_bytes());
        b[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn += 1;
        (b, itt)
    }

    /// Runs a command; returns (status, Data-In bytes). Write data goes as immediate data.
    pub fn scsi(&mut self, cdb: &[u8], read: u32, write: &[u8]) -> (u8, Vec<u8>) {
        let (status, data, _) = self.scsi_sense(cdb, read, write);
        (status, data)
    }

    /// [`scsi`](Self::scsi) that also returns the sense of a CHECK CONDITION as
    /// (key, ASC, ASCQ), from fixed or descriptor format sense data.
    pub fn scsi_sense(&mut self, cdb: &[u8], read: u32, write: &[u8]) -> (u8, Vec<u8>, Option<(u8, u8, u8)>) {
        let (b, itt) = self.command(cdb, read, write.len() as u32);
        self.send(b, write);
        let mut data = Vec::new();
        loop {
            let r = self.recv().expect("response");
            if r.itt() != itt {
                continue;
            }
            match r.opcode() {
                0x25 => {
                    let off = be32(&r.bhs[40..44]) as usize;
                    data.resize(off + r.data.len(), 0);
                    data[off..].copy_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        return (r.bhs[3], data, None);
                    }
                }
                0x21 => {
                    let len = if r.data.len() >= 2 {
                        u16::from_be_bytes([r.data[0], r.data[1]]) as usize
                    } else {
                        0
                    };
                    let sense = &r.data[2.min(r.data.len())..(2 + len).min(r.data.len())];
                    let parsed = match sense.first().map(|b| b & 0x7f) {
                        Some(0x70 | 0x71) if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
                        Some(0x72 | 0x73) if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
                        _ => None,
                    };
                    return (r.bhs[3], data, parsed);
                }
                op => panic!("unexpected opcode {op:#x} for a command"),
            }
        }
    }

    /// Clears the power-on unit attention a new nexus gets.
    pub fn settle(&mut self) {
        for _ in 0..3 {
            if self.scsi(&[0, 0, 0, 0, 0, 0], 0, &[]).0 == 0 {
                return;
            }
        }
        panic!("TEST UNIT READY keeps failing");
    }

    pub fn write10(&mut self, lba: u32, data: &[u8]) -> u8 {
        let n = (data.len() / 512) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&n.to_be_bytes());
        self.scsi(&cdb, 0, data).0
    }

    pub fn read10(&mut self, lba: u32, blocks: u16) -> Vec<u8> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let (st, d) = self.scsi(&cdb, blocks as u32 * 512, &[]);
        assert_eq!(st, 0, "READ(10) status");
        d
    }

    /// Writes then reads back 32 KiB at `lba`; panics on any difference.
    pub fn round_trip(&mut self, lba: u32, seed: u64) -> Vec<u8> {
        let data = random_bytes(seed, 32 * 1024);
        assert_eq!(self.write10(lba, &data), 0, "WRITE(10) status");
        assert_eq!(self.read10(lba, 64), data, "read back what was written");
        data
    }
}
