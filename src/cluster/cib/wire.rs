//! The CIB replication messages and how they travel inside heartbeat payloads.
//!
//! A message ([`CibMsg`]) is JSON (the CIB's own format, versioned by [`super::FORMAT_VERSION`]).
//! Its bytes are cut into fragments that each fit one heartbeat payload (payload kind
//! [`crate::cluster::heartbeat::PayloadKind::Cib`]), so a CIB of any size up to
//! [`MAX_MESSAGE`] crosses the same authenticated, replay-protected UDP channel as the
//! heartbeats. Every fragment has an explicit big-endian header:
//!
//! ```text
//! offset size field
//!      0    8 message id (per sender; a sender never reuses one within its incarnation)
//!      8    2 fragment index, 0 .. count-1
//!     10    2 fragment count, 1 ..= MAX_FRAGMENTS
//!     12    4 total message length in bytes, 1 ..= MAX_MESSAGE
//!     16    N fragment bytes: FRAGMENT_DATA bytes, except the last fragment
//! ```
//!
//! The receiver ([`Reassembler`]) keeps at most [`MAX_PARTIALS`] unfinished messages per sender,
//! forgets one that has not completed within the caller's age limit, drops duplicates (the
//! membership layer sends every payload once per link) and remembers the last
//! [`REMEMBERED`] completed ids per sender so a late duplicate of a whole message is ignored.
//! A lost fragment loses the message; the replication protocol retries on its own timers.

use super::ops::CibOp;
use super::{Cib, CibError, CibUpdate, CibVersion, FORMAT_VERSION};
use crate::cluster::{Millis, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

pub const FRAGMENT_HEADER: usize = 16;
/// Message bytes per fragment: well under a heartbeat's payload limit.
pub const FRAGMENT_DATA: usize = 32 * 1024;
/// The largest message (a whole CIB): 4 MiB.
pub const MAX_MESSAGE: usize = 4 << 20;
pub const MAX_FRAGMENTS: usize = MAX_MESSAGE.div_ceil(FRAGMENT_DATA);
/// Unfinished messages kept per sender; a newer one pushes the oldest out.
pub const MAX_PARTIALS: usize = 4;
/// Completed message ids remembered per sender (to ignore duplicates from the other links).
pub const REMEMBERED: usize = 64;

/// One replication message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum CibMsg {
    /// DC to members: tell me what you hold (sent when a node becomes DC or the view changes).
    Sync,
    /// Member to DC: the version and digest of my document, and whether a partition with
    /// quorum made it.
    Announce {
        version: CibVersion,
        digest: String,
        origin_quorate: bool,
    },
    /// "Send me your document" (member to DC: with the version I have, so updates may do; DC to
    /// member: the member's document won the merge).
    Want { have: Option<CibVersion> },
    /// A whole document.
    Document { origin_quorate: bool, cib: Box<Cib> },
    /// One change the DC applied, to be applied on the same base version.
    Update { update: CibUpdate },
    /// Member to DC: apply these operations for the tool that asked me (`req` is mine).
    Change { req: u64, ops: Vec<CibOp> },
    /// DC to member: the outcome of `Change { req }`.
    ChangeResult {
        req: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<CibVersion>,
        #[serde(default)]
        changed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl CibMsg {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            CibMsg::Sync => "sync",
            CibMsg::Announce { .. } => "announce",
            CibMsg::Want { .. } => "want",
            CibMsg::Document { .. } => "document",
            CibMsg::Update { .. } => "update",
            CibMsg::Change { .. } => "change",
            CibMsg::ChangeResult { .. } => "change-result",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("CIB message serialises")
    }

    /// Reads a message; documents and updates must be of this build's format, and a document
    /// must be valid.
    pub fn decode(bytes: &[u8]) -> Result<CibMsg, CibError> {
        let msg: CibMsg = serde_json::from_slice(bytes).map_err(|e| CibError::Decode(e.to_string()))?;
        match &msg {
            CibMsg::Document { cib, .. } => {
                if cib.format_version != FORMAT_VERSION {
                    return Err(CibError::FormatVersion {
                        found: cib.format_version.into(),
                    });
                }
                cib.validate()?;
            }
            CibMsg::Update { update } if update.format_version != FORMAT_VERSION => {
                return Err(CibError::FormatVersion {
                    found: update.format_version.into(),
                })
            }
            _ => {}
        }
        Ok(msg)
    }
}

/// Cuts `message` (at most [`MAX_MESSAGE`] bytes) into heartbeat payloads.
pub fn fragment(id: u64, message: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if message.is_empty() || message.len() > MAX_MESSAGE {
        return Err(format!(
            "a CIB message of {} bytes cannot be sent (1 to {MAX_MESSAGE} bytes)",
            message.len()
        ));
    }
    let chunks: Vec<&[u8]> = message.chunks(FRAGMENT_DATA).collect();
    let count = chunks.len() as u16;
    Ok(chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut b = Vec::with_capacity(FRAGMENT_HEADER + c.len());
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&(i as u16).to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&(message.len() as u32).to_be_bytes());
            b.extend_from_slice(c);
            b
        })
        .collect())
}

