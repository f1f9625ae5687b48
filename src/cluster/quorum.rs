//! Quorum: does this partition hold a majority of the configured votes?
//!
//! Modelled on corosync's votequorum: every configured node has `votes` (default 1); a partition
//! is quorate when its members hold more than half of the expected votes. Options:
//!
//! - `two_node`: a two-node cluster keeps quorum with one node (expected 2, needed 1). It implies
//!   `wait_for_all`, so a node that boots alone is not quorate until it has seen its peer once;
//!   fencing is what makes the mode safe after a split.
//! - `wait_for_all`: quorum is withheld until all configured nodes have been members of the view
//!   at the same time once since this node started.
//! - a tie-breaker for an exact half: the partition holding the lowest configured node id (as
//!   `auto_tie_breaker`), a named node, or an external device (a ping node or quorum device whose
//!   answer the driver feeds in with [`Quorum::set_external_grant`]).
//!
//! What the layer above does without quorum is [`NoQuorumPolicy`].

use super::{NodeId, NodeSet, MAX_NODES};
use std::fmt;
use std::str::FromStr;

/// Pacemaker's `no-quorum-policy`: what resources do in a partition without quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoQuorumPolicy {
    /// Stop every resource in the partition (Pacemaker's default).
    #[default]
    Stop,
    /// Keep running what runs; start nothing new.
    Freeze,
    /// Carry on as if quorate (only sane with fencing and two nodes).
    Ignore,
    /// Fence (reboot) every node in the partition.
    Suicide,
}

impl FromStr for NoQuorumPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(NoQuorumPolicy::Stop),
            "freeze" => Ok(NoQuorumPolicy::Freeze),
            "ignore" => Ok(NoQuorumPolicy::Ignore),
            "suicide" => Ok(NoQuorumPolicy::Suicide),
            _ => Err(format!(
                "{s:?} is not a no-quorum-policy: expected stop, freeze, ignore or suicide"
            )),
        }
    }
}

impl fmt::Display for NoQuorumPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoQuorumPolicy::Stop => "stop",
            NoQuorumPolicy::Freeze => "freeze",
            NoQuorumPolicy::Ignore => "ignore",
            NoQuorumPolicy::Suicide => "suicide",
        })
    }
}

/// Who wins an exact half split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieBreaker {
    /// Nobody: both halves lose quorum.
    #[default]
    None,
    /// The half holding the lowest configured node id (corosync's `auto_tie_breaker` default).
    Lowest,
    /// The half holding this node.
    Node(NodeId),
    /// An external device (ping node, qdevice): the driver reports its answer.
    External,
}

/// Static quorum settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// Votes per configured node (`None` = not configured).
    pub votes: Vec<(NodeId, u32)>,
    /// Overrides the sum of configured votes (corosync `expected_votes`).
    pub expected_votes: Option<u32>,
    pub two_node: bool,
    pub wait_for_all: bool,
    pub tie_breaker: TieBreaker,
}

impl QuorumConfig {
    /// One vote per node, no options.
    pub fn majority(nodes: NodeSet) -> QuorumConfig {
        QuorumConfig {
            votes: nodes.iter().map(|n| (n, 1)).collect(),
            expected_votes: None,
            two_node: false,
            wait_for_all: false,
            tie_breaker: TieBreaker::None,
        }
    }

    pub fn nodes(&self) -> NodeSet {
        self.votes.iter().map(|(n, _)| *n).collect()
    }

    pub fn votes_of(&self, members: NodeSet) -> u64 {
        self.votes
            .iter()
            .filter(|(n, _)| members.contains(*n))
            .map(|(_, v)| *v as u64)
            .sum()
    }

    pub fn expected(&self) -> u64 {
        self.expected_votes
            .map(u64::from)
            .unwrap_or_else(|| self.votes_of(self.nodes()))
    }

    /// `two_node` implies `wait_for_all`, as in corosync.
    pub fn waits_for_all(&self) -> bool {
        self.wait_for_all || self.two_node
    }

    /// Checks the combination, returning a message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        let nodes = self.nodes();
        if nodes.len() != self.votes.len() {
            return Err("a node is listed twice in the quorum votes".into());
        }
        if self.votes.iter().any(|(n, _)| n.0 as usize >= MAX_NODES) {
            return Err(format!("node ids must be below {MAX_NODES}"));
        }
        if self.expected() == 0 {
            return Err("the cluster has no votes: give at least one node a vote".into());
        }
        if self.two_node && (self.votes.len() != 2 || self.votes.iter().any(|(_, v)| *v != 1)) {
            return Err("two_node needs exactly two nodes with one vote each".into());
        }
        if let TieBreaker::Node(n) = self.tie_breaker {
            if !nodes.contains(n) {
                return Err(format!("the tie-breaker node {n} is not a configured node"));
            }
        }
        Ok(())
    }
}

