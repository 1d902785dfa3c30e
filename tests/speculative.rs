//! Speculative decoding (prompt lookup) in the engine: sampled outputs keep the model's
//! distribution (chi-square on a tiny model, where the guessed rows decide most tokens), and on the
//! real Qwen2.5-Coder-0.5B greedy output with guesses is token for token the output without them
//! (code edits batched together, a JSON-schema extraction that still validates), with most guesses
//! accepted and no block leaked. The random-workload version (preemption, prefix hits, `n`,
//! cancellation, seeded sampling) is in `scheduler_props.rs`.
mod common;
#[path = "common/fake_model.rs"]
mod fake_model;
use common::model;
use fake_model::FakeModel;
use inhaus::engine::constraint::{Constraint, ConstraintMode};
use inhaus::engine::sampler::SamplingParams;
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use inhaus::engine::speculate::SpecConfig;
use inhaus::engine::step_model::StepModel;
use inhaus::grammar::{GrammarCompiler, GrammarSpec, VocabEnv};
use serde_json::json;
use std::collections::HashMap;
use std::sync::mpsc::{channel, Receiver};

fn config(num_blocks: usize, speculative: Option<SpecConfig>) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks,
        max_waiting: 64,
        speculative,
    }
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The chi-square value at which a `df`-degree test rejects with probability `p` (z the normal
/// quantile of `1 - p`), by Wilson and Hilferty's approximation.
fn chi_square_critical(df: f64, z: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

/// Three tokens sampled at temperature 1 after a prompt that repeats itself, many times with
/// prompt lookup on: the second and third tokens come mostly from rows that verified a guess. Their
/// joint frequencies must fit the model's own probabilities. Accepting a guess without drawing
/// (or drawing from the wrong row) fails this by hundreds of chi-square units.
#[test]
fn sampled_tokens_keep_the_target_distribution() {
    const VOCAB: usize = 6;
    const RUNS: u64 = 12_000;
    let m = FakeModel {
        vocab: VOCAB,
        context_len: 64,
        repeat: Some((2, 6.0)),
    };
    let prompt: Vec<u32> = vec![1, 2, 1, 2, 1, 2, 1];
    let spec = SpecConfig::ngram(2);
    let mut e = Engine::new(&m, config(64, Some(spec)));
    let mut counts: HashMap<[u32; 3], u64> = HashMap::new();
    for seed in 0..RUNS {
        let mut r = GenerationRequest::new(prompt.clone(), 3);
        r.ignore_eos = true;
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        };
        let (tx, rx) = channel();
        e.add_request(r, tx, CancelHandle::new(1))
            .expect("admitted");
        e.run_to_completion().expect("runs");
        let toks: Vec<u32> = rx
            .try_iter()
            .filter_map(|ev| match ev {
                SeqEvent::Token { id, .. } => Some(id),
                SeqEvent::Finished { .. } => None,
            })
            .collect();
        let t: [u32; 3] = toks.try_into().expect("three tokens");
        *counts.entry(t).or_default() += 1;
    }
    let stats = e.stats();
    assert!(
        stats.spec_accepted_tokens > RUNS / 10,
        "the guessed rows were used: {stats:?}"
    );
    // Expected probability of each triple, from the model's logits.
    let mut cells: Vec<(f64, u64)> = Vec::new();
    for a in 0..VOCAB as u32 {
        let pa = softmax(&m.logits_after(&prompt))[a as usize];
        let ctx_a: Vec<u32> = prompt.iter().copied().chain([a]).collect();
        let pb_all = softmax(&m.logits_after(&ctx_a));
        for b in 0..VOCAB as u32 {
            let ctx_ab: Vec<u32> = ctx_a.iter().copied().chain([b]).collect();
            let pc_all = softmax(&m.logits_after(&ctx_ab));
            for c in 0..VOCAB as u32 {
                let p = pa * pb_all[b as usize] * pc_all[c as usize];
                cells.push((
                    p * RUNS as f64,
                    counts.get(&[a, b, c]).copied().unwrap_or(0),
                ));
            }
        }
    }
    // Cells expected fewer than 5 times are pooled into one.
    let (mut pool_e, mut pool_o) = (0.0, 0u64);
    let mut chi2 = 0.0;
    let mut df = 0.0;
    for (exp, obs) in cells {
        if exp < 5.0 {
            pool_e += exp;
            pool_o += obs;
            continue;
        }
        chi2 += (obs as f64 - exp).powi(2) / exp;
        df += 1.0;
    }
    if pool_e > 0.0 {
        chi2 += (pool_o as f64 - pool_e).powi(2) / pool_e;
        df += 1.0;
    }
    df -= 1.0;
    // p = 1e-4: a correct engine fails once in 10,000 runs (the seeds are fixed, so never).
    let critical = chi_square_critical(df, 3.719);
    eprintln!(
        "chi-square {chi2:.1} over {df} degrees of freedom (critical {critical:.1}); {stats:?}"
    );
    assert!(
        chi2 < critical,
        "chi-square {chi2:.1} over {df} degrees of freedom (critical {critical:.1})"
    );
}

const QWEN: &str = "qwen2.5-coder-0.5b-instruct";

/// A ChatML prompt for Qwen.
fn chat(user: &str) -> String {
    format!("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

const CODE: &str = "def total_price(items, tax_rate):\n    subtotal = 0\n    for item in items:\n        subtotal += item.price * item.quantity\n    tax = subtotal * tax_rate\n    return subtotal + tax\n";

fn greedy(prompt: &str, max_tokens: usize) -> GenerationRequest {
    let m = model(QWEN);
    let mut r = GenerationRequest::new(
        m.tokenizer.encode(&chat(prompt), true).expect("encode"),
        max_tokens,
    );
    r.stop_ids = m.tokenizer.stop_ids.clone();
    r
}

/// Runs `reqs` together in one engine; each request's tokens, the engine's stats, and whether every
/// block came back.
fn run_batch<M: StepModel>(
    model: &M,
    reqs: &[GenerationRequest],
    speculative: Option<SpecConfig>,
) -> (Vec<Vec<u32>>, inhaus::engine::scheduler::EngineStats) {
    let mut e = Engine::new(model, config(256, speculative));
    let rxs: Vec<Receiver<SeqEvent>> = reqs
        .iter()
        .map(|r| {
            let (tx, rx) = channel();
            e.add_request(r.clone(), tx, CancelHandle::new(1))
                .expect("admitted");
            rx
        })
        .collect();
    e.run_to_completion().expect("runs");
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
    let outs = rxs
        .iter()
        .map(|rx| {
            rx.try_iter()
                .filter_map(|ev| match ev {
                    SeqEvent::Token { id, .. } => Some(id),
                    SeqEvent::Finished { .. } => None,
                })
                .collect()
        })
        .collect();
    (outs, e.stats())
}

#[test]
fn greedy_code_edits_are_the_same_with_prompt_lookup() {
    let m = model(QWEN);
    let reqs = vec![
        greedy(
            &format!("Rename the variable `subtotal` to `net` in this function and return the whole function:\n```python\n{CODE}```"),
            120,
        ),
        greedy(
            &format!("Add type hints to this function and return the whole function:\n```python\n{CODE}```"),
            120,
        ),
        greedy("Write a Python function that checks whether a number is prime.", 80),
    ];
    let (plain, _) = run_batch(&m.model, &reqs, None);
    let (spec, stats) = run_batch(&m.model, &reqs, Some(SpecConfig::ngram(5)));
    for (i, (a, b)) in plain.iter().zip(&spec).enumerate() {
        assert_eq!(
            m.tokenizer.decode(b, false).expect("decode"),
            m.tokenizer.decode(a, false).expect("decode"),
            "request {i} differs with speculation"
        );
        assert_eq!(a, b, "request {i}: token ids differ");
    }
    // The edits copy the function: guesses came true (38 of 102 when written) and were used.
    assert!(stats.spec_accepted_tokens >= 20, "{stats:?}");
}

#[test]
fn structured_extraction_under_speculation_validates_and_is_unchanged() {
    let m = model(QWEN);
    let compiler = GrammarCompiler::new(VocabEnv::new(&m.tokenizer, m.model.vocab())).expect("env");
    let schema = json!({
        "type": "object",
        "properties": {
            "customer": {"type": "string"},
            "order_number": {"type": "string"},
            "city": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["customer", "order_number", "city", "items"],
        "additionalProperties": false
    });
    let doc = "Order confirmation\nCustomer: Müller Maschinenbau GmbH\nOrder number: A-2024-10573\nDelivery address: Industriestraße 12, 70565 Stuttgart\nItems: hydraulic pump HP-200, sealing kit SK-14, pressure gauge PG-3\n";
    let mut r = greedy(
        &format!("Extract the customer, order number, city and items from this document as JSON.\n\n{doc}"),
        150,
    );
    let spec = GrammarSpec::JsonSchema(schema.clone());
    r.constraint = Some(Constraint {
        matcher: compiler.compile(&spec).expect("compiles"),
        mode: ConstraintMode::Whole,
    });
    let (plain, _) = run_batch(&m.model, std::slice::from_ref(&r), None);
    let (guessed, stats) = run_batch(&m.model, &[r], Some(SpecConfig::ngram(5)));
    assert_eq!(plain, guessed, "the constrained output changed");
    let text = m.tokenizer.decode(&guessed[0], true).expect("decode");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["order_number"], "A-2024-10573", "{text}");
    assert!(
        v["items"].as_array().is_some_and(|a| a.len() == 3),
        "{text}"
    );
    assert!(stats.spec_accepted_tokens > 10, "{stats:?}");
}
