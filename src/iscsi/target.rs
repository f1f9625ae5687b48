//! Targets, LUNs, ACLs and CHAP accounts: what `hbtgtadm` manages, as tgtd keeps them.
//!
//! [`TargetRegistry`] is pure apart from one injected [`BackingProbe`] (does this path or
//! resource exist, how big is it). The daemon holds one behind a mutex, feeds it parsed
//! tgtadm commands through [`TargetRegistry::handle`], saves it when [`TargetRegistry::take_dirty`]
//! says so, and the iSCSI server asks it what a login needs ([`TargetRegistry::login_view`]) and
//! what a LUN table needs ([`TargetRegistry::lun_table`]), and tells it about sessions.

mod admin;
mod conf;
mod persist;
mod request;
mod show;

pub use admin::IscsiAdmin;
pub use conf::{import_targets_conf, ImportStep};
pub use persist::{load_state, save_state};
pub use request::{TgtError, TgtReply, TgtRequest};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// Largest number of targets, LUNs per target, ACL rules per target and accounts (explicit
/// limits, tgt's spirit).
pub const MAX_TARGETS: usize = 4096;
pub const MAX_LUNS: usize = 1024;
pub const MAX_ACLS: usize = 1024;
pub const MAX_ACCOUNTS: usize = 1024;

/// Answers the questions about the outside world the registry needs when a LU is made.
pub trait BackingProbe: Send + Sync {
    /// Size in bytes of a file or block device, or None if it cannot be opened.
    fn path_size(&self, path: &Path) -> Option<u64>;
    /// Size in bytes of a hablock resource on this node (0 if not known yet), or None if
    /// this node has no such resource.
    fn resource_size(&self, name: &str) -> Option<u64>;
    /// The resource whose backing disk on this node is `path`, if any. This lets
    /// `--bstype hablock --backing-store /srv/r0.img` name a resource by a path that exists,
    /// which the stock iSCSILogicalUnit agent's monitor insists on.
    fn resource_by_disk(&self, _path: &str) -> Option<String> {
        None
    }
}

/// Probes the real file system; resources come from a fixed list of names and sizes.
#[derive(Debug, Default, Clone)]
pub struct FsProbe {
    /// Resource name → size in bytes.
    pub resources: BTreeMap<String, u64>,
    /// Backing disk path on this node → resource name.
    pub disks: BTreeMap<String, String>,
}

impl BackingProbe for FsProbe {
    fn path_size(&self, path: &Path) -> Option<u64> {
        use std::io::{Seek, SeekFrom};
        let meta = std::fs::metadata(path).ok()?;
        if meta.is_file() {
            return Some(meta.len());
        }
        // Block devices report 0 in metadata; their end is their size.
        let mut f = std::fs::File::open(path).ok()?;
        f.seek(SeekFrom::End(0)).ok()
    }

    fn resource_size(&self, name: &str) -> Option<u64> {
        self.resources.get(name).copied()
    }

    fn resource_by_disk(&self, path: &str) -> Option<String> {
        self.disks.get(path).cloned()
    }
}

impl FsProbe {
    /// [`BackingProbe::path_size`] without the trait in scope.
    pub fn path_size_of(&self, path: &Path) -> Option<u64> {
        self.path_size(path)
    }
}

/// Whether a target accepts logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    #[default]
    Ready,
    Offline,
}

/// What backs a logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "bstype", content = "path", rename_all = "lowercase")]
pub enum Backing {
    /// LUN 0, tgt's controller LU (bstype null).
    Null,
    /// A file or block device (tgt's default `rdwr`).
    Rdwr(String),
    /// A hablock resource; serves I/O only while the resource is primary.
    Hablock(String),
}

impl Backing {
    pub fn bstype(&self) -> &'static str {
        match self {
            Backing::Null => "null",
            Backing::Rdwr(_) => "rdwr",
            Backing::Hablock(_) => "hablock",
        }
    }

    pub fn path(&self) -> Option<&str> {
        match self {
            Backing::Null => None,
            Backing::Rdwr(p) | Backing::Hablock(p) => Some(p),
        }
    }
}

/// tgt's LU parameters (`--params k=v,...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LuParams {
    pub vendor_id: String,
    pub product_id: String,
    pub product_rev: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scsi_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scsi_sn: Option<String>,
    pub readonly: bool,
    pub thin_provisioning: bool,
    pub removable: bool,
    pub online: bool,
    pub sense_format: u8,
}

impl Default for LuParams {
    fn default() -> Self {
        LuParams {
            vendor_id: "IET".into(),
            product_id: "VIRTUAL-DISK".into(),
            product_rev: "0001".into(),
            scsi_id: None,
            scsi_sn: None,
            readonly: false,
            thin_provisioning: false,
            removable: false,
            online: true,
            sense_format: 0,
        }
    }
}

