//! iSCSI text keys (RFC 7143 sections 6.1-6.2) and the operational negotiation of section 13.
//!
//! Two layers:
//! - the text codec: `key=value` pairs separated by NUL, possibly spread over several PDUs
//!   (the C bit), with the RFC's length limits ([`parse_text`], [`encode_text`],
//!   [`TextAccumulator`], [`split_text`]);
//! - [`Negotiation`]: the target's side of the operational keys of one login. It answers each
//!   offer of the initiator, offers the keys the target must declare itself, and produces the
//!   [`SessionParams`] the session runs with.
//!
//! The login-only keys (InitiatorName, TargetName, SessionType, AuthMethod, CHAP_*) are read by
//! [`crate::iscsi::login`]; everything else goes through [`Negotiation::answer`].

use std::collections::HashSet;
use std::fmt;

use crate::iscsi::types::SessionParams;

/// Longest key name (RFC 7143 section 6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value, unless the key allows more.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of the keys that carry large binary values (CHAP challenges and responses).
pub const MAX_LONG_VALUE_LEN: usize = 8192;
/// Most text one login or text exchange may accumulate over continued PDUs (a bound on memory).
pub const MAX_TEXT_TOTAL: usize = 64 * 1024;

/// The answers RFC 7143 section 6.2 reserves.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Why text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// A pair without '='.
    NoEquals,
    /// An empty key name.
    EmptyKey,
    KeyTooLong(usize),
    ValueTooLong {
        key: String,
        len: usize,
    },
    /// Key names and values are UTF-8 (RFC 7143 section 6.1).
    NotUtf8,
    /// The same key twice in one exchange.
    DuplicateKey(String),
    /// More text than [`MAX_TEXT_TOTAL`] over continued PDUs.
    TooLong,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::NoEquals => write!(f, "text pair without '='"),
            TextError::EmptyKey => write!(f, "empty key name"),
            TextError::KeyTooLong(n) => write!(f, "key name of {n} bytes (at most {MAX_KEY_LEN})"),
            TextError::ValueTooLong { key, len } => write!(f, "value of {key} is {len} bytes long"),
            TextError::NotUtf8 => write!(f, "text is not UTF-8"),
            TextError::DuplicateKey(k) => write!(f, "key {k} sent twice"),
            TextError::TooLong => write!(f, "text longer than {MAX_TEXT_TOTAL} bytes"),
        }
    }
}

impl std::error::Error for TextError {}

/// Keys whose values may be longer than 255 bytes.
fn value_limit(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" | "CHAP_N" => MAX_LONG_VALUE_LEN,
        _ => MAX_VALUE_LEN,
    }
}

/// Reads a complete text (all continued PDUs joined) into its pairs, in order.
/// Empty items (padding, a doubled NUL) are skipped; a key sent twice is an error.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.len() > MAX_TEXT_TOTAL {
        return Err(TextError::TooLong);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let eq = item.iter().position(|&b| b == b'=').ok_or(TextError::NoEquals)?;
        let key = std::str::from_utf8(&item[..eq]).map_err(|_| TextError::NotUtf8)?;
        let value = std::str::from_utf8(&item[eq + 1..]).map_err(|_| TextError::NotUtf8)?;
        if key.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong(key.len()));
        }
        if value.len() > value_limit(key) {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
                len: value.len(),
            });
        }
        if !seen.insert(key.to_string()) {
            return Err(TextError::DuplicateKey(key.to_string()));
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Writes pairs as `key=value\0...`.
pub fn encode_text<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Splits text into data segments of at most `max` bytes (at least 1). Pairs may straddle PDUs
/// (RFC 7143 section 6.1); every chunk but the last is sent with the C bit. Empty text gives one
/// empty chunk.
pub fn split_text(data: &[u8], max: usize) -> Vec<Vec<u8>> {
    let max = max.max(1);
    if data.is_empty() {
        return vec![Vec::new()];
    }
    data.chunks(max).map(|c| c.to_vec()).collect()
}

/// Joins the data of continued PDUs (C bit set) until the last one.
#[derive(Debug, Default)]
pub struct TextAccumulator {
    buf: Vec<u8>,
}

impl TextAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one PDU's data. Returns the whole text when `cont` is false, `None` while more
    /// is to come.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_TOTAL {
            self.buf.clear();
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        if cont {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// True while a continued text is being collected.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Login stage of a key (RFC 7143 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPhase {
    /// Only in the security negotiation stage (AuthMethod, CHAP_*).
    Security,
    /// Operational; allowed in both login stages (we accept operational keys during security
    /// negotiation too, as tgt and LIO do).
    Operational,
    /// Login or full feature phase (SendTargets, TargetAddress answers).
    Any,
}

/// Who may send a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Initiator,
    Target,
    Both,
}

