//! NBD wire format: constants, fixed-size headers and their codecs.
//!
//! Everything on the wire is big-endian ("network byte order"). This module is pure:
//! it turns bytes into values and values into bytes, and rejects malformed input with
//! a [`WireError`] instead of panicking. The layouts follow the NBD protocol document
//! (`doc/proto.md` of the reference implementation); `docs/nbd.md` in this repository
//! says which parts we speak.

use std::fmt;

// ---------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------

/// `"NBDMAGIC"`, first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: newstyle negotiation marker, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Server handshake flag: fixed newstyle negotiation.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the client may ask to skip the 124 zero bytes.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag we understand; any other bit makes us close the connection.
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

/// Length of the server greeting: magic, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Length of an option header: IHAVEOPT, option, data length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Longest option payload we accept. Real options are a name (at most 4096 bytes by the
/// spec) plus a few info requests; anything longer is hostile and closes the connection.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest string (name, description, error message) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_PEEK_EXPORT: u32 = 4;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub const REP_ERR_POLICY: u32 = REP_ERR | 2;
pub const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub const REP_ERR_PLATFORM: u32 = REP_ERR | 4;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR | 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_ERR | 8;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// Info types (NBD_OPT_INFO / NBD_OPT_GO).
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_RESIZE: u16 = 1 << 9;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------

pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Length of a (compact) request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Length of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;
pub const CMD_RESIZE: u16 = 8;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Structured reply flags and chunk types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

/// Error values allowed on the wire (the spec fixes them; they are not the host's errno).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// Why a piece of input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {found:#x}, expected {expected:#x}")]
    BadMagic { expected: u64, found: u64 },
    #[error("option {option} carries {len} bytes, more than the {max} we accept")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("input too short: need {need} bytes, got {got}")]
    Truncated { need: usize, got: usize },
}

// ---------------------------------------------------------------------------------
// Small big-endian helpers over slices (never panic: callers check lengths first)
// ---------------------------------------------------------------------------------

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A cursor over untrusted bytes; every read is checked.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.remaining() < n {
            return None;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| be16(b, 0))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| be32(b, 0))
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn clip_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---------------------------------------------------------------------------------
// Handshake codec
// ---------------------------------------------------------------------------------

/// The 18 bytes the server sends first.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    g
}

