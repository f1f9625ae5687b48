//! The status section of the CIB: what the cluster has observed, per node. Changes here bump
//! `num_updates`, never `epoch`.
//!
//! Resource history is kept for resources that are no longer configured too: the policy engine
//! needs it to stop such orphans.

use super::config::{Action, Attrs, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-node facts, keyed by node name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStatus>,
    /// The fencing the DCs carried out or tried, oldest first, at most [`FENCING_HISTORY_MAX`]
    /// (what `stonith_admin --history` and crm_mon's fencing sections show).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fencing: Vec<FenceEvent>,
}

/// How many fencing events the status section keeps.
pub const FENCING_HISTORY_MAX: usize = 50;

/// One fencing operation against a node, as the DC that ran it recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceEvent {
    pub target: String,
    /// `reboot`, `off` or `on`; `confirm` for an operator's word that the node is down
    /// (`hbcrm node clearstate`).
    pub action: String,
    pub ok: bool,
    /// The device that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The node that ran the fence agents (the DC), or the tool's node for a confirmation.
    pub delegate: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub completed_unix_ms: u64,
}

impl Status {
    /// Failed fencing attempts against `target` since it was last fenced (or confirmed down)
    /// and since it was last seen alive: what `stonith-max-attempts` is compared with.
    pub fn fencing_failures(&self, target: &str) -> usize {
        let seen = self.nodes.get(target).and_then(|n| n.last_seen_unix_ms).unwrap_or(0);
        self.fencing
            .iter()
            .rev()
            .filter(|e| e.target == target)
            .take_while(|e| !e.ok && e.completed_unix_ms > seen)
            .count()
    }
}

/// Pacemaker's `node_state`: membership, transient attributes and the node's resource history.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    /// In the DC's view (membership layer).
    #[serde(default)]
    pub member: bool,
    /// The node's current heartbeat incarnation, as the membership layer last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// Wall-clock time (ms since the Unix epoch, from the driver) the node was last seen alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_unix_ms: Option<u64>,
    /// Attributes that do not outlive the node's run: fail counts (`fail-count-RSC#OP_INTERVAL`),
    /// promotion scores (`master-RSC`), ping results.
    #[serde(default)]
    pub transient_attributes: Attrs,
    /// Operation history per resource id (Pacemaker's `lrm_resources`).
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceHistory>,
    /// Actions the DC asked this node to carry out and whose result is not recorded yet. The
    /// replicated CIB is how requests reach a node: reliable, ordered and seen by every member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<ActionRequest>,
}

/// One action of a transition, addressed to a node's local resource manager. The agent, its
/// parameters and its meta attributes come from the configuration of the same document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Unique per request (`<transition>:<index>`); the result's `OpRecord::transition`.
    pub key: String,
    /// The resource id as the status section names it.
    pub rsc: String,
    pub action: Action,
    #[serde(default)]
    pub interval_ms: u64,
    /// For monitors: the role checked (`Promoted` expects rc 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub timeout_ms: u64,
    /// Extra environment for the agent (a clone notification's `OCF_RESKEY_CRM_meta_notify_*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

/// What the local resource manager did with one resource on one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceHistory {
    /// The agent that ran it, e.g. `ocf:heartbeat:IPaddr2` (kept for orphans).
    #[serde(default)]
    pub agent: String,
    /// The latest record per `(action, interval)`, oldest first by `call_id`.
    #[serde(default)]
    pub ops: Vec<OpRecord>,
}

/// The history keeps at most this many records per resource per node (the latest of each
/// `(action, interval)` replaces the earlier one, so this only bounds odd histories).
pub const MAX_OP_RECORDS: usize = 32;

impl ResourceHistory {
    /// Records `rec`, replacing an earlier record of the same action and interval.
    pub fn record(&mut self, rec: OpRecord) {
        self.ops
            .retain(|o| !(o.action == rec.action && o.interval_ms == rec.interval_ms));
        self.ops.push(rec);
        self.ops.sort_by_key(|o| o.call_id);
        if self.ops.len() > MAX_OP_RECORDS {
            let excess = self.ops.len() - MAX_OP_RECORDS;
            self.ops.drain(..excess);
        }
    }

    /// The most recent record (highest `call_id`).
    pub fn last(&self) -> Option<&OpRecord> {
        self.ops.last()
    }
}

/// One completed (or timed-out, or failed-to-execute) operation: Pacemaker's `lrm_rsc_op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpRecord {
    pub action: Action,
    #[serde(default)]
    pub interval_ms: u64,
    /// Per-node increasing call number of the local resource manager.
    pub call_id: u64,
    /// The agent's exit code (OCF: 0 success, 1 generic, ..., 7 not running, 8 running promoted,
    /// 9 failed promoted).
    pub rc: i32,
    pub status: OpStatus,
    /// When the result last changed (ms since the Unix epoch).
    #[serde(default)]
    pub last_rc_change_unix_ms: u64,
    #[serde(default)]
    pub exec_time_ms: u64,
    #[serde(default)]
    pub queue_time_ms: u64,
    /// The transition that asked for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<String>,
    /// Why it failed, in the agent's words: its last `ocf-exit-reason:` line (crm_mon's
    /// `exitreason`), or the LRM's own message when the agent could not run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exit_reason: String,
}

impl OpRecord {
    /// A completed operation (status Done) with no timings and no transition; tests and tools
    /// fill in the rest with struct update syntax.
    pub fn done(action: Action, interval_ms: u64, call_id: u64, rc: i32) -> OpRecord {
        OpRecord {
            action,
            interval_ms,
            call_id,
            rc,
            status: OpStatus::Done,
            last_rc_change_unix_ms: 0,
            exec_time_ms: 0,
            queue_time_ms: 0,
            transition: None,
            exit_reason: String::new(),
        }
    }
}

/// How an operation ended, apart from its exit code (Pacemaker's `op-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    Done,
    Cancelled,
    Timeout,
    NotSupported,
    Error,
    NotInstalled,
}
