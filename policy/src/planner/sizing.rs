//! The planner's decisions, sans-IO: from what the last interval saw (arrivals, token counts,
//! TTFT and ITL, queues), the prefill and decode pool sizes for the next one, never beyond the
//! device budget, each with its reason, and the router's disaggregation threshold.
//!
//! Two modes. Load mode moves one worker at a time on SLO pressure, after the pressure has lasted
//! `hysteresis` intervals (so noise does not flip roles back and forth): a pool whose SLO is
//! missed grows (from a spare device, else from the other pool when that one has slack); pools
//! that beat both SLOs by half shrink. Throughput mode predicts the next interval's prompt and
//! output token rates (a smoothed rate, but never below the last interval's, so bursts are met at
//! once) and sizes each pool from per-worker capacities (profiled with `armature bench`, or the
//! simulator's timing model), shrinking only after `hysteresis` intervals of less need.

use std::time::Duration;

/// How far the disaggregation threshold may rise above the configured one.
const MAX_THRESHOLD_FACTOR: u32 = 8;
/// ITL p90 as a share of its SLO below which decode workers take more prompts, and above which
/// they take fewer.
const ITL_ROOM: f64 = 0.6;
const ITL_TIGHT: f64 = 0.8;

/// Latency targets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    /// Time to first token.
    pub ttft: Duration,
    /// Inter-token latency.
    pub itl: Duration,
}

pub use vocab::config::PlannerMode;

/// What one worker sustains within the SLOs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    /// Prompt tokens per second of one prefill worker.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second of one decode worker (all its sequences together).
    pub decode_tokens_per_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannerConfig {
    pub slo: Slo,
    pub mode: PlannerMode,
    /// Devices the pools may use together.
    pub devices: usize,
    pub min_prefill: usize,
    pub min_decode: usize,
    pub capacity: Capacity,
    /// Intervals a signal must last before the pools change (load mode).
    pub hysteresis: u32,
    /// Intervals of lower need before a pool shrinks (throughput mode): a device stopped too
    /// early takes its start-up time to come back.
    pub shrink_after: u32,
    /// Share of a worker's capacity to plan for (throughput mode).
    pub headroom: f64,
    /// Weight of the newest interval in the smoothed rates (throughput mode).
    pub smoothing: f64,
    /// The router's disaggregation threshold while the prefill pool keeps up, in blocks; raised
    /// (more prompts stay on their decode worker) while it does not.
    pub disagg_min_blocks: u32,
}

impl PlannerConfig {
    pub fn new(slo: Slo, mode: PlannerMode, devices: usize, capacity: Capacity) -> Self {
        Self {
            slo,
            mode,
            devices,
            min_prefill: 1,
            min_decode: 1,
            capacity,
            hysteresis: 2,
            shrink_after: 6,
            headroom: 0.8,
            smoothing: 0.5,
            disagg_min_blocks: 8,
        }
    }
}

/// What one interval saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    pub length: Duration,
    pub arrivals: u64,
    /// Prompt tokens of the requests that arrived, and tokens generated during the interval.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// 90th percentiles over the requests measured in the interval (None: none measured).
    pub ttft_p90: Option<Duration>,
    pub itl_p90: Option<Duration>,
    /// Prompts waiting for a prefill worker at the end of the interval, and their tokens.
    pub prefill_queue: usize,
    pub prefill_queue_tokens: u64,
    /// The fullest decode worker's KV pool, 0 to 1.
    pub decode_kv_use: f64,
    /// Sequences waiting at the decode workers (their own prompts to compute, and prompts
    /// whose blocks arrived) at the end of the interval.
    pub decode_waiting: usize,
}

/// Workers per role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pools {
    pub prefill: usize,
    pub decode: usize,
}

impl Pools {
    pub fn total(&self) -> usize {
        self.prefill + self.decode
    }
}

/// The pools for the next interval, why, and the router's disaggregation threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub pools: Pools,
    pub reason: String,
    pub disagg_min_blocks: u32,
}

#[derive(Debug)]
pub struct Planner {
    config: PlannerConfig,
    /// Smoothed prompt and output token rates, per second.
    prompt_rate: Option<f64>,
    output_rate: Option<f64>,
    /// Consecutive intervals of: TTFT missed, ITL missed, both with slack, less need.
    ttft_missed: u32,
    itl_missed: u32,
    slack: u32,
    less_needed: u32,
    /// The disaggregation threshold in force, in blocks.
    threshold: u32,
    /// A flip between the pools that throughput mode wants (+1 towards prefill, -1 towards
    /// decode) and for how many intervals in a row.
    flip_wanted: (i8, u32),
}

