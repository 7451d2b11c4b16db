//! Disaggregated placement: which worker serves a request, and whether a prefill worker computes
//! its prompt first. Prefill workers take no whole requests while another role is there; a decode
//! worker's prompt goes to the prefill pool only when it has enough uncached blocks to be worth a
//! transfer and the pool is not already behind (`router.disagg_min_blocks`,
//! `router.prefill_busy_blocks`). Workers in `avoid` (those a request already failed on) are
//! passed over while any other will do.
//!
//! The router actor calls `Placer::route` for every request; the pools simulator calls the same.

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use vocab::config::WorkerRole;
use vocab::ids::RequestId;

use super::cost::Decision;
use super::placer::Placer;

/// A live worker the router may place on, with the role it serves now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eligible<W> {
    pub worker: W,
    pub role: WorkerRole,
}

/// The thresholds of conditional disaggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DisaggConfig {
    /// Prompts with fewer uncached blocks than this are prefilled on their decode worker.
    pub min_blocks: u32,
    /// Above this many predicted blocks queued on the least-loaded prefill worker, prompts are
    /// prefilled on their decode worker.
    pub busy_blocks: u64,
}

/// Whether a request was disaggregated, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisaggOutcome {
    /// A prefill worker computes the prompt and sends its KV blocks to the decode worker.
    Remote,
    /// Too few uncached blocks to be worth a transfer.
    Short,
    /// The prefill pool is behind.
    Busy,
    /// The decode worker was chosen but no prefill worker is eligible.
    NoPrefillWorker,
    /// The chosen worker is not a decode worker: it serves the whole request.
    Aggregated,
}

impl DisaggOutcome {
    /// The metric label (`armature_router_disagg_decisions_total{outcome}`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Short => "short",
            Self::Busy => "busy",
            Self::NoPrefillWorker => "no_prefill_worker",
            Self::Aggregated => "aggregated",
        }
    }

    /// The outcome for a decode worker that would compute `new_blocks` blocks itself, given the
    /// least predicted prefill load among the eligible prefill workers (None: there are none).
    pub fn decide(least_prefill_load: Option<u64>, new_blocks: f64, config: DisaggConfig) -> Self {
        match least_prefill_load {
            None => Self::NoPrefillWorker,
            Some(_) if new_blocks < f64::from(config.min_blocks) => Self::Short,
            Some(load) if load > config.busy_blocks => Self::Busy,
            Some(_) => Self::Remote,
        }
    }
}

impl fmt::Display for DisaggOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Routed<W> {
    /// The worker that serves it (decodes, and prefills unless `prefill` is set), and why.
    pub decision: Decision<W>,
    pub role: WorkerRole,
    /// The prefill worker that computes its prompt first (`disagg` is `Remote`).
    pub prefill: Option<W>,
    pub disagg: DisaggOutcome,
}

impl<W> Routed<W> {
    pub fn worker(&self) -> &W {
        &self.decision.chosen().worker
    }
}

/// The placer key of a request's prefill (its decode placement has the request's own id).
pub fn prefill_key(request: &RequestId) -> RequestId {
    RequestId(format!("{}#prefill", request.0))
}

impl<W: Clone + Eq + Hash> Placer<W> {
    /// Place `request` (prompt block hashes `hashes`) on one of `eligible`, passing over the
    /// workers in `avoid` while another will do, and decide its disaggregation. None: nobody is
    /// eligible.
    pub fn route(
        &mut self,
        request: &RequestId,
        hashes: &[u64],
        eligible: &[Eligible<W>],
        avoid: &[W],
        disagg: DisaggConfig,
        now: Duration,
    ) -> Option<Routed<W>> {
        // Prefill workers take no whole requests, unless nobody else is there.
        let mut servers: Vec<&Eligible<W>> = eligible.iter().filter(|e| e.role != WorkerRole::Prefill).collect();
        if servers.is_empty() {
            servers = eligible.iter().collect();
        }
        let preferred: Vec<W> = servers.iter().map(|e| e.worker.clone()).filter(|w| !avoid.contains(w)).collect();
        let candidates =
            if preferred.is_empty() { servers.iter().map(|e| e.worker.clone()).collect() } else { preferred };
        let decision = self.place(request, hashes, &candidates, now)?;
        let chosen = decision.chosen();
        let role = servers.iter().find(|e| e.worker == chosen.worker).map_or(WorkerRole::Aggregated, |e| e.role);
        let (prefill, outcome) = if role == WorkerRole::Decode {
            let pool: Vec<W> = eligible
                .iter()
                .filter(|e| e.role == WorkerRole::Prefill && !avoid.contains(&e.worker))
                .map(|e| e.worker.clone())
                .collect();
            let least = pool.iter().map(|w| self.load(w).prefill).min();
            let outcome = DisaggOutcome::decide(least, chosen.new_blocks, disagg);
            let prefill = if outcome == DisaggOutcome::Remote {
                self.place(&prefill_key(request), hashes, &pool, now).map(|d| d.chosen().worker.clone())
            } else {
                None
            };
            (prefill, outcome)
        } else {
            (None, DisaggOutcome::Aggregated)
        };
        Some(Routed { decision, role, prefill, disagg: outcome })
    }
}

#[cfg(test)]
mod tests {
    use vocab::kv::{KvBatch, KvEvent, KvEventRecord};

    use super::*;
    use crate::router::placer::PlacerConfig;

    const T0: Duration = Duration::ZERO;
    const CONFIG: DisaggConfig = DisaggConfig { min_blocks: 8, busy_blocks: 100 };

