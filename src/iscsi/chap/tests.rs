use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn hex(s: &str) -> Vec<u8> {
    decode_binary(&format!("0x{s}")).unwrap()
}

#[test]
fn md5_known_answers() {
    // RFC 1321 test vector: MD5("abc"); id 'a', secret "b", challenge "c".
    assert_eq!(
        ChapAlgorithm::Md5.response(b'a', b"b", b"c"),
        hex("900150983cd24fb0d6963f7d28e17f72")
    );
    // Computed independently with Python's hashlib: md5(bytes([7]) + b"secretsecret" + bytes(range(16))).
    let challenge: Vec<u8> = (0..16).collect();
    assert_eq!(
        ChapAlgorithm::Md5.response(7, b"secretsecret", &challenge),
        hex("6ecf51cbe0f7ac32d9cd952f3fd639c0")
    );
}

#[test]
fn sha256_known_answers() {
    // FIPS 180-2 test vector: SHA-256("abc").
    assert_eq!(
        ChapAlgorithm::Sha256.response(b'a', b"b", b"c"),
        hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let challenge: Vec<u8> = (32..64).collect();
    assert_eq!(
        ChapAlgorithm::Sha256.response(200, b"mutualsecret1", &challenge),
        hex("c81e2a29f28d5588a045d32a3b71ba352887203dfd8f06341994d5b0739d3632")
    );
}

#[test]
fn algorithm_selection_follows_initiator_order() {
    assert_eq!(select_algorithm("7,5"), Some(ChapAlgorithm::Sha256));
    assert_eq!(select_algorithm("5,7"), Some(ChapAlgorithm::Md5));
    assert_eq!(
        select_algorithm("6,5"),
        Some(ChapAlgorithm::Md5),
        "6 (SHA-1) unsupported, skipped"
    );
    assert_eq!(select_algorithm("0x5"), Some(ChapAlgorithm::Md5));
    assert_eq!(select_algorithm("6,128,junk"), None);
    assert_eq!(select_algorithm(""), None);
}

#[test]
fn binary_values_hex_and_base64() {
    let bytes: Vec<u8> = (0..16).collect();
    assert_eq!(decode_binary("0x000102030405060708090a0b0c0d0e0f"), Some(bytes.clone()));
    assert_eq!(decode_binary("0X000102030405060708090A0B0C0D0E0F"), Some(bytes.clone()));
    assert_eq!(decode_binary("0bAAECAwQFBgcICQoLDA0ODw=="), Some(bytes.clone()));
    assert_eq!(
        decode_binary("0BAAECAwQFBgcICQoLDA0ODw"),
        Some(bytes.clone()),
        "padding optional"
    );
    assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]), "odd digit count");
    assert_eq!(encode_hex(&bytes), "0x000102030405060708090a0b0c0d0e0f");
    for bad in [
        "", "0x", "0b", "abcd", "0xgg", "0b!!!!", "0bA", "0bAA===", "1x00", "0z00",
    ] {
        assert_eq!(decode_binary(bad), None, "{bad:?}");
    }
    let huge = format!("0x{}", "00".repeat(MAX_BINARY + 1));
    assert_eq!(decode_binary(&huge), None);
}

#[test]
fn constant_time_eq_compares() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(constant_time_eq(b"", b""));
}

fn lookup<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| pairs.iter().find(|(pk, _)| *pk == k).map(|(_, v)| v.clone())
}

fn value(keys: &[(String, String)], k: &str) -> String {
    keys.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone()).unwrap()
}

/// Runs the target through CHAP_A, returns (algorithm, id, challenge).
fn challenge(t: &mut ChapTarget, offer: &str, rng: &mut StdRng) -> (ChapAlgorithm, u8, Vec<u8>) {
    let req = [("CHAP_A", offer.to_string())];
    let ChapStep::Continue(keys) = t.step(&lookup(&req), rng).unwrap() else {
        panic!("expected challenge")
    };
    let alg = ChapAlgorithm::from_code(value(&keys, "CHAP_A").parse().unwrap()).unwrap();
    let id: u8 = value(&keys, "CHAP_I").parse().unwrap();
    let c = decode_binary(&value(&keys, "CHAP_C")).unwrap();
    assert_eq!(c.len(), alg.digest_len());
    (alg, id, c)
}

