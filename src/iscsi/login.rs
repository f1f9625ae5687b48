//! The login phase of one iSCSI connection (RFC 7143 sections 6.3 and 11.12-11.13), as a pure
//! state machine: the driver decodes a Login Request PDU into a [`LoginRequest`], calls
//! [`LoginMachine::handle`], and sends what the returned [`LoginAction`] says. After
//! [`LoginAction::Complete`] the connection is in full feature phase; after
//! [`LoginAction::Fail`] the driver sends the response and closes the connection.
//!
//! Stages: SecurityNegotiation (0) → LoginOperationalNegotiation (1) → FullFeaturePhase (3).
//! Security is skipped (first CSG = 1, or AuthMethod=None) only when the target has no CHAP
//! accounts; otherwise CHAP must succeed before the target transits.
//!
//! Also here: [`send_targets_answer`], the text of a SendTargets reply (RFC 7143 appendix C).

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use rand::RngCore;

use crate::iscsi::chap::{ChapAccount, ChapStep, ChapTarget};
use crate::iscsi::params::{encode_text, parse_text, split_text, Negotiation, TargetParamConfig, TextAccumulator};
use crate::iscsi::types::SessionParams;

/// Login stage numbers (CSG/NSG).
pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// The largest data segment we send during login: the initiator's MaxRecvDataSegmentLength is
/// not negotiated yet, so its default applies (RFC 7143 section 13.12).
pub const LOGIN_MAX_SEGMENT: usize = 8192;

/// Login PDUs one login may take before the target gives up (bounds a looping initiator).
pub const MAX_LOGIN_PDUS: u32 = 64;

/// Login status codes (class << 8 | detail, RFC 7143 section 11.13.5).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Redirection (class 1): the answer carries TargetAddress; the initiator logs in there.
    pub const MOVED_TEMPORARILY: u16 = 0x0101;
    pub const MOVED_PERMANENTLY: u16 = 0x0102;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTH_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const TARGET_REMOVED: u16 = 0x0204;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const TOO_MANY_CONNECTIONS: u16 = 0x0206;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const CANT_INCLUDE_IN_SESSION: u16 = 0x0208;
    pub const SESSION_TYPE_NOT_SUPPORTED: u16 = 0x0209;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    /// A PDU other than Login Request during login: the driver answers with this and closes.
    pub const INVALID_DURING_LOGIN: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
    pub const SERVICE_UNAVAILABLE: u16 = 0x0301;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

/// A Login Request, as the driver decoded it from its PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmdsn: u32,
    pub exp_statsn: u32,
    pub data: Vec<u8>,
}

/// A Login Response for the driver to encode. StatSN, ExpCmdSN and MaxCmdSN are the driver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
}

impl LoginResponse {
    /// Status as one number (class << 8 | detail).
    pub fn status(&self) -> u16 {
        ((self.status_class as u16) << 8) | self.status_detail as u16
    }
}

/// What kind of session the login opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    Discovery,
    Normal { target_name: String },
}

/// The result of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    pub session_type: SessionKind,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: [u8; 6],
    /// The TSIH the target assigned (from [`LoginContext::allocate_tsih`]).
    pub tsih: u16,
    pub params: SessionParams,
    pub cid: u16,
    /// Target portal group tag of the portal (for the [`crate::iscsi::types::Nexus`]).
    pub tpgt: u16,
    /// The CHAP user the initiator proved itself as, if CHAP was used.
    pub chap_user: Option<String>,
}

/// Why a login failed (the status is also in the response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailure {
    pub status: u16,
    /// For the log; never sent to the initiator (it could reveal which part of CHAP failed).
    pub reason: String,
}

impl fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "login failed with status 0x{:04x}: {}", self.status, self.reason)
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAction {
    /// Send this response and wait for the next Login Request.
    Respond(LoginResponse),
    /// Send this response; the connection is now in full feature phase.
    Complete(LoginResponse, Box<LoginOutcome>),
    /// Send this response, then close the connection.
    Fail(LoginResponse, LoginFailure),
    /// Send this redirection (status class 1, TargetAddress in the data), then close.
    Redirect(LoginResponse),
}

/// Where a target can be reached when it cannot be served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Served here.
    Ready,
    /// Not served right now (e.g. its resource is secondary during a failover): status 0x0301,
    /// the initiator retries later.
    Unavailable,
    /// Served elsewhere: `TargetAddress` value (`ip:port,tpgt`, IPv6 in brackets) and whether
    /// the move is permanent (0x0102) or temporary (0x0101).
    Moved { address: String, permanent: bool },
}

