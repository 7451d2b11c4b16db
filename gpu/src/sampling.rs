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
    /// The candidates of a draw, reused between steps.
    candidates: Vec<Candidate>,
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
            candidates: Vec::new(),
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
    ///
    /// The candidates are ordered most likely first (lower ids first on ties) only as far as the
    /// draw needs: top-k by selection, min-p by a filter, and the nucleus and the draw over a
    /// prefix sorted on demand. A full sort of a 49k vocabulary took 1.7 ms a token against 0.35 ms
    /// (`cargo run --release -p gpu --example sampling`; docs/benchmarks.md#served-speed); the
    /// draw is the same.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let logits = match &mut self.adjust {
            Some(a) => a.apply(logits),
            None => logits,
        };
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.temperature;
        let max_logit = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
        let max = max_logit / t;
        if max_logit == f32::NEG_INFINITY {
            return 0;
        }
        if !max.is_finite() {
            // A temperature so small that the top logit overflows: greedy in the limit.
            return argmax(logits);
        }
        let cands = &mut self.candidates;
        cands.clear();
        let cut = max_logit - NEGLIGIBLE * t;
        for (i, &l) in logits.iter().enumerate() {
            if l > cut && l.is_finite() {
                let scaled = l / t;
                cands.push(Candidate { id: i as u32, scaled, weight: (scaled - max).exp() });
            }
        }
        let mut sorted = Prefix::default();
        if self.top_k > 0 && (self.top_k as usize) < cands.len() {
            sorted.reach(cands, self.top_k as usize);
            cands.truncate(self.top_k as usize);
        }
        let total = cands.iter().map(|c| f64::from(c.weight)).sum::<f64>() as f32;
        if self.min_p > 0.0 {
            // The most likely token's probability is exp(0) / total.
            let floor = (1.0 / total) * self.min_p;
            cands.retain(|c| c.weight / total >= floor);
            sorted = Prefix::default();
        }
        let mut keep = cands.len();
        if self.top_p < 1.0 {
            let mut mass = 0.0f32;
            let mut i = 0;
            while i < cands.len() {
                sorted.reach(cands, i + 1);
                mass += cands[i].weight / total;
                if mass >= self.top_p {
                    break;
                }
                i += 1;
            }
            keep = (i + 1).min(cands.len());
        }
        let kept_mass: f32 = cands[..keep].iter().map(|c| c.weight / total).sum();
        let mut u = self.rng.random::<f32>() * kept_mass;
        for i in 0..keep {
            sorted.reach(cands, i + 1);
            let p = cands[i].weight / total;
            if u < p {
                return cands[i].id;
            }
            u -= p;
        }
        sorted.reach(cands, keep);
        cands[keep - 1].id
    }
}

/// A token that may be drawn: its logit over the temperature, and its weight (the exponent of
/// that less the largest; its probability is the weight over the candidates' total).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    id: u32,
    scaled: f32,
    weight: f32,
}

/// Candidates more than this many nats below the most likely one (after the temperature) are left
/// out: each has a probability under e^-40 ≈ 4e-18, which an f32 total of at least 1 cannot hold.
const NEGLIGIBLE: f32 = 40.0;

/// Most likely first, lower ids first on ties.
fn likelier(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.scaled.total_cmp(&a.scaled).then(a.id.cmp(&b.id))
}

/// How much of a candidate list is in order: its first `len` are the most likely, sorted.
#[derive(Default)]
struct Prefix {
    len: usize,
}

impl Prefix {
    /// Put the first `n` candidates in order (and a few more, growing geometrically, so that a
    /// walk down the list sorts O(n log n) in all).
    fn reach(&mut self, cands: &mut [Candidate], n: usize) {
        if n <= self.len {
            return;
        }
        let upto = n.max(self.len * 4).max(32).min(cands.len());
        let rest = &mut cands[self.len..];
        let take = upto - self.len;
        if take < rest.len() {
            rest.select_nth_unstable_by(take - 1, likelier);
        }
        rest[..take].sort_unstable_by(likelier);
        self.len = upto;
    }
}

/// The draw as `Sampler::sample` made it before its partial sort (without the logit adjustments):
/// every finite candidate sorted, then top-k, min-p and top-p cut from the sorted list. Kept as the
/// baseline that its tests and `cargo run --release -p gpu --example sampling` compare against.
pub fn sample_by_full_sort(p: &SamplingParams, rng: &mut StdRng, logits: &[f32]) -> u32 {
    if p.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut cands: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l / p.temperature)).collect();
    if cands.is_empty() {
        return 0;
    }
    cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cands.truncate(p.top_k as usize);
    }
    let max = cands[0].1;
    let mut probs: Vec<f32> = cands.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= total);
    if p.min_p > 0.0 {
        let floor = probs[0] * p.min_p;
        let keep = probs.iter().position(|&q| q < floor).unwrap_or(probs.len());
        probs.truncate(keep.max(1));
    }
    if p.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs
            .iter()
            .position(|&q| {
                mass += q;
                mass >= p.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut u = rng.random::<f32>() * total;
    for (i, q) in probs.iter().enumerate() {
        if u < *q {
            return cands[i].0;
        }
        u -= q;
    }
    cands[probs.len() - 1].0
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
    fn the_partial_sort_draws_what_a_full_sort_draws() {
        let mut draw = StdRng::seed_from_u64(11);
        let (mut draws, mut same) = (0, 0);
        for case in 0..96u64 {
            // Logits like a model's: a broad bulk, a few far above it, some masked out, ties.
            let vocab = 3000 + (case as usize % 7) * 500;
            let mut logits: Vec<f32> = (0..vocab).map(|_| (draw.random::<f32>() * 8.0).round() / 2.0 - 2.0).collect();
            for _ in 0..20 {
                let i = draw.random_range(0..vocab);
                logits[i] = 6.0 + draw.random::<f32>() * 6.0;
            }
            for _ in 0..50 {
                let i = draw.random_range(0..vocab);
                logits[i] = f32::NEG_INFINITY;
            }
            let temperature = [0.3, 0.6, 1.0, 1.7][case as usize % 4];
            let top_p = [1.0, 0.9, 0.5, 0.99][(case as usize / 4) % 4];
            let top_k = [0, 0, 1, 40, 200][(case as usize / 16) % 5];
            let min_p = [0.0, 0.0, 0.05][(case as usize / 3) % 3];
            let params = SamplingParams { temperature, top_p, top_k, min_p, seed: case, ..Default::default() };
            let mut fast = Sampler::new(&params, &[]);
            let mut rng = StdRng::seed_from_u64(case);
            for _ in 0..40 {
                draws += 1;
                let a = fast.sample(&logits);
                let b = sample_by_full_sort(&params, &mut rng, &logits);
                assert!(logits[a as usize].is_finite());
                // A short nucleus is walked the same way: the same token, always.
                if top_p <= 0.9 || top_k > 0 {
                    assert_eq!(a, b, "case {case}: T {temperature}, top-p {top_p}, top-k {top_k}, min-p {min_p}");
                }
                same += usize::from(a == b);
            }
        }
        // With the whole vocabulary in play, the draw walks thousands of tail tokens of nearly
        // equal probability, and a total summed in another order moves where it stops among them.
        assert!(same * 100 >= draws * 99, "{same} of {draws} draws equal");
        assert_eq!(draws, 96 * 40);
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
