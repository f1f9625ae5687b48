//! The semantic messages two peers exchange, independent of their byte layout.
//!
//! [`super::wire`] turns them into frames and back; [`super::node`] produces and
//! consumes them. Every message has one command code ([`Command`]); the table in
//! docs/replication.md lists them with their payload layouts.

use super::policy::AfterSbPolicy;
use super::state::{DiskState, Role};
use bytes::Bytes;

/// Highest peer-protocol version this build speaks.
pub const PROTOCOL_VERSION_MAX: u16 = 1;
/// Lowest peer-protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Feature bits offered in [`Hello::features`]; the connection uses the AND of both sides.
pub mod features {
    /// Per-block CRC32C on [`super::Data`] and [`super::ResyncData`] (DRBD's data-integrity-alg).
    pub const CRC32C: u64 = 1 << 0;
    /// TRIM (discard) requests are replicated as such, without payload.
    pub const TRIM: u64 = 1 << 1;
    /// Checksum-based resync ([`super::Message::ChecksumRequest`], DRBD's csums-alg).
    pub const CSUMS: u64 = 1 << 2;
    /// WRITE ZEROES requests are replicated without payload.
    pub const ZEROES: u64 = 1 << 3;
    /// Every feature this build implements.
    pub const ALL: u64 = CRC32C | TRIM | CSUMS | ZEROES;
}

/// Flags of a [`Data`] message (and of a local write).
pub mod data_flags {
    /// Force unit access: the write is durable when it completes, on every replica.
    pub const FUA: u32 = 1 << 0;
    /// Pre-flush: everything written before must be durable before this write.
    pub const FLUSH: u32 = 1 << 1;
    /// Discard the range; no payload.
    pub const TRIM: u32 = 1 << 2;
    /// Write zeroes over the range; no payload.
    pub const ZEROES: u32 = 1 << 3;
    /// A CRC32C of the payload follows the fixed fields.
    pub const CRC: u32 = 1 << 4;
    /// Bits defined in version 1.
    pub const KNOWN: u32 = FUA | FLUSH | TRIM | ZEROES | CRC;
}

/// Flags of a [`Uuids`] message.
pub mod uuid_flags {
    /// The sender crashed while Primary and has not resynced since: its activity-log
    /// (here: bitmap) blocks must be copied from it when the generations are equal.
    pub const CRASHED_PRIMARY: u32 = 1 << 0;
    /// The operator asked this side to give up its data (`connect --discard-my-data`).
    pub const DISCARD_MY_DATA: u32 = 1 << 1;
    /// Bits defined in version 1.
    pub const KNOWN: u32 = CRASHED_PRIMARY | DISCARD_MY_DATA;
}

/// Length of an authentication challenge and of its HMAC-SHA256 response.
pub const AUTH_LEN: usize = 32;
/// Length of a checksum carried by [`Message::ChecksumRequest`] (SHA-256).
pub const DIGEST_LEN: usize = 32;
/// Longest resource name on the wire.
pub const MAX_NAME: usize = 255;
/// Most history UUIDs in one [`Uuids`] message.
pub const MAX_HISTORY: usize = 32;
/// Largest data payload of one [`Data`] or [`ResyncData`] message.
pub const MAX_DATA: usize = 1 << 20;
/// Most bitmap words in one [`BitmapChunk`].
pub const MAX_BITMAP_WORDS: usize = 4096;

/// First message on a connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u32,
    pub resource: String,
    pub min_version: u16,
    pub max_version: u16,
    /// [`features`] bits the sender implements (and is configured to use).
    pub features: u64,
}

/// Device sizes, sent after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Bytes the local backing store can hold.
    pub capacity: u64,
    /// Bytes the device currently exposes (last agreed size).
    pub size: u64,
}

/// Generation identifiers towards the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uuids {
    pub current: u64,
    /// The sender's bitmap UUID for the receiver's slot.
    pub bitmap: u64,
    /// Newest first, at most [`MAX_HISTORY`], no zero entries.
    pub history: Vec<u64>,
    /// [`uuid_flags`].
    pub flags: u32,
}

/// Split-brain inputs, sent after [`Uuids`] and before [`StateMsg`]: the sender's
/// out-of-sync count towards the receiver (DRBD carries it in P_UUIDS as the
/// bitmap weight) and its after-sb configuration, which must equal the receiver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterSbInfo {
    /// Blocks set in the sender's bitmap towards the receiver.
    pub changes: u64,
    pub policy: AfterSbPolicy,
}

/// The sender's role and disk state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMsg {
    pub role: Role,
    pub disk: DiskState,
}

/// A cluster-wide state change that needs the peer's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// The sender wants to become Primary.
    Promote,
}

/// Answer to a [`StateChange`] request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReply {
    Granted,
    /// The receiver is Primary and two primaries are not allowed.
    PeerIsPrimary,
    /// The receiver has its own change in flight; both are refused, retry.
    Concurrent,
    /// The receiver refuses for another reason (it is not connected in a state that allows it).
    Refused,
}

/// One piece of the sender's bitmap towards the receiver (ORed into the receiver's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapChunk {
    /// Index of the first 64-bit word.
    pub first_word: u64,
    /// True on the sender's last chunk.
    pub last: bool,
    /// At most [`MAX_BITMAP_WORDS`] words; bit `i` of word `w` is block `64 w + i`.
    pub words: Vec<u64>,
}