/// The header of one client option; its `len` bytes of data follow on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    /// Decodes and validates a header; the length is capped at [`MAX_OPTION_LEN`].
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Result<Self, WireError> {
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(WireError::BadMagic {
                expected: IHAVEOPT,
                found: magic,
            });
        }
        let option = be32(b, 8);
        let len = be32(b, 12);
        if len > MAX_OPTION_LEN {
            return Err(WireError::OptionTooLong {
                option,
                len,
                max: MAX_OPTION_LEN,
            });
        }
        Ok(OptionHeader { option, len })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Appends one option reply (header plus `data`) to `out`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Every reply we build is far below 4 GiB (strings are clipped to 4096 bytes).
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A decoded option reply (used by tests and by anything that plays the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

impl OptionReply {
    /// Splits one reply off the front of `buf`; returns it and the bytes consumed.
    pub fn decode(buf: &[u8]) -> Result<(OptionReply, usize), WireError> {
        if buf.len() < 20 {
            return Err(WireError::Truncated {
                need: 20,
                got: buf.len(),
            });
        }
        let magic = be64(buf, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(WireError::BadMagic {
                expected: OPTION_REPLY_MAGIC,
                found: magic,
            });
        }
        let len = be32(buf, 16) as usize;
        let need = 20usize.saturating_add(len);
        if buf.len() < need {
            return Err(WireError::Truncated { need, got: buf.len() });
        }
        Ok((
            OptionReply {
                option: be32(buf, 8),
                reply_type: be32(buf, 12),
                data: buf[20..need].to_vec(),
            },
            need,
        ))
    }
}

// ---------------------------------------------------------------------------------
// Transmission codec
// ---------------------------------------------------------------------------------

/// One request header as received (not yet validated against the export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, WireError> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic {
                expected: REQUEST_MAGIC as u64,
                found: magic as u64,
            });
        }
        Ok(Request {
            flags: be16(b, 4),
            command: be16(b, 6),
            cookie: be64(b, 8),
            offset: be64(b, 16),
            len: be32(b, 24),
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// Appends a simple reply header (the read payload, if any, follows it).
pub fn put_simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured chunk header whose payload is `len` bytes.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, chunk_type: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&chunk_type.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends the header of a final `NBD_REPLY_TYPE_OFFSET_DATA` chunk (chunk header plus
/// the 8-byte offset); the `data_len` bytes of data follow it.
pub fn put_offset_data_header(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32) {
    // data_len <= the negotiated maximum (far below 4 GiB - 8), checked by the caller;
    // saturate anyway so a bug cannot wrap the length.
    let len = data_len.saturating_add(8);
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, len);
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Appends a final `NBD_REPLY_TYPE_ERROR` chunk carrying `message` (clipped to 4096 bytes).
pub fn put_error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = clip_str(message, MAX_STRING_LEN).as_bytes();
    let len = 6 + msg.len() as u32;
    put_chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, len);
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A decoded reply header, simple or structured (used by tests and client-side code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple {
        error: u32,
        cookie: u64,
    },
    Chunk {
        flags: u16,
        chunk_type: u16,
        cookie: u64,
        len: u32,
    },
}

impl ReplyHeader {
    /// Decodes the header at the front of `buf`; returns it and its length (16 or 20).
    pub fn decode(buf: &[u8]) -> Result<(ReplyHeader, usize), WireError> {
        if buf.len() < 4 {
            return Err(WireError::Truncated {
                need: 4,
                got: buf.len(),
            });
        }
        match be32(buf, 0) {
            SIMPLE_REPLY_MAGIC if buf.len() >= SIMPLE_REPLY_LEN => Ok((
                ReplyHeader::Simple {
                    error: be32(buf, 4),
                    cookie: be64(buf, 8),
                },
                SIMPLE_REPLY_LEN,
            )),
            STRUCTURED_REPLY_MAGIC if buf.len() >= CHUNK_HEADER_LEN => Ok((
                ReplyHeader::Chunk {
                    flags: be16(buf, 4),
                    chunk_type: be16(buf, 6),
                    cookie: be64(buf, 8),
                    len: be32(buf, 16),
                },
                CHUNK_HEADER_LEN,
            )),
            SIMPLE_REPLY_MAGIC => Err(WireError::Truncated {
                need: SIMPLE_REPLY_LEN,
                got: buf.len(),
            }),
            STRUCTURED_REPLY_MAGIC => Err(WireError::Truncated {
                need: CHUNK_HEADER_LEN,
                got: buf.len(),
            }),
            other => Err(WireError::BadMagic {
                expected: SIMPLE_REPLY_MAGIC as u64,
                found: other as u64,
            }),
        }
    }
}

/// Human-readable names, for logs.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_EXPORT_NAME => "EXPORT_NAME",
        OPT_ABORT => "ABORT",
        OPT_LIST => "LIST",
        OPT_PEEK_EXPORT => "PEEK_EXPORT",
        OPT_STARTTLS => "STARTTLS",
        OPT_INFO => "INFO",
        OPT_GO => "GO",
        OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "EXTENDED_HEADERS",
        _ => "unknown",
    }
}

/// Human-readable command names, for logs.
pub fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_DISC => "DISC",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_CACHE => "CACHE",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_BLOCK_STATUS => "BLOCK_STATUS",
        CMD_RESIZE => "RESIZE",
        _ => "unknown",
    }
}

/// Wrapper to print an error value by name in logs.
pub struct ErrnoName(pub u32);

impl fmt::Display for ErrnoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.0 {
            0 => "OK",
            errno::EPERM => "EPERM",
            errno::EIO => "EIO",
            errno::ENOMEM => "ENOMEM",
            errno::EINVAL => "EINVAL",
            errno::ENOSPC => "ENOSPC",
            errno::EOVERFLOW => "EOVERFLOW",
            errno::ENOTSUP => "ENOTSUP",
            errno::ESHUTDOWN => "ESHUTDOWN",
            other => return write!(f, "errno {other}"),
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_layout() {
        let g = encode_greeting(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn option_header_round_trip_and_limits() {
        let h = OptionHeader {
            option: OPT_GO,
            len: 77,
        };
        assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));

        let mut bad = h.encode();
        bad[0] ^= 0xff;
        assert!(matches!(OptionHeader::decode(&bad), Err(WireError::BadMagic { .. })));

        let huge = OptionHeader {
            option: OPT_GO,
            len: u32::MAX,
        };
        assert!(matches!(
            OptionHeader::decode(&huge.encode()),
            Err(WireError::OptionTooLong { .. })
        ));
        let edge = OptionHeader {
            option: 99,
            len: MAX_OPTION_LEN,
        };
        assert_eq!(OptionHeader::decode(&edge.encode()), Ok(edge));
    }

