use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn samples() -> Vec<Pdu> {
    vec![
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: 0x0001_0000_0000_0000,
            itt: 7,
            ttt: RESERVED_TAG,
            cmdsn: 9,
            exp_statsn: 3,
            data: b"ping!".to_vec(),
        }),
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: 1,
            lun: 1 << 48,
            itt: 0x1234,
            expected_data_len: 4096,
            cmdsn: 100,
            exp_statsn: 55,
            cdb: vec![0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
            bidi_read_len: None,
            data: vec![],
        }),
        Pdu::ScsiCommand(ScsiCommand {
            immediate: true,
            final_: false,
            read: true,
            write: true,
            attr: 2,
            lun: 0,
            itt: 1,
            expected_data_len: 512,
            cmdsn: u32::MAX,
            exp_statsn: 0,
            cdb: (0..32).collect(),
            bidi_read_len: Some(8192),
            data: vec![0xab; 512],
        }),
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: tmf::ABORT_TASK,
            lun: 3 << 48,
            itt: 77,
            rtt: 76,
            cmdsn: 5,
            exp_statsn: 6,
            ref_cmdsn: 4,
            exp_datasn: 2,
        }),
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 0,
            itt: 0,
            cid: 1,
            cmdsn: 1,
            exp_statsn: 0,
            data: b"InitiatorName=iqn.2026-01.x:y\0SessionType=Normal\0".to_vec(),
        }),
        Pdu::TextRequest(TextRequest {
            immediate: false,
            final_: true,
            cont: false,
            lun: 0,
            itt: 2,
            ttt: RESERVED_TAG,
            cmdsn: 2,
            exp_statsn: 2,
            data: b"SendTargets=All\0".to_vec(),
        }),
        Pdu::DataOut(DataOut {
            final_: true,
            lun: 0,
            itt: 9,
            ttt: 0x10,
            exp_statsn: 8,
            datasn: 3,
            buffer_offset: 8192,
            data: vec![1, 2, 3],
        }),
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 1,
            itt: 4,
            cid: 1,
            cmdsn: 9,
            exp_statsn: 8,
        }),
        Pdu::Snack(Snack {
            snack_type: 1,
            lun: 0,
            itt: 3,
            ttt: 4,
            exp_statsn: 5,
            beg_run: 6,
            run_length: 7,
        }),
        Pdu::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 5,
            statsn: 8,
            exp_cmdsn: 9,
            max_cmdsn: 136,
            data: vec![],
        }),
        Pdu::ScsiResponse(ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: true,
            overflow: false,
            underflow: true,
            response: 0,
            status: 2,
            itt: 5,
            snack_tag: 0,
            statsn: 1,
            exp_cmdsn: 2,
            max_cmdsn: 3,
            exp_datasn: 4,
            bidi_residual: 5,
            residual: 6,
            data: vec![0, 18, 0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0],
        }),
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: 1,
            itt: 2,
            statsn: 3,
            exp_cmdsn: 4,
            max_cmdsn: 5,
        }),
        Pdu::LoginResponse(LoginResponse {
            transit: true,
            cont: false,
            csg: 1,
            nsg: 3,
            version_max: 0,
            version_active: 0,
            isid: [0x80, 1, 2, 3, 4, 5],
            tsih: 7,
            itt: 0,
            statsn: 1,
            exp_cmdsn: 2,
            max_cmdsn: 129,
            status_class: 2,
            status_detail: 1,
            data: b"HeaderDigest=None\0".to_vec(),
        }),
        Pdu::TextResponse(TextResponse {
            final_: false,
            cont: true,
            lun: 0,
            itt: 8,
            ttt: 9,
            statsn: 10,
            exp_cmdsn: 11,
            max_cmdsn: 12,
            data: b"TargetName=iqn.x\0".to_vec(),
        }),
        Pdu::DataIn(DataIn {
            final_: true,
            ack: false,
            overflow: false,
            underflow: true,
            has_status: true,
            status: 0,
            lun: 0,
            itt: 3,
            ttt: RESERVED_TAG,
            statsn: 4,
            exp_cmdsn: 5,
            max_cmdsn: 6,
            datasn: 7,
            buffer_offset: 65536,
            residual: 512,
            data: vec![9; 1001],
        }),
        Pdu::LogoutResponse(LogoutResponse {
            response: 0,
            itt: 1,
            statsn: 2,
            exp_cmdsn: 3,
            max_cmdsn: 4,
            time2wait: 2,
            time2retain: 20,
        }),
        Pdu::R2t(R2t {
            lun: 0,
            itt: 1,
            ttt: 2,
            statsn: 3,
            exp_cmdsn: 4,
            max_cmdsn: 5,
            r2tsn: 6,
            buffer_offset: 7,
            desired_len: 262144,
        }),
        Pdu::AsyncMessage(AsyncMessage {
            lun: 0,
            statsn: 1,
            exp_cmdsn: 2,
            max_cmdsn: 3,
            event: 1,
            vcode: 0,
            param1: 0,
            param2: 2,
            param3: 20,
            data: vec![],
        }),
        Pdu::Reject(Reject {
            reason: reject_reason::DATA_DIGEST_ERROR,
            statsn: 1,
            exp_cmdsn: 2,
            max_cmdsn: 3,
            datasn_r2tsn: 0,
            data: vec![0x01; 48],
        }),
    ]
}

