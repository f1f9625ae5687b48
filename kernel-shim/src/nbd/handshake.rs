//! Option negotiation (fixed newstyle) as a pure state machine.
//!
//! The driver sends [`greeting`], reads the client flags and hands them to
//! [`Negotiator::new`], then feeds every option (number and data) to
//! [`Negotiator::option`], which answers with the bytes to send and what to do next.
//! Nothing here touches a socket or the device: the one side effect negotiation needs,
//! opening the device when a client enters transmission, is handed back to the driver
//! as [`Step::Enter`].

use super::proto::*;
use crate::BlockSizes;

/// Handshake flags we offer.
pub const SERVER_HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// Largest payload any request may carry, whatever the device claims (bounds memory).
pub const HARD_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;

/// The bytes the server sends as soon as a client connects.
pub fn greeting() -> [u8; GREETING_LEN] {
    encode_greeting(SERVER_HANDSHAKE_FLAGS)
}

/// What negotiation needs to know about the export, sampled when an option arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
    pub multi_conn: bool,
    pub block_sizes: BlockSizes,
}

/// Parameters of the transmission phase, fixed when the client enters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxParams {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// The export was read-only when the client entered transmission.
    pub read_only: bool,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Largest READ/WRITE payload accepted (the advertised maximum block size).
    pub max_payload: u32,
}

/// How the client asked to enter transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterKind {
    /// `NBD_OPT_GO`: a refusal can be reported with an error reply.
    Go,
    /// `NBD_OPT_EXPORT_NAME`: no error reply exists; a refusal closes the connection.
    ExportName,
}

/// The client wants to start transmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EnterKind,
    /// The option number (for [`Negotiator::refusal`]).
    pub option: u32,
    /// Bytes to send once the device has been opened successfully.
    pub reply: Vec<u8>,
    pub params: TxParams,
}

/// What the driver does after an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes and read the next option.
    Reply(Vec<u8>),
    /// Send these bytes, then close the connection (`NBD_OPT_ABORT`).
    ReplyThenClose(Vec<u8>),
    /// Close the connection without a reply; the string says why (for the log).
    Close(&'static str),
    /// Open the device; on success send `reply` and enter transmission, on failure send
    /// [`Negotiator::refusal`] (GO) or close (EXPORT_NAME).
    Enter(Entry),
}

/// Why a client is refused before any option is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
}

/// Option negotiation state for one connection.
#[derive(Debug, Clone)]
pub struct Negotiator {
    fixed_newstyle: bool,
    no_zeroes: bool,
    structured: bool,
}

/// The block sizes we advertise, made consistent with the spec whatever the device says:
/// minimum a power of two in 1..=64 KiB, preferred a power of two >= minimum, maximum a
/// multiple of minimum, >= preferred and <= [`HARD_MAX_PAYLOAD`].
pub fn sane_block_sizes(b: BlockSizes) -> BlockSizes {
    let minimum = if b.minimum.is_power_of_two() && b.minimum <= 64 * 1024 {
        b.minimum
    } else {
        1
    };
    let preferred = if b.preferred.is_power_of_two() && b.preferred >= minimum {
        b.preferred.min(HARD_MAX_PAYLOAD)
    } else {
        minimum.max(4096)
    };
    let mut maximum = b.maximum.min(HARD_MAX_PAYLOAD);
    maximum -= maximum % minimum;
    if maximum < preferred {
        maximum = preferred;
    }
    BlockSizes {
        minimum,
        preferred,
        maximum,
    }
}

