//! Pure: operations on one resource run one at a time, in submission order; different resources
//! run in parallel. Jobs are opaque ids; the caller starts whatever this says may start.

use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
struct RscQueue {
    running: Option<u64>,
    waiting: VecDeque<u64>,
}

/// Per-resource FIFO queues.
#[derive(Debug, Default)]
pub struct Queues {
    by_rsc: BTreeMap<String, RscQueue>,
}

impl Queues {
    pub fn new() -> Queues {
        Queues::default()
    }

    /// Adds `job` for `rsc`. Returns true if it may start now (nothing else of `rsc` runs).
    pub fn submit(&mut self, rsc: &str, job: u64) -> bool {
        let q = self.by_rsc.entry(rsc.to_string()).or_default();
        if q.running.is_none() {
            debug_assert!(q.waiting.is_empty());
            q.running = Some(job);
            true
        } else {
            q.waiting.push_back(job);
            false
        }
    }

    /// `job` of `rsc` finished. Returns the next job of `rsc` to start, if any.
    pub fn finish(&mut self, rsc: &str, job: u64) -> Option<u64> {
        let q = self.by_rsc.get_mut(rsc)?;
        if q.running != Some(job) {
            return None;
        }
        q.running = q.waiting.pop_front();
        let next = q.running;
        if next.is_none() {
            self.by_rsc.remove(rsc);
        }
        next
    }

    /// Takes a job that has not started out of its queue. False if it is not waiting (it runs,
    /// or is unknown).
    pub fn remove_waiting(&mut self, rsc: &str, job: u64) -> bool {
        let Some(q) = self.by_rsc.get_mut(rsc) else {
            return false;
        };
        let before = q.waiting.len();
        q.waiting.retain(|j| *j != job);
        before != q.waiting.len()
    }

    /// The job running for `rsc`.
    pub fn running(&self, rsc: &str) -> Option<u64> {
        self.by_rsc.get(rsc).and_then(|q| q.running)
    }

    /// Jobs waiting for `rsc`, in order.
    pub fn waiting(&self, rsc: &str) -> Vec<u64> {
        self.by_rsc
            .get(rsc)
            .map(|q| q.waiting.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether nothing runs or waits.
    pub fn is_idle(&self) -> bool {
        self.by_rsc.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_at_a_time_per_resource_in_order() {
        let mut q = Queues::new();
        assert!(q.submit("a", 1));
        assert!(!q.submit("a", 2));
        assert!(!q.submit("a", 3));
        assert!(q.submit("b", 4), "another resource runs in parallel");
        assert_eq!(q.running("a"), Some(1));
        assert_eq!(q.waiting("a"), [2, 3]);
        assert_eq!(q.finish("a", 2), None, "only the running job can finish");
        assert_eq!(q.finish("a", 1), Some(2));
        assert_eq!(q.finish("a", 2), Some(3));
        assert_eq!(q.finish("b", 4), None);
        assert!(!q.is_idle());
        assert_eq!(q.finish("a", 3), None);
        assert!(q.is_idle());
        assert!(q.submit("a", 5), "an idle resource starts at once again");
    }

    #[test]
    fn removing_a_waiting_job() {
        let mut q = Queues::new();
        q.submit("a", 1);
        q.submit("a", 2);
        q.submit("a", 3);
        assert!(q.remove_waiting("a", 2));
        assert!(!q.remove_waiting("a", 1), "running jobs are not removed");
        assert!(!q.remove_waiting("zz", 1));
        assert_eq!(q.finish("a", 1), Some(3));
        assert_eq!(q.finish("a", 3), None);
        assert!(q.is_idle());
    }
}
