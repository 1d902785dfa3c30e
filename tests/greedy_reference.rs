//! The forward and the engine must reproduce llama.cpp on the same GGUF files: identical greedy tokens
//! (a divergence is accepted only right after a near-tie in llama.cpp's top two) and top-5
//! log-probabilities within each model's tolerance. Checked teacher-forced over llama.cpp's own
//! continuation in one batched forward (every step compared), and free-running through the engine that
//! serves users: `generate()` (the CLI's path), a prompt prefilled in chunks of 7 tokens, and the same
//! prompt a second time from the prefix cache (log-probabilities from the engine's `logprobs`).
mod common;
use common::*;
use inhaus::engine::generate::{generate, GenerateOptions};
use inhaus::engine::sampler::{argmax, log_softmax, SamplingParams, TokenLogprobs};
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use inhaus_models::{Batch, LogitsWanted, SeqChunk};

/// Tolerances for top-5 log-probabilities against llama.cpp, in nats: (max, mean), per model. Both
/// runtimes re-quantize the activations to 8 bits before every matmul, so a different summation order
/// flips the rounding of some activations and the logits jitter (most in the tail of the top 5, near
/// -10 nats); llama.cpp also runs flash attention with f16 queries and an f16 value accumulator. The
/// jitter is the same size between inhaus's own SIMD paths as between inhaus and llama.cpp.
///
/// Measured 2026-11-28 over the teacher-forced forward and the engine's chunked and prefix-cached runs,
/// on an AVX-512 VNNI machine with the detected path and with `INHAUS_SIMD=avx2` (worst path's mean /
/// overall max, nats):
/// - gemma-3-270m: mean 0.121 / max 1.25 (AVX-512), mean 0.135 / max 1.18 (AVX2). The limits stay at
///   0.15 / 1.5 (1.1x / 1.2x the worst measured): Gemma's jitter leaves nothing to tighten.
/// - smollm2-135m-instruct: mean 0.099 / max 0.72 (AVX-512), mean 0.093 / max 0.78 (AVX2); limits
///   0.13 / 1.0 (1.3x).
/// - qwen2.5-coder-0.5b-instruct: mean 0.055 / max 0.38 (AVX-512), mean 0.053 / max 0.43 (AVX2);
///   limits 0.072 / 0.55 (1.3x).
///
/// Regenerate with `INHAUS_DEBUG_LOGPROBS=1 cargo test --release --test greedy_reference -- --nocapture`
/// (and again with `INHAUS_SIMD=avx2`).
fn tolerance(alias: &str) -> (f64, f64) {
    match alias {
        "gemma-3-270m" => (1.5, 0.15),
        "smollm2-135m-instruct" => (1.0, 0.13),
        "qwen2.5-coder-0.5b-instruct" => (0.55, 0.072),
        other => panic!("no logprob tolerance for {other}"),
    }
}
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

/// Top-5 log-probability differences against llama.cpp over one path.
#[derive(Default)]
struct Jitter {
    worst: f64,
    sum: f64,
    count: usize,
    /// Reference top-5 ids that fell out of the engine's top-5 (compared with its 5th as a bound).
    missing: usize,
}

impl Jitter {
    fn add(&mut self, d: f64) {
        self.worst = self.worst.max(d);
        self.sum += d;
        self.count += 1;
    }
    fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
    fn merge(&mut self, o: &Jitter) {
        self.worst = self.worst.max(o.worst);
        self.sum += o.sum;
        self.count += o.count;
        self.missing += o.missing;
    }
}

fn debug() -> bool {
    std::env::var("INHAUS_DEBUG_LOGPROBS").is_ok()
}

/// Compares a free-running greedy run (its tokens and the engine's top-5 log-probabilities, if
/// any) with llama.cpp's steps up to the first divergence, which must follow a near-tie.
fn compare_run(
    ctx: &str,
    steps: &[Step],
    tokens: &[u32],
    logprobs: Option<&[TokenLogprobs]>,
    max_tol: f64,
    jitter: &mut Jitter,
    notes: &mut Vec<String>,
) {
    assert_eq!(tokens.len(), steps.len(), "{ctx}: generated token count");
    for (i, (s, &got)) in steps.iter().zip(tokens).enumerate() {
        if let Some(lps) = logprobs {
            let ours = &lps[i];
            assert!(ours.top.len() == 5, "{ctx} step {i}: top-5 asked");
            for &(id, want) in &s.top {
                let d = match ours.top.iter().find(|&&(t, _)| t == id) {
                    Some(&(_, lp)) => {
                        let d = (lp as f64 - want).abs();
                        jitter.add(d);
                        d
                    }
                    None => {
                        // Below our 5th: at least this far from llama.cpp (a bound, so it
                        // counts toward the maximum but not the mean).
                        jitter.missing += 1;
                        let d = (want - ours.top[4].1 as f64).max(0.0);
                        jitter.worst = jitter.worst.max(d);
                        d
                    }
                };
                if debug() {
                    eprintln!("{ctx} step {i} id {id}: llama.cpp {want:.4} diff {d:.4}");
                }
                assert!(
                    d <= max_tol,
                    "{ctx} step {i}: logprob of {id} differs from llama.cpp's {want:.4} by {d:.4} (ours {:?})",
                    ours.top
                );
            }
        }
        if got != s.token {
            assert!(
                near_tie(s),
                "{ctx}: diverges at step {i} ({got} vs llama.cpp {}) without a near-tie (top {:?})",
                s.token,
                &s.top[..2]
            );
            notes.push(format!("{ctx}: diverges at step {i} after a near-tie"));
            return;
        }
    }
}