    #[test]
    fn option_reply_round_trip_and_truncation() {
        let mut out = Vec::new();
        put_option_reply(&mut out, OPT_LIST, REP_SERVER, b"abc");
        put_option_reply(&mut out, OPT_LIST, REP_ACK, b"");
        let (r1, n1) = OptionReply::decode(&out).unwrap();
        assert_eq!(r1.option, OPT_LIST);
        assert_eq!(r1.reply_type, REP_SERVER);
        assert_eq!(r1.data, b"abc");
        let (r2, n2) = OptionReply::decode(&out[n1..]).unwrap();
        assert_eq!(r2.reply_type, REP_ACK);
        assert_eq!(n1 + n2, out.len());
        for cut in 0..n1 {
            assert!(OptionReply::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            command: CMD_WRITE,
            cookie: 0x0102_0304_0506_0708,
            offset: u64::MAX - 5,
            len: 4096,
        };
        let b = r.encode();
        assert_eq!(Request::decode(&b), Ok(r));
        for i in 0..4 {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert!(Request::decode(&bad).is_err());
        }
    }

    #[test]
    fn reply_headers_round_trip() {
        let mut out = Vec::new();
        put_simple_reply(&mut out, 42, errno::EIO);
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        assert_eq!(
            ReplyHeader::decode(&out).unwrap(),
            (
                ReplyHeader::Simple {
                    error: errno::EIO,
                    cookie: 42
                },
                SIMPLE_REPLY_LEN
            )
        );

        out.clear();
        put_offset_data_header(&mut out, 7, 4096, 512);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 8);
        let (h, n) = ReplyHeader::decode(&out).unwrap();
        assert_eq!(n, CHUNK_HEADER_LEN);
        assert_eq!(
            h,
            ReplyHeader::Chunk {
                flags: REPLY_FLAG_DONE,
                chunk_type: REPLY_TYPE_OFFSET_DATA,
                cookie: 7,
                len: 520
            }
        );
        assert_eq!(be64(&out, 20), 4096);

        out.clear();
        put_error_chunk(&mut out, 9, errno::EINVAL, "nope");
        let (h, n) = ReplyHeader::decode(&out).unwrap();
        assert_eq!(
            h,
            ReplyHeader::Chunk {
                flags: REPLY_FLAG_DONE,
                chunk_type: REPLY_TYPE_ERROR,
                cookie: 9,
                len: 10
            }
        );
        assert_eq!(be32(&out, n), errno::EINVAL);
        assert_eq!(be16(&out, n + 4), 4);
        assert_eq!(&out[n + 6..], b"nope");

        assert!(ReplyHeader::decode(&[0x67, 0x44]).is_err());
        assert!(ReplyHeader::decode(&[0x67, 0x44, 0x66, 0x98, 0, 0]).is_err());
        assert!(ReplyHeader::decode(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]).is_err());
    }

    #[test]
    fn error_chunk_message_is_clipped() {
        let long = "é".repeat(3000); // 6000 bytes
        let mut out = Vec::new();
        put_error_chunk(&mut out, 1, errno::EIO, &long);
        let msg_len = be16(&out, CHUNK_HEADER_LEN + 4) as usize;
        assert!(msg_len <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(&out[CHUNK_HEADER_LEN + 6..]).is_ok());
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 6 + msg_len);
    }

    #[test]
    fn cursor_never_overreads() {
        let data = [1u8, 2, 3];
        let mut c = Cursor::new(&data);
        assert_eq!(c.u16(), Some(0x0102));
        assert_eq!(c.u16(), None);
        assert_eq!(c.u32(), None);
        assert_eq!(c.bytes(1), Some(&[3u8][..]));
        assert_eq!(c.remaining(), 0);
        assert_eq!(c.bytes(usize::MAX), None);
    }
}
