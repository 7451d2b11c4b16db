//! One event queue for every simulation loop, in the style of quinn-proto's test `Pair`: events in
//! virtual time, popped earliest first (ties by the event's own order, then by when they were
//! pushed, so a run replays exactly), and a `Simulation` that `step`s one event and `drive`s until
//! nothing is left.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Events waiting for their time.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(Duration, E, u64)>>,
    pushed: u64,
}

impl<E: Ord> Default for EventQueue<E> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), pushed: 0 }
    }
}

impl<E: Ord> EventQueue<E> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `event` happens at `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        self.pushed += 1;
        self.heap.push(Reverse((at, event, self.pushed)));
    }

    /// The earliest event, with its time.
    pub fn pop(&mut self) -> Option<(Duration, E)> {
        self.heap.pop().map(|Reverse((at, event, _))| (at, event))
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// A simulation driven by an `EventQueue`: each event is handled at its time by `step`, which may
/// push more; `drive` runs until the queue is empty (or a step fails).
pub trait Simulation {
    type Event: Ord;
    type Error;

    fn queue(&mut self) -> &mut EventQueue<Self::Event>;

    /// Handle one event at its time `at` (time only goes forward).
    fn step(&mut self, at: Duration, event: Self::Event) -> Result<(), Self::Error>;

    /// Step until nothing is left.
    fn drive(&mut self) -> Result<(), Self::Error> {
        while let Some((at, event)) = self.queue().pop() {
            self.step(at, event)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts down: each event at `t` with `n > 0` pushes `n - 1` one second later.
    struct Countdown {
        queue: EventQueue<u32>,
        seen: Vec<(u64, u32)>,
    }

    impl Simulation for Countdown {
        type Event = u32;
        type Error = String;

        fn queue(&mut self) -> &mut EventQueue<u32> {
            &mut self.queue
        }

        fn step(&mut self, at: Duration, n: u32) -> Result<(), String> {
            self.seen.push((at.as_secs(), n));
            if n == 99 {
                return Err(format!("stopped at {}s", at.as_secs()));
            }
            if n > 0 {
                self.queue.push(at + Duration::from_secs(1), n - 1);
            }
            Ok(())
        }
    }

    #[test]
    fn events_come_in_time_order_ties_by_event_then_push_order() {
        let mut q = EventQueue::new();
        q.push(Duration::from_secs(2), 'b');
        q.push(Duration::from_secs(1), 'z');
        q.push(Duration::from_secs(2), 'a');
        q.push(Duration::from_secs(2), 'a');
        assert_eq!(q.len(), 4);
        let order: Vec<(u64, char)> = std::iter::from_fn(|| q.pop()).map(|(t, e)| (t.as_secs(), e)).collect();
        assert_eq!(order, vec![(1, 'z'), (2, 'a'), (2, 'a'), (2, 'b')]);
        assert!(q.is_empty());
    }

    #[test]
    fn drive_steps_until_nothing_is_left_or_a_step_fails() {
        let mut sim = Countdown { queue: EventQueue::new(), seen: Vec::new() };
        sim.queue.push(Duration::from_secs(10), 2);
        sim.queue.push(Duration::from_secs(0), 1);
        sim.drive().unwrap();
        assert_eq!(sim.seen, vec![(0, 1), (1, 0), (10, 2), (11, 1), (12, 0)]);
        sim.queue.push(Duration::from_secs(5), 99);
        assert_eq!(sim.drive(), Err("stopped at 5s".into()));
    }
}