/// How a key's result is computed (RFC 7143 section 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A list of values; the responder picks the first it supports.
    List,
    /// Boolean, result = OR of both sides.
    BoolOr,
    /// Boolean, result = AND of both sides.
    BoolAnd,
    /// Number, result = the smaller offer.
    NumMin { lo: u64, hi: u64 },
    /// Number, result = the larger offer.
    NumMax { lo: u64, hi: u64 },
    /// Each side declares its own value (no answer expected).
    DeclarativeNum { lo: u64, hi: u64 },
    /// A declared string (names, aliases, addresses).
    DeclarativeText,
    /// Enumerated, negotiated by the login machine (SessionType, AuthMethod).
    Enum,
    /// Security keys (CHAP_*).
    Security,
}

/// One RFC 7143 key: its type, range, default and where it may appear.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub kind: KeyKind,
    pub phase: KeyPhase,
    pub sender: Sender,
    /// Negotiated once for the session on its leading connection.
    pub leading_only: bool,
    /// Meaningless in discovery sessions (answered "Irrelevant").
    pub irrelevant_for_discovery: bool,
    /// The RFC default, as text ("" where there is none).
    pub default: &'static str,
}

const fn key(
    name: &'static str,
    kind: KeyKind,
    phase: KeyPhase,
    sender: Sender,
    leading_only: bool,
    irrelevant_for_discovery: bool,
    default: &'static str,
) -> KeyDef {
    KeyDef {
        name,
        kind,
        phase,
        sender,
        leading_only,
        irrelevant_for_discovery,
        default,
    }
}

use KeyKind::*;
use KeyPhase::{Any, Operational, Security as Sec};

const U16: u64 = 65535;
const U24: u64 = (1 << 24) - 1;

/// Every RFC 7143 key the target knows (section 13, plus the CHAP keys of section 12.1.3).
/// Columns: name, kind, phase, sender, leading-only, irrelevant in discovery, default.
#[rustfmt::skip]
pub const KEYS: &[KeyDef] = &[
    key("HeaderDigest",             List,                          Operational, Sender::Both,      false, false, "None"),
    key("DataDigest",               List,                          Operational, Sender::Both,      false, false, "None"),
    key("MaxConnections",           NumMin { lo: 1, hi: U16 },     Operational, Sender::Both,      true,  true,  "1"),
    key("SendTargets",              DeclarativeText,               Any,         Sender::Initiator, false, false, ""),
    key("TargetName",               DeclarativeText,               Operational, Sender::Both,      true,  false, ""),
    key("InitiatorName",            DeclarativeText,               Operational, Sender::Initiator, true,  false, ""),
    key("TargetAlias",              DeclarativeText,               Operational, Sender::Target,    true,  false, ""),
    key("InitiatorAlias",           DeclarativeText,               Operational, Sender::Initiator, true,  false, ""),
    key("TargetAddress",            DeclarativeText,               Any,         Sender::Target,    false, false, ""),
    key("TargetPortalGroupTag",     DeclarativeNum { lo: 0, hi: U16 }, Operational, Sender::Target, true, false, ""),
    key("InitialR2T",               BoolOr,                        Operational, Sender::Both,      true,  true,  "Yes"),
    key("ImmediateData",            BoolAnd,                       Operational, Sender::Both,      true,  true,  "Yes"),
    key("MaxRecvDataSegmentLength", DeclarativeNum { lo: 512, hi: U24 }, Operational, Sender::Both, false, false, "8192"),
    key("MaxBurstLength",           NumMin { lo: 512, hi: U24 },   Operational, Sender::Both,      true,  true,  "262144"),
    key("FirstBurstLength",         NumMin { lo: 512, hi: U24 },   Operational, Sender::Both,      true,  true,  "65536"),
    key("DefaultTime2Wait",         NumMax { lo: 0, hi: 3600 },    Operational, Sender::Both,      true,  false, "2"),
    key("DefaultTime2Retain",       NumMin { lo: 0, hi: 3600 },    Operational, Sender::Both,      true,  false, "20"),
    key("MaxOutstandingR2T",        NumMin { lo: 1, hi: U16 },     Operational, Sender::Both,      true,  true,  "1"),
    key("DataPDUInOrder",           BoolOr,                        Operational, Sender::Both,      true,  true,  "Yes"),
    key("DataSequenceInOrder",      BoolOr,                        Operational, Sender::Both,      true,  true,  "Yes"),
    key("ErrorRecoveryLevel",       NumMin { lo: 0, hi: 2 },       Operational, Sender::Both,      true,  false, "0"),
    // RFC 3720 markers, obsoleted by RFC 7143 but still sent by open-iscsi: we never use them.
    key("IFMarker",                 BoolAnd,                       Operational, Sender::Both,      false, false, "No"),
    key("OFMarker",                 BoolAnd,                       Operational, Sender::Both,      false, false, "No"),
    key("IFMarkInt",                DeclarativeText,               Operational, Sender::Both,      false, false, ""),
    key("OFMarkInt",                DeclarativeText,               Operational, Sender::Both,      false, false, ""),
    // RFC 7144: which iSCSI revision; we implement RFC 7143 (level 1).
    key("iSCSIProtocolLevel",       NumMin { lo: 0, hi: 31 },      Operational, Sender::Both,      true,  false, "1"),
    key("SessionType",              Enum,                          Operational, Sender::Initiator, true,  false, "Normal"),
    key("AuthMethod",               Enum,                          Sec,         Sender::Both,      false, false, ""),
    key("CHAP_A",                   Security,                      Sec,         Sender::Both,      false, false, ""),
    key("CHAP_I",                   Security,                      Sec,         Sender::Both,      false, false, ""),
    key("CHAP_C",                   Security,                      Sec,         Sender::Both,      false, false, ""),
    key("CHAP_N",                   Security,                      Sec,         Sender::Both,      false, false, ""),
    key("CHAP_R",                   Security,                      Sec,         Sender::Both,      false, false, ""),
];

