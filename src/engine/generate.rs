//! One request generated start to finish (the CLI's `generate` and `bench`, and the reference tests):
//! a one-request client of the continuous-batching `Engine`, as vLLM's offline `LLM` wraps its engine
//! core, so the command line runs the very path that serves users (chunked prefill included).
use super::sampler::SamplingParams;
pub use super::scheduler::FinishReason;
use super::scheduler::{
    AdmissionError, CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent,
};
use super::speculate::SpecConfig;
use super::step_model::StepModel;
use inhaus_models::ModelError;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
    pub stop_ids: Vec<u32>,
    /// Prompt tokens per forward during prefill (the engine's `max_num_batched_tokens`).
    pub prefill_chunk: usize,
    /// Speculative decoding, if on.
    pub speculative: Option<SpecConfig>,
}

#[derive(Clone, Debug)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    /// From the start until the first token was out.
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    /// From the first token to the end.
    pub decode_time: Duration,
    pub finish: FinishReason,
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the model's context of {context} tokens")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("the engine failed while generating (see the log)")]
    Failed,
    #[error("the engine ended the request without finishing it")]
    Unfinished,
}

/// Tokens per KV block of the one-request engine.
const BLOCK_SIZE: usize = 16;

/// The engine configuration that holds exactly one request of `total` tokens.
fn one_request_config(total: usize, opts: &GenerateOptions) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: opts.prefill_chunk.max(1),
        block_size: BLOCK_SIZE,
        num_blocks: total.div_ceil(BLOCK_SIZE).max(1),
        max_waiting: 1,
        speculative: opts.speculative.clone(),
    }
}

/// Generates after `prompt`; `on_token(id)` sees each new token as it comes and may return `false`
/// to cancel the rest (the request then ends `Cancelled`).
pub fn generate<M: StepModel>(
    model: &M,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerateStats), GenerateError> {
    // Checked before the engine sizes its KV cache for the request.
    let total = prompt.len().saturating_add(opts.max_tokens);
    let context = model.context_len();
    if total > context {
        return Err(GenerateError::TooLong {
            prompt: prompt.len(),
            max_tokens: opts.max_tokens,
            context,
        });
    }
    let cfg = one_request_config(total, opts);
    let mut engine = Engine::try_new(model, cfg)?;
    let req = GenerationRequest {
        sampling: opts.sampling.clone(),
        stop_ids: opts.stop_ids.clone(),
        ignore_eos: opts.ignore_eos,
        ..GenerationRequest::new(prompt.to_vec(), opts.max_tokens)
    };
    let (tx, rx) = mpsc::channel();
    let cancel = CancelHandle::new(1);
    let t0 = Instant::now();
    engine.add_request(req, tx, cancel.clone())?;
    let mut first_at = None;
    let mut generated = Vec::new();
    let mut finish = None;
    while engine.has_work() {
        let computed = engine.step()?;
        for event in rx.try_iter() {
            match event {
                SeqEvent::Token { id, .. } => {
                    first_at.get_or_insert_with(Instant::now);
                    generated.push(id);
                    if !on_token(id) {
                        cancel.cancel_all();
                    }
                }
                SeqEvent::Finished { reason, .. } => finish = Some(reason),
            }
        }
        if computed == 0 && engine.num_running() == 0 && engine.num_waiting() > 0 {
            // Admission checked that the request fits: waiting with nothing running is a bug.
            return Err(GenerateError::Unfinished);
        }
    }
    let end = Instant::now();
    let first_at = first_at.unwrap_or(end);
    let finish = finish.ok_or(GenerateError::Unfinished)?;
    if finish == FinishReason::Error {
        // The engine ends a request that failed alone with `Error` (and logs why) rather than
        // failing the step: for a one-request client that is the run's failure.
        return Err(GenerateError::Failed);
    }
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        prompt_time: first_at.duration_since(t0),
        generated_tokens: generated.len(),
        decode_time: end.duration_since(first_at),
        finish,
    };
    Ok((generated, stats))
}
