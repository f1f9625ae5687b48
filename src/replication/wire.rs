//! The peer protocol's byte layout: a fixed 16-byte big-endian header followed by
//! a command-specific payload. docs/replication.md §2 is the reference; the
//! offsets here are the authority.
//!
//! ```text
//! 0      4        6        8        12       16
//! | magic | version | command | flags | length | payload (length bytes) ...
//! ```
//!
//! [`encode`] writes one frame, [`decode`] reads one whole frame, and
//! [`Deframer`] cuts a byte stream into frames, refusing any frame longer than
//! its limit before buffering it. Nothing here panics on any input.

use super::msg::*;
use super::policy::{AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, AfterSbPolicy};
use super::state::{DiskState, Role};
use std::fmt;

/// `HBRP`: hablock replication protocol.
pub const MAGIC: u32 = 0x4842_5250;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Default largest payload a [`Deframer`] accepts: one full data block plus its fixed fields.
pub const DEFAULT_MAX_PAYLOAD: usize = MAX_DATA + 64;

/// Why bytes are not a valid frame. Any of these closes the connection (protocol error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    BadMagic(u32),
    UnsupportedVersion(u16),
    UnknownCommand(u16),
    /// Header flags must be zero in version 1.
    BadHeaderFlags(u32),
    /// The header announces more payload than allowed.
    TooLarge {
        len: u64,
        max: usize,
    },
    /// The payload ended before a field did.
    Truncated {
        command: Command,
        need: usize,
        have: usize,
    },
    /// Bytes left after the last field.
    TrailingBytes {
        command: Command,
        extra: usize,
    },
    /// A field holds a value version 1 does not allow.
    BadField {
        command: Command,
        what: String,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic(m) => write!(
                f,
                "bad frame magic {m:#010x} (expected {MAGIC:#010x}): the peer is not hablock, or the stream is out of step"
            ),
            WireError::UnsupportedVersion(v) => write!(
                f,
                "peer protocol version {v} is not supported (this build speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX})"
            ),
            WireError::UnknownCommand(c) => write!(f, "unknown command code {c:#06x}"),
            WireError::BadHeaderFlags(x) => write!(f, "reserved header flags set: {x:#x}"),
            WireError::TooLarge { len, max } => write!(f, "frame payload of {len} bytes exceeds the limit of {max}"),
            WireError::Truncated { command, need, have } => {
                write!(f, "{command:?} payload truncated: need {need} bytes, have {have}")
            }
            WireError::TrailingBytes { command, extra } => write!(f, "{command:?} payload has {extra} trailing bytes"),
            WireError::BadField { command, what } => write!(f, "{command:?}: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub command: Command,
    pub length: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of `b` (which must hold them).
    pub fn parse(b: &[u8; HEADER_LEN], max_payload: usize) -> Result<Header, WireError> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&version) {
            return Err(WireError::UnsupportedVersion(version));
        }
        let code = u16::from_be_bytes([b[6], b[7]]);
        let command = Command::from_code(code).ok_or(WireError::UnknownCommand(code))?;
        let flags = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if flags != 0 {
            return Err(WireError::BadHeaderFlags(flags));
        }
        let length = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if length as usize > max_payload {
            return Err(WireError::TooLarge {
                len: length as u64,
                max: max_payload,
            });
        }
        Ok(Header {
            version,
            command,
            length,
        })
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
}

/// Appends the frame of `msg` to `out`.
///
/// Panics only on a message that breaks the limits of [`super::msg`] (a bug in
/// the sender, never peer input): a name over [`MAX_NAME`] bytes, more than
/// [`MAX_HISTORY`] history UUIDs or [`MAX_BITMAP_WORDS`] words, or a payload over
/// [`MAX_DATA`].
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    if let Some(p) = encode_head(msg, out) {
        out.extend_from_slice(p);
    }
}

