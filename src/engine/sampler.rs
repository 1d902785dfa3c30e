//! Turning logits into the next token: penalties and logit bias, then greedy or temperature with
//! top-k / top-p / min-p, with one seeded RNG per sequence so a sequence's samples never depend on its
//! neighbours in the batch; log-probabilities of the chosen token and its best alternatives.
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

    /// Samples the next token; `banned` tokens (e.g. stop tokens before `min_tokens`) cannot be drawn.
    pub fn sample_with(&mut self, logits: &[f32], banned: &[u32]) -> u32 {
        if !self.params.changes_logits() && banned.is_empty() {
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
        for &t in banned {
            if let Some(v) = work.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        let tok = self.sample(&work);
        self.scratch = work;
        tok
    }

    /// Samples from `logits` as given (no penalties).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &x) in probs.iter().enumerate().take(keep) {
                acc += x;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if r < x {
                return cand[i].0;
            }
            r -= x;
        }
        cand[keep - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_bias_and_bans_change_the_choice() {
        let logits = vec![1.0, 3.0, 2.9, 0.5];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample_with(&logits, &[]), 1);
        assert_eq!(
            s.sample_with(&logits, &[1]),
            2,
            "banned token is never drawn"
        );
        let bias = SamplingParams {
            logit_bias: vec![(3, 10.0)],
            ..Default::default()
        };
        assert_eq!(Sampler::new(bias).sample_with(&logits, &[]), 3);
        let mut pres = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..Default::default()
        });
        pres.observe(1);
        assert_eq!(pres.sample_with(&logits, &[]), 2, "3.0 - 0.5 < 2.9");
        let mut freq = Sampler::new(SamplingParams {
            frequency_penalty: 0.05,
            ..Default::default()
        });
        freq.observe(1);
        assert_eq!(
            freq.sample_with(&logits, &[]),
            1,
            "one occurrence: 2.95 > 2.9"
        );
        freq.observe(1);
        freq.observe(1);
        assert_eq!(
            freq.sample_with(&logits, &[]),
            2,
            "three occurrences: 2.85 < 2.9"
        );
        let rep = SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        };
        assert_eq!(
            Sampler::with_prompt(rep, &[1]).sample_with(&logits, &[]),
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
}
