//! Seeded random input against the pure NBD pieces: whatever a client sends, the
//! decoders and the negotiator answer or refuse, and never panic. (A cheap, always-run
//! cousin of a fuzzer: 200k deterministic cases in well under a second.)

use super::handshake::{ExportInfo, Negotiator, Step, TxParams};
use super::proto::{OptionHeader, Request, OPTION_HEADER_LEN, REQUEST_LEN};
use super::transmission::check;
use crate::BlockSizes;

/// xorshift64*: a tiny deterministic generator, so failures replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Mostly small values, sometimes the interesting edges.
    fn u32_edge(&mut self) -> u32 {
        match self.next() % 6 {
            0 => 0,
            1 => u32::MAX,
            2 => 1 << (self.next() % 32),
            _ => (self.next() % 16) as u32,
        }
    }
}

fn export() -> ExportInfo {
    ExportInfo {
        name: "r0".into(),
        description: "test".into(),
        size: 1 << 30,
        read_only: false,
        multi_conn: true,
        block_sizes: BlockSizes {
            minimum: 512,
            preferred: 4096,
            maximum: 32 << 20,
        },
    }
}

#[test]
fn random_option_sequences_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let info = export();
    for case in 0..20_000u32 {
        let Ok(mut neg) = Negotiator::new(rng.next() as u32 & 3) else {
            continue;
        };
        for _ in 0..(case % 8 + 1) {
            let option = rng.u32_edge();
            let len = (rng.next() % 64) as usize;
            let mut data = rng.bytes(len);
            // Sometimes a well-formed GO/INFO prefix with a random name length.
            if len >= 4 && rng.coin() {
                data[..4].copy_from_slice(&rng.u32_edge().to_be_bytes());
            }
            match neg.option(&info, option, &data) {
                Step::Close(_) | Step::ReplyThenClose(_) | Step::Enter(_) => break,
                Step::Reply(bytes) => assert!(!bytes.is_empty()),
            }
        }
    }
}

#[test]
fn random_headers_decode_or_refuse() {
    let mut rng = Rng(42);
    for _ in 0..100_000 {
        let mut h = [0u8; OPTION_HEADER_LEN];
        h.copy_from_slice(&rng.bytes(OPTION_HEADER_LEN));
        if rng.coin() {
            h[..8].copy_from_slice(b"IHAVEOPT");
        }
        let _ = OptionHeader::decode(&h);
    }
    let params = TxParams {
        size: 1 << 30,
        flags: 0xffff,
        read_only: false,
        structured: true,
        max_payload: 32 << 20,
    };
    for _ in 0..100_000 {
        let mut r = [0u8; REQUEST_LEN];
        r.copy_from_slice(&rng.bytes(REQUEST_LEN));
        if rng.coin() {
            r[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
        }
        if let Ok(req) = Request::decode(&r) {
            let ro = rng.coin();
            let _ = check(
                &req,
                &TxParams {
                    read_only: ro,
                    ..params
                },
                ro,
            );
        }
    }
}
