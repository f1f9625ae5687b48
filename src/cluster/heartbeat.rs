//! The heartbeat packet: an explicit big-endian layout authenticated with HMAC-SHA256.
//!
//! ```text
//! offset size field
//!      0    4 magic "HBHB" (0x48424842)
//!      4    1 version (1)
//!      5    1 flags: bit0 LEAVING, bit1 QUORATE, bit2 HAS_DC; other bits must be 0
//!      6    1 sender node id (0..63)
//!      7    1 link index the packet was sent on (0..7)
//!      8    8 cluster id: the first 8 bytes of SHA-256("hablock-cluster:" + cluster name)
//!     16    8 sender incarnation (new on every start of the sender, only ever grows)
//!     24    8 sequence number (per sender incarnation, +1 for every packet on any link)
//!     32    8 sender's view: bit i set = node i is a member
//!     40    4 CIB admin_epoch
//!     44    8 CIB epoch
//!     52    8 CIB num_updates
//!     60    1 sender's DC node id (meaningful only with HAS_DC)
//!     61    1 payload kind (0 none, 1 CIB message fragment)
//!     62    2 reserved, must be 0
//!     64    4 payload length N
//!     68    N payload
//!   68+N   32 HMAC-SHA256(key, bytes 0 .. 68+N)
//! ```
//!
//! [`decode`] checks, in this order and before looking at any other field: the length limits,
//! the magic, the version and the MAC (constant-time). Only then are the fields parsed. Replay
//! protection is separate ([`ReplayGuard`]) because it needs per-sender state.

use super::{LinkId, NodeId, NodeSet, MAX_LINKS, MAX_NODES};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

pub const MAGIC: [u8; 4] = *b"HBHB";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 68;
pub const MAC_LEN: usize = 32;
/// The smallest valid packet: a header, no payload, a MAC.
pub const MIN_PACKET: usize = HEADER_LEN + MAC_LEN;
/// The largest packet accepted or produced; fits one UDP datagram.
pub const MAX_PACKET: usize = 60 * 1024;
pub const MAX_PAYLOAD: usize = MAX_PACKET - MIN_PACKET;
/// How far behind the newest accepted sequence number a packet may be and still be accepted
/// (once): packets of one sender travel over several links and may overtake each other.
pub const REPLAY_WINDOW: u64 = 64;

pub const FLAG_LEAVING: u8 = 1;
pub const FLAG_QUORATE: u8 = 2;
pub const FLAG_HAS_DC: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_LEAVING | FLAG_QUORATE | FLAG_HAS_DC;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret (authkeys). Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct AuthKey(Vec<u8>);

impl AuthKey {
    /// Refuses an empty key: an HMAC with an empty key authenticates nothing worth having.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<AuthKey, &'static str> {
        let b = bytes.into();
        if b.is_empty() {
            return Err("the cluster authkey is empty");
        }
        Ok(AuthKey(b))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthKey({} bytes)", self.0.len())
    }
}

/// The 8-byte cluster id derived from the cluster name, so that two clusters sharing a network
/// (and, by mistake, a key) do not merge.
pub fn cluster_id(name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"hablock-cluster:");
    h.update(name.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The CIB version a node advertises: `(admin_epoch, epoch, num_updates)`, compared in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct CibVersion {
    pub admin_epoch: u32,
    pub epoch: u64,
    pub num_updates: u64,
}

impl fmt::Display for CibVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.admin_epoch, self.epoch, self.num_updates)
    }
}

/// What a packet's payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    None = 0,
    /// A fragment of a CIB replication message (`cib::wire`).
    Cib = 1,
}

impl PayloadKind {
    fn from_u8(v: u8) -> Option<PayloadKind> {
        match v {
            0 => Some(PayloadKind::None),
            1 => Some(PayloadKind::Cib),
            _ => None,
        }
    }
}

/// One decoded heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub cluster: u64,
    pub sender: NodeId,
    pub link: LinkId,
    pub incarnation: u64,
    pub seq: u64,
    pub leaving: bool,
    pub quorate: bool,
    pub view: NodeSet,
    pub cib: CibVersion,
    pub dc: Option<NodeId>,
    pub payload_kind: PayloadKind,
    pub payload: Vec<u8>,
}

