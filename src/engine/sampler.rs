//! Turning logits into the next token: penalties and logit bias, then greedy or temperature with
//! top-k / top-p / min-p, with one seeded RNG per sequence so a sequence's samples never depend on its
//! neighbours in the batch; log-probabilities of the chosen token and its best alternatives.
use crate::grammar::TokenMask;
use inhaus_kernels::dense::exp_f32;
use inhaus_kernels::sampling;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: Option<u64>,
    /// Divides positive (multiplies negative) logits of tokens seen in the prompt or output; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
    /// Number of alternatives to report with each token's log-probability (0: none; `None`: no logprobs).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
        }
    }
}

impl SamplingParams {
    fn changes_logits(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
    }
}

/// The chosen token's log-probability under the model and the best alternatives, as the API reports
/// them (from the model's distribution, before penalties and temperature).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Log-probabilities of `chosen` and of the `k` most likely tokens of `logits`.
pub fn token_logprobs(logits: &[f32], chosen: u32, k: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &v) in logits.iter().enumerate() {
            if top.len() < k || v > top[top.len() - 1].1 {
                let pos = top.iter().position(|&(_, w)| v > w).unwrap_or(top.len());
                top.insert(pos, (i as u32, v));
                top.truncate(k);
            }
        }
    }
    TokenLogprobs {
        logprob: (logits[chosen as usize] as f64 - lse) as f32,
        top: top
            .into_iter()
            .map(|(i, v)| (i, (v as f64 - lse) as f32))
            .collect(),
    }
}

/// The index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// log-softmax of `logits`, computed in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Tokens of the prompt and output (repetition penalty).
    seen: std::collections::HashSet<u32>,
    /// Occurrences in the output (presence and frequency penalties).
    counts: HashMap<u32, u32>,
    scratch: Vec<f32>,
    /// Per-token weights of the last full-vocabulary draw, and their block sums (reused buffers).
    weights: Vec<f32>,
    block_sums: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Self::with_prompt(params, &[])
    }

    /// A sampler that counts `prompt` as seen for the repetition penalty.
    pub fn with_prompt(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            Default::default()
        };
        Self {
            params,
            rng,
            seen,
            counts: HashMap::new(),
            scratch: Vec::new(),
            weights: Vec::new(),
            block_sums: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token (for the penalties).
    pub fn observe(&mut self, tok: u32) {
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(tok);
        }
        *self.counts.entry(tok).or_insert(0) += 1;
    }

    /// Samples the next token. `banned` tokens (e.g. stop tokens before `min_tokens`) cannot be
    /// drawn; with `allowed` (a grammar's mask) only its tokens can, ids past its end included
    /// among the forbidden. When the mask allows nothing but banned tokens, the ban yields: the
    /// grammar must be able to end.
    pub fn sample_with(
        &mut self,
        logits: &[f32],
        banned: &[u32],
        allowed: Option<&TokenMask>,
    ) -> u32 {
        if !self.params.changes_logits() && banned.is_empty() && allowed.is_none() {
            return self.sample(logits);
        }
        let mut work = std::mem::take(&mut self.scratch);
        work.clear();
        work.extend_from_slice(logits);
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(v) = work.get_mut(t as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        for (&t, &c) in &self.counts {
            if let Some(v) = work.get_mut(t as usize) {
                *v -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
        for &(t, b) in &p.logit_bias {
            if let Some(v) = work.get_mut(t as usize) {
                *v += b;
            }
        }
        if let Some(mask) = allowed {
            apply_mask(&mut work, mask);
        }
        let mut banned_any = false;
        for &t in banned {
            if let Some(v) = work.get_mut(t as usize) {
                if *v != f32::NEG_INFINITY {
                    *v = f32::NEG_INFINITY;
                    banned_any = true;
                }
            }
        }
        if banned_any && work.iter().all(|&v| v == f32::NEG_INFINITY) {
            // Only the banned tokens were possible (a complete grammar): let them be.
            for &t in banned {
                if let (Some(v), Some(&orig)) = (work.get_mut(t as usize), logits.get(t as usize)) {
                    if allowed.is_none_or(|m| mask_allows(m, t)) {
                        *v = orig;
                    }
                }
            }
        }
        let tok = self.sample(&work);
        self.scratch = work;
        tok
    }

    /// Samples from `logits` as given (no penalties), in O(V) unless top-k/top-p/min-p truncate.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        let max = sampling::max_f32(logits);
        if !max.is_finite() {
            return argmax(logits);
        }
        let truncates = (p.top_k > 0 && p.top_k < logits.len()) || p.top_p < 1.0 || p.min_p > 0.0;
        if !truncates {
            // Inverse CDF over the whole vocabulary: a vectorized pass for the weights (and the
            // sums of blocks of them), then the draw finds its block and scans only that one.
            let mut weights = std::mem::take(&mut self.weights);
            let mut blocks = std::mem::take(&mut self.block_sums);
            sampling::softmax_weights(logits, max, inv_t, WEIGHT_BLOCK, &mut weights, &mut blocks);
            let total: f64 = blocks.iter().map(|&b| b as f64).sum();
            let mut r = self.rng.random::<f64>() * total;
            let mut pick = None;
            'draw: for (b, &sum) in blocks.iter().enumerate() {
                if r >= sum as f64 {
                    r -= sum as f64;
                    continue;
                }
                let start = b * WEIGHT_BLOCK;
                for (i, &w) in weights[start..].iter().take(WEIGHT_BLOCK).enumerate() {
                    if w > 0.0 {
                        if r < w as f64 {
                            pick = Some((start + i) as u32);
                            break 'draw;
                        }
                        r -= w as f64;
                    }
                }
                // Rounding left r at the block's end: its last possible token.
                if let Some(i) = weights[start..]
                    .iter()
                    .take(WEIGHT_BLOCK)
                    .rposition(|&w| w > 0.0)
                {
                    pick = Some((start + i) as u32);
                }
                break;
            }
            self.weights = weights;
            self.block_sums = blocks;
            // Rounding past the last block (r == total): the most likely token.
            return pick.unwrap_or_else(|| argmax(logits));
        }
        // Truncation, with llama.cpp's semantics (probabilities over the top-k set, min-p relative
        // to the best token, top-p over those probabilities), without sorting the vocabulary: the
        // best `limit` tokens are selected and sorted, and more only if top-p needs them.
        let weight = |l: f32| (((l - max) * inv_t) as f64).exp();
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = if p.top_k > 0 {
            p.top_k.min(cand.len())
        } else {
            cand.len()
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, order);
            cand.truncate(k);
        }
        let denom: f64 = cand
            .iter()
            .map(|c| exp_f32((c.1 - max) * inv_t) as f64)
            .sum();
        let mut limit = if p.top_p < 1.0 {
            k.min(TOP_P_FIRST_TRY)
        } else {
            k
        };
        let n_cand = cand.len();
        loop {
            if limit < n_cand {
                cand.select_nth_unstable_by(limit - 1, order);
            }
            let head = &mut cand[..limit];
            head.sort_by(order);
            let probs: Vec<f64> = head.iter().map(|c| weight(c.1) / denom).collect();
            let floor = probs[0] * p.min_p as f64;
            let mut keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
            let cut_by_min_p = keep < probs.len();
            if p.top_p < 1.0 {
                let mut acc = 0.0;
                let mut reached = false;
                for (i, &x) in probs[..keep].iter().enumerate() {
                    acc += x;
                    if acc >= p.top_p as f64 {
                        keep = i + 1;
                        reached = true;
                        break;
                    }
                }
                if !reached && !cut_by_min_p && limit < n_cand {
                    limit = (limit * 8).min(n_cand);
                    continue;
                }
            }
            let total: f64 = probs[..keep].iter().sum();
            let mut r = self.rng.random::<f64>() * total;
            for (i, &x) in probs[..keep].iter().enumerate() {
                if r < x {
                    return head[i].0;
                }
                r -= x;
            }
            return head[keep - 1].0;
        }
    }
}