/// A replicated application write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Sequence number of this write on the connection (acks name it).
    pub seq: u64,
    pub offset: u64,
    /// Byte length; equals `payload.len()` unless TRIM or ZEROES is set (then payload is empty).
    pub len: u32,
    /// [`data_flags`].
    pub flags: u32,
    pub payload: Bytes,
    /// CRC32C of the payload when the CRC32C feature is in use.
    pub crc: Option<u32>,
}

/// A block the resync source sends on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncData {
    pub offset: u64,
    pub payload: Bytes,
    pub crc: Option<u32>,
}

/// Every peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// A random nonce the receiver must answer with HMAC-SHA256(secret, ...) (see [`super::auth`]).
    AuthChallenge([u8; AUTH_LEN]),
    AuthResponse([u8; AUTH_LEN]),
    Sizes(Sizes),
    Uuids(Uuids),
    AfterSb(AfterSbInfo),
    State(StateMsg),
    StateChangeRequest {
        id: u32,
        change: StateChange,
    },
    StateChangeReply {
        id: u32,
        reply: ChangeReply,
    },
    Bitmap(BitmapChunk),
    Data(Data),
    /// Protocol B: the write with this sequence number was received.
    RecvAck {
        seq: u64,
    },
    /// Protocol C: the write with this sequence number is on the peer's disk.
    WriteAck {
        seq: u64,
    },
    /// The peer could not write it: the block is out of sync on the peer.
    NegAck {
        seq: u64,
    },
    /// Every write sent before this is to be durable on the peer before [`Message::BarrierAck`].
    Barrier {
        epoch: u64,
    },
    BarrierAck {
        epoch: u64,
    },
    /// Resync target asks for a range.
    ResyncRequest {
        offset: u64,
        len: u32,
    },
    /// Resync target asks for a range and sends the SHA-256 of its own copy.
    ChecksumRequest {
        offset: u64,
        len: u32,
        digest: [u8; DIGEST_LEN],
    },
    ResyncData(ResyncData),
    /// The range is in sync on the sender (written by resync, or equal by checksum).
    InSync {
        offset: u64,
        len: u32,
    },
    Ping,
    PingAck,
    /// The sender closes the connection on purpose (not a failure).
    Disconnect,
}

/// Command codes (the header's `command` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    Hello = 0x0001,
    AuthChallenge = 0x0002,
    AuthResponse = 0x0003,
    Sizes = 0x0010,
    Uuids = 0x0011,
    State = 0x0012,
    StateChangeRequest = 0x0013,
    StateChangeReply = 0x0014,
    AfterSb = 0x0015,
    Bitmap = 0x0020,
    Data = 0x0030,
    RecvAck = 0x0031,
    WriteAck = 0x0032,
    NegAck = 0x0033,
    Barrier = 0x0034,
    BarrierAck = 0x0035,
    ResyncRequest = 0x0040,
    ChecksumRequest = 0x0041,
    ResyncData = 0x0042,
    InSync = 0x0043,
    Ping = 0x0050,
    PingAck = 0x0051,
    Disconnect = 0x0060,
}

impl Command {
    /// Every command, in code order.
    pub const ALL: [Command; 23] = [
        Command::Hello,
        Command::AuthChallenge,
        Command::AuthResponse,
        Command::Sizes,
        Command::Uuids,
        Command::State,
        Command::StateChangeRequest,
        Command::StateChangeReply,
        Command::AfterSb,
        Command::Bitmap,
        Command::Data,
        Command::RecvAck,
        Command::WriteAck,
        Command::NegAck,
        Command::Barrier,
        Command::BarrierAck,
        Command::ResyncRequest,
        Command::ChecksumRequest,
        Command::ResyncData,
        Command::InSync,
        Command::Ping,
        Command::PingAck,
        Command::Disconnect,
    ];

    /// The command of a code, if it is one.
    pub fn from_code(code: u16) -> Option<Command> {
        Command::ALL.iter().copied().find(|c| *c as u16 == code)
    }
}

impl Message {
    /// The command code of this message.
    pub fn command(&self) -> Command {
        match self {
            Message::Hello(_) => Command::Hello,
            Message::AuthChallenge(_) => Command::AuthChallenge,
            Message::AuthResponse(_) => Command::AuthResponse,
            Message::Sizes(_) => Command::Sizes,
            Message::Uuids(_) => Command::Uuids,
            Message::AfterSb(_) => Command::AfterSb,
            Message::State(_) => Command::State,
            Message::StateChangeRequest { .. } => Command::StateChangeRequest,
            Message::StateChangeReply { .. } => Command::StateChangeReply,
            Message::Bitmap(_) => Command::Bitmap,
            Message::Data(_) => Command::Data,
            Message::RecvAck { .. } => Command::RecvAck,
            Message::WriteAck { .. } => Command::WriteAck,
            Message::NegAck { .. } => Command::NegAck,
            Message::Barrier { .. } => Command::Barrier,
            Message::BarrierAck { .. } => Command::BarrierAck,
            Message::ResyncRequest { .. } => Command::ResyncRequest,
            Message::ChecksumRequest { .. } => Command::ChecksumRequest,
            Message::ResyncData(_) => Command::ResyncData,
            Message::InSync { .. } => Command::InSync,
            Message::Ping => Command::Ping,
            Message::PingAck => Command::PingAck,
            Message::Disconnect => Command::Disconnect,
        }
    }
}
