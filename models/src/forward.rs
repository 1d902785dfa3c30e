//! The model a server runs, whichever backend holds it: inhaus's own CPU kernels over a GGUF file
//! ([`Transformer`]), or the device-generic candle decoder ([`CandleDecoder`]). One enum so that the
//! engine, the API and everything built on them see a single type.
use crate::batch::{Batch, StepLogits};
use crate::decoder::{CandleDecoder, PagedKv};
use crate::kv_cache::KvCache;
use crate::transformer::Transformer;
use crate::{ModelError, Result};

// Both variants are large and differ in size; there is one value per served model, never moved on a
// hot path, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Forward {
    /// Own kernels, GGUF on the CPU.
    Native(Transformer),
    /// candle tensors on the CPU or a GPU.
    Candle(CandleDecoder),
}

/// The KV cache of a [`Forward`].
pub enum ForwardCache {
    Native(KvCache),
    Candle(PagedKv),
}

impl Forward {
    /// `native` (own kernels) or `candle`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Native(_) => "native",
            Self::Candle(_) => "candle",
        }
    }
    pub fn architecture(&self) -> &str {
        match self {
            Self::Native(t) => &t.config.architecture,
            Self::Candle(c) => &c.spec.architecture,
        }
    }
    pub fn n_layers(&self) -> usize {
        match self {
            Self::Native(t) => t.config.n_layers,
            Self::Candle(c) => c.spec.n_layers,
        }
    }
    pub fn vocab(&self) -> usize {
        match self {
            Self::Native(t) => t.config.vocab,
            Self::Candle(c) => c.spec.vocab,
        }
    }
    pub fn context_len(&self) -> usize {
        match self {
            Self::Native(t) => t.config.context_len,
            Self::Candle(c) => c.spec.context_len,
        }
    }
    /// Bytes one KV block of `block_size` tokens takes.
    pub fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        match self {
            Self::Native(t) => t.config.kv_shape(block_size, 1).bytes_per_block(),
            Self::Candle(c) => c.kv_bytes_per_block(block_size),
        }
    }
    pub fn new_cache(&self, block_size: usize, num_blocks: usize) -> Result<ForwardCache> {
        Ok(match self {
            Self::Native(t) => {
                ForwardCache::Native(KvCache::new(t.config.kv_shape(block_size, num_blocks)))
            }
            Self::Candle(c) => ForwardCache::Candle(c.new_cache(block_size, num_blocks)?),
        })
    }
    pub fn forward(&self, batch: &Batch, cache: &mut ForwardCache) -> Result<StepLogits> {
        match (self, cache) {
            (Self::Native(t), ForwardCache::Native(kv)) => t.forward(batch, kv),
            (Self::Candle(c), ForwardCache::Candle(kv)) => c.forward(batch, kv),
            _ => Err(ModelError::InvalidBatch(
                "the KV cache belongs to another backend".into(),
            )),
        }
    }
}

impl ForwardCache {
    /// Copies block `src` into block `dst` in every layer (copy-on-write of a shared block).
    pub fn copy_block(&mut self, src: u32, dst: u32) -> Result<()> {
        match self {
            Self::Native(kv) => {
                kv.copy_block(src, dst);
                Ok(())
            }
            Self::Candle(kv) => kv
                .copy_block(src, dst)
                .map_err(|e| ModelError::Backend(e.to_string())),
        }
    }
}
