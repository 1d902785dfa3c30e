//! Benchmarks: `model` measures one model's prefill and decode speed in-process (`inhaus bench
//! model`); `serve` load-tests any OpenAI-compatible server over HTTP (`inhaus bench serve`, `inhaus
//! bench plot`).
pub mod model;
pub mod serve;

pub use model::{speed, SpeedReport};
