//! Fault plans: what goes wrong, where and when. Written by hand (`--faults`) or drawn from a seed
//! (`--fault-seed`); either way a plan is plain data, so a run replays exactly.
//!
//! Syntax: faults separated by commas, each `KIND:wN@START[+DURATION][*PARAMETER]`:
//! `crash:w1@30s` (the worker's engine fails; it restarts at once, empty), `node:w2@60s+20s` (the
//! node dies and comes back after 20 s, empty), `partition:w0@90s+10s` (cut off from the gateway and
//! router, still running), `slow-link:w3@10s+30s*200ms` (its outputs and KV events arrive 200 ms
//! late), `slow-worker:w2@5s+60s*3` (its steps take 3 times as long), `lose-events:w1@0s+120s*0.3`
//! (30% of its KV event batches are lost).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vocab::config::HumanDuration;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// The worker's engine fails (its requests fail at once); the worker restarts empty.
    Crash,
    /// The node dies, silently, and restarts empty after `down`.
    Node {
        #[serde(serialize_with = "seconds")]
        down: Duration,
    },
    /// The node is cut off from the gateway and router for `duration`, and keeps running.
    Partition {
        #[serde(serialize_with = "seconds")]
        duration: Duration,
    },
    /// Outputs and KV events from the node take `delay` longer for `duration`.
    SlowLink {
        #[serde(serialize_with = "seconds")]
        duration: Duration,
        #[serde(serialize_with = "seconds")]
        delay: Duration,
    },
    /// The worker's steps take `factor` times as long for `duration`.
    SlowWorker {
        #[serde(serialize_with = "seconds")]
        duration: Duration,
        factor: f64,
    },
    /// Each KV event batch of the worker is lost with probability `probability` for `duration`.
    LoseEvents {
        #[serde(serialize_with = "seconds")]
        duration: Duration,
        probability: f64,
    },
}