#[test]
fn one_way_right_and_wrong_secret() {
    let mut rng = StdRng::seed_from_u64(1);
    let accounts = vec![
        ChapAccount::new("other", "othersecret1"),
        ChapAccount::new("alice", "alicesecret1"),
    ];
    let mut t = ChapTarget::new(accounts.clone(), None);
    let (alg, id, c) = challenge(&mut t, "5", &mut rng);
    assert_eq!(alg, ChapAlgorithm::Md5);
    let r = encode_hex(&alg.response(id, b"alicesecret1", &c));
    let req = [("CHAP_N", "alice".to_string()), ("CHAP_R", r)];
    assert_eq!(
        t.step(&lookup(&req), &mut rng).unwrap(),
        ChapStep::Authenticated {
            user: "alice".into(),
            reply: vec![]
        }
    );
    assert!(t.is_done());

    let mut t = ChapTarget::new(accounts.clone(), None);
    let (alg, id, c) = challenge(&mut t, "5", &mut rng);
    let r = encode_hex(&alg.response(id, b"wrongsecret!", &c));
    let req = [("CHAP_N", "alice".to_string()), ("CHAP_R", r)];
    assert_eq!(t.step(&lookup(&req), &mut rng), Err(ChapError::WrongResponse));

    // Right secret of another account does not count for this name.
    let mut t = ChapTarget::new(accounts, None);
    let (alg, id, c) = challenge(&mut t, "5", &mut rng);
    let r = encode_hex(&alg.response(id, b"othersecret1", &c));
    let req = [("CHAP_N", "alice".to_string()), ("CHAP_R", r)];
    assert_eq!(t.step(&lookup(&req), &mut rng), Err(ChapError::WrongResponse));
}

#[test]
fn base64_response_accepted() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut t = ChapTarget::new(vec![ChapAccount::new("u", "secretsecret")], None);
    let (alg, id, c) = challenge(&mut t, "7,5", &mut rng);
    assert_eq!(alg, ChapAlgorithm::Sha256);
    let resp = alg.response(id, b"secretsecret", &c);
    // Encode base64 by hand via the decoder's inverse: check round trip through hex first.
    let b64 = {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::from("0b");
        for ch in resp.chunks(3) {
            let n = (ch[0] as u32) << 16 | (*ch.get(1).unwrap_or(&0) as u32) << 8 | *ch.get(2).unwrap_or(&0) as u32;
            for i in 0..=ch.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        s
    };
    let req = [("CHAP_N", "u".to_string()), ("CHAP_R", b64)];
    assert!(matches!(
        t.step(&lookup(&req), &mut rng),
        Ok(ChapStep::Authenticated { .. })
    ));
}

#[test]
fn mutual_chap_target_proves_itself() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut t = ChapTarget::new(
        vec![ChapAccount::new("in", "incomingpass")],
        Some(ChapAccount::new("out", "outgoingpass")),
    );
    let (alg, id, c) = challenge(&mut t, "5", &mut rng);
    let peer_c: Vec<u8> = (100..116).collect();
    let req = [
        ("CHAP_N", "in".to_string()),
        ("CHAP_R", encode_hex(&alg.response(id, b"incomingpass", &c))),
        ("CHAP_I", "77".to_string()),
        ("CHAP_C", encode_hex(&peer_c)),
    ];
    let ChapStep::Authenticated { reply, .. } = t.step(&lookup(&req), &mut rng).unwrap() else {
        panic!()
    };
    assert_eq!(value(&reply, "CHAP_N"), "out");
    // What the initiator computes to check the target (Python hashlib:
    // md5(bytes([77]) + b"outgoingpass" + bytes(range(100, 116)))).
    assert_eq!(value(&reply, "CHAP_R"), "0x1fc03fbf6297d7641501872b780d8c87");
}

