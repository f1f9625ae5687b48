//! Pure: exit-code names, how a finished agent process becomes `(status, rc)`, the LSB mapping,
//! when a recurring monitor reports, and the output tail.

use super::rc;
use crate::cluster::cib::config::{Action, ResourceClass};
use crate::cluster::cib::status::OpStatus;

/// The OCF meaning of an exit code (`crm_resource`'s wording).
pub fn ocf_rc_name(code: i32) -> &'static str {
    match code {
        rc::OK => "ok",
        rc::ERR_GENERIC => "error",
        rc::ERR_ARGS => "invalid parameter",
        rc::ERR_UNIMPLEMENTED => "unimplemented feature",
        rc::ERR_PERM => "insufficient privileges",
        rc::ERR_INSTALLED => "not installed",
        rc::ERR_CONFIGURED => "not configured",
        rc::NOT_RUNNING => "not running",
        rc::RUNNING_PROMOTED => "running promoted",
        rc::FAILED_PROMOTED => "failed promoted",
        _ => "unknown",
    }
}

/// How the agent process ended (what the edge observed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it (not our timeout kill).
    Signal(i32),
    /// It ran past its timeout; its process group was killed.
    TimedOut,
    /// It could not be started; the OS error number.
    SpawnFailed(i32),
}

/// LSB init script exit code → OCF, as Pacemaker maps it. For `status` (our `monitor`):
/// 0 running → 0; 1 "dead, pid file exists", 2 "dead, lock file exists" and 3 "not running" → 7;
/// 4 "unknown" → 1; 150/151 (the LSB ranges Pacemaker reads as not installed / insufficient
/// privileges) → 5/4; anything else → 1. For other actions 0–7 mean what the OCF codes mean
/// (LSB and OCF share them) and anything else is 1.
pub fn lsb_to_ocf(action: Action, code: i32) -> i32 {
    if action == Action::Monitor {
        match code {
            0 => rc::OK,
            1..=3 => rc::NOT_RUNNING,
            150 => rc::ERR_INSTALLED,
            151 => rc::ERR_PERM,
            _ => rc::ERR_GENERIC,
        }
    } else {
        match code {
            0..=7 => code,
            _ => rc::ERR_GENERIC,
        }
    }
}

/// The recorded `(status, rc)` of a finished process. A timeout is `Timeout`/rc 1 and a signal
/// `Error`/rc 1, as Pacemaker records them; an OCF exit code outside 0–9 is `Error`/rc 1.
pub fn outcome(class: ResourceClass, action: Action, exit: Exit) -> (OpStatus, i32) {
    match exit {
        Exit::Code(c) => match class {
            ResourceClass::Lsb => (OpStatus::Done, lsb_to_ocf(action, c)),
            _ if (0..=9).contains(&c) => (OpStatus::Done, c),
            _ => (OpStatus::Error, rc::ERR_GENERIC),
        },
        Exit::Signal(_) => (OpStatus::Error, rc::ERR_GENERIC),
        Exit::TimedOut => (OpStatus::Timeout, rc::ERR_GENERIC),
        Exit::SpawnFailed(e) if e == libc::ENOENT => (OpStatus::NotInstalled, rc::ERR_INSTALLED),
        Exit::SpawnFailed(e) if e == libc::EACCES => (OpStatus::Error, rc::ERR_PERM),
        Exit::SpawnFailed(_) => (OpStatus::Error, rc::ERR_GENERIC),
    }
}

/// Whether a run of a recurring operation is reported: its first result always, afterwards
/// only when `(status, rc)` differs from the last reported one (Pacemaker's executor reports a
/// recurring monitor on change only). A failure that stays the same is therefore reported
/// once; a recovery (back to the expected rc) is reported too.
pub fn should_report(last_reported: Option<(OpStatus, i32)>, now: (OpStatus, i32)) -> bool {
    last_reported != Some(now)
}

/// Whether `(status, rc)` is what the controller expects of a recurring op.
pub fn is_expected(expected_rc: Option<i32>, now: (OpStatus, i32)) -> bool {
    now.0 == OpStatus::Done && now.1 == expected_rc.unwrap_or(rc::OK)
}

/// Whether the per-node `HA_RSCTMP`/`HA_VARRUN` hold state from an earlier boot and must be
/// emptied. Agents rely on them being cleaned at boot (`/run` is a tmpfs; ocf-shellfuncs says
/// so), but our state directory is on disk. A restart of the daemon without a reboot keeps them:
/// the resources are still running. `saved` is the boot id written at the last start, `current`
/// the kernel's (`/proc/sys/kernel/random/boot_id`); when the kernel's is unknown nothing is
/// removed.
pub fn stale_after_reboot(saved: Option<&str>, current: Option<&str>) -> bool {
    match (saved.map(str::trim), current.map(str::trim)) {
        (Some(s), Some(c)) => s != c,
        _ => false,
    }
}