/// Tokens per block of the weight sums a full-vocabulary draw searches first.
const WEIGHT_BLOCK: usize = 1024;

/// How many of the best tokens top-p looks at first (more only when they hold too little mass).
const TOP_P_FIRST_TRY: usize = 256;

/// Whether a grammar mask allows token `t` (ids past its end are not allowed).
fn mask_allows(mask: &TokenMask, t: u32) -> bool {
    (t as usize) < mask.len() && mask.is_allowed(t)
}

/// Sets every logit the mask does not allow to -inf.
fn apply_mask(work: &mut [f32], mask: &TokenMask) {
    let words = mask.as_slice();
    for (w, chunk) in work.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, v) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_bias_and_bans_change_the_choice() {
        let logits = vec![1.0, 3.0, 2.9, 0.5];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample_with(&logits, &[], None), 1);
        assert_eq!(
            s.sample_with(&logits, &[1], None),
            2,
            "banned token is never drawn"
        );
        let bias = SamplingParams {
            logit_bias: vec![(3, 10.0)],
            ..Default::default()
        };
        assert_eq!(Sampler::new(bias).sample_with(&logits, &[], None), 3);
        let mut pres = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..Default::default()
        });
        pres.observe(1);
        assert_eq!(pres.sample_with(&logits, &[], None), 2, "3.0 - 0.5 < 2.9");
        let mut freq = Sampler::new(SamplingParams {
            frequency_penalty: 0.05,
            ..Default::default()
        });
        freq.observe(1);
        assert_eq!(
            freq.sample_with(&logits, &[], None),
            1,
            "one occurrence: 2.95 > 2.9"
        );
        freq.observe(1);
        freq.observe(1);
        assert_eq!(
            freq.sample_with(&logits, &[], None),
            2,
            "three occurrences: 2.85 < 2.9"
        );
        let rep = SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        };
        assert_eq!(
            Sampler::with_prompt(rep, &[1]).sample_with(&logits, &[], None),
            2,
            "3.0 / 1.2 < 2.9"
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(7),
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        let other = SamplingParams {
            seed: Some(8),
            ..params.clone()
        };
        assert_ne!(draw(&params), draw(&other));
    }

    #[test]
    fn logprobs_are_normalized_and_sorted() {
        let logits = vec![0.0, 2.0, 1.0, -1.0];
        let lp = token_logprobs(&logits, 2, 3);
        let total: f64 = logits.iter().map(|&v| (v as f64).exp()).sum();
        assert!((lp.logprob as f64 - (1.0 - total.ln())).abs() < 1e-6);
        assert_eq!(
            lp.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    }

    /// Frequencies of 20000 draws from `logits` with `params`.
    fn frequencies(logits: &[f32], params: SamplingParams) -> Vec<f64> {
        let mut s = Sampler::new(SamplingParams {
            seed: Some(3),
            ..params
        });
        let mut counts = vec![0usize; logits.len()];
        let n = 20000;
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn softmax(logits: &[f32], t: f32) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = logits
            .iter()
            .map(|&l| (((l - max) / t) as f64).exp())
            .collect();
        let sum: f64 = w.iter().sum();
        w.iter().map(|x| x / sum).collect()
    }

    #[test]
    fn full_vocabulary_draws_follow_the_softmax() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        for t in [0.7f32, 1.0, 1.5] {
            let freq = frequencies(
                &logits,
                SamplingParams {
                    temperature: t,
                    ..Default::default()
                },
            );
            let want = softmax(&logits, t);
            // Compare the mass of the ten largest-logit buckets (coarse, so sampling noise is small).
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            for chunk in order.chunks(100) {
                let f: f64 = chunk.iter().map(|&i| freq[i]).sum();
                let w: f64 = chunk.iter().map(|&i| want[i]).sum();
                assert!((f - w).abs() < 0.02, "t={t}: {f} vs {w}");
            }
        }
    }

    #[test]
    fn truncation_draws_only_from_its_set_in_proportion() {
        let logits: Vec<f32> = (0..2000).map(|i| -(i as f32) * 0.005).collect();
        // top-k: only the best k, in softmax proportion among them.
        let f = frequencies(
            &logits,
            SamplingParams {
                temperature: 1.0,
                top_k: 5,
                ..Default::default()
            },
        );
        assert!(f[5..].iter().all(|&x| x == 0.0));
        let want = softmax(&logits[..5], 1.0);
        for i in 0..5 {
            assert!(
                (f[i] - want[i]).abs() < 0.02,
                "top-k {i}: {} vs {}",
                f[i],
                want[i]
            );
        }
        // top-p needing more than the first try's 256 candidates: the nucleus is exact.
        let all = softmax(&logits, 1.0);
        let (mut acc, mut nucleus) = (0.0, 0);
        while acc < 0.9 {
            acc += all[nucleus];
            nucleus += 1;
        }
        assert!(nucleus > 256, "the test needs a wide nucleus ({nucleus})");
        let f = frequencies(
            &logits,
            SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                ..Default::default()
            },
        );
        assert!(
            f[nucleus..].iter().all(|&x| x == 0.0),
            "outside the nucleus"
        );
        assert!(
            f[nucleus - 20..nucleus].iter().sum::<f64>() > 0.0,
            "its tail is reached"
        );
        // min-p keeps tokens with at least min_p times the best probability.
        let f = frequencies(
            &logits,
            SamplingParams {
                temperature: 1.0,
                min_p: 0.5,
                ..Default::default()
            },
        );
        let cut = logits
            .iter()
            .filter(|&&l| l >= logits[0] + 0.5f32.ln())
            .count();
        assert!(f[cut..].iter().all(|&x| x == 0.0) && f[cut - 1] > 0.0);
        // top_p 0 keeps only the best token.
        let f = frequencies(
            &logits,
            SamplingParams {
                temperature: 1.0,
                top_p: 0.0,
                ..Default::default()
            },
        );
        assert_eq!(f[0], 1.0);
    }

    #[test]
    fn a_mask_limits_every_sampling_mode() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 10) as f32).collect();
        let mut mask = TokenMask::alloc(64); // ids 64.. are outside the mask: never allowed
        for t in [3u32, 17, 40] {
            mask.allow_token(t);
        }
        for params in [
            SamplingParams::default(),
            SamplingParams {
                temperature: 1.3,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_k: 2,
                top_p: 0.5,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                logit_bias: vec![(99, 100.0)],
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(1),
                ..params
            });
            for _ in 0..200 {
                let t = s.sample_with(&logits, &[], Some(&mask));
                assert!([3, 17, 40].contains(&t), "{t}");
            }
            // Banning all allowed tokens yields (the grammar must be able to end).
            let t = s.sample_with(&logits, &[3, 17, 40], Some(&mask));
            assert!([3, 17, 40].contains(&t), "{t}");
            assert!([3, 17].contains(&s.sample_with(&logits, &[40], Some(&mask))));
        }
    }
}
