//! The full feature phase of one iSCSI connection (RFC 7143), as a pure state machine.
//!
//! The driver feeds it decoded PDUs ([`Session::on_pdu`]), deframing errors
//! ([`Session::on_frame_error`]), SCSI completions ([`Session::on_scsi_done`]), answers to text
//! queries ([`Session::on_text_answer`]) and clock ticks ([`Session::on_tick`]); each call returns
//! the [`Action`]s to carry out, in order. The session never touches a socket, a disk or a clock.
//!
//! Error recovery level 0 only: protocol violations get a Reject PDU or close the connection,
//! never a retransmission.
//!
//! Numbering follows RFC 7143 section 4.2.2: non-immediate commands are delivered in CmdSN order
//! (later ones are held until the gap fills; the hold is bounded by the command window), commands
//! outside `[ExpCmdSN, MaxCmdSN]` are silently ignored, and `MaxCmdSN` never moves backwards:
//! it is `ExpCmdSN + window - 1 - (ordered SCSI commands not yet answered)`, so at most `window`
//! commands are ever in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kernel_shim::IoBuf;

use super::pdu::{self, reject_reason, tmf, Pdu, PduError, RESERVED_TAG};
use super::types::{status, Nexus, ScsiOutcome, ScsiTask, SessionParams, TaskAttr};

/// Identifies one SCSI command between the session and the driver. Unique for the life of the
/// session (unlike the initiator's ITT, which may be reused after an abort).
pub type TaskId = u64;

/// RFC 1982 serial number arithmetic on 32-bit sequence numbers: `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// `lo <= x <= hi` in serial arithmetic; an empty window (`hi == lo - 1`) holds nothing.
pub fn sn_in_window(x: u32, lo: u32, hi: u32) -> bool {
    let span = hi.wrapping_add(1).wrapping_sub(lo);
    span < 0x8000_0000 && x.wrapping_sub(lo) < span
}

/// Session settings that login and the configuration provide.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// ExpCmdSN at the start of the full feature phase (the CmdSN the last login request carried).
    pub exp_cmdsn: u32,
    /// The next StatSN to send (one past the final Login Response's StatSN).
    pub statsn: u32,
    /// Queue depth: MaxCmdSN - ExpCmdSN + 1 when nothing is in flight.
    pub cmd_window: u32,
    /// This connection's CID.
    pub cid: u16,
    /// Send a NOP-In ping after this long without hearing from the initiator (None: never).
    pub nop_interval: Option<Duration>,
    /// Close the connection if a ping is unanswered for this long.
    pub nop_timeout: Duration,
    /// Largest write (ExpectedDataTransferLength) buffered for one command; larger ones are
    /// drained and failed with CHECK CONDITION.
    pub max_task_data: u32,
    /// Immediate commands in flight at once; more get Reject reason 0x06.
    pub max_immediate: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            exp_cmdsn: 1,
            statsn: 1,
            cmd_window: 128,
            cid: 0,
            nop_interval: None,
            nop_timeout: Duration::from_secs(15),
            max_task_data: 32 << 20,
            max_immediate: 16,
        }
    }
}

/// Why the session wants its connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The initiator broke the protocol in a way ERL 0 cannot recover from.
    Protocol(String),
    /// A target-initiated NOP-In got no answer in time.
    NopTimeout,
    /// TARGET COLD RESET: the response went out, now every connection goes.
    ColdReset,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Encode and send this PDU.
    Send(Pdu),
    /// Send a Data-In whose payload is `data[offset..offset + len]` (see
    /// [`pdu::encode_header`] and [`pdu::data_trailer`] for a vectored write).
    SendDataIn {
        header: pdu::DataIn,
        data: Arc<IoBuf>,
        offset: usize,
        len: usize,
    },
    /// Run this SCSI command and call [`Session::on_scsi_done`] with the outcome.
    Execute { id: TaskId, task: ScsiTask },
    /// Drop these running commands: their outcome must not be reported (if it still is, the
    /// session ignores it).
    Abort { ids: Vec<TaskId> },
    /// CLEAR TASK SET on a LUN: other sessions' tasks on it go too.
    ClearTaskSet { lun: u64 },
    /// LOGICAL UNIT RESET.
    LunReset { lun: u64 },
    /// TARGET WARM RESET (and the reset part of a cold reset).
    TargetWarmReset,
    /// A Text request needs the target list: answer with [`Session::on_text_answer`] and
    /// the same `itt`. `value` is what followed `SendTargets=` ("All", a target name, or "").
    SendTargets { itt: u32, value: String },
    /// Close the connection (after sending what was queued before).
    Close(CloseReason),
    /// The Logout Response has been queued: send it, then close the connection
    /// (`close_session`: the whole session ends).
    LogoutComplete { close_session: bool },
}

/// Counters a `--op show`/stats view may print.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub commands: u64,
    pub data_in_bytes: u64,
    pub data_out_bytes: u64,
    pub rejects: u64,
}