/// Transmission flags for `export`.
pub fn transmission_flags(export: &ExportInfo, structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
    if export.read_only {
        // Trim and zeroes would only earn EPERM; do not invite them.
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    }
    if export.multi_conn {
        f |= TFLAG_CAN_MULTI_CONN;
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

fn name_matches(export: &ExportInfo, requested: &[u8]) -> bool {
    requested.is_empty() || requested == export.name.as_bytes()
}

fn error_reply(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_option_reply(
        &mut out,
        option,
        reply_type,
        clip_str(message, MAX_STRING_LEN).as_bytes(),
    );
    out
}

impl Negotiator {
    /// Starts negotiation with the client's flags.
    pub fn new(client_flags: u32) -> Result<Negotiator, HandshakeError> {
        if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
            return Err(HandshakeError::UnknownClientFlags(client_flags));
        }
        Ok(Negotiator {
            fixed_newstyle: client_flags & FLAG_C_FIXED_NEWSTYLE != 0,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            structured: false,
        })
    }

    /// True once `NBD_OPT_STRUCTURED_REPLY` has been acknowledged.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// True when the client announced fixed newstyle (we answer the same either way,
    /// but it is useful in logs).
    pub fn fixed_newstyle(&self) -> bool {
        self.fixed_newstyle
    }

    /// The reply to a GO whose device open failed with `message`.
    pub fn refusal(&self, option: u32, message: &str) -> Vec<u8> {
        error_reply(option, REP_ERR_POLICY, message)
    }

    fn params(&self, export: &ExportInfo) -> TxParams {
        TxParams {
            size: export.size,
            flags: transmission_flags(export, self.structured),
            read_only: export.read_only,
            structured: self.structured,
            max_payload: sane_block_sizes(export.block_sizes).maximum,
        }
    }

    /// Handles one option and its data.
    pub fn option(&mut self, export: &ExportInfo, option: u32, data: &[u8]) -> Step {
        match option {
            OPT_EXPORT_NAME => self.export_name(export, data),
            OPT_ABORT => {
                let mut out = Vec::new();
                put_option_reply(&mut out, option, REP_ACK, &[]);
                Step::ReplyThenClose(out)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    return Step::Reply(error_reply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data"));
                }
                let name = clip_str(&export.name, MAX_STRING_LEN).as_bytes();
                let desc = clip_str(&export.description, MAX_STRING_LEN).as_bytes();
                let mut payload = Vec::with_capacity(4 + name.len() + desc.len());
                payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
                payload.extend_from_slice(name);
                payload.extend_from_slice(desc);
                let mut out = Vec::new();
                put_option_reply(&mut out, option, REP_SERVER, &payload);
                put_option_reply(&mut out, option, REP_ACK, &[]);
                Step::Reply(out)
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return Step::Reply(error_reply(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    ));
                }
                self.structured = true;
                let mut out = Vec::new();
                put_option_reply(&mut out, option, REP_ACK, &[]);
                Step::Reply(out)
            }
            OPT_INFO | OPT_GO => self.info_or_go(export, option, data),
            OPT_STARTTLS => Step::Reply(error_reply(
                option,
                REP_ERR_UNSUP,
                "TLS is not supported by this server",
            )),
            _ => Step::Reply(error_reply(
                option,
                REP_ERR_UNSUP,
                "option not supported by this server",
            )),
        }
    }

    fn export_name(&mut self, export: &ExportInfo, name: &[u8]) -> Step {
        if !name_matches(export, name) {
            return Step::Close("NBD_OPT_EXPORT_NAME for an unknown export");
        }
        let params = self.params(export);
        let mut reply = Vec::with_capacity(10 + 124);
        reply.extend_from_slice(&export.size.to_be_bytes());
        reply.extend_from_slice(&params.flags.to_be_bytes());
        if !self.no_zeroes {
            reply.extend_from_slice(&[0u8; 124]);
        }
        Step::Enter(Entry {
            kind: EnterKind::ExportName,
            option: OPT_EXPORT_NAME,
            reply,
            params,
        })
    }

    fn info_or_go(&mut self, export: &ExportInfo, option: u32, data: &[u8]) -> Step {
        // u32 name length, name, u16 number of info requests, u16 each.
        let mut c = Cursor::new(data);
        let parsed = (|| {
            let name_len = c.u32()? as usize;
            let name = c.bytes(name_len)?;
            let n = c.u16()? as usize;
            let mut wanted = Vec::with_capacity(n.min(16));
            for _ in 0..n {
                wanted.push(c.u16()?);
            }
            if c.remaining() != 0 {
                return None;
            }
            Some((name, wanted))
        })();
        let Some((name, wanted)) = parsed else {
            return Step::Reply(error_reply(
                option,
                REP_ERR_INVALID,
                "malformed NBD_OPT_INFO/NBD_OPT_GO request",
            ));
        };
        if !name_matches(export, name) {
            let shown = String::from_utf8_lossy(clip_str_bytes(name, 256));
            return Step::Reply(error_reply(
                option,
                REP_ERR_UNKNOWN,
                &format!("no export named \"{shown}\" on this server"),
            ));
        }

        let params = self.params(export);
        let mut out = Vec::new();
        // NBD_INFO_EXPORT is always sent.
        let mut info = Vec::with_capacity(12);
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&export.size.to_be_bytes());
        info.extend_from_slice(&params.flags.to_be_bytes());
        put_option_reply(&mut out, option, REP_INFO, &info);

        if wanted.contains(&INFO_NAME) {
            let mut info = INFO_NAME.to_be_bytes().to_vec();
            info.extend_from_slice(clip_str(&export.name, MAX_STRING_LEN).as_bytes());
            put_option_reply(&mut out, option, REP_INFO, &info);
        }
        if wanted.contains(&INFO_DESCRIPTION) && !export.description.is_empty() {
            let mut info = INFO_DESCRIPTION.to_be_bytes().to_vec();
            info.extend_from_slice(clip_str(&export.description, MAX_STRING_LEN).as_bytes());
            put_option_reply(&mut out, option, REP_INFO, &info);
        }
        // Block sizes are sent whether asked or not (the spec allows unrequested info);
        // clients that did not ask are not bound by them, and we accept any alignment.
        let b = sane_block_sizes(export.block_sizes);
        let mut info = Vec::with_capacity(14);
        info.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        info.extend_from_slice(&b.minimum.to_be_bytes());
        info.extend_from_slice(&b.preferred.to_be_bytes());
        info.extend_from_slice(&b.maximum.to_be_bytes());
        put_option_reply(&mut out, option, REP_INFO, &info);

        put_option_reply(&mut out, option, REP_ACK, &[]);

        if option == OPT_INFO {
            Step::Reply(out)
        } else {
            Step::Enter(Entry {
                kind: EnterKind::Go,
                option,
                reply: out,
                params,
            })
        }
    }
}

