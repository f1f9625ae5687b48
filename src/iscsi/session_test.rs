use super::*;
use crate::iscsi::pdu::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn nexus() -> Nexus {
    Nexus {
        initiator_name: "iqn.2026-01.test:init".into(),
        isid: [0x80, 0, 0, 0, 0, 1],
        tpgt: 1,
    }
}

fn session(params: SessionParams, window: u32) -> Session {
    Session::new(
        params,
        nexus(),
        SessionConfig {
            exp_cmdsn: 1,
            statsn: 100,
            cmd_window: window,
            cid: 1,
            ..Default::default()
        },
    )
}

fn read_cmd(itt: u32, cmdsn: u32, len: u32) -> Pdu {
    Pdu::ScsiCommand(ScsiCommand {
        final_: true,
        read: true,
        attr: 1,
        itt,
        cmdsn,
        expected_data_len: len,
        cdb: vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ..Default::default()
    })
}

fn write_cmd(itt: u32, cmdsn: u32, len: u32, imm: Vec<u8>, final_: bool) -> Pdu {
    Pdu::ScsiCommand(ScsiCommand {
        final_,
        write: true,
        attr: 1,
        itt,
        cmdsn,
        expected_data_len: len,
        cdb: vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        data: imm,
        ..Default::default()
    })
}

