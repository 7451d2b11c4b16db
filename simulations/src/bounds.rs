//! Reference hit ratios for a trace, independent of routing: an infinite cache, and one shared
//! LRU pool as large as all the workers' pools together. A request hits the leading blocks of its
//! prompt that the cache holds when it arrives; ratios are in prompt tokens.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::trace::TraceRequest;

/// Tokens of `req`'s prompt covered by its first `blocks` blocks.
fn tokens(req: &TraceRequest, blocks: usize, block_tokens: u32) -> u64 {
    (blocks as u64 * u64::from(block_tokens)).min(u64::from(req.input_tokens))
}

fn ratio(hit: u64, total: u64) -> f64 {
    if total == 0 { 0.0 } else { hit as f64 / total as f64 }
}

/// Every block ever seen stays cached.
pub fn infinite_cache_hit_ratio(trace: &[TraceRequest], block_tokens: u32) -> f64 {
    let mut seen = HashSet::new();
    let (mut hit, mut total) = (0u64, 0u64);
    for r in trace {
        let n = r.hash_ids.iter().take_while(|h| seen.contains(*h)).count();
        hit += tokens(r, n, block_tokens);
        total += u64::from(r.input_tokens);
        seen.extend(r.hash_ids.iter().copied());
    }
    ratio(hit, total)
}

/// One LRU pool of `capacity` blocks.
pub fn shared_pool_hit_ratio(trace: &[TraceRequest], block_tokens: u32, capacity: usize) -> f64 {
    let mut last_use: HashMap<u64, u64> = HashMap::new();
    let mut by_age: BTreeMap<u64, u64> = BTreeMap::new();
    let mut tick = 0u64;
    let (mut hit, mut total) = (0u64, 0u64);
    for r in trace {
        let n = r.hash_ids.iter().take_while(|h| last_use.contains_key(*h)).count();
        hit += tokens(r, n, block_tokens);
        total += u64::from(r.input_tokens);
        for &h in &r.hash_ids {
            tick += 1;
            if let Some(old) = last_use.insert(h, tick) {
                by_age.remove(&old);
            }
            by_age.insert(tick, h);
        }
        while last_use.len() > capacity {
            let (_, h) = by_age.pop_first().expect("non-empty");
            last_use.remove(&h);
        }
    }
    ratio(hit, total)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn req(ids: &[u64], input: u32) -> TraceRequest {
        TraceRequest { arrival: Duration::ZERO, input_tokens: input, output_tokens: 1, hash_ids: ids.to_vec() }
    }

    #[test]
    fn bounds_by_hand() {
        // Blocks of 10 tokens. r2 reuses block 1 (10 of its 25 tokens); r3 reuses 1 and 2 but
        // not 4; r4 reuses 3's prefix... only through block 1, since 5 is new.
        let trace = [req(&[1, 2], 20), req(&[1, 3, 4], 25), req(&[1, 3, 5], 30), req(&[1, 2], 15)];
        // hits: 0 + 10 + 20 + 15 (capped at its 15 tokens) = 45 of 90.
        assert_eq!(infinite_cache_hit_ratio(&trace, 10), 0.5);
        // An LRU of 3 blocks: after r2 it holds {1, 3, 4} (2 evicted): r3 hits 1, 3 (20); after
        // r3 it holds {1, 3, 5}: r4 hits 1 (10). Total 10 + 20 + 10 = 40.
        assert_eq!(shared_pool_hit_ratio(&trace, 10, 3), 40.0 / 90.0);
        assert_eq!(shared_pool_hit_ratio(&trace, 10, 100), 0.5);
    }
}