fn ratio(seen: Option<Duration>, target: Duration) -> f64 {
    seen.map_or(0.0, |s| s.as_secs_f64() / target.as_secs_f64().max(1e-9))
}

impl Planner {
    pub fn new(config: PlannerConfig) -> Self {
        let threshold = config.disagg_min_blocks;
        Self {
            config,
            prompt_rate: None,
            output_rate: None,
            ttft_missed: 0,
            itl_missed: 0,
            slack: 0,
            less_needed: 0,
            threshold,
            flip_wanted: (0, 0),
        }
    }

    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    /// The devices the pools may use from now on (on a cluster: the live workers and the
    /// stopped spares).
    pub fn set_devices(&mut self, devices: usize) {
        self.config.devices = devices;
    }

    /// The pools for the next interval, given what the last one saw and the pools it had.
    pub fn decide(&mut self, seen: &Interval, current: Pools) -> Decision {
        let c = self.config.clone();
        let ttft = ratio(seen.ttft_p90, c.slo.ttft);
        let itl = ratio(seen.itl_p90, c.slo.itl);
        // A decode pool whose KV memory is full or whose sequences queue misses its ITL SLO
        // whatever was measured (ITL is measured as requests finish, and a stalled pool finishes
        // none).
        let decode_stalled = seen.decode_kv_use > 0.95 || seen.decode_waiting > current.decode;
        let ttft_missed = ttft > 1.0;
        let itl_missed = itl > 1.0 || decode_stalled;
        self.ttft_missed = if ttft_missed { self.ttft_missed + 1 } else { 0 };
        self.itl_missed = if itl_missed { self.itl_missed + 1 } else { 0 };
        let slack = ttft < 0.5 && itl < 0.5 && seen.prefill_queue == 0 && !decode_stalled;
        self.slack = if slack { self.slack + 1 } else { 0 };
        let (pools, reason) = match c.mode {
            PlannerMode::Load => {
                let (want, reason) = self.load_mode(current, ttft, itl, decode_stalled);
                (self.within_budget(want), reason)
            }
            PlannerMode::Throughput => {
                let (want, reason) = self.throughput_mode(seen, current);
                self.one_flip_at_a_time(current, self.within_budget(want), reason)
            }
        };
        // While prompts queue for prefill, keep more of them on their decode workers.
        let disagg_min_blocks = self.disagg_threshold(seen, pools, ttft_missed, itl);
        Decision { pools, reason, disagg_min_blocks }
    }

    /// While prompts queue for prefill and the decode workers have room, keep more prompts on
    /// their decode workers: the threshold doubles each such interval (up to
    /// `MAX_THRESHOLD_FACTOR` times the configured one) and halves back once the queue clears or
    /// the decode workers are pressed. Room means a measured ITL p90 under `ITL_ROOM` of its SLO,
    /// nothing waiting at a decode worker and its KV pool under half full: prompts computed on a
    /// decode worker take its memory and its steps, and one that takes too many stalls every
    /// sequence it decodes.
    fn disagg_threshold(&mut self, seen: &Interval, pools: Pools, ttft_missed: bool, itl: f64) -> u32 {
        let base = self.config.disagg_min_blocks.max(1);
        let queued = ttft_missed || seen.prefill_queue > pools.prefill;
        let room = seen.itl_p90.is_some() && itl < ITL_ROOM && seen.decode_waiting == 0 && seen.decode_kv_use < 0.5;
        let pressed = itl > ITL_TIGHT || seen.decode_waiting > 0 || seen.decode_kv_use > 0.8;
        self.threshold = if queued && room {
            (self.threshold * 2).min(base * MAX_THRESHOLD_FACTOR)
        } else if !queued || pressed {
            (self.threshold / 2).max(base)
        } else {
            self.threshold
        };
        self.threshold
    }

