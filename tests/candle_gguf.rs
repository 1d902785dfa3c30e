//! GGUF files on the candle decoder (`--backend candle`: the matrices kept quantized, candle's
//! quantized matmuls; how GGUF runs on a GPU) against the own-kernel forward, which is checked token
//! for token against llama.cpp (tests/greedy_reference.rs). Both read the same quantized weights but
//! quantize activations differently (candle to q8_K/q8_1, the own kernels to their VNNI formats), so
//! logits differ a little: the top token must agree wherever the own path's top-2 gap is not a
//! near-tie, the logits must stay close, and greedy decoding through the engine must give the same
//! tokens up to the first near-tie. Real models of the three GGUF architectures: SmolLM2 (llama,
//! Q4_1), Qwen2.5-Coder (qwen2, Q4_K_M), Gemma 3 (gemma3, Q4_K_M, sliding windows).
mod common;
use inhaus::engine::generate::{generate, GenerateOptions};
use inhaus::engine::sampler::SamplingParams;
use inhaus::loader::{self, BackendChoice, LoadOptions, LoadedModel};
use inhaus_models::{Batch, LogitsWanted, SeqChunk};

/// A top-2 gap (own kernels) below which the two backends may pick different tokens.
const NEAR_TIE: f32 = 0.5;
/// Largest |candle - own| of a logit, relative to the spread (max - min) of that row's logits.
/// Measured 2026-12-07: worst 0.043 (SmolLM2, Q4_1), 0.023 (Qwen), 0.062 (Gemma 3, whose logits
/// spread over ~54); the top tokens differed only where the own path's top-2 gap was below 0.27.
const LOGIT_SPREAD_TOL: f32 = 0.1;

const MODELS: &[&str] = &[
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "gemma-3-270m",
];

const TEXT: &str = "The quick brown fox jumps over the lazy dog. In Berlin, the invoice \
                    RE-2025-0042 was paid on 17 March: def add(a, b):\n    return a + b\n";

fn load(alias: &str, backend: BackendChoice) -> LoadedModel {
    common::ensure_model(alias);
    let opts = LoadOptions {
        backend,
        ..Default::default()
    };
    loader::load_with(alias, &opts).unwrap_or_else(|e| panic!("load {alias} ({backend:?}): {e}"))
}

/// Every position's logits of one fresh forward over `ids`.
fn all_logits(m: &LoadedModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let block = 16;
    let table: Vec<u32> = (0..ids.len().div_ceil(block) as u32).collect();
    let mut cache = m.model.new_cache(block, table.len()).expect("cache");
    let batch = Batch {
        seqs: vec![SeqChunk {
            tokens: ids,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
        }],
    };
    let out = m.model.forward(&batch, &mut cache).expect("forward");
    (0..ids.len()).map(|i| out.row(0, i).to_vec()).collect()
}

/// The largest logit's index and its lead over the second.
fn top2(row: &[f32]) -> (usize, f32) {
    let (mut best, mut first, mut second) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > first {
            (second, first, best) = (first, v, i);
        } else if v > second {
            second = v;
        }
    }
    (best, first - second)
}

#[test]
fn candle_gguf_agrees_with_the_own_kernels_on_every_position() {
    for alias in MODELS {
        let native = load(alias, BackendChoice::Native);
        let candle = load(alias, BackendChoice::Candle);
        assert_eq!(native.model.backend(), "native");
        assert_eq!(candle.model.backend(), "candle");
        assert_eq!(candle.source.dtype, native.source.dtype, "{alias}");
        let ids = native.tokenizer.encode(TEXT, true).expect("encode");
        let (a, b) = (all_logits(&native, &ids), all_logits(&candle, &ids));
        let (mut compared, mut worst) = (0, 0f32);
        for (pos, (n, c)) in a.iter().zip(&b).enumerate() {
            let spread = n.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                - n.iter().copied().fold(f32::INFINITY, f32::min);
            let diff = n
                .iter()
                .zip(c)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff / spread);
            assert!(
                diff <= LOGIT_SPREAD_TOL * spread,
                "{alias} position {pos}: logits differ by {diff} (spread {spread})"
            );
            let ((tn, gap), (tc, _)) = (top2(n), top2(c));
            if gap >= NEAR_TIE {
                compared += 1;
                assert_eq!(tn, tc, "{alias} position {pos}: top token (own gap {gap})");
            }
        }
        assert!(
            compared * 5 >= ids.len() * 2,
            "{alias}: only {compared} of {} positions are clear",
            ids.len()
        );
        eprintln!(
            "{alias}: top token equal on {compared}/{} clear positions; worst logit difference \
             {worst:.4} of the spread",
            ids.len()
        );
    }
}

#[test]
fn candle_gguf_greedy_through_the_engine_matches_the_own_kernels() {
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        ignore_eos: true,
        stop_ids: Vec::new(),
        prefill_chunk: 5,
        speculative: None,
    };
    for alias in MODELS {
        let native = load(alias, BackendChoice::Native);
        let candle = load(alias, BackendChoice::Candle);
        let ids = native
            .tokenizer
            .encode("Count: 1, 2, 3, 4, 5, 6, 7, 8,", true)
            .expect("encode");
        let (want, _) = generate(&native.model, &ids, &opts, |_| true).expect("own kernels");
        let (got, _) = generate(&candle.model, &ids, &opts, |_| true).expect("candle");
        // Up to the first step where the own path's top-2 gap is a near-tie.
        let mut seq = ids.clone();
        for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
            let rows = all_logits(&native, &seq);
            let (_, gap) = top2(rows.last().expect("row"));
            if gap < NEAR_TIE {
                eprintln!("{alias}: near-tie at step {i}; {i} tokens compared");
                break;
            }
            assert_eq!(
                g, w,
                "{alias}: greedy token {i} (candle {got:?}, own {want:?})"
            );
            seq.push(w);
        }
    }
}

#[test]
fn backend_choices_that_cannot_run_are_refused() {
    common::ensure_model("smollm2-135m-instruct");
    let native_gpu = LoadOptions {
        backend: BackendChoice::Native,
        device: "cuda".parse().expect("device"),
        ..Default::default()
    };
    let err = loader::load_with("smollm2-135m-instruct", &native_gpu)
        .err()
        .expect("native on cuda is refused");
    assert!(
        err.to_string().contains("--backend native runs on the CPU"),
        "{err}"
    );
    let folder = common::repo_root().join("tests/fixtures/hf/llama");
    let native_hf = LoadOptions {
        backend: BackendChoice::Native,
        ..Default::default()
    };
    let err = loader::load_with(folder.to_str().expect("path"), &native_hf)
        .err()
        .expect("native on a folder is refused");
    assert!(err.to_string().contains("candle backend"), "{err}");
}
