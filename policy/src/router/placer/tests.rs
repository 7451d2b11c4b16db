//! Unit tests of `placer`.
use vocab::kv::{KvEvent, KvEventRecord};

use super::*;

const T0: Duration = Duration::ZERO;

fn rid(s: &str) -> RequestId {
    RequestId(s.into())
}

fn stored(id: u64, hashes: &[u64]) -> KvBatch {
    KvBatch::Events(vec![KvEventRecord { id, event: KvEvent::Stored { parent: None, hashes: hashes.to_vec() } }])
}

fn placer(policy: RoutingPolicy) -> Placer<&'static str> {
    Placer::new(PlacerConfig { policy, ..PlacerConfig::default() }, 1)
}

#[test]
fn kv_places_on_the_prefix_and_predicts_load() {
    let mut p = placer(RoutingPolicy::Kv);
    let ws = ["a", "b", "c"];
    // b holds the first 3 blocks of the prompt [1 2 3 4 5]; everyone publishes.
    assert_eq!(p.receive(&"a", 7, &stored(1, &[9]), T0).applied, 1);
    assert_eq!(p.receive(&"b", 7, &stored(1, &[1, 2, 3]), T0).applied, 1);
    assert_eq!(p.receive(&"c", 7, &KvBatch::Heartbeat { last_event_id: 0 }, T0), Heard::default());
    let d = p.place(&rid("r1"), &[1, 2, 3, 4, 5], &ws, T0).unwrap();
    // b: 1 × (5 − 3) = 2; a and c: 5.
    assert_eq!(d.chosen().worker, "b");
    assert_eq!(d.chosen().score, 2.0);
    assert_eq!(p.load(&"b"), Load { prefill: 2, decode: 0 });
    // Its prefill is now b's load: a second prompt sharing only block 1 costs b 4 + 2 = 6 and a
    // or c 5, so it goes elsewhere.
    let d = p.place(&rid("r2"), &[1, 20, 30, 40, 50], &ws, T0).unwrap();
    assert_ne!(d.chosen().worker, "b", "{d}");
    p.first_token(&rid("r1"));
    p.first_token(&rid("r1"));
    assert_eq!(p.load(&"b"), Load { prefill: 0, decode: 5 }, "counted once");
    p.finished(&rid("r1"));
    assert_eq!(p.load(&"b"), Load::default());
    assert_eq!(p.in_flight(), 1);
    // Placing a request again (a retry) moves its load.
    let first = p.place(&rid("r2"), &[60], &ws, T0).unwrap().chosen().worker;
    let total: u64 = ws.iter().map(|w| p.load(w).prefill).sum();
    assert_eq!((total, p.load(&first).prefill), (1, 1));
}

#[test]
fn round_robin_least_loaded_and_random() {
    let ws = ["a", "b", "c"];
    let mut rr = placer(RoutingPolicy::RoundRobin);
    let got: Vec<_> =
        (0..6).map(|i| rr.place(&rid(&i.to_string()), &[1, 2], &ws, T0).unwrap().chosen().worker).collect();
    assert_eq!(got, ["a", "b", "c", "a", "b", "c"]);

    let mut ll = placer(RoutingPolicy::LeastLoaded);
    // A cached prefix does not matter to least-loaded.
    ll.receive(&"a", 1, &stored(1, &[1, 2]), T0);
    let a = ll.place(&rid("x"), &[1, 2], &ws, T0).unwrap().chosen().worker;
    let b = ll.place(&rid("y"), &[1, 2, 3, 4], &ws, T0).unwrap().chosen().worker;
    let c = ll.place(&rid("z"), &[5, 6, 7], &ws, T0).unwrap().chosen().worker;
    assert_eq!([a, b, c], ["a", "b", "c"]);
    // x (2 blocks on a) is the least load: the next one joins a.
    assert_eq!(ll.place(&rid("w"), &[8], &ws, T0).unwrap().chosen().worker, "a");

    let picks = |seed| {
        let mut r = Placer::new(PlacerConfig { policy: RoutingPolicy::Random, ..PlacerConfig::default() }, seed);
        (0..60).map(|i| r.place(&rid(&i.to_string()), &[1], &ws, T0).unwrap().chosen().worker).collect::<Vec<_>>()
    };
    assert_eq!(picks(5), picks(5), "seeded");
    assert!(ws.iter().all(|w| picks(5).contains(w)));
    assert!(placer(RoutingPolicy::Kv).place(&rid("none"), &[1], &[], T0).is_none());
}

