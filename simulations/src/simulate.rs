//! `armature simulate`: read a trace, run the cluster under each policy asked for, and write
//! `report.json` (the first policy) with `report-<policy>.json` for the others, plus plots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpu::executor::TimingModel;
use policy::router::cost::CostConfig;

use crate::bounds::{infinite_cache_hit_ratio, shared_pool_hit_ratio};
use crate::cluster::{ClusterConfig, ClusterRun, Policy, SimTiers, run};
use crate::faults::{FaultConfig, FaultPlan, run_with_faults};
use crate::report::{Bounds, FaultReport, Report, RunInfo, cdf, line_chart};
use crate::trace::{TraceError, TraceRequest, read_azure, read_mooncake};

/// Trace formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Mooncake,
    Azure,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mooncake" => Ok(Format::Mooncake),
            "azure" => Ok(Format::Azure),
            other => Err(format!("unknown trace format {other:?} (mooncake, azure)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub trace: PathBuf,
    pub format: Format,
    pub workers: usize,
    pub blocks_per_worker: usize,
    pub block_size: usize,
    /// The first is the report's; the others are run beside it for comparison.
    pub policies: Vec<Policy>,
    pub seed: u64,
    pub speed: f64,
    pub out: PathBuf,
    pub timing: TimingModel,
    /// The cost's weight of a block to prefill against a block of load (`CostConfig`).
    pub prefill_weight: f64,
    /// Host tiers beside the workers (None: device pools only).
    pub tiers: Option<SimTiers>,
    /// A fault plan to run under (None: no faults).
    pub faults: Option<FaultOptions>,
}

/// Disaggregated pools (`--pools`, `--planner`): how they are sized, and the SLOs.
#[derive(Clone, Debug)]
pub struct PoolsOptions {
    pub initial: policy::planner::Pools,
    /// None: the pools stay as `initial`.
    pub planner: Option<policy::planner::PlannerMode>,
    pub slo: policy::planner::Slo,
    pub interval: Duration,
    /// How long the need must stay lower before a pool shrinks.
    pub shrink_after: Duration,
    pub startup: Duration,
    pub block_bytes: u64,
    pub link: vocab::config::TierLink,
    /// The router's conditional disaggregation thresholds (the planner moves the first).
    pub disagg_min_blocks: u32,
    pub prefill_busy_blocks: u64,
    /// A file of `SECONDS BLOCKS` lines: the disaggregation threshold from each time on (static
    /// pools only; the planner sets its own).
    pub disagg_schedule: Option<PathBuf>,
}

/// A disaggregation schedule: one `SECONDS BLOCKS` pair a line (a space or a comma between them,
/// `#` starts a comment), times in order; the threshold before the first time is the configured
/// one.
pub fn parse_disagg_schedule(text: &str) -> Result<Vec<(Duration, u32)>, String> {
    let mut out: Vec<(Duration, u32)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|f| !f.is_empty()).collect();
        let [secs, blocks] = fields[..] else {
            return Err(format!("line {}: want SECONDS BLOCKS, got {line:?}", n + 1));
        };
        let at = secs
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| format!("line {}: {secs:?} is not a time in seconds", n + 1))?;
        let blocks = blocks.parse::<u32>().map_err(|e| format!("line {}: {blocks:?} blocks: {e}", n + 1))?;
        let at = Duration::from_secs_f64(at);
        if out.last().is_some_and(|&(prev, _)| prev > at) {
            return Err(format!("line {}: {secs} s comes before the line above it", n + 1));
        }
        out.push((at, blocks));
    }
    Ok(out)
}