    /// Throughput mode moves a worker between the pools (a flip: it drains first, serving
    /// nothing meanwhile) only when the same move was wanted `hysteresis` intervals in a row, and
    /// one worker per interval; growing from spare devices is not held back.
    fn one_flip_at_a_time(&mut self, current: Pools, next: Pools, reason: String) -> (Pools, String) {
        let dir: i8 = if next.prefill > current.prefill && next.decode < current.decode {
            1
        } else if next.decode > current.decode && next.prefill < current.prefill {
            -1
        } else {
            self.flip_wanted = (0, 0);
            return (next, reason);
        };
        let count = if self.flip_wanted.0 == dir { self.flip_wanted.1 + 1 } else { 1 };
        self.flip_wanted = (dir, count);
        if count < self.config.hysteresis.max(1) {
            return (current, format!("{reason}; a flip is wanted {count} interval(s) in a row, holding"));
        }
        self.flip_wanted = (0, 0);
        let one = if dir > 0 {
            Pools { prefill: current.prefill + 1, decode: current.decode - 1 }
        } else {
            Pools { prefill: current.prefill - 1, decode: current.decode + 1 }
        };
        (one, reason)
    }

    fn load_mode(&mut self, current: Pools, ttft: f64, itl: f64, decode_stalled: bool) -> (Pools, String) {
        let c = self.config.clone();
        let h = c.hysteresis.max(1);
        let spare = current.total() < c.devices;
        let mut next = current;
        // Both missed: the pool further over its SLO goes first, and a stalled decode pool before
        // anything (its sequences had their first token and wait for the rest). A pool gives a
        // worker up when it has room (under 0.8 of its SLO) or is less than half as far over as
        // the other; the prefill pool also to a stalled decode pool, which gives none.
        let gives = |other: f64, own: f64| other < 0.8 || other < own / 2.0;
        let decode_first = self.itl_missed >= h && (decode_stalled || itl > ttft);
        if self.ttft_missed >= h && !decode_first {
            self.ttft_missed = 0;
            if spare {
                next.prefill += 1;
                return (next, format!("TTFT p90 at {ttft:.2}x its SLO: one more prefill worker"));
            }
            if current.decode > c.min_decode && !decode_stalled && gives(itl, ttft) {
                next.prefill += 1;
                next.decode -= 1;
                return (
                    next,
                    format!("TTFT p90 at {ttft:.2}x its SLO, ITL at {itl:.2}x: a decode worker turns prefill"),
                );
            }
            return (next, format!("TTFT p90 at {ttft:.2}x its SLO, but no device to spare"));
        }
        if self.itl_missed >= h {
            self.itl_missed = 0;
            let why = if decode_stalled {
                "decode workers stalled (KV memory full or sequences queued)".to_string()
            } else {
                format!("ITL p90 at {itl:.2}x its SLO")
            };
            if spare {
                next.decode += 1;
                return (next, format!("{why}: one more decode worker"));
            }
            if current.prefill > c.min_prefill && (decode_stalled || gives(ttft, itl)) {
                next.decode += 1;
                next.prefill -= 1;
                return (next, format!("{why}, TTFT at {ttft:.2}x: a prefill worker turns decode"));
            }
            return (next, format!("{why}, but no device to spare"));
        }
        if self.slack >= h {
            self.slack = 0;
            // Shrink the pool with more room under its SLO.
            if ttft <= itl && current.prefill > c.min_prefill {
                next.prefill -= 1;
                return (next, format!("TTFT {ttft:.2}x and ITL {itl:.2}x of their SLOs: one prefill worker fewer"));
            }
            if current.decode > c.min_decode {
                next.decode -= 1;
                return (next, format!("TTFT {ttft:.2}x and ITL {itl:.2}x of their SLOs: one decode worker fewer"));
            }
        }
        (next, format!("holding: TTFT {ttft:.2}x, ITL {itl:.2}x of their SLOs"))
    }

