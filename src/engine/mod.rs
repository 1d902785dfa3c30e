//! The engine: sampling and the generation loop over the batched forward and paged KV cache.
pub mod generate;
pub mod sampler;