impl LuParams {
    /// Applies `k=v,k=v` (tgt's names); any unknown key or bad value is an invalid request.
    pub fn apply(&mut self, params: &str) -> Result<(), TgtError> {
        let mut next = self.clone();
        for item in params.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, v) = item.split_once('=').ok_or(TgtError::InvalidRequest)?;
            let (k, v) = (k.trim(), v.trim());
            let flag = || match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(TgtError::InvalidRequest),
            };
            let text = |max: usize| {
                if v.is_empty() || v.len() > max || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    Err(TgtError::InvalidRequest)
                } else {
                    Ok(v.to_string())
                }
            };
            match k {
                "vendor_id" => next.vendor_id = text(8)?,
                "product_id" => next.product_id = text(16)?,
                "product_rev" => next.product_rev = text(4)?,
                "scsi_id" => next.scsi_id = Some(text(24)?),
                "scsi_sn" => next.scsi_sn = Some(text(36)?),
                "readonly" => next.readonly = flag()?,
                "thin_provisioning" => next.thin_provisioning = flag()?,
                "removable" => next.removable = flag()?,
                "online" => next.online = flag()?,
                "sense_format" => next.sense_format = flag()? as u8,
                _ => return Err(TgtError::InvalidRequest),
            }
        }
        *self = next;
        Ok(())
    }
}

/// One logical unit of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lun {
    pub lun: u64,
    #[serde(flatten)]
    pub backing: Backing,
    /// Size in bytes when the LU was made (re-probed at load).
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bsoflags: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bsopts: String,
    #[serde(default)]
    pub params: LuParams,
    /// For a resource named by its disk path: that path, which show prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_path: Option<String>,
}

impl Lun {
    pub fn block_size(&self) -> u32 {
        if self.backing == Backing::Null {
            1
        } else {
            512
        }
    }

    /// tgt's default SCSI ID: "IET" padded to 8, then tid and lun as 4 hex digits each.
    pub fn scsi_id(&self, tid: u32) -> String {
        self.params
            .scsi_id
            .clone()
            .unwrap_or_else(|| format!("IET     {:04x}{:04x}", tid, self.lun))
    }

    /// tgt's default serial number: "beaf" then tid and lun in decimal.
    pub fn scsi_sn(&self, tid: u32) -> String {
        self.params
            .scsi_sn
            .clone()
            .unwrap_or_else(|| format!("beaf{}{}", tid, self.lun))
    }
}

/// One connection of a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub cid: u64,
    pub addr: IpAddr,
}

/// A live session (I_T nexus) the server registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The I_T nexus id tgtadm shows and `--sid` names.
    pub sid: u64,
    pub initiator: String,
    pub alias: Option<String>,
    pub isid: [u8; 6],
    pub conns: Vec<ConnInfo>,
}

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub tid: u32,
    pub name: String,
    #[serde(default)]
    pub state: TargetState,
    /// Sorted by LUN; LUN 0 is always there.
    #[serde(default)]
    pub luns: Vec<Lun>,
    /// `--initiator-address` rules in the order bound.
    #[serde(default)]
    pub acl_addresses: Vec<String>,
    /// `--initiator-name` rules in the order bound.
    #[serde(default)]
    pub acl_names: Vec<String>,
    /// Incoming (initiator authenticates) account names, in the order bound.
    #[serde(default)]
    pub incoming: Vec<String>,
    /// The outgoing account (mutual CHAP), at most one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<String>,
    /// Parameters changed with `--op update` (tgt's names); the rest have tgt's defaults.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(skip)]
    pub sessions: Vec<SessionInfo>,
}

impl Target {
    fn new(tid: u32, name: String) -> Target {
        Target {
            tid,
            name,
            state: TargetState::Ready,
            luns: vec![Lun {
                lun: 0,
                backing: Backing::Null,
                size: 0,
                bsoflags: String::new(),
                bsopts: String::new(),
                params: LuParams {
                    product_id: "Controller".into(),
                    ..LuParams::default()
                },
                shown_path: None,
            }],
            acl_addresses: Vec::new(),
            acl_names: Vec::new(),
            incoming: Vec::new(),
            outgoing: None,
            params: BTreeMap::new(),
            sessions: Vec::new(),
        }
    }

    /// Whether an initiator with this name at this address may log in: tgt's rule, an
    /// address rule must match (no rules: nobody), and if name rules exist one must match.
    pub fn allows(&self, initiator: &str, addr: IpAddr) -> bool {
        acl_allows(&self.acl_addresses, &self.acl_names, initiator, addr)
    }

    /// The value of parameter `key`: the updated one, else tgt's default.
    pub fn param(&self, key: &str) -> Option<String> {
        if let Some(v) = self.params.get(key) {
            return Some(v.clone());
        }
        TARGET_PARAMS
            .iter()
            .find(|p| p.name == key)
            .map(|p| p.default.to_string())
    }
}

fn acl_allows(addrs: &[String], names: &[String], initiator: &str, addr: IpAddr) -> bool {
    let addr_ok = addrs.iter().any(|rule| address_matches(rule, addr));
    let name_ok = names.is_empty() || names.iter().any(|n| n == initiator);
    addr_ok && name_ok
}

