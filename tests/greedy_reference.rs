//! The forward must reproduce llama.cpp on the same GGUF files: identical greedy tokens (a divergence is
//! accepted only right after a near-tie in llama.cpp's top two) and top-5 log-probabilities within
//! `LOGPROB_TOL` nats. Checked twice: teacher-forced over llama.cpp's own continuation in one batched
//! forward (every step compared), and free-running through the decode loop.
mod common;
use common::*;
use inhaus::engine::generate::{generate, GenerateOptions};
use inhaus::engine::sampler::{argmax, log_softmax, SamplingParams};
use inhaus_models::{Batch, KvCache, LogitsWanted, SeqChunk};

/// Tolerances for top-5 log-probabilities against llama.cpp, in nats. Both runtimes re-quantize the
/// activations to 8 bits before every matmul, so a different summation order flips the rounding of some
/// activations and the logits jitter; llama.cpp also runs flash attention with f16 queries and an f16
/// value accumulator. The jitter is the same size between inhaus's own scalar, AVX2 and VNNI paths as
/// between inhaus and llama.cpp (measured 2026-11-25 on gemma-3-270m, teacher-forced fixtures: own
/// paths differ by mean 0.10 / max 0.63 nats; inhaus vs llama.cpp mean 0.12-0.13 / max 0.63-1.08;
/// SmolLM2 mean 0.10 / max 0.72; Qwen 0.5B mean 0.06 / max 0.37). Regenerate with
/// `INHAUS_DEBUG_LOGPROBS=1 cargo test --release --test greedy_reference -- --nocapture`.
const LOGPROB_MAX: f64 = 1.5;
const LOGPROB_MEAN: f64 = 0.15;
/// A step whose reference top-2 log-probabilities are closer than this is a near-tie: inside the
/// jitter above, the two can swap (seen: a 0.39-nat gap in llama.cpp that inhaus's Gemma run reverses).
const NEAR_TIE: f64 = 0.5;

struct Step {
    token: u32,
    top: Vec<(u32, f64)>,
}

fn steps(case: &serde_json::Value) -> Vec<Step> {
    case["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| Step {
            token: s["token"].as_u64().expect("token") as u32,
            top: s["top"]
                .as_array()
                .expect("top")
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().expect("id") as u32,
                        p[1].as_f64().expect("logprob"),
                    )
                })
                .collect(),
        })
        .collect()
}

fn near_tie(s: &Step) -> bool {
    s.top.len() >= 2 && s.top[0].1 - s.top[1].1 < NEAR_TIE
}

fn check_model(alias: &str) {
    let m = model(alias);
    let fx = fixture(alias, "greedy.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8, "{alias}: too few greedy cases");
    let mut worst = 0f64;
    let (mut sum, mut count) = (0f64, 0usize);
    let mut notes = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let prompt_ids = ids(&case["prompt_ids"]);
        let ours = m.tokenizer.encode(prompt, true).expect("encode");
        assert_eq!(
            ours, prompt_ids,
            "{alias} case {ci}: prompt tokenization differs"
        );
        let steps = steps(case);

        // Teacher-forced: prompt + reference continuation in one forward, logits for every position.
        let mut seq = prompt_ids.clone();
        seq.extend(steps.iter().take(steps.len() - 1).map(|s| s.token));
        let blocks = seq.len().div_ceil(16);
        let mut cache = KvCache::new(m.model.config.kv_shape(16, blocks));
        let table: Vec<u32> = (0..blocks as u32).collect();
        let batch = Batch {
            seqs: vec![SeqChunk {
                tokens: &seq,
                start_pos: 0,
                block_table: &table,
                logits: LogitsWanted::All,
            }],
        };
        let out = m.model.forward(&batch, &mut cache).expect("forward");
        for (i, s) in steps.iter().enumerate() {
            let logits = out.row(0, prompt_ids.len() - 1 + i);
            let lp = log_softmax(logits);
            let got = argmax(logits);
            if got != s.token {
                assert!(
                    near_tie(s),
                    "{alias} case {ci} step {i}: inhaus picks {got}, llama.cpp {} (top {:?}; ours {:.4} vs {:.4})",
                    s.token,
                    &s.top[..2],
                    lp[got as usize],
                    lp[s.token as usize]
                );
                notes.push(format!(
                    "case {ci} step {i}: near-tie, inhaus {got} vs llama.cpp {}",
                    s.token
                ));
            }
            for &(id, want) in &s.top {
                let d = (lp[id as usize] - want).abs();
                worst = worst.max(d);
                sum += d;
                count += 1;
                if std::env::var("INHAUS_DEBUG_LOGPROBS").is_ok() {
                    eprintln!(
                        "case {ci} step {i} id {id}: inhaus {:.4} llama.cpp {want:.4} diff {d:.4}",
                        lp[id as usize]
                    );
                }
                assert!(
                    d <= LOGPROB_MAX,
                    "{alias} case {ci} step {i}: logprob of {id} is {:.4}, llama.cpp {want:.4}",
                    lp[id as usize]
                );
            }
        }

        // Free-running greedy decode through the one-token-per-step path.
        let opts = GenerateOptions {
            max_tokens: steps.len(),
            sampling: SamplingParams::default(),
            ignore_eos: true,
            stop_ids: vec![],
            prefill_chunk: 512,
        };
        let (gen, _) = generate(&m.model, &prompt_ids, &opts, |_| true).expect("generate");
        if let Some(i) = gen.iter().zip(&steps).position(|(g, s)| *g != s.token) {
            assert!(
                near_tie(&steps[i]),
                "{alias} case {ci}: free-running greedy diverges at step {i} ({} vs llama.cpp {}) without a near-tie",
                gen[i],
                steps[i].token
            );
            notes.push(format!(
                "case {ci}: free-running diverges at step {i} after a near-tie"
            ));
        }
    }
    let mean = sum / count.max(1) as f64;
    eprintln!(
        "{alias}: top-5 logprob difference mean {mean:.4}, max {worst:.4} nats; {}",
        if notes.is_empty() {
            "no divergences".to_string()
        } else {
            notes.join("; ")
        }
    );
    assert!(
        mean <= LOGPROB_MEAN,
        "{alias}: mean top-5 logprob difference {mean:.4} nats"
    );
}

#[test]
fn gemma_greedy_matches_llama_cpp() {
    check_model("gemma-3-270m");
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    check_model("smollm2-135m-instruct");
}

#[test]
fn qwen_greedy_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b-instruct");
}
