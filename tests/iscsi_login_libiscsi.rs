//! The login state machine against a real initiator: libiscsi's `iscsi-ls` and `iscsi-inq`.
//!
//! The real server driver belongs to the integrator; this test carries a minimal one (Login,
//! Text/SendTargets, Logout, and a SCSI Command answered with an empty GOOD status) so the pure
//! login core meets libiscsi's actual PDU sequence: discovery with and without CHAP, wrong
//! secrets, and a normal-session login with one-way and mutual CHAP. Skips when libiscsi's
//! tools are not installed.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hablock::iscsi::chap::ChapAccount;
use hablock::iscsi::login::{
    send_targets_answer, LoginAction, LoginContext, LoginMachine, LoginOutcome, LoginRequest, LoginResponse,
    PortalInfo, SendTargetsQuery, SessionKind, TargetState, VisibleTarget,
};
use hablock::iscsi::params::{parse_text, split_text, DigestPolicy, TargetParamConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;

const TARGET: &str = "iqn.2026-01.org.hablock:test.disk1";

mod common;
use common::require;

#[derive(Clone, Default)]
struct Ctx {
    incoming: Vec<ChapAccount>,
    outgoing: Option<ChapAccount>,
    disc_incoming: Vec<ChapAccount>,
    next_tsih: u16,
    /// Where the target is; "OTHERPORT" in a Moved address is the test's second portal.
    state: Option<TargetState>,
}

impl LoginContext for Ctx {
    fn target_exists(&self, name: &str) -> bool {
        name == TARGET
    }
    fn initiator_allowed(&self, _t: &str, _i: &str, _a: IpAddr) -> bool {
        true
    }
    fn incoming_accounts(&self, _t: &str) -> Vec<ChapAccount> {
        self.incoming.clone()
    }
    fn outgoing_account(&self, _t: &str) -> Option<ChapAccount> {
        self.outgoing.clone()
    }
    fn discovery_incoming_accounts(&self) -> Vec<ChapAccount> {
        self.disc_incoming.clone()
    }
    fn discovery_outgoing_account(&self) -> Option<ChapAccount> {
        None
    }
    fn portal_group_tag(&self) -> u16 {
        1
    }
    fn target_params(&self, _t: Option<&str>) -> TargetParamConfig {
        // This little driver does not compute digests.
        TargetParamConfig {
            header_digest: DigestPolicy::NoneOnly,
            data_digest: DigestPolicy::NoneOnly,
            ..TargetParamConfig::default()
        }
    }
    fn target_state(&self, _t: &str) -> TargetState {
        self.state.clone().unwrap_or(TargetState::Ready)
    }
    fn session_exists(&self, _i: &str, _isid: [u8; 6], _tsih: u16) -> bool {
        false
    }
    fn allocate_tsih(&mut self) -> Option<u16> {
        self.next_tsih += 1;
        Some(self.next_tsih)
    }
}

/// What happened on one connection.
#[derive(Debug)]
enum Event {
    Completed(LoginOutcome),
    Failed(u16),
    Redirected(u16),
    SendTargets(String),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn read_pdu(s: &mut TcpStream) -> Option<([u8; 48], Vec<u8>)> {
    let mut bhs = [0u8; 48];
    s.read_exact(&mut bhs).ok()?;
    let ahs = bhs[4] as usize * 4;
    let dsl = (be32(&bhs[4..8]) & 0xff_ffff) as usize;
    let mut rest = vec![0u8; ahs + dsl.div_ceil(4) * 4];
    s.read_exact(&mut rest).ok()?;
    Some((bhs, rest[ahs..ahs + dsl].to_vec()))
}

fn write_pdu(s: &mut TcpStream, mut bhs: [u8; 48], data: &[u8]) {
    let len = (data.len() as u32).to_be_bytes();
    bhs[5..8].copy_from_slice(&len[1..]);
    let mut out = bhs.to_vec();
    out.extend_from_slice(data);
    out.resize(48 + data.len().div_ceil(4) * 4, 0);
    s.write_all(&out).unwrap();
}

struct Sn {
    stat: u32,
    exp_cmd: u32,
}

impl Sn {
    fn put(&mut self, bhs: &mut [u8; 48]) {
        bhs[24..28].copy_from_slice(&self.stat.to_be_bytes());
        bhs[28..32].copy_from_slice(&self.exp_cmd.to_be_bytes());
        bhs[32..36].copy_from_slice(&(self.exp_cmd + 16).to_be_bytes());
        self.stat += 1;
    }
}

fn login_response(r: &LoginResponse, sn: &mut Sn) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = 0x23;
    b[1] = (r.transit as u8) << 7 | (r.cont as u8) << 6 | (r.csg & 3) << 2 | (r.nsg & 3);
    b[2] = r.version_max;
    b[3] = r.version_active;
    b[8..14].copy_from_slice(&r.isid);
    b[14..16].copy_from_slice(&r.tsih.to_be_bytes());
    b[16..20].copy_from_slice(&r.itt.to_be_bytes());
    sn.put(&mut b);
    b[36] = r.status_class;
    b[37] = r.status_detail;
    b
}

/// Serves one connection: login through the machine, then the few full-feature PDUs libiscsi's
/// tools send.
fn serve_conn(mut s: TcpStream, mut ctx: Ctx, seed: u64, events: &mpsc::Sender<Event>) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let peer = s.peer_addr().unwrap().ip();
    let mut m = LoginMachine::new(peer, Box::new(StdRng::seed_from_u64(seed)));
    let mut sn = Sn { stat: 1, exp_cmd: 0 };
    let mut session: Option<LoginOutcome> = None;
    while session.is_none() {
        let Some((bhs, data)) = read_pdu(&mut s) else { return };
        assert_eq!(bhs[0] & 0x3f, 0x03, "only Login Requests during login");
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&bhs[8..14]);
        let req = LoginRequest {
            transit: bhs[1] & 0x80 != 0,
            cont: bhs[1] & 0x40 != 0,
            csg: (bhs[1] >> 2) & 3,
            nsg: bhs[1] & 3,
            version_max: bhs[2],
            version_min: bhs[3],
            isid,
            tsih: u16::from_be_bytes([bhs[14], bhs[15]]),
            itt: be32(&bhs[16..20]),
            cid: u16::from_be_bytes([bhs[20], bhs[21]]),
            cmdsn: be32(&bhs[24..28]),
            exp_statsn: be32(&bhs[28..32]),
            data,
        };
        sn.exp_cmd = req.cmdsn;
        match m.handle(&mut ctx, &req) {
            LoginAction::Respond(r) => write_pdu(&mut s, login_response(&r, &mut sn), &r.data),
            LoginAction::Complete(r, o) => {
                write_pdu(&mut s, login_response(&r, &mut sn), &r.data);
                events.send(Event::Completed((*o).clone())).unwrap();
                session = Some(*o);
            }
            LoginAction::Fail(r, f) => {
                write_pdu(&mut s, login_response(&r, &mut sn), &r.data);
                events.send(Event::Failed(f.status)).unwrap();
                return;
            }
            LoginAction::Redirect(r) => {
                write_pdu(&mut s, login_response(&r, &mut sn), &r.data);
                events.send(Event::Redirected(r.status())).unwrap();
                return;
            }
        }
    }
    let session = session.unwrap();
    let max_out = session.params.max_xmit_data_segment_length as usize;
    while let Some((bhs, data)) = read_pdu(&mut s) {
        let itt = &bhs[16..20];
        let cmdsn = be32(&bhs[24..28]);
        let immediate = bhs[0] & 0x40 != 0;
        sn.exp_cmd = if immediate { cmdsn } else { cmdsn + 1 };
        let mut b = [0u8; 48];
        b[16..20].copy_from_slice(itt);
        match bhs[0] & 0x3f {
            0x04 => {
                let pairs = parse_text(&data).unwrap();
                let query = pairs
                    .iter()
                    .find(|(k, _)| k == "SendTargets")
                    .map(|(_, v)| v.clone())
                    .unwrap();
                events.send(Event::SendTargets(query.clone())).unwrap();
                let targets = vec![VisibleTarget {
                    name: TARGET.into(),
                    portals: vec![PortalInfo {
                        addr: "127.0.0.1:3260".parse().unwrap(),
                        tpgt: 1,
                    }],
                }];
                let session_target = match &session.session_type {
                    SessionKind::Normal { target_name } => Some(target_name.as_str()),
                    SessionKind::Discovery => None,
                };
                let text = send_targets_answer(&targets, &SendTargetsQuery::parse(&query), session_target);
                let chunks = split_text(&text, max_out);
                assert_eq!(chunks.len(), 1, "short answers only in this test");
                b[0] = 0x24;
                b[1] = 0x80;
                b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                sn.put(&mut b);
                write_pdu(&mut s, b, &chunks[0]);
            }
            0x01 => {
                // SCSI Command: GOOD, no data, everything residual.
                b[0] = 0x21;
                b[1] = 0x80 | 0x02;
                sn.put(&mut b);
                b[44..48].copy_from_slice(&bhs[20..24]);
                write_pdu(&mut s, b, &[]);
            }
            0x06 => {
                b[0] = 0x26;
                b[1] = 0x80;
                sn.put(&mut b);
                write_pdu(&mut s, b, &[]);
                return;
            }
            0x00 => {
                // NOP-Out: answer pings.
                if be32(itt) != 0xffff_ffff {
                    b[0] = 0x20;
                    b[1] = 0x80;
                    b[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
                    sn.put(&mut b);
                    write_pdu(&mut s, b, &data);
                }
            }
            op => panic!("unexpected opcode 0x{op:02x}"),
        }
    }
}