    fn eligible(roles: &[(&'static str, WorkerRole)]) -> Vec<Eligible<&'static str>> {
        roles.iter().map(|&(worker, role)| Eligible { worker, role }).collect()
    }

    fn rid(s: &str) -> RequestId {
        RequestId(s.into())
    }

    #[test]
    fn the_outcome_by_hand() {
        assert_eq!(DisaggOutcome::decide(None, 50.0, CONFIG), DisaggOutcome::NoPrefillWorker);
        assert_eq!(DisaggOutcome::decide(Some(0), 7.0, CONFIG), DisaggOutcome::Short);
        assert_eq!(DisaggOutcome::decide(Some(0), 8.0, CONFIG), DisaggOutcome::Remote);
        assert_eq!(DisaggOutcome::decide(Some(100), 50.0, CONFIG), DisaggOutcome::Remote);
        assert_eq!(DisaggOutcome::decide(Some(101), 50.0, CONFIG), DisaggOutcome::Busy);
        assert_eq!(DisaggOutcome::Busy.to_string(), "busy");
    }

    #[test]
    fn a_long_prompt_on_a_decode_worker_goes_to_the_prefill_pool() {
        let mut p: Placer<&str> = Placer::new(PlacerConfig::default(), 1);
        let ws = eligible(&[("p1", WorkerRole::Prefill), ("d1", WorkerRole::Decode)]);
        let hashes: Vec<u64> = (1..=20).collect();
        let r = p.route(&rid("r1"), &hashes, &ws, &[], CONFIG, T0).unwrap();
        assert_eq!(
            (*r.worker(), r.role, r.prefill, r.disagg),
            ("d1", WorkerRole::Decode, Some("p1"), DisaggOutcome::Remote)
        );
        // Both placements count: the decode worker's and the prefill worker's predicted load.
        assert_eq!(p.load(&"p1").prefill, 20);
        assert_eq!(p.in_flight(), 2);
        // The first token ends the prefill's load; the end ends the rest.
        p.first_token(&rid("r1"));
        assert_eq!(p.load(&"p1").prefill, 0);
        assert_eq!(p.load(&"d1").decode, 20);
        p.finished(&rid("r1"));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn short_prompts_and_a_busy_pool_stay_on_the_decode_worker() {
        let mut p: Placer<&str> = Placer::new(PlacerConfig::default(), 1);
        let ws = eligible(&[("p1", WorkerRole::Prefill), ("d1", WorkerRole::Decode)]);
        let short = p.route(&rid("s"), &[1, 2, 3], &ws, &[], CONFIG, T0).unwrap();
        assert_eq!((short.prefill, short.disagg), (None, DisaggOutcome::Short));
        // 101 blocks queued on the only prefill worker: busy.
        let long: Vec<u64> = (100..201).collect();
        assert_eq!(p.route(&rid("l1"), &long, &ws, &[], CONFIG, T0).unwrap().disagg, DisaggOutcome::Remote);
        let r = p.route(&rid("l2"), &(300..320).collect::<Vec<u64>>(), &ws, &[], CONFIG, T0).unwrap();
        assert_eq!((r.prefill, r.disagg), (None, DisaggOutcome::Busy));
    }

    #[test]
    fn the_uncached_part_decides_not_the_prompt_length() {
        let mut p: Placer<&str> = Placer::new(PlacerConfig::default(), 1);
        let ws = eligible(&[("p1", WorkerRole::Prefill), ("d1", WorkerRole::Decode)]);
        let hashes: Vec<u64> = (1..=20).collect();
        // d1 holds 15 of the 20 blocks: 5 to compute, fewer than 8.
        let stored = KvEventRecord { id: 1, event: KvEvent::Stored { parent: None, hashes: hashes[..15].to_vec() } };
        p.receive(&"d1", 1, &KvBatch::Events(vec![stored]), T0);
        let r = p.route(&rid("r"), &hashes, &ws, &[], CONFIG, T0).unwrap();
        assert_eq!((r.prefill, r.disagg), (None, DisaggOutcome::Short));
    }

    #[test]
    fn prefill_workers_serve_whole_requests_only_alone_and_avoid_is_honoured() {
        let mut p: Placer<&str> = Placer::new(PlacerConfig::default(), 1);
        let ws =
            eligible(&[("p1", WorkerRole::Prefill), ("a1", WorkerRole::Aggregated), ("a2", WorkerRole::Aggregated)]);
        for k in 0..10 {
            let r = p.route(&rid(&format!("r{k}")), &[k], &ws, &["a1"], CONFIG, T0).unwrap();
            assert_eq!((*r.worker(), r.disagg, r.prefill), ("a2", DisaggOutcome::Aggregated, None), "r{k}");
        }
        // Everyone avoided: placed anyway, among the servers.
        let r = p.route(&rid("x"), &[1], &ws, &["a1", "a2"], CONFIG, T0).unwrap();
        assert_ne!(*r.worker(), "p1");
        // Only prefill workers left: they serve whole requests.
        let alone = eligible(&[("p1", WorkerRole::Prefill)]);
        let r = p.route(&rid("y"), &[1], &alone, &[], CONFIG, T0).unwrap();
        assert_eq!((*r.worker(), r.role, r.disagg), ("p1", WorkerRole::Prefill, DisaggOutcome::Aggregated));
        // A decode worker with its only prefill worker avoided: no prefill worker.
        let dis = eligible(&[("p1", WorkerRole::Prefill), ("d1", WorkerRole::Decode)]);
        let r = p.route(&rid("z"), &(1..30).collect::<Vec<u64>>(), &dis, &["p1"], CONFIG, T0).unwrap();
        assert_eq!((r.prefill, r.disagg), (None, DisaggOutcome::NoPrefillWorker));
        assert!(p.route(&rid("none"), &[1], &[], &[], CONFIG, T0).is_none());
    }
}
