//! The cluster information base (CIB): one versioned document holding the configuration (nodes,
//! cluster options, resources, constraints) and the status (per-node facts), replicated from the
//! DC to every member.
//!
//! A pure core like the rest of `cluster`: no I/O. The DC turns a request into [`CibOp`]s,
//! [`Cib::apply`]s them atomically (all or nothing, validated as a whole) and ships either a
//! [`CibUpdate`] (base version, ops, resulting version and digest) or the whole document inside a
//! [`wire::CibMsg::Document`] (see [`replica`]). A member that cannot apply an update
//! (different base, digest mismatch) asks for the document. Partitions that rejoin keep the
//! document [`merge::decide`] picks.
//!
//! Versions are Pacemaker's `(admin_epoch, epoch, num_updates)`: a configuration change bumps
//! `epoch` and resets `num_updates`; a status change bumps `num_updates`; `admin_epoch` moves
//! only by the administrator's explicit [`CibOp::BumpAdminEpoch`]. A change that leaves the
//! document as it was bumps nothing.
//!
//! - [`score`]: `Score`, integers clamped to ±INFINITY with Pacemaker's arithmetic.
//! - [`config`]: the configuration section and its types.
//! - [`status`]: the status section (node state, transient attributes, operation history).
//! - [`validate`]: referential integrity and value checks.
//! - [`ops`]: `CibOp`, the changes.
//! - [`merge`]: the rejoin rule (table tests in `testdata/merge.txt`).
//! - [`crmsh`]: the configuration in crm shell syntax (`hbcrm configure show`).
//! - [`wire`]: the replication messages and their fragmenting into heartbeat payloads.
//! - [`replica`]: the replication core (DC authority, forwarding, sync on DC change, catch-up).
//! - [`persist`]: the on-disk copy (`cib.json`, checksummed, written atomically).

pub mod config;
pub mod crmsh;
pub mod merge;
pub mod ops;
pub mod persist;
pub mod replica;
pub mod score;
pub mod status;
pub mod validate;
pub mod wire;

pub use super::heartbeat::CibVersion;
pub use config::Configuration;
pub use merge::{decide as decide_merge, MergeDecision, MergeReason, MergeSide, Winner};
pub use ops::CibOp;
pub use score::Score;
pub use status::Status;
pub use validate::ValidationError;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The JSON format of the document, updates and payloads. Any change to the shape (even an
/// added field: old nodes reject unknown fields rather than drop them) bumps it.
pub const FORMAT_VERSION: u32 = 1;

/// Why a CIB change or a received CIB was refused. The local document is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CibError {
    /// The result would not be a valid CIB; every problem is listed.
    Invalid(Vec<ValidationError>),
    /// The operation cannot be applied (`op` is its index in the batch).
    Rejected { op: usize, reason: String },
    /// An update was made against another version than ours: ask the DC for the document.
    VersionMismatch { ours: CibVersion, base: CibVersion },
    /// An update applied cleanly but produced a different document than the DC's.
    DigestMismatch { version: CibVersion },
    /// The JSON could not be read.
    Decode(String),
    /// The JSON is of a format this build does not understand.
    FormatVersion { found: u64 },
}

impl fmt::Display for CibError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CibError::Invalid(errs) => {
                f.write_str("invalid CIB: ")?;
                for (i, e) in errs.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            CibError::Rejected { op, reason } => write!(f, "change {} refused: {reason}", op + 1),
            CibError::VersionMismatch { ours, base } => write!(
                f,
                "CIB update made against version {base}, this node has {ours}; the whole document is needed"
            ),
            CibError::DigestMismatch { version } => write!(
                f,
                "CIB update to {version} produced a different document than the DC's; the whole document is needed"
            ),
            CibError::Decode(e) => write!(f, "cannot read CIB JSON: {e}"),
            CibError::FormatVersion { found } => write!(
                f,
                "CIB format version {found} is not understood by this hablock (it reads {FORMAT_VERSION}); upgrade this node"
            ),
        }
    }
}

impl std::error::Error for CibError {}

/// The document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cib {
    /// Always [`FORMAT_VERSION`] in memory; checked when read.
    pub format_version: u32,
    pub admin_epoch: u32,
    pub epoch: u64,
    pub num_updates: u64,
    pub configuration: Configuration,
    pub status: Status,
}

impl Default for Cib {
    fn default() -> Self {
        Cib::new()
    }
}

/// What [`Cib::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: CibVersion,
    /// False when the ops left the document as it was (nothing to ship).
    pub changed: bool,
}

impl Cib {
    /// An empty CIB, version 0.0.0.
    pub fn new() -> Cib {
        Cib {
            format_version: FORMAT_VERSION,
            admin_epoch: 0,
            epoch: 0,
            num_updates: 0,
            configuration: Configuration::default(),
            status: Status::default(),
        }
    }

    /// A CIB holding `configuration` at version 0.1.0, after checking it.
    pub fn with_configuration(configuration: Configuration) -> Result<Cib, CibError> {
        let cib = Cib {
            epoch: 1,
            configuration,
            ..Cib::new()
        };
        cib.validate()?;
        Ok(cib)
    }

    pub fn version(&self) -> CibVersion {
        CibVersion {
            admin_epoch: self.admin_epoch,
            epoch: self.epoch,
            num_updates: self.num_updates,
        }
    }

    pub fn validate(&self) -> Result<(), CibError> {
        validate::validate(&self.configuration, &self.status).map_err(CibError::Invalid)
    }