/// Runs the client with a time limit; returns (success, stdout+stderr) and the server's events.
/// Serves two portals: the one in the URL (PORT) with `ctx`, and a second one (OTHERPORT, for
/// redirections) where the target is always ready.
fn run(mut ctx: Ctx, args: &[&str], url_tail: &str) -> (bool, String, Vec<Event>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    if let Some(TargetState::Moved { address, .. }) = &mut ctx.state {
        *address = address.replace("OTHERPORT", &other_port.to_string());
    }
    let other_ctx = Ctx {
        state: None,
        ..ctx.clone()
    };
    listener.set_nonblocking(true).unwrap();
    other.set_nonblocking(true).unwrap();
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let mut seed = 1;
        let mut conns = Vec::new();
        loop {
            if stop_rx.try_recv().is_ok() {
                break;
            }
            let mut idle = true;
            for (l, ctx) in [(&listener, &ctx), (&other, &other_ctx)] {
                if let Ok((s, _)) = l.accept() {
                    idle = false;
                    s.set_nonblocking(false).unwrap();
                    let (ctx, tx) = (ctx.clone(), tx.clone());
                    seed += 1;
                    conns.push(thread::spawn(move || serve_conn(s, ctx, seed, &tx)));
                }
            }
            if idle {
                thread::sleep(Duration::from_millis(10));
            }
        }
        for c in conns {
            c.join().unwrap();
        }
    });
    let url = url_tail.replace("PORT", &port.to_string());
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    stop_tx.send(()).unwrap();
    server.join().unwrap();
    let events: Vec<Event> = rx.try_iter().collect();
    let ok = status.expect("client timed out").success();
    (ok, out, events)
}

