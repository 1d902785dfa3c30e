//! What the engine needs from a model: one batched forward over a paged KV cache it owns. The served
//! [`Forward`] (either backend) implements it, and so does the own-kernel `Transformer` alone; so can
//! a test double (the scheduler's property tests use a deterministic fake model,
//! `tests/common/fake_model.rs`).
use inhaus_models::{Batch, Forward, ForwardCache, KvCache, ModelError, StepLogits, Transformer};

pub trait StepModel {
    type Cache;
    fn context_len(&self) -> usize;
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<Self::Cache, ModelError>;
    fn forward(&self, batch: &Batch, cache: &mut Self::Cache) -> Result<StepLogits, ModelError>;
    fn copy_block(cache: &mut Self::Cache, src: u32, dst: u32) -> Result<(), ModelError>;
}

impl StepModel for Transformer {
    type Cache = KvCache;
    fn context_len(&self) -> usize {
        self.config.context_len
    }
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<KvCache, ModelError> {
        Ok(KvCache::new(self.config.kv_shape(block_size, num_blocks)))
    }
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<StepLogits, ModelError> {
        Transformer::forward(self, batch, cache)
    }
    fn copy_block(cache: &mut KvCache, src: u32, dst: u32) -> Result<(), ModelError> {
        cache.copy_block(src, dst);
        Ok(())
    }
}

impl StepModel for Forward {
    type Cache = ForwardCache;
    fn context_len(&self) -> usize {
        Forward::context_len(self)
    }
    fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<ForwardCache, ModelError> {
        Forward::new_cache(self, block_size, num_blocks)
    }
    fn forward(&self, batch: &Batch, cache: &mut ForwardCache) -> Result<StepLogits, ModelError> {
        Forward::forward(self, batch, cache)
    }
    fn copy_block(cache: &mut ForwardCache, src: u32, dst: u32) -> Result<(), ModelError> {
        cache.copy_block(src, dst)
    }
}