/// The last `max` bytes of `bytes` as text, cut at a UTF-8 boundary, invalid bytes replaced.
pub fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let mut s = &bytes[start..];
    // Skip continuation bytes of a character cut at the front.
    while let Some((&b, rest)) = s.split_first() {
        if b & 0xC0 == 0x80 {
            s = rest;
        } else {
            break;
        }
    }
    String::from_utf8_lossy(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_names_cover_0_to_9() {
        let names: Vec<&str> = (0..=9).map(ocf_rc_name).collect();
        assert_eq!(
            names,
            [
                "ok",
                "error",
                "invalid parameter",
                "unimplemented feature",
                "insufficient privileges",
                "not installed",
                "not configured",
                "not running",
                "running promoted",
                "failed promoted"
            ]
        );
        assert_eq!(ocf_rc_name(42), "unknown");
        assert_eq!(ocf_rc_name(-1), "unknown");
    }

    #[test]
    fn lsb_status_mapping() {
        let m: Vec<i32> = [0, 1, 2, 3, 4, 5, 150, 151, 200]
            .map(|c| lsb_to_ocf(Action::Monitor, c))
            .to_vec();
        assert_eq!(m, [0, 7, 7, 7, 1, 1, 5, 4, 1]);
        assert_eq!(lsb_to_ocf(Action::Start, 0), 0);
        assert_eq!(lsb_to_ocf(Action::Start, 5), 5);
        assert_eq!(lsb_to_ocf(Action::Stop, 3), 3);
        assert_eq!(lsb_to_ocf(Action::Start, 8), 1, "8 is not an LSB start code");
    }

    #[test]
    fn outcomes() {
        use OpStatus::*;
        let o = ResourceClass::Ocf;
        assert_eq!(outcome(o, Action::Monitor, Exit::Code(7)), (Done, 7));
        assert_eq!(outcome(o, Action::Monitor, Exit::Code(8)), (Done, 8));
        assert_eq!(outcome(o, Action::Start, Exit::Code(10)), (Error, 1));
        assert_eq!(outcome(o, Action::Start, Exit::Code(-1)), (Error, 1));
        assert_eq!(outcome(o, Action::Start, Exit::TimedOut), (Timeout, 1));
        assert_eq!(outcome(o, Action::Start, Exit::Signal(9)), (Error, 1));
        assert_eq!(
            outcome(o, Action::Start, Exit::SpawnFailed(libc::ENOENT)),
            (NotInstalled, 5)
        );
        assert_eq!(outcome(o, Action::Start, Exit::SpawnFailed(libc::EACCES)), (Error, 4));
        assert_eq!(outcome(ResourceClass::Lsb, Action::Monitor, Exit::Code(3)), (Done, 7));
        assert_eq!(outcome(ResourceClass::Lsb, Action::Monitor, Exit::Code(8)), (Done, 1));
    }

    #[test]
    fn recurring_reports_first_result_and_changes_only() {
        use OpStatus::*;
        let runs = [
            (Done, 0),
            (Done, 0),
            (Done, 7),
            (Done, 7),
            (Timeout, 1),
            (Done, 0),
            (Done, 0),
        ];
        let mut last = None;
        let mut reported = Vec::new();
        for r in runs {
            if should_report(last, r) {
                reported.push(r);
                last = Some(r);
            }
        }
        assert_eq!(reported, [(Done, 0), (Done, 7), (Timeout, 1), (Done, 0)]);
        assert!(is_expected(None, (Done, 0)));
        assert!(is_expected(Some(8), (Done, 8)));
        assert!(!is_expected(Some(8), (Done, 0)));
        assert!(!is_expected(Some(1), (Timeout, 1)));
    }

    #[test]
    fn state_is_stale_only_after_a_reboot() {
        assert!(stale_after_reboot(Some("aaa\n"), Some("bbb\n")));
        assert!(!stale_after_reboot(Some("aaa\n"), Some("aaa")));
        assert!(!stale_after_reboot(None, Some("aaa")), "first start: nothing to clean");
        assert!(!stale_after_reboot(Some("aaa"), None), "unknown boot: keep");
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail_text(b"hello", 10), "hello");
        assert_eq!(tail_text(b"hello", 3), "llo");
        // "é" is two bytes; cutting in its middle drops the orphan continuation byte.
        let s = "aé".as_bytes();
        assert_eq!(tail_text(s, 1), "");
        assert_eq!(tail_text(s, 2), "é");
        assert_eq!(tail_text(&[0xff, b'x'], 10), "\u{fffd}x");
    }
}
