//! inhaus: an on-premises, OpenAI-compatible inference server for open-weight language models.
//!
//! Data flows one way: CLI / HTTP → engine → models → kernels.
pub mod api;
pub mod audit;
pub mod bench;
pub mod catalog;
pub mod chat_template;
pub mod digest;
pub mod embeddings;
pub mod engine;
pub mod fetch;
pub mod grammar;
pub mod keys;
pub mod loader;
pub mod provenance;
pub mod tokenizer;
