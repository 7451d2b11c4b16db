//! Per-key rate limits: a token bucket over requests per second and one over tokens per second.
//! A request is admitted while both buckets hold something; it takes one request at once and its
//! prompt tokens, and its completion tokens when it finishes, so one long request may leave the
//! token bucket in debt (the next request then waits until it has refilled above zero).
//!
//! Calling order: `admit(now)` before placing a request, then `charge_tokens(n, now)` with its
//! completion tokens when it finishes. `now` is any monotonic clock the caller keeps.

use std::time::Duration;

/// A bucket refilling at `rate` per second up to `burst`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    level: f64,
    at: Duration,
}

impl Bucket {
    /// A full bucket at `now`. A rate that is not above zero never refills.
    pub fn new(rate: f64, burst: f64, now: Duration) -> Self {
        let burst = burst.max(1.0);
        Self { rate: rate.max(0.0), burst, level: burst, at: now }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// How long until the bucket holds at least `need` (zero when it does now).
    fn wait_for(&mut self, need: f64, now: Duration) -> Duration {
        self.refill(now);
        if self.level >= need {
            return Duration::ZERO;
        }
        if self.rate <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64((need - self.level) / self.rate)
    }

    fn take(&mut self, n: f64, now: Duration) {
        self.refill(now);
        self.level -= n;
    }

    /// What the bucket holds at `now` (negative when in debt).
    pub fn level(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.level
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
}

/// A refused request: the limit, and how long until it would be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: Limit,
    pub retry_after: Duration,
}

/// One key's limits (`None` where the key has no such limit).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl KeyLimits {
    /// Limits of `requests_per_second` (bursts of up to `max(1, rate)`) and `tokens_per_second`
    /// (bursts of up to one second's worth).
    pub fn new(requests_per_second: Option<f64>, tokens_per_second: Option<f64>, now: Duration) -> Self {
        Self {
            requests: requests_per_second.map(|r| Bucket::new(r, r, now)),
            tokens: tokens_per_second.map(|t| Bucket::new(t, t, now)),
        }
    }

    /// Admit a request with `prompt_tokens`, or say which limit refuses it and for how long.
    pub fn admit(&mut self, prompt_tokens: u32, now: Duration) -> Result<(), Limited> {
        let requests_wait = self.requests.as_mut().map_or(Duration::ZERO, |b| b.wait_for(1.0, now));
        // Any positive level admits: a request's size is not known until it finishes.
        let tokens_wait = self.tokens.as_mut().map_or(Duration::ZERO, |b| b.wait_for(f64::MIN_POSITIVE, now));
        if requests_wait > Duration::ZERO {
            return Err(Limited { limit: Limit::Requests, retry_after: requests_wait });
        }
        if tokens_wait > Duration::ZERO {
            return Err(Limited { limit: Limit::Tokens, retry_after: tokens_wait });
        }
        if let Some(b) = &mut self.requests {
            b.take(1.0, now);
        }
        self.charge_tokens(prompt_tokens, now);
        Ok(())
    }

    /// Count `n` tokens against the token limit (the completion, when a request finishes).
    pub fn charge_tokens(&mut self, n: u32, now: Duration) {
        if let Some(b) = &mut self.tokens {
            b.take(f64::from(n), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn requests_are_admitted_at_the_rate_after_a_burst() {
        let t0 = Duration::from_secs(100);
        let mut k = KeyLimits::new(Some(2.0), None, t0);
        assert_eq!(k.admit(10, t0), Ok(()));
        assert_eq!(k.admit(10, t0), Ok(()));
        let refused = k.admit(10, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Requests);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Half a second later one more is due, not two.
        let t1 = t0 + S / 2;
        assert_eq!(k.admit(10, t1), Ok(()));
        assert!(k.admit(10, t1).is_err());
        // A long pause refills to the burst only.
        let t2 = t1 + 60 * S;
        assert_eq!(k.admit(1, t2), Ok(()));
        assert_eq!(k.admit(1, t2), Ok(()));
        assert!(k.admit(1, t2).is_err());
    }

    #[test]
    fn tokens_may_go_into_debt_and_the_next_request_waits_for_it() {
        let t0 = Duration::ZERO;
        let mut k = KeyLimits::new(None, Some(100.0), t0);
        assert_eq!(k.admit(80, t0), Ok(()));
        // 20 left: admitted, and its 320 completion tokens leave the bucket at -300.
        assert_eq!(k.admit(0, t0), Ok(()));
        k.charge_tokens(320, t0);
        let refused = k.admit(1, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::Tokens);
        assert!((refused.retry_after.as_secs_f64() - 3.0).abs() < 1e-6, "{:?}", refused.retry_after);
        assert!(k.admit(1, t0 + 2 * S).is_err());
        assert_eq!(k.admit(1, t0 + 3 * S + S / 100), Ok(()));
    }

    #[test]
    fn no_limits_admit_everything_and_a_zero_rate_never_refills() {
        let mut open = KeyLimits::default();
        for i in 0..1000 {
            assert_eq!(open.admit(1_000_000, Duration::from_millis(i)), Ok(()));
        }
        let mut once = KeyLimits::new(Some(0.0), None, Duration::ZERO);
        assert_eq!(once.admit(1, Duration::ZERO), Ok(()));
        assert_eq!(once.admit(1, Duration::from_secs(3600)).unwrap_err().retry_after, Duration::MAX);
    }
}
