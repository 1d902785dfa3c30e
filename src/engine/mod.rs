//! The engine: the KV block pool (paged cache bookkeeping, prefix caching), sampling, and the
//! generation loop over the batched forward.
pub mod block_pool;
pub mod constraint;
mod draw;
pub mod fair_share;
pub mod generate;
pub mod handle;
pub mod heap;
pub mod metrics;
pub mod request;
pub mod sampler;
pub mod scheduler;
mod seq;
pub mod speculate;
pub mod step_model;
