//! Unit tests of `pool`.
use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn check_invariants(pool: &BlockPool) {
    let s = pool.stats();
    assert_eq!(s.free + s.active + s.inactive, s.total, "block leak: {s:?}");
}

/// A listener's view built from events alone.
#[derive(Default)]
struct Replay {
    set: BTreeSet<u64>,
    last: u64,
}

impl Replay {
    fn apply(&mut self, records: Vec<KvEventRecord>) {
        for r in records {
            assert_eq!(r.id, self.last + 1, "gap in event ids");
            self.last = r.id;
            match r.event {
                KvEvent::Stored { hashes, .. } => self.set.extend(hashes),
                KvEvent::Removed { hashes } => hashes.iter().for_each(|h| assert!(self.set.remove(h))),
                KvEvent::Cleared => self.set.clear(),
            }
        }
    }
}

#[test]
fn prefix_is_found_after_release_and_evicted_lru_first() {
    let mut pool = BlockPool::new(4);
    let a = pool.allocate(2).unwrap();
    assert!(pool.register(a[0], None, 10));
    assert!(pool.register(a[1], Some(10), 11));
    pool.release(&a);
    check_invariants(&pool);
    assert_eq!(pool.cached_prefix(&[10, 11, 12]), 2);

    // A second sequence reuses both blocks.
    let hit = pool.acquire_prefix(&[10, 11, 12]);
    assert_eq!(hit, a);
    assert_eq!(pool.stats().prefix_hits, 2);
    pool.release(&hit);

    // Two blocks are free; a third evicts the least recently used inactive block. A sequence is
    // released head last, so its tail goes first: 11, and the prefix [10] stays findable.
    pool.take_events();
    let b = pool.allocate(3).unwrap();
    assert_eq!(pool.cached_prefix(&[10, 11]), 1);
    assert_eq!(pool.stats().evictions, 1);
    let events = pool.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, KvEvent::Removed { hashes: vec![11] });
    pool.release(&b);
    check_invariants(&pool);
}

#[test]
fn exhaustion_is_all_or_nothing() {
    let mut pool = BlockPool::new(3);
    let held = pool.allocate(2).unwrap();
    assert_eq!(pool.allocate(2), Err(PoolExhausted { wanted: 2, available: 1 }));
    assert_eq!(pool.stats().active, 2, "a failed allocation takes nothing");
    pool.release(&held);
    assert_eq!(pool.stats().free, 3);
}

#[test]
fn duplicate_registration_keeps_the_first_block() {
    let mut pool = BlockPool::new(4);
    let a = pool.allocate(1).unwrap();
    let b = pool.allocate(1).unwrap();
    assert!(pool.register(a[0], None, 7));
    assert!(!pool.register(b[0], None, 7));
    pool.release(&b);
    assert_eq!(pool.stats().free, 3, "the private duplicate goes straight back to free");
    assert_eq!(pool.acquire_prefix(&[7]), a);
}

#[test]
fn randomized_workload_keeps_invariants_and_events_reproduce_the_pool() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pool = BlockPool::new(32);
        let mut replay = Replay::default();
        let mut held: Vec<Vec<BlockId>> = Vec::new();
        for step in 0..500 {
            match rng.random_range(0..3) {
                0 => {
                    // A sequence: a prefix from a small universe of chains, then fresh blocks.
                    let chain = rng.random_range(0..4u64);
                    let len = rng.random_range(1..6usize);
                    let hashes: Vec<u64> = (0..len as u64).map(|i| chain * 100 + i).collect();
                    let mut blocks = pool.acquire_prefix(&hashes);
                    let cached = blocks.len();
                    match pool.allocate(len - cached) {
                        Ok(fresh) => {
                            for (i, &id) in fresh.iter().enumerate() {
                                let at = cached + i;
                                let parent = (at > 0).then(|| hashes[at - 1]);
                                pool.register(id, parent, hashes[at]);
                            }
                            blocks.extend(fresh);
                            held.push(blocks);
                        }
                        Err(_) => pool.release(&blocks),
                    }
                }
                _ if !held.is_empty() => {
                    let i = rng.random_range(0..held.len());
                    let blocks = held.swap_remove(i);
                    pool.release(&blocks);
                }
                _ => {}
            }
            check_invariants(&pool);
            replay.apply(pool.take_events());
            if step % 50 == 0 {
                let dump = pool.dump();
                assert_eq!(dump.last_event_id, replay.last);
                assert_eq!(
                    dump.blocks.iter().map(|&(_, h)| h).collect::<BTreeSet<_>>(),
                    replay.set,
                    "seed {seed} step {step}"
                );
            }
        }
        for blocks in held.drain(..) {
            pool.release(&blocks);
        }
        let s = pool.stats();
        assert_eq!((s.active, s.free + s.inactive), (0, 32), "seed {seed}: {s:?}");
    }
}
