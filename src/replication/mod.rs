//! Replication between nodes (DRBD's protocols A, B and C): the pure state machine,
//! the peer protocol codec and the simulator that checks them.
//!
//! Layout (docs/replication.md is the reader's guide):
//!
//! * [`msg`]: the semantic peer messages;
//! * [`wire`]: their explicit byte layout, and the [`wire::Deframer`];
//! * [`auth`]: HMAC-SHA256 challenge/response (cram-hmac-alg);
//! * [`state`]: DRBD's role, disk, connection and replication state names;
//! * [`bitmap`]: the in-core out-of-sync bitmap towards the peer;
//! * [`node`]: the sans-IO state machine: [`node::Node::step`] takes an
//!   [`node::Event`] and returns [`node::Action`]s (send, write, read, flush,
//!   persist, complete a client request, notify);
//! * [`policy`]: the after-split-brain policies (after-sb-0pri/1pri/2pri), pure;
//! * [`sim`]: a seeded deterministic simulator of two nodes with faults.
//!
//! Nothing in here opens a socket or a file or reads a clock.

pub mod auth;
pub mod bitmap;
pub mod msg;
pub mod node;
pub mod policy;
pub mod sim;
pub mod state;
pub mod wire;

pub use state::{ConnState, DiskState, ReplState, Role};

pub use node::{Action, Event, Node, NodeConfig, Notice, Persisted, ReqId, Status};
