//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 section 12.1.3), target side.
//!
//! Exchange, after `AuthMethod=CHAP` was agreed:
//! 1. initiator: `CHAP_A=<list>`; target: `CHAP_A=<chosen>`, `CHAP_I=<id>`, `CHAP_C=<challenge>`;
//! 2. initiator: `CHAP_N=<user>`, `CHAP_R=<H(id || secret || challenge)>`, and for mutual CHAP
//!    also `CHAP_I`, `CHAP_C`; the target checks the response against its incoming accounts and,
//!    for mutual CHAP, answers `CHAP_N=<outgoing user>`, `CHAP_R=<H(id' || secret' || challenge')>`.
//!
//! Algorithms: 5 (MD5) and 7 (SHA-256, draft RFC 7143bis; open-iscsi 2.1 offers `CHAP_A=7,5`).
//! Randomness comes from the caller (an `RngCore`), so tests are deterministic; the daemon must
//! pass a CSPRNG (tgt's challenge came from unseeded `rand()` until 2024).

use std::fmt;

use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Challenge length we send. RFC 7143 asks for challenges at least as long as the digest; we
/// send the digest length (16 bytes for MD5, 32 for SHA-256).
pub fn challenge_len(alg: ChapAlgorithm) -> usize {
    alg.digest_len()
}

/// Shortest challenge we accept from the initiator in mutual CHAP.
pub const MIN_PEER_CHALLENGE: usize = 16;
/// Longest binary value (challenge or response) we accept, in bytes.
pub const MAX_BINARY: usize = 1024;

/// A CHAP hash algorithm, by its CHAP_A number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5 = 5,
    Sha256 = 7,
}

impl ChapAlgorithm {
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// The CHAP response: H(id || secret || challenge) (RFC 1994 section 4.1).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            ChapAlgorithm::Md5 => {
                let mut h = Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            ChapAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// Picks the first algorithm of the initiator's list (its order of preference) that we support.
/// Unknown or malformed items are ignored, as RFC 7143 section 6.2 asks of list values.
pub fn select_algorithm(offer: &str) -> Option<ChapAlgorithm> {
    offer
        .split(',')
        .find_map(|item| crate::iscsi::params::parse_number(item.trim()).and_then(ChapAlgorithm::from_code))
}

/// A CHAP account: the name the prover sends as CHAP_N and the shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapAccount {
    pub user: String,
    pub secret: Vec<u8>,
}

impl ChapAccount {
    pub fn new(user: &str, secret: &str) -> Self {
        ChapAccount {
            user: user.to_string(),
            secret: secret.as_bytes().to_vec(),
        }
    }
}

impl fmt::Debug for ChapAccount {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapAccount")
            .field("user", &self.user)
            .field("secret", &"***")
            .finish()
    }
}

/// Why CHAP failed (all map to login status 0x0201, authentication failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapError {
    /// No algorithm of the initiator's CHAP_A list is supported.
    NoAlgorithm,
    /// A key missing from the initiator's response (CHAP_A, CHAP_N or CHAP_R).
    Missing(&'static str),
    /// A binary value that is neither 0x-hex nor 0b-base64, or too long.
    BadEncoding(&'static str),
    /// CHAP_N names no incoming account.
    UnknownUser(String),
    /// CHAP_R does not match.
    WrongResponse,
    /// Mutual CHAP asked for but the target has no outgoing account.
    NoOutgoingAccount,
    /// The initiator's challenge equals ours (reflection attack, RFC 7143 section 12.1.3).
    ReflectedChallenge,
    /// The initiator's challenge is too short.
    ShortChallenge,
    /// CHAP_I is not a number 0..=255.
    BadIdentifier,
    /// Only one of CHAP_I/CHAP_C was sent.
    HalfMutual,
    /// A CHAP key arrived out of order.
    Unexpected(String),
}

impl fmt::Display for ChapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChapError::NoAlgorithm => write!(f, "no supported CHAP algorithm offered (we support 5=MD5, 7=SHA-256)"),
            ChapError::Missing(k) => write!(f, "{k} missing"),
            ChapError::BadEncoding(k) => write!(f, "{k} is not a valid 0x/0b binary value"),
            ChapError::UnknownUser(u) => write!(f, "no incoming CHAP account named {u:?}"),
            ChapError::WrongResponse => write!(f, "CHAP response does not match"),
            ChapError::NoOutgoingAccount => write!(
                f,
                "initiator asks for mutual CHAP but the target has no outgoing account"
            ),
            ChapError::ReflectedChallenge => write!(f, "initiator reflected the target's challenge"),
            ChapError::ShortChallenge => write!(f, "initiator's challenge is too short"),
            ChapError::BadIdentifier => write!(f, "CHAP_I is not a number 0..255"),
            ChapError::HalfMutual => write!(f, "CHAP_I and CHAP_C must come together"),
            ChapError::Unexpected(k) => write!(f, "unexpected CHAP key {k}"),
        }
    }
}