    fn throughput_mode(&mut self, seen: &Interval, current: Pools) -> (Pools, String) {
        let c = self.config.clone();
        let secs = seen.length.as_secs_f64().max(1e-9);
        let (prompt, output) = (seen.input_tokens as f64 / secs, seen.output_tokens as f64 / secs);
        let smooth = |old: Option<f64>, new: f64| old.map_or(new, |o| o + c.smoothing * (new - o));
        self.prompt_rate = Some(smooth(self.prompt_rate, prompt));
        self.output_rate = Some(smooth(self.output_rate, output));
        // Never plan for less than what just happened: bursts are met at once, lulls slowly.
        let (want_prompt, want_output) =
            (self.prompt_rate.unwrap_or(0.0).max(prompt), self.output_rate.unwrap_or(0.0).max(output));
        // What waits now must be cleared within one interval, on top of what arrives.
        let want_prompt = want_prompt + seen.prefill_queue_tokens as f64 / secs;
        let per = |rate: f64, cap: f64| (rate / (cap * c.headroom).max(1e-9)).ceil() as usize;
        let mut need = Pools {
            prefill: per(want_prompt, c.capacity.prefill_tokens_per_s).max(c.min_prefill),
            decode: per(want_output, c.capacity.decode_tokens_per_s).max(c.min_decode),
        };
        // A decode pool out of KV memory queues sequences whatever its token rate.
        if seen.decode_kv_use > 0.9 {
            need.decode = need.decode.max(current.decode + 1);
        }
        let reason = format!(
            "predicted {want_prompt:.0} prompt tok/s and {want_output:.0} output tok/s: {} prefill, {} decode",
            need.prefill, need.decode
        );
        if need.prefill >= current.prefill && need.decode >= current.decode {
            self.less_needed = 0;
            return (need, reason);
        }
        // A pool shrinks only after the need has been lower for a while.
        self.less_needed += 1;
        if self.less_needed < c.shrink_after.max(1) {
            let held = Pools { prefill: need.prefill.max(current.prefill), decode: need.decode.max(current.decode) };
            return (held, format!("{reason}; holding the larger pools for now"));
        }
        self.less_needed = 0;
        (need, reason)
    }

    /// Fit `want` into the device budget, keeping each pool's minimum and splitting what is left
    /// in proportion.
    fn within_budget(&self, want: Pools) -> Pools {
        let c = &self.config;
        let (minp, mind) = (c.min_prefill.min(c.devices), c.min_decode.min(c.devices.saturating_sub(c.min_prefill)));
        let want = Pools { prefill: want.prefill.max(minp), decode: want.decode.max(mind) };
        if want.total() <= c.devices {
            return want;
        }
        let room = c.devices - minp - mind;
        let (extra_p, extra_d) = (want.prefill - minp, want.decode - mind);
        let p = ((room as f64) * extra_p as f64 / (extra_p + extra_d).max(1) as f64).round() as usize;
        let p = p.min(extra_p).min(room);
        let d = (room - p).min(extra_d);
        Pools { prefill: minp + p + (room - p - d).min(extra_p - p), decode: mind + d }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: PlannerMode, devices: usize) -> PlannerConfig {
        PlannerConfig::new(
            Slo { ttft: Duration::from_secs(2), itl: Duration::from_millis(50) },
            mode,
            devices,
            Capacity { prefill_tokens_per_s: 10_000.0, decode_tokens_per_s: 2_000.0 },
        )
    }

    fn seen(ttft_ms: u64, itl_ms: u64) -> Interval {
        Interval {
            length: Duration::from_secs(10),
            ttft_p90: Some(Duration::from_millis(ttft_ms)),
            itl_p90: Some(Duration::from_millis(itl_ms)),
            ..Default::default()
        }
    }

    const P2D2: Pools = Pools { prefill: 2, decode: 2 };

    #[test]
    fn load_mode_moves_one_step_after_the_pressure_lasts() {
        let mut p = Planner::new(config(PlannerMode::Load, 6));
        // One bad interval is noise; the second moves.
        assert_eq!(p.decide(&seen(3000, 20), P2D2).pools, P2D2);
        let d = p.decide(&seen(3000, 20), P2D2);
        assert_eq!(d.pools, Pools { prefill: 3, decode: 2 });
        assert!(d.reason.contains("TTFT") && d.reason.contains("one more prefill"), "{}", d.reason);
        // A good interval between two bad ones resets the count.
        let mut p = Planner::new(config(PlannerMode::Load, 6));
        for s in [seen(3000, 20), seen(1000, 20), seen(3000, 20)] {
            assert_eq!(p.decide(&s, P2D2).pools, P2D2);
        }
        // ITL pressure grows the decode pool.
        let mut p = Planner::new(config(PlannerMode::Load, 6));
        p.decide(&seen(500, 80), P2D2);
        assert_eq!(p.decide(&seen(500, 80), P2D2).pools, Pools { prefill: 2, decode: 3 });
    }