/// Appends the frame of `msg` to `out`, except for a trailing data payload, which it
/// returns for the caller to send right after (so large payloads are never copied).
pub fn encode_head<'m>(msg: &'m Message, out: &mut Vec<u8>) -> Option<&'m [u8]> {
    let start = out.len();
    let mut tail: Option<&'m [u8]> = None;
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION_MAX.to_be_bytes());
    out.extend_from_slice(&(msg.command() as u16).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // length, patched below
    let mut w = Writer(out);
    match msg {
        Message::Hello(h) => {
            assert!(h.resource.len() <= MAX_NAME, "resource name too long");
            w.u32(h.node_id);
            w.u16(h.min_version);
            w.u16(h.max_version);
            w.u64(h.features);
            w.u8(h.resource.len() as u8);
            w.bytes(h.resource.as_bytes());
        }
        Message::AuthChallenge(n) | Message::AuthResponse(n) => w.bytes(n),
        Message::Sizes(s) => {
            w.u64(s.capacity);
            w.u64(s.size);
        }
        Message::Uuids(u) => {
            assert!(u.history.len() <= MAX_HISTORY, "too many history uuids");
            w.u64(u.current);
            w.u64(u.bitmap);
            w.u32(u.flags);
            w.u8(u.history.len() as u8);
            for h in &u.history {
                w.u64(*h);
            }
        }
        Message::AfterSb(a) => {
            let name = match &a.policy.pri0 {
                AfterSb0Pri::DiscardNode(n) => n.as_str(),
                _ => "",
            };
            assert!(name.len() <= MAX_NAME, "discard-node name too long");
            w.u64(a.changes);
            w.u8(a.policy.pri0.code());
            w.u8(a.policy.pri1.code());
            w.u8(a.policy.pri2.code());
            w.u8(a.policy.always_asbp as u8);
            w.u8(name.len() as u8);
            w.bytes(name.as_bytes());
        }
        Message::State(s) => {
            w.u8(s.role.code());
            w.u8(s.disk.code());
        }
        Message::StateChangeRequest { id, change } => {
            w.u32(*id);
            w.u8(match change {
                StateChange::Promote => 1,
            });
        }
        Message::StateChangeReply { id, reply } => {
            w.u32(*id);
            w.u8(match reply {
                ChangeReply::Granted => 0,
                ChangeReply::PeerIsPrimary => 1,
                ChangeReply::Concurrent => 2,
                ChangeReply::Refused => 3,
            });
        }
        Message::Bitmap(c) => {
            assert!(c.words.len() <= MAX_BITMAP_WORDS, "bitmap chunk too large");
            w.u64(c.first_word);
            w.u8(c.last as u8);
            w.u16(c.words.len() as u16);
            for x in &c.words {
                w.u64(*x);
            }
        }
        Message::Data(d) => {
            assert!(d.payload.len() <= MAX_DATA, "data payload too large");
            let mut flags = d.flags & !data_flags::CRC;
            if d.crc.is_some() {
                flags |= data_flags::CRC;
            }
            w.u64(d.seq);
            w.u64(d.offset);
            w.u32(d.len);
            w.u32(flags);
            if let Some(c) = d.crc {
                w.u32(c);
            }
            tail = Some(&d.payload);
        }
        Message::RecvAck { seq } | Message::WriteAck { seq } | Message::NegAck { seq } => w.u64(*seq),
        Message::Barrier { epoch } | Message::BarrierAck { epoch } => w.u64(*epoch),
        Message::ResyncRequest { offset, len } | Message::InSync { offset, len } => {
            w.u64(*offset);
            w.u32(*len);
        }
        Message::ChecksumRequest { offset, len, digest } => {
            w.u64(*offset);
            w.u32(*len);
            w.bytes(digest);
        }
        Message::ResyncData(r) => {
            assert!(r.payload.len() <= MAX_DATA, "resync payload too large");
            w.u64(r.offset);
            w.u32(if r.crc.is_some() { data_flags::CRC } else { 0 });
            if let Some(c) = r.crc {
                w.u32(c);
            }
            tail = Some(&r.payload);
        }
        Message::Ping | Message::PingAck | Message::Disconnect => {}
    }
    let len = (out.len() - start - HEADER_LEN + tail.map_or(0, <[u8]>::len)) as u32;
    out[start + 12..start + 16].copy_from_slice(&len.to_be_bytes());
    tail
}