#[test]
fn gaps_dumps_and_restarts() {
    let mut p = placer(RoutingPolicy::Kv);
    assert_eq!(p.receive(&"a", 1, &stored(1, &[1]), T0).applied, 1);
    // Event 2 is lost; 3 reveals the gap.
    let h = p.receive(&"a", 1, &stored(3, &[3]), T0);
    assert!(h.needs_dump && h.applied == 0);
    // Until the dump arrives, nothing applies and heartbeats say so too.
    assert!(p.receive(&"a", 1, &stored(4, &[4]), T0).needs_dump);
    let dump = KvDump { last_event_id: 4, blocks: vec![(None, 1), (Some(1), 2), (None, 3), (None, 4)] };
    assert!(p.resync(&"a", 1, &dump, T0));
    assert_eq!(p.index().held(&"a", Tier::Device).len(), 4);
    // Events the dump already reflects are stale; later ones apply.
    assert_eq!(p.receive(&"a", 1, &stored(4, &[4]), T0).stale, 1);
    assert_eq!(p.receive(&"a", 1, &stored(5, &[5]), T0).applied, 1);
    // A heartbeat past what was seen means the last events were lost.
    assert!(p.receive(&"a", 1, &KvBatch::Heartbeat { last_event_id: 6 }, T0).needs_dump);
    // A restart (new incarnation) forgets the old pool and starts again from event 1; a dump from
    // the old life is refused.
    let h = p.receive(&"a", 2, &stored(1, &[7]), T0);
    assert!(h.restarted && h.applied == 1 && !h.needs_dump);
    assert!(!p.resync(&"a", 1, &dump, T0));
    assert_eq!(p.index().held(&"a", Tier::Device).into_iter().collect::<Vec<_>>(), [7]);
    // A worker that leaves takes its blocks, load and requests with it.
    p.place(&rid("r"), &[7], &["a"], T0);
    p.retain(&[]);
    assert!(p.index().is_empty());
    assert_eq!((p.load(&"a"), p.in_flight()), (Load::default(), 0));
}

#[test]
fn approximate_mode_assumes_placements_until_the_ttl() {
    let config = PlacerConfig { assumed_ttl: Duration::from_secs(10), ..PlacerConfig::default() };
    let mut p = Placer::new(config, 1);
    let ws = ["quiet-a", "quiet-b"];
    let prompt = [1, 2, 3, 4];
    let first = p.place(&rid("1"), &prompt, &ws, T0).unwrap().chosen().worker;
    p.finished(&rid("1"));
    // Nobody publishes, but the router remembers where it put the prompt.
    let d = p.place(&rid("2"), &prompt, &ws, Duration::from_secs(5)).unwrap();
    assert_eq!(d.chosen().worker, first);
    assert_eq!(d.chosen().overlap.by_tier[Tier::Assumed as usize], 4);
    p.finished(&rid("2"));
    // The second placement renewed the TTL to 15 s; after it, the assumption is gone.
    p.expire(Duration::from_secs(14));
    assert_eq!(p.index().len(), 4);
    p.expire(Duration::from_secs(15));
    assert!(p.index().is_empty());
    // A worker that publishes is never assumed about.
    let mut p = Placer::new(PlacerConfig::default(), 1);
    p.receive(&"loud", 1, &KvBatch::Heartbeat { last_event_id: 0 }, T0);
    p.place(&rid("3"), &prompt, &["loud"], T0);
    assert!(p.index().is_empty());
}