/// Does ACL rule `rule` (ALL, an address, NET/PREFIX) admit `addr`?
pub fn address_matches(rule: &str, addr: IpAddr) -> bool {
    if rule.eq_ignore_ascii_case("ALL") {
        return true;
    }
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    };
    let (net, prefix) = match parse_acl_address(rule) {
        Some(x) => x,
        None => return false,
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Parses ALL (None), `ADDR` or `NET/PREFIX` (also `[v6]`); None when malformed.
fn parse_acl_address(rule: &str) -> Option<(IpAddr, u32)> {
    let (a, p) = match rule.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rule, None),
    };
    let a = a.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = a.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p.parse::<u32>().ok().filter(|p| *p <= max)?,
    };
    Some((ip, prefix))
}

/// Is this a valid ACL address rule?
pub fn valid_acl_address(rule: &str) -> bool {
    rule.eq_ignore_ascii_case("ALL") || parse_acl_address(rule).is_some()
}

/// iSCSI name check (RFC 3720 3.2.6 / RFC 7143 4.2.7): `iqn.YYYY-MM.reversed.domain[:any]`,
/// `eui.` + 16 hex digits, `naa.` + 16 or 32 hex digits; at most 223 bytes; letters, digits,
/// '-', '.', ':'. (tgt accepts any string; a bad name only fails later at the initiator.)
pub fn valid_iscsi_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 223 {
        return false;
    }
    let lower = name.to_ascii_lowercase();
    let hex = |s: &str, lens: &[usize]| lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = lower.strip_prefix("eui.") {
        return hex(rest, &[16]);
    }
    if let Some(rest) = lower.strip_prefix("naa.") {
        return hex(rest, &[16, 32]);
    }
    let Some(rest) = lower.strip_prefix("iqn.") else {
        return false;
    };
    if !lower
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
    {
        return false;
    }
    // YYYY-MM.
    let b = rest.as_bytes();
    if b.len() < 9 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' || b[7] != b'.' {
        return false;
    }
    let month = &rest[5..7];
    if !month.bytes().all(|c| c.is_ascii_digit()) || !(1..=12).contains(&month.parse::<u32>().unwrap_or(0)) {
        return false;
    }
    let authority = rest[8..].split(':').next().unwrap_or("");
    !authority.is_empty()
        && authority
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-'))
}

/// The kind of a target parameter's value.
#[derive(Debug, Clone, Copy)]
enum ParamKind {
    Num(u64, u64),
    Bool,
    Digest,
    Marker,
}

/// One target parameter tgt shows with `--op show --tid N` and accepts with `--op update`.
struct ParamDef {
    name: &'static str,
    default: &'static str,
    kind: ParamKind,
}

/// tgt 1.0.85's list, in its display order, with its defaults.
const TARGET_PARAMS: &[ParamDef] = &[
    p("nop_interval", "0", ParamKind::Num(0, 3600)),
    p("nop_count", "0", ParamKind::Num(0, 65535)),
    p("MaxRecvDataSegmentLength", "8192", ParamKind::Num(512, 16777215)),
    p("HeaderDigest", "None", ParamKind::Digest),
    p("DataDigest", "None", ParamKind::Digest),
    p("InitialR2T", "Yes", ParamKind::Bool),
    p("MaxOutstandingR2T", "1", ParamKind::Num(1, 65535)),
    p("ImmediateData", "Yes", ParamKind::Bool),
    p("FirstBurstLength", "65536", ParamKind::Num(512, 16777215)),
    p("MaxBurstLength", "262144", ParamKind::Num(512, 16777215)),
    p("DataPDUInOrder", "Yes", ParamKind::Bool),
    p("DataSequenceInOrder", "Yes", ParamKind::Bool),
    p("ErrorRecoveryLevel", "0", ParamKind::Num(0, 2)),
    p("IFMarker", "No", ParamKind::Bool),
    p("OFMarker", "No", ParamKind::Bool),
    p("DefaultTime2Wait", "2", ParamKind::Num(0, 3600)),
    p("DefaultTime2Retain", "20", ParamKind::Num(0, 3600)),
    p("OFMarkInt", "Reject", ParamKind::Marker),
    p("IFMarkInt", "Reject", ParamKind::Marker),
    p("MaxConnections", "1", ParamKind::Num(1, 65535)),
    p("RDMAExtensions", "Yes", ParamKind::Bool),
    p("TargetRecvDataSegmentLength", "262144", ParamKind::Num(512, 16777215)),
    p(
        "InitiatorRecvDataSegmentLength",
        "262144",
        ParamKind::Num(512, 16777215),
    ),
    p("MaxOutstandingUnexpectedPDUs", "0", ParamKind::Num(0, 4294967295)),
    p("MaxXmitDataSegmentLength", "8192", ParamKind::Num(512, 16777215)),
    p("MaxQueueCmd", "128", ParamKind::Num(1, 2048)),
];