/// The quorum rule as a function of its whole input; [`Quorum`] keeps the state it needs.
pub fn has_quorum(cfg: &QuorumConfig, members: NodeSet, wait_for_all_done: bool, external_grant: bool) -> bool {
    if cfg.waits_for_all() && !wait_for_all_done {
        return false;
    }
    let have = cfg.votes_of(members);
    let expected = cfg.expected();
    if cfg.two_node {
        return have >= 1;
    }
    if 2 * have > expected {
        return true;
    }
    if 2 * have == expected && have > 0 {
        return match cfg.tie_breaker {
            TieBreaker::None => false,
            TieBreaker::Lowest => cfg
                .votes
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(n, _)| *n)
                .min()
                .is_some_and(|n| members.contains(n)),
            TieBreaker::Node(n) => members.contains(n),
            TieBreaker::External => external_grant,
        };
    }
    false
}

/// Quorum state for one node: remembers whether wait-for-all has been satisfied since start.
#[derive(Debug, Clone)]
pub struct Quorum {
    cfg: QuorumConfig,
    wait_for_all_done: bool,
    external_grant: bool,
    quorate: bool,
}

impl Quorum {
    pub fn new(cfg: QuorumConfig) -> Quorum {
        Quorum {
            cfg,
            wait_for_all_done: false,
            external_grant: false,
            quorate: false,
        }
    }

    pub fn config(&self) -> &QuorumConfig {
        &self.cfg
    }

    pub fn quorate(&self) -> bool {
        self.quorate
    }

    pub fn wait_for_all_done(&self) -> bool {
        self.wait_for_all_done
    }

    /// The tie-breaker device's answer: does it side with this partition?
    pub fn set_external_grant(&mut self, grant: bool) {
        self.external_grant = grant;
    }

    /// Recomputes quorum for a new view; returns the new value.
    pub fn update(&mut self, members: NodeSet) -> bool {
        if self.cfg.nodes().is_subset(members) {
            self.wait_for_all_done = true;
        }
        self.quorate = has_quorum(&self.cfg, members, self.wait_for_all_done, self.external_grant);
        self.quorate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> NodeSet {
        if s == "-" {
            return NodeSet::EMPTY;
        }
        s.split(',')
            .map(|x| NodeId(x.trim().parse().expect("node id")))
            .collect()
    }

    /// Runs `testdata/quorum.txt`: each line is `key=value ... => yes|no`.
    #[test]
    fn table() {
        let text = include_str!("testdata/quorum.txt");
        let mut cases = 0;
        for (ln, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            let (input, want) = line
                .split_once("=>")
                .unwrap_or_else(|| panic!("line {}: no =>", ln + 1));
            let want = match want.trim() {
                "yes" => true,
                "no" => false,
                w => panic!("line {}: expected yes or no, got {w:?}", ln + 1),
            };
            let mut cfg = QuorumConfig::majority(NodeSet::EMPTY);
            let mut history: Vec<NodeSet> = Vec::new();
            let mut members = NodeSet::EMPTY;
            let mut grant = false;
            for tok in input.split_whitespace() {
                let (k, v) = tok
                    .split_once('=')
                    .unwrap_or_else(|| panic!("line {}: {tok:?}", ln + 1));
                match k {
                    "votes" => {
                        cfg.votes = v
                            .split(',')
                            .enumerate()
                            .filter(|(_, x)| *x != "_")
                            .map(|(i, x)| (NodeId(i as u8), x.parse().unwrap()))
                            .collect()
                    }
                    "expected" => cfg.expected_votes = Some(v.parse().unwrap()),
                    "two_node" => cfg.two_node = v == "1",
                    "wfa" => cfg.wait_for_all = v == "1",
                    "tb" => {
                        cfg.tie_breaker = match v {
                            "none" => TieBreaker::None,
                            "lowest" => TieBreaker::Lowest,
                            "external" => TieBreaker::External,
                            n => TieBreaker::Node(NodeId(n.parse().unwrap())),
                        }
                    }
                    "grant" => grant = v == "1",
                    "history" => history = v.split(';').map(set).collect(),
                    "members" => members = set(v),
                    _ => panic!("line {}: unknown key {k}", ln + 1),
                }
            }
            cfg.validate().unwrap_or_else(|e| panic!("line {}: {e}", ln + 1));
            let mut q = Quorum::new(cfg);
            q.set_external_grant(grant);
            for h in history {
                q.update(h);
            }
            assert_eq!(q.update(members), want, "line {}: {line}", ln + 1);
            cases += 1;
        }
        assert!(cases >= 20, "only {cases} cases");
    }

    #[test]
    fn validation_and_policy() {
        let mut c = QuorumConfig::majority(set("0,1,2"));
        assert!(c.validate().is_ok());
        c.two_node = true;
        assert!(c.validate().unwrap_err().contains("two_node"));
        c.two_node = false;
        c.tie_breaker = TieBreaker::Node(NodeId(7));
        assert!(c.validate().is_err());
        assert!(QuorumConfig::majority(NodeSet::EMPTY).validate().is_err());
        for p in ["stop", "freeze", "ignore", "suicide"] {
            assert_eq!(p.parse::<NoQuorumPolicy>().unwrap().to_string(), p);
        }
        assert!("demote"
            .parse::<NoQuorumPolicy>()
            .unwrap_err()
            .contains("expected stop"));
        assert_eq!(NoQuorumPolicy::default(), NoQuorumPolicy::Stop);
    }
}
