//! What a resource is doing on a node, read from the status section's operation history, and
//! its fail count there.

use crate::cluster::cib::config::{Action, Attrs, Resource, Role};
use crate::cluster::cib::status::{OpRecord, OpStatus, ResourceHistory};
use crate::cluster::cib::Configuration;
use crate::cluster::cib::Score;

/// OCF exit codes the scheduler interprets.
pub const OCF_SUCCESS: i32 = 0;
pub const OCF_ERR_INSTALLED: i32 = 5;
pub const OCF_NOT_RUNNING: i32 = 7;
pub const OCF_RUNNING_PROMOTED: i32 = 8;

/// The state of one resource on one node after its last operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Stopped,
    /// `Started` (for a promotable clone: unpromoted) or `Promoted`.
    Running(Role),
    /// An operation failed; the resource may be partly active in that role and needs a stop.
    Failed(Role),
    /// A stop failed: only fencing the node makes it safe.
    StopFailed,
}

impl Observed {
    pub fn is_active(self) -> bool {
        !matches!(self, Observed::Stopped)
    }
}

/// Replays the history (by `call_id`) into the resource's state. Cancelled operations say
/// nothing. A probe (interval 0 monitor) reports what it found; a recurring monitor that finds
/// the resource not running is a failure.
pub fn observe(h: &ResourceHistory) -> Observed {
    let mut ops: Vec<_> = h.ops.iter().collect();
    ops.sort_by_key(|o| o.call_id);
    let mut st = Observed::Stopped;
    for o in ops {
        if o.status == OpStatus::Cancelled {
            continue;
        }
        let done = o.status == OpStatus::Done;
        let role_now = match st {
            Observed::Running(r) | Observed::Failed(r) => r,
            _ => Role::Started,
        };
        st = match o.action {
            Action::Start => match (done, o.rc) {
                (true, OCF_SUCCESS) => Observed::Running(Role::Started),
                _ => Observed::Failed(Role::Started),
            },
            Action::Stop => match (done, o.rc) {
                (true, OCF_SUCCESS) => Observed::Stopped,
                _ => Observed::StopFailed,
            },
            Action::Promote => match (done, o.rc) {
                (true, OCF_SUCCESS) => Observed::Running(Role::Promoted),
                _ => Observed::Failed(Role::Promoted),
            },
            Action::Demote => match (done, o.rc) {
                (true, OCF_SUCCESS) => Observed::Running(Role::Started),
                _ => Observed::Failed(Role::Promoted),
            },
            Action::Monitor => match (done, o.rc, o.interval_ms) {
                (true, OCF_SUCCESS, _) => match st {
                    // A late "running" report does not clear a failure or a failed stop.
                    Observed::Failed(_) | Observed::StopFailed => st,
                    _ => Observed::Running(Role::Started),
                },
                (true, OCF_RUNNING_PROMOTED, _) => match st {
                    Observed::Failed(_) | Observed::StopFailed => st,
                    _ => Observed::Running(Role::Promoted),
                },
                // A probe that finds the agent or its software missing: nothing runs there (and
                // nothing may: see `not_installed`).
                (true, OCF_NOT_RUNNING | OCF_ERR_INSTALLED, 0) => Observed::Stopped,
                _ => Observed::Failed(role_now),
            },
            _ => st,
        };
    }
    st
}

/// An operation's `on-fail`: what a failure of it makes the cluster do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OnFail {
    /// Pretend it did not fail.
    Ignore,
    /// Leave the resource alone where it failed (no further operations).
    Block,
    /// Stop it and start it nowhere (until cleaned up).
    Stop,
    /// Recover it (stop, start; elsewhere past migration-threshold). `demote` too, here.
    Restart,
    /// Fence the node it failed on.
    Fence,
    /// Move everything off the node it failed on.
    Standby,
}