/// What the login needs to know about the target side (implemented by the target registry).
pub trait LoginContext {
    /// Does a target with this IQN exist?
    fn target_exists(&self, name: &str) -> bool;
    /// May this initiator (by name and address) log in to the target (ACL)?
    fn initiator_allowed(&self, target: &str, initiator_name: &str, addr: IpAddr) -> bool;
    /// CHAP accounts initiators prove themselves with. Empty: no authentication required.
    fn incoming_accounts(&self, target: &str) -> Vec<ChapAccount>;
    /// The account the target proves itself with in mutual CHAP.
    fn outgoing_account(&self, target: &str) -> Option<ChapAccount>;
    /// Discovery CHAP accounts. Empty: discovery sessions need no authentication.
    fn discovery_incoming_accounts(&self) -> Vec<ChapAccount>;
    fn discovery_outgoing_account(&self) -> Option<ChapAccount>;
    /// Target portal group tag of the portal the connection arrived on.
    fn portal_group_tag(&self) -> u16;
    /// The target's alias (sent as TargetAlias), if it has one.
    fn target_alias(&self, _target: &str) -> Option<String> {
        None
    }
    /// Operational limits for a target (None: discovery sessions).
    fn target_params(&self, _target: Option<&str>) -> TargetParamConfig {
        TargetParamConfig::default()
    }
    /// Whether the target is served here now (checked after the ACL, before authentication).
    fn target_state(&self, _target: &str) -> TargetState {
        TargetState::Ready
    }
    /// Is there a session with this initiator, ISID and TSIH (a login with TSIH != 0 adds a
    /// connection to it)?
    fn session_exists(&self, initiator_name: &str, isid: [u8; 6], tsih: u16) -> bool;
    /// A fresh non-zero TSIH for a new session; None when no more sessions can be opened.
    fn allocate_tsih(&mut self) -> Option<u16>;
}

#[derive(Debug)]
enum Auth {
    /// No AuthMethod agreed yet.
    NotChosen,
    /// AuthMethod=None agreed.
    NotRequired,
    Chap(ChapTarget),
    /// CHAP succeeded.
    ChapDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No complete text yet.
    Start,
    Stage(u8),
    /// Completed or failed; nothing more is accepted.
    Over,
}

/// A response being sent in several PDUs (C bit), because it exceeds [`LOGIN_MAX_SEGMENT`].
struct PendingOut {
    chunks: VecDeque<Vec<u8>>,
    csg: u8,
    transit: bool,
    nsg: u8,
    tsih: u16,
    outcome: Option<Box<LoginOutcome>>,
}

/// Everything learned from the first complete Login Request.
struct Identity {
    initiator_name: String,
    initiator_alias: Option<String>,
    session: SessionKind,
}

/// The login of one connection.
pub struct LoginMachine {
    peer: IpAddr,
    rng: Box<dyn RngCore + Send>,
    phase: Phase,
    /// CSG of the first request (it may be continued over several PDUs).
    start_csg: Option<u8>,
    /// ISID, TSIH, CID of the first request; all later ones must carry the same.
    first: Option<([u8; 6], u16, u16)>,
    acc: TextAccumulator,
    pending: Option<PendingOut>,
    identity: Option<Identity>,
    auth_required: bool,
    auth: Auth,
    /// The accounts for CHAP, from the first request until AuthMethod=CHAP is agreed.
    pending_chap: Option<(Vec<ChapAccount>, Option<ChapAccount>)>,
    chap_user: Option<String>,
    neg: Negotiation,
    tpgt: u16,
    first_response_sent: bool,
    pdus: u32,
}

impl fmt::Debug for LoginMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginMachine")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

fn fail_status(status: u16, reason: impl Into<String>) -> LoginFailure {
    LoginFailure {
        status,
        reason: reason.into(),
    }
}

impl LoginMachine {
    /// `peer`: the initiator's address (for ACLs). `rng`: the source of CHAP identifiers and
    /// challenges; the daemon passes a CSPRNG (`rand::rngs::StdRng::from_entropy()` or
    /// `OsRng`), tests a seeded one.
    pub fn new(peer: IpAddr, rng: Box<dyn RngCore + Send>) -> Self {
        LoginMachine {
            peer,
            rng,
            phase: Phase::Start,
            start_csg: None,
            first: None,
            acc: TextAccumulator::new(),
            pending: None,
            identity: None,
            auth_required: false,
            auth: Auth::NotChosen,
            pending_chap: None,
            chap_user: None,
            neg: Negotiation::new(TargetParamConfig::default()),
            tpgt: 0,
            first_response_sent: false,
            pdus: 0,
        }
    }

