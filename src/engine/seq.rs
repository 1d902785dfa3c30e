//! A sequence in the engine: one choice of a request with its tokens, its KV blocks, its sampler,
//! constraint and speculation state, and where its events go.
use super::block_pool::{BlockHash, BlockId};
use super::constraint::SeqConstraint;
use super::fair_share::Tenant;
use super::request::{CancelHandle, SeqEvent, SeqId};
use super::sampler::{Sampler, SamplingParams};
use super::speculate::SpecState;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

/// A request's latency bookkeeping, shared by its choices: its arrival, whether its first token
/// was seen (TTFT is recorded once), and how many choices are still open (end-to-end latency is
/// recorded when the last one ends).
#[derive(Debug)]
pub(super) struct RequestClock {
    pub(super) arrival: Instant,
    pub(super) first_token: AtomicBool,
    pub(super) open: AtomicUsize,
}

impl RequestClock {
    pub(super) fn new(n: usize) -> Self {
        Self {
            arrival: Instant::now(),
            first_token: AtomicBool::new(false),
            open: AtomicUsize::new(n.max(1)),
        }
    }
}

pub(super) struct Seq {
    pub(super) id: SeqId,
    /// Which of the request's choices this sequence generates.
    pub(super) choice: usize,
    /// Choices still to fork from this sequence once its prompt is computed.
    pub(super) forks: Vec<usize>,
    pub(super) cancel: CancelHandle,
    pub(super) clock: Arc<RequestClock>,
    pub(super) last_token_at: Option<Instant>,
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub(super) num_computed: usize,
    pub(super) table: Vec<BlockId>,
    /// Full blocks registered for prefix reuse, and the hash of the last one.
    pub(super) registered: usize,
    pub(super) last_hash: Option<BlockHash>,
    pub(super) sampler: Sampler,
    pub(super) max_tokens: usize,
    pub(super) min_tokens: usize,
    pub(super) stop_ids: Vec<u32>,
    pub(super) ignore_eos: bool,
    pub(super) constraint: Option<SeqConstraint>,
    /// Its prompt was looked up in the prefix cache once (retries do not count again).
    pub(super) prefix_looked_up: bool,
    pub(super) tenant: Option<Tenant>,
    pub(super) tx: Sender<SeqEvent>,
    /// Speculation's state for this sequence, and this step's guesses (empty when none).
    pub(super) spec: SpecState,
    pub(super) draft: Vec<u32>,
}

impl Seq {
    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    pub(super) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled(self.choice)
            && self.forks.iter().all(|&c| self.cancel.is_cancelled(c))
    }
}

/// The request's sampling parameters with its original seed (a sequence's sampler holds its
/// choice's offset seed).
pub(super) fn request_params(seq: &Seq) -> SamplingParams {
    let mut p = seq.sampler.params().clone();
    p.seed = p.seed.map(|s| s.wrapping_sub(seq.choice as u64));
    p
}

/// The sampler for `choice` of a request: choice `i` of a seeded request is seeded `seed + i`.
pub(super) fn choice_sampler(params: &SamplingParams, prompt: &[u32], choice: usize) -> Sampler {
    let mut p = params.clone();
    p.seed = p.seed.map(|s| s.wrapping_add(choice as u64));
    Sampler::with_prompt(p, prompt)
}