/// Run the trace on disaggregated pools and write `DIR/pools.json` and `DIR/requests.csv`.
pub fn simulate_pools(o: &SimOptions, p: &PoolsOptions) -> Result<crate::pools::PoolsReport, SimError> {
    use policy::planner::{Capacity, PlannerConfig};
    if p.initial.prefill == 0 || p.initial.decode == 0 || p.initial.total() > o.workers {
        return Err(SimError::Invalid(format!(
            "--pools {},{}: each pool needs a worker, and both fit in --workers {}",
            p.initial.prefill, p.initial.decode, o.workers
        )));
    }
    let disagg_schedule = match &p.disagg_schedule {
        None => Vec::new(),
        Some(_) if p.planner.is_some() => {
            return Err(SimError::Invalid(
                "--disagg-schedule replays thresholds on static pools; the planner sets its own".into(),
            ));
        }
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_disagg_schedule(&text))
            .map_err(|e| SimError::Invalid(format!("--disagg-schedule {}: {e}", path.display())))?,
    };
    let trace: Vec<TraceRequest> = match o.format {
        Format::Mooncake => read_mooncake(&o.trace)?,
        Format::Azure => read_azure(&o.trace)?,
    };
    std::fs::create_dir_all(&o.out).map_err(|source| SimError::Write { path: o.out.display().to_string(), source })?;
    let cluster = cluster_config(o, o.policies[0], None);
    // Capacities from the timing model: prefill at its per-token cost; decode at the largest
    // batch whose step stays within the ITL SLO, at the trace's mean context.
    let t = o.timing;
    let context =
        trace.iter().map(|r| f64::from(r.input_tokens + r.output_tokens)).sum::<f64>() / trace.len().max(1) as f64;
    let per_seq = t.decode_per_seq + t.decode_per_kv_token * context;
    // ... and no more sequences than the KV pool holds.
    let fit = (o.blocks_per_worker * o.block_size) as f64 / context.max(1.0);
    let batch = ((p.slo.itl.as_secs_f64() * 1000.0 - t.decode_base) / per_seq.max(1e-9)).min(fit).clamp(1.0, 256.0);
    let capacity = Capacity {
        prefill_tokens_per_s: 1000.0 / t.prefill_b.max(1e-9),
        decode_tokens_per_s: batch * 1000.0 / (t.decode_base + per_seq * batch),
    };
    let sizing = match p.planner {
        None => crate::pools::Sizing::Static(p.initial),
        Some(mode) => crate::pools::Sizing::Planner {
            config: PlannerConfig {
                // A stopped device takes its start-up to return: shrink only after longer than that.
                shrink_after: (p.shrink_after.as_secs_f64() / p.interval.as_secs_f64().max(1e-3)).ceil() as u32,
                disagg_min_blocks: p.disagg_min_blocks,
                ..PlannerConfig::new(p.slo, mode, o.workers, capacity)
            },
            initial: p.initial,
            interval: p.interval,
        },
    };
    let config = crate::pools::PoolsConfig {
        cluster,
        slo: p.slo,
        sizing,
        block_bytes: p.block_bytes,
        link_bytes_per_s: p.link.bytes_per_s.bytes() as f64,
        link_latency: p.link.latency.get(),
        startup: p.startup,
        disagg_min_blocks: p.disagg_min_blocks,
        prefill_busy_blocks: p.prefill_busy_blocks,
        disagg_schedule,
    };
    let report = crate::pools::run_pools(&config, &trace);
    let json = serde_json::to_string_pretty(&report).expect("reports serialise");
    write(&o.out.join("pools.json"), &(json + "\n"))?;
    let secs = |d: Option<Duration>| d.map_or(String::new(), |d| format!("{:.6}", d.as_secs_f64()));
    let mut csv = String::from("arrival_s,ttft_s,mean_itl_s,within_slo\n");
    for r in &report.outcomes {
        csv += &format!(
            "{:.6},{},{},{}\n",
            r.arrival.as_secs_f64(),
            secs(r.ttft),
            secs(r.mean_itl),
            u8::from(r.within_slo)
        );
    }
    write(&o.out.join("requests.csv"), &csv)?;
    Ok(report)
}