/// Why a packet was dropped. Every reason has a counter in [`DropCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the smallest packet.
    Truncated,
    /// Longer than [`MAX_PACKET`].
    Oversized,
    BadMagic,
    BadVersion,
    /// The MAC does not match: a wrong key, corruption, or a forgery.
    Forged,
    /// Authentic (right key) but for another cluster name.
    ForeignCluster,
    /// Authentic but a field is out of range (node id, link, flags, reserved, payload length).
    Malformed,
    /// A sequence number already accepted or too old for the window.
    Replayed,
    /// An incarnation older than the newest one seen from that sender.
    StaleIncarnation,
    /// A node id that is not configured, or our own id.
    UnknownSender,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadMagic => "bad magic",
            DropReason::BadVersion => "unsupported version",
            DropReason::Forged => "bad MAC (wrong key or forged)",
            DropReason::ForeignCluster => "another cluster's packet",
            DropReason::Malformed => "malformed",
            DropReason::Replayed => "replayed or duplicate",
            DropReason::StaleIncarnation => "from an older incarnation",
            DropReason::UnknownSender => "from an unknown node",
        })
    }
}

/// Counters of dropped packets, shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct DropCounters {
    pub truncated: u64,
    pub oversized: u64,
    pub bad_magic: u64,
    pub bad_version: u64,
    pub forged: u64,
    pub foreign_cluster: u64,
    pub malformed: u64,
    pub replayed: u64,
    pub stale_incarnation: u64,
    pub unknown_sender: u64,
}

impl DropCounters {
    pub fn count(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Truncated => &mut self.truncated,
            DropReason::Oversized => &mut self.oversized,
            DropReason::BadMagic => &mut self.bad_magic,
            DropReason::BadVersion => &mut self.bad_version,
            DropReason::Forged => &mut self.forged,
            DropReason::ForeignCluster => &mut self.foreign_cluster,
            DropReason::Malformed => &mut self.malformed,
            DropReason::Replayed => &mut self.replayed,
            DropReason::StaleIncarnation => &mut self.stale_incarnation,
            DropReason::UnknownSender => &mut self.unknown_sender,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.truncated
            + self.oversized
            + self.bad_magic
            + self.bad_version
            + self.forged
            + self.foreign_cluster
            + self.malformed
            + self.replayed
            + self.stale_incarnation
            + self.unknown_sender
    }
}

