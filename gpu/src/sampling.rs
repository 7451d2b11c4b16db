//! Picking the next token from logits: the logits adjusted first (`logit_bias`, then the
//! repetition, frequency and presence penalties, in vLLM's order), then greedy, or temperature
//! with top-k, top-p and min-p, from a seeded RNG.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use runtime::request::SamplingParams;

/// What changes the logits before a token is chosen, with the counts it needs.
#[derive(Debug, Default)]
struct Adjust {
    presence: f32,
    frequency: f32,
    repetition: f32,
    bias: Vec<(u32, f32)>,
    /// Generated tokens and how often each came (presence and frequency).
    counts: HashMap<u32, u32>,
    /// Prompt and generated tokens (repetition).
    seen: HashSet<u32>,
    /// The adjusted row, reused between steps.
    scratch: Vec<f32>,
}

impl Adjust {
    fn apply<'a>(&'a mut self, logits: &[f32]) -> &'a [f32] {
        self.scratch.clear();
        self.scratch.extend_from_slice(logits);
        let row = &mut self.scratch;
        for &(id, b) in &self.bias {
            if let Some(l) = row.get_mut(id as usize) {
                *l += b;
            }
        }
        if self.repetition != 1.0 {
            for &id in &self.seen {
                if let Some(l) = row.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / self.repetition } else { *l * self.repetition };
                }
            }
        }
        for (&id, &n) in &self.counts {
            if let Some(l) = row.get_mut(id as usize) {
                *l -= self.frequency * n as f32 + self.presence;
            }
        }
        &self.scratch
    }
}

#[derive(Debug)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: u32,
    min_p: f32,
    /// Set when the request adjusts its logits.
    adjust: Option<Adjust>,
    /// Alternatives to report with each token's log probability.
    logprobs: Option<usize>,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for a request with `params` whose prompt is `prompt` (the repetition penalty
    /// counts it).
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let adjust = params.changes_logits().then(|| Adjust {
            presence: params.presence_penalty,
            frequency: params.frequency_penalty,
            repetition: params.repetition_penalty,
            bias: params.logit_bias.clone(),
            seen: if params.repetition_penalty != 1.0 { prompt.iter().copied().collect() } else { HashSet::new() },
            ..Default::default()
        });
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            min_p: params.min_p,
            adjust,
            logprobs: params.logprobs.map(|k| k.min(20) as usize),
            rng: StdRng::seed_from_u64(params.seed),
        }
    }

    /// A token joined the sequence (sampled here or picked by a device).
    pub fn observe(&mut self, token: u32) {
        if let Some(a) = &mut self.adjust {
            if a.presence != 0.0 || a.frequency != 0.0 {
                *a.counts.entry(token).or_default() += 1;
            }
            if a.repetition != 1.0 {
                a.seen.insert(token);
            }
        }
    }

    /// Whether `pick` describes this sampling: no top-k, min-p, penalties, bias or log
    /// probabilities, which only the host applies (a device then hands its logits back).
    pub fn can_pick(&self) -> bool {
        self.adjust.is_none()
            && self.logprobs.is_none()
            && (self.temperature <= 0.0 || (self.top_k == 0 && self.min_p <= 0.0))
    }

    /// How many alternatives to report with each token's log probability, when asked.
    pub fn wants_logprobs(&self) -> Option<usize> {
        self.logprobs
    }

    /// How a device that picks tokens itself should pick the next one, drawing its uniform from
    /// this sampler's generator; None when only `sample` can.
    pub fn pick(&mut self) -> Option<crate::executor::Pick> {
        if !self.can_pick() {
            return None;
        }
        if self.temperature <= 0.0 {
            return Some(crate::executor::Pick::Greedy);
        }
        Some(crate::executor::Pick::Nucleus {
            temperature: self.temperature,
            top_p: self.top_p.clamp(f32::MIN_POSITIVE, 1.0),
            uniform: self.rng.random::<f32>(),
        })
    }

    /// The next token. Non-finite logits are never picked; all of them non-finite picks token 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let logits = match &mut self.adjust {
            Some(a) => a.apply(logits),
            None => logits,
        };
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
        if self.min_p > 0.0 {
            // Sorted: the first is the most likely.
            let floor = probs[0] * self.min_p;
            let keep = probs.iter().position(|&p| p < floor).unwrap_or(probs.len());
            probs.truncate(keep.max(1));
        }
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