/// A received payload in page-aligned memory, so the local write needs no further
/// copy for O_DIRECT.
fn payload_bytes(b: &[u8]) -> bytes::Bytes {
    if b.is_empty() {
        return bytes::Bytes::new();
    }
    bytes::Bytes::from_owner(kernel_shim::IoBuf::copy_from(b))
}

/// The frame of `msg` as a new vector.
pub fn encode_to_vec(msg: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    encode(msg, &mut v);
    v
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    command: Command,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() - self.pos < n {
            return Err(WireError::Truncated {
                command: self.command,
                need: self.pos + n,
                have: self.b.len(),
            });
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N"))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.pos..];
        self.pos = self.b.len();
        s
    }
    fn bad(&self, what: impl Into<String>) -> WireError {
        WireError::BadField {
            command: self.command,
            what: what.into(),
        }
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.pos != self.b.len() {
            return Err(WireError::TrailingBytes {
                command: self.command,
                extra: self.b.len() - self.pos,
            });
        }
        Ok(())
    }
}

/// Decodes the payload of a frame whose header said `command`.
pub fn decode_payload(command: Command, payload: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader {
        b: payload,
        pos: 0,
        command,
    };
    let msg = match command {
        Command::Hello => {
            let node_id = r.u32()?;
            let min_version = r.u16()?;
            let max_version = r.u16()?;
            let features = r.u64()?;
            let n = r.u8()? as usize;
            let name = r.take(n)?;
            let resource = std::str::from_utf8(name)
                .map_err(|_| r.bad("resource name is not UTF-8"))?
                .to_string();
            if min_version > max_version {
                return Err(r.bad(format!("version range {min_version}..{max_version} is empty")));
            }
            Message::Hello(Hello {
                node_id,
                resource,
                min_version,
                max_version,
                features,
            })
        }
        Command::AuthChallenge => Message::AuthChallenge(r.array()?),
        Command::AuthResponse => Message::AuthResponse(r.array()?),
        Command::Sizes => Message::Sizes(Sizes {
            capacity: r.u64()?,
            size: r.u64()?,
        }),
        Command::Uuids => {
            let current = r.u64()?;
            let bitmap = r.u64()?;
            let flags = r.u32()?;
            if flags & !uuid_flags::KNOWN != 0 {
                return Err(r.bad(format!("unknown uuid flags {flags:#x}")));
            }
            let n = r.u8()? as usize;
            if n > MAX_HISTORY {
                return Err(r.bad(format!("{n} history uuids (at most {MAX_HISTORY})")));
            }
            let history = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            Message::Uuids(Uuids {
                current,
                bitmap,
                history,
                flags,
            })
        }
        Command::AfterSb => {
            let changes = r.u64()?;
            let (p0, p1, p2, asbp) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            let n = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(n)?).map_err(|_| r.bad("discard-node name is not UTF-8"))?;
            if (p0 == 5) == name.is_empty() {
                return Err(r.bad(format!("after-sb-0pri code {p0} with a {n}-byte node name")));
            }
            let pri0 = AfterSb0Pri::from_code(p0, name).ok_or_else(|| r.bad(format!("unknown after-sb-0pri {p0}")))?;
            let pri1 = AfterSb1Pri::from_code(p1).ok_or_else(|| r.bad(format!("unknown after-sb-1pri {p1}")))?;
            let pri2 = AfterSb2Pri::from_code(p2).ok_or_else(|| r.bad(format!("unknown after-sb-2pri {p2}")))?;
            let always_asbp = match asbp {
                0 => false,
                1 => true,
                x => return Err(r.bad(format!("always-asbp flag {x}"))),
            };
            Message::AfterSb(AfterSbInfo {
                changes,
                policy: AfterSbPolicy {
                    pri0,
                    pri1,
                    pri2,
                    always_asbp,
                },
            })
        }
        Command::State => {
            let role = r.u8()?;
            let disk = r.u8()?;
            Message::State(StateMsg {
                role: Role::from_code(role).ok_or_else(|| r.bad(format!("unknown role {role}")))?,
                disk: DiskState::from_code(disk).ok_or_else(|| r.bad(format!("unknown disk state {disk}")))?,
            })
        }
        Command::StateChangeRequest => {
            let id = r.u32()?;
            let change = match r.u8()? {
                1 => StateChange::Promote,
                c => return Err(r.bad(format!("unknown state change {c}"))),
            };
            Message::StateChangeRequest { id, change }
        }
        Command::StateChangeReply => {
            let id = r.u32()?;
            let reply = match r.u8()? {
                0 => ChangeReply::Granted,
                1 => ChangeReply::PeerIsPrimary,
                2 => ChangeReply::Concurrent,
                3 => ChangeReply::Refused,
                c => return Err(r.bad(format!("unknown state change reply {c}"))),
            };
            Message::StateChangeReply { id, reply }
        }
        Command::Bitmap => {
            let first_word = r.u64()?;
            let last = match r.u8()? {
                0 => false,
                1 => true,
                x => return Err(r.bad(format!("last flag {x}"))),
            };
            let n = r.u16()? as usize;
            if n > MAX_BITMAP_WORDS {
                return Err(r.bad(format!("{n} bitmap words (at most {MAX_BITMAP_WORDS})")));
            }
            let words = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            Message::Bitmap(BitmapChunk {
                first_word,
                last,
                words,
            })
        }
        Command::Data => {
            let seq = r.u64()?;
            let offset = r.u64()?;
            let len = r.u32()?;
            let flags = r.u32()?;
            if flags & !data_flags::KNOWN != 0 {
                return Err(r.bad(format!("unknown data flags {flags:#x}")));
            }
            let crc = if flags & data_flags::CRC != 0 {
                Some(r.u32()?)
            } else {
                None
            };
            let payload = payload_bytes(r.rest());
            let no_payload = flags & (data_flags::TRIM | data_flags::ZEROES) != 0;
            if no_payload && !payload.is_empty() {
                return Err(r.bad("TRIM/ZEROES with a payload"));
            }
            if !no_payload && payload.len() != len as usize {
                return Err(r.bad(format!("length {len} but {} payload bytes", payload.len())));
            }
            if len as usize > MAX_DATA && !no_payload {
                return Err(r.bad(format!("length {len} over {MAX_DATA}")));
            }
            Message::Data(Data {
                seq,
                offset,
                len,
                flags: flags & !data_flags::CRC,
                payload,
                crc,
            })
        }
        Command::RecvAck => Message::RecvAck { seq: r.u64()? },
        Command::WriteAck => Message::WriteAck { seq: r.u64()? },
        Command::NegAck => Message::NegAck { seq: r.u64()? },
        Command::Barrier => Message::Barrier { epoch: r.u64()? },
        Command::BarrierAck => Message::BarrierAck { epoch: r.u64()? },
        Command::ResyncRequest => Message::ResyncRequest {
            offset: r.u64()?,
            len: r.u32()?,
        },
        Command::InSync => Message::InSync {
            offset: r.u64()?,
            len: r.u32()?,
        },
        Command::ChecksumRequest => Message::ChecksumRequest {
            offset: r.u64()?,
            len: r.u32()?,
            digest: r.array()?,
        },
        Command::ResyncData => {
            let offset = r.u64()?;
            let flags = r.u32()?;
            if flags & !data_flags::CRC != 0 {
                return Err(r.bad(format!("unknown resync data flags {flags:#x}")));
            }
            let crc = if flags & data_flags::CRC != 0 {
                Some(r.u32()?)
            } else {
                None
            };
            let payload = payload_bytes(r.rest());
            Message::ResyncData(ResyncData { offset, payload, crc })
        }
        Command::Ping => Message::Ping,
        Command::PingAck => Message::PingAck,
        Command::Disconnect => Message::Disconnect,
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes exactly one whole frame (header and payload, nothing more).
pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    let Some(h) = frame.first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            command: Command::Hello,
            need: HEADER_LEN,
            have: frame.len(),
        });
    };
    let h = Header::parse(h, u32::MAX as usize)?;
    let payload = &frame[HEADER_LEN..];
    if payload.len() < h.length as usize {
        return Err(WireError::Truncated {
            command: h.command,
            need: h.length as usize,
            have: payload.len(),
        });
    }
    if payload.len() > h.length as usize {
        return Err(WireError::TrailingBytes {
            command: h.command,
            extra: payload.len() - h.length as usize,
        });
    }
    decode_payload(h.command, payload)
}

