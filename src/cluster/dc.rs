//! The designated coordinator (DC): one node per quorate partition that owns the CIB and, later,
//! runs the policy engine.
//!
//! The election is a pure function of what this node knows, so every member of a settled
//! partition computes the same answer without extra messages:
//!
//! 1. no quorum, no DC;
//! 2. before start-up has settled (initdead has not passed and not every configured node has been
//!    heard), no DC: a booting node must not crown itself before it heard its peers;
//! 3. the views must agree: every member's last reported view equals this node's view (views are
//!    carried in every heartbeat). While they differ the partition is in transition and has no DC;
//! 4. the DC is the lowest node id in the agreed view.
//!
//! Two members whose views include each other and agree compute the same DC. Two disjoint
//! partitions can only both have a DC when both are quorate, which majority quorum rules out and
//! `two_node` (where fencing decides) allows.

use super::{NodeId, NodeSet};

/// Everything the election looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionInput<'a> {
    pub me: NodeId,
    pub view: NodeSet,
    pub quorate: bool,
    pub settled: bool,
    /// `(member, the view it last reported)` for the other members of `view`.
    pub reported: &'a [(NodeId, NodeSet)],
}

/// Elects the DC, or `None` (see the module notes for the rules).
pub fn elect(input: &ElectionInput<'_>) -> Option<NodeId> {
    if !input.quorate || !input.settled || !input.view.contains(input.me) {
        return None;
    }
    for m in input.view.iter().filter(|m| *m != input.me) {
        let theirs = input.reported.iter().find(|(n, _)| *n == m).map(|(_, v)| *v);
        if theirs != Some(input.view) {
            return None;
        }
    }
    input.view.first()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[u8]) -> NodeSet {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn rules() {
        let v = s(&[1, 2, 3]);
        let agreed = [(NodeId(1), v), (NodeId(3), v)];
        let base = ElectionInput {
            me: NodeId(2),
            view: v,
            quorate: true,
            settled: true,
            reported: &agreed,
        };
        assert_eq!(elect(&base), Some(NodeId(1)));
        assert_eq!(elect(&ElectionInput { quorate: false, ..base }), None);
        assert_eq!(elect(&ElectionInput { settled: false, ..base }), None);
        let disagree = [(NodeId(1), s(&[1, 2])), (NodeId(3), v)];
        assert_eq!(
            elect(&ElectionInput {
                reported: &disagree,
                ..base
            }),
            None
        );
        let missing = [(NodeId(3), v)];
        assert_eq!(
            elect(&ElectionInput {
                reported: &missing,
                ..base
            }),
            None
        );
        // Alone and quorate (two_node): itself.
        let alone = ElectionInput {
            me: NodeId(5),
            view: s(&[5]),
            quorate: true,
            settled: true,
            reported: &[],
        };
        assert_eq!(elect(&alone), Some(NodeId(5)));
    }
}
