//! Cluster membership (heartbeats, quorum, coordinator) and the replicated cluster
//! configuration.
//!
//! Everything here is a pure ("sans-IO") core: no sockets, no clocks, no tokio. A driver feeds
//! events in (a datagram received on link L at time T, a timer tick at T) and carries the
//! returned actions out (send these bytes to node N on link L, log this, the view changed).
//! `docs/membership.md` describes the wire format and the rules.
//!
//! - [`heartbeat`]: the authenticated heartbeat packet codec and per-sender replay guard.
//! - [`membership`]: the per-node state machine with ha.cf's keepalive/warntime/deadtime/initdead.
//! - [`quorum`]: votes, two-node mode, wait-for-all, tie-breakers, `no-quorum-policy`.
//! - [`dc`]: the deterministic designated-coordinator election.
//! - [`cib`]: the cluster information base, a versioned configuration + status document.
//! - [`pengine`]: the policy engine (scheduler), a pure function from the CIB to a transition.
//! - [`crmd`]: the controller: the DC's transitions and every node's requests (pure decisions,
//!   with a tokio driver).
//! - [`lrm`]: the local resource manager that runs OCF/LSB agents (spawns processes: an edge).
//! - [`fencing`]: STONITH: fencing plans from the CIB and the fence-agents interface (runs
//!   agent processes: an edge).
//! - [`driver`]: the tokio UDP driver `hablockd` runs (the one part here that does I/O).
//! - [`sim`]: a seeded deterministic simulator that runs the real cores against a faulty network.

pub mod cib;
pub mod crmd;
pub mod dc;
pub mod driver;
pub mod fencing;
pub mod heartbeat;
pub mod lrm;
pub mod membership;
pub mod pengine;
pub mod quorum;
pub mod sim;

use std::fmt;

/// Milliseconds on the driver's monotonic clock. The core never reads a clock itself.
pub type Millis = u64;

/// The most nodes a cluster may configure: node ids are `0..MAX_NODES` and a view is a 64-bit map.
pub const MAX_NODES: usize = 64;

/// The most heartbeat links (rings) a cluster may configure.
pub const MAX_LINKS: usize = 8;

/// A node's numeric id, `0..MAX_NODES`, stable for the life of the cluster configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

/// A heartbeat link (ring) index, `0..MAX_LINKS`.
pub type LinkId = u8;

/// A set of node ids as a 64-bit map (bit `i` = node `i`). This is also the wire form of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NodeSet(pub u64);

impl NodeSet {
    pub const EMPTY: NodeSet = NodeSet(0);

    pub fn single(n: NodeId) -> NodeSet {
        let mut s = NodeSet::EMPTY;
        s.insert(n);
        s
    }

    pub fn contains(self, n: NodeId) -> bool {
        (n.0 as usize) < MAX_NODES && self.0 & (1u64 << n.0) != 0
    }

    pub fn insert(&mut self, n: NodeId) {
        assert!((n.0 as usize) < MAX_NODES, "node id {} out of range", n.0);
        self.0 |= 1u64 << n.0;
    }

    pub fn remove(&mut self, n: NodeId) {
        if (n.0 as usize) < MAX_NODES {
            self.0 &= !(1u64 << n.0);
        }
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The lowest node id in the set.
    pub fn first(self) -> Option<NodeId> {
        (self.0 != 0).then(|| NodeId(self.0.trailing_zeros() as u8))
    }

    pub fn union(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 | o.0)
    }

    pub fn intersection(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 & o.0)
    }

    pub fn difference(self, o: NodeSet) -> NodeSet {
        NodeSet(self.0 & !o.0)
    }

    pub fn is_subset(self, o: NodeSet) -> bool {
        self.0 & !o.0 == 0
    }

    /// Ids in ascending order.
    pub fn iter(self) -> impl Iterator<Item = NodeId> {
        (0..MAX_NODES as u8)
            .filter(move |i| self.0 & (1u64 << i) != 0)
            .map(NodeId)
    }
}

impl FromIterator<NodeId> for NodeSet {
    fn from_iter<I: IntoIterator<Item = NodeId>>(iter: I) -> Self {
        let mut s = NodeSet::EMPTY;
        for n in iter {
            s.insert(n);
        }
        s
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, n) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", n.0)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_set_basics() {
        let mut s = NodeSet::EMPTY;
        assert!(s.is_empty());
        s.insert(NodeId(3));
        s.insert(NodeId(0));
        s.insert(NodeId(63));
        assert_eq!(s.len(), 3);
        assert_eq!(s.first(), Some(NodeId(0)));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![NodeId(0), NodeId(3), NodeId(63)]);
        assert!(s.contains(NodeId(63)) && !s.contains(NodeId(64)) && !s.contains(NodeId(1)));
        s.remove(NodeId(0));
        assert_eq!(s.to_string(), "{3,63}");
        assert!(NodeSet::single(NodeId(3)).is_subset(s));
    }
}