fn data_out(itt: u32, ttt: u32, datasn: u32, offset: u32, data: Vec<u8>, final_: bool) -> Pdu {
    Pdu::DataOut(DataOut {
        final_,
        itt,
        ttt,
        datasn,
        buffer_offset: offset,
        data,
        ..Default::default()
    })
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn executes(acts: &[Action]) -> Vec<TaskId> {
    acts.iter()
        .filter_map(|a| {
            if let Action::Execute { id, .. } = a {
                Some(*id)
            } else {
                None
            }
        })
        .collect()
}

fn sent(acts: &[Action]) -> Vec<&Pdu> {
    acts.iter()
        .filter_map(|a| if let Action::Send(p) = a { Some(p) } else { None })
        .collect()
}

fn r2ts(acts: &[Action]) -> Vec<R2t> {
    sent(acts)
        .into_iter()
        .filter_map(|p| if let Pdu::R2t(r) = p { Some(r.clone()) } else { None })
        .collect()
}

fn good(data: Option<Vec<u8>>) -> ScsiOutcome {
    ScsiOutcome {
        status: status::GOOD,
        sense: vec![],
        data_in: data.map(|d| IoBuf::copy_from(&d)),
        write_len: None,
    }
}

#[test]
fn serial_arithmetic() {
    assert!(sn_lt(1, 2));
    assert!(sn_lt(u32::MAX, 0));
    assert!(!sn_lt(0, u32::MAX));
    assert!(sn_in_window(0, u32::MAX - 1, 5));
    assert!(!sn_in_window(6, u32::MAX - 1, 5));
    assert!(!sn_in_window(3, 3, 2), "closed window");
}

#[test]
fn read_is_split_by_segment_and_burst_with_status_in_the_last_data_in() {
    let params = SessionParams {
        max_xmit_data_segment_length: 8192,
        max_burst_length: 16384,
        ..Default::default()
    };
    let mut s = session(params, 8);
    let acts = s.on_pdu(read_cmd(5, 1, 40_000));
    let ids = executes(&acts);
    assert_eq!(ids.len(), 1);
    if let Action::Execute { task, .. } = &acts[0] {
        assert_eq!(task.expected_data_in, 40_000);
        assert!(task.data_out.is_none());
        assert_eq!(task.cdb[0], 0x28);
    }
    // The device returns less than expected: underflow.
    let payload = pattern(39_000);
    let acts = s.on_scsi_done(ids[0], good(Some(payload.clone())));
    let mut got = Vec::new();
    let mut shape = Vec::new();
    for a in &acts {
        let Action::SendDataIn {
            header,
            data,
            offset,
            len,
        } = a
        else {
            panic!("only Data-In expected: {a:?}")
        };
        assert_eq!(header.buffer_offset as usize, *offset);
        assert_eq!(header.itt, 5);
        got.extend_from_slice(&data.as_slice()[*offset..offset + len]);
        shape.push((header.datasn, *offset, *len, header.final_, header.has_status));
    }
    assert_eq!(got, payload);
    assert_eq!(
        shape,
        vec![
            (0, 0, 8192, false, false),
            (1, 8192, 8192, true, false),
            (2, 16384, 8192, false, false),
            (3, 24576, 8192, true, false),
            (4, 32768, 6232, true, true),
        ]
    );
    let Action::SendDataIn { header, .. } = acts.last().unwrap() else {
        unreachable!()
    };
    assert!(header.underflow && !header.overflow);
    assert_eq!(header.residual, 1000);
    assert_eq!(header.statsn, 100);
    assert_eq!(s.statsn(), 101);
    assert_eq!(s.tasks_in_flight(), 0);
}

#[test]
fn overflow_truncates_and_sense_goes_in_a_scsi_response() {
    let mut s = session(SessionParams::default(), 8);
    let acts = s.on_pdu(read_cmd(1, 1, 100));
    let id = executes(&acts)[0];
    let acts = s.on_scsi_done(
        id,
        ScsiOutcome {
            status: status::CHECK_CONDITION,
            sense: vec![0x70, 0, 5],
            data_in: Some(IoBuf::zeroed(300)),
            write_len: None,
        },
    );
    assert_eq!(acts.len(), 2);
    let Action::SendDataIn { header, len, .. } = &acts[0] else {
        panic!()
    };
    assert_eq!(*len, 100);
    assert!(!header.has_status && header.final_);
    let Action::Send(Pdu::ScsiResponse(r)) = &acts[1] else {
        panic!()
    };
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert!(r.overflow);
    assert_eq!(r.residual, 200);
    assert_eq!(r.exp_datasn, 1);
    assert_eq!(r.data, vec![0, 3, 0x70, 0, 5]);
    assert_eq!(r.statsn, 100);
}

#[test]
fn write_with_immediate_data_and_r2t_bursts() {
    let params = SessionParams {
        immediate_data: true,
        initial_r2t: true,
        first_burst_length: 65536,
        max_burst_length: 16384,
        max_outstanding_r2t: 2,
        ..Default::default()
    };
    let mut s = session(params, 8);
    let payload = pattern(65536);
    let acts = s.on_pdu(write_cmd(9, 1, 65536, payload[..8192].to_vec(), true));
    let r = r2ts(&acts);
    assert_eq!(r.len(), 2, "MaxOutstandingR2T");
    assert_eq!((r[0].r2tsn, r[0].buffer_offset, r[0].desired_len), (0, 8192, 16384));
    assert_eq!((r[1].r2tsn, r[1].buffer_offset, r[1].desired_len), (1, 24576, 16384));
    assert!(executes(&acts).is_empty());
    let mut pending: VecDeque<R2t> = r.into();
    let mut done = None;
    while let Some(r2t) = pending.pop_front() {
        let mut off = r2t.buffer_offset;
        let end = off + r2t.desired_len;
        let mut sn = 0;
        while off < end {
            let n = 8192.min(end - off);
            let last = off + n == end;
            let acts = s.on_pdu(data_out(
                9,
                r2t.ttt,
                sn,
                off,
                payload[off as usize..(off + n) as usize].to_vec(),
                last,
            ));
            assert!(!sent(&acts).iter().any(|p| matches!(p, Pdu::Reject(_))), "{acts:?}");
            pending.extend(r2ts(&acts));
            if let Some(Action::Execute { id, task }) = acts.iter().find(|a| matches!(a, Action::Execute { .. })) {
                assert_eq!(task.data_out.as_ref().unwrap().as_slice(), &payload[..]);
                done = Some(*id);
            }
            off += n;
            sn += 1;
        }
    }
    let id = done.expect("executed once all data was in");
    let acts = s.on_scsi_done(id, good(None));
    let Action::Send(Pdu::ScsiResponse(r)) = &acts[0] else {
        panic!()
    };
    assert_eq!((r.status, r.residual, r.exp_datasn), (0, 0, 4));
}

#[test]
fn unsolicited_data_out_when_initial_r2t_is_no() {
    let params = SessionParams {
        immediate_data: false,
        initial_r2t: false,
        first_burst_length: 8192,
        max_burst_length: 262144,
        ..Default::default()
    };
    let mut s = session(params, 8);
    let payload = pattern(20_000);
    let acts = s.on_pdu(write_cmd(3, 1, 20_000, vec![], false));
    assert!(acts.is_empty(), "waits for the unsolicited burst: {acts:?}");
    let acts = s.on_pdu(data_out(3, RESERVED_TAG, 0, 0, payload[..4096].to_vec(), false));
    assert!(acts.is_empty());
    let acts = s.on_pdu(data_out(3, RESERVED_TAG, 1, 4096, payload[4096..8192].to_vec(), true));
    let r = r2ts(&acts);
    assert_eq!((r[0].buffer_offset, r[0].desired_len), (8192, 20_000 - 8192));
    let acts = s.on_pdu(data_out(3, r[0].ttt, 0, 8192, payload[8192..].to_vec(), true));
    let Some(Action::Execute { task, .. }) = acts.first() else {
        panic!("{acts:?}")
    };
    assert_eq!(task.data_out.as_ref().unwrap().as_slice(), &payload[..]);
    // Immediate data is refused when ImmediateData=No.
    let acts = s.on_pdu(write_cmd(4, 2, 512, vec![0; 512], true));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::Reject(Reject {
            reason: reject_reason::PROTOCOL_ERROR,
            ..
        })]
    ));
}

#[test]
fn data_out_violations_are_rejected() {
    let mut s = session(
        SessionParams {
            max_burst_length: 8192,
            ..Default::default()
        },
        8,
    );
    let acts = s.on_pdu(write_cmd(1, 1, 8192, vec![], true));
    let r = r2ts(&acts)[0].clone();
    let rej = |acts: &[Action]| matches!(sent(acts)[..], [Pdu::Reject(_)]);
    assert!(
        rej(&s.on_pdu(data_out(1, r.ttt, 0, 4, vec![0; 4], false))),
        "wrong offset"
    );
    assert!(
        rej(&s.on_pdu(data_out(1, r.ttt, 3, 0, vec![0; 4], false))),
        "wrong DataSN"
    );
    assert!(
        rej(&s.on_pdu(data_out(1, r.ttt + 9, 0, 0, vec![0; 4], false))),
        "unknown TTT"
    );
    assert!(
        rej(&s.on_pdu(data_out(1, r.ttt, 0, 0, vec![0; 4], true))),
        "F before the burst is full"
    );
    assert!(
        rej(&s.on_pdu(data_out(77, r.ttt, 0, 0, vec![0; 4], false))),
        "unknown ITT"
    );
    assert!(
        rej(&s.on_pdu(data_out(1, RESERVED_TAG, 0, 0, vec![0; 4], false))),
        "unsolicited with InitialR2T"
    );
    // The right PDU still completes the task.
    let acts = s.on_pdu(data_out(1, r.ttt, 0, 0, vec![1; 8192], true));
    assert_eq!(executes(&acts).len(), 1);
}