/// Why a fragment was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// Shorter than the header.
    Truncated,
    /// Index, count, length or size out of range or inconsistent with earlier fragments.
    Malformed,
    /// Already received (the same fragment on another link, or a message already completed).
    Duplicate,
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FragmentError::Truncated => "truncated CIB fragment",
            FragmentError::Malformed => "malformed CIB fragment",
            FragmentError::Duplicate => "duplicate CIB fragment",
        })
    }
}

#[derive(Debug, Clone)]
struct Partial {
    id: u64,
    total: usize,
    parts: Vec<Option<Vec<u8>>>,
    got: usize,
    started: Millis,
}

#[derive(Debug, Clone, Default)]
struct FromPeer {
    partials: Vec<Partial>,
    done: VecDeque<u64>,
}

/// Puts fragments back together, per sender, with bounded memory.
#[derive(Debug, Clone, Default)]
pub struct Reassembler {
    peers: BTreeMap<NodeId, FromPeer>,
}

impl Reassembler {
    /// Takes one fragment from `from`; returns the whole message when this fragment completes it.
    pub fn push(&mut self, now: Millis, from: NodeId, b: &[u8]) -> Result<Option<Vec<u8>>, FragmentError> {
        if b.len() < FRAGMENT_HEADER {
            return Err(FragmentError::Truncated);
        }
        let id = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
        let index = u16::from_be_bytes([b[8], b[9]]) as usize;
        let count = u16::from_be_bytes([b[10], b[11]]) as usize;
        let total = u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        let data = &b[FRAGMENT_HEADER..];
        let expected_len = if index + 1 == count {
            total.wrapping_sub(FRAGMENT_DATA * index)
        } else {
            FRAGMENT_DATA
        };
        if count == 0
            || count > MAX_FRAGMENTS
            || index >= count
            || total == 0
            || total > MAX_MESSAGE
            || total.div_ceil(FRAGMENT_DATA) != count
            || data.len() != expected_len
        {
            return Err(FragmentError::Malformed);
        }
        let peer = self.peers.entry(from).or_default();
        if peer.done.contains(&id) {
            return Err(FragmentError::Duplicate);
        }
        if count == 1 {
            remember(peer, id);
            return Ok(Some(data.to_vec()));
        }
        let pos = match peer.partials.iter().position(|p| p.id == id) {
            Some(p) => p,
            None => {
                if peer.partials.len() >= MAX_PARTIALS {
                    // Forget the oldest unfinished message.
                    let oldest = (0..peer.partials.len())
                        .min_by_key(|i| peer.partials[*i].started)
                        .expect("non-empty");
                    peer.partials.remove(oldest);
                }
                peer.partials.push(Partial {
                    id,
                    total,
                    parts: vec![None; count],
                    got: 0,
                    started: now,
                });
                peer.partials.len() - 1
            }
        };
        let p = &mut peer.partials[pos];
        if p.total != total || p.parts.len() != count {
            return Err(FragmentError::Malformed);
        }
        if p.parts[index].is_some() {
            return Err(FragmentError::Duplicate);
        }
        p.parts[index] = Some(data.to_vec());
        p.got += 1;
        if p.got < count {
            return Ok(None);
        }
        let p = peer.partials.remove(pos);
        remember(peer, id);
        let mut out = Vec::with_capacity(p.total);
        for part in p.parts.into_iter().flatten() {
            out.extend_from_slice(&part);
        }
        Ok(Some(out))
    }

    /// Drops unfinished messages older than `max_age`.
    pub fn expire(&mut self, now: Millis, max_age: Millis) {
        for peer in self.peers.values_mut() {
            peer.partials.retain(|p| now.saturating_sub(p.started) <= max_age);
        }
    }

    /// `from` restarted: its message ids start over.
    pub fn forget(&mut self, from: NodeId) {
        self.peers.remove(&from);
    }

