//! Which CIB survives when two partitions rejoin (or a node joins with its own copy).
//!
//! 1. A document from a partition with quorum beats one from a partition without, whatever
//!    their versions: changes made without quorum (at most status updates: no DC, so no
//!    configuration changes) never overwrite the quorate partition's configuration.
//! 2. Otherwise the higher version wins, compared as `(admin_epoch, epoch, num_updates)`.
//! 3. Equal versions with equal digests: nothing to do.
//! 4. Equal versions with different digests (two partitions that both had quorum under
//!    `two_node`, each having made as many changes): the higher digest wins. That choice is
//!    arbitrary but the same on every node, so the cluster converges; it is reported as a
//!    conflict so the operator knows one side's changes were dropped.
//!
//! The rule is symmetric: `decide(a, b)` and `decide(b, a)` pick the same document.

use super::CibVersion;
use std::fmt;

/// One side of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeSide {
    pub version: CibVersion,
    /// Whether the partition the document comes from had quorum (the `QUORATE` flag of the
    /// sender's heartbeats before the merge; for the local side, this partition's quorum).
    pub quorate: bool,
    /// The document's [`super::Cib::digest`], if known.
    pub digest: Option<String>,
}

/// Which document to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Remote,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeReason {
    /// Same version and (as far as known) same content.
    Identical,
    /// Only the winner's partition had quorum.
    Quorum,
    /// The winner's version is higher.
    NewerVersion,
    /// Same version, different content: the higher digest wins.
    ConflictTieBreak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeDecision {
    pub winner: Winner,
    pub reason: MergeReason,
}

impl MergeDecision {
    /// Whether the local node must replace its document with the remote one.
    pub fn take_remote(self) -> bool {
        self.winner == Winner::Remote
    }
}

impl fmt::Display for MergeDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = match self.winner {
            Winner::Local => "keep local",
            Winner::Remote => "take remote",
        };
        let r = match self.reason {
            MergeReason::Identical => "identical",
            MergeReason::Quorum => "quorum",
            MergeReason::NewerVersion => "newer",
            MergeReason::ConflictTieBreak => "conflict",
        };
        write!(f, "{w} ({r})")
    }
}

/// The merge rule (see the module documentation).
pub fn decide(local: &MergeSide, remote: &MergeSide) -> MergeDecision {
    let pick = |remote_wins: bool, reason| MergeDecision {
        winner: if remote_wins { Winner::Remote } else { Winner::Local },
        reason,
    };
    if local.quorate != remote.quorate {
        return pick(remote.quorate, MergeReason::Quorum);
    }
    if local.version != remote.version {
        return pick(remote.version > local.version, MergeReason::NewerVersion);
    }
    match (&local.digest, &remote.digest) {
        (Some(l), Some(r)) if l != r => pick(r > l, MergeReason::ConflictTieBreak),
        _ => pick(false, MergeReason::Identical),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(s: &str) -> CibVersion {
        let v: Vec<u64> = s.split('.').map(|x| x.parse().expect("version number")).collect();
        assert_eq!(v.len(), 3, "version {s:?} is not A.E.U");
        CibVersion {
            admin_epoch: v[0] as u32,
            epoch: v[1],
            num_updates: v[2],
        }
    }

    /// Runs `testdata/merge.txt`: `local=A.E.U[/q][#digest] remote=... => keep|take (reason)`.
    #[test]
    fn merge_table() {
        let text = include_str!("testdata/merge.txt");
        let mut cases = 0;
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (input, want) = line
                .split_once("=>")
                .unwrap_or_else(|| panic!("line {}: no =>", lineno + 1));
            let mut sides = [None, None];
            for tok in input.split_whitespace() {
                let (k, v) = tok
                    .split_once('=')
                    .unwrap_or_else(|| panic!("line {}: {tok:?}", lineno + 1));
                let (v, digest) = match v.split_once('#') {
                    Some((v, d)) => (v, Some(d.to_string())),
                    None => (v, None),
                };
                let (v, quorate) = match v.strip_suffix("/q") {
                    Some(v) => (v, true),
                    None => (v, false),
                };
                let side = MergeSide {
                    version: version(v),
                    quorate,
                    digest,
                };
                match k {
                    "local" => sides[0] = Some(side),
                    "remote" => sides[1] = Some(side),
                    _ => panic!("line {}: unknown key {k:?}", lineno + 1),
                }
            }
            let [Some(local), Some(remote)] = sides else {
                panic!("line {}: needs local= and remote=", lineno + 1)
            };
            let got = decide(&local, &remote);
            assert_eq!(got.to_string(), want.trim(), "line {}: {line}", lineno + 1);
            // Symmetry: swapping the sides picks the same document.
            let back = decide(&remote, &local);
            assert_eq!(
                got.take_remote(),
                back.winner == Winner::Local && back.reason != MergeReason::Identical,
                "line {}: not symmetric",
                lineno + 1
            );
            assert_eq!(got.reason, back.reason, "line {}: reason not symmetric", lineno + 1);
            cases += 1;
        }
        assert!(cases >= 10, "only {cases} cases");
    }
}
