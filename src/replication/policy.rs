//! After-split-brain recovery policies (DRBD's `after-sb-0pri`, `after-sb-1pri`,
//! `after-sb-2pri`, REFERENCE.md §1.5), as pure functions.
//!
//! When the handshake finds a split brain with a common ancestor (both sides
//! started a new generation from the same one, `uuid_compare` rule 6), each
//! side runs [`resolve`] on the same inputs, seen from its own side: the roles,
//! the role bit of both bitmap UUIDs (was the node Primary when the split
//! happened?) and both out-of-sync counts (the blocks each side changed since
//! the split, exchanged in [`super::msg::AfterSbInfo`]). The answer is that the
//! peer's changes are discarded (this node is the resync source), this node's
//! changes are discarded (it becomes a bitmap-based resync target), or nobody
//! decides and the connection is dropped to StandAlone.
//!
//! The rules follow DRBD 8.4's `drbd_asb_recover_{0,1,2}p()`, including its
//! fall-throughs (younger/older primary undecided → least changes). Ties are
//! broken the same way on both sides: the node with the lower node id keeps
//! its data (DRBD's RESOLVE_CONFLICTS).

use super::state::Role;
use crate::store::meta::gi::UUID_PRIMARY;
use std::fmt;
use std::str::FromStr;

/// `after-sb-0pri`: neither node is Primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AfterSb0Pri {
    /// No automatic recovery (DRBD's default).
    #[default]
    Disconnect,
    /// Discard the node that became Primary after the split (it was Secondary then).
    DiscardYoungerPrimary,
    /// Discard the node that was Primary when the split happened.
    DiscardOlderPrimary,
    /// Discard the node that changed nothing; if both changed, disconnect.
    DiscardZeroChanges,
    /// Discard the node with fewer changed blocks.
    DiscardLeastChanges,
    /// Always discard the named node (`discard-node-NAME`).
    DiscardNode(String),
}

/// `after-sb-1pri`: exactly one node is Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb1Pri {
    #[default]
    Disconnect,
    /// Discard the Secondary if the after-sb-0pri rule would also discard it; else disconnect.
    Consensus,
    /// Always discard the Secondary.
    DiscardSecondary,
    /// Follow after-sb-0pri; if it discards the Primary, the Primary gives up its role
    /// (or, when it cannot, calls the `pri-lost-after-sb` handler and disconnects).
    CallPriLostAfterSb,
}

/// `after-sb-2pri`: both nodes are Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb2Pri {
    #[default]
    Disconnect,
    /// Follow after-sb-0pri; the discarded Primary gives up its role (or `pri-lost-after-sb`).
    CallPriLostAfterSb,
}

/// The three policies plus `always-asbp`. Both peers must configure the same
/// (the handshake refuses a mismatch, as DRBD does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AfterSbPolicy {
    pub pri0: AfterSb0Pri,
    pub pri1: AfterSb1Pri,
    pub pri2: AfterSb2Pri,
    /// Apply the policies also to a split brain whose ancestry is only found in
    /// the history (rule 7); the resync is then a full one.
    pub always_asbp: bool,
}

impl AfterSbPolicy {
    /// The combination DRBD's guide recommends: 0pri discard-zero-changes, 1pri
    /// discard-secondary, 2pri disconnect.
    pub fn recommended() -> AfterSbPolicy {
        AfterSbPolicy {
            pri0: AfterSb0Pri::DiscardZeroChanges,
            pri1: AfterSb1Pri::DiscardSecondary,
            pri2: AfterSb2Pri::Disconnect,
            always_asbp: false,
        }
    }
}

/// A policy string that is not one DRBD defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPolicy(pub String);

impl fmt::Display for BadPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown after-sb policy {:?}", self.0)
    }
}
impl std::error::Error for BadPolicy {}

impl FromStr for AfterSb0Pri {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, BadPolicy> {
        Ok(match s {
            "disconnect" => AfterSb0Pri::Disconnect,
            "discard-younger-primary" => AfterSb0Pri::DiscardYoungerPrimary,
            "discard-older-primary" => AfterSb0Pri::DiscardOlderPrimary,
            "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
            "discard-least-changes" => AfterSb0Pri::DiscardLeastChanges,
            _ => match s.strip_prefix("discard-node-") {
                Some(n) if !n.is_empty() && n.len() <= super::msg::MAX_NAME => AfterSb0Pri::DiscardNode(n.into()),
                _ => return Err(BadPolicy(s.into())),
            },
        })
    }
}

impl FromStr for AfterSb1Pri {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, BadPolicy> {
        Ok(match s {
            "disconnect" => AfterSb1Pri::Disconnect,
            "consensus" => AfterSb1Pri::Consensus,
            "discard-secondary" => AfterSb1Pri::DiscardSecondary,
            "call-pri-lost-after-sb" => AfterSb1Pri::CallPriLostAfterSb,
            _ => return Err(BadPolicy(s.into())),
        })
    }
}

