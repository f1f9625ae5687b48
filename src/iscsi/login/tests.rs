use super::*;
use crate::iscsi::chap::{decode_binary, encode_hex, ChapAlgorithm};
use crate::iscsi::params::{DigestPolicy, MAX_KEY_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;

const TARGET: &str = "iqn.2026-01.org.hablock:disk1";
const INITIATOR: &str = "iqn.1993-08.org.debian:01:0123456789ab";
const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];

/// A target registry for tests.
#[derive(Default)]
struct Ctx {
    incoming: Vec<ChapAccount>,
    outgoing: Option<ChapAccount>,
    disc_incoming: Vec<ChapAccount>,
    disc_outgoing: Option<ChapAccount>,
    denied: Vec<String>,
    sessions: Vec<u16>,
    next_tsih: u16,
    params: TargetParamConfig,
    alias: Option<String>,
    state: Option<TargetState>,
}

impl LoginContext for Ctx {
    fn target_exists(&self, name: &str) -> bool {
        name == TARGET
    }
    fn initiator_allowed(&self, _target: &str, initiator_name: &str, addr: IpAddr) -> bool {
        !self
            .denied
            .iter()
            .any(|d| d == initiator_name || *d == addr.to_string())
    }
    fn incoming_accounts(&self, _target: &str) -> Vec<ChapAccount> {
        self.incoming.clone()
    }
    fn outgoing_account(&self, _target: &str) -> Option<ChapAccount> {
        self.outgoing.clone()
    }
    fn discovery_incoming_accounts(&self) -> Vec<ChapAccount> {
        self.disc_incoming.clone()
    }
    fn discovery_outgoing_account(&self) -> Option<ChapAccount> {
        self.disc_outgoing.clone()
    }
    fn portal_group_tag(&self) -> u16 {
        1
    }
    fn target_alias(&self, _target: &str) -> Option<String> {
        self.alias.clone()
    }
    fn target_params(&self, _target: Option<&str>) -> TargetParamConfig {
        self.params.clone()
    }
    fn target_state(&self, _target: &str) -> TargetState {
        self.state.clone().unwrap_or(TargetState::Ready)
    }
    fn session_exists(&self, _initiator_name: &str, _isid: [u8; 6], tsih: u16) -> bool {
        self.sessions.contains(&tsih)
    }
    fn allocate_tsih(&mut self) -> Option<u16> {
        self.next_tsih = self.next_tsih.checked_add(1)?;
        Some(self.next_tsih)
    }
}

fn chap_ctx() -> Ctx {
    Ctx {
        incoming: vec![ChapAccount::new("alice", "alicesecret12")],
        ..Ctx::default()
    }
}

fn text(s: &str) -> Vec<u8> {
    let pairs: Vec<(String, String)> = s
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    encode_text(&pairs)
}

fn keys(data: &[u8]) -> Vec<(String, String)> {
    parse_text(data).unwrap()
}

fn key(data: &[u8], k: &str) -> Option<String> {
    keys(data).into_iter().find(|(pk, _)| pk == k).map(|(_, v)| v)
}

/// One initiator connection talking to one login machine.
struct Conn {
    m: LoginMachine,
    ctx: Ctx,
    itt: u32,
    isid: [u8; 6],
    tsih: u16,
}

impl Conn {
    fn new(ctx: Ctx) -> Self {
        Conn {
            m: LoginMachine::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                Box::new(StdRng::seed_from_u64(42)),
            ),
            ctx,
            itt: 0,
            isid: ISID,
            tsih: 0,
        }
    }

    fn raw(&mut self, csg: u8, nsg: u8, transit: bool, cont: bool, data: Vec<u8>) -> LoginAction {
        // libiscsi uses a new ITT for every login PDU; the target echoes each.
        self.itt += 1;
        let req = LoginRequest {
            transit,
            cont,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: 0,
            cmdsn: 1,
            exp_statsn: 0,
            data,
        };
        let action = self.m.handle(&mut self.ctx, &req);
        let resp = match &action {
            LoginAction::Respond(r)
            | LoginAction::Complete(r, _)
            | LoginAction::Fail(r, _)
            | LoginAction::Redirect(r) => r,
        };
        assert_eq!(resp.itt, self.itt);
        assert_eq!(resp.isid, self.isid);
        assert!(!(resp.transit && resp.cont));
        assert!(resp.data.len() <= LOGIN_MAX_SEGMENT);
        action
    }

    fn send(&mut self, csg: u8, nsg: u8, transit: bool, s: &str) -> LoginAction {
        self.raw(csg, nsg, transit, false, text(s))
    }
}

