//! Fault plans against the real cores: each kind alone, a seeded sweep, and a broken gateway
//! that the invariants catch.

use std::time::Duration;

use policy::router::cost::CostConfig;

use super::*;
use crate::cluster::{ClusterConfig, Policy};
use crate::trace::{Synthetic, TraceRequest};

fn config(seed: u64) -> ClusterConfig {
    ClusterConfig {
        workers: 4,
        blocks_per_worker: 96,
        block_size: 16,
        policy: Policy::Kv,
        seed,
        speed: 1.0,
        timing: crate::simulate::DEFAULT_TIMING,
        max_batch: 32,
        max_batch_tokens: 512,
        cost: CostConfig { prefill_weight: 8.0, ..CostConfig::default() },
        tiers: None,
    }
}

/// 12 s of traffic: 240 requests in sessions sharing prefixes, 40 tokens each.
fn trace(seed: u64) -> Vec<TraceRequest> {
    Synthetic {
        requests: 240,
        rate: 20.0,
        groups: 8,
        prefix_blocks: 6,
        own_blocks: 1,
        turns: 3,
        output_tokens: 40,
        block_tokens: 16,
    }
    .generate(seed)
}

fn run(plan: &str, faults: &FaultConfig) -> Result<FaultRun, Violation> {
    run_with_faults(&config(1), &trace(1), &FaultPlan::parse(plan, 4).unwrap(), faults)
}

fn completed(r: &FaultRun) -> usize {
    r.run.requests.iter().filter(|q| q.finished.is_some()).count()
}

#[test]
fn without_faults_every_request_completes_and_the_index_converges() {
    let r = run("", &FaultConfig::default()).unwrap();
    assert_eq!(completed(&r), 240);
    assert!(r.run.requests.iter().all(|q| q.generated == 40 && q.first_token.is_some()));
    assert_eq!(r.counts, FaultCounts::default());
    assert!(r.run.cached_tokens > 0, "sessions share prefixes");
}

#[test]
fn each_kind_of_fault_keeps_the_invariants() {
    let f = FaultConfig::default();
    // An engine crash: its requests move at once.
    let crash = run("crash:w1@3s, crash:w2@6s", &f).unwrap();
    assert!(crash.counts.migrated > 0 && crash.counts.faults == 2);
    assert_eq!(completed(&crash) as u64 + crash.counts.failed, 240);
    assert_eq!(crash.counts.failed, 0);
    // A node down for longer than the lease: moved when the lease runs out, back empty.
    let node = run("node:w0@2s+8s", &f).unwrap();
    assert!(node.counts.migrated > 0);
    assert_eq!(completed(&node), 240);
    // A partition longer than the lease: moved, then the healed node's stale copies cancelled;
    // one shorter than the lease: nothing moves, held outputs arrive late.
    let long = run("partition:w3@2s+6s", &f).unwrap();
    assert!(long.counts.migrated > 0);
    assert_eq!(completed(&long), 240);
    let short = run("partition:w3@2s+1s", &f).unwrap();
    assert_eq!(short.counts.migrated, 0);
    assert_eq!(completed(&short), 240);
    // Lost KV events: gaps found, dumps taken, and the index still converges.
    let lossy = run("lose-events:w0@0s+10s*0.5, lose-events:w1@0s+10s*0.5", &f).unwrap();
    assert!(lossy.counts.kv_batches_lost > 0 && lossy.counts.dumps > 0, "{:?}", lossy.counts);
    assert_eq!(lossy.counts.migrated, 0);
    // A slow worker and a slow link only slow things down.
    let slow = run("slow-worker:w0@0s+10s*4, slow-link:w1@0s+10s*300ms", &f).unwrap();
    let calm = run("", &f).unwrap();
    assert_eq!(completed(&slow), 240);
    assert!(slow.run.makespan >= calm.run.makespan);
    // A crash while outputs are still on a slow link: those outputs arrive stale and are dropped.
    let stale = run("slow-link:w1@0s+10s*500ms, crash:w1@3s", &f).unwrap();
    assert!(stale.counts.stale_discarded > 0, "{:?}", stale.counts);
    assert_eq!(completed(&stale), 240);
}

#[test]
fn a_gateway_that_delivers_stale_outputs_is_caught() {
    let broken = FaultConfig { deliver_stale: true, ..FaultConfig::default() };
    let err = run("slow-link:w1@0s+10s*500ms, crash:w1@3s", &broken).err().expect("duplicates are caught");
    assert!(err.what.contains("tokens"), "{err}");
}

#[test]
fn migrations_run_out_and_fail_cleanly() {
    // One worker left after the others die for good within the run: what cannot move fails.
    let f = FaultConfig { retries: 0, migrations: 0, ..FaultConfig::default() };
    let r = run("crash:w0@3s, crash:w1@3s", &f).unwrap();
    assert!(r.counts.failed > 0 && r.counts.migrated == 0, "{:?}", r.counts);
    assert_eq!(completed(&r) as u64 + r.counts.failed, 240);
}

/// The seed sweep CI runs: random plans of every kind; any failing seed is named and replays.
#[test]
fn seeded_fault_plans_keep_the_invariants_and_replay_identically() {
    let seeds: u64 = std::env::var("ARMATURE_FAULT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(32);
    let (mut migrated, mut faults, mut failed, mut dumps, mut stale) = (0, 0, 0, 0, 0);
    for seed in 0..seeds {
        let plan = FaultPlan::random(seed, 4, Duration::from_secs(12), Duration::from_secs(2));
        let r = run_with_faults(&config(seed), &trace(seed), &plan, &FaultConfig::default()).unwrap_or_else(|v| {
            panic!("fault seed {seed} broke an invariant: {v}\nplan: {plan:?}\nreplay: armature simulate ... --fault-seed {seed}")
        });
        assert_eq!(r.counts.lost, 0);
        assert_eq!(r.counts.duplicated, 0);
        assert_eq!(completed(&r) as u64 + r.counts.failed, 240, "seed {seed}");
        migrated += r.counts.migrated;
        faults += r.counts.faults;
        failed += r.counts.failed;
        dumps += r.counts.dumps;
        stale += r.counts.stale_discarded;
        if seed < 2 {
            let again = run_with_faults(&config(seed), &trace(seed), &plan, &FaultConfig::default()).unwrap();
            assert_eq!(again.counts, r.counts, "seed {seed} replays");
            assert_eq!(again.run.requests, r.run.requests, "seed {seed} replays");
        }
    }
    println!(
        "{seeds} seeds: {faults} faults, {migrated} migrations, {failed} failed, {dumps} dumps, {stale} stale outputs dropped"
    );
    assert!(faults > seeds * 3 && migrated > 0, "{faults} faults, {migrated} migrations");
}
