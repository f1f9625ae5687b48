//! The tgtadm command as data (what `hbtgtadm` parses and sends to the daemon), the reply,
//! and tgtd's error numbers and texts.

use serde::{Deserialize, Serialize};

/// One tgtadm command line, parsed. Every field is optional as on tgtadm's command line;
/// [`super::TargetRegistry::handle`] checks which ones a mode and op need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TgtRequest {
    /// `-L/--lld`: only `iscsi` is served.
    pub lld: Option<String>,
    /// `-m/--mode`: target, logicalunit, account, conn, session, sys, portal, lld.
    pub mode: Option<String>,
    /// `-o/--op`: new, delete, show, bind, unbind, update, start, stat.
    pub op: Option<String>,
    /// `-t/--tid`.
    pub tid: Option<u32>,
    /// `-T/--targetname`.
    pub targetname: Option<String>,
    /// `-l/--lun`.
    pub lun: Option<u64>,
    /// `-b/--backing-store`: a path, or a resource name with `--bstype hablock`.
    pub backing_store: Option<String>,
    /// `-E/--bstype`: rdwr (default), hablock, null.
    pub bstype: Option<String>,
    /// `-S/--bsopts` (accepted, stored, not interpreted).
    pub bsopts: Option<String>,
    /// `-f/--bsoflags`: sync, direct or sync:direct.
    pub bsoflags: Option<String>,
    /// `-Y/--device-type`: only disk is served.
    pub device_type: Option<String>,
    /// `-I/--initiator-address`: ALL, an address, or NET/PREFIX.
    pub initiator_address: Option<String>,
    /// `-Q/--initiator-name`.
    pub initiator_name: Option<String>,
    /// `-u/--user`.
    pub user: Option<String>,
    /// `-p/--password`.
    pub password: Option<String>,
    /// `-O/--outgoing`.
    pub outgoing: bool,
    /// `-n/--name`.
    pub name: Option<String>,
    /// `-v/--value`.
    pub value: Option<String>,
    /// `-P/--params`: `k=v,k=v`.
    pub params: Option<String>,
    /// `-s/--sid`.
    pub sid: Option<u64>,
    /// `-c/--cid`.
    pub cid: Option<u64>,
    /// `-F/--force`.
    pub force: bool,
}

/// What tgtadm would have printed and returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TgtReply {
    /// The process exit code: 0, or 22 (EINVAL) for every error tgtd reports (that is what
    /// tgtadm 1.0.85 returns), or 1 for an unknown mode or op.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl TgtReply {
    pub fn ok(stdout: String) -> TgtReply {
        TgtReply {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    pub fn err(e: TgtError) -> TgtReply {
        TgtReply {
            code: e.exit_code(),
            stdout: String::new(),
            stderr: format!("tgtadm: {e}\n"),
        }
    }
}

/// tgtd's error numbers (tgtadm_err) plus tgtadm's own usage errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgtError {
    NoTarget,
    NoLun,
    NoSession,
    NoConnection,
    TargetExist,
    LunExist,
    AclExist,
    AclNoExist,
    UserExist,
    NoUser,
    TooManyUser,
    InvalidRequest,
    OutAccountExist,
    TargetActive,
    Unsupported,
    UnknownParam,
    /// A usage error tgtadm finds before asking tgtd (exit 22), e.g. "'tid' option is necessary".
    Usage(String),
    /// "unknown mode: X" / "unknown operation: X" (exit 1).
    Unknown(String),
}

impl TgtError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TgtError::Unknown(_) => 1,
            _ => 22,
        }
    }
}

impl std::fmt::Display for TgtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            TgtError::NoTarget => "can't find the target",
            TgtError::NoLun => "can't find the logical unit",
            TgtError::NoSession => "can't find the session",
            TgtError::NoConnection => "can't find the connection",
            TgtError::TargetExist => "this target already exists",
            TgtError::LunExist => "this logical unit number already exists",
            TgtError::AclExist => "this access control rule already exists",
            TgtError::AclNoExist => "this access control rule does not exist",
            TgtError::UserExist => "this account already exists",
            TgtError::NoUser => "can't find the account",
            TgtError::TooManyUser => "too many accounts",
            TgtError::InvalidRequest => "invalid request",
            TgtError::OutAccountExist => "this target already has an outgoing account",
            TgtError::TargetActive => "this target is still active",
            TgtError::Unsupported => "this operation isn't supported",
            TgtError::UnknownParam => "unknown parameter",
            TgtError::Usage(m) | TgtError::Unknown(m) => m,
        };
        f.write_str(s)
    }
}