const fn p(name: &'static str, default: &'static str, kind: ParamKind) -> ParamDef {
    ParamDef { name, default, kind }
}

/// Checks an `--op update` of a target parameter; returns the name as tgt spells it and the
/// value to store.
fn check_param(name: &str, value: &str) -> Result<(&'static str, String), TgtError> {
    let def = TARGET_PARAMS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .ok_or(TgtError::InvalidRequest)?;
    let v = value.trim();
    let stored = match def.kind {
        ParamKind::Num(lo, hi) => match v.parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => n.to_string(),
            _ => return Err(TgtError::InvalidRequest),
        },
        ParamKind::Bool => match v.to_ascii_lowercase().as_str() {
            "yes" => "Yes".into(),
            "no" => "No".into(),
            _ => return Err(TgtError::InvalidRequest),
        },
        // A list of preferences; the first is what tgt shows (and offers first).
        ParamKind::Digest => {
            let mut out = Vec::new();
            for item in v.split(',') {
                match item.trim().to_ascii_lowercase().as_str() {
                    "none" => out.push("None"),
                    "crc32c" => out.push("CRC32C"),
                    _ => return Err(TgtError::InvalidRequest),
                }
            }
            out[0].to_string()
        }
        // tgtd takes a marker interval and then shows it as "Irrelevant" (markers are off).
        ParamKind::Marker => match v.parse::<u64>() {
            _ if v.eq_ignore_ascii_case("reject") => "Reject".into(),
            Ok(n) if (1..=65535).contains(&n) => "Irrelevant".into(),
            _ => return Err(TgtError::InvalidRequest),
        },
    };
    Ok((def.name, stored))
}

/// A CHAP account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user: String,
    pub password: String,
}

/// What a login to one target needs, copied out so the server does not hold the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginView {
    pub tid: u32,
    pub name: String,
    /// False while the target is offline: refuse the login (target unavailable).
    pub ready: bool,
    acl_addresses: Vec<String>,
    acl_names: Vec<String>,
    /// Accounts an initiator may authenticate as; empty means no CHAP required.
    pub incoming: Vec<Account>,
    /// The account the target answers mutual CHAP with.
    pub outgoing: Option<Account>,
    /// Every target parameter (tgt's names, updated values or defaults).
    pub params: Vec<(String, String)>,
}

impl LoginView {
    /// The ACL decision for (initiator name, address).
    pub fn allows(&self, initiator: &str, addr: IpAddr) -> bool {
        acl_allows(&self.acl_addresses, &self.acl_names, initiator, addr)
    }
}

/// What a discovery session needs: discovery CHAP accounts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoveryView {
    pub incoming: Vec<Account>,
    pub outgoing: Option<Account>,
}

/// One row of a target's LUN table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunView {
    pub lun: u64,
    /// True for LUN 0, tgt's controller LU (no medium).
    pub controller: bool,
    pub backing: Backing,
    pub size: u64,
    pub block_size: u32,
    pub scsi_id: String,
    pub scsi_sn: String,
    pub params: LuParams,
    pub bsoflags: String,
}

/// A connection or session an operator asked to drop (`--mode conn --op delete`); the server
/// drains these with [`TargetRegistry::take_drops`] and closes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRequest {
    pub tid: u32,
    pub sid: u64,
    /// None: every connection of the session.
    pub cid: Option<u64>,
}

/// The persistent part of the registry (what `iscsi.toml` holds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    /// Newest first, as tgt lists them.
    #[serde(default)]
    pub account: Vec<Account>,
    #[serde(default)]
    pub discovery_incoming: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_outgoing: Option<String>,
    /// Sorted by tid.
    #[serde(default)]
    pub target: Vec<Target>,
}

/// The registry.
pub struct TargetRegistry {
    state: RegistryState,
    probe: Arc<dyn BackingProbe>,
    portals: Vec<String>,
    next_sid: u64,
    drops: Vec<DropRequest>,
    dirty: bool,
}

impl std::fmt::Debug for TargetRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetRegistry").field("state", &self.state).finish()
    }
}

fn need<T: Clone>(v: &Option<T>, what: &str) -> Result<T, TgtError> {
    v.clone()
        .ok_or_else(|| TgtError::Usage(format!("'{what}' option is necessary")))
}

impl TargetRegistry {
    pub fn new(probe: Arc<dyn BackingProbe>) -> TargetRegistry {
        TargetRegistry {
            state: RegistryState::default(),
            probe,
            portals: Vec::new(),
            next_sid: 1,
            drops: Vec::new(),
            dirty: false,
        }
    }

