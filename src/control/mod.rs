//! The admin API between the tools and a node daemon.
//!
//! Wire format (docs/control.md): one JSON object per line over the node's Unix socket
//! `<control_dir>/<node>.sock`. The tool sends a [`Request`], the daemon answers one
//! [`Response`] and closes. JSON keeps it scriptable with `socat` and stable: fields
//! are only ever added.

pub mod client;

use serde::{Deserialize, Serialize};

/// Largest request line the daemon reads; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a tool asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The verb: up, down, attach, detach, primary, secondary, status, cluster-status, cib-show,
    /// cib-change.
    pub cmd: String,
    /// A resource name or "all".
    #[serde(default = "all")]
    pub resource: String,
    /// `--force` where the verb has one.
    #[serde(default)]
    pub force: bool,
    /// `cib-change`: the CIB operations (a JSON array of `cluster::cib::CibOp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cib_ops: Option<serde_json::Value>,
    /// For `cmd = "tgtadm"`: the parsed tgtadm command line
    /// ([`crate::iscsi::target::TgtRequest`] as JSON), sent by `hbtgtadm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tgt: Option<serde_json::Value>,
}

fn all() -> String {
    "all".into()
}

/// Exit codes shared by the daemon's answers and the tools (drbdadm's spirit:
/// 0 ok, distinct non-zero codes a script can tell apart).
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Bad usage or an unexpected failure.
    pub const FAILED: i32 = 1;
    /// The resource is not in the cluster file for this node.
    pub const NO_SUCH_RESOURCE: i32 = 10;
    /// The state change was refused (in use, wrong state); the message says why.
    pub const REFUSED: i32 = 11;
    /// The daemon is not running or not reachable.
    pub const NO_DAEMON: i32 = 20;
    /// Metadata missing, corrupt or foreign.
    pub const METADATA: i32 = 30;
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// One of [`exit`]; 0 means success.
    pub code: i32,
    /// What went wrong and what to do, when `code != 0`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Per-resource lines for the operator ("r0: attached").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    /// Status document for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NodeStatus>,
    /// Membership status for `cluster-status` (see `hbcrm status --json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Box<serde_json::Value>>,
    /// For `tgtadm`: what tgtadm would print and its exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tgt: Option<Box<crate::iscsi::target::TgtReply>>,
}

impl Response {
    pub fn ok(messages: Vec<String>) -> Response {
        Response {
            code: exit::OK,
            error: String::new(),
            messages,
            status: None,
            cluster: None,
            tgt: None,
        }
    }

    pub fn err(code: i32, error: impl Into<String>) -> Response {
        Response {
            code,
            error: error.into(),
            messages: Vec::new(),
            status: None,
            cluster: None,
            tgt: None,
        }
    }
}

/// `hbadm status --json` for one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub resources: Vec<ResourceStatus>,
}

/// One resource as the node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    /// Primary | Secondary | Unconfigured (not up).
    pub role: String,
    /// Diskless | Attaching | Inconsistent | Outdated | Consistent | UpToDate ...
    pub disk: String,
    pub protocol: String,
    /// Bytes the device exposes (0 while diskless).
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing: Option<BackingStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdStatus>,
    /// The ublk block device serving the resource on this node (e.g. /dev/ublkb0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ublk: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    /// Generation identifiers as hex strings: current, bitmap (per peer), history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gi: Option<String>,
    /// Why the resource is not up, when it should be (e.g. missing metadata).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackingStatus {
    pub disk: String,
    pub meta_disk: String,
    pub direct_io: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NbdStatus {
    pub address: String,
    pub uri: String,
    pub clients: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    /// StandAlone | Connecting | Connected ...
    pub connection: String,
    pub role: String,
    pub disk: String,
    /// Bytes this node has that the peer lacks (the dirty bitmap).
    pub out_of_sync: u64,
    /// Off | Established | SyncSource | SyncTarget ... (absent without replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<String>,
    /// Progress of a running resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncStatus>,
    /// The last connection problem (auth failure, split brain...), until it is solved.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

/// A running resync, as `/proc/drbd` showed it: bytes, speed, time left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// Bytes to copy when it started, and bytes copied.
    pub total: u64,
    pub done: u64,
    /// Bytes per second over the last seconds.
    pub speed: u64,
    /// Seconds left at that speed.
    pub eta_secs: Option<u64>,
}

/// I/O counters since the resource came up, in bytes and requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub trims: u64,
    pub io_errors: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_defaults_and_round_trip() {
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(
            r,
            Request {
                cmd: "status".into(),
                resource: "all".into(),
                force: false,
                cib_ops: None,
                tgt: None,
            }
        );
        let resp = Response::err(exit::REFUSED, "busy");
        let back: Response = serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
        assert!(serde_json::from_str::<Request>("{\"resource\":1}").is_err());
    }
}