/// Encodes `hb` and appends its MAC. Panics only on a programming error (a payload over
/// [`MAX_PAYLOAD`] or an id out of range), which the callers in this module rule out.
pub fn encode(hb: &Heartbeat, key: &AuthKey) -> Vec<u8> {
    assert!(
        hb.payload.len() <= MAX_PAYLOAD,
        "heartbeat payload of {} bytes",
        hb.payload.len()
    );
    assert!((hb.sender.0 as usize) < MAX_NODES && (hb.link as usize) < MAX_LINKS);
    let mut b = Vec::with_capacity(MIN_PACKET + hb.payload.len());
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    let mut flags = 0;
    if hb.leaving {
        flags |= FLAG_LEAVING;
    }
    if hb.quorate {
        flags |= FLAG_QUORATE;
    }
    if hb.dc.is_some() {
        flags |= FLAG_HAS_DC;
    }
    b.push(flags);
    b.push(hb.sender.0);
    b.push(hb.link);
    b.extend_from_slice(&hb.cluster.to_be_bytes());
    b.extend_from_slice(&hb.incarnation.to_be_bytes());
    b.extend_from_slice(&hb.seq.to_be_bytes());
    b.extend_from_slice(&hb.view.0.to_be_bytes());
    b.extend_from_slice(&hb.cib.admin_epoch.to_be_bytes());
    b.extend_from_slice(&hb.cib.epoch.to_be_bytes());
    b.extend_from_slice(&hb.cib.num_updates.to_be_bytes());
    b.push(hb.dc.map_or(0, |d| d.0));
    b.push(hb.payload_kind as u8);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(hb.payload.len() as u32).to_be_bytes());
    debug_assert_eq!(b.len(), HEADER_LEN);
    b.extend_from_slice(&hb.payload);
    let mut m = key.mac();
    m.update(&b);
    b.extend_from_slice(&m.finalize().into_bytes());
    b
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes and authenticates one datagram for cluster `cluster`. Never panics.
pub fn decode(b: &[u8], key: &AuthKey, cluster: u64) -> Result<Heartbeat, DropReason> {
    if b.len() < MIN_PACKET {
        return Err(DropReason::Truncated);
    }
    if b.len() > MAX_PACKET {
        return Err(DropReason::Oversized);
    }
    if b[0..4] != MAGIC {
        return Err(DropReason::BadMagic);
    }
    if b[4] != VERSION {
        return Err(DropReason::BadVersion);
    }
    let (body, tag) = b.split_at(b.len() - MAC_LEN);
    let mut m = key.mac();
    m.update(body);
    // `verify_slice` compares in constant time.
    m.verify_slice(tag).map_err(|_| DropReason::Forged)?;
    // Authentic from here on; still validate every field.
    if be64(b, 8) != cluster {
        return Err(DropReason::ForeignCluster);
    }
    let flags = b[5];
    let sender = b[6];
    let link = b[7];
    let payload_len = be32(b, 64) as usize;
    let kind = PayloadKind::from_u8(b[61]);
    if flags & !KNOWN_FLAGS != 0
        || sender as usize >= MAX_NODES
        || link as usize >= MAX_LINKS
        || b[62] != 0
        || b[63] != 0
        || payload_len != body.len() - HEADER_LEN
        || kind.is_none()
        || (flags & FLAG_HAS_DC != 0 && b[60] as usize >= MAX_NODES)
    {
        return Err(DropReason::Malformed);
    }
    Ok(Heartbeat {
        cluster,
        sender: NodeId(sender),
        link,
        incarnation: be64(b, 16),
        seq: be64(b, 24),
        leaving: flags & FLAG_LEAVING != 0,
        quorate: flags & FLAG_QUORATE != 0,
        view: NodeSet(be64(b, 32)),
        cib: CibVersion {
            admin_epoch: be32(b, 40),
            epoch: be64(b, 44),
            num_updates: be64(b, 52),
        },
        dc: (flags & FLAG_HAS_DC != 0).then_some(NodeId(b[60])),
        payload_kind: kind.expect("checked above"),
        payload: body[HEADER_LEN..].to_vec(),
    })
}

/// What [`ReplayGuard::check`] decided about an authentic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// The first packet ever seen from this sender.
    First,
    /// A newer incarnation than the one known: the sender restarted.
    NewIncarnation { previous: u64 },
    /// The newest packet of the current incarnation so far.
    Newest,
    /// Inside the window, not seen before, but older than the newest: accept its liveness,
    /// ignore its state (view, CIB version), which the newest packet already superseded.
    Late,
}

/// Per-sender replay protection: the newest incarnation, the highest sequence number accepted
/// in it, and a bitmap of the [`REPLAY_WINDOW`] sequence numbers below it (IPsec style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayGuard {
    known: bool,
    incarnation: u64,
    highest: u64,
    /// Bit i set = `highest - i` has been accepted (bit 0 is `highest` itself).
    window: u64,
}

impl ReplayGuard {
    pub fn incarnation(&self) -> Option<u64> {
        self.known.then_some(self.incarnation)
    }

    /// Accepts or drops `(incarnation, seq)` and records it when accepted.
    pub fn check(&mut self, incarnation: u64, seq: u64) -> Result<Fresh, DropReason> {
        if !self.known || incarnation > self.incarnation {
            let fresh = if self.known {
                Fresh::NewIncarnation {
                    previous: self.incarnation,
                }
            } else {
                Fresh::First
            };
            *self = ReplayGuard {
                known: true,
                incarnation,
                highest: seq,
                window: 1,
            };
            return Ok(fresh);
        }
        if incarnation < self.incarnation {
            return Err(DropReason::StaleIncarnation);
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.window = if shift >= 64 { 1 } else { (self.window << shift) | 1 };
            self.highest = seq;
            return Ok(Fresh::Newest);
        }
        let age = self.highest - seq;
        if age >= REPLAY_WINDOW {
            return Err(DropReason::Replayed);
        }
        let bit = 1u64 << age;
        if self.window & bit != 0 {
            return Err(DropReason::Replayed);
        }
        self.window |= bit;
        Ok(Fresh::Late)
    }
}

#[cfg(test)]
#[path = "heartbeat_test.rs"]
mod tests;