#[test]
fn out_of_order_cmdsn_is_held_until_the_gap_fills() {
    let mut s = session(SessionParams::default(), 8);
    assert!(s.on_pdu(read_cmd(3, 3, 512)).is_empty());
    assert!(s.on_pdu(read_cmd(2, 2, 512)).is_empty());
    assert_eq!(s.exp_cmdsn(), 1);
    assert_eq!(s.tasks_in_flight(), 2);
    let acts = s.on_pdu(read_cmd(1, 1, 512));
    assert_eq!(executes(&acts).len(), 3);
    assert_eq!(s.exp_cmdsn(), 4);
}

#[test]
fn cmdsn_order_delivery() {
    // Ids are handed out on arrival: cmd 3 got id 1, cmd 2 got id 2, cmd 1 gets id 3; delivery is by CmdSN.
    let mut s = session(SessionParams::default(), 8);
    s.on_pdu(read_cmd(30, 3, 512));
    s.on_pdu(read_cmd(20, 2, 512));
    let acts = s.on_pdu(read_cmd(10, 1, 512));
    assert_eq!(executes(&acts), vec![3, 2, 1]);
    assert_eq!(s.exp_cmdsn(), 4);
}

#[test]
fn window_is_enforced_and_max_cmdsn_never_goes_back() {
    let mut s = session(SessionParams::default(), 4);
    assert_eq!(s.max_cmdsn(), 4);
    let mut ids = Vec::new();
    for sn in 1..=4 {
        ids.extend(executes(&s.on_pdu(read_cmd(sn, sn, 0))));
    }
    assert_eq!(ids.len(), 4);
    assert_eq!(s.exp_cmdsn(), 5);
    assert_eq!(s.max_cmdsn(), 4, "window closed while 4 are in flight");
    // Out of window: silently ignored, never executed.
    assert!(s.on_pdu(read_cmd(50, 5, 0)).is_empty());
    assert!(s.on_pdu(read_cmd(51, 0, 0)).is_empty(), "old CmdSN");
    let acts = s.on_scsi_done(ids[0], good(None));
    let Action::Send(Pdu::ScsiResponse(r)) = &acts[0] else {
        panic!()
    };
    assert_eq!((r.exp_cmdsn, r.max_cmdsn), (5, 5));
    assert_eq!(executes(&s.on_pdu(read_cmd(52, 5, 0))).len(), 1);
    // Immediate commands bypass the window.
    let mut imm = read_cmd(60, 6, 0);
    if let Pdu::ScsiCommand(c) = &mut imm {
        c.immediate = true;
    }
    assert_eq!(executes(&s.on_pdu(imm)).len(), 1);
}

#[test]
fn abort_task_in_flight_never_answers_it() {
    let mut s = session(SessionParams::default(), 8);
    let id = executes(&s.on_pdu(read_cmd(7, 1, 512)))[0];
    let acts = s.on_pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        itt: 8,
        rtt: 7,
        cmdsn: 2,
        ref_cmdsn: 1,
        ..Default::default()
    }));
    assert!(matches!(&acts[0], Action::Abort { ids } if ids == &vec![id]));
    let Action::Send(Pdu::TaskMgmtResponse(r)) = &acts[1] else {
        panic!("{acts:?}")
    };
    assert_eq!((r.response, r.itt), (tmf::RESP_COMPLETE, 8));
    assert!(
        s.on_scsi_done(id, good(Some(vec![0; 512]))).is_empty(),
        "aborted: no response"
    );
    // Unknown task, RefCmdSN already behind ExpCmdSN: task does not exist.
    let acts = s.on_pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        itt: 9,
        rtt: 70,
        cmdsn: 2,
        ref_cmdsn: 1,
        ..Default::default()
    }));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::TaskMgmtResponse(TaskMgmtResponse { response: 1, .. })]
    ));
    // Unknown task whose CmdSN is in the window and before the TMF's: counted as received.
    let acts = s.on_pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        itt: 10,
        rtt: 71,
        cmdsn: 3,
        ref_cmdsn: 2,
        ..Default::default()
    }));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::TaskMgmtResponse(TaskMgmtResponse { response: 0, .. })]
    ));
    assert_eq!(s.exp_cmdsn(), 3);
    assert!(
        s.on_pdu(read_cmd(71, 2, 0)).is_empty(),
        "the aborted command is ignored when it arrives late"
    );
    // Unsupported and reset functions.
    let tm = |f, itt| {
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: f,
            itt,
            lun: 0,
            ..Default::default()
        })
    };
    let acts = s.on_pdu(tm(tmf::CLEAR_ACA, 11));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::TaskMgmtResponse(TaskMgmtResponse { response: 5, .. })]
    ));
    let id = executes(&s.on_pdu(read_cmd(12, 3, 512)))[0];
    let acts = s.on_pdu(tm(tmf::LOGICAL_UNIT_RESET, 13));
    assert!(matches!(&acts[0], Action::Abort { ids } if ids == &vec![id]));
    assert!(matches!(&acts[1], Action::LunReset { lun: 0 }));
    let acts = s.on_pdu(tm(tmf::TARGET_COLD_RESET, 14));
    assert!(matches!(acts.last(), Some(Action::Close(CloseReason::ColdReset))));
}

