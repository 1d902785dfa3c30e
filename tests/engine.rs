//! The continuous-batching engine on a real model (SmolLM2): many concurrent requests with
//! cancellations, batch invariance (a request's greedy tokens are the same alone or among others, with
//! or without prefix-cache hits, with or without preemption), and nothing held afterwards.
mod common;
use common::*;
use inhaus::engine::generate::FinishReason;
use inhaus::engine::sampler::SamplingParams;
use inhaus::engine::scheduler::{
    AdmissionError, Engine, EngineConfig, GenerationRequest, SeqEvent,
};
use std::sync::mpsc::{channel, Receiver};

const ALIAS: &str = "smollm2-135m-instruct";

fn config(num_blocks: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks,
        max_waiting: 256,
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt,
        sampling: SamplingParams::default(),
        max_tokens,
        min_tokens: 0,
        stop_ids: vec![],
        ignore_eos: true,
    }
}

/// All tokens of a finished stream, and how it finished.
fn collect(rx: &Receiver<SeqEvent>) -> (Vec<u32>, Option<FinishReason>) {
    let mut toks = Vec::new();
    let mut fin = None;
    for ev in rx.try_iter() {
        match ev {
            SeqEvent::Token { id, .. } => toks.push(id),
            SeqEvent::Finished(r) => fin = Some(r),
        }
    }
    (toks, fin)
}

fn prompts() -> Vec<Vec<u32>> {
    let m = model(ALIAS);
    let texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a small village",
        "Die Hauptstadt von Deutschland ist",
        "1, 2, 3, 4, 5,",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "In machine learning, a transformer is",
        "Rust is a programming language that",
    ];
    texts
        .iter()
        .map(|t| m.tokenizer.encode(t, true).expect("encode"))
        .collect()
}

fn alone(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let m = model(ALIAS);
    let mut e = Engine::new(&m.model, config(64));
    let rxs = submit_all(&mut e, &[prompt.to_vec()], max_tokens);
    e.run_to_completion().expect("run");
    collect(&rxs[0]).0
}