    /// A registry holding `state` (from `iscsi.toml`); sizes are probed again.
    pub fn from_state(mut state: RegistryState, probe: Arc<dyn BackingProbe>) -> TargetRegistry {
        state.target.sort_by_key(|t| t.tid);
        for t in &mut state.target {
            t.luns.sort_by_key(|l| l.lun);
            if t.luns.first().map(|l| l.lun) != Some(0) {
                t.luns.insert(0, Target::new(t.tid, String::new()).luns.remove(0));
            }
            for l in &mut t.luns {
                let size = match &l.backing {
                    Backing::Null => Some(0),
                    Backing::Rdwr(p) => probe.path_size(Path::new(p)),
                    Backing::Hablock(r) => probe.resource_size(r),
                };
                if let Some(s) = size {
                    l.size = s;
                }
            }
        }
        TargetRegistry {
            state,
            ..TargetRegistry::new(probe)
        }
    }

    /// The lowest tid no target has (what tgt-admin picks).
    pub fn next_free_tid(&self) -> u32 {
        let mut tid = 1;
        while self.state.target.iter().any(|t| t.tid == tid) {
            tid += 1;
        }
        tid
    }

    /// The persistent state, for saving.
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// The portals `--mode portal --op show` lists ("ADDR:PORT").
    pub fn set_portals(&mut self, portals: Vec<String>) {
        self.portals = portals;
    }