#[test]
fn logout_waits_for_running_tasks() {
    let mut s = session(SessionParams::default(), 8);
    let id = executes(&s.on_pdu(read_cmd(1, 1, 512)))[0];
    s.on_pdu(write_cmd(2, 2, 4096, vec![], true)); // waiting for Data-Out: will be aborted
    assert_eq!(s.tasks_in_flight(), 2);
    let acts = s.on_pdu(Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 3,
        cid: 1,
        cmdsn: 3,
        exp_statsn: 0,
    }));
    assert!(sent(&acts).is_empty(), "{acts:?}");
    assert_eq!(s.tasks_in_flight(), 1);
    let acts = s.on_scsi_done(id, good(Some(vec![1; 512])));
    assert!(matches!(&acts[0], Action::SendDataIn { header, .. } if header.has_status));
    let Action::Send(Pdu::LogoutResponse(l)) = &acts[1] else {
        panic!("{acts:?}")
    };
    assert_eq!((l.response, l.itt), (0, 3));
    assert!(matches!(acts[2], Action::LogoutComplete { close_session: true }));
    assert!(s.is_closed());
}

#[test]
fn logout_of_another_cid_and_recovery_removal() {
    let mut s = session(SessionParams::default(), 8);
    let lo = |reason, cid| {
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason,
            itt: 3,
            cid,
            cmdsn: 1,
            exp_statsn: 0,
        })
    };
    assert!(matches!(
        sent(&s.on_pdu(lo(1, 9)))[..],
        [Pdu::LogoutResponse(LogoutResponse { response: 1, .. })]
    ));
    assert!(matches!(
        sent(&s.on_pdu(lo(2, 1)))[..],
        [Pdu::LogoutResponse(LogoutResponse { response: 2, .. })]
    ));
    let acts = s.on_pdu(lo(1, 1));
    assert!(matches!(
        acts.last(),
        Some(Action::LogoutComplete { close_session: false })
    ));
}