impl std::error::Error for ChapError {}

/// Encodes bytes as RFC 7143 hex ("0x" + lowercase hex digits).
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn b64_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes an RFC 7143 binary value: "0x"/"0X" + hex (an odd digit count means a leading
/// zero nibble) or "0b"/"0B" + base64 (padding optional). None if malformed or longer than
/// [`MAX_BINARY`] bytes.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    let b = v.as_bytes();
    if b.len() < 3 || b[0] != b'0' {
        return None;
    }
    let body = &b[2..];
    let out = match b[1] {
        b'x' | b'X' => {
            let mut out = Vec::with_capacity(body.len() / 2 + 1);
            let mut digits = body.iter().map(|&c| hex_digit(c));
            if body.len() % 2 == 1 {
                out.push(digits.next()??);
            }
            while let Some(hi) = digits.next() {
                let lo = digits.next()??;
                out.push((hi? << 4) | lo);
            }
            out
        }
        b'b' | b'B' => {
            let trimmed = {
                let mut end = body.len();
                while end > 0 && body[end - 1] == b'=' {
                    end -= 1;
                }
                if body.len() - end > 2 {
                    return None;
                }
                &body[..end]
            };
            if trimmed.len() % 4 == 1 {
                return None;
            }
            let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
            let mut acc: u32 = 0;
            let mut bits = 0;
            for &c in trimmed {
                acc = (acc << 6) | b64_digit(c)? as u32;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                    acc &= (1 << bits) - 1;
                }
            }
            out
        }
        _ => return None,
    };
    if out.is_empty() || out.len() > MAX_BINARY {
        return None;
    }
    Some(out)
}

/// Compares without an early exit, so the time taken does not tell how many bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Where the target's side of one CHAP exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    AwaitResponse {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// The initiator proved itself (and, for mutual CHAP, we answered).
    Done,
}

/// What the exchange produced for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapStep {
    /// Send these keys and wait for the initiator's next PDU.
    Continue(Vec<(String, String)>),
    /// The initiator is authenticated; send these keys (empty unless mutual).
    Authenticated { user: String, reply: Vec<(String, String)> },
}

/// The target's side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapTarget {
    state: State,
    incoming: Vec<ChapAccount>,
    outgoing: Option<ChapAccount>,
}

