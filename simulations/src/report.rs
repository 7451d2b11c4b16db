//! The report of a simulation: `report.json` (counts, hit ratios, latency percentiles,
//! throughput, the routing-independent bounds) and SVG plots a person can read at a glance.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{ClusterRun, Policy};

/// Mean and percentiles of a latency, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `ms` (sorted here).
    pub fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self { mean: 0.0, p50: 0.0, p90: 0.0, p99: 0.0 };
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Self { mean: ms.iter().sum::<f64>() / ms.len() as f64, p50: at(0.5), p90: at(0.9), p99: at(0.99) }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bounds {
    pub infinite_cache_hit_ratio: f64,
    pub shared_pool_hit_ratio: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub policy: String,
    pub workers: usize,
    pub blocks_per_worker: usize,
    pub block_size: usize,
    pub seed: u64,
    pub speed: f64,
    pub requests: usize,
    pub completed: usize,
    pub rejected: usize,
    pub prefix_hit_ratio: f64,
    pub ttft_ms: Latency,
    pub itl_ms: Latency,
    pub e2e_ms: Latency,
    pub throughput_tok_s: f64,
    pub makespan_s: f64,
    pub bounds: Bounds,
    /// With host tiers: what they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiers: Option<TierReport>,
    /// Under a fault plan: the plan and what it did (`--faults`, `--fault-seed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultReport>,
}

/// A run under faults: the plan, and what happened (every invariant held, or there is no report).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultReport {
    /// The seed the plan was drawn from, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_seed: Option<u64>,
    pub plan: Vec<crate::faults::PlannedFault>,
    #[serde(flatten)]
    pub counts: crate::faults::FaultCounts,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierReport {
    pub host_blocks_per_worker: usize,
    pub disk_blocks_per_worker: usize,
    /// Prompt tokens onboarded from a tier, over all prompt tokens (they count in
    /// `prefix_hit_ratio` too: onboarded blocks are served from the prefix cache).
    pub onboarded_ratio: f64,
    pub local_onboards: u64,
    pub remote_onboards: u64,
    /// Of the local ones, from the disk tier.
    pub disk_onboards: u64,
    pub onboarded_blocks: u64,
    /// Blocks host tiers evicted into disk tiers.
    pub demoted_blocks: u64,
    pub declined: u64,
    pub offloaded_blocks: u64,
    pub tier_evictions: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub struct RunInfo {
    pub policy: Policy,
    pub workers: usize,
    pub blocks_per_worker: usize,
    pub block_size: usize,
    pub seed: u64,
    pub speed: f64,
    /// Host- and disk-tier budgets per worker in blocks, when there are tiers.
    pub tier_blocks: Option<(usize, usize)>,
}

impl Report {
    pub fn new(info: &RunInfo, run: &ClusterRun, bounds: Bounds) -> Self {
        let done: Vec<_> = run.requests.iter().filter(|r| r.finished.is_some()).collect();
        let ttft = done.iter().filter_map(|r| Some(ms(r.first_token? - r.arrival))).collect();
        let itl = done
            .iter()
            .filter(|r| r.generated > 1)
            .filter_map(|r| Some(ms(r.finished? - r.first_token?) / f64::from(r.generated - 1)))
            .collect();
        let e2e = done.iter().filter_map(|r| Some(ms(r.finished? - r.arrival))).collect();
        let generated: u64 = done.iter().map(|r| u64::from(r.generated)).sum();
        let secs = run.makespan.as_secs_f64();
        Self {
            policy: info.policy.to_string(),
            workers: info.workers,
            blocks_per_worker: info.blocks_per_worker,
            block_size: info.block_size,
            seed: info.seed,
            speed: info.speed,
            requests: run.requests.len(),
            completed: done.len(),
            rejected: run.requests.iter().filter(|r| r.rejected).count(),
            prefix_hit_ratio: if run.prompt_tokens == 0 {
                0.0
            } else {
                run.cached_tokens as f64 / run.prompt_tokens as f64
            },
            ttft_ms: Latency::of(ttft),
            itl_ms: Latency::of(itl),
            e2e_ms: Latency::of(e2e),
            throughput_tok_s: if secs > 0.0 { generated as f64 / secs } else { 0.0 },
            makespan_s: secs,
            bounds,
            faults: None,
            tiers: info.tier_blocks.map(|(host, disk)| {
                let t = run.tiers;
                TierReport {
                    host_blocks_per_worker: host,
                    disk_blocks_per_worker: disk,
                    onboarded_ratio: if run.prompt_tokens == 0 {
                        0.0
                    } else {
                        (t.onboarded_blocks * info.block_size as u64) as f64 / run.prompt_tokens as f64
                    },
                    local_onboards: t.local_onboards,
                    remote_onboards: t.remote_onboards,
                    disk_onboards: t.disk_onboards,
                    onboarded_blocks: t.onboarded_blocks,
                    demoted_blocks: t.demoted_blocks,
                    declined: t.declined,
                    offloaded_blocks: t.offloaded_blocks,
                    tier_evictions: t.tier_evictions,
                }
            }),
        }
    }
}

const COLORS: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// A line chart: one polyline per series of (x, y) points, axes labelled, legend on top.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 50.0, 20.0);
    let tx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(tx(x));
        x1 = x1.max(tx(x));
        y1 = y1.max(y);
    }
    if x0 >= x1 {
        (x0, x1) = (x0.min(0.0), x0.max(0.0) + 1.0);
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 };
    let px = |x: f64| left + (tx(x) - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - y / y1 * (h - bottom - top);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" font-size="15" text-anchor="middle">{title}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="15" y="{}" transform="rotate(-90 15 {})" text-anchor="middle">{y_label}</text>
"#,
        w / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for k in 0..=4 {
        let (xv, yv) = (x0 + (x1 - x0) * k as f64 / 4.0, y1 * k as f64 / 4.0);
        let xl = if log_x { 10f64.powf(xv) } else { xv };
        let xp = left + (xv - x0) / (x1 - x0) * (w - left - right);
        let _ = writeln!(
            s,
            r#"<text x="{xp:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            h - bottom + 16.0,
            fmt_num(xl)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            py(yv) + 4.0,
            fmt_num(yv)
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ =
            writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, path.join(" "));
        let spacing = ((w - left - right) / series.len() as f64).min(150.0);
        let lx = left + 10.0 + spacing * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="32" width="12" height="4" fill="{color}"/><text x="{}" y="38">{name}</text>"#,
            lx + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == 0.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// The empirical CDF of `values` as chart points.
pub fn cdf(mut values: Vec<f64>) -> Vec<(f64, f64)> {
    values.sort_by(f64::total_cmp);
    let n = values.len().max(1) as f64;
    let step = (values.len() / 400).max(1);
    values.iter().enumerate().step_by(step).map(|(i, &v)| (v, (i + 1) as f64 / n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_hand() {
        let l = Latency::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((l.mean, l.p50, l.p90, l.p99), (50.5, 50.0, 90.0, 99.0));
        assert_eq!(Latency::of(vec![]).p99, 0.0);
        let svg = line_chart("t", "x", "y", &[("a".into(), vec![(1.0, 0.5), (10.0, 1.0)])], true);
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(cdf(vec![3.0, 1.0, 2.0]), vec![(1.0, 1.0 / 3.0), (2.0, 2.0 / 3.0), (3.0, 1.0)]);
    }
}