fn alice() -> Vec<ChapAccount> {
    vec![ChapAccount::new("alice", "alicesecret12")]
}

#[test]
fn libiscsi_discovery_without_and_with_chap() {
    if !require(
        "libiscsi_discovery_without_and_with_chap",
        &[("iscsi-ls", "libiscsi-bin")],
    ) {
        return;
    }
    let init = ["iscsi-ls", "-i", "iqn.2026-01.org.hablock:test-initiator"];
    let (ok, out, ev) = run(Ctx::default(), &init, "iscsi://127.0.0.1:PORT");
    assert!(ok, "{out}\n{ev:?}");
    assert!(
        out.contains(&format!("Target:{TARGET} Portal:127.0.0.1:3260,1")),
        "{out}"
    );
    assert!(
        matches!(&ev[0], Event::Completed(o) if o.session_type == SessionKind::Discovery),
        "{ev:?}"
    );
    assert!(matches!(&ev[1], Event::SendTargets(q) if q == "All"), "{ev:?}");

    let disc = Ctx {
        disc_incoming: alice(),
        ..Ctx::default()
    };
    let (ok, out, ev) = run(disc.clone(), &init, "iscsi://alice%alicesecret12@127.0.0.1:PORT");
    assert!(ok, "{out}\n{ev:?}");
    assert!(out.contains(TARGET), "{out}");
    assert!(
        matches!(&ev[0], Event::Completed(o) if o.chap_user.as_deref() == Some("alice")),
        "{ev:?}"
    );

    let (ok, out, ev) = run(disc.clone(), &init, "iscsi://alice%wrongsecret1@127.0.0.1:PORT");
    assert!(!ok, "{out}");
    assert!(matches!(ev[..], [Event::Failed(0x0201)]), "{ev:?}");

    let (ok, out, ev) = run(disc, &init, "iscsi://127.0.0.1:PORT");
    assert!(!ok, "{out}");
    assert!(matches!(ev[..], [Event::Failed(0x0201)]), "{ev:?}");
}

