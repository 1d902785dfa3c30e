//! One sequence generated start to finish over the batched forward (the CLI's `generate` and `bench`,
//! and the reference tests). The continuous-batching scheduler drives the same forward for many.
use super::sampler::{Sampler, SamplingParams};
use inhaus_models::{Batch, KvCache, LogitsWanted, ModelError, SeqChunk, Transformer};
use std::time::{Duration, Instant};

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (or stop condition) was produced.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The receiver went away (the client disconnected).
    Cancelled,
    /// The engine failed while computing the sequence.
    Error,
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub ignore_eos: bool,
    pub stop_ids: Vec<u32>,
    /// Prompt tokens per forward during prefill.
    pub prefill_chunk: usize,
}

#[derive(Clone, Debug)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    pub decode_time: Duration,
    pub finish: FinishReason,
}

/// Tokens per KV block of the single-sequence runner.
const BLOCK_SIZE: usize = 16;

/// Generates after `prompt`; `on_token(id, logits)` sees each new token and the logits it was drawn
/// from, and may return `false` to stop early.
pub fn generate(
    model: &Transformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32, &[f32]) -> bool,
) -> Result<(Vec<u32>, GenerateStats), ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidBatch("empty prompt".into()));
    }
    let total = prompt.len() + opts.max_tokens;
    let context = model.config.context_len;
    if total > context {
        return Err(ModelError::InvalidBatch(format!(
            "prompt ({} tokens) + max_tokens ({}) exceeds the model's context of {context} tokens",
            prompt.len(),
            opts.max_tokens
        )));
    }
    let num_blocks = total.div_ceil(BLOCK_SIZE);
    let mut cache = KvCache::new(model.config.kv_shape(BLOCK_SIZE, num_blocks));
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let mut sampler = Sampler::with_prompt(opts.sampling.clone(), prompt);

    let t0 = Instant::now();
    let mut logits = Vec::new();
    let chunk = opts.prefill_chunk.max(1);
    let mut pos = 0;
    while pos < prompt.len() {
        let end = (pos + chunk).min(prompt.len());
        let last = end == prompt.len();
        let batch = Batch {
            seqs: vec![SeqChunk {
                tokens: &prompt[pos..end],
                start_pos: pos,
                block_table: &table,
                logits: if last {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            }],
        };
        let out = model.forward(&batch, &mut cache)?;
        if last {
            logits = out.last(0).map(|l| l.to_vec()).unwrap_or_default();
        }
        pos = end;
    }
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let mut generated = Vec::new();
    let mut finish = FinishReason::Length;
    while generated.len() < opts.max_tokens {
        let next = sampler.sample_with(&logits, &[], None);
        sampler.observe(next);
        generated.push(next);
        let keep_going = on_token(next, &logits);
        if !opts.ignore_eos && opts.stop_ids.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        if !keep_going {
            finish = FinishReason::Stop;
            break;
        }
        if generated.len() == opts.max_tokens {
            break;
        }
        let tok = [next];
        let batch = Batch {
            seqs: vec![SeqChunk {
                tokens: &tok,
                start_pos: prompt.len() + generated.len() - 1,
                block_table: &table,
                logits: LogitsWanted::Last,
            }],
        };
        let out = model.forward(&batch, &mut cache)?;
        logits = out.last(0).map(|l| l.to_vec()).unwrap_or_default();
    }
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        prompt_time,
        generated_tokens: generated.len(),
        decode_time: t1.elapsed(),
        finish,
    };
    Ok((generated, stats))
}
