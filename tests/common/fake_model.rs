//! A deterministic stand-in for the model, for scheduler tests: its "KV" is the token at each cache
//! slot and its logits are a hash of the whole context read back through the block table, so
//! thousands of random workloads run in seconds and still catch a wrong block table, copy-on-write or
//! prefix-cache reuse.
#![allow(dead_code)]
use inhaus::engine::step_model::StepModel;
use inhaus_models::{Batch, LogitsWanted, ModelError, StepLogits};

/// A model whose "KV" is the token at each cache slot and whose logits are a hash of the whole
/// context read back through the block table: the same context always gives the same logits.
#[derive(Clone, Debug)]
pub struct FakeModel {
    pub vocab: usize,
    pub context_len: usize,
    /// `(period, bonus)`: `bonus` is added to the logit of the token `period` positions back, so the
    /// output tends to repeat itself (greedy: always, once `bonus` ≥ 8) and prompt lookup's guesses
    /// come true (the speculation tests).
    pub repeat: Option<(usize, f32)>,
}

/// The fake cache: `slots[block * block_size + offset]`, `u32::MAX` where nothing was written.
pub struct FakeCache {
    block_size: usize,
    slots: Vec<u32>,
}

impl FakeModel {
    /// The logits the model gives after `context` (also used by tests to compute expectations).
    pub fn logits_after(&self, context: &[u32]) -> Vec<f32> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in context {
            h = (h ^ t as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut logits: Vec<f32> = (0..self.vocab as u64)
            .map(|i| {
                let x =
                    (h ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                ((x >> 40) as f32) / (1u64 << 24) as f32 * 8.0
            })
            .collect();
        if let Some((period, bonus)) = self.repeat {
            if let Some(&t) = context
                .len()
                .checked_sub(period)
                .and_then(|i| context.get(i))
            {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l += bonus;
                }
            }
        }
        logits
    }
}

impl StepModel for FakeModel {
    type Cache = FakeCache;
    fn context_len(&self) -> usize {
        self.context_len
    }
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<FakeCache, ModelError> {
        Ok(FakeCache {
            block_size,
            slots: vec![u32::MAX; block_size * num_blocks],
        })
    }
    fn forward(&self, batch: &Batch, cache: &mut FakeCache) -> Result<StepLogits, ModelError> {
        let bs = cache.block_size;
        let slot = |table: &[u32], pos: usize| -> Result<usize, ModelError> {
            table
                .get(pos / bs)
                .map(|&b| b as usize * bs + pos % bs)
                .ok_or_else(|| ModelError::InvalidBatch(format!("no block for position {pos}")))
        };
        let mut values = Vec::new();
        let mut seq_rows = Vec::with_capacity(batch.seqs.len());
        let mut rows = 0;
        for chunk in &batch.seqs {
            for (i, &t) in chunk.tokens.iter().enumerate() {
                let s = slot(chunk.block_table, chunk.start_pos + i)?;
                cache.slots[s] = t;
            }
            let end = chunk.start_pos + chunk.tokens.len();
            let wanted: Vec<usize> = match chunk.logits {
                LogitsWanted::None => vec![],
                LogitsWanted::Last => vec![end],
                LogitsWanted::All => (chunk.start_pos + 1..=end).collect(),
            };
            for &upto in &wanted {
                let mut context = Vec::with_capacity(upto);
                for pos in 0..upto {
                    let t = cache.slots[slot(chunk.block_table, pos)?];
                    if t == u32::MAX {
                        return Err(ModelError::InvalidBatch(format!(
                            "position {pos} read before it was written"
                        )));
                    }
                    context.push(t);
                }
                values.extend(self.logits_after(&context));
            }
            seq_rows.push((rows, wanted.len()));
            rows += wanted.len();
        }
        Ok(StepLogits {
            vocab: self.vocab,
            values,
            seq_rows,
        })
    }
    fn copy_block(cache: &mut FakeCache, src: u32, dst: u32) -> Result<(), ModelError> {
        let bs = cache.block_size;
        let (s, d) = (src as usize * bs, dst as usize * bs);
        cache.slots.copy_within(s..s + bs, d);
        Ok(())
    }
}
