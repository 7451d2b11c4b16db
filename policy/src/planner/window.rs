//! What the gateway saw since the planner last asked: arrivals, prompt and generated tokens,
//! each request's TTFT and ITL. The gateway records; the planner takes an `Interval` and resets.

use std::sync::Mutex;
use std::time::Duration;

use super::sizing::Interval;

#[derive(Debug, Default)]
pub struct LatencyWindow {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    arrivals: u64,
    input_tokens: u64,
    output_tokens: u64,
    ttft: Vec<Duration>,
    itl: Vec<Duration>,
}

fn p90(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[(v.len() * 9 / 10).min(v.len() - 1)])
}

impl LatencyWindow {
    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn arrived(&self, prompt_tokens: usize) {
        self.with(|s| {
            s.arrivals += 1;
            s.input_tokens += prompt_tokens as u64;
        });
    }

    pub fn first_token(&self, ttft: Duration) {
        self.with(|s| s.ttft.push(ttft));
    }

    pub fn generated(&self, tokens: u32) {
        self.with(|s| s.output_tokens += u64::from(tokens));
    }

    /// A request finished `tokens` tokens, the first `ttft` and the last `total` after it arrived.
    pub fn finished(&self, ttft: Duration, total: Duration, tokens: u32) {
        if tokens > 1 {
            self.with(|s| s.itl.push(total.saturating_sub(ttft) / (tokens - 1)));
        }
    }

    /// What was seen over the last `length`, and start again.
    pub fn take(&self, length: Duration) -> Interval {
        let seen = self.with(std::mem::take);
        Interval {
            length,
            arrivals: seen.arrivals,
            input_tokens: seen.input_tokens,
            output_tokens: seen.output_tokens,
            ttft_p90: p90(seen.ttft),
            itl_p90: p90(seen.itl),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_summarises_and_resets() {
        let w = LatencyWindow::default();
        for i in 1..=10u64 {
            w.arrived(100);
            w.first_token(Duration::from_millis(i * 100));
            w.generated(11);
            w.finished(Duration::from_millis(i * 100), Duration::from_millis(i * 100 + 500), 11);
        }
        let seen = w.take(Duration::from_secs(10));
        assert_eq!((seen.arrivals, seen.input_tokens, seen.output_tokens), (10, 1000, 110));
        assert_eq!(seen.ttft_p90, Some(Duration::from_millis(1000)));
        assert_eq!(seen.itl_p90, Some(Duration::from_millis(50)));
        let empty = w.take(Duration::from_secs(10));
        assert_eq!((empty.arrivals, empty.ttft_p90), (0, None));
    }
}