/// The definition of a key, if RFC 7143 defines it and we implement it. Everything else
/// (X-/X# private keys, iSER's RDMAExtensions, TaskReporting, iFMarker...) is answered
/// [`NOT_UNDERSTOOD`].
pub fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Which digest the target accepts for headers or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestPolicy {
    /// Only None (digests off).
    NoneOnly,
    /// Only CRC32C (digests required).
    Crc32cOnly,
    /// Whatever the initiator prefers first.
    Either,
}

impl DigestPolicy {
    fn allows(self, crc: bool) -> bool {
        match self {
            DigestPolicy::NoneOnly => !crc,
            DigestPolicy::Crc32cOnly => crc,
            DigestPolicy::Either => true,
        }
    }
}

/// What the target offers and accepts for the operational keys (per target; `hbtgtadm --op
/// update --name K --value V` changes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParamConfig {
    /// What we declare as our MaxRecvDataSegmentLength. 256 KiB: one PDU carries a whole
    /// 256 KiB I/O (Linux's default max_sectors_kb is 512/1280 KiB, many writes are 128-256
    /// KiB), so a large write needs one Data-Out instead of 32 at the RFC default of 8 KiB,
    /// while the per-connection receive buffer stays small. LIO also uses large values; tgt
    /// declares 8192 and is slower for it.
    pub max_recv_data_segment_length: u32,
    /// Our MaxBurstLength offer: 1 MiB, the common I/O size limit of initiators.
    pub max_burst_length: u32,
    /// Our FirstBurstLength offer (the RFC default, 64 KiB).
    pub first_burst_length: u32,
    /// Our MaxOutstandingR2T (1, the RFC default; the session layer serialises R2Ts).
    pub max_outstanding_r2t: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    /// MaxConnections (1: no multiple connections per session, as tgt).
    pub max_connections: u32,
}

impl Default for TargetParamConfig {
    fn default() -> Self {
        TargetParamConfig {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 65536,
            max_outstanding_r2t: 1,
            immediate_data: true,
            initial_r2t: true,
            header_digest: DigestPolicy::Either,
            data_digest: DigestPolicy::Either,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
        }
    }
}

