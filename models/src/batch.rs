//! What one forward step computes: for each sequence, its new tokens (a prefill chunk or a single decode
//! token), the position of the first, the KV blocks that hold (and will hold) its context, and which
//! logits the caller wants back.
use crate::error::ModelError;
use crate::Result;
use inhaus_kernels::attention::AttnSeq;

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

    /// Checks that every sequence has tokens inside a vocabulary of `vocab` and a block table of
    /// valid blocks (of a cache with `num_blocks` blocks of `block_size`) long enough for them.
    pub fn validate(&self, vocab: usize, block_size: usize, num_blocks: usize) -> Result<()> {
        for (i, s) in self.seqs.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::InvalidBatch(format!(
                    "sequence {i} has no tokens"
                )));
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(ModelError::InvalidBatch(format!(
                    "token id {t} is outside the vocabulary of {vocab}"
                )));
            }
            let end = s.start_pos + s.tokens.len();
            if s.block_table.len() * block_size < end {
                return Err(ModelError::InvalidBatch(format!(
                    "sequence {i}: block table too short for {end} positions"
                )));
            }
            if s.block_table.iter().any(|&b| b as usize >= num_blocks) {
                return Err(ModelError::InvalidBatch(format!(
                    "sequence {i}: block id out of range"
                )));
            }
        }
        Ok(())
    }

    /// The cache slot of every token of the batch, in order (`block_size` slots per block).
    pub fn slots(&self, block_size: usize) -> Vec<u32> {
        let mut slots = Vec::with_capacity(self.num_tokens());
        for s in &self.seqs {
            for p in s.start_pos..s.start_pos + s.tokens.len() {
                slots.push(
                    s.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32,
                );
            }
        }
        slots
    }

    /// Each sequence's query tokens as the paged attention kernels take them (rows in batch order).
    pub fn attn_seqs(&self) -> Vec<AttnSeq<'a>> {
        let mut token_start = 0;
        self.seqs
            .iter()
            .map(|s| {
                let seq = AttnSeq {
                    token_start,
                    n_tokens: s.tokens.len(),
                    first_pos: s.start_pos,
                    block_table: s.block_table,
                };
                token_start += s.tokens.len();
                seq
            })
            .collect()
    }

    /// The position of every token, in batch order.
    pub fn positions(&self) -> Vec<usize> {
        self.seqs
            .iter()
            .flat_map(|s| s.start_pos..s.start_pos + s.tokens.len())
            .collect()
    }

    /// For each sequence, the rows of its logits the caller wants (indices into the batch's
    /// tokens), and every wanted row in order.
    pub fn wanted_rows(&self) -> (Vec<(usize, usize)>, Vec<usize>) {
        let mut seq_rows = Vec::with_capacity(self.seqs.len());
        let mut wanted = Vec::new();
        let mut start = 0;
        for s in &self.seqs {
            let len = s.tokens.len();
            let first = wanted.len();
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => wanted.push(start + len - 1),
                LogitsWanted::All => wanted.extend(start..start + len),
            }
            seq_rows.push((first, wanted.len() - first));
            start += len;
        }
        (seq_rows, wanted)
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