    #[test]
    fn load_mode_flips_a_role_when_the_budget_is_spent_and_shrinks_with_slack() {
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        p.decide(&seen(3000, 20), P2D2);
        let d = p.decide(&seen(3000, 20), P2D2);
        assert_eq!(d.pools, Pools { prefill: 3, decode: 1 }, "{}", d.reason);
        assert!(d.reason.contains("turns prefill"));
        // Both pools missing: nothing to move, nothing added beyond the budget.
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        p.decide(&seen(3000, 90), P2D2);
        let d = p.decide(&seen(3000, 90), P2D2);
        assert_eq!(d.pools, P2D2);
        assert!(d.reason.contains("no device to spare"), "{}", d.reason);
        // Slack on both: the pool with more room shrinks, never below its minimum.
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        p.decide(&seen(200, 20), P2D2);
        assert_eq!(p.decide(&seen(200, 20), P2D2).pools, Pools { prefill: 1, decode: 2 });
        let one = Pools { prefill: 1, decode: 1 };
        p.decide(&seen(100, 10), one);
        assert_eq!(p.decide(&seen(100, 10), one).pools, one);
    }

    #[test]
    fn load_mode_serves_the_pool_further_over_its_slo_first() {
        // TTFT 1.5x and ITL 4x: the decode pool is far worse, a prefill worker turns decode.
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        p.decide(&seen(3000, 200), P2D2);
        let d = p.decide(&seen(3000, 200), P2D2);
        assert_eq!(d.pools, Pools { prefill: 1, decode: 3 }, "{}", d.reason);
        assert!(d.reason.contains("turns decode"), "{}", d.reason);
        // A decode pool out of KV memory, or with sequences queued, finishes nothing and so
        // measures no ITL: it counts as missed all the same.
        for stalled in [
            Interval { decode_kv_use: 0.97, itl_p90: None, ..seen(3000, 0) },
            Interval { decode_waiting: 5, itl_p90: None, ..seen(1000, 0) },
        ] {
            let mut p = Planner::new(config(PlannerMode::Load, 6));
            p.decide(&stalled, P2D2);
            let d = p.decide(&stalled, P2D2);
            assert_eq!(d.pools, Pools { prefill: 2, decode: 3 }, "{stalled:?}: {}", d.reason);
        }
    }

    #[test]
    fn throughput_mode_flips_one_worker_at_a_time_after_the_want_lasts() {
        let mut p = Planner::new(config(PlannerMode::Throughput, 4));
        let full = Pools { prefill: 2, decode: 2 };
        // 40,000 prompt tok/s and little output: 4 prefill wanted, 1 decode kept.
        let prompts = Interval { input_tokens: 400_000, output_tokens: 1_000, ..seen(3000, 20) };
        let first = p.decide(&prompts, full);
        assert_eq!(first.pools, full, "one interval is not enough: {}", first.reason);
        assert_eq!(p.decide(&prompts, full).pools, Pools { prefill: 3, decode: 1 });
        // Wants that alternate never flip.
        let mut p = Planner::new(config(PlannerMode::Throughput, 4));
        let outputs = Interval { input_tokens: 10_000, output_tokens: 60_000, ..seen(500, 40) };
        for s in [&prompts, &outputs, &prompts, &outputs, &prompts, &outputs] {
            assert_eq!(p.decide(s, full).pools, full);
        }
    }

    #[test]
    fn throughput_mode_sizes_pools_from_capacity_and_meets_bursts_at_once() {
        let mut p = Planner::new(config(PlannerMode::Throughput, 8));
        // 24,000 prompt tok/s needs 3 prefill workers at 80% of 10,000; 2,400 output tok/s, 2 decode.
        let burst = Interval { input_tokens: 240_000, output_tokens: 24_000, ..seen(1000, 20) };
        let d = p.decide(&burst, Pools { prefill: 1, decode: 1 });
        assert_eq!(d.pools, Pools { prefill: 3, decode: 2 }, "{}", d.reason);
        // A lull: held for `shrink_after` intervals, then the smoothed rate decides.
        let lull = Interval { input_tokens: 10_000, output_tokens: 1_000, ..seen(300, 10) };
        for _ in 1..p.config().shrink_after {
            assert_eq!(p.decide(&lull, d.pools).pools, d.pools);
        }
        let after = p.decide(&lull, d.pools).pools;
        assert!(after.prefill < 3 && after.prefill >= 1, "{after:?}");
        // A burst bigger than the budget: both pools fit in 8 devices.
        let mut p = Planner::new(config(PlannerMode::Throughput, 8));
        let huge = Interval { input_tokens: 1_000_000, output_tokens: 100_000, ..seen(5000, 100) };
        // What waits counts too: 200,000 queued tokens over 10 s is 2.5 more prefill workers.
        let mut q = Planner::new(config(PlannerMode::Throughput, 8));
        let queued = Interval { prefill_queue: 100, prefill_queue_tokens: 200_000, ..burst.clone() };
        assert_eq!(q.decide(&queued, Pools { prefill: 1, decode: 1 }).pools, Pools { prefill: 6, decode: 2 });
        let d = p.decide(&huge, P2D2);
        assert_eq!(d.pools.total(), 8, "{:?}", d.pools);
        assert!(d.pools.prefill >= 1 && d.pools.decode >= 1);
    }