fn clip_str_bytes(b: &[u8], max: usize) -> &[u8] {
    &b[..b.len().min(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> ExportInfo {
        ExportInfo {
            name: "r0".into(),
            description: "resource r0".into(),
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

    fn replies(mut bytes: &[u8]) -> Vec<OptionReply> {
        let mut v = Vec::new();
        while !bytes.is_empty() {
            let (r, n) = OptionReply::decode(bytes).expect("well-formed reply");
            v.push(r);
            bytes = &bytes[n..];
        }
        v
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn new_neg() -> Negotiator {
        Negotiator::new(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).unwrap()
    }

    #[test]
    fn unknown_client_flags_are_refused() {
        assert!(Negotiator::new(0).is_ok());
        assert!(Negotiator::new(KNOWN_CLIENT_FLAGS).is_ok());
        assert_eq!(
            Negotiator::new(1 << 7).unwrap_err(),
            HandshakeError::UnknownClientFlags(1 << 7)
        );
    }

    #[test]
    fn go_by_name_and_by_empty_name() {
        for name in ["r0", ""] {
            let mut n = new_neg();
            let Step::Enter(e) = n.option(
                &export(),
                OPT_GO,
                &go_data(name, &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
            ) else {
                panic!("GO must enter");
            };
            assert_eq!(e.kind, EnterKind::Go);
            let r = replies(&e.reply);
            assert_eq!(r.len(), 5);
            assert!(r.iter().all(|r| r.option == OPT_GO));
            assert_eq!(r[0].reply_type, REP_INFO);
            assert_eq!(&r[0].data[0..2], &INFO_EXPORT.to_be_bytes());
            assert_eq!(&r[0].data[2..10], &(1u64 << 30).to_be_bytes());
            let flags = u16::from_be_bytes([r[0].data[10], r[0].data[11]]);
            assert_eq!(flags, e.params.flags);
            assert_eq!(flags & TFLAG_READ_ONLY, 0);
            assert_ne!(flags & TFLAG_CAN_MULTI_CONN, 0);
            assert_eq!(flags & TFLAG_SEND_DF, 0, "no DF without structured replies");
            assert_eq!(&r[1].data[2..], b"r0");
            assert_eq!(&r[2].data[2..], b"resource r0");
            assert_eq!(
                r[3].data,
                [
                    &[0u8, 3][..],
                    &512u32.to_be_bytes(),
                    &4096u32.to_be_bytes(),
                    &(32u32 << 20).to_be_bytes()
                ]
                .concat()
            );
            assert_eq!(r[4].reply_type, REP_ACK);
            assert_eq!(e.params.max_payload, 32 << 20);
            assert!(!e.params.structured);
        }
    }

    #[test]
    fn info_does_not_enter_and_unknown_name_is_reported() {
        let mut n = new_neg();
        let Step::Reply(b) = n.option(&export(), OPT_INFO, &go_data("r0", &[])) else {
            panic!("INFO replies");
        };
        let r = replies(&b);
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);

        let Step::Reply(b) = n.option(&export(), OPT_GO, &go_data("nope", &[])) else {
            panic!("unknown export is an error reply");
        };
        let r = replies(&b);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply_type, REP_ERR_UNKNOWN);
        assert!(String::from_utf8(r[0].data.clone()).unwrap().contains("nope"));
    }

    #[test]
    fn malformed_go_is_invalid() {
        let mut n = new_neg();
        let good = go_data("r0", &[INFO_NAME]);
        // Every truncation, a trailing byte, and a name length pointing past the end.
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|i| good[..i].to_vec()).collect();
        cases.push([good.clone(), vec![0]].concat());
        let mut lying = good.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(lying);
        for c in cases {
            let Step::Reply(b) = n.option(&export(), OPT_GO, &c) else {
                panic!("malformed GO must be answered, not entered");
            };
            assert_eq!(replies(&b)[0].reply_type, REP_ERR_INVALID);
        }
    }

    #[test]
    fn structured_reply_sets_df_and_rejects_data() {
        let mut n = new_neg();
        let Step::Reply(b) = n.option(&export(), OPT_STRUCTURED_REPLY, b"x") else {
            panic!()
        };
        assert_eq!(replies(&b)[0].reply_type, REP_ERR_INVALID);
        assert!(!n.structured());
        let Step::Reply(b) = n.option(&export(), OPT_STRUCTURED_REPLY, &[]) else {
            panic!()
        };
        assert_eq!(replies(&b)[0].reply_type, REP_ACK);
        assert!(n.structured());
        let Step::Enter(e) = n.option(&export(), OPT_GO, &go_data("", &[])) else {
            panic!()
        };
        assert!(e.params.structured);
        assert_ne!(e.params.flags & TFLAG_SEND_DF, 0);
    }

    #[test]
    fn list_abort_and_unsupported() {
        let mut n = new_neg();
        let Step::Reply(b) = n.option(&export(), OPT_LIST, &[]) else {
            panic!()
        };
        let r = replies(&b);
        assert_eq!(r[0].reply_type, REP_SERVER);
        assert_eq!(&r[0].data[0..4], &2u32.to_be_bytes());
        assert_eq!(&r[0].data[4..6], b"r0");
        assert_eq!(&r[0].data[6..], b"resource r0");
        assert_eq!(r[1].reply_type, REP_ACK);

        let Step::Reply(b) = n.option(&export(), OPT_LIST, b"junk") else {
            panic!()
        };
        assert_eq!(replies(&b)[0].reply_type, REP_ERR_INVALID);

        for opt in [
            OPT_STARTTLS,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_EXTENDED_HEADERS,
            12345,
        ] {
            let Step::Reply(b) = n.option(&export(), opt, b"whatever") else {
                panic!()
            };
            let r = replies(&b);
            assert_eq!(r[0].reply_type, REP_ERR_UNSUP);
            assert_eq!(r[0].option, opt);
        }

        let Step::ReplyThenClose(b) = n.option(&export(), OPT_ABORT, &[]) else {
            panic!()
        };
        assert_eq!(replies(&b)[0].reply_type, REP_ACK);
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        let mut ro = export();
        ro.read_only = true;
        let mut n = Negotiator::new(FLAG_C_FIXED_NEWSTYLE).unwrap();
        let Step::Enter(e) = n.option(&ro, OPT_EXPORT_NAME, b"r0") else {
            panic!()
        };
        assert_eq!(e.kind, EnterKind::ExportName);
        assert_eq!(e.reply.len(), 8 + 2 + 124);
        let flags = u16::from_be_bytes([e.reply[8], e.reply[9]]);
        assert_ne!(flags & TFLAG_READ_ONLY, 0);
        assert_eq!(flags & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES), 0);
        assert!(e.params.read_only);

        let mut n = new_neg();
        let Step::Enter(e) = n.option(&export(), OPT_EXPORT_NAME, b"") else {
            panic!()
        };
        assert_eq!(e.reply.len(), 10);

        assert!(matches!(n.option(&export(), OPT_EXPORT_NAME, b"other"), Step::Close(_)));
    }

    #[test]
    fn refusal_is_policy_error_with_message() {
        let n = new_neg();
        let r = replies(&n.refusal(OPT_GO, "resource is Secondary"));
        assert_eq!(r[0].reply_type, REP_ERR_POLICY);
        assert_eq!(r[0].data, b"resource is Secondary");
    }

    #[test]
    fn block_sizes_are_sanitised() {
        let s = sane_block_sizes(BlockSizes {
            minimum: 3,
            preferred: 0,
            maximum: u32::MAX,
        });
        assert_eq!(s.minimum, 1);
        assert_eq!(s.preferred, 4096);
        assert_eq!(s.maximum, HARD_MAX_PAYLOAD);
        let s = sane_block_sizes(BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: 10_000,
        });
        assert_eq!((s.minimum, s.preferred, s.maximum), (4096, 4096, 8192));
        let s = sane_block_sizes(BlockSizes {
            minimum: 512,
            preferred: 65536,
            maximum: 0,
        });
        assert_eq!(s.maximum, 65536);
    }
}