/// The log probability of `token` under the softmax of `logits`, and the `top` most likely tokens
/// with theirs (most likely first, lower ids first on ties). Non-finite logits have none.
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> runtime::request::TokenLogprob {
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    // In f64: a vocabulary's worth of small terms.
    let sum: f64 = logits.iter().filter(|l| l.is_finite()).map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| if l.is_finite() { (f64::from(l) - log_z) as f32 } else { f32::NEG_INFINITY };
    let logprob = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l));
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if !l.is_finite() || (best.len() == top && l <= best[top - 1].1) {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (i as u32, l));
            best.truncate(top);
        }
    }
    let top = best.into_iter().map(|(i, l)| (i, lp(l))).collect();
    runtime::request::TokenLogprob { id: token, logprob, top }
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
        assert_eq!(Sampler::new(&params(0.0, 1.0, 0, 1), &[]).sample(&LOGITS), 1);
        assert_eq!(argmax(&[2.0, 2.0]), 0);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for seed in 0..20 {
            assert_eq!(Sampler::new(&params(1.0, 1.0, 1, seed), &[]).sample(&LOGITS), 1);
            assert_eq!(Sampler::new(&params(1.0, 0.01, 0, seed), &[]).sample(&LOGITS), 1);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_never_minus_infinity() {
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.5, 1.0, 0, seed), &[]);
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
        assert_eq!(Sampler::new(&params(0.0, 0.5, 3, 1), &[]).pick(), Some(Pick::Greedy));
        let mut k = Sampler::new(&params(0.7, 1.0, 3, 1), &[]);
        assert!(!k.can_pick());
        assert_eq!(k.pick(), None);
        let mut n = Sampler::new(&params(0.7, 0.0, 0, 1), &[]);
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
        let mut s = Sampler::new(&params(1.0, 0.8, 0, 3), &[]);
        let drawn: std::collections::BTreeSet<u32> = (0..300).map(|_| s.sample(&LOGITS)).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![1, 3]);
    }

    fn greedy_with(adjust: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = params(0.0, 1.0, 0, 1);
        adjust(&mut p);
        p
    }

    #[test]
    fn logit_bias_moves_a_token_up_or_out() {
        // LOGITS' greedy pick is token 1 (3.0); +1 on token 3 (2.5) makes it 3.5.
        let mut s = Sampler::new(&greedy_with(|p| p.logit_bias = vec![(3, 1.0)]), &[]);
        assert_eq!(s.sample(&LOGITS), 3);
        let mut s = Sampler::new(&greedy_with(|p| p.logit_bias = vec![(1, -100.0), (3, -100.0)]), &[]);
        assert_eq!(s.sample(&LOGITS), 0, "1.0 is next after both are banned");
        // An id outside the row is ignored.
        let mut s = Sampler::new(&greedy_with(|p| p.logit_bias = vec![(99, 50.0)]), &[]);
        assert_eq!(s.sample(&LOGITS), 1);
        assert!(!s.can_pick(), "a device cannot apply a bias");
    }

    #[test]
    fn frequency_and_presence_penalties_count_generated_tokens() {
        // Token 1 at 3.0 against token 3 at 2.5: a gap of 0.5.
        let mut s = Sampler::new(&greedy_with(|p| p.frequency_penalty = 0.3), &[]);
        assert_eq!(s.sample(&LOGITS), 1);
        s.observe(1);
        assert_eq!(s.sample(&LOGITS), 1, "once: 3.0 - 0.3 = 2.7 still leads");
        s.observe(1);
        assert_eq!(s.sample(&LOGITS), 3, "twice: 3.0 - 0.6 = 2.4 falls behind 2.5");
        // Presence is once whatever the count: 0.3 never closes the gap, 0.6 does at once.
        let mut s = Sampler::new(&greedy_with(|p| p.presence_penalty = 0.3), &[]);
        for _ in 0..5 {
            s.observe(1);
        }
        assert_eq!(s.sample(&LOGITS), 1);
        let mut s = Sampler::new(&greedy_with(|p| p.presence_penalty = 0.6), &[]);
        s.observe(1);
        assert_eq!(s.sample(&LOGITS), 3);
        // A negative penalty favours repeats.
        let mut s = Sampler::new(&greedy_with(|p| p.frequency_penalty = -1.0), &[]);
        s.observe(3);
        assert_eq!(s.sample(&LOGITS), 3);
        // Prompt tokens do not count for these two.
        let mut s = Sampler::new(&greedy_with(|p| p.presence_penalty = 2.0), &[1, 1, 1]);
        assert_eq!(s.sample(&LOGITS), 1);
    }

    #[test]
    fn the_repetition_penalty_divides_positive_logits_and_multiplies_negative_ones() {
        // Token 1 in the prompt: 3.0 / 1.5 = 2.0 falls behind token 3's 2.5.
        let mut s = Sampler::new(&greedy_with(|p| p.repetition_penalty = 1.5), &[1]);
        assert_eq!(s.sample(&LOGITS), 3);
        s.observe(3);
        // Both seen: 2.0 and 2.5 / 1.5 ≈ 1.67, so token 1 leads again; token 0 (1.0) unseen stays.
        assert_eq!(s.sample(&LOGITS), 1);
        // A negative logit is pushed further down (multiplied).
        let row = [-1.0f32, -1.2];
        let mut s = Sampler::new(&greedy_with(|p| p.repetition_penalty = 1.5), &[0]);
        assert_eq!(s.sample(&row), 1, "-1.0 * 1.5 = -1.5 falls behind -1.2");
    }

    #[test]
    fn min_p_cuts_tokens_far_below_the_most_likely() {
        // Probabilities of LOGITS at T = 1: token 1 ≈ 0.54, 3 ≈ 0.33, 0 ≈ 0.07, 4 ≈ 0.03.
        // min_p = 0.5 keeps tokens of at least 0.27: exactly {1, 3}.
        let mut s = Sampler::new(&greedy_with(|p| (p.temperature, p.min_p) = (1.0, 0.5)), &[]);
        assert!(!s.can_pick());
        let drawn: std::collections::BTreeSet<u32> = (0..300).map(|_| s.sample(&LOGITS)).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        // Without it all four finite tokens come up.
        let mut s = Sampler::new(&params(1.0, 1.0, 0, 5), &[]);
        let drawn: std::collections::BTreeSet<u32> = (0..600).map(|_| s.sample(&LOGITS)).collect();
        assert_eq!(drawn.len(), 4);
    }

    #[test]
    fn log_probabilities_are_of_the_raw_distribution_with_the_top_alternatives() {
        let lp = logprobs(&LOGITS, 3, 2);
        // log softmax of [1, 3, -inf, 2.5, 0]: Z = e^1 + e^3 + e^2.5 + e^0.
        let z = (1f64.exp() + 3f64.exp() + 2.5f64.exp() + 1.0).ln();
        assert!((f64::from(lp.logprob) - (2.5 - z)).abs() < 1e-6, "{lp:?}");
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((f64::from(lp.top[0].1) - (3.0 - z)).abs() < 1e-6);
        assert_eq!(lp.top[1].1, lp.logprob, "the chosen token among the alternatives has the same value");
        // Greedy: the chosen token is the top one.
        let greedy = Sampler::new(&params(0.0, 1.0, 0, 1), &[]).sample(&LOGITS);
        assert_eq!(logprobs(&LOGITS, greedy, 1).top[0].0, greedy);
        // Probabilities sum to one; a banned token has none.
        let all = logprobs(&LOGITS, 2, 5);
        assert_eq!(all.logprob, f32::NEG_INFINITY);
        assert_eq!(all.top.len(), 4, "non-finite logits are never alternatives");
        let total: f32 = all.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(logprobs(&LOGITS, 1, 0).top.is_empty());
        // Asking for them keeps the token choice on the host.
        let asks = SamplingParams { logprobs: Some(3), ..params(0.0, 1.0, 0, 1) };
        assert!(!Sampler::new(&asks, &[]).can_pick());
    }
}
