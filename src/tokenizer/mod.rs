//! Tokenization: a `tokenizers::Tokenizer` built from GGUF metadata or read from Hugging Face files,
//! the model's special ids, and an incremental detokenizer for streaming.
pub mod detokenizer;
pub mod gguf_tokenizer;
pub mod hf_tokenizer;

pub use detokenizer::IncrementalDecoder;
pub use gguf_tokenizer::{ModelTokenizer, TokenizerError, TokenizerKind};