/// Greedy with the engine's top-5 log-probabilities, to the last reference step.
fn request(prompt: &[u32], max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        sampling: SamplingParams {
            logprobs: Some(5),
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..GenerationRequest::new(prompt.to_vec(), max_tokens)
    }
}

/// Runs `req` alone to completion on `engine`: its tokens and their log-probabilities.
fn run(engine: &mut Engine<'_>, req: GenerationRequest) -> (Vec<u32>, Vec<TokenLogprobs>) {
    let (tx, rx) = std::sync::mpsc::channel();
    engine
        .add_request(req, tx, CancelHandle::new(1))
        .expect("admitted");
    engine.run_to_completion().expect("engine run");
    let (mut tokens, mut lps) = (Vec::new(), Vec::new());
    for ev in rx.try_iter() {
        if let SeqEvent::Token { id, logprobs, .. } = ev {
            tokens.push(id);
            lps.push(logprobs.expect("logprobs asked"));
        }
    }
    (tokens, lps)
}

fn engine_config(block_size: usize, max_num_batched_tokens: usize, tokens: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 4,
        max_num_batched_tokens,
        block_size,
        // Room for two runs without evicting the first one's cached blocks.
        num_blocks: 2 * tokens.div_ceil(block_size) + 2,
        max_waiting: 4,
        speculative: None,
    }
}

fn check_model(alias: &str) {
    let m = model(alias);
    let (max_tol, mean_tol) = tolerance(alias);
    let fx = fixture(alias, "greedy.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8, "{alias}: too few greedy cases");
    let mut forced = Jitter::default();
    let mut chunked = Jitter::default();
    let mut cached = Jitter::default();
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
        let n = steps.len();

        // Teacher-forced: prompt + reference continuation in one forward, logits for every position.
        let mut seq = prompt_ids.clone();
        seq.extend(steps.iter().take(n - 1).map(|s| s.token));
        let blocks = seq.len().div_ceil(16);
        let mut cache = m.model.new_cache(16, blocks).expect("cache");
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
                forced.add(d);
                if debug() {
                    eprintln!(
                        "{alias} case {ci} forced step {i} id {id}: inhaus {:.4} llama.cpp {want:.4} diff {d:.4}",
                        lp[id as usize]
                    );
                }
                assert!(
                    d <= max_tol,
                    "{alias} case {ci} step {i}: logprob of {id} is {:.4}, llama.cpp {want:.4}",
                    lp[id as usize]
                );
            }
        }

        // Free-running through `generate()`, the CLI's one-request engine (tokens only).
        let opts = GenerateOptions {
            max_tokens: n,
            sampling: SamplingParams::default(),
            ignore_eos: true,
            stop_ids: vec![],
            prefill_chunk: 512,
            speculative: None,
        };
        let (gen, _) = generate(&m.model, &prompt_ids, &opts, |_| true).expect("generate");
        let ctx = format!("{alias} case {ci} generate()");
        compare_run(
            &ctx,
            &steps,
            &gen,
            None,
            max_tol,
            &mut Jitter::default(),
            &mut notes,
        );

        // A chunked prompt: 7 tokens a step, so chunks straddle the 16-token blocks.
        let total = prompt_ids.len() + n;
        let mut engine = Engine::new(&m.model, engine_config(16, 7, total));
        let (toks, lps) = run(&mut engine, request(&prompt_ids, n));
        let ctx = format!("{alias} case {ci} chunked");
        compare_run(
            &ctx,
            &steps,
            &toks,
            Some(&lps),
            max_tol,
            &mut chunked,
            &mut notes,
        );

        // A prefix-cache hit: the prompt once (one token), then again from its cached blocks.
        // Blocks of 2 tokens, so even the shortest prompt has a full block to reuse.
        let mut engine = Engine::new(&m.model, engine_config(2, 512, total));
        let (toks, lps) = run(&mut engine, request(&prompt_ids, 1));
        let ctx = format!("{alias} case {ci} first run");
        compare_run(
            &ctx,
            &steps[..1],
            &toks,
            Some(&lps),
            max_tol,
            &mut cached,
            &mut notes,
        );
        let hits = engine.pool().stats().hits;
        let (toks, lps) = run(&mut engine, request(&prompt_ids, n));
        let reused = engine.pool().stats().hits - hits;
        assert_eq!(
            reused as usize,
            (prompt_ids.len() - 1) / 2,
            "{alias} case {ci}: the second run must start from the cached prompt blocks"
        );
        let ctx = format!("{alias} case {ci} prefix-cached");
        compare_run(
            &ctx,
            &steps,
            &toks,
            Some(&lps),
            max_tol,
            &mut cached,
            &mut notes,
        );
    }
    let mut all = Jitter::default();
    for (path, j) in [
        ("teacher-forced", &forced),
        ("engine chunked", &chunked),
        ("engine prefix-cached", &cached),
    ] {
        eprintln!(
            "{alias} {path}: top-5 logprob difference mean {:.4}, max {:.4} nats over {} ({} out of our top-5)",
            j.mean(),
            j.worst,
            j.count,
            j.missing
        );
        all.merge(j);
    }
    eprintln!(
        "{alias}: mean {:.4}, max {:.4} nats (limits {mean_tol} / {max_tol}); {}",
        all.mean(),
        all.worst,
        if notes.is_empty() {
            "no divergences".to_string()
        } else {
            notes.join("; ")
        }
    );
    for (path, j) in [
        ("teacher-forced", &forced),
        ("engine chunked", &chunked),
        ("engine prefix-cached", &cached),
    ] {
        assert!(
            j.mean() <= mean_tol,
            "{alias} {path}: mean top-5 logprob difference {:.4} nats",
            j.mean()
        );
    }
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