    /// True once the login completed or failed.
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Over
    }

    /// Handles one Login Request.
    pub fn handle(&mut self, ctx: &mut dyn LoginContext, req: &LoginRequest) -> LoginAction {
        match self.step(ctx, req) {
            Ok(action) => action,
            Err(failure) => {
                self.phase = Phase::Over;
                let resp = LoginResponse {
                    transit: false,
                    cont: false,
                    csg: req.csg & 3,
                    nsg: 0,
                    version_max: 0,
                    version_active: 0,
                    isid: req.isid,
                    tsih: 0,
                    itt: req.itt,
                    status_class: (failure.status >> 8) as u8,
                    status_detail: failure.status as u8,
                    data: Vec::new(),
                };
                LoginAction::Fail(resp, failure)
            }
        }
    }

    fn step(&mut self, ctx: &mut dyn LoginContext, req: &LoginRequest) -> Result<LoginAction, LoginFailure> {
        use status::*;
        if self.phase == Phase::Over {
            return Err(fail_status(INITIATOR_ERROR, "login request after the login ended"));
        }
        self.pdus += 1;
        if self.pdus > MAX_LOGIN_PDUS {
            return Err(fail_status(INITIATOR_ERROR, "too many login PDUs"));
        }
        if req.version_min > 0 || req.version_max < req.version_min {
            return Err(fail_status(
                UNSUPPORTED_VERSION,
                format!("versions {}..{} offered, we speak 0", req.version_min, req.version_max),
            ));
        }
        match self.first {
            None => self.first = Some((req.isid, req.tsih, req.cid)),
            Some(f) if f != (req.isid, req.tsih, req.cid) => {
                return Err(fail_status(INITIATOR_ERROR, "ISID, TSIH or CID changed during login"));
            }
            Some(_) => {}
        }
        if req.transit && req.cont {
            return Err(fail_status(INITIATOR_ERROR, "T and C bits both set"));
        }
        // Which stage the request must be in.
        let stage = match (self.phase, &self.pending) {
            (_, Some(p)) => p.csg,
            (Phase::Start, _) => {
                if req.csg != STAGE_SECURITY && req.csg != STAGE_OPERATIONAL {
                    return Err(fail_status(
                        INITIATOR_ERROR,
                        format!("login starts in stage {}", req.csg),
                    ));
                }
                // A first request continued over several PDUs keeps its stage.
                *self.start_csg.get_or_insert(req.csg)
            }
            (Phase::Stage(s), _) => s,
            (Phase::Over, _) => unreachable!("checked above"),
        };
        if req.csg != stage {
            return Err(fail_status(
                INITIATOR_ERROR,
                format!("CSG {} while in stage {stage}", req.csg),
            ));
        }
        if req.transit && !(req.nsg == STAGE_FULL_FEATURE || (stage == STAGE_SECURITY && req.nsg == STAGE_OPERATIONAL))
        {
            return Err(fail_status(
                INITIATOR_ERROR,
                format!("cannot go from stage {stage} to {}", req.nsg),
            ));
        }

        // The initiator collects a long response of ours with empty requests.
        if let Some(p) = &mut self.pending {
            if !req.data.is_empty() || req.cont {
                return Err(fail_status(
                    INITIATOR_ERROR,
                    "text sent while the target's response continues",
                ));
            }
            let chunk = p.chunks.pop_front().unwrap_or_default();
            let more = !p.chunks.is_empty();
            return Ok(self.emit_chunk(req, chunk, more));
        }

        let text = match self.acc.push(&req.data, req.cont) {
            Err(e) => return Err(fail_status(INITIATOR_ERROR, e.to_string())),
            Ok(None) => {
                // Acknowledge a continued request with an empty response.
                return Ok(LoginAction::Respond(self.response(
                    req,
                    stage,
                    false,
                    false,
                    0,
                    0,
                    Vec::new(),
                )));
            }
            Ok(Some(t)) => t,
        };
        let pairs = parse_text(&text).map_err(|e| fail_status(INITIATOR_ERROR, e.to_string()))?;
        let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());

        let mut out: Vec<(String, String)> = Vec::new();
        if self.phase == Phase::Start {
            self.start(ctx, req, &get)?;
            self.phase = Phase::Stage(stage);
            if let Some(SessionKind::Normal { target_name }) = self.identity.as_ref().map(|i| &i.session) {
                match ctx.target_state(target_name) {
                    TargetState::Ready => {}
                    TargetState::Unavailable => {
                        return Err(fail_status(
                            SERVICE_UNAVAILABLE,
                            format!("{target_name} is not served here now"),
                        ));
                    }
                    TargetState::Moved { address, permanent } => {
                        self.phase = Phase::Over;
                        let code = if permanent {
                            MOVED_PERMANENTLY
                        } else {
                            MOVED_TEMPORARILY
                        };
                        let data = encode_text(&[("TargetAddress", address.as_str())]);
                        let mut resp = self.response(req, stage, false, false, 0, 0, data);
                        resp.status_class = (code >> 8) as u8;
                        resp.status_detail = code as u8;
                        return Ok(LoginAction::Redirect(resp));
                    }
                }
            }
        } else {
            // Names and the session type belong to the first request; a repeat must agree.
            let id = self.identity.as_ref().expect("identity is set after the first request");
            let same = |k: &str, v: &str| get(k).is_none_or(|x| x == v);
            let target = match &id.session {
                SessionKind::Normal { target_name } => target_name.as_str(),
                SessionKind::Discovery => "",
            };
            let session_type = if target.is_empty() { "Discovery" } else { "Normal" };
            let target_ok = target.is_empty() || same("TargetName", target);
            if !same("InitiatorName", &id.initiator_name) || !target_ok || !same("SessionType", session_type) {
                return Err(fail_status(
                    INITIATOR_ERROR,
                    "InitiatorName, TargetName or SessionType changed",
                ));
            }
        }
        let discovery = matches!(self.identity.as_ref().map(|i| &i.session), Some(SessionKind::Discovery));

        if !self.first_response_sent {
            if let Some(SessionKind::Normal { target_name }) = self.identity.as_ref().map(|i| &i.session) {
                out.push(("TargetPortalGroupTag".into(), self.tpgt.to_string()));
                if let Some(alias) = ctx.target_alias(target_name) {
                    out.push(("TargetAlias".into(), alias));
                }
            }
        }

        const LOGIN_KEYS: [&str; 4] = ["InitiatorName", "InitiatorAlias", "TargetName", "SessionType"];
        const SECURITY_KEYS: [&str; 6] = ["AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"];
        let is_security_key = |k: &str| SECURITY_KEYS.contains(&k);
        let operational: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| !LOGIN_KEYS.contains(&k.as_str()) && !is_security_key(k))
            .cloned()
            .collect();

        let mut transit = false;
        let mut nsg = 0;
        if stage == STAGE_SECURITY {
            self.security(&get, &mut out)?;
            out.extend(
                self.neg
                    .answer(&operational, discovery)
                    .map_err(|e| fail_status(INITIATOR_ERROR, e.to_string()))?,
            );
            if req.transit {
                let authenticated = match self.auth {
                    Auth::NotRequired | Auth::ChapDone => true,
                    Auth::NotChosen => !self.auth_required,
                    Auth::Chap(_) => false,
                };
                if authenticated {
                    transit = true;
                    nsg = req.nsg;
                } else if matches!(self.auth, Auth::NotChosen) {
                    return Err(fail_status(
                        AUTH_FAILURE,
                        "initiator leaves security negotiation without CHAP",
                    ));
                }
            }
            if transit && nsg == STAGE_FULL_FEATURE {
                out.extend(self.neg.target_offers(discovery));
                if self.neg.awaiting_answers() {
                    // Our offers need answers: go to operational negotiation instead.
                    nsg = STAGE_OPERATIONAL;
                }
            }
        } else {
            if let Some((k, _)) = pairs.iter().find(|(k, _)| is_security_key(k)) {
                return Err(fail_status(
                    INITIATOR_ERROR,
                    format!("{k} outside security negotiation"),
                ));
            }
            out.extend(
                self.neg
                    .answer(&operational, discovery)
                    .map_err(|e| fail_status(INITIATOR_ERROR, e.to_string()))?,
            );
            out.extend(self.neg.target_offers(discovery));
            if req.transit && !self.neg.awaiting_answers() {
                transit = true;
                nsg = STAGE_FULL_FEATURE;
            }
        }
        self.first_response_sent = true;

        let mut tsih = 0;
        let mut outcome = None;
        if transit && nsg == STAGE_FULL_FEATURE {
            tsih = ctx
                .allocate_tsih()
                .ok_or_else(|| fail_status(OUT_OF_RESOURCES, "no TSIH left"))?;
            let id = self.identity.as_ref().expect("identity is set after the first request");
            let (isid, _, cid) = self.first.expect("first request recorded");
            outcome = Some(Box::new(LoginOutcome {
                session_type: id.session.clone(),
                initiator_name: id.initiator_name.clone(),
                initiator_alias: id.initiator_alias.clone(),
                isid,
                tsih,
                params: self.neg.params().clone(),
                cid,
                tpgt: self.tpgt,
                chap_user: self.chap_user.clone(),
            }));
        }
        if transit {
            self.phase = Phase::Stage(nsg);
        }

        let mut chunks: VecDeque<Vec<u8>> = split_text(&encode_text(&out), LOGIN_MAX_SEGMENT).into();
        let first = chunks.pop_front().unwrap_or_default();
        let more = !chunks.is_empty();
        self.pending = Some(PendingOut {
            chunks,
            csg: stage,
            transit,
            nsg,
            tsih,
            outcome,
        });
        Ok(self.emit_chunk(req, first, more))
    }

    /// Sends one chunk of the pending response; the last one carries the T bit, the new TSIH and
    /// completes the login if it moves to full feature phase.
    fn emit_chunk(&mut self, req: &LoginRequest, data: Vec<u8>, more: bool) -> LoginAction {
        let p = self.pending.as_ref().expect("a response is pending");
        if more {
            return LoginAction::Respond(self.response(req, p.csg, false, true, 0, 0, data));
        }
        let p = self.pending.take().expect("a response is pending");
        let resp = self.response(req, p.csg, p.transit, false, p.nsg, p.tsih, data);
        match p.outcome {
            Some(outcome) => {
                self.phase = Phase::Over;
                LoginAction::Complete(resp, outcome)
            }
            None => LoginAction::Respond(resp),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn response(
        &self,
        req: &LoginRequest,
        csg: u8,
        transit: bool,
        cont: bool,
        nsg: u8,
        tsih: u16,
        data: Vec<u8>,
    ) -> LoginResponse {
        LoginResponse {
            transit,
            cont,
            csg,
            nsg: if transit { nsg } else { 0 },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt: req.itt,
            status_class: 0,
            status_detail: 0,
            data,
        }
    }

    /// Checks the first complete request: names, session type, target, ACL, TSIH.
    fn start(
        &mut self,
        ctx: &mut dyn LoginContext,
        req: &LoginRequest,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), LoginFailure> {
        use status::*;
        let initiator_name = get("InitiatorName")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| fail_status(MISSING_PARAMETER, "no InitiatorName"))?;
        let session = match get("SessionType").as_deref() {
            None | Some("Normal") => {
                let target_name = get("TargetName")
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| fail_status(MISSING_PARAMETER, "no TargetName in a normal session"))?;
                if !ctx.target_exists(&target_name) {
                    return Err(fail_status(NOT_FOUND, format!("no target {target_name}")));
                }
                if !ctx.initiator_allowed(&target_name, &initiator_name, self.peer) {
                    return Err(fail_status(
                        AUTHORIZATION_FAILURE,
                        format!("{initiator_name} at {} may not access {target_name}", self.peer),
                    ));
                }
                SessionKind::Normal { target_name }
            }
            Some("Discovery") => SessionKind::Discovery,
            Some(other) => return Err(fail_status(SESSION_TYPE_NOT_SUPPORTED, format!("SessionType={other}"))),
        };
        if req.tsih != 0 {
            // Adding a connection to a session: we allow one connection per session (ERL 0,
            // MaxConnections=1, as tgt).
            if ctx.session_exists(&initiator_name, req.isid, req.tsih) {
                return Err(fail_status(
                    TOO_MANY_CONNECTIONS,
                    "the session already has its connection",
                ));
            }
            return Err(fail_status(
                SESSION_DOES_NOT_EXIST,
                format!("no session with TSIH {}", req.tsih),
            ));
        }
        let (incoming, outgoing, target) = match &session {
            SessionKind::Normal { target_name } => (
                ctx.incoming_accounts(target_name),
                ctx.outgoing_account(target_name),
                Some(target_name.as_str()),
            ),
            SessionKind::Discovery => (
                ctx.discovery_incoming_accounts(),
                ctx.discovery_outgoing_account(),
                None,
            ),
        };
        self.auth_required = !incoming.is_empty();
        if req.csg == STAGE_OPERATIONAL && self.auth_required {
            return Err(fail_status(
                AUTH_FAILURE,
                "security negotiation skipped but CHAP is required",
            ));
        }
        self.neg = Negotiation::new(ctx.target_params(target));
        self.tpgt = ctx.portal_group_tag();
        // Kept for the CHAP exchange.
        self.pending_chap = Some((incoming, outgoing));
        self.identity = Some(Identity {
            initiator_name,
            initiator_alias: get("InitiatorAlias"),
            session,
        });
        Ok(())
    }

    /// AuthMethod and CHAP keys of a security-stage request.
    fn security(
        &mut self,
        get: &dyn Fn(&str) -> Option<String>,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), LoginFailure> {
        use status::*;
        if let Some(methods) = get("AuthMethod") {
            if !matches!(self.auth, Auth::NotChosen) {
                return Err(fail_status(INITIATOR_ERROR, "AuthMethod negotiated twice"));
            }
            let offered: Vec<&str> = methods.split(',').collect();
            if self.auth_required {
                if !offered.contains(&"CHAP") {
                    return Err(fail_status(
                        AUTH_FAILURE,
                        format!("CHAP required, initiator offers {methods}"),
                    ));
                }
                let (incoming, outgoing) = self.pending_chap.take().unwrap_or_default();
                self.auth = Auth::Chap(ChapTarget::new(incoming, outgoing));
                out.push(("AuthMethod".into(), "CHAP".into()));
            } else if offered.contains(&"None") {
                self.auth = Auth::NotRequired;
                out.push(("AuthMethod".into(), "None".into()));
            } else {
                return Err(fail_status(
                    AUTH_FAILURE,
                    format!("target has no CHAP accounts, initiator offers {methods}"),
                ));
            }
        }
        let has_chap_keys = ["CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"]
            .iter()
            .any(|k| get(k).is_some());
        match &mut self.auth {
            Auth::Chap(chap) if has_chap_keys => match chap.step(get, &mut *self.rng) {
                Ok(ChapStep::Continue(keys)) => out.extend(keys),
                Ok(ChapStep::Authenticated { user, reply }) => {
                    out.extend(reply);
                    self.chap_user = Some(user);
                    self.auth = Auth::ChapDone;
                }
                Err(e) => return Err(fail_status(AUTH_FAILURE, e.to_string())),
            },
            Auth::Chap(_) => {}
            _ if has_chap_keys => {
                return Err(fail_status(INITIATOR_ERROR, "CHAP keys without AuthMethod=CHAP"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A portal a target is reachable at, with its portal group tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalInfo {
    pub addr: SocketAddr,
    pub tpgt: u16,
}

/// A target the asking initiator may see (the caller applies ACLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisibleTarget {
    pub name: String,
    pub portals: Vec<PortalInfo>,
}

/// What a SendTargets key asks for (RFC 7143 appendix C).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTargetsQuery {
    /// `SendTargets=All` (discovery sessions).
    All,
    /// `SendTargets=<iqn>`: that target only.
    Target(String),
    /// `SendTargets=` (empty): the target of this normal session.
    Session,
}

impl SendTargetsQuery {
    pub fn parse(value: &str) -> Self {
        match value {
            "All" => SendTargetsQuery::All,
            "" => SendTargetsQuery::Session,
            name => SendTargetsQuery::Target(name.to_string()),
        }
    }
}

/// The text of a SendTargets answer: for each matching target `TargetName=<iqn>` followed by a
/// `TargetAddress=<ip>:<port>,<tpgt>` per portal (IPv6 in brackets). `session_target` is the
/// target of the asking normal session (None in a discovery session, where `All` is allowed).
/// Split the result with [`split_text`] at the initiator's MaxRecvDataSegmentLength.
pub fn send_targets_answer(
    targets: &[VisibleTarget],
    query: &SendTargetsQuery,
    session_target: Option<&str>,
) -> Vec<u8> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for t in targets {
        let wanted = match query {
            // RFC 7143: "All" is for discovery sessions; in a normal session only its target.
            SendTargetsQuery::All => session_target.is_none_or(|s| s == t.name),
            SendTargetsQuery::Target(n) => *n == t.name,
            SendTargetsQuery::Session => session_target == Some(t.name.as_str()),
        };
        if !wanted {
            continue;
        }
        pairs.push(("TargetName".into(), t.name.clone()));
        for p in &t.portals {
            let addr = match p.addr {
                SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            };
            pairs.push(("TargetAddress".into(), format!("{addr},{}", p.tpgt)));
        }
    }
    encode_text(&pairs)
}

#[cfg(test)]
mod tests;
