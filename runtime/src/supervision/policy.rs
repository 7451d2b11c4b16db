//! When to restart a failed child, and when to give up and escalate. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::config::SupervisionSection;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// More failures than this within `window` escalate.
    pub max_restarts: u32,
    pub window: Duration,
}

impl From<&SupervisionSection> for RestartPolicy {
    fn from(s: &SupervisionSection) -> Self {
        Self {
            backoff_initial: s.backoff_initial.get(),
            backoff_max: s.backoff_max.get(),
            max_restarts: s.max_restarts,
            window: s.restart_window.get(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start the child again after this delay.
    Restart { after: Duration, failures_in_window: u32 },
    /// The child keeps failing: stop restarting and fail the supervisor.
    Escalate { failures_in_window: u32 },
}

/// Failure history per child name.
#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    failures: HashMap<String, VecDeque<Duration>>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self { policy, failures: HashMap::new() }
    }

    /// Record that `child` failed at `now` (time since any fixed origin) and decide what to do.
    pub fn on_failure(&mut self, child: &str, now: Duration) -> RestartDecision {
        let history = self.failures.entry(child.to_string()).or_default();
        while history.front().is_some_and(|&t| now.saturating_sub(t) > self.policy.window) {
            history.pop_front();
        }
        history.push_back(now);
        let n = history.len() as u32;
        if n > self.policy.max_restarts {
            return RestartDecision::Escalate { failures_in_window: n };
        }
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        let after = self.policy.backoff_initial.saturating_mul(factor).min(self.policy.backoff_max);
        RestartDecision::Restart { after, failures_in_window: n }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            max_restarts: 4,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_then_caps_then_escalates() {
        let mut t = RestartTracker::new(policy());
        let s = Duration::from_secs;
        let got: Vec<_> = (0..5).map(|i| t.on_failure("worker", s(i))).collect();
        let ms = Duration::from_millis;
        assert_eq!(
            got,
            vec![
                RestartDecision::Restart { after: ms(100), failures_in_window: 1 },
                RestartDecision::Restart { after: ms(200), failures_in_window: 2 },
                RestartDecision::Restart { after: ms(400), failures_in_window: 3 },
                RestartDecision::Restart { after: ms(500), failures_in_window: 4 },
                RestartDecision::Escalate { failures_in_window: 5 },
            ]
        );
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy());
        for i in 0..4 {
            t.on_failure("w", Duration::from_secs(i));
        }
        // 30 s later the old failures have aged out: back to the first delay.
        assert_eq!(
            t.on_failure("w", Duration::from_secs(40)),
            RestartDecision::Restart { after: Duration::from_millis(100), failures_in_window: 1 }
        );
    }

    #[test]
    fn children_are_tracked_apart() {
        let mut t = RestartTracker::new(policy());
        for i in 0..4 {
            t.on_failure("a", Duration::from_secs(i));
        }
        assert!(matches!(
            t.on_failure("b", Duration::from_secs(5)),
            RestartDecision::Restart { failures_in_window: 1, .. }
        ));
    }
}
