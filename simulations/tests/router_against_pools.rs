//! The router's index and placer against real block pools: the events of `gpu::pool::BlockPool`
//! under random traffic, some lost, reach the index, which asks for dumps when it notices and ends
//! holding exactly each pool's blocks. (Here, not in `policy`, which must not link the engine.)

use std::collections::HashSet;
use std::time::Duration;

use gpu::pool::BlockPool;
use policy::router::index::{Applied, KvIndex, Tier};
use policy::router::placer::{Placer, PlacerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vocab::kv::KvBatch;

const T0: Duration = Duration::ZERO;

/// Real block pools under a random workload; their events reach the index with some lost,
/// the index asks for dumps when it notices, and in the end it holds exactly the union of the
/// pools' registered blocks, worker by worker.
#[test]
fn index_equals_the_pools_after_lost_events_and_resyncs() {
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pools: Vec<BlockPool> = (0..3).map(|_| BlockPool::new(6)).collect();
        let mut ix = KvIndex::new();
        let mut resyncs = 0;
        for _ in 0..300 {
            let w = rng.random_range(0..pools.len());
            let pool = &mut pools[w];
            // A sequence from one of four prefix families, 1 to 4 blocks long.
            let family = rng.random_range(0..4u64);
            let hashes: Vec<u64> = (0..rng.random_range(1..=4u64)).map(|i| family * 100 + i).collect();
            let mut ids = pool.acquire_prefix(&hashes);
            let cached = ids.len();
            if let Ok(fresh) = pool.allocate(hashes.len() - cached) {
                for (i, &id) in fresh.iter().enumerate() {
                    let k = cached + i;
                    pool.register(id, k.checked_sub(1).map(|p| hashes[p]), hashes[k]);
                }
                ids.extend(fresh);
            }
            pool.release(&ids);
            for record in pool.take_events() {
                if rng.random_bool(0.1) {
                    continue; // lost
                }
                if let Applied::Gap { .. } = ix.apply(&w, Tier::Device, &record, T0) {
                    // The dump may come later than the gap: after more pool activity.
                    resyncs += 1;
                }
            }
            for (w, tier) in ix.awaiting_dump() {
                if rng.random_bool(0.5) {
                    ix.resync(&w, tier, &pools[w].dump(), T0);
                }
            }
        }
        // Heartbeats reveal events lost at the very end; then the outstanding dumps arrive.
        for (w, pool) in pools.iter().enumerate() {
            ix.heartbeat(&w, Tier::Device, pool.dump().last_event_id, T0);
        }
        for (w, tier) in ix.awaiting_dump() {
            ix.resync(&w, tier, &pools[w].dump(), T0);
        }
        assert!(resyncs > 0, "seed {seed}: the workload lost events");
        let mut union = HashSet::new();
        for (w, pool) in pools.iter().enumerate() {
            let want: HashSet<u64> = pool.dump().blocks.iter().map(|&(_, h)| h).collect();
            assert_eq!(ix.held(&w, Tier::Device), want, "seed {seed}, worker {w}");
            union.extend(want);
        }
        assert_eq!(ix.len(), union.len(), "seed {seed}");
    }
}

/// Two routers fed the same publications, each worker's in order but interleaved differently
/// across workers, some delivered twice and some lost (then recovered by a dump), end with the
/// same index, equal to the union of the workers' pools.
#[test]
fn routers_fed_the_same_events_agree() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let workers = ["w0", "w1", "w2"];
        // Each worker's publications from a real pool under random traffic.
        let mut pools: Vec<BlockPool> = workers.iter().map(|_| BlockPool::new(24)).collect();
        let mut streams: Vec<Vec<KvBatch>> = vec![Vec::new(); workers.len()];
        for _ in 0..200 {
            let w = rng.random_range(0..workers.len());
            let pool = &mut pools[w];
            let n = rng.random_range(1..6).min(pool.available());
            if n > 0
                && let Ok(ids) = pool.allocate(n)
            {
                let mut parent = None;
                let root = rng.random_range(0..8u64) * 100;
                for (k, &id) in ids.iter().enumerate() {
                    let h = root + k as u64 + 1;
                    pool.register(id, parent, h);
                    parent = Some(h);
                }
                pool.release(&ids);
            }
            let events = pool.take_events();
            if !events.is_empty() {
                streams[w].push(KvBatch::Events(events));
            }
        }
        let mut fingerprints = Vec::new();
        for router in 0..2u64 {
            let mut rng = StdRng::seed_from_u64(seed * 100 + router);
            let mut p: Placer<&str> = Placer::new(PlacerConfig::default(), router);
            let mut cursors = vec![0usize; workers.len()];
            while cursors.iter().zip(&streams).any(|(c, s)| *c < s.len()) {
                let w = rng.random_range(0..workers.len());
                let Some(batch) = streams[w].get(cursors[w]) else { continue };
                cursors[w] += 1;
                match rng.random_range(0..10) {
                    0 => continue, // lost
                    1 => {
                        p.receive(&workers[w], 1, batch, T0); // delivered twice
                    }
                    _ => {}
                }
                p.receive(&workers[w], 1, batch, T0);
            }
            // Heartbeats reveal trailing losses; whoever needs a dump gets one.
            for (w, pool) in workers.iter().zip(&pools) {
                let last = pool.dump().last_event_id;
                if p.receive(w, 1, &KvBatch::Heartbeat { last_event_id: last }, T0).needs_dump {
                    assert!(p.resync(w, 1, &pool.dump(), T0));
                }
                let mut want: Vec<u64> = pool.dump().blocks.iter().map(|b| b.1).collect();
                let mut got: Vec<u64> = p.index().held(w, Tier::Device).into_iter().collect();
                want.sort_unstable();
                got.sort_unstable();
                assert!(!want.is_empty());
                assert_eq!(got, want, "seed {seed}, router {router}, {w}");
            }
            fingerprints.push(p.index().fingerprint(|w| u64::from(w.as_bytes()[1])));
        }
        assert_eq!(fingerprints[0], fingerprints[1], "seed {seed}");
    }
}