/// Queues one greedy request per prompt; returns their event receivers in order.
fn submit_all(e: &mut Engine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Receiver<SeqEvent>> {
    prompts
        .iter()
        .map(|p| {
            let (tx, rx) = channel();
            e.add_request(request(p.clone(), max_tokens), tx)
                .expect("admitted");
            rx
        })
        .collect()
}

#[test]
fn batched_greedy_equals_alone_and_nothing_leaks() {
    let m = model(ALIAS);
    let ps = prompts();
    let expected: Vec<Vec<u32>> = ps.iter().map(|p| alone(p, 12)).collect();
    let mut e = Engine::new(&m.model, config(256));
    let rxs = submit_all(&mut e, &ps, 12);
    e.run_to_completion().expect("run");
    for (i, rx) in rxs.iter().enumerate() {
        let (toks, fin) = collect(rx);
        assert_eq!(fin, Some(FinishReason::Length));
        assert_eq!(toks, expected[i], "request {i} differs when batched");
    }
    assert_eq!(e.num_running(), 0);
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
}

#[test]
fn preemption_under_a_small_pool_keeps_results() {
    let m = model(ALIAS);
    let ps = prompts();
    let expected: Vec<Vec<u32>> = ps.iter().map(|p| alone(p, 24)).collect();
    // 10 blocks of 16 tokens cannot hold 8 sequences of ~40 tokens at once.
    let mut e = Engine::new(&m.model, config(10));
    let rxs = submit_all(&mut e, &ps, 24);
    e.run_to_completion().expect("run");
    assert!(
        e.stats().preemptions > 0,
        "the small pool should force preemption"
    );
    for (i, rx) in rxs.iter().enumerate() {
        let (toks, fin) = collect(rx);
        assert_eq!(fin, Some(FinishReason::Length));
        assert_eq!(toks, expected[i], "request {i} differs after preemption");
    }
    assert_eq!(e.pool().num_free(), e.pool().num_blocks());
}

#[test]
fn shared_prefix_hits_the_cache_with_unchanged_output() {
    let m = model(ALIAS);
    let system =
        "You are a helpful assistant who answers briefly and precisely. Always be polite. "
            .repeat(3);
    let a = m
        .tokenizer
        .encode(&format!("{system}Question: what is 2+2?"), true)
        .expect("encode");
    let b = m
        .tokenizer
        .encode(&format!("{system}Question: name a color."), true)
        .expect("encode");
    let expected_b = alone(&b, 8);
    let mut e = Engine::new(&m.model, config(64));
    let (tx, rx_a) = channel();
    e.add_request(request(a, 8), tx).expect("admitted");
    e.run_to_completion().expect("run");
    let before = e.pool().stats().hits;
    let (tx, rx_b) = channel();
    e.add_request(request(b, 8), tx).expect("admitted");
    e.run_to_completion().expect("run");
    assert!(
        e.pool().stats().hits > before,
        "the shared system prompt should be served from the cache"
    );
    assert_eq!(collect(&rx_a).1, Some(FinishReason::Length));
    assert_eq!(
        collect(&rx_b).0,
        expected_b,
        "output changed with a prefix-cache hit"
    );
}

#[test]
fn many_requests_with_cancellations_all_finish_and_free_everything() {
    let m = model(ALIAS);
    let ps = prompts();
    let mut e = Engine::new(&m.model, config(128));
    let mut streams = Vec::new();
    for i in 0..40 {
        let (tx, rx) = channel();
        let p = ps[i % ps.len()].clone();
        e.add_request(request(p, 4 + i % 13), tx).expect("admitted");
        streams.push(Some(rx));
    }
    let mut steps = 0;
    while e.has_work() {
        e.step().expect("step");
        steps += 1;
        if steps == 3 {
            // A fifth of the clients go away mid-stream.
            for s in streams.iter_mut().step_by(5) {
                *s = None;
            }
        }
        assert!(steps < 10_000, "engine does not finish");
    }
    for (i, s) in streams.iter().enumerate() {
        if let Some(rx) = s {
            let (toks, fin) = collect(rx);
            assert_eq!(fin, Some(FinishReason::Length), "request {i}");
            assert_eq!(toks.len(), 4 + i % 13, "request {i}");
        }
    }
    assert_eq!(e.num_running(), 0);
    assert_eq!(e.num_waiting(), 0);
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
}

#[test]
fn requests_that_can_never_fit_are_refused_up_front() {
    let m = model(ALIAS);
    let mut e = Engine::new(
        &m.model,
        EngineConfig {
            max_waiting: 1,
            ..config(4)
        },
    );
    let (tx, _rx) = channel();
    let err = e
        .add_request(request(vec![1; 60], 10), tx.clone())
        .expect_err("4 blocks of 16 hold 64 tokens");
    assert!(matches!(err, AdmissionError::TooLong { .. }), "{err}");
    assert_eq!(
        e.add_request(request(vec![], 1), tx.clone())
            .expect_err("empty"),
        AdmissionError::EmptyPrompt
    );
    e.add_request(request(vec![1, 2], 1), tx.clone())
        .expect("fits");
    assert_eq!(
        e.add_request(request(vec![1, 2], 1), tx)
            .expect_err("queue of 1"),
        AdmissionError::QueueFull
    );
}

#[test]
fn seeded_sampling_logprobs_and_min_tokens_in_a_batch() {
    let m = model(ALIAS);
    let ps = prompts();
    let eos = m.tokenizer.stop_ids.clone();
    let sampled = |p: &[u32], others: usize| {
        let mut e = Engine::new(&m.model, config(128));
        let mut rxs = Vec::new();
        for (i, q) in ps.iter().take(others).enumerate() {
            let (tx, rx) = channel();
            let mut r = request(q.clone(), 6 + i);
            r.sampling = SamplingParams {
                temperature: 0.8,
                seed: Some(i as u64),
                ..Default::default()
            };
            e.add_request(r, tx).expect("admitted");
            rxs.push(rx);
        }
        let (tx, rx) = channel();
        let mut r = request(p.to_vec(), 10);
        r.sampling = SamplingParams {
            temperature: 0.9,
            top_p: 0.9,
            seed: Some(42),
            logprobs: Some(3),
            ..Default::default()
        };
        r.ignore_eos = false;
        r.stop_ids = eos.clone();
        r.min_tokens = 10;
        e.add_request(r, tx).expect("admitted");
        e.run_to_completion().expect("run");
        rx.try_iter().collect::<Vec<_>>()
    };
    let alone_events = sampled(&ps[3], 0);
    let batched_events = sampled(&ps[3], 7);
    assert_eq!(
        alone_events, batched_events,
        "a seeded request's tokens and logprobs depend on its neighbours"
    );
    let tokens: Vec<_> = alone_events
        .iter()
        .filter_map(|e| match e {
            SeqEvent::Token { id, logprobs } => {
                Some((*id, logprobs.clone().expect("logprobs asked for")))
            }
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 10, "min_tokens holds back the stop tokens");
    for (id, lp) in &tokens {
        assert!(!eos.contains(id));
        assert_eq!(lp.top.len(), 3);
        assert!(lp.logprob <= 0.0 && lp.top[0].1 >= lp.logprob);
    }
}

#[test]
fn engine_thread_serves_concurrent_submitters() {
    use inhaus::engine::handle::EngineHandle;
    ensure_model(ALIAS);
    let loaded = std::sync::Arc::new(inhaus::loader::load(ALIAS).expect("load"));
    let ps = prompts();
    let expected: Vec<Vec<u32>> = ps.iter().take(4).map(|p| alone(p, 10)).collect();
    let handle = std::sync::Arc::new(EngineHandle::spawn(loaded, config(128)).expect("spawn"));
    let threads: Vec<_> = ps
        .iter()
        .take(4)
        .cloned()
        .map(|p| {
            let h = handle.clone();
            std::thread::spawn(move || {
                let (_, rx) = h.submit(request(p, 10)).expect("admitted");
                let mut toks = Vec::new();
                for ev in rx {
                    match ev {
                        SeqEvent::Token { id, .. } => toks.push(id),
                        SeqEvent::Finished(r) => {
                            assert_eq!(r, FinishReason::Length);
                            break;
                        }
                    }
                }
                toks
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().expect("client thread"), expected[i], "request {i}");
    }
    let err = handle.submit(request(vec![], 1)).expect_err("empty prompt");
    assert_eq!(err.to_string(), "the prompt is empty");
}