#[test]
fn libiscsi_normal_login_with_chap() {
    if !require("libiscsi_normal_login_with_chap", &[("iscsi-inq", "libiscsi-bin")]) {
        return;
    }
    let init = ["iscsi-inq", "-i", "iqn.2026-01.org.hablock:test-initiator"];
    let one_way = Ctx {
        incoming: alice(),
        ..Ctx::default()
    };
    let (_, out, ev) = run(
        one_way.clone(),
        &init,
        &format!("iscsi://alice%alicesecret12@127.0.0.1:PORT/{TARGET}/0"),
    );
    let Some(Event::Completed(o)) = ev.first() else {
        panic!("{out}\n{ev:?}")
    };
    assert_eq!(
        o.session_type,
        SessionKind::Normal {
            target_name: TARGET.into()
        }
    );
    assert_eq!(o.initiator_name, "iqn.2026-01.org.hablock:test-initiator");
    assert_eq!(o.chap_user.as_deref(), Some("alice"));
    assert!(o.params.max_xmit_data_segment_length >= 512);

    let (ok, out, ev) = run(
        one_way,
        &init,
        &format!("iscsi://alice%wrongsecret1@127.0.0.1:PORT/{TARGET}/0"),
    );
    assert!(!ok, "{out}");
    assert!(matches!(ev[..], [Event::Failed(0x0201)]), "{ev:?}");

    // Mutual CHAP: libiscsi checks the target's answer with target_user/target_password.
    let mutual = Ctx {
        incoming: alice(),
        outgoing: Some(ChapAccount::new("targetuser", "targetsecret1")),
        ..Ctx::default()
    };
    let url = format!(
        "iscsi://alice%alicesecret12@127.0.0.1:PORT/{TARGET}/0?target_user=targetuser&target_password=targetsecret1"
    );
    let (_, out, ev) = run(mutual.clone(), &init, &url);
    assert!(matches!(ev.first(), Some(Event::Completed(_))), "{out}\n{ev:?}");
    assert!(
        !out.contains("Login Failed"),
        "libiscsi accepted the target's CHAP_R: {out}"
    );
    // A wrong target secret on the initiator's side: libiscsi refuses the target's CHAP_R and
    // never reaches operational negotiation.
    let url = url.replace("targetsecret1", "notthesecret");
    let (ok, out, ev) = run(mutual, &init, &url);
    assert!(!ok, "{out}");
    assert!(!ev.iter().any(|e| matches!(e, Event::Completed(_))), "{out}\n{ev:?}");
}

#[test]
fn libiscsi_follows_a_login_redirection() {
    if !require("libiscsi_follows_a_login_redirection", &[("iscsi-inq", "libiscsi-bin")]) {
        return;
    }
    let init = ["iscsi-inq", "-i", "iqn.2026-01.org.hablock:test-initiator"];
    let moved = TargetState::Moved {
        address: "127.0.0.1:OTHERPORT,1".into(),
        permanent: false,
    };
    let ctx = Ctx {
        incoming: alice(),
        state: Some(moved),
        ..Ctx::default()
    };
    let (_, out, ev) = run(
        ctx,
        &init,
        &format!("iscsi://alice%alicesecret12@127.0.0.1:PORT/{TARGET}/0"),
    );
    assert!(matches!(ev.first(), Some(Event::Redirected(0x0101))), "{out}\n{ev:?}");
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Completed(o) if o.chap_user.as_deref() == Some("alice"))),
        "libiscsi logs in at the new address: {out}\n{ev:?}"
    );

    let ctx = Ctx {
        state: Some(TargetState::Unavailable),
        ..Ctx::default()
    };
    let (ok, out, ev) = run(ctx, &init, &format!("iscsi://127.0.0.1:PORT/{TARGET}/0"));
    assert!(!ok, "{out}");
    assert!(matches!(ev.first(), Some(Event::Failed(0x0301))), "{out}\n{ev:?}");
}