/// `--faults PLAN` or `--fault-seed S`, and the cluster settings faults exercise.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// A plan in `faults::FaultPlan::parse`'s syntax; else one is drawn from `seed`.
    pub plan: Option<String>,
    pub seed: Option<u64>,
    /// A drawn plan has about one fault per this much of the trace.
    pub every: Duration,
    pub config: FaultConfig,
}

/// A step time for an 8B-class model on one modern GPU, roughly: prefill about 10k tokens/s with
/// a quadratic attention term, decode about 12 ms a step plus a little per sequence and per
/// cached token.
pub const DEFAULT_TIMING: TimingModel = TimingModel {
    prefill_a: 2e-7,
    prefill_b: 0.1,
    prefill_c: 5.0,
    decode_base: 12.0,
    decode_per_seq: 0.1,
    decode_per_kv_token: 2e-5,
};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// The simulated cluster the options describe, placing with `policy`.
fn cluster_config(o: &SimOptions, policy: Policy, tiers: Option<SimTiers>) -> ClusterConfig {
    ClusterConfig {
        workers: o.workers,
        blocks_per_worker: o.blocks_per_worker,
        block_size: o.block_size,
        policy,
        seed: o.seed,
        speed: o.speed,
        timing: o.timing,
        max_batch: 256,
        max_batch_tokens: 16384,
        cost: CostConfig { prefill_weight: o.prefill_weight, ..CostConfig::default() },
        tiers,
    }
}

fn write(path: &Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Write { path: path.display().to_string(), source })
}

pub fn simulate(o: &SimOptions) -> Result<Vec<Report>, SimError> {
    if o.workers == 0 || o.blocks_per_worker == 0 || o.block_size == 0 || o.policies.is_empty() {
        return Err(SimError::Invalid(
            "--workers, --blocks-per-worker, --block-size and --policy must be positive".into(),
        ));
    }
    if o.speed.is_nan() || o.speed <= 0.0 {
        return Err(SimError::Invalid(format!("--speed must be positive, not {}", o.speed)));
    }
    let trace: Vec<TraceRequest> = match o.format {
        Format::Mooncake => read_mooncake(&o.trace)?,
        Format::Azure => read_azure(&o.trace)?,
    };
    let plan = match &o.faults {
        None => None,
        Some(_) if o.tiers.is_some() => {
            return Err(SimError::Invalid("fault plans do not run with cache tiers yet".into()));
        }
        Some(f) => Some(match (&f.plan, f.seed) {
            (Some(text), None) => {
                FaultPlan::parse(text, o.workers).map_err(|e| SimError::Invalid(format!("--faults: {e}")))?
            }
            (None, Some(seed)) => {
                let horizon = trace.last().map_or(Duration::ZERO, |r| r.arrival.div_f64(o.speed));
                FaultPlan::random(seed, o.workers, horizon, f.every)
            }
            _ => return Err(SimError::Invalid("give one of --faults and --fault-seed".into())),
        }),
    };
    std::fs::create_dir_all(&o.out).map_err(|source| SimError::Write { path: o.out.display().to_string(), source })?;
    let block_tokens = o.block_size as u32;
    let bounds = Bounds {
        infinite_cache_hit_ratio: infinite_cache_hit_ratio(&trace, block_tokens),
        shared_pool_hit_ratio: shared_pool_hit_ratio(&trace, block_tokens, o.workers * o.blocks_per_worker),
    };
    let mut reports = Vec::new();
    let mut runs: Vec<(Policy, ClusterRun)> = Vec::new();
    for (k, &policy) in o.policies.iter().enumerate() {
        let config = cluster_config(o, policy, o.tiers.clone());
        let (result, faults) = match (&plan, &o.faults) {
            (Some(plan), Some(f)) => {
                let r = run_with_faults(&config, &trace, plan, &f.config).map_err(|v| {
                    let replay =
                        f.seed.map_or_else(|| "the same --faults".to_string(), |s| format!("--fault-seed {s}"));
                    SimError::Invalid(format!("{policy}: an invariant broke {v} (replay with {replay})"))
                })?;
                let report = FaultReport { fault_seed: f.seed, plan: plan.faults.clone(), counts: r.counts };
                (r.run, Some(report))
            }
            _ => (run(&config, &trace), None),
        };
        let info = RunInfo {
            policy,
            workers: o.workers,
            blocks_per_worker: o.blocks_per_worker,
            block_size: o.block_size,
            seed: o.seed,
            speed: o.speed,
            tier_blocks: o.tiers.as_ref().map(|t| (t.host_blocks, t.disk_blocks)),
        };
        let mut report = Report::new(&info, &result, bounds.clone());
        report.faults = faults;
        let name = if k == 0 { "report.json".to_string() } else { format!("report-{policy}.json") };
        let json = serde_json::to_string_pretty(&report).expect("reports serialise");
        write(&o.out.join(name), &(json + "\n"))?;
        reports.push(report);
        runs.push((policy, result));
    }
    plots(o, &runs)?;
    Ok(reports)
}