fn respond(a: LoginAction) -> LoginResponse {
    match a {
        LoginAction::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn complete(a: LoginAction) -> (LoginResponse, LoginOutcome) {
    match a {
        LoginAction::Complete(r, o) => (r, *o),
        other => panic!("expected completion, got {other:?}"),
    }
}

fn fail(a: LoginAction) -> u16 {
    match a {
        LoginAction::Fail(r, f) => {
            assert_eq!(r.status(), f.status);
            assert!(r.data.is_empty() && !r.transit);
            f.status
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

const FIRST: &str = "InitiatorName=iqn.1993-08.org.debian:01:0123456789ab InitiatorAlias=host1 \
                     TargetName=iqn.2026-01.org.hablock:disk1 SessionType=Normal";
const OPS: &str = "HeaderDigest=None DataDigest=None ImmediateData=Yes InitialR2T=Yes \
                   MaxRecvDataSegmentLength=65536 MaxBurstLength=262144 FirstBurstLength=65536 ErrorRecoveryLevel=0";

#[test]
fn no_auth_login() {
    let mut c = Conn::new(Ctx {
        alias: Some("disk one".into()),
        ..Ctx::default()
    });
    let r = respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None")));
    assert!(r.transit);
    assert_eq!((r.csg, r.nsg, r.tsih, r.status()), (0, 1, 0, 0));
    assert_eq!(key(&r.data, "AuthMethod").as_deref(), Some("None"));
    assert_eq!(key(&r.data, "TargetPortalGroupTag").as_deref(), Some("1"));
    assert_eq!(key(&r.data, "TargetAlias").as_deref(), Some("disk one"));

    let (r, o) = complete(c.send(1, 3, true, OPS));
    assert!(r.transit);
    assert_eq!((r.csg, r.nsg, r.tsih), (1, 3, 1));
    assert_eq!(key(&r.data, "MaxRecvDataSegmentLength").as_deref(), Some("262144"));
    assert_eq!(key(&r.data, "ImmediateData").as_deref(), Some("Yes"));
    assert_eq!(key(&r.data, "TargetPortalGroupTag"), None, "only in the first response");
    assert_eq!(
        o.session_type,
        SessionKind::Normal {
            target_name: TARGET.into()
        }
    );
    assert_eq!(o.initiator_name, INITIATOR);
    assert_eq!(o.initiator_alias.as_deref(), Some("host1"));
    assert_eq!((o.isid, o.tsih, o.cid, o.tpgt), (ISID, 1, 0, 1));
    assert_eq!(o.chap_user, None);
    assert_eq!(o.params.max_xmit_data_segment_length, 65536);
    assert_eq!(o.params.max_recv_data_segment_length, 262144);
    assert!(c.m.is_over());
    assert_eq!(
        fail(c.send(1, 3, true, "")),
        status::INITIATOR_ERROR,
        "nothing after completion"
    );
}

#[test]
fn skipping_security_only_without_accounts() {
    let mut c = Conn::new(Ctx::default());
    let (r, _) = complete(c.send(1, 3, true, &format!("{FIRST} {OPS}")));
    assert_eq!(key(&r.data, "TargetPortalGroupTag").as_deref(), Some("1"));

    let mut c = Conn::new(chap_ctx());
    assert_eq!(
        fail(c.send(1, 3, true, &format!("{FIRST} {OPS}"))),
        status::AUTH_FAILURE
    );
}

#[test]
fn security_straight_to_full_feature() {
    let mut c = Conn::new(Ctx::default());
    let (r, o) = complete(c.send(0, 3, true, &format!("{FIRST} AuthMethod=None")));
    assert_eq!((r.csg, r.nsg), (0, 3));
    assert_eq!(key(&r.data, "MaxRecvDataSegmentLength").as_deref(), Some("262144"));
    assert_eq!(o.params.max_xmit_data_segment_length, 8192);
}

#[test]
fn target_waits_for_the_initiator_to_transit() {
    let mut c = Conn::new(Ctx::default());
    let r = respond(c.send(0, 1, false, &format!("{FIRST} AuthMethod=CHAP,None")));
    assert!(!r.transit, "initiator did not ask to transit");
    assert_eq!(key(&r.data, "AuthMethod").as_deref(), Some("None"));
    let r = respond(c.send(0, 1, true, ""));
    assert!(r.transit && r.nsg == 1);
    let r = respond(c.send(1, 3, false, OPS));
    assert!(!r.transit);
    let (r, _) = complete(c.send(1, 3, true, ""));
    assert_eq!(key(&r.data, "MaxRecvDataSegmentLength"), None, "declared already");
}

/// Runs a CHAP login the way open-iscsi does; returns the final action.
fn chap_login(c: &mut Conn, algs: &str, secret: &str, mutual: Option<(u8, Vec<u8>)>) -> LoginAction {
    let r = respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=CHAP,None")));
    assert!(!r.transit, "no transit before CHAP");
    assert_eq!(key(&r.data, "AuthMethod").as_deref(), Some("CHAP"));
    let r = respond(c.send(0, 1, true, &format!("CHAP_A={algs}")));
    assert!(!r.transit);
    let alg = ChapAlgorithm::from_code(key(&r.data, "CHAP_A").unwrap().parse().unwrap()).unwrap();
    let id: u8 = key(&r.data, "CHAP_I").unwrap().parse().unwrap();
    let challenge = decode_binary(&key(&r.data, "CHAP_C").unwrap()).unwrap();
    assert!(challenge.len() >= 16);
    let mut s = format!(
        "CHAP_N=alice CHAP_R={}",
        encode_hex(&alg.response(id, secret.as_bytes(), &challenge))
    );
    if let Some((i, ch)) = mutual {
        let ch = if ch.is_empty() { challenge.clone() } else { ch };
        s.push_str(&format!(" CHAP_I={i} CHAP_C={}", encode_hex(&ch)));
    }
    c.send(0, 1, true, &s)
}

#[test]
fn one_way_chap_md5() {
    let mut c = Conn::new(chap_ctx());
    let r = respond(chap_login(&mut c, "5", "alicesecret12", None));
    assert!(r.transit && r.nsg == 1);
    assert_eq!(key(&r.data, "CHAP_N"), None, "no mutual answer asked for");
    let (_, o) = complete(c.send(1, 3, true, OPS));
    assert_eq!(o.chap_user.as_deref(), Some("alice"));
}

#[test]
fn one_way_chap_wrong_secret() {
    let mut c = Conn::new(chap_ctx());
    assert_eq!(
        fail(chap_login(&mut c, "5", "wrongsecret!", None)),
        status::AUTH_FAILURE
    );
    assert!(c.m.is_over());
}

#[test]
fn chap_sha256_as_open_iscsi_offers() {
    let mut c = Conn::new(chap_ctx());
    let r = respond(chap_login(&mut c, "7,5", "alicesecret12", None));
    assert!(r.transit);
    complete(c.send(1, 3, true, OPS));
}

#[test]
fn mutual_chap() {
    let mut ctx = chap_ctx();
    ctx.outgoing = Some(ChapAccount::new("target-user", "targetsecret1"));
    let mut c = Conn::new(ctx);
    let my_challenge: Vec<u8> = (1..=16).collect();
    let r = respond(chap_login(
        &mut c,
        "5",
        "alicesecret12",
        Some((9, my_challenge.clone())),
    ));
    assert!(r.transit);
    assert_eq!(key(&r.data, "CHAP_N").as_deref(), Some("target-user"));
    // The initiator checks the target: MD5(9 || "targetsecret1" || challenge).
    let expect = ChapAlgorithm::Md5.response(9, b"targetsecret1", &my_challenge);
    assert_eq!(decode_binary(&key(&r.data, "CHAP_R").unwrap()).unwrap(), expect);
    complete(c.send(1, 3, true, OPS));
}

#[test]
fn mutual_chap_reflected_challenge_refused() {
    let mut ctx = chap_ctx();
    ctx.outgoing = Some(ChapAccount::new("target-user", "targetsecret1"));
    let mut c = Conn::new(ctx);
    // An empty challenge in the helper means "send the target's own challenge back".
    assert_eq!(
        fail(chap_login(&mut c, "5", "alicesecret12", Some((9, vec![])))),
        status::AUTH_FAILURE
    );
}

#[test]
fn mutual_chap_without_outgoing_account_fails() {
    let mut c = Conn::new(chap_ctx());
    assert_eq!(
        fail(chap_login(&mut c, "5", "alicesecret12", Some((9, vec![7; 16])))),
        status::AUTH_FAILURE
    );
}

#[test]
fn auth_method_selection() {
    // CHAP required, None offered alone.
    let mut c = Conn::new(chap_ctx());
    assert_eq!(
        fail(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None"))),
        status::AUTH_FAILURE
    );
    // CHAP required, initiator tries to leave security without AuthMethod.
    let mut c = Conn::new(chap_ctx());
    assert_eq!(fail(c.send(0, 1, true, FIRST)), status::AUTH_FAILURE);
    // CHAP required, initiator tries to leave before answering the challenge: target holds.
    let mut c = Conn::new(chap_ctx());
    respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=CHAP")));
    let r = respond(c.send(0, 1, true, "CHAP_A=5"));
    assert!(!r.transit);
    let r = respond(c.send(0, 1, true, ""));
    assert!(!r.transit);
    assert_eq!(
        fail(c.send(1, 3, true, OPS)),
        status::INITIATOR_ERROR,
        "still in security stage"
    );
    // No accounts, CHAP offered alone: nothing to check the initiator with.
    let mut c = Conn::new(Ctx::default());
    assert_eq!(
        fail(c.send(0, 1, true, &format!("{FIRST} AuthMethod=CHAP"))),
        status::AUTH_FAILURE
    );
    // Unknown CHAP-like keys are not CHAP.
    let mut c = Conn::new(chap_ctx());
    let r = respond(c.send(0, 1, false, &format!("{FIRST} AuthMethod=CHAP CHAP_X=1")));
    assert_eq!(key(&r.data, "CHAP_X").as_deref(), Some("NotUnderstood"));
    // Unknown methods are skipped.
    let mut c = Conn::new(chap_ctx());
    let r = respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=KRB5,SRP,CHAP")));
    assert_eq!(key(&r.data, "AuthMethod").as_deref(), Some("CHAP"));
    // AuthMethod and CHAP_A in one PDU.
    let mut c = Conn::new(chap_ctx());
    let r = respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=CHAP CHAP_A=5")));
    assert!(key(&r.data, "CHAP_C").is_some());
    // CHAP keys without CHAP agreed.
    let mut c = Conn::new(Ctx::default());
    assert_eq!(
        fail(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None CHAP_A=5"))),
        status::INITIATOR_ERROR
    );
}

#[test]
fn refusals() {
    let cases: Vec<(&str, Ctx, String, u16)> = vec![
        (
            "ACL by name",
            Ctx {
                denied: vec![INITIATOR.into()],
                ..Ctx::default()
            },
            FIRST.into(),
            status::AUTHORIZATION_FAILURE,
        ),
        (
            "ACL by address",
            Ctx {
                denied: vec!["192.0.2.7".into()],
                ..Ctx::default()
            },
            FIRST.into(),
            status::AUTHORIZATION_FAILURE,
        ),
        (
            "unknown target",
            Ctx::default(),
            FIRST.replace("disk1", "disk9"),
            status::NOT_FOUND,
        ),
        (
            "no InitiatorName",
            Ctx::default(),
            format!("TargetName={TARGET}"),
            status::MISSING_PARAMETER,
        ),
        (
            "empty InitiatorName",
            Ctx::default(),
            format!("InitiatorName= TargetName={TARGET}"),
            status::MISSING_PARAMETER,
        ),
        (
            "no TargetName",
            Ctx::default(),
            format!("InitiatorName={INITIATOR}"),
            status::MISSING_PARAMETER,
        ),
        (
            "bad session type",
            Ctx::default(),
            format!("InitiatorName={INITIATOR} SessionType=Weird"),
            status::SESSION_TYPE_NOT_SUPPORTED,
        ),
        (
            "duplicate key",
            Ctx::default(),
            format!("{FIRST} SessionType=Normal"),
            status::INITIATOR_ERROR,
        ),
        (
            "target-only key",
            Ctx::default(),
            format!("{FIRST} TargetAlias=x"),
            status::INITIATOR_ERROR,
        ),
    ];
    for (name, ctx, s, want) in cases {
        let mut c = Conn::new(ctx);
        let got = fail(c.send(0, 1, true, &s));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn unavailable_and_moved_targets() {
    let mut c = Conn::new(Ctx {
        state: Some(TargetState::Unavailable),
        ..Ctx::default()
    });
    assert_eq!(fail(c.send(0, 1, true, FIRST)), status::SERVICE_UNAVAILABLE);

    for (permanent, code) in [(false, status::MOVED_TEMPORARILY), (true, status::MOVED_PERMANENTLY)] {
        let address = "[fd00::2]:3260,1".to_string();
        let mut c = Conn::new(Ctx {
            state: Some(TargetState::Moved { address, permanent }),
            ..chap_ctx()
        });
        let LoginAction::Redirect(r) = c.send(0, 1, true, &format!("{FIRST} AuthMethod=CHAP")) else {
            panic!("expected a redirection")
        };
        assert_eq!(r.status(), code);
        assert!(!r.transit && r.tsih == 0);
        assert_eq!(key(&r.data, "TargetAddress").as_deref(), Some("[fd00::2]:3260,1"));
        assert!(c.m.is_over());
    }
    // Discovery sessions are not redirected.
    let moved = TargetState::Moved {
        address: "10.0.0.2:3260,1".into(),
        permanent: false,
    };
    let mut c = Conn::new(Ctx {
        state: Some(moved),
        ..Ctx::default()
    });
    let first = format!("InitiatorName={INITIATOR} SessionType=Discovery AuthMethod=None");
    respond(c.send(0, 1, true, &first));
}

#[test]
fn version_and_tsih() {
    let mut c = Conn::new(Ctx::default());
    let mut req = LoginRequest {
        transit: true,
        cont: false,
        csg: 0,
        nsg: 1,
        version_max: 2,
        version_min: 1,
        isid: ISID,
        tsih: 0,
        itt: 5,
        cid: 0,
        cmdsn: 0,
        exp_statsn: 0,
        data: text(FIRST),
    };
    assert_eq!(fail(c.m.handle(&mut c.ctx, &req)), status::UNSUPPORTED_VERSION);

    req.version_min = 0;
    req.tsih = 77;
    let mut c = Conn::new(Ctx::default());
    assert_eq!(fail(c.m.handle(&mut c.ctx, &req)), status::SESSION_DOES_NOT_EXIST);
    let mut c = Conn::new(Ctx {
        sessions: vec![77],
        ..Ctx::default()
    });
    assert_eq!(fail(c.m.handle(&mut c.ctx, &req)), status::TOO_MANY_CONNECTIONS);

    // No TSIH left.
    let mut c = Conn::new(Ctx {
        next_tsih: u16::MAX,
        ..Ctx::default()
    });
    assert_eq!(fail(c.send(1, 3, true, FIRST)), status::OUT_OF_RESOURCES);
}

#[test]
fn stage_rules() {
    type Step = (u8, u8, bool, bool);
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("start in full feature", vec![(3, 3, true, false)]),
        ("start in reserved stage", vec![(2, 3, true, false)]),
        ("T and C", vec![(0, 1, true, true)]),
        ("back to security", vec![(0, 1, true, false), (1, 0, true, false)]),
        ("transit to itself", vec![(0, 1, true, false), (1, 1, true, false)]),
        ("transit to reserved", vec![(0, 2, true, false)]),
        ("wrong CSG", vec![(0, 1, false, false), (1, 3, true, false)]),
    ];
    for (name, steps) in cases {
        let mut c = Conn::new(Ctx::default());
        let n = steps.len();
        for (i, (csg, nsg, t, cont)) in steps.into_iter().enumerate() {
            let data = if i == 0 {
                text(&format!("{FIRST} AuthMethod=None"))
            } else {
                Vec::new()
            };
            let a = c.raw(csg, nsg, t, cont, data);
            if i + 1 == n {
                assert_eq!(fail(a), status::INITIATOR_ERROR, "{name}");
            } else {
                respond(a);
            }
        }
    }
    // ISID must not change.
    let mut c = Conn::new(Ctx::default());
    respond(c.send(0, 1, false, &format!("{FIRST} AuthMethod=None")));
    c.isid[5] ^= 1;
    assert_eq!(fail(c.send(0, 1, true, "")), status::INITIATOR_ERROR);
    // Security keys in the operational stage.
    let mut c = Conn::new(Ctx::default());
    respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None")));
    assert_eq!(fail(c.send(1, 3, true, "CHAP_A=5")), status::INITIATOR_ERROR);
    // Names cannot change midway.
    let mut c = Conn::new(Ctx::default());
    respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None")));
    assert_eq!(
        fail(c.send(1, 3, true, "InitiatorName=iqn.other")),
        status::INITIATOR_ERROR
    );
    let mut c = Conn::new(Ctx::default());
    respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None")));
    complete(c.send(1, 3, true, &format!("InitiatorName={INITIATOR}")));
}

#[test]
fn discovery_sessions() {
    let first = format!("InitiatorName={INITIATOR} SessionType=Discovery");
    // Without discovery CHAP.
    let mut c = Conn::new(chap_ctx());
    let r = respond(c.send(0, 1, true, &format!("{first} AuthMethod=CHAP,None")));
    assert_eq!(
        key(&r.data, "AuthMethod").as_deref(),
        Some("None"),
        "target CHAP is not discovery CHAP"
    );
    assert_eq!(key(&r.data, "TargetPortalGroupTag"), None);
    let r = respond(c.send(1, 3, false, "MaxRecvDataSegmentLength=32768 InitialR2T=No"));
    assert_eq!(key(&r.data, "InitialR2T").as_deref(), Some("Irrelevant"));
    let (_, o) = complete(c.send(1, 3, true, ""));
    assert_eq!(o.session_type, SessionKind::Discovery);
    assert_eq!(o.params.max_xmit_data_segment_length, 32768);

    // With discovery CHAP: None alone fails, CHAP works.
    let disc = || Ctx {
        disc_incoming: vec![ChapAccount::new("alice", "alicesecret12")],
        ..Ctx::default()
    };
    let mut c = Conn::new(disc());
    assert_eq!(
        fail(c.send(0, 1, true, &format!("{first} AuthMethod=None"))),
        status::AUTH_FAILURE
    );
    let mut c = Conn::new(disc());
    assert_eq!(fail(c.send(1, 3, true, &first)), status::AUTH_FAILURE);
    let mut c = Conn::new(disc());
    respond(c.send(0, 1, true, &format!("{first} AuthMethod=CHAP,None")));
    let r = respond(c.send(0, 1, true, "CHAP_A=5"));
    let id: u8 = key(&r.data, "CHAP_I").unwrap().parse().unwrap();
    let ch = decode_binary(&key(&r.data, "CHAP_C").unwrap()).unwrap();
    let resp = encode_hex(&ChapAlgorithm::Md5.response(id, b"alicesecret12", &ch));
    let r = respond(c.send(0, 1, true, &format!("CHAP_N=alice CHAP_R={resp}")));
    assert!(r.transit);
    let (_, o) = complete(c.send(1, 3, true, ""));
    assert_eq!(o.session_type, SessionKind::Discovery);
    assert_eq!(o.chap_user.as_deref(), Some("alice"));
}

#[test]
fn target_offers_that_need_answers() {
    let ctx = Ctx {
        params: TargetParamConfig {
            immediate_data: false,
            ..TargetParamConfig::default()
        },
        ..Ctx::default()
    };
    let mut c = Conn::new(ctx);
    respond(c.send(0, 1, true, &format!("{FIRST} AuthMethod=None")));
    let r = respond(c.send(1, 3, true, "MaxRecvDataSegmentLength=65536"));
    assert!(!r.transit, "the target waits for the answer to its offer");
    assert_eq!(key(&r.data, "ImmediateData").as_deref(), Some("No"));
    let (r, o) = complete(c.send(1, 3, true, "ImmediateData=No"));
    assert!(r.data.is_empty());
    assert!(!o.params.immediate_data);

    // Going straight from security to full feature: the target stops in operational.
    let ctx = Ctx {
        params: TargetParamConfig {
            header_digest: DigestPolicy::Crc32cOnly,
            ..TargetParamConfig::default()
        },
        ..Ctx::default()
    };
    let mut c = Conn::new(ctx);
    let r = respond(c.send(0, 3, true, &format!("{FIRST} AuthMethod=None")));
    assert!(r.transit && r.nsg == 1);
    assert_eq!(key(&r.data, "HeaderDigest").as_deref(), Some("CRC32C"));
    let (_, o) = complete(c.send(1, 3, true, "HeaderDigest=CRC32C"));
    assert!(o.params.header_digest);
}

#[test]
fn continued_text_both_ways() {
    let mut c = Conn::new(Ctx::default());
    // About 24 KiB of private keys: the request spans three PDUs, and so does our answer
    // (each gets NotUnderstood).
    let mut s = format!("{FIRST} AuthMethod=None");
    for i in 0..300 {
        let k = format!("X-org.example.{i:04}-");
        s.push_str(&format!(" {k}{}=1", "k".repeat(MAX_KEY_LEN - k.len())));
    }
    let data = text(&s);
    assert!(data.len() > 2 * LOGIN_MAX_SEGMENT);
    let chunks = split_text(&data, LOGIN_MAX_SEGMENT);
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        let r = respond(c.raw(0, 1, last, !last, chunk));
        if !last {
            // Acknowledged with an empty response, no transit.
            assert!(r.data.is_empty() && !r.transit && !r.cont);
            continue;
        }
        // The answer: C set while more follows, T only on the last part.
        let mut answer = r.data.clone();
        let mut r = r;
        let mut parts = 1;
        while r.cont {
            assert!(!r.transit);
            assert_eq!(r.data.len(), LOGIN_MAX_SEGMENT);
            r = respond(c.raw(0, 1, true, false, Vec::new()));
            answer.extend_from_slice(&r.data);
            parts += 1;
        }
        assert!(parts >= 3, "{parts}");
        assert!(r.transit && r.nsg == 1);
        let answer = keys(&answer);
        assert_eq!(answer.iter().filter(|(_, v)| v == "NotUnderstood").count(), 300);
        assert!(answer.contains(&("AuthMethod".into(), "None".into())));
    }
    complete(c.send(1, 3, true, OPS));

    // A continued first request keeps the stage it started in.
    let mut c = Conn::new(chap_ctx());
    let first = text(&format!("{FIRST} AuthMethod=CHAP"));
    respond(c.raw(0, 1, false, true, first[..10].to_vec()));
    assert_eq!(
        fail(c.raw(1, 3, true, false, first[10..].to_vec())),
        status::INITIATOR_ERROR
    );

    // Text while the target's answer continues is an error.
    let mut c = Conn::new(Ctx::default());
    respond(c.raw(0, 1, true, false, data.clone()));
    assert_eq!(fail(c.send(0, 1, true, "X-a=1")), status::INITIATOR_ERROR);
}

#[test]
fn randomized_logins_never_panic_or_skip_auth() {
    let mut rng = StdRng::seed_from_u64(0x1061);
    let mut completions = 0;
    let mut auth_completions = 0;
    for round in 0..3000 {
        let auth = round % 3 != 0;
        let ctx = if auth { chap_ctx() } else { Ctx::default() };
        let mut c = Conn::new(ctx);
        c.m = LoginMachine::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Box::new(StdRng::seed_from_u64(round)));
        let mut challenge: Option<(ChapAlgorithm, u8, Vec<u8>)> = None;
        let mut proved = false;
        // A right CHAP_R sent in a continued PDU counts once the text is complete.
        let mut good_in_buffer = false;
        // Mostly the happy path (first keys, CHAP_A, CHAP_N/R, operational keys), mutated.
        let script: [(u8, u8, u32); 4] = [(0, 1, 1), (0, 1, 3), (0, 1, 4), (1, 3, 5)];
        let mut next = 0;
        for _ in 0..12 {
            let scripted = next < script.len() && rng.gen_bool(0.75);
            let (csg, nsg, t, cont) = if scripted {
                (script[next].0, script[next].1, true, false)
            } else if rng.gen_bool(0.8) {
                let csg = if rng.gen_bool(0.6) { 0 } else { 1 };
                (
                    csg,
                    if csg == 0 && rng.gen_bool(0.5) { 1 } else { 3 },
                    rng.gen_bool(0.7),
                    rng.gen_bool(0.05),
                )
            } else {
                (rng.gen_range(0..4), rng.gen_range(0..4), rng.gen(), rng.gen())
            };
            let choice = if scripted { script[next].2 } else { rng.gen_range(0..10) };
            next += scripted as usize;
            let data = match choice {
                0 => FIRST.to_string(),
                1 => format!("{FIRST} AuthMethod=CHAP,None"),
                2 => format!("{FIRST} AuthMethod=None"),
                3 => "CHAP_A=7,5".into(),
                4 => match &challenge {
                    Some((alg, id, ch)) => {
                        let good = rng.gen_bool(0.8);
                        let secret: &[u8] = if good { b"alicesecret12" } else { b"alicesecret13" };
                        good_in_buffer |= good;
                        format!("CHAP_N=alice CHAP_R={}", encode_hex(&alg.response(*id, secret, ch)))
                    }
                    None => "CHAP_N=alice CHAP_R=0x00".into(),
                },
                5 => OPS.into(),
                6 => String::new(),
                7 => "InitialR2T=No MaxBurstLength=12 X-y=z".into(),
                8 => "CHAP_N=alice CHAP_R=0xffff CHAP_I=1 CHAP_C=0x00".into(),
                _ => {
                    // Random bytes, sometimes with a NUL and '='.
                    let n = rng.gen_range(0..40);
                    let bytes: Vec<u8> = (0..n)
                        .map(|_| *b"ab=\0\xffX-"[..].get(rng.gen_range(0..7)).unwrap())
                        .collect();
                    let action = c.raw(csg, nsg, t, cont, bytes);
                    if let LoginAction::Complete(_, o) = &action {
                        assert!(!auth || proved, "round {round}: completed without CHAP");
                        assert!(!auth || o.chap_user.is_some());
                        completions += 1;
                    }
                    if c.m.is_over() {
                        break;
                    }
                    continue;
                }
            };
            let action = c.raw(csg, nsg, t, cont, text(&data));
            match &action {
                LoginAction::Respond(r) => {
                    if let (Some(a), Some(i), Some(ch)) =
                        (key(&r.data, "CHAP_A"), key(&r.data, "CHAP_I"), key(&r.data, "CHAP_C"))
                    {
                        let alg = ChapAlgorithm::from_code(a.parse().unwrap()).unwrap();
                        challenge = Some((alg, i.parse().unwrap(), decode_binary(&ch).unwrap()));
                    }
                    if good_in_buffer && !cont {
                        proved = true;
                    }
                }
                LoginAction::Complete(_, o) => {
                    if good_in_buffer && !cont {
                        proved = true;
                    }
                    assert!(!auth || proved, "round {round}: completed without CHAP");
                    assert!(!auth || o.chap_user.is_some());
                    completions += 1;
                    auth_completions += auth as u32;
                }
                LoginAction::Fail(r, _) => assert_ne!(r.status(), 0),
                LoginAction::Redirect(_) => panic!("no redirection configured"),
            }
            if c.m.is_over() {
                break;
            }
        }
    }
    assert!(
        completions > 10,
        "the random logins should sometimes succeed ({completions})"
    );
    assert!(auth_completions > 10, "and sometimes through CHAP ({auth_completions})");
}

#[test]
fn send_targets_text() {
    let targets = vec![
        VisibleTarget {
            name: "iqn.2026-01.org.hablock:a".into(),
            portals: vec![
                PortalInfo {
                    addr: "127.0.0.1:3260".parse().unwrap(),
                    tpgt: 1,
                },
                PortalInfo {
                    addr: "[fe80::1]:3261".parse().unwrap(),
                    tpgt: 2,
                },
            ],
        },
        VisibleTarget {
            name: "iqn.2026-01.org.hablock:b".into(),
            portals: vec![PortalInfo {
                addr: "10.0.0.5:3260".parse().unwrap(),
                tpgt: 1,
            }],
        },
    ];
    let all = send_targets_answer(&targets, &SendTargetsQuery::parse("All"), None);
    assert_eq!(
        all,
        b"TargetName=iqn.2026-01.org.hablock:a\0TargetAddress=127.0.0.1:3260,1\0TargetAddress=[fe80::1]:3261,2\0\
          TargetName=iqn.2026-01.org.hablock:b\0TargetAddress=10.0.0.5:3260,1\0"
            .to_vec()
    );
    let one = send_targets_answer(&targets, &SendTargetsQuery::parse("iqn.2026-01.org.hablock:b"), None);
    assert_eq!(
        one,
        b"TargetName=iqn.2026-01.org.hablock:b\0TargetAddress=10.0.0.5:3260,1\0".to_vec()
    );
    let none = send_targets_answer(&targets, &SendTargetsQuery::parse("iqn.nope"), None);
    assert!(none.is_empty());
    // In a normal session: only its own target, whatever the query.
    let own = Some("iqn.2026-01.org.hablock:b");
    assert_eq!(send_targets_answer(&targets, &SendTargetsQuery::parse(""), own), one);
    assert_eq!(send_targets_answer(&targets, &SendTargetsQuery::All, own), one);
    assert!(send_targets_answer(&targets, &SendTargetsQuery::parse(""), None).is_empty());
}
