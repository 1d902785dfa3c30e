//! What the engine needs from a model: one batched forward over a paged KV cache it owns. The real
//! `Transformer` implements it; so can a test double (the scheduler's property tests use a
//! deterministic fake model, `tests/common/fake_model.rs`).
use inhaus_models::{Batch, KvCache, ModelError, StepLogits, Transformer};

pub trait StepModel {
    type Cache;
    fn context_len(&self) -> usize;
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> Self::Cache;
    fn forward(&self, batch: &Batch, cache: &mut Self::Cache) -> Result<StepLogits, ModelError>;
    fn copy_block(cache: &mut Self::Cache, src: u32, dst: u32);
}

impl StepModel for Transformer {
    type Cache = KvCache;
    fn context_len(&self) -> usize {
        self.config.context_len
    }
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> KvCache {
        KvCache::new(self.config.kv_shape(block_size, num_blocks))
    }
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<StepLogits, ModelError> {
        Transformer::forward(self, batch, cache)
    }
    fn copy_block(cache: &mut KvCache, src: u32, dst: u32) {
        cache.copy_block(src, dst);
    }
}