#[derive(Debug)]
struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_datasn: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Fail {
    /// Data-Out digest error (RFC 7143 7.8, ERL 0: wait for all data, then CHECK CONDITION).
    Crc,
    /// The write is larger than we buffer.
    TooLarge,
}

#[derive(Debug)]
struct Task {
    itt: u32,
    cmdsn: u32,
    immediate: bool,
    /// Its CmdSN has been reached (always true for immediate commands).
    ordered: bool,
    executing: bool,
    lun: u64,
    cdb: Vec<u8>,
    attr: TaskAttr,
    read_len: u32,
    write_len: u32,
    buf: Option<IoBuf>,
    fail: Option<Fail>,
    /// Data-Out bytes in so far (every byte arrives once, in order within its sequence).
    received: u32,
    /// Unsolicited data phase is over (command F=1 or unsolicited Data-Out with F=1).
    unsolicited_done: bool,
    unsolicited_next_datasn: u32,
    unsolicited_end: u32,
    r2ts: Vec<R2tState>,
    next_r2t_offset: u32,
    r2tsn: u32,
}

impl Task {
    fn data_complete(&self) -> bool {
        self.unsolicited_done && self.received == self.write_len && self.r2ts.is_empty()
    }
}

/// A CmdSN-ordered PDU waiting for earlier CmdSNs.
#[derive(Debug)]
enum Held {
    Pdu(Box<Pdu>),
    Task(TaskId),
    /// The CmdSN counts as received but there is nothing to do (aborted before its turn).
    Consumed,
}

#[derive(Debug)]
struct PendingText {
    itt: u32,
    ttt: u32,
    rest: Vec<u8>,
}

/// The full feature phase of one connection.
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    nexus: Nexus,
    cfg: SessionConfig,
    exp_cmdsn: u32,
    max_cmdsn: u32,
    statsn: u32,
    exp_statsn: u32,
    /// Ordered, non-immediate SCSI commands not yet answered.
    outstanding: u32,
    immediate_outstanding: usize,
    tasks: HashMap<TaskId, Task>,
    by_itt: HashMap<u32, TaskId>,
    held: HashMap<u32, Held>,
    next_id: TaskId,
    next_ttt: u32,
    recently_aborted: VecDeque<u32>,
    text_query: Option<u32>,
    text_pending: Option<PendingText>,
    /// Text the initiator is still sending (C bit), with the TTT we gave it.
    text_in: Option<PendingText>,
    logout: Option<pdu::LogoutRequest>,
    ping: Option<(u32, Duration)>,
    last_rx: Option<Duration>,
    rx_since_tick: bool,
    closed: bool,
    stats: SessionStats,
}

const RECENTLY_ABORTED_MAX: usize = 1024;
/// Most text one Text exchange may send us.
const TEXT_IN_MAX: usize = 64 * 1024;

fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

fn task_attr(a: u8) -> TaskAttr {
    match a {
        0 => TaskAttr::Untagged,
        2 => TaskAttr::Ordered,
        3 => TaskAttr::HeadOfQueue,
        4 => TaskAttr::Aca,
        _ => TaskAttr::Simple,
    }
}

fn bhs_of(p: &Pdu) -> Vec<u8> {
    p.encode_bhs_ahs(p.data().len()).0.to_vec()
}

impl Session {
    pub fn new(params: SessionParams, nexus: Nexus, cfg: SessionConfig) -> Session {
        let window = cfg.cmd_window.clamp(1, 0x4000_0000);
        Session {
            exp_cmdsn: cfg.exp_cmdsn,
            max_cmdsn: cfg.exp_cmdsn.wrapping_add(window - 1),
            statsn: cfg.statsn,
            exp_statsn: cfg.statsn,
            cfg: SessionConfig {
                cmd_window: window,
                ..cfg
            },
            params,
            nexus,
            outstanding: 0,
            immediate_outstanding: 0,
            tasks: HashMap::new(),
            by_itt: HashMap::new(),
            held: HashMap::new(),
            next_id: 1,
            next_ttt: 1,
            recently_aborted: VecDeque::new(),
            text_query: None,
            text_pending: None,
            text_in: None,
            logout: None,
            ping: None,
            last_rx: None,
            rx_since_tick: false,
            closed: false,
            stats: SessionStats::default(),
        }
    }