impl Fault {
    /// How long the fault lasts (zero for a crash).
    pub fn duration(&self) -> Duration {
        match *self {
            Fault::Crash => Duration::ZERO,
            Fault::Node { down } => down,
            Fault::Partition { duration }
            | Fault::SlowLink { duration, .. }
            | Fault::SlowWorker { duration, .. }
            | Fault::LoseEvents { duration, .. } => duration,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedFault {
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
    pub worker: usize,
    #[serde(flatten)]
    pub fault: Fault,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultPlan {
    pub faults: Vec<PlannedFault>,
}

fn duration(text: &str, what: &str, item: &str) -> Result<Duration, String> {
    text.parse::<HumanDuration>().map(|d| d.get()).map_err(|e| format!("{item:?}: {what}: {e}"))
}

impl FaultPlan {
    /// Parse a plan for `workers` workers (see the module's syntax).
    pub fn parse(text: &str, workers: usize) -> Result<Self, String> {
        let mut faults = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, rest) = item.split_once(':').ok_or_else(|| format!("{item:?}: expected KIND:wN@START"))?;
            let (worker, rest) = rest.split_once('@').ok_or_else(|| format!("{item:?}: expected wN@START"))?;
            let worker: usize = worker
                .strip_prefix('w')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{item:?}: {worker:?} is not a worker (w0, w1, ...)"))?;
            if worker >= workers {
                return Err(format!("{item:?}: worker {worker} of {workers}"));
            }
            let (timing, param) = match rest.split_once('*') {
                Some((t, p)) => (t, Some(p)),
                None => (rest, None),
            };
            let (start, length) = match timing.split_once('+') {
                Some((s, l)) => (s, Some(duration(l, "duration", item)?)),
                None => (timing, None),
            };
            let at = duration(start, "start", item)?;
            let length = |default: Option<Duration>| {
                length.or(default).ok_or_else(|| format!("{item:?}: {kind} needs +DURATION"))
            };
            let number = |what: &str| -> Result<f64, String> {
                let p = param.ok_or_else(|| format!("{item:?}: {kind} needs *{what}"))?;
                p.parse::<f64>().map_err(|_| format!("{item:?}: {what} {p:?} is not a number"))
            };
            let fault = match kind {
                "crash" => Fault::Crash,
                "node" => Fault::Node { down: length(None)? },
                "partition" => Fault::Partition { duration: length(None)? },
                "slow-link" => {
                    let delay =
                        duration(param.ok_or_else(|| format!("{item:?}: slow-link needs *DELAY"))?, "delay", item)?;
                    Fault::SlowLink { duration: length(None)?, delay }
                }
                "slow-worker" => {
                    let factor = number("FACTOR")?;
                    if !(factor >= 1.0 && factor.is_finite()) {
                        return Err(format!("{item:?}: factor must be at least 1"));
                    }
                    Fault::SlowWorker { duration: length(None)?, factor }
                }
                "lose-events" => {
                    let probability = number("PROBABILITY")?;
                    if !(0.0..=1.0).contains(&probability) {
                        return Err(format!("{item:?}: probability must be within 0 and 1"));
                    }
                    Fault::LoseEvents { duration: length(None)?, probability }
                }
                other => {
                    return Err(format!(
                        "{item:?}: unknown fault {other:?} (crash, node, partition, slow-link, slow-worker, lose-events)"
                    ));
                }
            };
            faults.push(PlannedFault { at, worker, fault });
        }
        faults.sort_by_key(|f| f.at);
        Ok(Self { faults })
    }

    /// A plan drawn from `seed`: about one fault per `every` of `horizon`, of every kind, on
    /// random workers; never more than half the workers down or cut off at once.
    pub fn random(seed: u64, workers: usize, horizon: Duration, every: Duration) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xfa01_75ee_d000_0000);
        let count = (horizon.as_secs_f64() / every.as_secs_f64().max(1e-3)).ceil().max(1.0) as usize;
        let mut faults: Vec<PlannedFault> = Vec::new();
        let secs = |rng: &mut StdRng, lo: f64, hi: f64| Duration::from_secs_f64(rng.random_range(lo..hi));
        for _ in 0..count {
            let at = secs(&mut rng, 0.0, horizon.as_secs_f64().max(1.0));
            let worker = rng.random_range(0..workers);
            let fault = match rng.random_range(0..6) {
                0 => Fault::Crash,
                1 => Fault::Node { down: secs(&mut rng, 2.0, 30.0) },
                2 => Fault::Partition { duration: secs(&mut rng, 1.0, 20.0) },
                3 => Fault::SlowLink { duration: secs(&mut rng, 5.0, 60.0), delay: secs(&mut rng, 0.01, 1.0) },
                4 => Fault::SlowWorker { duration: secs(&mut rng, 5.0, 60.0), factor: rng.random_range(1.5..5.0) },
                _ => Fault::LoseEvents { duration: secs(&mut rng, 5.0, 60.0), probability: rng.random_range(0.1..0.9) },
            };
            let outage = matches!(fault, Fault::Node { .. } | Fault::Partition { .. });
            let overlapping = |f: &PlannedFault| {
                matches!(f.fault, Fault::Node { .. } | Fault::Partition { .. })
                    && f.at <= at + fault.duration()
                    && at <= f.at + f.fault.duration()
            };
            let out_at_once: std::collections::HashSet<usize> =
                faults.iter().filter(|f| overlapping(f)).map(|f| f.worker).collect();
            if outage && (out_at_once.contains(&worker) || (out_at_once.len() + 1) * 2 > workers) {
                continue;
            }
            faults.push(PlannedFault { at, worker, fault });
        }
        faults.sort_by_key(|f| f.at);
        Self { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_errors_name_the_item() {
        let p = FaultPlan::parse(
            "node:w2@60s+20s, crash:w1@30s, partition:w0@90s+10s, slow-link:w3@10s+30s*200ms, \
             slow-worker:w2@5s+60s*3, lose-events:w1@0s+2m*0.3",
            4,
        )
        .unwrap();
        let at: Vec<f64> = p.faults.iter().map(|f| f.at.as_secs_f64()).collect();
        assert_eq!(at, vec![0.0, 5.0, 10.0, 30.0, 60.0, 90.0]);
        assert_eq!(p.faults[0].fault, Fault::LoseEvents { duration: Duration::from_secs(120), probability: 0.3 });
        assert_eq!(
            p.faults[2].fault,
            Fault::SlowLink { duration: Duration::from_secs(30), delay: Duration::from_millis(200) }
        );
        assert_eq!(p.faults[3], PlannedFault { at: Duration::from_secs(30), worker: 1, fault: Fault::Crash });
        assert_eq!(p.faults[4].fault, Fault::Node { down: Duration::from_secs(20) });
        for (bad, says) in [
            ("crash:w4@1s", "worker 4 of 4"),
            ("crash:x1@1s", "is not a worker"),
            ("boom:w1@1s", "unknown fault"),
            ("node:w1@1s", "needs +DURATION"),
            ("slow-worker:w1@1s+2s*0.5", "at least 1"),
            ("lose-events:w1@1s+2s*2", "within 0 and 1"),
            ("crash:w1@soon", "start"),
            ("crash w1", "expected KIND"),
        ] {
            let err = FaultPlan::parse(bad, 4).unwrap_err();
            assert!(err.contains(says) && err.contains(bad.split(',').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn random_plans_are_seeded_and_keep_half_the_workers() {
        let a = FaultPlan::random(3, 6, Duration::from_secs(300), Duration::from_secs(20));
        assert_eq!(a, FaultPlan::random(3, 6, Duration::from_secs(300), Duration::from_secs(20)));
        assert_ne!(a, FaultPlan::random(4, 6, Duration::from_secs(300), Duration::from_secs(20)));
        assert!(a.faults.len() >= 5, "{}", a.faults.len());
        // At any instant at most half the workers are down or cut off.
        for f in &a.faults {
            let t = f.at;
            let out = a
                .faults
                .iter()
                .filter(|g| matches!(g.fault, Fault::Node { .. } | Fault::Partition { .. }))
                .filter(|g| g.at <= t && t <= g.at + g.fault.duration())
                .count();
            assert!(out * 2 <= 6, "{out} out at {t:?}");
        }
    }
}