    /// True once if the persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn targets(&self) -> &[Target] {
        &self.state.target
    }

    pub fn target(&self, tid: u32) -> Option<&Target> {
        self.state.target.iter().find(|t| t.tid == tid)
    }

    fn target_mut(&mut self, tid: u32) -> Result<&mut Target, TgtError> {
        self.state
            .target
            .iter_mut()
            .find(|t| t.tid == tid)
            .ok_or(TgtError::NoTarget)
    }

    fn account(&self, user: &str) -> Option<&Account> {
        self.state.account.iter().find(|a| a.user == user)
    }

    // ---- what the server needs ----

    /// Everything a login to `target_name` needs, or None if there is no such target.
    pub fn login_view(&self, target_name: &str) -> Option<LoginView> {
        let t = self.state.target.iter().find(|t| t.name == target_name)?;
        let acc = |u: &String| self.account(u).cloned();
        Some(LoginView {
            tid: t.tid,
            name: t.name.clone(),
            ready: t.state == TargetState::Ready,
            acl_addresses: t.acl_addresses.clone(),
            acl_names: t.acl_names.clone(),
            incoming: t.incoming.iter().filter_map(acc).collect(),
            outgoing: t.outgoing.as_ref().and_then(acc),
            params: TARGET_PARAMS
                .iter()
                .map(|p| (p.name.to_string(), t.param(p.name).unwrap_or_default()))
                .collect(),
        })
    }

    /// Discovery CHAP accounts (bound with `--mode account --op bind` without `--tid`).
    pub fn discovery_view(&self) -> DiscoveryView {
        let acc = |u: &String| self.account(u).cloned();
        DiscoveryView {
            incoming: self.state.discovery_incoming.iter().filter_map(acc).collect(),
            outgoing: self.state.discovery_outgoing.as_ref().and_then(acc),
        }
    }

    /// Names of the targets SendTargets shows this initiator: ready ones whose ACL admits it.
    pub fn discoverable(&self, initiator: &str, addr: IpAddr) -> Vec<String> {
        self.state
            .target
            .iter()
            .filter(|t| t.state == TargetState::Ready && t.allows(initiator, addr))
            .map(|t| t.name.clone())
            .collect()
    }

    /// The LUN table of target `tid`, LUN 0 first.
    pub fn lun_table(&self, tid: u32) -> Option<Vec<LunView>> {
        let t = self.target(tid)?;
        Some(
            t.luns
                .iter()
                .map(|l| LunView {
                    lun: l.lun,
                    controller: l.backing == Backing::Null,
                    backing: l.backing.clone(),
                    size: l.size,
                    block_size: l.block_size(),
                    scsi_id: l.scsi_id(tid),
                    scsi_sn: l.scsi_sn(tid),
                    params: l.params.clone(),
                    bsoflags: l.bsoflags.clone(),
                })
                .collect(),
        )
    }

    /// Registers a new session (I_T nexus) on `tid`; returns its sid, or None if the target
    /// is gone.
    pub fn session_open(&mut self, tid: u32, initiator: &str, alias: Option<&str>, isid: [u8; 6]) -> Option<u64> {
        let sid = self.next_sid;
        let t = self.target_mut(tid).ok()?;
        t.sessions.push(SessionInfo {
            sid,
            initiator: initiator.to_string(),
            alias: alias.map(str::to_string),
            isid,
            conns: Vec::new(),
        });
        self.next_sid += 1;
        Some(sid)
    }

    /// Registers connection `cid` from `addr` on session `sid`; false if unknown.
    pub fn conn_add(&mut self, tid: u32, sid: u64, cid: u64, addr: IpAddr) -> bool {
        let Ok(t) = self.target_mut(tid) else { return false };
        match t.sessions.iter_mut().find(|s| s.sid == sid) {
            Some(s) if !s.conns.iter().any(|c| c.cid == cid) => {
                s.conns.push(ConnInfo { cid, addr });
                true
            }
            _ => false,
        }
    }

    /// Forgets connection `cid`; the session goes with its last connection.
    pub fn conn_remove(&mut self, tid: u32, sid: u64, cid: u64) {
        if let Ok(t) = self.target_mut(tid) {
            if let Some(s) = t.sessions.iter_mut().find(|s| s.sid == sid) {
                s.conns.retain(|c| c.cid != cid);
            }
            t.sessions.retain(|s| s.sid != sid || !s.conns.is_empty());
        }
    }

    /// Forgets session `sid` and its connections.
    pub fn session_close(&mut self, tid: u32, sid: u64) {
        if let Ok(t) = self.target_mut(tid) {
            t.sessions.retain(|s| s.sid != sid);
        }
    }

    /// Connections and sessions an operator asked to drop since the last call.
    pub fn take_drops(&mut self) -> Vec<DropRequest> {
        std::mem::take(&mut self.drops)
    }

    // ---- tgtadm ----

    /// Carries out one tgtadm command and answers as tgtadm would.
    pub fn handle(&mut self, req: TgtRequest) -> TgtReply {
        match self.dispatch(&req) {
            Ok(out) => TgtReply::ok(out),
            Err(e) => TgtReply::err(e),
        }
    }

    fn dispatch(&mut self, r: &TgtRequest) -> Result<String, TgtError> {
        // tgtadm asks for the operation before the mode.
        if r.op.is_none() {
            return Err(TgtError::Usage("specify the operation type".into()));
        }
        let mode = r
            .mode
            .as_deref()
            .ok_or_else(|| TgtError::Usage("specify the mode".into()))?;
        // tgtadm's spellings, normalised ("connection" is what the iSCSITarget agent sends).
        let mode = match mode {
            "target" => "target",
            "logicalunit" | "lu" => "logicalunit",
            "account" => "account",
            "conn" | "connection" => "conn",
            "session" => "session",
            "sys" | "system" => "sys",
            "portal" => "portal",
            "lld" => "lld",
            other => return Err(TgtError::Unknown(format!("unknown mode: {other}"))),
        };
        let op =
            r.op.as_deref()
                .ok_or_else(|| TgtError::Usage("specify the operation type".into()))?;
        const OPS: &[&str] = &[
            "new", "delete", "show", "bind", "unbind", "update", "start", "stop", "stat",
        ];
        if !OPS.contains(&op) {
            return Err(TgtError::Unknown(format!("unknown operation: {op}")));
        }
        // tgtadm 1.0.85 takes iscsi when --lld is left out.
        if let Some(lld) = r.lld.as_deref() {
            if lld != "iscsi" {
                return Err(TgtError::Usage(format!("can't find the driver {lld}")));
            }
        }
        match mode {
            "target" => self.target_op(op, r),
            "logicalunit" => self.lu_op(op, r),
            "account" => self.account_op(op, r),
            "conn" | "session" => self.conn_op(mode, op, r),
            "sys" => match op {
                "show" => Ok(show::sys()),
                "update" => Err(TgtError::Unsupported),
                _ => Err(TgtError::InvalidRequest),
            },
            "portal" => match op {
                "show" => Ok(self.portals.iter().map(|p| format!("Portal: {p},1\n")).collect()),
                _ => Err(TgtError::Unsupported),
            },
            "lld" => match op {
                "start" | "stop" => Ok(String::new()),
                _ => Err(TgtError::InvalidRequest),
            },
            _ => Err(TgtError::InvalidRequest),
        }
    }

    fn target_op(&mut self, op: &str, r: &TgtRequest) -> Result<String, TgtError> {
        if op == "show" {
            return match r.tid {
                None => Ok(show::targets(&self.state.target)),
                Some(tid) => self.target(tid).map(show::target_params).ok_or(TgtError::NoTarget),
            };
        }
        let tid = need(&r.tid, "tid")?;
        match op {
            "new" => {
                let name = r
                    .targetname
                    .clone()
                    .ok_or_else(|| TgtError::Usage("creating new target requires a name, use --targetname".into()))?;
                if tid == 0 {
                    return Err(TgtError::Usage("'tid' cannot be 0".into()));
                }
                if self.state.target.iter().any(|t| t.tid == tid || t.name == name) {
                    return Err(TgtError::TargetExist);
                }
                if !valid_iscsi_name(&name) || self.state.target.len() >= MAX_TARGETS {
                    return Err(TgtError::InvalidRequest);
                }
                let pos = self.state.target.partition_point(|t| t.tid < tid);
                self.state.target.insert(pos, Target::new(tid, name));
            }
            "delete" => {
                let t = self.target(tid).ok_or(TgtError::NoTarget)?;
                let sids: Vec<u64> = t.sessions.iter().map(|s| s.sid).collect();
                if !sids.is_empty() && !r.force {
                    return Err(TgtError::TargetActive);
                }
                self.drops
                    .extend(sids.into_iter().map(|sid| DropRequest { tid, sid, cid: None }));
                self.state.target.retain(|t| t.tid != tid);
            }
            "bind" | "unbind" => {
                let t = self.target_mut(tid)?;
                let (list, rule) = match (&r.initiator_address, &r.initiator_name) {
                    (Some(a), _) => {
                        if !valid_acl_address(a) {
                            return Err(TgtError::InvalidRequest);
                        }
                        (&mut t.acl_addresses, a.clone())
                    }
                    (None, Some(n)) => (&mut t.acl_names, n.clone()),
                    (None, None) => {
                        return Err(TgtError::Usage(format!(
                            "{op} operation requires initiator-address, initiator-nameor bus"
                        )))
                    }
                };
                let at = list.iter().position(|x| x == &rule);
                match (op, at) {
                    ("bind", Some(_)) => return Err(TgtError::AclExist),
                    ("bind", None) if list.len() >= MAX_ACLS => return Err(TgtError::InvalidRequest),
                    ("bind", None) => list.push(rule),
                    (_, None) => return Err(TgtError::AclNoExist),
                    (_, Some(i)) => {
                        list.remove(i);
                    }
                }
            }
            "update" => {
                let (name, value) = match (&r.name, &r.value) {
                    (Some(n), Some(v)) => (n.clone(), v.clone()),
                    _ => {
                        return Err(TgtError::Usage(
                            "update operation requires 'name' and 'value' options".into(),
                        ))
                    }
                };
                let t = self.target_mut(tid)?;
                if name == "state" {
                    t.state = match value.as_str() {
                        "ready" => TargetState::Ready,
                        "offline" => TargetState::Offline,
                        _ => return Err(TgtError::InvalidRequest),
                    };
                } else {
                    let (key, stored) = check_param(&name, &value)?;
                    let default = TARGET_PARAMS.iter().find(|p| p.name == key).map(|p| p.default);
                    if default == Some(stored.as_str()) {
                        t.params.remove(key);
                    } else {
                        t.params.insert(key.to_string(), stored);
                    }
                }
            }
            "stat" => return Err(TgtError::Unsupported),
            _ => return Err(TgtError::InvalidRequest),
        }
        self.dirty = true;
        Ok(String::new())
    }

    fn lu_op(&mut self, op: &str, r: &TgtRequest) -> Result<String, TgtError> {
        let tid = need(&r.tid, "tid")?;
        let lun = need(&r.lun, "lun")?;
        match op {
            "new" => {
                let store = need(&r.backing_store, "backing-store")?;
                if self.target(tid).is_none() {
                    return Err(TgtError::NoTarget);
                }
                if r.device_type.as_deref().is_some_and(|d| d != "disk") {
                    return Err(TgtError::InvalidRequest);
                }
                let mut shown_path = None;
                let (backing, size) = match r.bstype.as_deref().unwrap_or("rdwr") {
                    "rdwr" | "aio" => {
                        let size = self
                            .probe
                            .path_size(Path::new(&store))
                            .ok_or(TgtError::InvalidRequest)?;
                        (Backing::Rdwr(store), size)
                    }
                    "hablock" => {
                        let name = match self.probe.resource_size(&store) {
                            Some(_) => store.clone(),
                            None => self.probe.resource_by_disk(&store).ok_or(TgtError::InvalidRequest)?,
                        };
                        let size = self.probe.resource_size(&name).ok_or(TgtError::InvalidRequest)?;
                        if name != store {
                            shown_path = Some(store);
                        }
                        (Backing::Hablock(name), size)
                    }
                    _ => return Err(TgtError::InvalidRequest),
                };
                let bsoflags = match r.bsoflags.as_deref() {
                    None => String::new(),
                    Some(f) => {
                        if !f.split(':').all(|x| x == "sync" || x == "direct") {
                            return Err(TgtError::InvalidRequest);
                        }
                        f.to_string()
                    }
                };
                let mut params = LuParams::default();
                if let Some(p) = &r.params {
                    params.apply(p)?;
                }
                let t = self.target_mut(tid)?;
                if t.luns.iter().any(|l| l.lun == lun) {
                    return Err(TgtError::LunExist);
                }
                if lun >= 16384 || t.luns.len() >= MAX_LUNS {
                    return Err(TgtError::InvalidRequest);
                }
                let pos = t.luns.partition_point(|l| l.lun < lun);
                t.luns.insert(
                    pos,
                    Lun {
                        lun,
                        backing,
                        size,
                        bsoflags,
                        bsopts: r.bsopts.clone().unwrap_or_default(),
                        params,
                        shown_path,
                    },
                );
            }
            "delete" => {
                let t = self
                    .state
                    .target
                    .iter_mut()
                    .find(|t| t.tid == tid)
                    .ok_or(TgtError::NoLun)?;
                if lun == 0 {
                    return Err(TgtError::InvalidRequest);
                }
                let i = t.luns.iter().position(|l| l.lun == lun).ok_or(TgtError::NoLun)?;
                t.luns.remove(i);
            }
            "update" => {
                let t = self.target_mut(tid)?;
                let l = t.luns.iter_mut().find(|l| l.lun == lun).ok_or(TgtError::NoLun)?;
                let params = match (&r.params, &r.name, &r.value) {
                    (Some(p), _, _) => p.clone(),
                    (None, Some(n), Some(v)) => format!("{n}={v}"),
                    _ => return Err(TgtError::InvalidRequest),
                };
                l.params.apply(&params)?;
            }
            _ => return Err(TgtError::InvalidRequest),
        }
        self.dirty = true;
        Ok(String::new())
    }

    fn account_op(&mut self, op: &str, r: &TgtRequest) -> Result<String, TgtError> {
        if op == "show" {
            return Ok(show::accounts(&self.state.account));
        }
        if op == "new" && (r.user.is_none() || r.password.is_none()) {
            return Err(TgtError::Usage("'user' and 'password' options are required".into()));
        }
        let user = need(&r.user, "user")?;
        match op {
            "new" => {
                let password = need(&r.password, "password")?;
                if self.account(&user).is_some() {
                    return Err(TgtError::UserExist);
                }
                if self.state.account.len() >= MAX_ACCOUNTS {
                    return Err(TgtError::TooManyUser);
                }
                let printable =
                    |s: &str| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| (0x21..0x7f).contains(&b));
                if !printable(&user) || !printable(&password) {
                    return Err(TgtError::InvalidRequest);
                }
                self.state.account.insert(0, Account { user, password });
            }
            "delete" => {
                let i = self
                    .state
                    .account
                    .iter()
                    .position(|a| a.user == user)
                    .ok_or(TgtError::NoUser)?;
                self.state.account.remove(i);
                for t in &mut self.state.target {
                    t.incoming.retain(|u| u != &user);
                    if t.outgoing.as_deref() == Some(user.as_str()) {
                        t.outgoing = None;
                    }
                }
                self.state.discovery_incoming.retain(|u| u != &user);
                if self.state.discovery_outgoing.as_deref() == Some(user.as_str()) {
                    self.state.discovery_outgoing = None;
                }
            }
            "bind" | "unbind" => {
                let (incoming, outgoing) = match r.tid {
                    // Without --tid: the discovery session's accounts (tgt-admin's
                    // incomingdiscoveryuser / outgoingdiscoveryuser).
                    None => (&mut self.state.discovery_incoming, &mut self.state.discovery_outgoing),
                    Some(tid) => {
                        let t = self
                            .state
                            .target
                            .iter_mut()
                            .find(|t| t.tid == tid)
                            .ok_or(TgtError::NoTarget)?;
                        (&mut t.incoming, &mut t.outgoing)
                    }
                };
                if !self.state.account.iter().any(|a| a.user == user) {
                    return Err(TgtError::NoUser);
                }
                match (op, r.outgoing) {
                    ("bind", true) => {
                        if outgoing.is_some() {
                            return Err(TgtError::OutAccountExist);
                        }
                        *outgoing = Some(user);
                    }
                    ("bind", false) => {
                        if incoming.contains(&user) {
                            return Err(TgtError::UserExist);
                        }
                        incoming.push(user);
                    }
                    (_, true) => {
                        if outgoing.as_deref() != Some(user.as_str()) {
                            return Err(TgtError::NoUser);
                        }
                        *outgoing = None;
                    }
                    (_, false) => {
                        let i = incoming.iter().position(|u| u == &user).ok_or(TgtError::NoUser)?;
                        incoming.remove(i);
                    }
                }
            }
            _ => return Err(TgtError::InvalidRequest),
        }
        self.dirty = true;
        Ok(String::new())
    }

    fn conn_op(&mut self, mode: &str, op: &str, r: &TgtRequest) -> Result<String, TgtError> {
        let tid = need(&r.tid, "tid")?;
        let t = self.target(tid).ok_or(TgtError::NoTarget)?;
        match (mode, op) {
            ("conn", "show") => {
                let sessions: Vec<&SessionInfo> = t
                    .sessions
                    .iter()
                    .filter(|s| r.sid.is_none_or(|sid| s.sid == sid))
                    .collect();
                if r.sid.is_some() && sessions.is_empty() {
                    return Err(TgtError::NoSession);
                }
                Ok(show::conns(&sessions))
            }
            (_, "delete") => {
                let sid = need(&r.sid, "sid")?;
                let s = t.sessions.iter().find(|s| s.sid == sid).ok_or(TgtError::NoSession)?;
                let cid = if mode == "conn" {
                    let cid = need(&r.cid, "cid")?;
                    if !s.conns.iter().any(|c| c.cid == cid) {
                        return Err(TgtError::NoConnection);
                    }
                    Some(cid)
                } else {
                    None
                };
                self.drops.push(DropRequest { tid, sid, cid });
                Ok(String::new())
            }
            _ => Err(TgtError::InvalidRequest),
        }
    }
}

#[cfg(test)]
mod tests;