    pub fn exp_cmdsn(&self) -> u32 {
        self.exp_cmdsn
    }
    pub fn max_cmdsn(&self) -> u32 {
        self.max_cmdsn
    }
    /// The next StatSN to be sent.
    pub fn statsn(&self) -> u32 {
        self.statsn
    }
    /// The last ExpStatSN the initiator acknowledged.
    pub fn exp_statsn(&self) -> u32 {
        self.exp_statsn
    }
    /// SCSI commands known to the session (collecting data, held or executing).
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Asks the initiator to log out (Async Message event 1, RFC 7143 11.9.1), e.g. before the
    /// resource behind the target stops being primary. `deadline` is the seconds the initiator
    /// has to log out (Parameter3). Nothing is sent once the session is closing.
    pub fn request_logout(&mut self, deadline: u16) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed || self.logout.is_some() {
            return out;
        }
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::AsyncMessage(pdu::AsyncMessage {
            lun: 0,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            event: 1,
            vcode: 0,
            param1: 0,
            param2: 0,
            param3: deadline,
            data: Vec::new(),
        })));
        out
    }

    // ---- numbering helpers ----

    fn update_max(&mut self) {
        let m = self
            .exp_cmdsn
            .wrapping_add(self.cfg.cmd_window - 1)
            .wrapping_sub(self.outstanding.min(self.cfg.cmd_window));
        if sn_lt(self.max_cmdsn, m) {
            self.max_cmdsn = m;
        }
    }

    fn take_statsn(&mut self) -> u32 {
        let s = self.statsn;
        self.statsn = self.statsn.wrapping_add(1);
        s
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn reject(&mut self, reason: u8, bhs: Vec<u8>, out: &mut Vec<Action>) {
        self.update_max();
        self.stats.rejects += 1;
        let statsn = self.take_statsn();
        out.push(Action::Send(Pdu::Reject(pdu::Reject {
            reason,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            datasn_r2tsn: 0,
            data: bhs,
        })));
    }

    fn close(&mut self, reason: CloseReason, out: &mut Vec<Action>) {
        if !self.closed {
            self.closed = true;
            out.push(Action::Close(reason));
        }
    }

    // ---- events ----

    /// A whole PDU from the initiator.
    pub fn on_pdu(&mut self, pdu: Pdu) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        self.rx_since_tick = true;
        match pdu {
            Pdu::DataOut(d) => self.data_out(d, None, &mut out),
            Pdu::NopOut(_) | Pdu::ScsiCommand(_) | Pdu::TaskMgmtRequest(_) | Pdu::TextRequest(_) => {
                self.sequenced(pdu, &mut out)
            }
            Pdu::LogoutRequest(_) => self.sequenced(pdu, &mut out),
            Pdu::Snack(_) => {
                let b = bhs_of(&pdu);
                self.reject(reject_reason::SNACK_REJECT, b, &mut out)
            }
            other => {
                // A Login Request in the full feature phase, or a target-only opcode.
                let b = bhs_of(&other);
                self.reject(reject_reason::PROTOCOL_ERROR, b, &mut out)
            }
        }
        self.check_logout(&mut out);
        out
    }

    /// A deframing error. Errors that lose the framing close the connection; a data digest
    /// error gets Reject reason 0x02 (RFC 7143 section 7.8) and, for Data-Out, fails the task
    /// once all its data is in; unknown opcodes get "command not supported".
    pub fn on_frame_error(&mut self, err: PduError) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        match err {
            PduError::DataDigest { bhs, pdu, .. } => {
                self.reject(reject_reason::DATA_DIGEST_ERROR, bhs.to_vec(), &mut out);
                if let Pdu::DataOut(d) = *pdu {
                    let len = pdu::bhs_data_len(&bhs);
                    self.data_out(d, Some(len), &mut out);
                }
                // A command whose immediate data was corrupt is dropped without consuming its
                // CmdSN, so the initiator's retry with the same CmdSN fits the window.
            }
            PduError::BadOpcode { bhs, .. } => {
                self.reject(reject_reason::COMMAND_NOT_SUPPORTED, bhs.to_vec(), &mut out)
            }
            PduError::Reserved { bhs, .. } => self.reject(reject_reason::INVALID_PDU_FIELD, bhs.to_vec(), &mut out),
            e => self.close(CloseReason::Protocol(e.to_string()), &mut out),
        }
        self.check_logout(&mut out);
        out
    }

    /// The SCSI layer finished task `id`. Ignored for tasks that were aborted.
    pub fn on_scsi_done(&mut self, id: TaskId, outcome: ScsiOutcome) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        let Some(task) = self.tasks.get(&id) else { return out };
        if !task.executing {
            return out;
        }
        let task = self.finish(id).expect("present");
        self.respond(&task, outcome, &mut out);
        self.check_logout(&mut out);
        out
    }

    /// The answer to [`Action::SendTargets`]: the text keys (NUL-terminated key=value pairs).
    pub fn on_text_answer(&mut self, itt: u32, answer: Vec<u8>) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed || self.text_query != Some(itt) {
            return out;
        }
        self.text_query = None;
        self.send_text_chunk(itt, answer, &mut out);
        self.check_logout(&mut out);
        out
    }

    /// Time passes (`now` from any monotonic origin). Sends pings and enforces their timeout.
    pub fn on_tick(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closed {
            return out;
        }
        if self.rx_since_tick || self.last_rx.is_none() {
            self.last_rx = Some(now);
            self.rx_since_tick = false;
        }
        if let Some((_, sent)) = self.ping {
            if now.saturating_sub(sent) >= self.cfg.nop_timeout {
                self.close(CloseReason::NopTimeout, &mut out);
            }
        } else if let (Some(iv), Some(last)) = (self.cfg.nop_interval, self.last_rx) {
            if now.saturating_sub(last) >= iv {
                let ttt = self.new_ttt();
                self.update_max();
                self.ping = Some((ttt, now));
                out.push(Action::Send(Pdu::NopIn(pdu::NopIn {
                    lun: 0,
                    itt: RESERVED_TAG,
                    ttt,
                    // Not advanced: this NOP-In carries no status.
                    statsn: self.statsn,
                    exp_cmdsn: self.exp_cmdsn,
                    max_cmdsn: self.max_cmdsn,
                    data: Vec::new(),
                })));
            }
        }
        out
    }

    // ---- ordering ----

    fn sequenced(&mut self, pdu: Pdu, out: &mut Vec<Action>) {
        let (immediate, cmdsn, exp_statsn) = match &pdu {
            Pdu::NopOut(p) => (p.immediate || p.itt == RESERVED_TAG, p.cmdsn, p.exp_statsn),
            Pdu::ScsiCommand(p) => (p.immediate, p.cmdsn, p.exp_statsn),
            Pdu::TaskMgmtRequest(p) => (p.immediate, p.cmdsn, p.exp_statsn),
            Pdu::TextRequest(p) => (p.immediate, p.cmdsn, p.exp_statsn),
            Pdu::LogoutRequest(p) => (p.immediate, p.cmdsn, p.exp_statsn),
            _ => return,
        };
        if sn_le(exp_statsn, self.statsn) && sn_lt(self.exp_statsn, exp_statsn) {
            self.exp_statsn = exp_statsn;
        }
        if self.logout.is_some() {
            if !matches!(&pdu, Pdu::NopOut(p) if p.itt == RESERVED_TAG) {
                let b = bhs_of(&pdu);
                self.reject(reject_reason::WAITING_FOR_LOGOUT, b, out);
            }
            return;
        }
        if immediate {
            if matches!(pdu, Pdu::ScsiCommand(_)) && self.immediate_outstanding >= self.cfg.max_immediate {
                let b = bhs_of(&pdu);
                self.reject(reject_reason::IMMEDIATE_COMMAND_REJECT, b, out);
                return;
            }
            self.dispatch(pdu, true, out);
            return;
        }
        if !sn_in_window(cmdsn, self.exp_cmdsn, self.max_cmdsn) {
            // RFC 7143 4.2.2.1: silently ignored.
            return;
        }
        if cmdsn == self.exp_cmdsn {
            self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
            self.dispatch(pdu, false, out);
            self.drain_held(out);
        } else if self.held.contains_key(&cmdsn) {
            // A duplicate within the window: ignored too.
        } else if let Pdu::ScsiCommand(cmd) = pdu {
            // Start its data phase now (its Data-Out may already be on the way); it executes
            // when its turn comes.
            match self.new_task(cmd, false, out) {
                Some(id) => self.held.insert(cmdsn, Held::Task(id)),
                None => self.held.insert(cmdsn, Held::Consumed),
            };
        } else {
            self.held.insert(cmdsn, Held::Pdu(Box::new(pdu)));
        }
    }

    fn drain_held(&mut self, out: &mut Vec<Action>) {
        while let Some(h) = self.held.remove(&self.exp_cmdsn) {
            self.exp_cmdsn = self.exp_cmdsn.wrapping_add(1);
            match h {
                Held::Consumed => {}
                Held::Pdu(p) => self.dispatch(*p, false, out),
                Held::Task(id) => {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.ordered = true;
                        self.outstanding += 1;
                        self.maybe_execute(id, out);
                    }
                }
            }
        }
        self.update_max();
    }

    fn dispatch(&mut self, pdu: Pdu, immediate: bool, out: &mut Vec<Action>) {
        match pdu {
            Pdu::NopOut(p) => self.nop_out(p, out),
            Pdu::ScsiCommand(c) => {
                let _ = self.new_task(c, !immediate, out);
            }
            Pdu::TaskMgmtRequest(t) => self.task_mgmt(t, out),
            Pdu::TextRequest(t) => self.text(t, out),
            Pdu::LogoutRequest(l) => self.logout_request(l, out),
            _ => {}
        }
    }

    // ---- SCSI commands and Data-Out ----

    /// Creates the task; `ordered` when its CmdSN has been reached (or it is immediate).
    fn new_task(&mut self, cmd: pdu::ScsiCommand, ordered: bool, out: &mut Vec<Action>) -> Option<TaskId> {
        let write_len = if cmd.write { cmd.expected_data_len } else { 0 };
        // A bidirectional command gives its read length in the bidi AHS (RFC 7143 11.3.5).
        let read_len = match (cmd.read, cmd.write) {
            (true, true) => cmd.bidi_read_len.unwrap_or(0),
            (true, false) => cmd.expected_data_len,
            _ => 0,
        };
        let imm_len = cmd.data.len() as u32;
        let invalid = if self.by_itt.contains_key(&cmd.itt) || cmd.itt == RESERVED_TAG || cmd.cdb.is_empty() {
            Some(reject_reason::INVALID_PDU_FIELD)
        } else if imm_len > 0
            && (!self.params.immediate_data
                || !cmd.write
                || imm_len > write_len
                || imm_len > self.params.first_burst_length)
        {
            Some(reject_reason::PROTOCOL_ERROR)
        } else {
            None
        };
        if let Some(reason) = invalid {
            let b = bhs_of(&Pdu::ScsiCommand(cmd));
            self.reject(reason, b, out);
            return None;
        }
        let fail = (write_len > self.cfg.max_task_data).then_some(Fail::TooLarge);
        let mut buf = None;
        if write_len > 0 && fail.is_none() {
            let mut b = IoBuf::uninit(write_len as usize);
            b.as_mut_slice()[..imm_len as usize].copy_from_slice(&cmd.data);
            buf = Some(b);
        }
        // Unsolicited Data-Out may follow only when InitialR2T=No and the command's F bit is 0.
        let unsolicited_end = if self.params.initial_r2t {
            imm_len
        } else {
            write_len.min(self.params.first_burst_length)
        };
        let unsolicited_done = self.params.initial_r2t || cmd.final_ || imm_len >= unsolicited_end;
        let id = self.next_id;
        self.next_id += 1;
        let immediate = cmd.immediate;
        self.stats.commands += 1;
        self.stats.data_out_bytes += imm_len as u64;
        let task = Task {
            itt: cmd.itt,
            cmdsn: cmd.cmdsn,
            immediate,
            ordered: ordered || immediate,
            executing: false,
            lun: cmd.lun,
            cdb: cmd.cdb,
            attr: task_attr(cmd.attr),
            read_len,
            write_len,
            buf,
            fail,
            received: imm_len,
            unsolicited_done,
            unsolicited_next_datasn: 0,
            unsolicited_end,
            r2ts: Vec::new(),
            next_r2t_offset: imm_len,
            r2tsn: 0,
        };
        if immediate {
            self.immediate_outstanding += 1;
        } else if ordered {
            self.outstanding += 1;
        }
        self.tasks.insert(id, task);
        self.by_itt.insert(cmd.itt, id);
        if unsolicited_done {
            self.issue_r2ts(id, out);
        }
        self.maybe_execute(id, out);
        Some(id)
    }

    fn issue_r2ts(&mut self, id: TaskId, out: &mut Vec<Action>) {
        let max_out = self.params.max_outstanding_r2t.max(1) as usize;
        let burst = self.params.max_burst_length.max(512);
        loop {
            let Some(t) = self.tasks.get(&id) else { return };
            if t.r2ts.len() >= max_out || t.next_r2t_offset >= t.write_len {
                return;
            }
            let ttt = self.new_ttt();
            self.update_max();
            let (exp_cmdsn, max_cmdsn, statsn) = (self.exp_cmdsn, self.max_cmdsn, self.statsn);
            let t = self.tasks.get_mut(&id).expect("present");
            let offset = t.next_r2t_offset;
            let len = (t.write_len - offset).min(burst);
            t.next_r2t_offset += len;
            t.r2ts.push(R2tState {
                ttt,
                offset,
                len,
                received: 0,
                next_datasn: 0,
            });
            let r2tsn = t.r2tsn;
            t.r2tsn += 1;
            out.push(Action::Send(Pdu::R2t(pdu::R2t {
                lun: t.lun,
                itt: t.itt,
                ttt,
                statsn,
                exp_cmdsn,
                max_cmdsn,
                r2tsn,
                buffer_offset: offset,
                desired_len: len,
            })));
        }
    }

    /// A Data-Out PDU; `corrupt_len` is set when its data failed the digest (data absent).
    fn data_out(&mut self, d: pdu::DataOut, corrupt_len: Option<u32>, out: &mut Vec<Action>) {
        let len = corrupt_len.unwrap_or(d.data.len() as u32);
        let Some(&id) = self.by_itt.get(&d.itt) else {
            if !self.recently_aborted.contains(&d.itt) && corrupt_len.is_none() {
                let b = bhs_of(&Pdu::DataOut(d));
                self.reject(reject_reason::INVALID_PDU_FIELD, b, out);
            }
            return;
        };
        let initial_r2t = self.params.initial_r2t;
        let t = self.tasks.get_mut(&id).expect("indexed");
        // Where this PDU must land, and which sequence it belongs to.
        let ok = if d.ttt == RESERVED_TAG {
            let fits = !initial_r2t
                && !t.unsolicited_done
                && d.buffer_offset == t.received
                && d.datasn == t.unsolicited_next_datasn
                && d.buffer_offset.checked_add(len).is_some_and(|e| e <= t.unsolicited_end);
            if fits {
                t.unsolicited_next_datasn += 1;
                if d.final_ {
                    t.unsolicited_done = true;
                    t.next_r2t_offset = d.buffer_offset + len;
                }
            }
            fits
        } else if let Some(i) = t.r2ts.iter().position(|r| r.ttt == d.ttt) {
            let r = &mut t.r2ts[i];
            let fits = d.datasn == r.next_datasn
                && d.buffer_offset == r.offset + r.received
                && r.received + len <= r.len
                && (!d.final_ || r.received + len == r.len);
            if fits {
                r.next_datasn += 1;
                r.received += len;
                if d.final_ {
                    t.r2ts.remove(i);
                }
            }
            fits
        } else {
            false
        };
        if !ok {
            let b = bhs_of(&Pdu::DataOut(d));
            self.reject(reject_reason::INVALID_PDU_FIELD, b, out);
            return;
        }
        let t = self.tasks.get_mut(&id).expect("indexed");
        t.received += len;
        self.stats.data_out_bytes += len as u64;
        if corrupt_len.is_some() {
            t.fail = Some(Fail::Crc);
        } else if let Some(buf) = t.buf.as_mut() {
            let at = d.buffer_offset as usize;
            buf.as_mut_slice()[at..at + d.data.len()].copy_from_slice(&d.data);
        }
        if t.unsolicited_done {
            self.issue_r2ts(id, out);
        }
        self.maybe_execute(id, out);
    }

    fn maybe_execute(&mut self, id: TaskId, out: &mut Vec<Action>) {
        let Some(t) = self.tasks.get_mut(&id) else { return };
        if !t.ordered || t.executing || !t.data_complete() {
            return;
        }
        if let Some(f) = &t.fail {
            let sense = match f {
                Fail::Crc => fixed_sense(0x0b, 0x47, 0x05),
                Fail::TooLarge => fixed_sense(0x05, 0x24, 0x00),
            };
            let task = self.finish(id).expect("present");
            let outcome = ScsiOutcome {
                status: status::CHECK_CONDITION,
                sense,
                data_in: None,
                write_len: None,
            };
            self.respond(&task, outcome, out);
            return;
        }
        t.executing = true;
        let task = ScsiTask {
            lun: t.lun,
            cdb: std::mem::take(&mut t.cdb),
            data_out: t.buf.take(),
            expected_data_in: t.read_len,
            attr: t.attr,
            nexus: self.nexus.clone(),
        };
        out.push(Action::Execute { id, task });
    }

    /// Forgets a task and frees its window slot.
    fn finish(&mut self, id: TaskId) -> Option<Task> {
        let t = self.tasks.remove(&id)?;
        self.by_itt.remove(&t.itt);
        if t.immediate {
            self.immediate_outstanding -= 1;
        } else if t.ordered {
            self.outstanding -= 1;
        } else if let Some(h) = self.held.get_mut(&t.cmdsn) {
            *h = Held::Consumed;
        }
        self.update_max();
        Some(t)
    }

    /// Data-In and/or SCSI Response for a finished task.
    fn respond(&mut self, task: &Task, outcome: ScsiOutcome, out: &mut Vec<Action>) {
        let have = outcome.data_in.as_ref().map_or(0, |b| b.len() as u64);
        let want = task.read_len as u64;
        let send = have.min(want) as u32;
        let (overflow, underflow, residual) = if let (0, Some(tl)) = (task.read_len, outcome.write_len) {
            // A write: the CDB's transfer length against ExpectedDataTransferLength.
            let edtl = task.write_len;
            if tl > edtl {
                (true, false, tl - edtl)
            } else {
                (false, tl < edtl, edtl - tl)
            }
        } else if have > want {
            (true, false, (have - want).min(u32::MAX as u64) as u32)
        } else if have < want {
            (false, true, (want - have) as u32)
        } else {
            (false, false, 0)
        };
        let collapse = outcome.sense.is_empty() && send > 0;
        let mut datasn = 0u32;
        if send > 0 {
            let data = Arc::new(outcome.data_in.expect("have > 0"));
            let seg = self.params.max_xmit_data_segment_length.max(512);
            let burst = self.params.max_burst_length.max(512);
            let mut off = 0u32;
            while off < send {
                let burst_end = (off / burst + 1).saturating_mul(burst).min(send);
                let len = seg.min(burst_end - off);
                let last = off + len == send;
                let end_of_seq = off + len == burst_end;
                let status_here = last && collapse;
                let statsn = if status_here { self.take_statsn() } else { 0 };
                self.update_max();
                let header = pdu::DataIn {
                    final_: end_of_seq,
                    ack: false,
                    overflow: status_here && overflow,
                    underflow: status_here && underflow,
                    has_status: status_here,
                    status: if status_here { outcome.status } else { 0 },
                    lun: 0,
                    itt: task.itt,
                    ttt: RESERVED_TAG,
                    statsn,
                    exp_cmdsn: self.exp_cmdsn,
                    max_cmdsn: self.max_cmdsn,
                    datasn,
                    buffer_offset: off,
                    residual: if status_here { residual } else { 0 },
                    data: Vec::new(),
                };
                out.push(Action::SendDataIn {
                    header,
                    data: data.clone(),
                    offset: off as usize,
                    len: len as usize,
                });
                self.stats.data_in_bytes += len as u64;
                datasn += 1;
                off += len;
            }
            if collapse {
                return;
            }
        }
        let mut data = Vec::new();
        if !outcome.sense.is_empty() {
            let n = outcome.sense.len().min(0xffff);
            data.extend_from_slice(&(n as u16).to_be_bytes());
            data.extend_from_slice(&outcome.sense[..n]);
        }
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::ScsiResponse(pdu::ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: 0,
            status: outcome.status,
            itt: task.itt,
            snack_tag: 0,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            exp_datasn: if task.read_len > 0 { datasn } else { task.r2tsn },
            bidi_residual: 0,
            residual,
            data,
        })));
    }

    // ---- NOP ----

    fn nop_out(&mut self, p: pdu::NopOut, out: &mut Vec<Action>) {
        if p.itt == RESERVED_TAG {
            // The answer to our ping (or a bare ExpStatSN update): no reply.
            if let Some((ttt, _)) = self.ping {
                if p.ttt == ttt {
                    self.ping = None;
                }
            }
            return;
        }
        let mut data = p.data;
        data.truncate(self.params.max_xmit_data_segment_length as usize);
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::NopIn(pdu::NopIn {
            lun: p.lun,
            itt: p.itt,
            ttt: RESERVED_TAG,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            data,
        })));
    }

    // ---- task management ----

    fn abort_where(&mut self, pred: impl Fn(&Task) -> bool, out: &mut Vec<Action>) {
        let mut ids: Vec<TaskId> = self.tasks.iter().filter(|(_, t)| pred(t)).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut running = Vec::new();
        for id in ids {
            if let Some(t) = self.finish(id) {
                if t.executing {
                    running.push(id);
                }
                if self.recently_aborted.len() >= RECENTLY_ABORTED_MAX {
                    self.recently_aborted.pop_front();
                }
                self.recently_aborted.push_back(t.itt);
            }
        }
        if !running.is_empty() {
            out.push(Action::Abort { ids: running });
        }
    }

    fn task_mgmt(&mut self, t: pdu::TaskMgmtRequest, out: &mut Vec<Action>) {
        let mut response = tmf::RESP_COMPLETE;
        let mut cold = false;
        match t.function {
            tmf::ABORT_TASK => {
                if self.by_itt.contains_key(&t.rtt) {
                    self.abort_where(|x| x.itt == t.rtt, out);
                } else if sn_in_window(t.ref_cmdsn, self.exp_cmdsn, self.max_cmdsn) && sn_lt(t.ref_cmdsn, t.cmdsn) {
                    // RFC 7143 11.5.1 b): the command never arrived; count its CmdSN as received.
                    self.held.entry(t.ref_cmdsn).or_insert(Held::Consumed);
                    self.drain_held(out);
                } else {
                    response = tmf::RESP_NO_TASK;
                }
            }
            tmf::ABORT_TASK_SET => self.abort_where(|x| x.lun == t.lun, out),
            tmf::CLEAR_TASK_SET => {
                self.abort_where(|x| x.lun == t.lun, out);
                out.push(Action::ClearTaskSet { lun: t.lun });
            }
            tmf::LOGICAL_UNIT_RESET => {
                self.abort_where(|x| x.lun == t.lun, out);
                out.push(Action::LunReset { lun: t.lun });
            }
            tmf::TARGET_WARM_RESET => {
                self.abort_where(|_| true, out);
                out.push(Action::TargetWarmReset);
            }
            tmf::TARGET_COLD_RESET => {
                self.abort_where(|_| true, out);
                out.push(Action::TargetWarmReset);
                cold = true;
            }
            tmf::TASK_REASSIGN => response = tmf::RESP_REASSIGN_UNSUPPORTED,
            _ => response = tmf::RESP_NOT_SUPPORTED,
        }
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::TaskMgmtResponse(pdu::TaskMgmtResponse {
            response,
            itt: t.itt,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
        })));
        if cold {
            self.close(CloseReason::ColdReset, out);
        }
    }

    // ---- text ----

    fn text(&mut self, mut t: pdu::TextRequest, out: &mut Vec<Action>) {
        if t.ttt != RESERVED_TAG {
            // Either the initiator continues its own text (C bit) or asks for the next piece of
            // our answer.
            if let Some(mut p) = self.text_in.take() {
                if p.ttt == t.ttt && p.itt == t.itt {
                    p.rest.append(&mut t.data);
                    return self.text_input(t, p.rest, out);
                }
                self.text_in = Some(p);
            }
            match self.text_pending.take() {
                Some(p) if p.ttt == t.ttt && p.itt == t.itt => self.send_text_chunk(t.itt, p.rest, out),
                other => {
                    self.text_pending = other;
                    let b = bhs_of(&Pdu::TextRequest(t));
                    self.reject(reject_reason::INVALID_PDU_FIELD, b, out);
                }
            }
            return;
        }
        // A new exchange ends any earlier unfinished one.
        self.text_pending = None;
        self.text_in = None;
        let data = std::mem::take(&mut t.data);
        self.text_input(t, data, out);
    }

    /// Text the initiator has sent so far in this exchange: wait for more (C bit), or act on it.
    fn text_input(&mut self, t: pdu::TextRequest, text: Vec<u8>, out: &mut Vec<Action>) {
        if text.len() > TEXT_IN_MAX {
            let b = bhs_of(&Pdu::TextRequest(t));
            self.reject(reject_reason::OUT_OF_RESOURCES, b, out);
            return;
        }
        if t.cont {
            // RFC 7143 11.10.2: answer with an empty response and a TTT to continue with.
            let ttt = self.new_ttt();
            self.text_in = Some(PendingText {
                itt: t.itt,
                ttt,
                rest: text,
            });
            let statsn = self.take_statsn();
            self.update_max();
            out.push(Action::Send(Pdu::TextResponse(pdu::TextResponse {
                final_: false,
                cont: false,
                lun: 0,
                itt: t.itt,
                ttt,
                statsn,
                exp_cmdsn: self.exp_cmdsn,
                max_cmdsn: self.max_cmdsn,
                data: Vec::new(),
            })));
            return;
        }
        let mut send_targets = None;
        let mut answer = Vec::new();
        for kv in text.split(|b| *b == 0).filter(|kv| !kv.is_empty()) {
            if let Some(v) = kv.strip_prefix(b"SendTargets=") {
                send_targets = Some(String::from_utf8_lossy(v).into_owned());
            } else {
                // Keys the full feature phase does not negotiate.
                let key = kv.split(|b| *b == b'=').next().unwrap_or(kv);
                answer.extend_from_slice(key);
                answer.extend_from_slice(b"=NotUnderstood\0");
            }
        }
        match send_targets {
            Some(value) if self.text_query.is_none() => {
                self.text_query = Some(t.itt);
                out.push(Action::SendTargets { itt: t.itt, value });
            }
            Some(_) => {
                let b = bhs_of(&Pdu::TextRequest(t));
                self.reject(reject_reason::OUT_OF_RESOURCES, b, out);
            }
            None => self.send_text_chunk(t.itt, answer, out),
        }
    }

    fn send_text_chunk(&mut self, itt: u32, mut text: Vec<u8>, out: &mut Vec<Action>) {
        let max = self.params.max_xmit_data_segment_length.max(512) as usize;
        let rest = if text.len() > max {
            text.split_off(max)
        } else {
            Vec::new()
        };
        let more = !rest.is_empty();
        let ttt = if more { self.new_ttt() } else { RESERVED_TAG };
        let cont = more && text.last() != Some(&0);
        if more {
            self.text_pending = Some(PendingText { itt, ttt, rest });
        }
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::TextResponse(pdu::TextResponse {
            final_: !more,
            cont,
            lun: 0,
            itt,
            ttt,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            data: text,
        })));
    }

    // ---- logout ----

    fn logout_request(&mut self, l: pdu::LogoutRequest, out: &mut Vec<Action>) {
        let response = match l.reason {
            0 => 0,
            1 if l.cid == self.cfg.cid => 0,
            1 => 1,
            2 => 2,
            _ => {
                let b = bhs_of(&Pdu::LogoutRequest(l));
                self.reject(reject_reason::INVALID_PDU_FIELD, b, out);
                return;
            }
        };
        if response != 0 {
            let statsn = self.take_statsn();
            self.update_max();
            out.push(Action::Send(Pdu::LogoutResponse(pdu::LogoutResponse {
                response,
                itt: l.itt,
                statsn,
                exp_cmdsn: self.exp_cmdsn,
                max_cmdsn: self.max_cmdsn,
                time2wait: 0,
                time2retain: 0,
            })));
            return;
        }
        // Tasks still waiting for data never will get it: abort them. Running ones finish
        // and are answered; the Logout Response goes out after the last of them.
        self.abort_where(|t| !t.executing, out);
        self.held.clear();
        self.text_query = None;
        self.text_pending = None;
        self.text_in = None;
        self.logout = Some(l);
    }

    fn check_logout(&mut self, out: &mut Vec<Action>) {
        if self.closed || !self.tasks.is_empty() {
            return;
        }
        let Some(l) = self.logout.take() else { return };
        let statsn = self.take_statsn();
        self.update_max();
        out.push(Action::Send(Pdu::LogoutResponse(pdu::LogoutResponse {
            response: 0,
            itt: l.itt,
            statsn,
            exp_cmdsn: self.exp_cmdsn,
            max_cmdsn: self.max_cmdsn,
            time2wait: 0,
            time2retain: 0,
        })));
        self.closed = true;
        out.push(Action::LogoutComplete {
            close_session: l.reason == 0,
        });
    }
}

#[cfg(test)]
#[path = "session_test.rs"]
mod tests;
