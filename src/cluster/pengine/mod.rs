//! The policy engine (Pacemaker's scheduler): a pure function from the CIB (configuration +
//! status) and the cluster's liveness facts to a transition graph, the actions that take the
//! cluster from where its resources are to where they should be, with ordering edges.
//!
//! [`schedule`] is deterministic: the same input gives the same [`Transition`], byte for byte
//! in its [`Transition::render`]ed form. It reads no clock (time is [`ClusterState::now_unix_ms`])
//! and does no I/O. `docs/pengine.md` describes the rules; `testdata/*.txt` are the table cases.
//!
//! - [`crm_syntax`]: reads crm shell configuration text into a [`Configuration`].
//! - [`state`]: what runs where, derived from the status section's operation history.

pub mod crm_syntax;
pub mod instances;
pub mod simulate;
pub mod state;

mod engine;

#[cfg(test)]
mod prop_test;
#[cfg(test)]
mod table_test;
#[cfg(test)]
mod unique_prop_test;

use crate::cluster::cib::config::Role;
use crate::cluster::cib::{Cib, Configuration, Status};
use crate::cluster::quorum::NoQuorumPolicy;
use std::collections::BTreeMap;
use std::fmt;

/// One node's liveness as the membership layer and the administrator see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeState {
    /// A member of this (the DC's) partition.
    pub online: bool,
    /// Lost without a clean shutdown: it may still run resources and must be fenced before they
    /// run elsewhere. Meaningless when `online`.
    pub unclean: bool,
    /// Fencing it has failed `stonith-max-attempts` times in a row: it is not tried again (until
    /// the node is seen, or an operator confirms it down), and its resources stay blocked.
    pub fencing_failed: bool,
    /// Standby (also read from the node's `standby` attribute in the configuration).
    pub standby: bool,
    /// Maintenance: resources on it are left alone (also the node's `maintenance` attribute).
    pub maintenance: bool,
}

impl NodeState {
    pub fn online() -> NodeState {
        NodeState {
            online: true,
            ..NodeState::default()
        }
    }

    pub fn offline() -> NodeState {
        NodeState::default()
    }

    pub fn unclean() -> NodeState {
        NodeState {
            unclean: true,
            ..NodeState::default()
        }
    }
}

/// What the scheduler needs besides the CIB. Nodes configured but missing here are offline
/// (cleanly); nodes here but not configured are known by name only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, NodeState>,
    /// Whether this partition has quorum.
    pub has_quorum: bool,
    /// Overrides the configuration's `no-quorum-policy`.
    pub no_quorum_policy: Option<NoQuorumPolicy>,
    /// Overrides the configuration's `stonith-enabled`.
    pub stonith_enabled: Option<bool>,
    /// Wall-clock time (ms since the Unix epoch), for `failure-timeout`.
    pub now_unix_ms: u64,
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Fence,
    Demote,
    Stop,
    Start,
    Promote,
    Monitor,
    /// A clone notification (`notify=true`): never planned by [`schedule`]; the controller
    /// adds them around a clone's start/stop/promote/demote actions.
    Notify,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Fence => "fence",
            ActionKind::Demote => "demote",
            ActionKind::Stop => "stop",
            ActionKind::Start => "start",
            ActionKind::Promote => "promote",
            ActionKind::Monitor => "monitor",
            ActionKind::Notify => "notify",
        }
    }
}

/// One action of the transition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct PlannedAction {
    pub kind: ActionKind,
    /// The primitive (empty for `Fence`).
    pub rsc: String,
    pub node: String,
    /// Recurring monitors only.
    pub interval_ms: u64,
    /// Recurring monitors only: the role the monitor checks (Promoted monitors expect rc 8).
    pub role: Option<Role>,
    /// The operation's configured timeout (`op NAME timeout=`, else `op_defaults timeout`).
    pub timeout_ms: Option<u64>,
}

impl fmt::Display for PlannedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ActionKind::Fence => write!(f, "fence {}", self.node),
            ActionKind::Monitor => {
                write!(
                    f,
                    "monitor {} on {} every {}",
                    self.rsc,
                    self.node,
                    fmt_ms(self.interval_ms)
                )?;
                if self.role == Some(Role::Promoted) {
                    f.write_str(" as Promoted")?;
                }
                Ok(())
            }
            k => write!(f, "{} {} on {}", k.as_str(), self.rsc, self.node),
        }
    }
}

fn fmt_ms(ms: u64) -> String {
    if (ms / 1000) * 1000 == ms {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The scheduler's result: where every primitive should be, the actions to get there, and the
/// order they must run in. Serialisable (JSON) for shipping from the DC to the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    /// Every configured primitive (by id, sorted) -> the nodes (sorted) and roles it should have.
    /// Empty: stopped. Unmanaged and blocked instances appear where they are.
    pub placement: BTreeMap<String, Vec<(String, Role)>>,
    /// The actions, in a topological order of `edges` (ties broken by the action itself).
    pub actions: Vec<PlannedAction>,
    /// `(before, after)` indexes into `actions`; acyclic.
    pub edges: Vec<(usize, usize)>,
    /// Things the administrator should know: dropped order edges, blocked resources.
    pub warnings: Vec<String>,
}

impl Transition {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The canonical text form: placement, actions in order, edges.
    pub fn render(&self) -> String {
        let mut s = String::from("placement:\n");
        for (rsc, nodes) in &self.placement {
            s.push_str(&format!("  {rsc}: {}\n", render_placement(nodes)));
        }
        s.push_str("actions:\n");
        for a in &self.actions {
            s.push_str(&format!("  {a}\n"));
        }
        s.push_str("edges:\n");
        for &(a, b) in &self.edges {
            s.push_str(&format!("  {} -> {}\n", self.actions[a], self.actions[b]));
        }
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }

    /// Whether action `a` must run before action `b` (directly or through other actions).
    pub fn precedes(&self, a: usize, b: usize) -> bool {
        let mut seen = vec![false; self.actions.len()];
        let mut stack = vec![a];
        while let Some(x) = stack.pop() {
            for &(p, q) in &self.edges {
                if p == x && !seen[q] {
                    if q == b {
                        return true;
                    }
                    seen[q] = true;
                    stack.push(q);
                }
            }
        }
        false
    }

    /// The index of the action whose text form is `text`.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.actions.iter().position(|a| a.to_string() == text)
    }
}

/// `node1 Promoted, node2 Unpromoted` / `node1` / `stopped`.
pub fn render_placement(nodes: &[(String, Role)]) -> String {
    if nodes.is_empty() {
        return "stopped".into();
    }
    nodes
        .iter()
        .map(|(n, r)| match r {
            Role::Started => n.clone(),
            r => format!("{n} {r}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Computes the transition from the current state (the status section's history, read with
/// `state`) to the placement the configuration asks for.
pub fn schedule(config: &Configuration, status: &Status, cluster: &ClusterState) -> Transition {
    engine::Engine::new(config, status, cluster).run()
}

/// [`schedule`] for a whole CIB document.
pub fn schedule_cib(cib: &Cib, cluster: &ClusterState) -> Transition {
    schedule(&cib.configuration, &cib.status, cluster)
}