/// Turns a byte stream into whole messages.
///
/// Feed it what the socket returned with [`Deframer::push`], then call
/// [`Deframer::next_message`] until it returns `Ok(None)`. A frame whose header
/// announces more than `max_payload` bytes is refused as soon as its header is
/// in, so a peer cannot make us buffer without limit. After an error the
/// stream is out of step: close the connection.
#[derive(Debug)]
pub struct Deframer {
    /// Initialized storage; bytes `start..end` are received and not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_payload: usize,
    failed: bool,
}

impl Deframer {
    pub fn new(max_payload: usize) -> Deframer {
        Deframer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_payload,
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.read_buf(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Room for at least `min` more bytes, to read the socket straight into (saves a
    /// copy of every payload); report what was read with [`Deframer::commit`].
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < min && self.start >= self.buf.len() / 2 {
            // Move the partial frame down only when most of the buffer is consumed, so
            // big frames are rarely moved; otherwise grow (bounded: the unconsumed part
            // is at most one frame plus one read, so the buffer stays under ~3 frames).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            self.buf.resize(self.end + min, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written into the slice [`Deframer::read_buf`] returned.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        if self.failed {
            return Err(WireError::BadField {
                command: Command::Disconnect,
                what: "stream already failed".into(),
            });
        }
        let avail = &self.buf[self.start..self.end];
        let Some(h) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Header::parse(h, self.max_payload).inspect_err(|_| self.failed = true)?;
        let total = HEADER_LEN + h.length as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let msg = decode_payload(h.command, &avail[HEADER_LEN..total]).inspect_err(|_| self.failed = true)?;
        self.start += total;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                node_id: 7,
                resource: "r0-data".into(),
                min_version: 1,
                max_version: 1,
                features: features::ALL,
            }),
            Message::AuthChallenge([0xa5; AUTH_LEN]),
            Message::AuthResponse([3; AUTH_LEN]),
            Message::Sizes(Sizes {
                capacity: 1 << 40,
                size: 1 << 30,
            }),
            Message::Uuids(Uuids {
                current: 0x1234_5678_9abc_def1,
                bitmap: 0,
                history: vec![8, 16, 24],
                flags: uuid_flags::CRASHED_PRIMARY,
            }),
            Message::State(StateMsg {
                role: Role::Primary,
                disk: DiskState::UpToDate,
            }),
            Message::AfterSb(AfterSbInfo {
                changes: 0x0102_0304_0506,
                policy: AfterSbPolicy {
                    pri0: AfterSb0Pri::DiscardNode("alice".into()),
                    pri1: AfterSb1Pri::CallPriLostAfterSb,
                    pri2: AfterSb2Pri::CallPriLostAfterSb,
                    always_asbp: true,
                },
            }),
            Message::AfterSb(AfterSbInfo {
                changes: 0,
                policy: AfterSbPolicy::recommended(),
            }),
            Message::StateChangeRequest {
                id: 9,
                change: StateChange::Promote,
            },
            Message::StateChangeReply {
                id: 9,
                reply: ChangeReply::PeerIsPrimary,
            },
            Message::Bitmap(BitmapChunk {
                first_word: 4096,
                last: true,
                words: vec![u64::MAX, 0, 5],
            }),
            Message::Data(Data {
                seq: 1,
                offset: 8192,
                len: 4,
                flags: data_flags::FUA,
                payload: bytes::Bytes::from(vec![1, 2, 3, 4]),
                crc: Some(crc32c::crc32c(&[1, 2, 3, 4])),
            }),
            Message::Data(Data {
                seq: 2,
                offset: 0,
                len: 1 << 20,
                flags: data_flags::TRIM,
                payload: bytes::Bytes::from(vec![]),
                crc: None,
            }),
            Message::RecvAck { seq: 1 },
            Message::WriteAck { seq: 2 },
            Message::NegAck { seq: 3 },
            Message::Barrier { epoch: 5 },
            Message::BarrierAck { epoch: 5 },
            Message::ResyncRequest {
                offset: 4096,
                len: 4096,
            },
            Message::ChecksumRequest {
                offset: 0,
                len: 4096,
                digest: [7; DIGEST_LEN],
            },
            Message::ResyncData(ResyncData {
                offset: 4096,
                payload: bytes::Bytes::from(vec![9; 4096]),
                crc: None,
            }),
            Message::InSync { offset: 0, len: 65536 },
            Message::Ping,
            Message::PingAck,
            Message::Disconnect,
        ]
    }

    #[test]
    fn every_command_round_trips() {
        let s = samples();
        for c in Command::ALL {
            assert!(s.iter().any(|m| m.command() == c), "no sample for {c:?}");
            assert_eq!(Command::from_code(c as u16), Some(c));
        }
        for m in &s {
            let f = encode_to_vec(m);
            assert_eq!(
                f.len(),
                HEADER_LEN + u32::from_be_bytes(f[12..16].try_into().unwrap()) as usize
            );
            assert_eq!(decode(&f).as_ref(), Ok(m), "{m:?}");
        }
    }

    #[test]
    fn after_sb_layout_and_bad_codes() {
        let m = Message::AfterSb(AfterSbInfo {
            changes: 3,
            policy: AfterSbPolicy {
                pri0: AfterSb0Pri::DiscardNode("ab".into()),
                pri1: AfterSb1Pri::Consensus,
                pri2: AfterSb2Pri::Disconnect,
                always_asbp: false,
            },
        });
        let f = encode_to_vec(&m);
        assert_eq!(&f[6..8], &[0x00, 0x15]);
        assert_eq!(&f[HEADER_LEN..], &[0, 0, 0, 0, 0, 0, 0, 3, 5, 1, 0, 0, 2, b'a', b'b']);
        assert_eq!(decode(&f), Ok(m));
        let bad = |i: usize, v: u8| {
            let mut g = f.clone();
            g[HEADER_LEN + i] = v;
            decode(&g)
        };
        assert!(bad(8, 9).unwrap_err().to_string().contains("after-sb-0pri"));
        // A node name with a policy other than discard-node is malformed.
        assert!(bad(8, 4).unwrap_err().to_string().contains("node name"));
        assert!(bad(9, 7).unwrap_err().to_string().contains("after-sb-1pri"));
        assert!(bad(10, 2).unwrap_err().to_string().contains("after-sb-2pri"));
        assert!(bad(11, 2).unwrap_err().to_string().contains("always-asbp"));
        assert!(bad(13, 0xff).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn header_layout_is_big_endian() {
        let f = encode_to_vec(&Message::WriteAck { seq: 0x0102 });
        assert_eq!(
            f,
            [b'H', b'B', b'R', b'P', 0, 1, 0x00, 0x32, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2]
        );
    }

    #[test]
    fn corrupt_headers_give_clear_errors() {
        let good = encode_to_vec(&Message::Ping);
        let mut f = good.clone();
        f[0] = b'X';
        assert!(matches!(decode(&f), Err(WireError::BadMagic(_))));
        let mut f = good.clone();
        f[5] = 9;
        assert_eq!(decode(&f), Err(WireError::UnsupportedVersion(9)));
        assert!(decode(&f).unwrap_err().to_string().contains("not supported"));
        let mut f = good.clone();
        f[7] = 0xff;
        assert_eq!(decode(&f), Err(WireError::UnknownCommand(0x00ff)));
        let mut f = good.clone();
        f[11] = 1;
        assert_eq!(decode(&f), Err(WireError::BadHeaderFlags(1)));
        assert!(matches!(decode(&good[..10]), Err(WireError::Truncated { .. })));
        let mut f = good;
        f.push(0);
        assert!(matches!(decode(&f), Err(WireError::TrailingBytes { .. })));
    }

    #[test]
    fn corrupt_payloads_give_clear_errors() {
        // Truncate every sample payload at every length: always an error, never a panic.
        for m in samples() {
            let f = encode_to_vec(&m);
            for cut in HEADER_LEN..f.len() {
                let mut g = f[..cut].to_vec();
                let len = (cut - HEADER_LEN) as u32;
                g[12..16].copy_from_slice(&len.to_be_bytes());
                if let Ok(d) = decode(&g) {
                    // Only messages ending in a variable-length tail may decode shorter.
                    assert!(
                        matches!(d, Message::ResyncData(_)),
                        "{m:?} cut at {cut} decoded as {d:?}"
                    );
                }
            }
        }
        // Data whose length disagrees with its payload.
        let mut f = encode_to_vec(&Message::Data(Data {
            seq: 1,
            offset: 0,
            len: 4,
            flags: 0,
            payload: bytes::Bytes::from(vec![0; 4]),
            crc: None,
        }));
        f[HEADER_LEN + 19] = 5;
        assert!(matches!(decode(&f), Err(WireError::BadField { .. })));
        // Unknown state code.
        let mut f = encode_to_vec(&Message::State(StateMsg {
            role: Role::Secondary,
            disk: DiskState::Diskless,
        }));
        f[HEADER_LEN + 1] = 99;
        assert!(decode(&f).unwrap_err().to_string().contains("unknown disk state 99"));
    }

    #[test]
    fn deframer_splits_a_stream_at_any_boundary() {
        let msgs = samples();
        let mut stream = Vec::new();
        for m in &msgs {
            encode(m, &mut stream);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let mut d = Deframer::new(DEFAULT_MAX_PAYLOAD);
            let mut got = Vec::new();
            let mut pos = 0;
            while pos < stream.len() {
                let n = rng.gen_range(1..=64.min(stream.len() - pos));
                d.push(&stream[pos..pos + n]);
                pos += n;
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn deframer_reads_in_place_with_bounded_memory() {
        // Full-size payloads mixed with small messages, read as a socket would fill
        // the buffer: in random amounts up to what read_buf offers.
        let mut msgs = Vec::new();
        for i in 0..12u64 {
            msgs.push(Message::Data(Data {
                seq: i,
                offset: i << 20,
                len: MAX_DATA as u32,
                flags: 0,
                payload: bytes::Bytes::from(vec![i as u8; MAX_DATA]),
                crc: None,
            }));
            msgs.push(Message::WriteAck { seq: i });
        }
        let mut stream = Vec::new();
        for m in &msgs {
            encode(m, &mut stream);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = Deframer::new(DEFAULT_MAX_PAYLOAD);
        let (mut got, mut pos, mut peak) = (Vec::new(), 0, 0);
        while pos < stream.len() {
            let room = d.read_buf(256 << 10);
            let n = rng.gen_range(1..=room.len().min(stream.len() - pos));
            room[..n].copy_from_slice(&stream[pos..pos + n]);
            d.commit(n);
            pos += n;
            peak = peak.max(d.buf.len());
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert!(got == msgs, "messages differ");
        assert!(peak < 4 * MAX_DATA, "buffer grew to {peak}");
    }

    #[test]
    fn deframer_refuses_oversized_frames_before_buffering() {
        let mut d = Deframer::new(100);
        let mut h = encode_to_vec(&Message::Ping);
        h[12..16].copy_from_slice(&1000u32.to_be_bytes());
        d.push(&h);
        assert_eq!(d.next_message(), Err(WireError::TooLarge { len: 1000, max: 100 }));
        assert!(d.next_message().is_err(), "a failed stream stays failed");
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let good: Vec<Vec<u8>> = samples().iter().map(encode_to_vec).collect();
        for i in 0..20_000 {
            let mut bytes: Vec<u8> = if i % 2 == 0 {
                // Pure noise, sometimes behind a valid header prefix.
                let n = rng.gen_range(0..200);
                let mut v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                if i % 4 == 0 && v.len() >= 8 {
                    v[..6].copy_from_slice(&[b'H', b'B', b'R', b'P', 0, 1]);
                }
                v
            } else {
                // A valid frame with a few bytes flipped.
                let mut v = good[rng.gen_range(0..good.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let p = rng.gen_range(0..v.len());
                    v[p] ^= rng.gen::<u8>() | 1;
                }
                v
            };
            let _ = decode(&bytes);
            let mut d = Deframer::new(4096);
            let split = rng.gen_range(0..=bytes.len());
            d.push(&bytes[..split]);
            let _ = d.next_message();
            d.push(&bytes[split..]);
            for _ in 0..4 {
                if !matches!(d.next_message(), Ok(Some(_))) {
                    break;
                }
            }
            bytes.clear();
        }
    }
}