fn all_digests() -> [Digests; 4] {
    [
        Digests {
            header: false,
            data: false,
        },
        Digests {
            header: true,
            data: false,
        },
        Digests {
            header: false,
            data: true,
        },
        Digests {
            header: true,
            data: true,
        },
    ]
}

#[test]
fn every_pdu_kind_round_trips_with_every_digest_setting() {
    let kinds: std::collections::HashSet<Opcode> = samples().iter().map(|p| p.opcode()).collect();
    assert_eq!(kinds.len(), 18, "a sample for every opcode");
    for d in all_digests() {
        for p in samples() {
            let bytes = p.to_bytes(d);
            assert_eq!(bytes.len() % 4, 0);
            let mut de = Deframer::new(1 << 20);
            de.set_digests(d);
            // Byte-at-a-time feeding: the deframer must wait for whole PDUs.
            for (i, b) in bytes.iter().enumerate() {
                assert!(i == 0 || de.wanted() > 0);
                de.push(&[*b]);
                if i + 1 < bytes.len() {
                    assert!(de.next_pdu().is_none(), "{p:?} returned early at {i}");
                }
            }
            let got = de.next_pdu().expect("whole PDU").expect("decodes");
            assert_eq!(got, p, "digests {d:?}");
            assert_eq!(de.buffered(), 0);
        }
    }
}

#[test]
fn bhs_layout_matches_rfc_offsets() {
    let p = &samples()[1];
    let b = p.to_bytes(Digests::default());
    assert_eq!(b.len(), 48);
    assert_eq!(b[0], 0x01);
    assert_eq!(b[1], 0x80 | 0x40 | 0x01, "F, R, ATTR=simple");
    assert_eq!(&b[8..10], &[0, 1], "LUN 1 in SAM single-level form");
    assert_eq!(&b[16..20], &[0, 0, 0x12, 0x34], "ITT");
    assert_eq!(&b[20..24], &[0, 0, 0x10, 0], "EDTL");
    assert_eq!(&b[24..28], &[0, 0, 0, 100], "CmdSN");
    assert_eq!(b[32], 0x28, "CDB opcode at byte 32");
    // Login: byte 0 has the I bit, byte 1 is T|CSG<<2|NSG.
    let l = samples()[4].to_bytes(Digests::default());
    assert_eq!(l[0], 0x43);
    assert_eq!(l[1], 0x80 | (1 << 2) | 3);
    assert_eq!(&l[8..14], &[0x80, 1, 2, 3, 4, 5]);
    assert_eq!(&l[20..22], &[0, 1], "CID");
    // DataSegmentLength is 24-bit at bytes 5..8 and the data is padded to 4.
    assert_eq!(&l[5..8], &[0, 0, 49]);
    assert_eq!(l.len(), 48 + 52);
}