fn plots(o: &SimOptions, runs: &[(Policy, ClusterRun)]) -> Result<(), SimError> {
    let ttft: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(p, r)| {
            let ms = r.requests.iter().filter_map(|q| Some((q.first_token? - q.arrival).as_secs_f64() * 1000.0));
            (p.to_string(), cdf(ms.collect()))
        })
        .collect();
    write(
        &o.out.join("ttft_cdf.svg"),
        &line_chart("Time to first token (CDF)", "TTFT, ms (log)", "fraction of requests", &ttft, true),
    )?;
    let hits: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(p, r)| {
            // Hit ratio of the prompts that arrived in each sampling interval.
            let pts = r
                .samples
                .windows(2)
                .filter(|w| w[1].prompt_tokens > w[0].prompt_tokens)
                .map(|w| {
                    let hit = (w[1].cached_tokens - w[0].cached_tokens) as f64;
                    (w[1].at.as_secs_f64(), hit / (w[1].prompt_tokens - w[0].prompt_tokens) as f64)
                })
                .collect();
            (p.to_string(), pts)
        })
        .collect();
    write(
        &o.out.join("hit_ratio.svg"),
        &line_chart("Prefix hit ratio over time", "virtual time, s", "hit ratio", &hits, false),
    )?;
    let (policy, first) = &runs[0];
    let load: Vec<(String, Vec<(f64, f64)>)> = (0..o.workers)
        .map(|w| {
            let pts = first.samples.iter().map(|s| (s.at.as_secs_f64(), s.load[w] as f64)).collect();
            (format!("worker {w}"), pts)
        })
        .collect();
    let title = format!("Sequences per worker ({policy})");
    write(&o.out.join("load.svg"), &line_chart(&title, "virtual time, s", "running + waiting", &load, false))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disagg_schedule_parses_in_order_and_bad_lines_are_named() {
        let text = "# seconds blocks\n0 8\n\n12.5, 64  # a burst\n30 8\n";
        let s = parse_disagg_schedule(text).unwrap();
        assert_eq!(s, vec![(Duration::ZERO, 8), (Duration::from_millis(12_500), 64), (Duration::from_secs(30), 8)]);
        for (bad, says) in [
            ("0 8\n5\n", "line 2: want SECONDS BLOCKS"),
            ("0 8 9\n", "line 1: want SECONDS BLOCKS"),
            ("-1 8\n", "line 1: \"-1\" is not a time"),
            ("inf 8\n", "line 1: \"inf\" is not a time"),
            ("0 many\n", "line 1: \"many\" blocks"),
            ("10 8\n5 8\n", "line 2: 5 s comes before"),
        ] {
            let e = parse_disagg_schedule(bad).unwrap_err();
            assert!(e.starts_with(says), "{bad:?}: {e}");
        }
    }
}