#[test]
fn digest_errors() {
    let mut s = session(
        SessionParams {
            max_burst_length: 8192,
            ..Default::default()
        },
        8,
    );
    let r = r2ts(&s.on_pdu(write_cmd(1, 1, 8192, vec![], true)))[0].clone();
    let bad = Pdu::DataOut(DataOut {
        final_: false,
        itt: 1,
        ttt: r.ttt,
        datasn: 0,
        buffer_offset: 0,
        ..Default::default()
    });
    let mut bhs = *bad.encode_bhs_ahs(4096).0;
    bhs[0] = 0x05;
    let acts = s.on_frame_error(PduError::DataDigest {
        expected: 1,
        got: 2,
        bhs: Box::new(bhs),
        pdu: Box::new(bad),
    });
    let [Pdu::Reject(rj)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(rj.reason, reject_reason::DATA_DIGEST_ERROR);
    assert_eq!(rj.data, bhs.to_vec());
    // The rest of the data arrives; the task fails with a CRC-error sense instead of executing.
    let acts = s.on_pdu(data_out(1, r.ttt, 1, 4096, vec![0; 4096], true));
    assert!(executes(&acts).is_empty());
    let [Pdu::ScsiResponse(resp)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(resp.status, status::CHECK_CONDITION);
    assert_eq!(
        (resp.data[2 + 2], resp.data[2 + 12], resp.data[2 + 13]),
        (0x0b, 0x47, 0x05)
    );
    // A header digest error closes the connection.
    let acts = s.on_frame_error(PduError::HeaderDigest { expected: 1, got: 2 });
    assert!(matches!(acts[..], [Action::Close(CloseReason::Protocol(_))]));
    assert!(s.on_pdu(read_cmd(5, 2, 0)).is_empty(), "closed");
}

#[test]
fn nop_echo_and_target_ping() {
    let mut s = Session::new(
        SessionParams::default(),
        nexus(),
        SessionConfig {
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    );
    let acts = s.on_pdu(Pdu::NopOut(NopOut {
        itt: 4,
        ttt: RESERVED_TAG,
        cmdsn: 1,
        data: b"hello".to_vec(),
        ..Default::default()
    }));
    let [Pdu::NopIn(n)] = sent(&acts)[..] else { panic!() };
    assert_eq!((n.itt, n.ttt, n.data.as_slice()), (4, RESERVED_TAG, &b"hello"[..]));
    assert_eq!(s.exp_cmdsn(), 2);
    assert!(s.on_tick(Duration::from_secs(0)).is_empty());
    assert!(s.on_tick(Duration::from_secs(4)).is_empty());
    let acts = s.on_tick(Duration::from_secs(5));
    let [Pdu::NopIn(ping)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(ping.itt, RESERVED_TAG);
    let statsn_before = s.statsn();
    assert_eq!(ping.statsn, statsn_before, "a ping does not consume a StatSN");
    // Answered: no timeout.
    s.on_pdu(Pdu::NopOut(NopOut {
        immediate: true,
        itt: RESERVED_TAG,
        ttt: ping.ttt,
        cmdsn: 2,
        ..Default::default()
    }));
    assert!(s.on_tick(Duration::from_secs(6)).is_empty());
    assert!(s.on_tick(Duration::from_secs(9)).is_empty());
    let acts = s.on_tick(Duration::from_secs(11));
    assert_eq!(sent(&acts).len(), 1, "next ping");
    assert!(s.on_tick(Duration::from_secs(20)).is_empty());
    assert!(matches!(
        s.on_tick(Duration::from_secs(21))[..],
        [Action::Close(CloseReason::NopTimeout)]
    ));
}

#[test]
fn send_targets_with_continuation() {
    let mut s = session(
        SessionParams {
            max_xmit_data_segment_length: 512,
            ..Default::default()
        },
        8,
    );
    let acts = s.on_pdu(Pdu::TextRequest(TextRequest {
        final_: true,
        itt: 5,
        ttt: RESERVED_TAG,
        cmdsn: 1,
        data: b"SendTargets=All\0".to_vec(),
        ..Default::default()
    }));
    assert!(matches!(&acts[..], [Action::SendTargets { itt: 5, value }] if value == "All"));
    let mut answer = Vec::new();
    for i in 0..40 {
        answer.extend_from_slice(
            format!("TargetName=iqn.2026-01.test:disk{i}\0TargetAddress=127.0.0.1:3260,1\0").as_bytes(),
        );
    }
    let mut got = Vec::new();
    let mut acts = s.on_text_answer(5, answer.clone());
    let mut sn = 2;
    loop {
        let [Pdu::TextResponse(t)] = sent(&acts)[..] else {
            panic!("{acts:?}")
        };
        assert!(t.data.len() <= 512);
        got.extend_from_slice(&t.data);
        if t.final_ {
            assert_eq!(t.ttt, RESERVED_TAG);
            break;
        }
        let ttt = t.ttt;
        acts = s.on_pdu(Pdu::TextRequest(TextRequest {
            final_: true,
            itt: 5,
            ttt,
            cmdsn: sn,
            ..Default::default()
        }));
        sn += 1;
    }
    assert_eq!(got, answer);
}

#[test]
fn reserved_opcodes_and_login_in_full_feature_phase_are_rejected() {
    let mut s = session(SessionParams::default(), 8);
    let acts = s.on_pdu(Pdu::LoginRequest(LoginRequest::default()));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::Reject(Reject {
            reason: reject_reason::PROTOCOL_ERROR,
            ..
        })]
    ));
    let acts = s.on_frame_error(PduError::BadOpcode {
        opcode: 0x1c,
        bhs: Box::new([0x1c; 48]),
    });
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::Reject(Reject {
            reason: reject_reason::COMMAND_NOT_SUPPORTED,
            ..
        })]
    ));
    assert!(!s.is_closed());
}