#[test]
fn extended_cdb_ahs_layout() {
    let p = &samples()[2];
    let b = p.to_bytes(Digests::default());
    // 16 extra CDB bytes: AHSLength 17, type 1, reserved, 16 bytes, 3 pad => 20 bytes;
    // bidi AHS: length 5, type 2, reserved, 4-byte length => 8 bytes.
    assert_eq!(b[4], 7, "TotalAHSLength in words");
    assert_eq!(&b[48..52], &[0, 17, 1, 0]);
    assert_eq!(b[52], 16);
    assert_eq!(&b[68..72], &[0, 5, 2, 0]);
    assert_eq!(&b[72..76], &[0, 0, 0x20, 0]);
}

#[test]
fn crc32c_known_vectors_and_little_endian_digest() {
    // RFC 3720 appendix B.4 (kept by RFC 7143): the digest bytes as they appear on the wire.
    let wire = |data: &[u8]| crc32c(data).to_le_bytes();
    assert_eq!(wire(&[0u8; 32]), [0xaa, 0x36, 0x91, 0x8a]);
    assert_eq!(wire(&[0xffu8; 32]), [0x43, 0xab, 0xa8, 0x62]);
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(wire(&inc), [0x4e, 0x79, 0xdd, 0x46]);
    let dec: Vec<u8> = (0..32).rev().collect();
    assert_eq!(wire(&dec), [0x5c, 0xdb, 0x3f, 0x11]);
    // And the codec puts exactly those bytes after the data.
    let p = Pdu::DataOut(DataOut {
        data: vec![0; 32],
        ..Default::default()
    });
    let b = p.to_bytes(Digests {
        header: false,
        data: true,
    });
    assert_eq!(&b[b.len() - 4..], &[0xaa, 0x36, 0x91, 0x8a]);
    // The header digest covers the 48 BHS bytes.
    let b = p.to_bytes(Digests {
        header: true,
        data: false,
    });
    assert_eq!(&b[48..52], &crc32c(&b[..48]).to_le_bytes());
}

#[test]
fn data_digest_covers_padding_and_empty_segment_has_none() {
    let t = data_trailer(b"abcde", true);
    assert_eq!(t.as_slice().len(), 3 + 4);
    let mut padded = b"abcde".to_vec();
    padded.extend_from_slice(&[0, 0, 0]);
    assert_eq!(&t.as_slice()[3..], &crc32c(&padded).to_le_bytes());
    assert!(data_trailer(b"", true).as_slice().is_empty());
    let p = Pdu::NopIn(NopIn::default());
    assert_eq!(
        p.to_bytes(Digests {
            header: false,
            data: true
        })
        .len(),
        48
    );
}

#[test]
fn header_and_trailer_give_the_same_bytes_as_encode() {
    let payload = vec![7u8; 10_001];
    let hdr = Pdu::DataIn(DataIn {
        final_: true,
        datasn: 3,
        itt: 5,
        ..Default::default()
    });
    for d in all_digests() {
        let mut vectored = encode_header(&hdr, payload.len(), d).as_slice().to_vec();
        vectored.extend_from_slice(&payload);
        vectored.extend_from_slice(data_trailer(&payload, d.data).as_slice());
        let mut whole = hdr.clone();
        if let Pdu::DataIn(x) = &mut whole {
            x.data = payload.clone();
        }
        assert_eq!(vectored, whole.to_bytes(d));
    }
}

