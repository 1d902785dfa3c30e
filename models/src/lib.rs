//! inhaus models: open-weight decoder architectures with one batched forward over a paged KV cache.
//!
//! - [`gguf`]: the GGUF file (memory-mapped) and typed metadata access.
//! - [`weights`]: weight matrices and vectors borrowed from the mapped file.
//! - [`kv_cache`]: the paged KV cache the caller (the engine) owns.
//! - [`batch`]: what one step computes: new tokens of several sequences, their positions and blocks.
//! - [`transformer`]: the shared decoder (attention with GQA + RoPE, gated MLP, RMSNorm).
//! - [`arch`]: per-architecture differences (Gemma 3, Qwen 2, Llama) read from GGUF metadata.
//! - [`decoder`]: the device-generic candle decoder for Hugging Face safetensors checkpoints.
//! - [`forward`]: the served model, whichever backend holds it.
//! - [`bert`]: the BERT encoder of sentence-embedding models, loaded from safetensors.
pub mod arch;
pub mod batch;
pub mod bert;
pub mod decoder;
pub mod error;
pub mod forward;
pub mod gguf;
pub mod kv_cache;
pub mod transformer;
pub mod weights;

pub use batch::{Batch, LogitsWanted, SeqChunk, StepLogits};
pub use bert::{BertConfig, BertError, BertModel, BertOutput};
pub use decoder::{CandleDecoder, PagedKv};
pub use error::ModelError;
pub use forward::{Forward, ForwardCache};
pub use gguf::GgufFile;
pub use kv_cache::{KvCache, KvCacheShape};
pub use transformer::{ModelConfig, Transformer};

pub type Result<T> = std::result::Result<T, ModelError>;
