//! `Placer`: the placement decision as a plain struct. In-flight counts are the router's own
//! prediction, updated at placement and completion.

use std::collections::HashMap;

use runtime::config::RoutingPolicy;
use runtime::ids::WorkerId;

#[derive(Debug)]
pub struct Placer {
    policy: RoutingPolicy,
    next: usize,
    inflight: HashMap<WorkerId, u32>,
}

impl Placer {
    pub fn new(policy: RoutingPolicy) -> Self {
        Self { policy, next: 0, inflight: HashMap::new() }
    }

    /// Pick among `candidates` (sorted, unique) and count the request as in flight there.
    pub fn place(&mut self, candidates: &[WorkerId]) -> Option<WorkerId> {
        if candidates.is_empty() {
            return None;
        }
        let start = self.next % candidates.len();
        self.next = self.next.wrapping_add(1);
        let rotated = candidates[start..].iter().chain(&candidates[..start]);
        let chosen = match self.policy {
            RoutingPolicy::RoundRobin => &candidates[start],
            // Ties go to the round-robin order, so equal load spreads.
            RoutingPolicy::LeastLoaded => rotated.min_by_key(|w| self.load(w)).expect("non-empty"),
        }
        .clone();
        *self.inflight.entry(chosen.clone()).or_default() += 1;
        Some(chosen)
    }

    /// A request placed on `worker` finished (or failed).
    pub fn finished(&mut self, worker: &WorkerId) {
        if let Some(n) = self.inflight.get_mut(worker) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn load(&self, worker: &WorkerId) -> u32 {
        self.inflight.get(worker).copied().unwrap_or(0)
    }

    /// Forget workers that are gone.
    pub fn retain(&mut self, live: &[WorkerId]) {
        self.inflight.retain(|w, _| live.contains(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(n: usize) -> Vec<WorkerId> {
        (0..n).map(|i| WorkerId::new(&format!("n{i}"), "cpu")).collect()
    }

    #[test]
    fn round_robin_cycles() {
        let mut p = Placer::new(RoutingPolicy::RoundRobin);
        let w = ws(3);
        let got: Vec<_> = (0..6).map(|_| p.place(&w).unwrap().node).collect();
        assert_eq!(got, ["n0", "n1", "n2", "n0", "n1", "n2"]);
    }

    #[test]
    fn least_loaded_prefers_the_idle_worker() {
        let mut p = Placer::new(RoutingPolicy::LeastLoaded);
        let w = ws(2);
        let a = p.place(&w).unwrap();
        let b = p.place(&w).unwrap();
        assert_ne!(a, b, "two requests spread over two idle workers");
        p.finished(&a);
        assert_eq!(p.place(&w).unwrap(), a, "a finished, so it is the least loaded");
        assert_eq!((p.load(&a), p.load(&b)), (1, 1));
    }

    #[test]
    fn no_candidates_no_placement_and_gone_workers_are_forgotten() {
        let mut p = Placer::new(RoutingPolicy::LeastLoaded);
        assert_eq!(p.place(&[]), None);
        let w = ws(2);
        p.place(&w);
        p.place(&w);
        p.retain(&w[..1]);
        assert_eq!(p.load(&w[1]), 0);
        assert_eq!(p.load(&w[0]), 1);
    }
}
