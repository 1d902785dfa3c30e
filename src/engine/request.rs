//! What a request is to the engine and what comes back: the request (`GenerationRequest`), the
//! events of its choices (`SeqEvent`), how it ended (`FinishReason`), the handle that cancels it and
//! why it was refused (`AdmissionError`).
use super::constraint::Constraint;
use super::fair_share::Tenant;
use super::sampler::{SamplingParams, TokenLogprobs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (or stop condition) was produced.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The receiver went away (the client disconnected) or the request was cancelled.
    Cancelled,
    /// The engine failed while computing the sequence.
    Error,
}

/// Identifies a sequence for its whole life in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// What a caller asks the engine to generate.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Stop tokens cannot be drawn before this many tokens are generated.
    pub min_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Choices to generate from the one prompt (`n` in the API); they share the prompt's KV blocks.
    /// Choice `i` samples with seed `seed + i` when a seed is given.
    pub n: usize,
    /// The grammar the output must follow, if any (each choice gets its own copy).
    pub constraint: Option<Constraint>,
    /// Whose request it is: seats are shared fairly between tenants (see `fair_share`).
    pub tenant: Option<Tenant>,
}

impl GenerationRequest {
    /// A request for one choice with default sampling (greedy).
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            min_tokens: 0,
            stop_ids: Vec::new(),
            ignore_eos: false,
            n: 1,
            constraint: None,
            tenant: None,
        }
    }
}

/// What the engine sends back for each choice of a request, in order: tokens, then exactly one
/// `Finished`. Events of different choices interleave.
#[derive(Clone, Debug, PartialEq)]
pub enum SeqEvent {
    Token {
        choice: usize,
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        choice: usize,
        reason: FinishReason,
    },
}

/// Cancels a request's choices from any thread; the engine frees them at its next step.
#[derive(Clone, Debug)]
pub struct CancelHandle(Arc<[AtomicBool]>);

impl CancelHandle {
    pub fn new(n: usize) -> Self {
        Self((0..n.max(1)).map(|_| AtomicBool::new(false)).collect())
    }
    pub fn cancel(&self, choice: usize) {
        if let Some(f) = self.0.get(choice) {
            f.store(true, Ordering::Relaxed);
        }
    }
    pub fn cancel_all(&self) {
        for f in self.0.iter() {
            f.store(true, Ordering::Relaxed);
        }
    }
    pub fn is_cancelled(&self, choice: usize) -> bool {
        self.0.get(choice).is_none_or(|f| f.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum AdmissionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the context of {limit} tokens")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("too many requests are waiting; retry later")]
    QueueFull,
    #[error("n must be between 1 and {max}")]
    BadChoiceCount { max: usize },
}