impl FromStr for AfterSb2Pri {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Self, BadPolicy> {
        Ok(match s {
            "disconnect" => AfterSb2Pri::Disconnect,
            "call-pri-lost-after-sb" => AfterSb2Pri::CallPriLostAfterSb,
            _ => return Err(BadPolicy(s.into())),
        })
    }
}

impl fmt::Display for AfterSb0Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterSb0Pri::Disconnect => f.write_str("disconnect"),
            AfterSb0Pri::DiscardYoungerPrimary => f.write_str("discard-younger-primary"),
            AfterSb0Pri::DiscardOlderPrimary => f.write_str("discard-older-primary"),
            AfterSb0Pri::DiscardZeroChanges => f.write_str("discard-zero-changes"),
            AfterSb0Pri::DiscardLeastChanges => f.write_str("discard-least-changes"),
            AfterSb0Pri::DiscardNode(n) => write!(f, "discard-node-{n}"),
        }
    }
}

impl fmt::Display for AfterSb1Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AfterSb1Pri::Disconnect => "disconnect",
            AfterSb1Pri::Consensus => "consensus",
            AfterSb1Pri::DiscardSecondary => "discard-secondary",
            AfterSb1Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
        })
    }
}

impl fmt::Display for AfterSb2Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AfterSb2Pri::Disconnect => "disconnect",
            AfterSb2Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
        })
    }
}

// Wire codes (docs/replication.md, command AfterSb).
impl AfterSb0Pri {
    pub fn code(&self) -> u8 {
        match self {
            AfterSb0Pri::Disconnect => 0,
            AfterSb0Pri::DiscardYoungerPrimary => 1,
            AfterSb0Pri::DiscardOlderPrimary => 2,
            AfterSb0Pri::DiscardZeroChanges => 3,
            AfterSb0Pri::DiscardLeastChanges => 4,
            AfterSb0Pri::DiscardNode(_) => 5,
        }
    }
    /// The policy of a code; `name` is only used (and required non-empty) for code 5.
    pub fn from_code(c: u8, name: &str) -> Option<AfterSb0Pri> {
        Some(match c {
            0 => AfterSb0Pri::Disconnect,
            1 => AfterSb0Pri::DiscardYoungerPrimary,
            2 => AfterSb0Pri::DiscardOlderPrimary,
            3 => AfterSb0Pri::DiscardZeroChanges,
            4 => AfterSb0Pri::DiscardLeastChanges,
            5 if !name.is_empty() => AfterSb0Pri::DiscardNode(name.into()),
            _ => return None,
        })
    }
}

impl AfterSb1Pri {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(c: u8) -> Option<AfterSb1Pri> {
        use AfterSb1Pri::*;
        [Disconnect, Consensus, DiscardSecondary, CallPriLostAfterSb]
            .into_iter()
            .find(|p| p.code() == c)
    }
}

impl AfterSb2Pri {
    pub fn code(self) -> u8 {
        self as u8
    }
    pub fn from_code(c: u8) -> Option<AfterSb2Pri> {
        [AfterSb2Pri::Disconnect, AfterSb2Pri::CallPriLostAfterSb]
            .into_iter()
            .find(|p| p.code() == c)
    }
}

/// What [`resolve`] needs, seen from "me".
#[derive(Debug, Clone, Copy)]
pub struct SbView<'a> {
    pub my_role: Role,
    pub peer_role: Role,
    /// Bitmap UUIDs towards each other; only their role bit is used (set = the
    /// node was Primary when the split started its generation).
    pub my_bitmap_uuid: u64,
    pub peer_bitmap_uuid: u64,
    /// Out-of-sync blocks each side recorded towards the other.
    pub my_changes: u64,
    pub peer_changes: u64,
    pub my_name: &'a str,
    pub peer_name: &'a str,
    /// This node keeps its data when the rule cannot tell (lower node id).
    pub i_win_ties: bool,
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SbVerdict {
    /// The peer's changes are discarded: this node becomes the resync source.
    DiscardPeer,
    /// This node's changes are discarded: it becomes the resync target.
    DiscardMine,
    /// No automatic decision: disconnect (StandAlone), manual recovery.
    Disconnect,
}

/// Verdict plus the rule that gave it, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbOutcome {
    pub verdict: SbVerdict,
    /// Human-readable: which policy decided, e.g. `after-sb-0pri discard-least-changes`.
    pub rule: String,
    /// The discarded node is a Primary and must give up its role first
    /// (call-pri-lost-after-sb): it demotes, or calls pri-lost-after-sb and disconnects.
    pub victim_is_primary: bool,
}

fn tie(v: &SbView<'_>) -> SbVerdict {
    if v.i_win_ties {
        SbVerdict::DiscardPeer
    } else {
        SbVerdict::DiscardMine
    }
}

