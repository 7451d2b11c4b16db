//! The placement cost (docs/design.md#routing-cost), as plain functions over what the index and
//! the load prediction say: for worker `w` and a prompt of `P` blocks,
//!
//! `score(w) = prefill_weight × max(P − credited(w), 0) + prefill_load(w) + decode_load(w)`
//!
//! where `credited(w)` counts the prompt's leading blocks `w` holds, each weighted by its tier's
//! credit (a block on the device saves all its prefill, one on disk less), and the loads are the
//! router's own prediction, in blocks (prompts placed there and not yet prefilled, sequences
//! being decoded). Lowest score wins;
//! with a temperature, a softmax over scores is sampled with the RNG the caller passes.

use std::fmt;

use rand::Rng;

use super::index::{Overlap, TIERS, Tier};

/// Weights of the cost.
#[derive(Clone, Debug, PartialEq)]
pub struct CostConfig {
    /// Cost of prefilling one block of this prompt, against one block of load already there.
    pub prefill_weight: f64,
    /// How much of a block's prefill a copy in each tier saves (by `Tier` order).
    pub tier_credit: [f64; TIERS],
    /// 0 picks the lowest score; above 0 samples `softmax(−score / temperature)`.
    pub temperature: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self { prefill_weight: 1.0, tier_credit: [1.0, 0.8, 0.5, 0.3, 1.0], temperature: 0.0 }
    }
}

/// The router's prediction of one worker's load, in blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Prompt blocks placed there and not yet prefilled (no first token yet).
    pub prefill: u64,
    /// Blocks of the sequences being decoded there.
    pub decode: u64,
}

/// One worker's terms, for the decision and its explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<W> {
    pub worker: W,
    pub overlap: Overlap,
    pub credited: f64,
    /// Blocks of this prompt the worker would compute.
    pub new_blocks: f64,
    pub load: Load,
    pub score: f64,
}

/// A placement and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision<W> {
    pub prompt_blocks: u32,
    pub chosen: usize,
    pub candidates: Vec<Candidate<W>>,
    /// Set by the placer: a cache tier the chosen worker may onboard prompt blocks from.
    pub onboard: Option<super::placer::Onboard<W>>,
}

impl<W> Decision<W> {
    pub fn chosen(&self) -> &Candidate<W> {
        &self.candidates[self.chosen]
    }
}

impl<W: fmt::Display> fmt::Display for Decision<W> {
    /// One line per candidate: `worker: score = w × new + prefill load + decode load`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "prompt of {} blocks ->", self.prompt_blocks)?;
        for (i, c) in self.candidates.iter().enumerate() {
            let mark = if i == self.chosen { "*" } else { " " };
            write!(
                f,
                "\n {mark} {}: score {:.2} = weight × new {:.2} (overlap {:?}, credited {:.2}) + prefill load {} + decode load {}",
                c.worker, c.score, c.new_blocks, c.overlap.by_tier, c.credited, c.load.prefill, c.load.decode
            )?;
        }
        Ok(())
    }
}

/// Blocks of prefill a worker's overlap saves.
pub fn credited(config: &CostConfig, overlap: &Overlap) -> f64 {
    Tier::ALL.iter().map(|&t| config.tier_credit[t as usize] * f64::from(overlap.by_tier[t as usize])).sum()
}

/// Score every candidate (`(worker, overlap, load)`, in the caller's order, which also breaks
/// ties) and pick one. None without candidates.
pub fn decide<W, R: Rng + ?Sized>(
    config: &CostConfig,
    prompt_blocks: u32,
    workers: Vec<(W, Overlap, Load)>,
    rng: &mut R,
) -> Option<Decision<W>> {
    if workers.is_empty() {
        return None;
    }
    let candidates: Vec<Candidate<W>> = workers
        .into_iter()
        .map(|(worker, overlap, load)| {
            let credited = credited(config, &overlap);
            let new_blocks = (f64::from(prompt_blocks) - credited).max(0.0);
            let score = config.prefill_weight * new_blocks + (load.prefill + load.decode) as f64;
            Candidate { worker, overlap, credited, new_blocks, load, score }
        })
        .collect();
    let best = (0..candidates.len())
        .min_by(|&a, &b| candidates[a].score.total_cmp(&candidates[b].score).then(a.cmp(&b)))
        .expect("non-empty");
    let chosen = if config.temperature > 0.0 {
        // Softmax over −score / T, shifted by the best score for stability.
        let min = candidates[best].score;
        let weights: Vec<f64> = candidates.iter().map(|c| (-(c.score - min) / config.temperature).exp()).collect();
        let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut pick = weights.len() - 1;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                pick = i;
                break;
            }
            u -= w;
        }
        pick
    } else {
        best
    };
    Some(Decision { prompt_blocks, chosen, candidates, onboard: None })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn overlap(device: u32, disk: u32) -> Overlap {
        let mut o = Overlap::default();
        o.by_tier[Tier::Device as usize] = device;
        o.by_tier[Tier::Disk as usize] = disk;
        o
    }

    #[test]
    fn scores_by_hand() {
        // A 10-block prompt; prefill weight 2; disk copies save half a block each.
        let config = CostConfig { prefill_weight: 2.0, ..CostConfig::default() };
        let workers = vec![
            // a: 6 on the device -> new 4; loads 0/5: 2×4 + 0 + 5 = 13
            ("a", overlap(6, 0), Load { prefill: 0, decode: 5 }),
            // b: 4 on the device, 4 on disk -> credited 6, new 4; loads 2/0: 2×4 + 2 + 0 = 10
            ("b", overlap(4, 4), Load { prefill: 2, decode: 0 }),
            // c: nothing cached, idle: 2×10 = 20
            ("c", Overlap::default(), Load::default()),
            // d: more than the prompt is impossible, but a credit above it never goes negative:
            // 0 + 3 + 7 = 10.
            ("d", overlap(12, 0), Load { prefill: 3, decode: 7 }),
        ];
        let d = decide(&config, 10, workers, &mut StdRng::seed_from_u64(0)).unwrap();
        let scores: Vec<f64> = d.candidates.iter().map(|c| c.score).collect();
        assert_eq!(scores, [13.0, 10.0, 20.0, 10.0]);
        assert_eq!(d.candidates[1].credited, 6.0);
        assert_eq!(d.candidates[3].new_blocks, 0.0);
        // b and d tie at 10: the first in the caller's order wins.
        assert_eq!(d.chosen().worker, "b");
        let text = d.to_string();
        assert!(text.contains("* b: score 10.00") && text.contains("  c: score 20.00"), "{text}");
        assert!(decide::<&str, _>(&config, 10, vec![], &mut StdRng::seed_from_u64(0)).is_none());
    }

    #[test]
    fn temperature_samples_by_softmax_with_the_given_rng() {
        let config = CostConfig { temperature: 1.0, ..CostConfig::default() };
        // Scores 0 and 1 (one more block to prefill): weights 1 and e^-1, so a is chosen with
        // probability 1 / (1 + e^-1) = 0.731.
        let workers = || vec![("a", overlap(4, 0), Load::default()), ("b", overlap(3, 0), Load::default())];
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let a = (0..n).filter(|_| decide(&config, 4, workers(), &mut rng).unwrap().chosen().worker == "a").count();
        let share = a as f64 / n as f64;
        assert!((share - 0.731).abs() < 0.015, "{share}");
        // The same seed gives the same choices.
        let picks = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| decide(&config, 4, workers(), &mut rng).unwrap().chosen).collect::<Vec<_>>()
        };
        assert_eq!(picks(3), picks(3));
    }
}