#[test]
fn deframer_errors() {
    // Oversize data segment: closes.
    let p = Pdu::DataOut(DataOut {
        data: vec![0; 8196],
        ..Default::default()
    });
    let mut de = Deframer::new(8192);
    de.push(&p.to_bytes(Digests::default()));
    let e = de.next_pdu().unwrap().unwrap_err();
    assert_eq!(e, PduError::DataSegmentTooLong { len: 8196, max: 8192 });
    assert!(e.closes_connection());
    assert!(de.is_broken());
    assert!(de.next_pdu().is_none());

    // Bad opcode: PDU skipped, stream continues.
    let mut bad = Pdu::NopOut(NopOut::default()).to_bytes(Digests::default());
    bad[0] = 0x0f;
    let good = Pdu::NopOut(NopOut {
        itt: 5,
        ..Default::default()
    })
    .to_bytes(Digests::default());
    let mut de = Deframer::new(8192);
    de.push(&bad);
    de.push(&good);
    match de.next_pdu().unwrap() {
        Err(e @ PduError::BadOpcode { opcode: 0x0f, .. }) => assert!(!e.closes_connection()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(de.next_pdu(), Some(Ok(Pdu::NopOut(NopOut { itt: 5, .. })))));

    // Header digest mismatch: closes.
    let d = Digests {
        header: true,
        data: true,
    };
    let mut b = Pdu::NopOut(NopOut::default()).to_bytes(d);
    b[20] ^= 1;
    let mut de = Deframer::new(8192);
    de.set_digests(d);
    de.push(&b);
    assert!(matches!(de.next_pdu(), Some(Err(PduError::HeaderDigest { .. }))));

    // Data digest mismatch: the PDU comes back without data, the stream continues.
    let mut b = samples()[6].to_bytes(d);
    let n = b.len();
    b[n - 6] ^= 0x40;
    b.extend_from_slice(&good_with(d));
    let mut de = Deframer::new(8192);
    de.set_digests(d);
    de.push(&b);
    match de.next_pdu().unwrap() {
        Err(e @ PduError::DataDigest { .. }) => {
            assert!(!e.closes_connection());
            if let PduError::DataDigest { pdu, bhs, .. } = e {
                assert!(matches!(*pdu, Pdu::DataOut(DataOut { itt: 9, .. })));
                assert_eq!(bhs[0], 0x05);
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(de.next_pdu(), Some(Ok(Pdu::NopOut(_)))));

    // AHS too long.
    let mut b = Pdu::NopOut(NopOut::default()).to_bytes(Digests::default());
    b[4] = 255;
    let mut de = Deframer::new(8192);
    de.push(&b);
    assert!(matches!(de.next_pdu(), Some(Err(PduError::AhsTooLong { .. }))));
}

fn good_with(d: Digests) -> Vec<u8> {
    Pdu::NopOut(NopOut {
        data: b"x".to_vec(),
        ..Default::default()
    })
    .to_bytes(d)
}

#[test]
fn digest_switch_applies_from_the_next_pdu_even_if_already_buffered() {
    let login = Pdu::LoginRequest(LoginRequest {
        transit: true,
        csg: 1,
        nsg: 3,
        ..Default::default()
    });
    let d = Digests {
        header: true,
        data: true,
    };
    let nop = Pdu::NopOut(NopOut {
        itt: 1,
        data: b"abc".to_vec(),
        ..Default::default()
    });
    let mut bytes = login.to_bytes(Digests::default());
    bytes.extend_from_slice(&nop.to_bytes(d));
    let mut de = Deframer::new(8192);
    de.push(&bytes);
    assert_eq!(de.next_pdu().unwrap().unwrap(), login);
    de.set_digests(d);
    assert_eq!(de.next_pdu().unwrap().unwrap(), nop);
}

#[test]
fn decode_rejects_truncation_and_bad_ahs() {
    let bhs = [0u8; 48];
    assert!(matches!(
        Pdu::decode(&bhs, &[], vec![1]),
        Err(PduError::Truncated { .. })
    ));
    let mut bhs = [0u8; 48];
    bhs[0] = 0x01;
    bhs[4] = 1;
    assert!(matches!(
        Pdu::decode(&bhs, &[0, 0, 1, 0], vec![]),
        Err(PduError::BadAhs { .. })
    ));
    assert!(matches!(
        Pdu::decode(&bhs, &[0, 1, 9, 0], vec![]),
        Err(PduError::Reserved { .. })
    ));
    bhs[4] = 0;
    bhs[1] = 0x07;
    assert!(matches!(
        Pdu::decode(&bhs, &[], vec![]),
        Err(PduError::Reserved { field: "ATTR", .. })
    ));
}

/// Random and mutated inputs never panic the deframer or decoder, and whatever decodes
/// re-encodes to a PDU that decodes the same way.
#[test]
fn fuzz_deframer_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x0001_5c51);
    let base: Vec<Vec<u8>> = samples()
        .iter()
        .flat_map(|p| all_digests().map(|d| p.to_bytes(d)))
        .collect();
    let mut decoded = 0usize;
    for i in 0..200_000u32 {
        let d = all_digests()[rng.gen_range(0..4)];
        let bytes: Vec<u8> = if i % 3 == 0 {
            let n = rng.gen_range(0..200);
            (0..n).map(|_| rng.gen()).collect()
        } else {
            let mut b = base[rng.gen_range(0..base.len())].clone();
            for _ in 0..rng.gen_range(1..6) {
                match rng.gen_range(0..4) {
                    0 if !b.is_empty() => {
                        let k = rng.gen_range(0..b.len());
                        b[k] = rng.gen();
                    }
                    1 if !b.is_empty() => {
                        let k = rng.gen_range(0..b.len());
                        b.truncate(k);
                    }
                    2 => {
                        let k = rng.gen_range(0..8usize);
                        let at = 4.min(b.len());
                        b[at..].iter_mut().take(k).for_each(|x| *x = rng.gen());
                    }
                    _ => b.extend((0..rng.gen_range(0..64)).map(|_| rng.gen::<u8>())),
                }
            }
            b
        };
        let mut de = Deframer::new(rng.gen_range(0..70_000));
        de.set_digests(d);
        let mut k = 0;
        while k < bytes.len() {
            let step = rng.gen_range(1..64).min(bytes.len() - k);
            de.push(&bytes[k..k + step]);
            k += step;
            while let Some(r) = de.next_pdu() {
                if let Ok(p) = r {
                    decoded += 1;
                    let again = p.to_bytes(Digests::default());
                    let mut de2 = Deframer::new(1 << 24);
                    de2.push(&again);
                    let q = de2.next_pdu().expect("whole").expect("re-decodes");
                    // Flags with no field (reserved bits) are dropped; the typed view is stable.
                    assert_eq!(q.to_bytes(Digests::default()), again);
                }
            }
        }
    }
    assert!(decoded > 10_000, "the mutations still let many PDUs through: {decoded}");
}

#[test]
fn read_buf_and_commit_feed_the_deframer_without_push() {
    let a = samples()[5].to_bytes(Digests::default());
    let b = samples()[6].to_bytes(Digests::default());
    let mut wire = a.clone();
    wire.extend_from_slice(&b);
    let mut de = Deframer::new(8192);
    let mut fed = 0;
    while fed < wire.len() {
        let area = de.read_buf(7);
        let n = area.len().min(wire.len() - fed).min(5);
        area[..n].copy_from_slice(&wire[fed..fed + n]);
        de.commit(n);
        fed += n;
    }
    // An area asked for and abandoned adds nothing.
    let _ = de.read_buf(100);
    assert_eq!(de.buffered(), wire.len());
    assert_eq!(de.next_pdu().unwrap().unwrap(), samples()[5]);
    assert_eq!(de.next_pdu().unwrap().unwrap(), samples()[6]);
    assert!(de.next_pdu().is_none());
}