impl ChapTarget {
    /// `incoming`: accounts an initiator may prove itself with; `outgoing`: the account the
    /// target proves itself with when the initiator asks (mutual CHAP).
    pub fn new(incoming: Vec<ChapAccount>, outgoing: Option<ChapAccount>) -> Self {
        ChapTarget {
            state: State::AwaitAlgorithm,
            incoming,
            outgoing,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True once CHAP_A was answered (the initiator's next PDU must carry CHAP_N/CHAP_R).
    pub fn challenge_sent(&self) -> bool {
        matches!(self.state, State::AwaitResponse { .. })
    }

    /// Handles the CHAP keys of one complete request (`get` looks a key up in it).
    pub fn step(&mut self, get: &dyn Fn(&str) -> Option<String>, rng: &mut dyn RngCore) -> Result<ChapStep, ChapError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitAlgorithm => {
                for k in ["CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"] {
                    if get(k).is_some() {
                        return Err(ChapError::Unexpected(k.to_string()));
                    }
                }
                let Some(offer) = get("CHAP_A") else {
                    // Nothing yet (e.g. an empty PDU); keep waiting.
                    self.state = State::AwaitAlgorithm;
                    return Ok(ChapStep::Continue(Vec::new()));
                };
                let alg = select_algorithm(&offer).ok_or(ChapError::NoAlgorithm)?;
                let mut idb = [0u8; 1];
                rng.fill_bytes(&mut idb);
                let mut challenge = vec![0u8; challenge_len(alg)];
                rng.fill_bytes(&mut challenge);
                let keys = vec![
                    ("CHAP_A".to_string(), alg.code().to_string()),
                    ("CHAP_I".to_string(), idb[0].to_string()),
                    ("CHAP_C".to_string(), encode_hex(&challenge)),
                ];
                self.state = State::AwaitResponse {
                    alg,
                    id: idb[0],
                    challenge,
                };
                Ok(ChapStep::Continue(keys))
            }
            State::AwaitResponse { alg, id, challenge } => {
                if get("CHAP_A").is_some() {
                    return Err(ChapError::Unexpected("CHAP_A".to_string()));
                }
                let user = get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
                let r = get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?;
                let r = decode_binary(&r).ok_or(ChapError::BadEncoding("CHAP_R"))?;
                // Look at every account so the time does not reveal which names exist.
                let mut ok = false;
                let mut known = false;
                for acc in &self.incoming {
                    let name_match = constant_time_eq(acc.user.as_bytes(), user.as_bytes());
                    let expect = alg.response(id, &acc.secret, &challenge);
                    let resp_match = constant_time_eq(&expect, &r);
                    known |= name_match;
                    ok |= name_match & resp_match;
                }
                if !known {
                    return Err(ChapError::UnknownUser(user));
                }
                if !ok {
                    return Err(ChapError::WrongResponse);
                }
                let reply = match (get("CHAP_I"), get("CHAP_C")) {
                    (None, None) => Vec::new(),
                    (Some(i), Some(c)) => {
                        let peer_id = crate::iscsi::params::parse_number(&i)
                            .filter(|n| *n <= 255)
                            .ok_or(ChapError::BadIdentifier)? as u8;
                        let peer_c = decode_binary(&c).ok_or(ChapError::BadEncoding("CHAP_C"))?;
                        if constant_time_eq(&peer_c, &challenge) {
                            return Err(ChapError::ReflectedChallenge);
                        }
                        if peer_c.len() < MIN_PEER_CHALLENGE {
                            return Err(ChapError::ShortChallenge);
                        }
                        let out = self.outgoing.as_ref().ok_or(ChapError::NoOutgoingAccount)?;
                        vec![
                            ("CHAP_N".to_string(), out.user.clone()),
                            (
                                "CHAP_R".to_string(),
                                encode_hex(&alg.response(peer_id, &out.secret, &peer_c)),
                            ),
                        ]
                    }
                    _ => return Err(ChapError::HalfMutual),
                };
                self.state = State::Done;
                Ok(ChapStep::Authenticated { user, reply })
            }
            State::Done => {
                for k in ["CHAP_A", "CHAP_N", "CHAP_R", "CHAP_I", "CHAP_C"] {
                    if get(k).is_some() {
                        return Err(ChapError::Unexpected(k.to_string()));
                    }
                }
                Ok(ChapStep::Continue(Vec::new()))
            }
        }
    }
}

#[cfg(test)]
mod tests;
