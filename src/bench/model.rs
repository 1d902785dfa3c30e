//! Speed of one model in-process (`inhaus bench model`), measured as llama.cpp's `llama-bench` does it:
//! prefill of a prompt of random tokens in one batch, and decode of `gen` tokens one at a time from an
//! empty context; medians of repeats.
use crate::engine::generate::{generate, GenerateError, GenerateOptions};
use crate::engine::sampler::SamplingParams;
use inhaus_models::Forward;

#[derive(Clone, Copy, Debug)]
pub struct SpeedReport {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median prefill and decode tok/s over `repeats` runs (after one warm-up that pages in the weights).
pub fn speed(
    model: &Forward,
    prompt: usize,
    gen: usize,
    repeats: usize,
) -> Result<SpeedReport, GenerateError> {
    // Ordinary tokens from the middle of the vocabulary, away from special ones.
    let lo = (model.vocab() as u64 / 10).min(1000);
    let span = (model.vocab() as u64).min(30_000).saturating_sub(lo).max(1);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let prompt_ids: Vec<u32> = (0..prompt.max(1))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (lo + state % span) as u32
        })
        .collect();
    let opts = |max_tokens| GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        ignore_eos: true,
        stop_ids: vec![],
        prefill_chunk: prompt.max(1),
        speculative: None,
    };
    generate(model, &prompt_ids[..prompt.clamp(1, 16)], &opts(2), |_| {
        true
    })?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..repeats.max(1) {
        if prompt > 0 {
            let (_, s) = generate(model, &prompt_ids, &opts(1), |_| true)?;
            pp.push(prompt as f64 / s.prompt_time.as_secs_f64());
        }
        if gen > 0 {
            let (_, s) = generate(model, &prompt_ids[..1], &opts(gen + 1), |_| true)?;
            tg.push(gen as f64 / s.decode_time.as_secs_f64());
        }
    }
    Ok(SpeedReport {
        prefill_tok_s: median(pp),
        decode_tok_s: median(tg),
    })
}
