//! What one forward step computes: for each sequence, its new tokens (a prefill chunk or a single decode
//! token), the position of the first, the KV blocks that hold (and will hold) its context, and which
//! logits the caller wants back.

/// Which positions of a sequence's chunk need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last token of the chunk (to sample the next token).
    Last,
    /// Every token of the chunk (prompt log-probabilities).
    All,
}

/// The new tokens of one sequence in a step.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: the number of the sequence's tokens already in the cache.
    pub start_pos: usize,
    /// Cache blocks of the sequence, enough for `start_pos + tokens.len()` positions.
    pub block_table: &'a [u32],
    pub logits: LogitsWanted,
}

/// One step's work for the model.
#[derive(Clone, Debug, Default)]
pub struct Batch<'a> {
    pub seqs: Vec<SeqChunk<'a>>,
}

impl<'a> Batch<'a> {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

/// Logits of one step: rows of `vocab` values, in the order of the batch's sequences and tokens.
#[derive(Clone, Debug)]
pub struct StepLogits {
    pub vocab: usize,
    pub values: Vec<f32>,
    /// For each sequence of the batch: the first row of its logits and how many rows it has.
    pub seq_rows: Vec<(usize, usize)>,
}

impl StepLogits {
    /// The logits of sequence `seq`, row `i` of its wanted rows.
    pub fn row(&self, seq: usize, i: usize) -> &[f32] {
        let (start, n) = self.seq_rows[seq];
        assert!(i < n, "row {i} of sequence {seq} was not computed");
        let r = start + i;
        &self.values[r * self.vocab..(r + 1) * self.vocab]
    }
    /// The last computed row of sequence `seq`.
    pub fn last(&self, seq: usize) -> Option<&[f32]> {
        let (_, n) = self.seq_rows[seq];
        (n > 0).then(|| self.row(seq, n - 1))
    }
}