/// Random valid and invalid PDU sequences: the session never panics, never executes a command
/// twice, never has more than the window of ordered commands in flight, and the StatSN of
/// status-bearing PDUs strictly increases.
#[test]
fn randomized_conversations_keep_invariants() {
    let mut total_executed = 0;
    let mut total_rejects = 0;
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let params = SessionParams {
            max_xmit_data_segment_length: [512, 8192][rng.gen_range(0..2)],
            max_burst_length: [4096, 16384][rng.gen_range(0..2)],
            first_burst_length: 8192,
            immediate_data: rng.gen(),
            initial_r2t: rng.gen(),
            max_outstanding_r2t: rng.gen_range(1..4),
            ..Default::default()
        };
        let window = rng.gen_range(1..16);
        let mut s = session(params, window);
        let mut executed = std::collections::HashSet::new();
        let mut running: Vec<TaskId> = Vec::new();
        let mut last_statsn: Option<u32> = None;
        let mut r2t_seen: Vec<R2t> = Vec::new();
        let mut next_sn = 1u32;
        let mut last_max = s.max_cmdsn();
        for step in 0..400 {
            // Stray PDUs may have used CmdSNs the script had in mind: catch up like an initiator would.
            if sn_lt(next_sn, s.exp_cmdsn()) {
                next_sn = s.exp_cmdsn();
            }
            let acts = match rng.gen_range(0..15) {
                0..=3 => {
                    // A well-behaved initiator only uses a CmdSN the window allows.
                    let immediate = rng.gen_bool(0.05);
                    // Immediate commands carry the next CmdSN without using it up.
                    let open = !immediate && sn_in_window(next_sn, s.exp_cmdsn(), s.max_cmdsn());
                    let sn = if rng.gen_bool(0.9) {
                        if open {
                            next_sn = next_sn.wrapping_add(1);
                        }
                        next_sn.wrapping_sub(open as u32)
                    } else {
                        next_sn.wrapping_add(rng.gen_range(0..20)).wrapping_sub(5)
                    };
                    let len = rng.gen_range(0..20_000);
                    let itt = rng.gen_range(0..64);
                    let mut p = if rng.gen() {
                        read_cmd(itt, sn, len)
                    } else {
                        let imm = rng.gen_range(0..=len.min(9000)) as usize;
                        write_cmd(itt, sn, len, vec![0xaa; imm], rng.gen_bool(0.9))
                    };
                    if let Pdu::ScsiCommand(c) = &mut p {
                        c.immediate = immediate;
                    }
                    s.on_pdu(p)
                }
                4..=6 if !r2t_seen.is_empty() => {
                    let r = r2t_seen.swap_remove(rng.gen_range(0..r2t_seen.len()));
                    if rng.gen_bool(0.8) {
                        s.on_pdu(data_out(
                            r.itt,
                            r.ttt,
                            0,
                            r.buffer_offset,
                            vec![0; r.desired_len as usize],
                            true,
                        ))
                    } else {
                        let n = rng.gen_range(1..=r.desired_len.max(1)).min(8192);
                        let fin = rng.gen_bool(0.5) || n == r.desired_len;
                        let sn = rng.gen_range(0..2);
                        s.on_pdu(data_out(r.itt, r.ttt, sn, r.buffer_offset, vec![0; n as usize], fin))
                    }
                }
                7 if !running.is_empty() => {
                    let id = running.swap_remove(rng.gen_range(0..running.len()));
                    let data = rng.gen::<bool>().then(|| vec![1u8; rng.gen_range(0..30_000)]);
                    let sense = if rng.gen_bool(0.2) { vec![0x70, 0, 3] } else { vec![] };
                    s.on_scsi_done(
                        id,
                        ScsiOutcome {
                            status: if sense.is_empty() { 0 } else { 2 },
                            sense,
                            data_in: data.map(|d| IoBuf::copy_from(&d)),
                            write_len: None,
                        },
                    )
                }
                8 => s.on_pdu(Pdu::TaskMgmtRequest(TaskMgmtRequest {
                    immediate: true,
                    function: if rng.gen_bool(0.01) {
                        tmf::TARGET_COLD_RESET
                    } else {
                        [1, 1, 1, 1, 2, 3, 4, 5, 6, 8, 9][rng.gen_range(0..11)]
                    },
                    itt: 1000 + step,
                    rtt: rng.gen_range(0..64),
                    cmdsn: next_sn,
                    ref_cmdsn: next_sn.wrapping_sub(rng.gen_range(0..4)),
                    ..Default::default()
                })),
                9 => {
                    let sn = next_sn;
                    if sn_in_window(next_sn, s.exp_cmdsn(), s.max_cmdsn()) {
                        next_sn = next_sn.wrapping_add(1);
                    }
                    s.on_pdu(Pdu::NopOut(NopOut {
                        itt: 2000 + step,
                        ttt: RESERVED_TAG,
                        cmdsn: sn,
                        ..Default::default()
                    }))
                }
                10 => {
                    let mut b = [0u8; 48];
                    rng.fill(&mut b[..]);
                    // No AHS and no data: the deframer already vouched for the lengths.
                    b[4..8].fill(0);
                    match Pdu::decode(&b, &[], vec![]) {
                        Ok(p) => s.on_pdu(p),
                        Err(e) => s.on_frame_error(e),
                    }
                }
                12 if !r2t_seen.is_empty() => {
                    // A Data-Out whose data digest failed.
                    let r = r2t_seen.swap_remove(rng.gen_range(0..r2t_seen.len()));
                    let p = Pdu::DataOut(DataOut {
                        final_: true,
                        itt: r.itt,
                        ttt: r.ttt,
                        buffer_offset: r.buffer_offset,
                        ..Default::default()
                    });
                    let bhs = p.encode_bhs_ahs(r.desired_len as usize).0;
                    s.on_frame_error(PduError::DataDigest {
                        expected: 0,
                        got: 1,
                        bhs,
                        pdu: Box::new(p),
                    })
                }
                13 if rng.gen_bool(0.05) => s.on_pdu(Pdu::LogoutRequest(LogoutRequest {
                    immediate: true,
                    reason: rng.gen_range(0..4),
                    itt: 3000 + step,
                    cid: rng.gen_range(0..3),
                    cmdsn: next_sn,
                    exp_statsn: 0,
                })),
                14 if !running.is_empty() => s.on_text_answer(rng.gen_range(0..3), vec![b'a'; rng.gen_range(0..3000)]),
                _ => s.on_tick(Duration::from_millis(step as u64 * 10)),
            };
            for a in &acts {
                match a {
                    Action::Execute { id, .. } => {
                        assert!(executed.insert(*id), "seed {seed}: task {id} executed twice");
                        running.push(*id);
                    }
                    Action::Abort { ids } => running.retain(|r| !ids.contains(r)),
                    Action::Send(p) => {
                        let statsn = match p {
                            Pdu::ScsiResponse(r) => Some(r.statsn),
                            Pdu::NopIn(n) if n.itt != RESERVED_TAG => Some(n.statsn),
                            Pdu::TaskMgmtResponse(r) => Some(r.statsn),
                            Pdu::TextResponse(r) => Some(r.statsn),
                            Pdu::LogoutResponse(r) => Some(r.statsn),
                            Pdu::Reject(r) => Some(r.statsn),
                            _ => None,
                        };
                        if let Some(sn) = statsn {
                            if let Some(l) = last_statsn {
                                assert!(sn_lt(l, sn), "seed {seed}: StatSN {sn} after {l}");
                            }
                            last_statsn = Some(sn);
                        }
                        if let Pdu::R2t(r) = p {
                            r2t_seen.push(r.clone());
                        }
                    }
                    Action::SendDataIn { header, .. } if header.has_status => {
                        if let Some(l) = last_statsn {
                            assert!(sn_lt(l, header.statsn));
                        }
                        last_statsn = Some(header.statsn);
                    }
                    _ => {}
                }
            }
            if r2t_seen.len() > 64 {
                r2t_seen.drain(..32);
            }
            assert!(sn_le(last_max, s.max_cmdsn()), "seed {seed}: MaxCmdSN went back");
            last_max = s.max_cmdsn();
            let in_window = s.max_cmdsn().wrapping_sub(s.exp_cmdsn()).wrapping_add(1);
            assert!(in_window <= window, "seed {seed}: window {in_window} > {window}");
            assert!(s.tasks_in_flight() <= window as usize + 16 + 1);
        }
        total_executed += executed.len();
        total_rejects += s.stats().rejects;
    }
    assert!(
        total_executed > 1000,
        "the random walk reaches execution: {total_executed}"
    );
    assert!(total_rejects > 100, "and exercises the error paths: {total_rejects}");
}

