//! Picking the next token from logits: greedy, or temperature with top-k and top-p, from a seeded RNG.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use runtime::request::SamplingParams;

#[derive(Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    /// Whether `pick` describes this sampling (no top-k).
    pub fn can_pick(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 0
    }

    /// How a device that picks tokens itself should pick the next one, drawing its uniform from
    /// this sampler's generator; None when only `sample` can (top-k).
    pub fn pick(&mut self) -> Option<crate::executor::Pick> {
        if self.temperature <= 0.0 {
            return Some(crate::executor::Pick::Greedy);
        }
        if self.top_k > 0 {
            return None;
        }
        Some(crate::executor::Pick::Nucleus {
            temperature: self.temperature,
            top_p: self.top_p.clamp(f32::MIN_POSITIVE, 1.0),
            uniform: self.rng.random::<f32>(),
        })
    }

    /// The next token. Non-finite logits are never picked; all of them non-finite picks token 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / self.temperature))
            .collect();
        if cands.is_empty() {
            return 0;
        }
        cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            cands.truncate(self.top_k as usize);
        }
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|&p| {
                    mass += p;
                    mass >= self.top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return cands[i].0;
            }
            u -= p;
        }
        cands[probs.len() - 1].0
    }
}

/// Index of the largest finite logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i as u32, l);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, top_p, top_k, seed, ..Default::default() }
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, f32::NEG_INFINITY, 2.5, 0.0];

    #[test]
    fn greedy_takes_the_largest() {
        assert_eq!(Sampler::new(&params(0.0, 1.0, 0, 1)).sample(&LOGITS), 1);
        assert_eq!(argmax(&[2.0, 2.0]), 0);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for seed in 0..20 {
            assert_eq!(Sampler::new(&params(1.0, 1.0, 1, seed)).sample(&LOGITS), 1);
            assert_eq!(Sampler::new(&params(1.0, 0.01, 0, seed)).sample(&LOGITS), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_never_minus_infinity() {
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.5, 1.0, 0, seed));
            (0..200).map(|_| s.sample(&LOGITS)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert!(!a.contains(&2));
        // High temperature visits every finite token in 200 draws.
        for t in [0, 1, 3, 4] {
            assert!(a.contains(&t), "token {t} never drawn");
        }
    }

    #[test]
    fn picks_describe_what_a_device_can_sample() {
        use crate::executor::Pick;
        assert_eq!(Sampler::new(&params(0.0, 0.5, 3, 1)).pick(), Some(Pick::Greedy));
        let mut k = Sampler::new(&params(0.7, 1.0, 3, 1));
        assert!(!k.can_pick());
        assert_eq!(k.pick(), None);
        let mut n = Sampler::new(&params(0.7, 0.0, 0, 1));
        assert!(n.can_pick());
        match n.pick() {
            Some(Pick::Nucleus { temperature, top_p, uniform }) => {
                assert_eq!(temperature, 0.7);
                assert!(top_p > 0.0, "a nucleus of zero mass is clamped to its top token");
                assert!((0.0..1.0).contains(&uniform));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_p_limits_the_nucleus() {
        // Softmax of LOGITS: token 1 ≈ 0.54, token 3 ≈ 0.33, so top_p = 0.8 keeps exactly {1, 3}.
        let mut s = Sampler::new(&params(1.0, 0.8, 0, 3));
        let drawn: std::collections::BTreeSet<u32> = (0..300).map(|_| s.sample(&LOGITS)).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![1, 3]);
    }
}