    /// Applies `ops` atomically: all of them and a valid result, or an error and no change.
    /// Bumps the version once for the batch (see the module documentation).
    pub fn apply(&mut self, ops: &[CibOp]) -> Result<Applied, CibError> {
        let mut cfg = self.configuration.clone();
        let mut st = self.status.clone();
        for (i, op) in ops.iter().enumerate() {
            ops::apply(&mut cfg, &mut st, op).map_err(|reason| CibError::Rejected { op: i, reason })?;
        }
        validate::validate(&cfg, &st).map_err(CibError::Invalid)?;
        let admin = ops.iter().any(|o| matches!(o, CibOp::BumpAdminEpoch));
        let config_changed = cfg != self.configuration;
        let status_changed = st != self.status;
        if admin {
            self.admin_epoch = self.admin_epoch.checked_add(1).expect("admin_epoch overflow");
        }
        if admin || config_changed {
            self.epoch += 1;
            self.num_updates = 0;
        } else if status_changed {
            self.num_updates += 1;
        }
        self.configuration = cfg;
        self.status = st;
        Ok(Applied {
            version: self.version(),
            changed: admin || config_changed || status_changed,
        })
    }

    /// Applies `ops` and returns the update to ship to the members (`None` if nothing changed).
    pub fn apply_and_package(&mut self, ops: Vec<CibOp>) -> Result<Option<CibUpdate>, CibError> {
        let base = self.version();
        let applied = self.apply(&ops)?;
        Ok(applied.changed.then(|| CibUpdate {
            format_version: FORMAT_VERSION,
            base,
            result: applied.version,
            digest: self.digest(),
            ops,
        }))
    }

    /// Applies an update from the DC. It must have been made against our version and must
    /// produce the DC's document (same version and digest); otherwise nothing changes and the
    /// caller asks for the whole document.
    pub fn apply_update(&mut self, u: &CibUpdate) -> Result<(), CibError> {
        if u.base != self.version() {
            return Err(CibError::VersionMismatch {
                ours: self.version(),
                base: u.base,
            });
        }
        let mut next = self.clone();
        next.apply(&u.ops)?;
        if next.version() != u.result || next.digest() != u.digest {
            return Err(CibError::DigestMismatch { version: u.result });
        }
        *self = next;
        Ok(())
    }

    /// SHA-256 (hex) of the configuration and status as JSON (maps are ordered, so it is the
    /// same on every node for the same content). The version is not part of it.
    pub fn digest(&self) -> String {
        let body = serde_json::to_vec(&(&self.configuration, &self.status)).expect("CIB serialises");
        Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("CIB serialises")
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("CIB serialises")
    }

    /// Reads a document: format version first, then the shape, then validation.
    pub fn from_json(s: &str) -> Result<Cib, CibError> {
        let value: serde_json::Value = serde_json::from_str(s).map_err(|e| CibError::Decode(e.to_string()))?;
        check_format(&value)?;
        let cib: Cib = serde_json::from_value(value).map_err(|e| CibError::Decode(e.to_string()))?;
        cib.validate()?;
        Ok(cib)
    }

    /// Rejoin: replaces this document with `remote` if [`merge::decide`] says so.
    /// `remote` must be valid; the decision is returned either way.
    pub fn merge_from(
        &mut self,
        local_quorate: bool,
        remote: Cib,
        remote_quorate: bool,
    ) -> Result<MergeDecision, CibError> {
        remote.validate()?;
        let d = merge::decide(
            &MergeSide {
                version: self.version(),
                quorate: local_quorate,
                digest: Some(self.digest()),
            },
            &MergeSide {
                version: remote.version(),
                quorate: remote_quorate,
                digest: Some(remote.digest()),
            },
        );
        if d.take_remote() {
            *self = remote;
        }
        Ok(d)
    }
}

fn check_format(value: &serde_json::Value) -> Result<(), CibError> {
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(CibError::FormatVersion { found }),
        None => Err(CibError::Decode("no format_version field".to_string())),
    }
}

/// A change as the DC ships it: apply `ops` to `base` to get `result` with `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CibUpdate {
    pub format_version: u32,
    pub base: CibVersion,
    pub result: CibVersion,
    pub digest: String,
    pub ops: Vec<CibOp>,
}

/// A whole document or an update as one JSON value (the replication protocol itself uses
/// [`wire::CibMsg`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CibPayload {
    Document(Box<Cib>),
    Update(CibUpdate),
}

impl CibPayload {
    pub fn encode(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Wire<'a> {
            Document(&'a Cib),
            Update(&'a CibUpdate),
        }
        let w = match self {
            CibPayload::Document(c) => Wire::Document(c),
            CibPayload::Update(u) => Wire::Update(u),
        };
        serde_json::to_vec(&w).expect("CIB payload serialises")
    }

    /// Reads a payload; a document is validated, an update is checked when applied.
    pub fn decode(bytes: &[u8]) -> Result<CibPayload, CibError> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| CibError::Decode(e.to_string()))?;
        let obj = value.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            CibError::Decode("a CIB payload is an object with one key, document or update".to_string())
        })?;
        let (key, inner) = obj.iter().next().expect("one key");
        check_format(inner)?;
        let decode = |e: serde_json::Error| CibError::Decode(e.to_string());
        match key.as_str() {
            "document" => {
                let cib: Cib = serde_json::from_value(inner.clone()).map_err(decode)?;
                cib.validate()?;
                Ok(CibPayload::Document(Box::new(cib)))
            }
            "update" => Ok(CibPayload::Update(
                serde_json::from_value(inner.clone()).map_err(decode)?,
            )),
            other => Err(CibError::Decode(format!(
                "unknown CIB payload {other:?}: expected document or update"
            ))),
        }
    }
}

#[cfg(test)]
#[path = "cib_test.rs"]
mod tests;