#[test]
fn data_in_never_exceeds_a_burst_smaller_than_the_segment_limit() {
    let params = SessionParams {
        max_xmit_data_segment_length: 8192,
        max_burst_length: 4096,
        ..Default::default()
    };
    let mut s = session(params, 8);
    let id = executes(&s.on_pdu(read_cmd(1, 1, 10_000)))[0];
    let acts = s.on_scsi_done(id, good(Some(vec![5; 10_000])));
    let shape: Vec<(usize, bool)> = acts
        .iter()
        .map(|a| match a {
            Action::SendDataIn { header, len, .. } => (*len, header.final_),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(shape, vec![(4096, true), (4096, true), (1808, true)]);
}

/// Target side: what the session's actions put on the wire, with the connection's digests.
fn to_wire(acts: &[Action], d: Digests) -> Vec<u8> {
    let mut w = Vec::new();
    for a in acts {
        match a {
            Action::Send(p) => p.encode(d, &mut w),
            Action::SendDataIn {
                header,
                data,
                offset,
                len,
            } => {
                let slice = &data.as_slice()[*offset..offset + len];
                w.extend_from_slice(encode_header(&Pdu::DataIn(header.clone()), *len, d).as_slice());
                w.extend_from_slice(slice);
                w.extend_from_slice(data_trailer(slice, d.data).as_slice());
            }
            _ => {}
        }
    }
    w
}

fn decode_all(bytes: &[u8], d: Digests) -> Vec<Pdu> {
    let mut de = Deframer::new(1 << 24);
    de.set_digests(d);
    de.push(bytes);
    let mut v = Vec::new();
    while let Some(p) = de.next_pdu() {
        v.push(p.expect("the target's PDUs decode"));
    }
    assert_eq!(de.buffered(), 0);
    v
}

/// A write and a read through bytes with both digests on: initiator PDUs are encoded, deframed
/// and fed to the session; the target's actions are encoded (Data-In by header + slice + trailer)
/// and decoded again. A corrupted Data-Out payload is caught by the data digest.
#[test]
fn conversation_over_the_wire_with_digests() {
    let d = Digests {
        header: true,
        data: true,
    };
    let params = SessionParams {
        header_digest: true,
        data_digest: true,
        max_recv_data_segment_length: 8192,
        max_xmit_data_segment_length: 4096,
        max_burst_length: 16384,
        ..Default::default()
    };
    let mut s = session(params, 32);
    let mut rx = Deframer::new(8192);
    rx.set_digests(d);
    let mut feed = |s: &mut Session, bytes: Vec<u8>| {
        rx.push(&bytes);
        let mut acts = Vec::new();
        while let Some(r) = rx.next_pdu() {
            acts.extend(match r {
                Ok(p) => s.on_pdu(p),
                Err(e) => s.on_frame_error(e),
            });
        }
        acts
    };
    let payload = pattern(20_000);
    let acts = feed(
        &mut s,
        write_cmd(1, 1, 20_000, payload[..4096].to_vec(), true).to_bytes(d),
    );
    let replies = decode_all(&to_wire(&acts, d), d);
    let Pdu::R2t(r) = &replies[0] else {
        panic!("{replies:?}")
    };
    assert_eq!((r.buffer_offset, r.desired_len), (4096, 15_904));
    // Send the burst in two Data-Outs; flip one payload byte of the first on the wire.
    let first = data_out(1, r.ttt, 0, 4096, payload[4096..12_288].to_vec(), false).to_bytes(d);
    let mut bad = first.clone();
    bad[48 + 4 + 100] ^= 1;
    let acts = feed(&mut s, bad);
    let replies = decode_all(&to_wire(&acts, d), d);
    let [Pdu::Reject(rj)] = &replies[..] else {
        panic!("{replies:?}")
    };
    assert_eq!(rj.reason, reject_reason::DATA_DIGEST_ERROR);
    assert_eq!(&rj.data[..], &first[..48]);
    let acts = feed(
        &mut s,
        data_out(1, r.ttt, 1, 12_288, payload[12_288..].to_vec(), true).to_bytes(d),
    );
    let replies = decode_all(&to_wire(&acts, d), d);
    assert!(executes(&acts).is_empty(), "a corrupted write never reaches the disk");
    let [Pdu::ScsiResponse(resp)] = &replies[..] else {
        panic!("{replies:?}")
    };
    assert_eq!(resp.status, status::CHECK_CONDITION);

    // The retried write goes through and the read returns the data in 4 KiB Data-Ins.
    let acts = feed(
        &mut s,
        write_cmd(2, 2, 20_000, payload[..4096].to_vec(), true).to_bytes(d),
    );
    let Pdu::R2t(r) = decode_all(&to_wire(&acts, d), d).remove(0) else {
        panic!()
    };
    feed(
        &mut s,
        data_out(2, r.ttt, 0, 4096, payload[4096..12_288].to_vec(), false).to_bytes(d),
    );
    let acts = feed(
        &mut s,
        data_out(2, r.ttt, 1, 12_288, payload[12_288..].to_vec(), true).to_bytes(d),
    );
    let Some(Action::Execute { id, task }) = acts.into_iter().find(|a| matches!(a, Action::Execute { .. })) else {
        panic!()
    };
    let written = task.data_out.expect("data").as_slice().to_vec();
    assert_eq!(written, payload);
    let acts = s.on_scsi_done(id, good(None));
    assert!(matches!(
        decode_all(&to_wire(&acts, d), d)[..],
        [Pdu::ScsiResponse(ScsiResponse { status: 0, .. })]
    ));
    let acts = feed(&mut s, read_cmd(3, 3, 20_000).to_bytes(d));
    let id = executes(&acts)[0];
    let acts = s.on_scsi_done(id, good(Some(written)));
    let replies = decode_all(&to_wire(&acts, d), d);
    assert_eq!(replies.len(), 5);
    let mut got = Vec::new();
    for p in &replies {
        let Pdu::DataIn(x) = p else { panic!() };
        assert_eq!(x.buffer_offset as usize, got.len());
        got.extend_from_slice(&x.data);
    }
    assert_eq!(got, payload);
    assert!(matches!(&replies[4], Pdu::DataIn(x) if x.has_status && x.final_ && x.status == 0));
}

#[test]
fn async_logout_request_then_logout() {
    let mut s = session(SessionParams::default(), 8);
    let acts = s.request_logout(20);
    let [Pdu::AsyncMessage(m)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!((m.event, m.param3, m.statsn), (1, 20, 100));
    let acts = s.on_pdu(Pdu::LogoutRequest(LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 1,
        cid: 1,
        cmdsn: 1,
        exp_statsn: 101,
    }));
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::LogoutResponse(LogoutResponse { statsn: 101, .. })]
    ));
    assert!(s.request_logout(20).is_empty());
}