impl TargetParamConfig {
    /// Sets one parameter by its RFC 7143 key name, as `hbtgtadm --op update --mode target
    /// --name K --value V` (tgtadm's names) does. Values are checked against the key's range.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let def = key_def(key).ok_or_else(|| format!("unknown parameter {key}"))?;
        let number = || -> Result<u32, String> {
            let (lo, hi) = match def.kind {
                NumMin { lo, hi } | NumMax { lo, hi } | DeclarativeNum { lo, hi } => (lo, hi),
                _ => (0, u32::MAX as u64),
            };
            parse_number(value)
                .filter(|n| (lo..=hi).contains(n))
                .map(|n| n as u32)
                .ok_or_else(|| format!("{key}: {value:?} is not a number in {lo}..={hi}"))
        };
        let boolean = || parse_bool(value).ok_or_else(|| format!("{key}: {value:?} is neither Yes nor No"));
        let digest = || match value {
            "None" => Ok(DigestPolicy::NoneOnly),
            "CRC32C" => Ok(DigestPolicy::Crc32cOnly),
            "None,CRC32C" | "CRC32C,None" => Ok(DigestPolicy::Either),
            _ => Err(format!("{key}: {value:?} is not None, CRC32C or a list of both")),
        };
        match key {
            "MaxRecvDataSegmentLength" => self.max_recv_data_segment_length = number()?,
            "MaxBurstLength" => self.max_burst_length = number()?,
            "FirstBurstLength" => self.first_burst_length = number()?,
            "MaxOutstandingR2T" => self.max_outstanding_r2t = number()?,
            "DefaultTime2Wait" => self.default_time2wait = number()?,
            "DefaultTime2Retain" => self.default_time2retain = number()?,
            "MaxConnections" => self.max_connections = number()?,
            "ImmediateData" => self.immediate_data = boolean()?,
            "InitialR2T" => self.initial_r2t = boolean()?,
            "HeaderDigest" => self.header_digest = digest()?,
            "DataDigest" => self.data_digest = digest()?,
            "ErrorRecoveryLevel" => {
                if number()? != 0 {
                    return Err("ErrorRecoveryLevel: only 0 is supported".into());
                }
            }
            _ => return Err(format!("{key} is not a per-target parameter")),
        }
        Ok(())
    }
}

/// A negotiation the login must end with an error (RFC 7143 section 6.2 leaves the choice
/// between "Reject" and closing; these close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// A key offered twice in one login.
    Renegotiated(String),
    /// A key only the target may send.
    NotFromInitiator(String),
    /// The initiator's answer to a target offer breaks the key's rule.
    BadAnswer { key: String, value: String },
    /// The initiator offers none of the values the target insists on (digests it requires).
    Unacceptable { key: String, value: String },
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::Renegotiated(k) => write!(f, "key {k} negotiated twice"),
            NegotiationError::NotFromInitiator(k) => write!(f, "key {k} may only be sent by the target"),
            NegotiationError::BadAnswer { key, value } => write!(f, "invalid answer {key}={value}"),
            NegotiationError::Unacceptable { key, value } => {
                write!(f, "{key}={value} offers nothing the target accepts")
            }
        }
    }
}

impl std::error::Error for NegotiationError {}

/// Parses an RFC 7143 numerical value: decimal, or hex with a 0x prefix.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// The target side of the operational negotiation of one login.
#[derive(Debug, Clone)]
pub struct Negotiation {
    cfg: TargetParamConfig,
    params: SessionParams,
    /// Keys the initiator has offered or answered in this login.
    seen: HashSet<String>,
    /// Keys the target has offered or declared.
    offered: HashSet<String>,
    /// Target offers still awaiting the initiator's answer.
    awaiting: HashSet<String>,
}

impl Negotiation {
    pub fn new(cfg: TargetParamConfig) -> Self {
        let params = SessionParams {
            max_recv_data_segment_length: cfg.max_recv_data_segment_length,
            ..SessionParams::default()
        };
        Negotiation {
            cfg,
            params,
            seen: HashSet::new(),
            offered: HashSet::new(),
            awaiting: HashSet::new(),
        }
    }

    /// The parameters negotiated so far.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// True while a target offer has no answer yet; the target must not leave the stage.
    pub fn awaiting_answers(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Answers the initiator's operational keys (login-only keys already removed). Returns the
    /// pairs for the response, in the order received.
    pub fn answer(
        &mut self,
        pairs: &[(String, String)],
        discovery: bool,
    ) -> Result<Vec<(String, String)>, NegotiationError> {
        // MaxBurstLength first, whatever the order on the wire, so a FirstBurstLength answer
        // already respects FirstBurstLength <= MaxBurstLength (RFC 7143 section 13.14).
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| pairs[i].0 != "MaxBurstLength");
        let mut answers: Vec<Option<String>> = vec![None; pairs.len()];
        for i in order {
            let (k, v) = &pairs[i];
            answers[i] = self.answer_one(k, v, discovery)?;
        }
        Ok(pairs
            .iter()
            .zip(answers)
            .filter_map(|((k, _), a)| a.map(|a| (k.clone(), a)))
            .collect())
    }

