//! The transition engine's bookkeeping (Pacemaker's `pacemaker-controld` TE): which actions of
//! the DC's current transition may be dispatched, which are out, which are done. Pure: the
//! controller feeds it confirmations and asks it what is ready.
//!
//! An action is ready when every action ordered before it has succeeded. A failure (or an
//! explicit abort, e.g. on a membership change) stops further dispatching; the run is finished
//! once nothing is in flight, and the controller computes a new transition from what happened.

use crate::cluster::pengine::Transition;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionState {
    Waiting,
    InFlight,
    Done,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Run {
    /// Unique among this cluster's transitions: the DC's incarnation and a counter.
    pub id: String,
    pub transition: Transition,
    state: Vec<ActionState>,
    aborted: Option<String>,
}

impl Run {
    pub fn new(id: String, transition: Transition) -> Run {
        let n = transition.actions.len();
        Run {
            id,
            transition,
            state: vec![ActionState::Waiting; n],
            aborted: None,
        }
    }

    /// The key an action's request and result carry.
    pub fn key(&self, idx: usize) -> String {
        format!("{}:{idx}", self.id)
    }

    /// The action index a key names, if it is one of this run's.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        let (id, idx) = key.rsplit_once(':')?;
        let idx: usize = idx.parse().ok()?;
        (id == self.id && idx < self.state.len()).then_some(idx)
    }

    /// Marks every waiting action whose predecessors all succeeded as in flight, and returns
    /// them (in the transition's order). Nothing once aborted.
    pub fn take_ready(&mut self) -> Vec<usize> {
        if self.aborted.is_some() {
            return Vec::new();
        }
        let mut ready = Vec::new();
        for i in 0..self.state.len() {
            if self.state[i] != ActionState::Waiting {
                continue;
            }
            let blocked = self
                .transition
                .edges
                .iter()
                .any(|&(a, b)| b == i && self.state[a] != ActionState::Done);
            if !blocked {
                ready.push(i);
            }
        }
        for &i in &ready {
            self.state[i] = ActionState::InFlight;
        }
        ready
    }

    /// An in-flight action finished. A failure aborts the run. Returns false if the action was
    /// not in flight (a late or duplicate confirmation), which changes nothing.
    pub fn confirm(&mut self, idx: usize, ok: bool) -> bool {
        if self.state.get(idx) != Some(&ActionState::InFlight) {
            return false;
        }
        self.state[idx] = if ok { ActionState::Done } else { ActionState::Failed };
        if !ok && self.aborted.is_none() {
            self.aborted = Some(format!("{} failed", self.transition.actions[idx]));
        }
        true
    }

    /// Stops dispatching; what is in flight still finishes.
    pub fn abort(&mut self, why: &str) {
        if self.aborted.is_none() {
            self.aborted = Some(why.to_string());
        }
    }

    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    pub fn in_flight(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.state.len()).filter(|&i| self.state[i] == ActionState::InFlight)
    }

    /// Nothing is in flight and nothing more will be dispatched.
    pub fn finished(&self) -> bool {
        self.in_flight().next().is_none()
            && (self.aborted.is_some() || self.state.iter().all(|s| *s == ActionState::Done))
    }

    /// `(done, failed, total)`, for logs and status.
    pub fn counts(&self) -> (usize, usize, usize) {
        let done = self.state.iter().filter(|s| **s == ActionState::Done).count();
        let failed = self.state.iter().filter(|s| **s == ActionState::Failed).count();
        (done, failed, self.state.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pengine::{ActionKind, PlannedAction};

    fn act(kind: ActionKind, rsc: &str, node: &str) -> PlannedAction {
        PlannedAction {
            kind,
            rsc: rsc.into(),
            node: node.into(),
            interval_ms: 0,
            role: None,
            timeout_ms: None,
        }
    }

    /// fence n1 -> start a on n2 -> start b on n2; monitor a independent of b.
    fn chain() -> Run {
        let t = Transition {
            actions: vec![
                act(ActionKind::Fence, "", "n1"),
                act(ActionKind::Start, "a", "n2"),
                act(ActionKind::Start, "b", "n2"),
                act(ActionKind::Monitor, "a", "n2"),
            ],
            edges: vec![(0, 1), (1, 2), (1, 3)],
            ..Transition::default()
        };
        Run::new("T7-3".into(), t)
    }

    #[test]
    fn dispatches_in_order_and_finishes() {
        let mut r = chain();
        assert_eq!(r.take_ready(), vec![0]);
        assert_eq!(
            r.take_ready(),
            Vec::<usize>::new(),
            "nothing new until the fence is done"
        );
        assert!(!r.finished());
        assert!(r.confirm(0, true));
        assert_eq!(r.take_ready(), vec![1]);
        assert!(r.confirm(1, true));
        assert_eq!(r.take_ready(), vec![2, 3]);
        assert!(r.confirm(3, true));
        assert!(!r.confirm(3, true), "a duplicate confirmation changes nothing");
        assert!(!r.finished());
        assert!(r.confirm(2, true));
        assert!(r.finished());
        assert_eq!(r.counts(), (4, 0, 4));
        assert!(r.aborted().is_none());
    }

    #[test]
    fn a_failure_stops_dispatching_but_waits_for_what_is_out() {
        let mut r = chain();
        r.take_ready();
        r.confirm(0, true);
        r.take_ready();
        r.confirm(1, true);
        assert_eq!(r.take_ready(), vec![2, 3]);
        assert!(r.confirm(2, false));
        assert_eq!(r.aborted(), Some("start b on n2 failed"));
        assert!(!r.finished(), "the monitor is still out");
        assert!(r.take_ready().is_empty());
        r.confirm(3, true);
        assert!(r.finished());
        assert_eq!(r.counts(), (3, 1, 4));
    }

    #[test]
    fn abort_before_anything_finishes_at_once() {
        let mut r = chain();
        r.abort("membership changed");
        assert!(r.take_ready().is_empty());
        assert!(r.finished());
        assert_eq!(r.aborted(), Some("membership changed"));
    }

    #[test]
    fn keys_round_trip_and_reject_other_runs() {
        let r = chain();
        assert_eq!(r.key(2), "T7-3:2");
        assert_eq!(r.index_of("T7-3:2"), Some(2));
        assert_eq!(r.index_of("T7-4:2"), None);
        assert_eq!(r.index_of("T7-3:9"), None);
        assert_eq!(r.index_of("garbage"), None);
    }
}