/// The `on-fail` of `prim`'s operation `action` with `interval_ms`: the operation's own, else
/// `op_defaults`', else Pacemaker's default (a stop: fence with fencing enabled, block without;
/// anything else: restart). `demote` is taken as restart.
pub fn on_fail_of(cfg: &Configuration, prim: &str, action: Action, interval_ms: u64, stonith: bool) -> OnFail {
    let configured = match cfg.resource(prim) {
        Some(Resource::Primitive(p)) => p
            .ops
            .iter()
            .find(|op| op.name == action && op.interval_ms == interval_ms)
            .and_then(|op| op.attrs.get("on-fail")),
        _ => None,
    };
    match configured
        .or_else(|| cfg.op_defaults.get("on-fail"))
        .map(String::as_str)
    {
        Some("ignore") => OnFail::Ignore,
        Some("block") => OnFail::Block,
        Some("stop") => OnFail::Stop,
        Some("fence") => OnFail::Fence,
        Some("standby") => OnFail::Standby,
        Some(_) => OnFail::Restart,
        None if action == Action::Stop && stonith => OnFail::Fence,
        None if action == Action::Stop => OnFail::Block,
        None => OnFail::Restart,
    }
}

/// Whether the resource's last probe on the node said OCF_ERR_INSTALLED: it cannot run there
/// (Pacemaker's hard error) until its history is cleaned up.
pub fn not_installed(h: &ResourceHistory) -> bool {
    h.ops
        .iter()
        .filter(|o| o.action == Action::Monitor && o.interval_ms == 0 && o.status != OpStatus::Cancelled)
        .max_by_key(|o| o.call_id)
        .is_some_and(|o| o.status == OpStatus::Done && o.rc == OCF_ERR_INSTALLED)
}

/// The fail count of `rsc` on a node and when it last failed, from the node's transient
/// attributes `fail-count-RSC[#OP_INTERVAL]` and `last-failure-RSC[#OP_INTERVAL]`. Without
/// those attributes a failed history still counts: once, or INFINITY for a failed start
/// (Pacemaker's `start-failure-is-fatal`).
pub fn fail_count(rsc: &str, attrs: &Attrs, history: Option<&ResourceHistory>) -> (Score, Option<u64>) {
    let mut count = Score::ZERO;
    let mut any = false;
    let mut last: Option<u64> = None;
    for (k, v) in attrs {
        if matches_rsc(k, "fail-count-", rsc) {
            any = true;
            count += v.parse::<Score>().unwrap_or(Score::INFINITY);
        } else if matches_rsc(k, "last-failure-", rsc) {
            if let Ok(t) = v.trim().parse::<u64>() {
                last = Some(last.map_or(t, |l| l.max(t)));
            }
        }
    }
    if let Some(h) = history {
        let failed = h.ops.iter().filter(|o| op_failed(o)).max_by_key(|o| o.call_id);
        if let Some(f) = failed {
            if last.is_none() {
                last = Some(f.last_rc_change_unix_ms);
            }
            if !any {
                count = if f.action == Action::Start {
                    Score::INFINITY
                } else {
                    Score::new(1)
                };
            }
        }
    }
    (count, last)
}

/// Whether a recorded operation failed (what `crm_mon` lists under "Failed Resource Actions"):
/// not completed, or an exit code the action does not expect. Cancelled operations never fail.
pub fn op_failed(o: &OpRecord) -> bool {
    o.status != OpStatus::Cancelled && !op_ok(o.action, o.rc, o.status, o.interval_ms)
}

fn op_ok(action: Action, rc: i32, status: OpStatus, interval_ms: u64) -> bool {
    if status != OpStatus::Done {
        return false;
    }
    match action {
        Action::Monitor if interval_ms == 0 => matches!(rc, OCF_SUCCESS | OCF_NOT_RUNNING | OCF_RUNNING_PROMOTED),
        Action::Monitor => matches!(rc, OCF_SUCCESS | OCF_RUNNING_PROMOTED),
        _ => rc == OCF_SUCCESS,
    }
}

fn matches_rsc(key: &str, prefix: &str, rsc: &str) -> bool {
    key.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(rsc))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

