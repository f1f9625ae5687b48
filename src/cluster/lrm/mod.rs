//! The local resource manager (LRM): runs a node's resource agents the way Pacemaker's executor
//! (`pacemaker-execd`, formerly `lrmd`) does, and hands every result back to the controller.
//!
//! The deciding parts are pure and unit-tested; the process running is a thin edge:
//!
//! - [`env`]: where an agent lives, its command line and its environment (`OCF_ROOT`,
//!   `OCF_RESKEY_*`, `OCF_RESKEY_CRM_meta_*`, `HA_RSCTMP`, ...).
//! - [`rules`]: exit-code names, LSB → OCF mapping, how a finished process becomes a result, when a
//!   recurring monitor reports, the output tail.
//! - [`queue`]: operations on one resource run one at a time, in submission order.
//! - [`notify`]: the clone notification variables (`OCF_RESKEY_CRM_meta_notify_*`).
//! - [`exec`]: spawns one agent process (own process group, output to a file, SIGKILL to the group
//!   on timeout).
//! - [`manager`]: [`Lrm`], the tokio-based executor the controller calls.
//!
//! `docs/lrm.md` has the environment table, the exit codes and where output goes.

pub mod env;
pub mod exec;
pub mod manager;
pub mod notify;
pub mod queue;
pub mod rules;

pub use manager::Lrm;
pub use rules::ocf_rc_name;

use crate::cluster::cib::config::{Action, Agent, Attrs};
use crate::cluster::cib::ops::CibOp;
use crate::cluster::cib::status::{OpRecord, OpStatus};
use std::path::PathBuf;

/// OCF exit codes (OCF resource agent API 1.1, "Return codes").
pub mod rc {
    pub const OK: i32 = 0;
    pub const ERR_GENERIC: i32 = 1;
    pub const ERR_ARGS: i32 = 2;
    pub const ERR_UNIMPLEMENTED: i32 = 3;
    pub const ERR_PERM: i32 = 4;
    pub const ERR_INSTALLED: i32 = 5;
    pub const ERR_CONFIGURED: i32 = 6;
    pub const NOT_RUNNING: i32 = 7;
    pub const RUNNING_PROMOTED: i32 = 8;
    pub const FAILED_PROMOTED: i32 = 9;
}

/// How much of an agent's output a result keeps (the end of it).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// One node's LRM settings.
#[derive(Debug, Clone)]
pub struct LrmConfig {
    /// This node's name (`OCF_RESKEY_CRM_meta_on_node`, `HA_NODE`... as Pacemaker passes it).
    pub node: String,
    /// Per node. `HA_RSCTMP` = `state_dir/rsctmp`, `HA_VARRUN` = `state_dir/run`,
    /// `HA_VARLOCK` = `state_dir/lock`, `HA_VARLIB` = `state_dir/lib`; agent output goes to
    /// `state_dir/output`. All are created by [`Lrm::new`].
    pub state_dir: PathBuf,
    /// `OCF_ROOT`; agents are at `resource.d/PROVIDER/TYPE` under it. Usually `/usr/lib/ocf`.
    pub ocf_root: PathBuf,
    /// Searched before `OCF_ROOT/resource.d` for `PROVIDER/TYPE` (e.g. the repo's
    /// `agents/ocf/resource.d`).
    pub extra_provider_dirs: Vec<PathBuf>,
    /// Where `lsb:NAME` scripts live, usually `/etc/init.d`.
    pub lsb_dir: PathBuf,
    /// Call ids increase from here; the caller makes them grow across restarts.
    pub first_call_id: u64,
    /// Put before the clean `PATH` (e.g. the repo's `agents/bin` with crm_master shims).
    pub path_prepend: Vec<PathBuf>,
    /// Given to every agent (e.g. `HABLOCK_CONFIG`, `HABLOCK_NODE`).
    pub extra_env: Vec<(String, String)>,
    /// For tests only: run every agent through `ip netns exec NETNS`, so that e.g. IPaddr2's
    /// address lives in the test's own network namespace. Note that `ip netns exec` also gives
    /// the agent its own mount namespace, so mounts made by an agent (Filesystem) are not seen
    /// outside it: do not use it for Filesystem.
    pub netns: Option<String>,
}

impl LrmConfig {
    /// A configuration with Debian's defaults: `OCF_ROOT=/usr/lib/ocf`, `/etc/init.d`, call ids
    /// from 1, nothing extra.
    pub fn new(node: impl Into<String>, state_dir: impl Into<PathBuf>) -> LrmConfig {
        LrmConfig {
            node: node.into(),
            state_dir: state_dir.into(),
            ocf_root: PathBuf::from("/usr/lib/ocf"),
            extra_provider_dirs: Vec::new(),
            lsb_dir: PathBuf::from("/etc/init.d"),
            first_call_id: 1,
            path_prepend: Vec::new(),
            extra_env: Vec::new(),
            netns: None,
        }
    }

    pub fn rsctmp_dir(&self) -> PathBuf {
        self.state_dir.join("rsctmp")
    }
    pub fn varrun_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }
    pub fn varlock_dir(&self) -> PathBuf {
        self.state_dir.join("lock")
    }
    pub fn varlib_dir(&self) -> PathBuf {
        self.state_dir.join("lib")
    }
    pub fn output_dir(&self) -> PathBuf {
        self.state_dir.join("output")
    }
}