    fn answer_one(&mut self, k: &str, v: &str, discovery: bool) -> Result<Option<String>, NegotiationError> {
        let Some(def) = key_def(k) else {
            return Ok(Some(NOT_UNDERSTOOD.to_string()));
        };
        if matches!(def.kind, KeyKind::Enum | KeyKind::Security) || def.phase == KeyPhase::Any {
            // The login machine handles these; reaching here means they came where they
            // make no sense (e.g. SendTargets during login).
            return Ok(Some(IRRELEVANT.to_string()));
        }
        if def.sender == Sender::Target {
            return Err(NegotiationError::NotFromInitiator(k.to_string()));
        }
        if !self.seen.insert(k.to_string()) {
            return Err(NegotiationError::Renegotiated(k.to_string()));
        }
        if self.awaiting.remove(k) {
            // The initiator answers a target offer: check and apply, send nothing back.
            return match self.apply(k, v, discovery) {
                Some(_) => Ok(None),
                None => Err(NegotiationError::BadAnswer {
                    key: k.to_string(),
                    value: v.to_string(),
                }),
            };
        }
        if discovery && def.irrelevant_for_discovery {
            return Ok(Some(IRRELEVANT.to_string()));
        }
        if v == NOT_UNDERSTOOD || v == IRRELEVANT || v == REJECT {
            // Not an offer; nothing to negotiate.
            return Ok(None);
        }
        match self.apply(k, v, discovery) {
            Some(answer) => Ok(Some(answer)),
            None => {
                let required = match k {
                    "HeaderDigest" => self.cfg.header_digest == DigestPolicy::Crc32cOnly,
                    "DataDigest" => self.cfg.data_digest == DigestPolicy::Crc32cOnly,
                    _ => false,
                };
                if required {
                    // Rejecting would leave the RFC default (None) in force: refuse the login.
                    return Err(NegotiationError::Unacceptable {
                        key: k.to_string(),
                        value: v.to_string(),
                    });
                }
                Ok(Some(REJECT.to_string()))
            }
        }
    }