/// The primitive a status entry is about: `rsc` or a clone instance `rsc:N`.
pub fn base_id(status_id: &str) -> &str {
    match status_id.rsplit_once(':') {
        Some((b, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => status_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: Action, interval_ms: u64, call_id: u64, rc: i32) -> OpRecord {
        OpRecord {
            last_rc_change_unix_ms: call_id * 1000,
            ..OpRecord::done(action, interval_ms, call_id, rc)
        }
    }

    fn hist(ops: Vec<OpRecord>) -> ResourceHistory {
        ResourceHistory {
            agent: "ocf:heartbeat:Dummy".into(),
            ops,
        }
    }

    #[test]
    fn replays_history() {
        use Action::*;
        let cases: Vec<(Vec<OpRecord>, Observed)> = vec![
            (vec![], Observed::Stopped),
            (vec![rec(Start, 0, 1, 0)], Observed::Running(Role::Started)),
            (
                vec![rec(Start, 0, 1, 0), rec(Promote, 0, 2, 0)],
                Observed::Running(Role::Promoted),
            ),
            (
                vec![rec(Start, 0, 1, 0), rec(Promote, 0, 2, 0), rec(Demote, 0, 3, 0)],
                Observed::Running(Role::Started),
            ),
            (vec![rec(Start, 0, 1, 0), rec(Stop, 0, 2, 0)], Observed::Stopped),
            (vec![rec(Start, 0, 1, 1)], Observed::Failed(Role::Started)),
            (
                vec![rec(Start, 0, 1, 0), rec(Monitor, 10_000, 2, 7)],
                Observed::Failed(Role::Started),
            ),
            (vec![rec(Monitor, 0, 1, 7)], Observed::Stopped),
            (vec![rec(Monitor, 0, 1, 8)], Observed::Running(Role::Promoted)),
            (vec![rec(Start, 0, 1, 0), rec(Stop, 0, 2, 1)], Observed::StopFailed),
            // Out-of-order records are replayed by call id.
            (vec![rec(Stop, 0, 5, 0), rec(Start, 0, 4, 0)], Observed::Stopped),
            (
                vec![
                    rec(Start, 0, 1, 0),
                    rec(Monitor, 10_000, 2, 1),
                    rec(Stop, 0, 3, 0),
                    rec(Start, 0, 4, 0),
                ],
                Observed::Running(Role::Started),
            ),
        ];
        for (ops, want) in cases {
            assert_eq!(observe(&hist(ops.clone())), want, "{ops:?}");
        }
    }

    #[test]
    fn fail_counts() {
        let mut attrs = Attrs::new();
        attrs.insert("fail-count-db#monitor_10000".into(), "2".into());
        attrs.insert("fail-count-db#start_0".into(), "1".into());
        attrs.insert("fail-count-dbx#monitor_10000".into(), "9".into());
        attrs.insert("last-failure-db#monitor_10000".into(), "5000".into());
        assert_eq!(fail_count("db", &attrs, None), (Score::new(3), Some(5000)));
        assert_eq!(fail_count("dbx", &attrs, None), (Score::new(9), None));
        let h = hist(vec![rec(Action::Start, 0, 3, 1)]);
        assert_eq!(
            fail_count("web", &Attrs::new(), Some(&h)),
            (Score::INFINITY, Some(3000))
        );
        let h = hist(vec![rec(Action::Start, 0, 3, 0), rec(Action::Monitor, 10_000, 4, 7)]);
        assert_eq!(fail_count("web", &Attrs::new(), Some(&h)), (Score::new(1), Some(4000)));
        assert!(op_failed(&rec(Action::Monitor, 10_000, 4, 7)));
        assert!(!op_failed(&rec(Action::Monitor, 0, 4, 7)));
        assert!(!op_failed(&rec(Action::Start, 0, 4, 0)));
        assert!(op_failed(&OpRecord {
            status: OpStatus::Timeout,
            ..rec(Action::Start, 0, 4, 0)
        }));
        assert_eq!(base_id("drbd:1"), "drbd");
        assert_eq!(base_id("a:b"), "a:b");
        assert_eq!(base_id("plain"), "plain");
    }
}