    #[test]
    fn throughput_mode_grows_a_decode_pool_out_of_kv_memory() {
        let mut p = Planner::new(config(PlannerMode::Throughput, 8));
        let full = Interval { input_tokens: 10_000, output_tokens: 1_000, decode_kv_use: 0.97, ..seen(500, 30) };
        assert_eq!(p.decide(&full, P2D2).pools.decode, 3);
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        for devices in 2..10 {
            for mode in [PlannerMode::Load, PlannerMode::Throughput] {
                let mut p = Planner::new(config(mode, devices));
                let mut pools = Pools { prefill: 1, decode: 1 };
                for i in 0..40u64 {
                    let s = Interval {
                        input_tokens: (i % 7) * 100_000,
                        output_tokens: (i % 5) * 10_000,
                        prefill_queue: (i % 3) as usize,
                        ..seen(500 + (i % 4) * 1000, 10 + (i % 6) * 20)
                    };
                    pools = p.decide(&s, pools).pools;
                    assert!(
                        pools.total() <= devices && pools.prefill >= 1 && pools.decode >= 1,
                        "{devices}: {pools:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_queued_prefill_pool_raises_the_disaggregation_threshold() {
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        let calm = p.decide(&seen(500, 20), P2D2);
        assert_eq!(calm.disagg_min_blocks, 8);
        // Doubling while prompts queue and ITL has room, up to eight times the configured value.
        let queued = Interval { prefill_queue: 10, ..seen(4000, 20) };
        let rising: Vec<u32> = (0..5).map(|_| p.decide(&queued, P2D2).disagg_min_blocks).collect();
        assert_eq!(rising, [16, 32, 64, 64, 64]);
        // ITL between 0.6 and 0.8 of its SLO: held; above: halved; queue gone: halved to the base.
        assert_eq!(p.decide(&Interval { prefill_queue: 10, ..seen(4000, 35) }, P2D2).disagg_min_blocks, 64);
        assert_eq!(p.decide(&Interval { prefill_queue: 10, ..seen(4000, 45) }, P2D2).disagg_min_blocks, 32);
        let after: Vec<u32> = (0..3).map(|_| p.decide(&seen(500, 20), P2D2).disagg_min_blocks).collect();
        assert_eq!(after, [16, 8, 8]);
        // No room on the decode workers: nothing measured, sequences waiting there, or half their
        // KV memory in use; the threshold does not rise, and falls when they are pressed.
        for busy in [
            Interval { prefill_queue: 10, itl_p90: None, ..seen(4000, 0) },
            Interval { prefill_queue: 10, decode_waiting: 1, ..seen(4000, 20) },
            Interval { prefill_queue: 10, decode_kv_use: 0.6, ..seen(4000, 20) },
        ] {
            let mut p = Planner::new(config(PlannerMode::Load, 4));
            assert_eq!(p.decide(&busy, P2D2).disagg_min_blocks, 8, "{busy:?}");
        }
        let mut p = Planner::new(config(PlannerMode::Load, 4));
        let queued = Interval { prefill_queue: 10, ..seen(4000, 20) };
        assert_eq!((0..2).map(|_| p.decide(&queued, P2D2).disagg_min_blocks).last(), Some(32));
        let pressed = Interval { prefill_queue: 10, decode_waiting: 3, ..seen(4000, 20) };
        assert_eq!(p.decide(&pressed, P2D2).disagg_min_blocks, 16);
    }
}