#[test]
fn mutual_chap_refusals() {
    let mut rng = StdRng::seed_from_u64(4);
    let inc = || vec![ChapAccount::new("in", "incomingpass")];
    let out = || Some(ChapAccount::new("out", "outgoingpass"));
    type Case = (Option<ChapAccount>, Option<&'static str>, Option<Vec<u8>>, ChapError);
    let cases: Vec<Case> = vec![
        // Reflection: the initiator sends our own challenge back.
        (out(), Some("1"), None, ChapError::ReflectedChallenge),
        (None, Some("1"), Some(vec![9; 16]), ChapError::NoOutgoingAccount),
        (out(), Some("256"), Some(vec![9; 16]), ChapError::BadIdentifier),
        (out(), Some("1"), Some(vec![9; 8]), ChapError::ShortChallenge),
        (out(), None, Some(vec![9; 16]), ChapError::HalfMutual),
    ];
    for (outgoing, peer_i, peer_c, want) in cases {
        let mut t = ChapTarget::new(inc(), outgoing);
        let (alg, id, c) = challenge(&mut t, "5", &mut rng);
        let mut req = vec![
            ("CHAP_N", "in".to_string()),
            ("CHAP_R", encode_hex(&alg.response(id, b"incomingpass", &c))),
        ];
        if let Some(i) = peer_i {
            req.push(("CHAP_I", i.to_string()));
        }
        let peer_c = peer_c.unwrap_or(c.clone());
        if peer_i.is_some() || want == ChapError::HalfMutual {
            req.push(("CHAP_C", encode_hex(&peer_c)));
        }
        assert_eq!(t.step(&lookup(&req), &mut rng), Err(want));
    }
}

#[test]
fn exchange_errors() {
    let mut rng = StdRng::seed_from_u64(5);
    let acc = || vec![ChapAccount::new("u", "secretsecret")];
    let mut t = ChapTarget::new(acc(), None);
    assert_eq!(
        t.step(&lookup(&[("CHAP_A", "6".into())]), &mut rng),
        Err(ChapError::NoAlgorithm)
    );
    let mut t = ChapTarget::new(acc(), None);
    assert_eq!(
        t.step(&lookup(&[("CHAP_R", "0x00".into())]), &mut rng),
        Err(ChapError::Unexpected("CHAP_R".into()))
    );
    let mut t = ChapTarget::new(acc(), None);
    challenge(&mut t, "5", &mut rng);
    assert_eq!(
        t.step(&lookup(&[("CHAP_R", "0x00".into())]), &mut rng),
        Err(ChapError::Missing("CHAP_N"))
    );
    let mut t = ChapTarget::new(acc(), None);
    challenge(&mut t, "5", &mut rng);
    let req = [("CHAP_N", "nobody".to_string()), ("CHAP_R", "0x00".to_string())];
    assert_eq!(
        t.step(&lookup(&req), &mut rng),
        Err(ChapError::UnknownUser("nobody".into()))
    );
    let mut t = ChapTarget::new(acc(), None);
    challenge(&mut t, "5", &mut rng);
    let req = [("CHAP_N", "u".to_string()), ("CHAP_R", "xyz".to_string())];
    assert_eq!(t.step(&lookup(&req), &mut rng), Err(ChapError::BadEncoding("CHAP_R")));
}

#[test]
fn challenges_depend_on_the_rng() {
    let acc = vec![ChapAccount::new("u", "secretsecret")];
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        challenge(&mut ChapTarget::new(acc.clone(), None), "5", &mut rng)
    };
    assert_eq!(run(9), run(9), "same seed, same challenge");
    assert_ne!(run(9).2, run(10).2, "another seed, another challenge");
}

#[test]
fn debug_hides_secret() {
    let s = format!("{:?}", ChapAccount::new("user", "topsecretvalue"));
    assert!(s.contains("user") && !s.contains("topsecretvalue"));
}

#[test]
fn random_binary_values_never_panic_and_hex_round_trips() {
    let mut rng = StdRng::seed_from_u64(1994);
    let alphabet = b"0xXbB=+/aAfFgZz9\xff";
    for _ in 0..20000 {
        let n = rand::Rng::gen_range(&mut rng, 0..40);
        let s: Vec<u8> = (0..n)
            .map(|_| alphabet[rand::Rng::gen_range(&mut rng, 0..alphabet.len())])
            .collect();
        if let Ok(s) = std::str::from_utf8(&s) {
            let _ = decode_binary(s);
            let _ = select_algorithm(s);
        }
        let bytes: Vec<u8> = (0..rand::Rng::gen_range(&mut rng, 1..64))
            .map(|_| rand::Rng::gen(&mut rng))
            .collect();
        assert_eq!(decode_binary(&encode_hex(&bytes)), Some(bytes));
    }
}
