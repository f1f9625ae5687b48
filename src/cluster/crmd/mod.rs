//! The controller (Pacemaker's `pacemaker-controld`): ties the membership, the CIB, the policy
//! engine, the local resource manager and the fencer together.
//!
//! - On the DC, once it has synchronised the CIB: it writes membership facts into the status
//!   section, probes what nodes have no history of, runs the scheduler on every change and
//!   carries out the resulting transition: each action goes out once the actions ordered before
//!   it succeeded; fencing runs on the DC itself; a failure or a membership change aborts the
//!   rest, and a new transition is computed from what happened ([`te`], [`plan`]).
//! - On every node: requests addressed to it arrive in its CIB copy (`status.nodes[N].pending`,
//!   replicated like everything else); it runs each once through its LRM and records the result
//!   (`RecordOperation`, plus fail counts on failure) through the DC.
//!
//! The replicated CIB is the transport both ways: requests and results are ordered, survive a
//! lost datagram, and every member sees them.

pub mod controller;
pub mod notify;
pub mod plan;
pub mod te;

#[cfg(test)]
mod plan_test;
