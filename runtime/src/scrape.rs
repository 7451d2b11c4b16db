//! Reading a Prometheus text scrape (this process's own `/metrics`, or a gateway's): samples by
//! name, their sums, a family's values by one label, and quantiles of histograms the way
//! Prometheus's `histogram_quantile` computes them. The text format's samples are
//! `name{labels} value`; sums, label values and buckets are all `armature status` and the
//! dashboard need, so a few lines do instead of a parser crate.

use std::collections::BTreeMap;

/// Samples of a Prometheus text scrape, by name: (labels, value).
#[derive(Default)]
pub struct Scrape(BTreeMap<String, Vec<(String, f64)>>);

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut out: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
            out.entry(name.to_string()).or_default().push((labels.to_string(), value));
        }
        Self(out)
    }

    pub fn sum(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |s| s.iter().map(|(_, v)| v).sum())
    }

    /// A histogram's cumulative bucket counts summed over its series: (upper bound, count).
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (labels, v) in self.0.get(&format!("{name}_bucket")).into_iter().flatten() {
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\"")).map(|l| l.trim_end_matches('"'));
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += v;
        }
        let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// The `q` quantile of cumulative `buckets` (minus `before`'s, for an interval), interpolated
/// within its bucket as Prometheus's `histogram_quantile` does; None without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let counts: Vec<(f64, f64)> =
        buckets.iter().map(|&(le, c)| (le, c - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1))).collect();
    let total = counts.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, c) in &counts {
        if c >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let width = c - below;
            return Some(if width > 0.0 { lower + (le - lower) * (rank - below) / width } else { le });
        }
        (lower, below) = (le, c);
    }
    Some(lower)
}

impl Scrape {
    /// This process's metrics, as `/metrics` renders them.
    pub fn own() -> Self {
        Self::parse(&crate::telemetry::prometheus().render())
    }

    /// `name`'s values by the value of `label`, summed over its other labels.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let key = format!("{label}=\"");
        for (labels, v) in self.0.get(name).into_iter().flatten() {
            let value = labels.split(',').find_map(|l| l.strip_prefix(&key)).map(|l| l.trim_end_matches('"'));
            *out.entry(value.unwrap_or("").to_string()).or_insert(0.0) += v;
        }
        out
    }
}

/// The gateway's traffic between two scrapes (or since the process started, without `before`):
/// requests finished, tokens generated, the prefix cache's hit ratio (tokens found in a pool over
/// tokens needed, found plus computed), and TTFT, inter-token and request-duration quantiles.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Traffic {
    pub requests: f64,
    pub tokens: f64,
    pub hit_ratio: Option<f64>,
    pub ttft_p50: Option<f64>,
    pub ttft_p90: Option<f64>,
    pub itl_p50: Option<f64>,
    pub itl_p90: Option<f64>,
    pub duration_p50: Option<f64>,
    pub duration_p90: Option<f64>,
}

impl Traffic {
    pub fn between(now: &Scrape, before: Option<&Scrape>) -> Self {
        let delta = |name: &str| now.sum(name) - before.map_or(0.0, |b| b.sum(name));
        let q = |name: &str, p: f64| {
            let earlier = before.map(|b| b.buckets(name)).unwrap_or_default();
            quantile(p, &now.buckets(name), &earlier)
        };
        let (cached, computed) = (delta("armature_prefix_cache_tokens_total"), delta("armature_tokens_computed_total"));
        let (ttft, itl, duration) = (
            "armature_time_to_first_token_seconds",
            "armature_inter_token_seconds",
            "armature_request_duration_seconds",
        );
        Self {
            requests: delta("armature_request_duration_seconds_count"),
            tokens: delta("armature_generated_tokens_total"),
            hit_ratio: (cached + computed > 0.0).then(|| cached / (cached + computed)),
            ttft_p50: q(ttft, 0.5),
            ttft_p90: q(ttft, 0.9),
            itl_p50: q(itl, 0.5),
            itl_p90: q(itl, 0.9),
            duration_p50: q(duration, 0.5),
            duration_p90: q(duration, 0.9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket_like_prometheus() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.1\"} 2\nx_bucket{le=\"0.2\"} 6\nx_bucket{le=\"+Inf\"} 8\nx_sum 1\nx_count 8\n";
        let s = Scrape::parse(text);
        let b = s.buckets("x");
        assert_eq!(b.len(), 3);
        // Rank 4 of 8 lies halfway through the second bucket's 4 observations.
        assert!((quantile(0.5, &b, &[]).unwrap() - 0.15).abs() < 1e-9);
        // Past the last finite bound: that bound.
        assert_eq!(quantile(0.99, &b, &[]), Some(0.2));
        // Over an interval: nothing new, no quantile.
        assert_eq!(quantile(0.5, &b, &b), None);
        assert_eq!(s.sum("x_count"), 8.0);
    }

    #[test]
    fn values_are_summed_by_one_label() {
        let s = Scrape::parse(
            "x_total{child=\"a\",node=\"n0\"} 2\nx_total{child=\"a\",node=\"n1\"} 1\nx_total{child=\"b\"} 4\n",
        );
        let by = s.by_label("x_total", "child");
        assert_eq!((by["a"], by["b"]), (3.0, 4.0));
        assert_eq!(s.sum("x_total"), 7.0);
    }
}