/// Workers "n1/a", "n2/b"; tiers "n1/host" and "n2/disk"; same node = same prefix before '/'.
#[test]
fn tier_hits_are_credited_by_tier_and_named_for_onboarding() {
    let mut p = placer(RoutingPolicy::Kv).with_locality(|w, t| w.split('/').next() == t.split('/').next());
    let ws = ["n1/a", "n2/b"];
    let prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    // a holds 2 blocks on its device; n1's host tier holds 8; n2's disk tier holds 6.
    p.receive(&"n1/a", 1, &stored(1, &[1, 2]), T0);
    p.receive(&"n2/b", 1, &KvBatch::Heartbeat { last_event_id: 0 }, T0);
    assert_eq!(p.receive_tier(&"n1/host", Tier::Host, 5, &stored(1, &[1, 2, 3, 4, 5, 6, 7, 8]), T0).applied, 1);
    p.receive_tier(&"n2/disk", Tier::Disk, 5, &stored(1, &[1, 2, 3, 4, 5, 6]), T0);
    let d = p.place(&rid("r"), &prompt, &ws, T0).unwrap();
    // a: 2 on the device + 6 more in its own node's host tier (credit 0.8) = 6.8 credited, so
    // 3.2 new; b: n1's host tier is remote to it (0.3 × 8 = 2.4) and its own disk tier gives
    // 0.5 × 6 = 3.0, the better one: 7 new.
    let a = &d.candidates.iter().find(|c| c.worker == "n1/a").unwrap();
    let b = &d.candidates.iter().find(|c| c.worker == "n2/b").unwrap();
    assert!((a.credited - 6.8).abs() < 1e-9, "{d}");
    assert_eq!(a.overlap.by_tier[Tier::Host as usize], 6);
    assert_eq!(b.overlap.by_tier[Tier::Disk as usize], 6);
    assert!((b.credited - 3.0).abs() < 1e-9, "{d}");
    assert_eq!(d.chosen().worker, "n1/a");
    let o = d.onboard.clone().unwrap();
    assert_eq!((o.source, o.tier, o.credited_as, o.blocks), ("n1/host", Tier::Host, Tier::Host, 8));
    // Predicted load counts only what is not on the device.
    assert_eq!(p.load(&"n1/a").prefill, 8);
    // Tiers are never candidates, and a tier that leaves is forgotten.
    p.retain(&["n1/a", "n2/b", "n2/disk"]);
    let d = p.place(&rid("s"), &prompt, &["n2/b"], T0).unwrap();
    let o = d.onboard.unwrap();
    assert_eq!((o.source, o.credited_as, o.blocks), ("n2/disk", Tier::Disk, 6));
    // A tier's dump resyncs it in its own tier.
    let dump = KvDump { last_event_id: 9, blocks: vec![(None, 1)] };
    assert!(p.resync(&"n2/disk", 5, &dump, T0));
    assert_eq!(p.index().held(&"n2/disk", Tier::Disk).len(), 1);
    assert!(p.index().held(&"n2/disk", Tier::Device).is_empty());
}

#[test]
fn assumptions_made_before_a_worker_is_first_heard_are_dropped_when_it_publishes() {
    let mut p = placer(RoutingPolicy::Kv);
    // Placed before its first heartbeat: approximate mode assumes the prompt is cached there.
    p.place(&rid("r"), &[1, 2, 3], &["a"], T0).unwrap();
    assert_eq!(p.index().held(&"a", Tier::Assumed).len(), 3);
    p.receive(&"a", 1, &KvBatch::Heartbeat { last_event_id: 0 }, T0);
    assert!(p.index().held(&"a", Tier::Assumed).is_empty());
    // From now on only what it publishes counts.
    p.place(&rid("s"), &[1, 2, 3], &["a"], T0).unwrap();
    assert!(p.index().held(&"a", Tier::Assumed).is_empty());
}
