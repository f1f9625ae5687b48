use super::*;

fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(' ')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn show(p: &[(String, String)]) -> String {
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn text_round_trip() {
    let p = pairs("InitiatorName=iqn.1993-08.org.debian:01:abc SessionType=Normal HeaderDigest=None,CRC32C");
    let bytes = encode_text(&p);
    assert_eq!(bytes.iter().filter(|&&b| b == 0).count(), 3);
    assert_eq!(parse_text(&bytes).unwrap(), p);
    // Padding after the last pair and empty values are fine.
    let mut padded = encode_text(&pairs("A= B=x=y"));
    padded.extend_from_slice(&[0, 0, 0]);
    assert_eq!(parse_text(&padded).unwrap(), pairs("A= B=x=y"));
    // A last pair without its NUL is accepted too.
    assert_eq!(parse_text(b"A=1\0B=2").unwrap(), pairs("A=1 B=2"));
}

#[test]
fn text_errors() {
    assert_eq!(parse_text(b"A=1\0A=2\0"), Err(TextError::DuplicateKey("A".into())));
    assert_eq!(parse_text(b"novalue\0"), Err(TextError::NoEquals));
    assert_eq!(parse_text(b"=v\0"), Err(TextError::EmptyKey));
    assert_eq!(parse_text(b"A=\xff\0"), Err(TextError::NotUtf8));
    let long_key = format!("{}=1\0", "K".repeat(64));
    assert_eq!(parse_text(long_key.as_bytes()), Err(TextError::KeyTooLong(64)));
    let ok_key = format!("{}=1\0", "K".repeat(63));
    assert!(parse_text(ok_key.as_bytes()).is_ok());
    let long_value = format!("TargetAlias={}\0", "v".repeat(256));
    assert!(matches!(
        parse_text(long_value.as_bytes()),
        Err(TextError::ValueTooLong { len: 256, .. })
    ));
    let ok_value = format!("TargetAlias={}\0", "v".repeat(255));
    assert!(parse_text(ok_value.as_bytes()).is_ok());
    // CHAP values may be long (a 1024-byte challenge in hex is 2050 characters).
    let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
    assert!(parse_text(chap.as_bytes()).is_ok());
    let chap = format!("CHAP_C=0x{}\0", "ab".repeat(4096));
    assert!(matches!(
        parse_text(chap.as_bytes()),
        Err(TextError::ValueTooLong { .. })
    ));
}

#[test]
fn accumulator_joins_continued_pdus() {
    let text = encode_text(&pairs("InitiatorName=iqn.x SessionType=Discovery"));
    let mut acc = TextAccumulator::new();
    let (a, b) = text.split_at(7); // splits inside a key
    assert_eq!(acc.push(a, true).unwrap(), None);
    assert!(acc.is_partial());
    assert_eq!(acc.push(b, false).unwrap(), Some(text.clone()));
    assert!(!acc.is_partial());
    // Too much text is refused and the buffer dropped.
    let big = vec![b'a'; MAX_TEXT_TOTAL];
    assert_eq!(acc.push(&big, true).unwrap(), None);
    assert_eq!(acc.push(b"x", true), Err(TextError::TooLong));
    assert!(!acc.is_partial());
}

#[test]
fn split_text_respects_limit() {
    let data: Vec<u8> = (0..20000u32).map(|i| i as u8).collect();
    let chunks = split_text(&data, 8192);
    assert_eq!(
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
        vec![8192, 8192, 3616]
    );
    assert_eq!(chunks.concat(), data);
    assert_eq!(split_text(&[], 8192), vec![Vec::<u8>::new()]);
}

#[test]
fn numbers() {
    assert_eq!(parse_number("8192"), Some(8192));
    assert_eq!(parse_number("0x2000"), Some(8192));
    assert_eq!(parse_number(""), None);
    assert_eq!(parse_number("-1"), None);
    assert_eq!(parse_number("12a"), None);
    assert_eq!(parse_number("0x"), None);
    assert_eq!(parse_number("99999999999999999999999"), None);
}

#[test]
fn key_table_is_consistent() {
    let mut names = HashSet::new();
    for k in KEYS {
        assert!(names.insert(k.name), "{} twice", k.name);
        assert!(k.name.len() <= MAX_KEY_LEN);
        match k.kind {
            NumMin { lo, hi } | NumMax { lo, hi } | DeclarativeNum { lo, hi } => {
                assert!(lo <= hi);
                if !k.default.is_empty() {
                    let d = parse_number(k.default).unwrap();
                    assert!((lo..=hi).contains(&d), "{} default out of range", k.name);
                }
            }
            BoolOr | BoolAnd => assert!(k.default == "Yes" || k.default == "No"),
            _ => {}
        }
    }
    // SessionParams' defaults are the table's.
    let d = SessionParams::default();
    let def = |n: &str| parse_number(key_def(n).unwrap().default).unwrap() as u32;
    assert_eq!(d.max_burst_length, def("MaxBurstLength"));
    assert_eq!(d.first_burst_length, def("FirstBurstLength"));
    assert_eq!(d.max_recv_data_segment_length, def("MaxRecvDataSegmentLength"));
    assert_eq!(d.default_time2wait, def("DefaultTime2Wait"));
    assert_eq!(d.default_time2retain, def("DefaultTime2Retain"));
    assert_eq!(d.max_outstanding_r2t, def("MaxOutstandingR2T"));
    assert!(key_def("X-com.example.foo").is_none());
}

struct Case {
    name: &'static str,
    cfg: TargetParamConfig,
    discovery: bool,
    offers: &'static str,
    answers: &'static str,
    check: fn(&SessionParams),
}

fn cfg() -> TargetParamConfig {
    TargetParamConfig::default()
}

#[test]
fn operational_negotiation_table() {
    let cases = vec![
        Case {
            name: "linux open-iscsi defaults",
            cfg: cfg(),
            discovery: false,
            offers: "HeaderDigest=None DataDigest=None MaxConnections=1 InitialR2T=No ImmediateData=Yes \
                     MaxRecvDataSegmentLength=262144 MaxBurstLength=16776192 FirstBurstLength=262144 \
                     DefaultTime2Wait=2 DefaultTime2Retain=0 MaxOutstandingR2T=1 DataPDUInOrder=Yes \
                     DataSequenceInOrder=Yes ErrorRecoveryLevel=0",
            answers: "HeaderDigest=None DataDigest=None MaxConnections=1 InitialR2T=Yes ImmediateData=Yes \
                      MaxRecvDataSegmentLength=262144 MaxBurstLength=1048576 FirstBurstLength=65536 \
                      DefaultTime2Wait=2 DefaultTime2Retain=0 MaxOutstandingR2T=1 DataPDUInOrder=Yes \
                      DataSequenceInOrder=Yes ErrorRecoveryLevel=0",
            check: |p| {
                assert!(p.initial_r2t && p.immediate_data);
                assert_eq!(p.max_xmit_data_segment_length, 262144);
                assert_eq!(p.max_recv_data_segment_length, 262144);
                assert_eq!((p.max_burst_length, p.first_burst_length), (1048576, 65536));
                assert_eq!(p.default_time2retain, 0);
            },
        },
        Case {
            name: "ImmediateData=No and InitialR2T=No with a target that allows unsolicited data",
            cfg: TargetParamConfig {
                initial_r2t: false,
                ..cfg()
            },
            discovery: false,
            offers: "ImmediateData=No InitialR2T=No",
            answers: "ImmediateData=No InitialR2T=No",
            check: |p| assert!(!p.immediate_data && !p.initial_r2t),
        },
        Case {
            name: "target forbids immediate data",
            cfg: TargetParamConfig {
                immediate_data: false,
                ..cfg()
            },
            discovery: false,
            offers: "ImmediateData=Yes",
            answers: "ImmediateData=No",
            check: |p| assert!(!p.immediate_data),
        },
        Case {
            name: "FirstBurst above MaxBurst is clamped to MaxBurst",
            cfg: TargetParamConfig {
                first_burst_length: 1 << 20,
                ..cfg()
            },
            discovery: false,
            offers: "MaxBurstLength=131072 FirstBurstLength=524288",
            answers: "MaxBurstLength=131072 FirstBurstLength=131072",
            check: |p| assert_eq!((p.max_burst_length, p.first_burst_length), (131072, 131072)),
        },
        Case {
            name: "FirstBurst before MaxBurst on the wire is still clamped to MaxBurst",
            cfg: TargetParamConfig {
                first_burst_length: 1 << 20,
                ..cfg()
            },
            discovery: false,
            offers: "FirstBurstLength=524288 MaxBurstLength=131072",
            answers: "FirstBurstLength=131072 MaxBurstLength=131072",
            check: |p| assert_eq!((p.max_burst_length, p.first_burst_length), (131072, 131072)),
        },
        Case {
            name: "out-of-range and malformed numbers are rejected, defaults kept",
            cfg: cfg(),
            discovery: false,
            offers: "MaxRecvDataSegmentLength=511 MaxBurstLength=16777216 MaxOutstandingR2T=0 \
                     DefaultTime2Wait=3601 MaxConnections=abc FirstBurstLength=0x",
            answers: "MaxRecvDataSegmentLength=Reject MaxBurstLength=Reject MaxOutstandingR2T=Reject \
                      DefaultTime2Wait=Reject MaxConnections=Reject FirstBurstLength=Reject",
            check: |p| {
                let d = SessionParams::default();
                assert_eq!(p.max_xmit_data_segment_length, d.max_xmit_data_segment_length);
                assert_eq!(p.max_burst_length, d.max_burst_length);
                assert_eq!(p.max_outstanding_r2t, 1);
            },
        },
        Case {
            name: "bad booleans and unknown list values",
            cfg: cfg(),
            discovery: false,
            offers: "InitialR2T=yes ImmediateData=1 HeaderDigest=MD5,SHA1 DataDigest=CRC32C,None",
            answers: "InitialR2T=Reject ImmediateData=Reject HeaderDigest=Reject DataDigest=CRC32C",
            check: |p| assert!(!p.header_digest && p.data_digest),
        },
        Case {
            name: "digest policy",
            cfg: TargetParamConfig {
                header_digest: DigestPolicy::NoneOnly,
                ..cfg()
            },
            discovery: false,
            offers: "HeaderDigest=CRC32C,None DataDigest=None,CRC32C",
            answers: "HeaderDigest=None DataDigest=None",
            check: |p| assert!(!p.header_digest && !p.data_digest),
        },
        Case {
            name: "unknown, private and iSER keys are NotUnderstood",
            cfg: cfg(),
            discovery: false,
            offers: "X-com.example.foo=1 X#bar=2 RDMAExtensions=No TargetRecvDataSegmentLength=8192 \
                     TaskReporting=RFC3720 ifmarker=No",
            answers: "X-com.example.foo=NotUnderstood X#bar=NotUnderstood RDMAExtensions=NotUnderstood \
                      TargetRecvDataSegmentLength=NotUnderstood TaskReporting=NotUnderstood ifmarker=NotUnderstood",
            check: |_| {},
        },
        Case {
            name: "open-iscsi's obsolete marker keys and RFC 7144's protocol level",
            cfg: cfg(),
            discovery: false,
            offers: "IFMarker=No OFMarker=Yes IFMarkInt=2048~65535 OFMarkInt=2048 iSCSIProtocolLevel=2",
            answers: "IFMarker=No OFMarker=No IFMarkInt=Irrelevant OFMarkInt=Irrelevant iSCSIProtocolLevel=1",
            check: |_| {},
        },
        Case {
            name: "we only do ERL 0, keep DataPDUInOrder",
            cfg: cfg(),
            discovery: false,
            offers:
                "ErrorRecoveryLevel=2 DataPDUInOrder=No DataSequenceInOrder=No MaxConnections=8 MaxOutstandingR2T=16",
            answers:
                "ErrorRecoveryLevel=0 DataPDUInOrder=Yes DataSequenceInOrder=Yes MaxConnections=1 MaxOutstandingR2T=1",
            check: |p| {
                assert_eq!(p.error_recovery_level, 0);
                assert!(p.data_pdu_in_order && p.data_sequence_in_order);
                assert_eq!(p.max_connections, 1);
            },
        },
        Case {
            name: "discovery session: session keys irrelevant, digests and segment length apply",
            cfg: cfg(),
            discovery: true,
            offers: "HeaderDigest=CRC32C InitialR2T=No MaxBurstLength=512 MaxRecvDataSegmentLength=32768 \
                     MaxConnections=1 DefaultTime2Wait=0",
            answers: "HeaderDigest=CRC32C InitialR2T=Irrelevant MaxBurstLength=Irrelevant \
                      MaxRecvDataSegmentLength=262144 MaxConnections=Irrelevant DefaultTime2Wait=2",
            check: |p| {
                assert!(p.header_digest);
                assert_eq!(p.max_xmit_data_segment_length, 32768);
                assert_eq!(p.max_burst_length, SessionParams::default().max_burst_length);
            },
        },
        Case {
            name: "special values are not offers",
            cfg: cfg(),
            discovery: false,
            offers: "ImmediateData=NotUnderstood InitialR2T=Irrelevant",
            answers: "",
            check: |p| assert!(p.immediate_data && p.initial_r2t),
        },
    ];
    for c in cases {
        let mut n = Negotiation::new(c.cfg.clone());
        let got = n
            .answer(&pairs(c.offers), c.discovery)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let want = c.answers.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(show(&got), want, "{}", c.name);
        (c.check)(n.params());
    }
}

#[test]
fn negotiation_errors() {
    let mut n = Negotiation::new(cfg());
    n.answer(&pairs("MaxBurstLength=65536"), false).unwrap();
    assert_eq!(
        n.answer(&pairs("MaxBurstLength=65536"), false),
        Err(NegotiationError::Renegotiated("MaxBurstLength".into()))
    );
    let mut n = Negotiation::new(cfg());
    assert_eq!(
        n.answer(&pairs("TargetPortalGroupTag=1"), false),
        Err(NegotiationError::NotFromInitiator("TargetPortalGroupTag".into()))
    );
}

#[test]
fn required_digest_refused_by_the_initiator() {
    let mut n = Negotiation::new(TargetParamConfig {
        data_digest: DigestPolicy::Crc32cOnly,
        ..cfg()
    });
    assert!(matches!(
        n.answer(&pairs("HeaderDigest=None DataDigest=None"), false),
        Err(NegotiationError::Unacceptable { key, .. }) if key == "DataDigest"
    ));
    // A digest the target forbids is only rejected: None, the default, still applies.
    let mut n = Negotiation::new(TargetParamConfig {
        header_digest: DigestPolicy::NoneOnly,
        ..cfg()
    });
    assert_eq!(
        show(&n.answer(&pairs("HeaderDigest=CRC32C"), false).unwrap()),
        "HeaderDigest=Reject"
    );
    assert!(!n.params().header_digest);
}

#[test]
fn target_offers_and_answers() {
    // Defaults: only our receive segment length is declared.
    let mut n = Negotiation::new(cfg());
    assert_eq!(show(&n.target_offers(false)), "MaxRecvDataSegmentLength=262144");
    assert!(!n.awaiting_answers());
    assert!(n.target_offers(false).is_empty(), "offered once");

    // Declared already as an answer: not again.
    let mut n = Negotiation::new(cfg());
    n.answer(&pairs("MaxRecvDataSegmentLength=65536"), false).unwrap();
    assert!(n.target_offers(false).is_empty());

    // Limits below the defaults and required digests need answers.
    let c = TargetParamConfig {
        immediate_data: false,
        max_burst_length: 131072,
        first_burst_length: 32768,
        header_digest: DigestPolicy::Crc32cOnly,
        max_recv_data_segment_length: 8192,
        ..cfg()
    };
    let mut n = Negotiation::new(c.clone());
    n.answer(&pairs("FirstBurstLength=16384"), false).unwrap();
    assert_eq!(
        show(&n.target_offers(false)),
        "HeaderDigest=CRC32C ImmediateData=No MaxBurstLength=131072"
    );
    assert!(n.awaiting_answers());
    let answers = n
        .answer(
            &pairs("HeaderDigest=CRC32C ImmediateData=No MaxBurstLength=131072"),
            false,
        )
        .unwrap();
    assert!(answers.is_empty(), "answers to our offers get no reply: {answers:?}");
    assert!(!n.awaiting_answers());
    let p = n.params();
    assert!(p.header_digest && !p.immediate_data);
    assert_eq!((p.max_burst_length, p.first_burst_length), (131072, 16384));

    // An answer that breaks the rules ends the login.
    let mut n = Negotiation::new(c);
    n.target_offers(false);
    assert!(matches!(
        n.answer(&pairs("HeaderDigest=None"), false),
        Err(NegotiationError::BadAnswer { .. })
    ));

    // Discovery sessions get only the declarations that matter there.
    let mut n = Negotiation::new(TargetParamConfig {
        immediate_data: false,
        ..cfg()
    });
    assert_eq!(show(&n.target_offers(true)), "MaxRecvDataSegmentLength=262144");
}

#[test]
fn config_set_by_key_name() {
    let mut c = TargetParamConfig::default();
    c.set("MaxRecvDataSegmentLength", "65536").unwrap();
    c.set("ImmediateData", "No").unwrap();
    c.set("HeaderDigest", "CRC32C").unwrap();
    c.set("DataDigest", "None,CRC32C").unwrap();
    c.set("MaxBurstLength", "0x20000").unwrap();
    c.set("ErrorRecoveryLevel", "0").unwrap();
    assert_eq!(c.max_recv_data_segment_length, 65536);
    assert_eq!(c.max_burst_length, 131072);
    assert!(!c.immediate_data);
    assert_eq!(
        (c.header_digest, c.data_digest),
        (DigestPolicy::Crc32cOnly, DigestPolicy::Either)
    );
    let before = c.clone();
    for (k, v) in [
        ("MaxRecvDataSegmentLength", "511"),
        ("MaxRecvDataSegmentLength", "16777216"),
        ("ImmediateData", "yes"),
        ("HeaderDigest", "MD5"),
        ("ErrorRecoveryLevel", "1"),
        ("TargetAlias", "x"),
        ("NoSuchKey", "1"),
    ] {
        assert!(c.set(k, v).is_err(), "{k}={v}");
    }
    assert_eq!(c, before, "failed updates change nothing");
}

#[test]
fn random_text_never_panics_and_valid_text_round_trips() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(7143);
    let alphabet = b"ab=\0\xff\xc3X-_9";
    for _ in 0..5000 {
        let n = rng.gen_range(0..200);
        let bytes: Vec<u8> = (0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
        if let Ok(pairs) = parse_text(&bytes) {
            // Whatever parses re-encodes to text that parses the same.
            assert_eq!(parse_text(&encode_text(&pairs)).unwrap(), pairs);
            let mut n = Negotiation::new(TargetParamConfig::default());
            let _ = n.answer(&pairs, rng.gen());
        }
        let mut acc = TextAccumulator::new();
        let cut = rng.gen_range(0..=bytes.len());
        assert_eq!(acc.push(&bytes[..cut], true).unwrap(), None);
        assert_eq!(acc.push(&bytes[cut..], false).unwrap(), Some(bytes.clone()));
    }
    for _ in 0..2000 {
        let count = rng.gen_range(1..10);
        let pairs: Vec<(String, String)> = (0..count)
            .map(|i| {
                let k = format!("K{i}{}", "k".repeat(rng.gen_range(0..MAX_KEY_LEN - 2)));
                let v: String = (0..rng.gen_range(0..=MAX_VALUE_LEN))
                    .map(|_| rng.gen_range('!'..='~'))
                    .collect();
                (k, v)
            })
            .collect();
        assert_eq!(parse_text(&encode_text(&pairs)).unwrap(), pairs);
    }
}