    /// Bytes held in unfinished messages (for tests and status).
    pub fn buffered(&self) -> usize {
        self.peers
            .values()
            .flat_map(|p| p.partials.iter())
            .flat_map(|p| p.parts.iter().flatten())
            .map(Vec::len)
            .sum()
    }
}

fn remember(peer: &mut FromPeer, id: u64) {
    if peer.done.len() >= REMEMBERED {
        peer.done.pop_front();
    }
    peer.done.push_back(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_round_trip_in_any_order_with_duplicates() {
        let msg: Vec<u8> = (0..(FRAGMENT_DATA * 3 + 17)).map(|i| (i % 251) as u8).collect();
        let frags = fragment(7, &msg).unwrap();
        assert_eq!(frags.len(), 4);
        assert!(frags.iter().all(|f| f.len() <= FRAGMENT_HEADER + FRAGMENT_DATA));
        let mut r = Reassembler::default();
        let from = NodeId(1);
        for i in [3, 0, 2] {
            assert_eq!(r.push(0, from, &frags[i]), Ok(None));
        }
        assert_eq!(r.push(0, from, &frags[0]), Err(FragmentError::Duplicate));
        assert_eq!(r.push(0, from, &frags[1]).unwrap().as_deref(), Some(&msg[..]));
        assert_eq!(r.buffered(), 0);
        // The same message again (another link): ignored.
        assert_eq!(r.push(0, from, &frags[1]), Err(FragmentError::Duplicate));
        // Another sender may use the same id.
        let one = fragment(7, b"{}").unwrap();
        assert_eq!(r.push(0, NodeId(2), &one[0]).unwrap().as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn bad_fragments_are_refused_and_memory_is_bounded() {
        let mut r = Reassembler::default();
        let n = NodeId(1);
        assert_eq!(r.push(0, n, &[0; 5]), Err(FragmentError::Truncated));
        let good = fragment(1, &vec![1u8; FRAGMENT_DATA + 1]).unwrap();
        let mut bad = good[0].clone();
        bad[11] = 0; // count 0
        assert_eq!(r.push(0, n, &bad), Err(FragmentError::Malformed));
        let mut bad = good[1].clone();
        bad.push(0); // last fragment longer than the total says
        assert_eq!(r.push(0, n, &bad), Err(FragmentError::Malformed));
        let mut bad = good[0].clone();
        bad[12..16].copy_from_slice(&((MAX_MESSAGE + 1) as u32).to_be_bytes());
        assert_eq!(r.push(0, n, &bad), Err(FragmentError::Malformed));
        assert!(fragment(1, &[]).is_err());
        assert!(fragment(1, &vec![0; MAX_MESSAGE + 1]).is_err());
        // Many unfinished messages: only MAX_PARTIALS are kept.
        for id in 0..20u64 {
            let f = fragment(100 + id, &vec![2u8; FRAGMENT_DATA * 2]).unwrap();
            assert_eq!(r.push(id, n, &f[0]), Ok(None));
        }
        assert_eq!(r.buffered(), MAX_PARTIALS * FRAGMENT_DATA);
        r.expire(100, 10);
        assert_eq!(r.buffered(), 0);
        r.forget(n);
        assert_eq!(r.push(0, n, &good[0]), Ok(None));
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let cib = Cib::new();
        for m in [
            CibMsg::Sync,
            CibMsg::Want { have: None },
            CibMsg::Document {
                origin_quorate: true,
                cib: Box::new(cib.clone()),
            },
            CibMsg::Change {
                req: 3,
                ops: vec![CibOp::SetProperty {
                    name: "stonith-enabled".into(),
                    value: Some("false".into()),
                }],
            },
            CibMsg::ChangeResult {
                req: 3,
                version: Some(cib.version()),
                changed: true,
                error: None,
            },
        ] {
            assert_eq!(CibMsg::decode(&m.encode()).unwrap(), m);
        }
        assert!(CibMsg::decode(b"not json").is_err());
        assert!(CibMsg::decode(br#"{"msg":"want","have":null,"extra":1}"#).is_err());
        assert!(CibMsg::decode(br#"{"msg":"launch"}"#).is_err());
        let mut old = cib;
        old.format_version = 99;
        let m = CibMsg::Document {
            origin_quorate: true,
            cib: Box::new(old),
        };
        assert!(matches!(
            CibMsg::decode(&m.encode()),
            Err(CibError::FormatVersion { found: 99 })
        ));
    }
}