/// One operation the controller asks for.
#[derive(Debug, Clone)]
pub struct OpRequest {
    /// Resource instance id (for clones e.g. `p_drbd:0`): `OCF_RESOURCE_INSTANCE`.
    pub rsc: String,
    pub agent: Agent,
    pub action: Action,
    /// > 0: a recurring operation (monitor) run every `interval_ms`.
    pub interval_ms: u64,
    /// The process group is killed after this long (0 means the default, 20 s, as Pacemaker).
    pub timeout_ms: u64,
    /// `OCF_RESKEY_<name>`.
    pub params: Attrs,
    /// `OCF_RESKEY_CRM_meta_<name with '-' as '_'>`; `timeout`, `interval` and `name` are set
    /// from the request itself.
    pub meta: Attrs,
    /// Extra variables, e.g. the notify ones (`OCF_RESKEY_CRM_meta_notify_type`, ...).
    pub extra_env: Vec<(String, String)>,
    /// Opaque key, copied into the result.
    pub transition: Option<String>,
    /// For recurring monitors: the rc that means "as expected" (0, or 8 for Promoted). Only
    /// used for logging and [`Lrm::status_json`]; reporting follows [`rules::should_report`].
    pub expected_rc: Option<i32>,
}

impl OpRequest {
    /// A request with no params, meta or extras, no transition key and a 20 s timeout.
    pub fn new(rsc: impl Into<String>, agent: Agent, action: Action) -> OpRequest {
        OpRequest {
            rsc: rsc.into(),
            agent,
            action,
            interval_ms: 0,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            params: Attrs::new(),
            meta: Attrs::new(),
            extra_env: Vec::new(),
            transition: None,
            expected_rc: None,
        }
    }

    /// The effective timeout (the default when 0).
    pub fn effective_timeout_ms(&self) -> u64 {
        if self.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            self.timeout_ms
        }
    }
}

/// Pacemaker's default operation timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    pub rsc: String,
    /// The agent that ran (the CIB keeps it in the resource history, for orphans).
    pub agent: Agent,
    pub action: Action,
    pub interval_ms: u64,
    pub call_id: u64,
    /// OCF exit code (LSB results already mapped to OCF).
    pub rc: i32,
    pub status: OpStatus,
    pub exec_time_ms: u64,
    pub queue_time_ms: u64,
    /// The last [`OUTPUT_TAIL_BYTES`] of the agent's stdout+stderr (or the LRM's own message when
    /// the agent did not run).
    pub output: String,
    pub transition: Option<String>,
    pub finished_unix_ms: u64,
}

/// Longest exit reason kept in the CIB (Pacemaker keeps 128 bytes too).
pub const EXIT_REASON_MAX: usize = 128;

/// The agent's exit reason: the text after the last `ocf-exit-reason:` prefix in its output
/// (what `ocf_exit_reason` prints; the LRM sets `OCF_EXIT_REASON_PREFIX` to it), through
/// [`cut_reason`]; empty when the agent gave none.
pub fn exit_reason(output: &str) -> String {
    const PREFIX: &str = "ocf-exit-reason:";
    output
        .lines()
        .rev()
        .find_map(|l| l.split_once(PREFIX).map(|(_, r)| cut_reason(r)))
        .unwrap_or_default()
}

/// A reason as the CIB keeps it: trimmed, at most [`EXIT_REASON_MAX`] bytes (cut on a
/// character boundary).
pub fn cut_reason(reason: &str) -> String {
    let mut reason = reason.trim();
    if reason.len() > EXIT_REASON_MAX {
        let mut end = EXIT_REASON_MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason = &reason[..end];
    }
    reason.to_string()
}

impl OpResult {
    /// The CIB status record (`CibOp::RecordOperation`).
    pub fn to_record(&self) -> OpRecord {
        OpRecord {
            action: self.action,
            interval_ms: self.interval_ms,
            call_id: self.call_id,
            rc: self.rc,
            status: self.status,
            last_rc_change_unix_ms: self.finished_unix_ms,
            exec_time_ms: self.exec_time_ms,
            queue_time_ms: self.queue_time_ms,
            transition: self.transition.clone(),
            exit_reason: exit_reason(&self.output),
        }
    }

    /// The CIB change that records this result in `node`'s status.
    pub fn to_cib_op(&self, node: &str) -> CibOp {
        CibOp::RecordOperation {
            node: node.to_string(),
            rsc: self.rsc.clone(),
            agent: self.agent.to_string(),
            record: self.to_record(),
        }
    }
}

#[cfg(test)]
mod exit_reason_tests {
    use super::{exit_reason, EXIT_REASON_MAX};

    #[test]
    fn the_last_prefixed_line_is_the_reason() {
        let out = "INFO: starting\nocf-exit-reason:first try failed\nmore\nocf-exit-reason: disk is Outdated \n";
        assert_eq!(exit_reason(out), "disk is Outdated");
        // Agents' log prefixes may come before it on the same line.
        assert_eq!(
            exit_reason("Dummy(x)[12]: ERROR: ocf-exit-reason:state file gone"),
            "state file gone"
        );
        assert_eq!(exit_reason("no reason given\n"), "");
        assert_eq!(exit_reason(""), "");
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let long = format!("ocf-exit-reason:{}", "é".repeat(100));
        let r = exit_reason(&long);
        assert!(
            r.len() <= EXIT_REASON_MAX && r.len() >= EXIT_REASON_MAX - 1,
            "{}",
            r.len()
        );
        assert!(r.chars().all(|c| c == 'é'));
    }
}