#[test]
fn bidirectional_command_reads_the_bidi_length() {
    let mut s = session(SessionParams::default(), 8);
    let mut p = write_cmd(1, 1, 512, vec![7; 512], true);
    if let Pdu::ScsiCommand(c) = &mut p {
        c.read = true;
        c.bidi_read_len = Some(4096);
    }
    let acts = s.on_pdu(p);
    let Some(Action::Execute { task, .. }) = acts.first() else {
        panic!("{acts:?}")
    };
    assert_eq!(task.expected_data_in, 4096);
    assert_eq!(task.data_out.as_ref().unwrap().len(), 512);
}

#[test]
fn text_request_continued_by_the_initiator_and_unknown_keys() {
    let mut s = session(SessionParams::default(), 8);
    let acts = s.on_pdu(Pdu::TextRequest(TextRequest {
        cont: true,
        itt: 3,
        ttt: RESERVED_TAG,
        cmdsn: 1,
        data: b"X-Vendor=1\0SendTarg".to_vec(),
        ..Default::default()
    }));
    let [Pdu::TextResponse(r)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert!(!r.final_ && r.data.is_empty() && r.ttt != RESERVED_TAG);
    let acts = s.on_pdu(Pdu::TextRequest(TextRequest {
        final_: true,
        itt: 3,
        ttt: r.ttt,
        cmdsn: 2,
        data: b"ets=iqn.2026-01.test:disk0\0".to_vec(),
        ..Default::default()
    }));
    assert!(matches!(&acts[..], [Action::SendTargets { itt: 3, value }] if value == "iqn.2026-01.test:disk0"));
    let acts = s.on_text_answer(3, b"TargetName=iqn.2026-01.test:disk0\0".to_vec());
    assert!(matches!(
        sent(&acts)[..],
        [Pdu::TextResponse(TextResponse { final_: true, .. })]
    ));
    // Keys other than SendTargets are answered NotUnderstood.
    let acts = s.on_pdu(Pdu::TextRequest(TextRequest {
        final_: true,
        itt: 4,
        ttt: RESERVED_TAG,
        cmdsn: 3,
        data: b"X-Vendor=1\0".to_vec(),
        ..Default::default()
    }));
    let [Pdu::TextResponse(r)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(r.data, b"X-Vendor=NotUnderstood\0".to_vec());
}