    /// Computes and records the result of an offer; returns the answer, or None when the value
    /// is invalid (out of range, not a number, not Yes/No, no acceptable list item).
    fn apply(&mut self, k: &str, v: &str, _discovery: bool) -> Option<String> {
        let def = key_def(k)?;
        let cfg = &self.cfg;
        let p = &mut self.params;
        let num = |lo: u64, hi: u64| parse_number(v).filter(|n| (lo..=hi).contains(n));
        match (k, def.kind) {
            ("HeaderDigest" | "DataDigest", _) => {
                let policy = if k == "HeaderDigest" {
                    cfg.header_digest
                } else {
                    cfg.data_digest
                };
                let pick = v.split(',').find_map(|item| match item {
                    "None" if policy.allows(false) => Some(false),
                    "CRC32C" if policy.allows(true) => Some(true),
                    _ => None,
                })?;
                if k == "HeaderDigest" {
                    p.header_digest = pick;
                } else {
                    p.data_digest = pick;
                }
                Some(if pick { "CRC32C" } else { "None" }.to_string())
            }
            ("MaxRecvDataSegmentLength", DeclarativeNum { lo, hi }) => {
                let n = num(lo, hi)?;
                p.max_xmit_data_segment_length = n as u32;
                // Declarative: we answer with our own declaration.
                self.offered.insert(k.to_string());
                Some(cfg.max_recv_data_segment_length.to_string())
            }
            ("InitialR2T", _) => {
                let b = parse_bool(v)? || cfg.initial_r2t;
                p.initial_r2t = b;
                Some(yes_no(b).to_string())
            }
            ("ImmediateData", _) => {
                let b = parse_bool(v)? && cfg.immediate_data;
                p.immediate_data = b;
                Some(yes_no(b).to_string())
            }
            ("DataPDUInOrder", _) => {
                // OR with our Yes: we need in-order data PDUs (ERL 0 keeps no reassembly state).
                parse_bool(v)?;
                p.data_pdu_in_order = true;
                Some("Yes".to_string())
            }
            ("DataSequenceInOrder", _) => {
                parse_bool(v)?;
                p.data_sequence_in_order = true;
                Some("Yes".to_string())
            }
            ("MaxBurstLength", NumMin { lo, hi }) => {
                let n = (num(lo, hi)? as u32).min(cfg.max_burst_length);
                p.max_burst_length = n;
                p.first_burst_length = p.first_burst_length.min(n);
                Some(n.to_string())
            }
            ("FirstBurstLength", NumMin { lo, hi }) => {
                let n = (num(lo, hi)? as u32)
                    .min(cfg.first_burst_length)
                    .min(p.max_burst_length);
                p.first_burst_length = n;
                Some(n.to_string())
            }
            ("MaxConnections", NumMin { lo, hi }) => {
                let n = (num(lo, hi)? as u32).min(cfg.max_connections);
                p.max_connections = n;
                Some(n.to_string())
            }
            ("MaxOutstandingR2T", NumMin { lo, hi }) => {
                let n = (num(lo, hi)? as u32).min(cfg.max_outstanding_r2t);
                p.max_outstanding_r2t = n;
                Some(n.to_string())
            }
            ("DefaultTime2Wait", NumMax { lo, hi }) => {
                let n = (num(lo, hi)? as u32).max(cfg.default_time2wait);
                p.default_time2wait = n;
                Some(n.to_string())
            }
            ("DefaultTime2Retain", NumMin { lo, hi }) => {
                let n = (num(lo, hi)? as u32).min(cfg.default_time2retain);
                p.default_time2retain = n;
                Some(n.to_string())
            }
            ("ErrorRecoveryLevel", NumMin { lo, hi }) => {
                // We implement level 0 only.
                let _ = num(lo, hi)?;
                p.error_recovery_level = 0;
                Some("0".to_string())
            }
            ("IFMarker" | "OFMarker", _) => {
                // AND with our No: markers stay off.
                parse_bool(v)?;
                Some("No".to_string())
            }
            ("IFMarkInt" | "OFMarkInt", _) => Some(IRRELEVANT.to_string()),
            ("iSCSIProtocolLevel", NumMin { lo, hi }) => Some(num(lo, hi)?.min(1).to_string()),
            ("TargetName" | "InitiatorName" | "InitiatorAlias", _) => Some(IRRELEVANT.to_string()),
            _ => None,
        }
    }

    /// The keys the target must send itself at this point (not yet offered): our
    /// MaxRecvDataSegmentLength declaration when it differs from the default, and offers for
    /// keys whose result the initiator cannot know (our limits below the RFC defaults, digests
    /// we require). Call when building a response in the operational stage or one that
    /// moves to full feature phase.
    pub fn target_offers(&mut self, discovery: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let cfg = self.cfg.clone();
        let d = SessionParams::default();
        if cfg.max_recv_data_segment_length != d.max_recv_data_segment_length {
            self.offer(
                &mut out,
                "MaxRecvDataSegmentLength",
                cfg.max_recv_data_segment_length.to_string(),
                false,
            );
        }
        if cfg.header_digest == DigestPolicy::Crc32cOnly {
            self.offer(&mut out, "HeaderDigest", "CRC32C".into(), true);
        }
        if cfg.data_digest == DigestPolicy::Crc32cOnly {
            self.offer(&mut out, "DataDigest", "CRC32C".into(), true);
        }
        if !discovery {
            if !cfg.immediate_data {
                self.offer(&mut out, "ImmediateData", "No".into(), true);
            }
            if cfg.max_burst_length < d.max_burst_length {
                self.offer(&mut out, "MaxBurstLength", cfg.max_burst_length.to_string(), true);
            }
            if cfg.first_burst_length < d.first_burst_length {
                self.offer(&mut out, "FirstBurstLength", cfg.first_burst_length.to_string(), true);
            }
            if cfg.max_outstanding_r2t < d.max_outstanding_r2t {
                self.offer(&mut out, "MaxOutstandingR2T", cfg.max_outstanding_r2t.to_string(), true);
            }
        }
        out
    }

    fn offer(&mut self, out: &mut Vec<(String, String)>, k: &str, v: String, needs_answer: bool) {
        if self.seen.contains(k) || !self.offered.insert(k.to_string()) {
            return;
        }
        if needs_answer {
            // Apply our own value now: if the initiator answers with something else the
            // answer is checked in `answer_one`.
            let _ = self.apply(k, &v, false);
            self.awaiting.insert(k.to_string());
        }
        out.push((k.to_string(), v));
    }
}

#[cfg(test)]
mod tests;
