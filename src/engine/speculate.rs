//! Speculative decoding: proposals and their per-sequence bookkeeping. A proposer guesses a
//! decoding sequence's next few tokens; the scheduler runs them through the model in the same
//! batched forward as the sequence's last token (one logits row per position) and keeps the run of
//! guesses that the model itself produces.
//!
//! Verification is the rejection-sampling rule for a proposer that puts all its probability on one
//! token (prompt lookup, a greedy draft): the rule accepts guess `d` with probability `p(d)` and
//! otherwise draws from `p` without `d`. Drawing `x ~ p` and accepting exactly when `x == d` does
//! the same in one draw, and emits `x` either way, so each position's token is the one the sampler
//! would have drawn without speculation: greedy output is token for token the same, and sampled
//! output keeps the target distribution (with a seed, the same draws in the same order).

/// How guesses are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecMethod {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last
    /// `n` tokens (`max_n` first, down to `min_n`), in the prompt or the output so far.
    Ngram { min_n: usize, max_n: usize },
}

/// The engine's speculation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    pub method: SpecMethod,
    /// The most tokens guessed for a sequence in one step (k).
    pub max_tokens: usize,
    /// Guesses are made only while at most this many sequences run: beyond it a step is bound by
    /// compute, not by reading the weights, and verifying guesses would cost more than it saves.
    pub max_seqs: usize,
}

impl SpecConfig {
    /// Prompt lookup with n-grams of 1 to 3 tokens and up to `k` guesses.
    pub fn ngram(k: usize) -> Self {
        Self {
            method: SpecMethod::Ngram { min_n: 1, max_n: 3 },
            max_tokens: k,
            max_seqs: 4,
        }
    }

    /// Up to `k` guesses for the sequence `tokens` (prompt and output so far).
    pub fn propose<'t>(&self, tokens: &'t [u32], k: usize) -> &'t [u32] {
        match self.method {
            SpecMethod::Ngram { min_n, max_n } => ngram_proposal(tokens, min_n, max_n, k),
        }
    }
}

/// The (up to `k`) tokens that followed the latest earlier occurrence of `tokens`' last `n` tokens,
/// for the largest `n` in `min_n..=max_n` that occurs; empty when none does.
pub fn ngram_proposal(tokens: &[u32], min_n: usize, max_n: usize, k: usize) -> &[u32] {
    let len = tokens.len();
    if k == 0 {
        return &[];
    }
    for n in (min_n.max(1)..=max_n).rev() {
        if len <= n {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Latest first: the nearest context predicts best (the line being copied right now).
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == suffix {
                let from = start + n;
                return &tokens[from..(from + k).min(len)];
            }
        }
    }
    &[]
}

/// One sequence's speculation state: how many guesses it gets (k adapts to how many were
/// accepted), and a pause after guesses that failed, so that text the proposer cannot predict
/// costs (almost) nothing.
#[derive(Clone, Debug, Default)]
pub struct SpecState {
    /// Guesses allowed next time (0 before the first step: the configured most).
    k: usize,
    /// Steps in a row whose guesses were all rejected.
    misses: u32,
    /// Steps left before guessing again.
    pause: u32,
}

/// The longest pause after rejected guesses, in steps.
const MAX_PAUSE: u32 = 16;

impl SpecState {
    /// How many tokens to guess this step (0 while paused); counts the step against the pause.
    pub fn budget(&mut self, max_k: usize) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        if self.k == 0 {
            self.k = max_k;
        }
        self.k.min(max_k)
    }

    /// Records how many of `proposed` guesses were accepted. All accepted: k doubles (up to
    /// `max_k`). Some: k becomes one more than were accepted. None: k drops to 1 and guessing
    /// pauses for 1, 3, 7, ... steps (up to [`MAX_PAUSE`]) while rejections go on.
    pub fn record(&mut self, proposed: usize, accepted: usize, max_k: usize) {
        if proposed == 0 {
            return;
        }
        if accepted >= proposed {
            self.k = (self.k.max(1) * 2).min(max_k);
            self.misses = 0;
        } else if accepted > 0 {
            self.k = (accepted + 1).min(max_k);
            self.misses = 0;
        } else {
            self.k = 1;
            self.misses = (self.misses + 1).min(8);
            self.pause = ((1u32 << self.misses) - 1).min(MAX_PAUSE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_takes_the_longest_suffix_at_its_latest_occurrence() {
        //            0  1  2  3  4  5  6  7  8  9
        let tokens = [1, 2, 3, 9, 1, 2, 4, 5, 1, 2];
        // "1 2" last occurred at 4: what followed was 4 5 1 2 (up to k).
        assert_eq!(ngram_proposal(&tokens, 1, 3, 3), &[4, 5, 1]);
        assert_eq!(ngram_proposal(&tokens, 1, 3, 10), &[4, 5, 1, 2]);
        // "5 1 2" never occurred before: the 2-gram decides.
        let t2 = [7, 1, 2, 8, 5, 1, 2];
        assert_eq!(ngram_proposal(&t2, 1, 3, 2), &[8, 5]);
        // Only the 1-gram matches.
        let t3 = [4, 6, 3, 4];
        assert_eq!(ngram_proposal(&t3, 1, 3, 2), &[6, 3]);
        // Nothing repeats, or k is 0.
        assert!(ngram_proposal(&[1, 2, 3], 1, 3, 4).is_empty());
        assert!(ngram_proposal(&tokens, 1, 3, 0).is_empty());
        // min_n above every match.
        assert!(ngram_proposal(&t3, 2, 3, 2).is_empty());
    }

    #[test]
    fn k_adapts_and_rejections_pause_guessing() {
        let mut s = SpecState::default();
        assert_eq!(s.budget(8), 8);
        s.record(8, 3, 8);
        assert_eq!(s.budget(8), 4);
        s.record(4, 4, 8);
        assert_eq!(s.budget(8), 8);
        // Rejections: k = 1, then pauses of 1, 3, 7 steps.
        s.record(8, 0, 8);
        assert_eq!(s.budget(8), 0);
        assert_eq!(s.budget(8), 1);
        s.record(1, 0, 8);
        assert_eq!((0..3).map(|_| s.budget(8)).sum::<usize>(), 0);
        assert_eq!(s.budget(8), 1);
        s.record(1, 0, 8);
        assert_eq!((0..7).map(|_| s.budget(8)).sum::<usize>(), 0);
        // An accepted guess ends the pauses.
        assert_eq!(s.budget(8), 1);
        s.record(1, 1, 8);
        assert_eq!(s.budget(8), 2);
        s.record(2, 0, 8);
        assert_eq!(s.budget(8), 0);
        assert_eq!(s.budget(8), 1);
    }
}