/// DRBD's `drbd_asb_recover_0p`: `None` when the policy does not decide.
fn recover_0p(p: &AfterSb0Pri, v: &SbView<'_>) -> Option<SbVerdict> {
    use SbVerdict::*;
    let me_was_pri = v.my_bitmap_uuid & UUID_PRIMARY != 0;
    let peer_was_pri = v.peer_bitmap_uuid & UUID_PRIMARY != 0;
    let (me0, peer0) = (v.my_changes == 0, v.peer_changes == 0);
    let least = || {
        Some(match v.my_changes.cmp(&v.peer_changes) {
            std::cmp::Ordering::Less => DiscardMine,
            std::cmp::Ordering::Greater => DiscardPeer,
            std::cmp::Ordering::Equal => tie(v),
        })
    };
    let zero = || {
        if me0 && peer0 {
            Some(tie(v))
        } else if peer0 {
            Some(DiscardPeer)
        } else if me0 {
            Some(DiscardMine)
        } else {
            None
        }
    };
    match p {
        AfterSb0Pri::Disconnect => None,
        AfterSb0Pri::DiscardYoungerPrimary | AfterSb0Pri::DiscardOlderPrimary => {
            let younger = matches!(p, AfterSb0Pri::DiscardYoungerPrimary);
            match (me_was_pri, peer_was_pri) {
                // I was Secondary at the split: I am the younger primary.
                (false, true) => Some(if younger { DiscardMine } else { DiscardPeer }),
                (true, false) => Some(if younger { DiscardPeer } else { DiscardMine }),
                // Undecided: DRBD falls through to zero changes, then least changes.
                _ => zero().or_else(least),
            }
        }
        AfterSb0Pri::DiscardZeroChanges => zero(),
        AfterSb0Pri::DiscardLeastChanges => zero().or_else(least),
        AfterSb0Pri::DiscardNode(n) => {
            if n == v.my_name {
                Some(DiscardMine)
            } else if n == v.peer_name {
                Some(DiscardPeer)
            } else {
                None
            }
        }
    }
}

/// Applies the policy matching the number of Primaries. Both sides reach
/// mirrored verdicts from mirrored views.
pub fn resolve(p: &AfterSbPolicy, v: &SbView<'_>) -> SbOutcome {
    use SbVerdict::*;
    let me_pri = v.my_role == Role::Primary;
    let peer_pri = v.peer_role == Role::Primary;
    let victim_primary = |verdict: SbVerdict| match verdict {
        DiscardMine => me_pri,
        DiscardPeer => peer_pri,
        Disconnect => false,
    };
    let zero_p = recover_0p(&p.pri0, v).unwrap_or(Disconnect);
    let (verdict, rule) = match (me_pri, peer_pri) {
        (false, false) => (zero_p, format!("after-sb-0pri {}", p.pri0)),
        (true, true) => match p.pri2 {
            AfterSb2Pri::Disconnect => (Disconnect, "after-sb-2pri disconnect".to_string()),
            AfterSb2Pri::CallPriLostAfterSb => (
                zero_p,
                format!("after-sb-2pri call-pri-lost-after-sb (after-sb-0pri {})", p.pri0),
            ),
        },
        _ => {
            let discard_secondary = if me_pri { DiscardPeer } else { DiscardMine };
            match p.pri1 {
                AfterSb1Pri::Disconnect => (Disconnect, "after-sb-1pri disconnect".to_string()),
                AfterSb1Pri::DiscardSecondary => (discard_secondary, "after-sb-1pri discard-secondary".to_string()),
                AfterSb1Pri::Consensus => (
                    if zero_p == discard_secondary {
                        zero_p
                    } else {
                        Disconnect
                    },
                    format!("after-sb-1pri consensus (after-sb-0pri {})", p.pri0),
                ),
                AfterSb1Pri::CallPriLostAfterSb => (
                    zero_p,
                    format!("after-sb-1pri call-pri-lost-after-sb (after-sb-0pri {})", p.pri0),
                ),
            }
        }
    };
    SbOutcome {
        verdict,
        rule,
        victim_is_primary: victim_primary(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in [
            "disconnect",
            "discard-younger-primary",
            "discard-older-primary",
            "discard-zero-changes",
            "discard-least-changes",
            "discard-node-alice",
        ] {
            let p: AfterSb0Pri = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            let name = if let AfterSb0Pri::DiscardNode(n) = &p {
                n.as_str()
            } else {
                ""
            };
            assert_eq!(AfterSb0Pri::from_code(p.code(), name), Some(p));
        }
        for s in ["disconnect", "consensus", "discard-secondary", "call-pri-lost-after-sb"] {
            let p: AfterSb1Pri = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(AfterSb1Pri::from_code(p.code()), Some(p));
        }
        for s in ["disconnect", "call-pri-lost-after-sb"] {
            let p: AfterSb2Pri = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(AfterSb2Pri::from_code(p.code()), Some(p));
        }
        assert!("discard-node-".parse::<AfterSb0Pri>().is_err());
        assert!("violently".parse::<AfterSb1Pri>().is_err());
        assert_eq!(AfterSb0Pri::from_code(5, ""), None);
        assert_eq!(AfterSb1Pri::from_code(9), None);
    }
}
