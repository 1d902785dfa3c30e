//! The continuous-batching engine on a real model (SmolLM2): 64 concurrent requests with
//! cancellations, batch invariance (a request's greedy or seeded tokens are the same alone or among 63
//! others, with or without prefix-cache hits, with or without preemption), `n` choices forked from one
//! prompt, and nothing held afterwards.
mod common;
use common::*;
use inhaus::engine::generate::FinishReason;
use inhaus::engine::sampler::SamplingParams;
use inhaus::engine::scheduler::{
    AdmissionError, CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent,
};
use rand::{Rng, SeedableRng};
use std::sync::mpsc::{channel, Receiver};

const ALIAS: &str = "smollm2-135m-instruct";

fn config(num_blocks: usize) -> EngineConfig {
    engine_config(num_blocks)
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    let mut r = GenerationRequest::new(prompt, max_tokens);
    r.ignore_eos = true;
    r
}

/// Every choice's tokens and how it finished, from a finished stream.
fn collect_choices(rx: &Receiver<SeqEvent>, n: usize) -> Vec<(Vec<u32>, Option<FinishReason>)> {
    let mut out = vec![(Vec::new(), None); n];
    for ev in rx.try_iter() {
        match ev {
            SeqEvent::Token { choice, id, .. } => out[choice].0.push(id),
            SeqEvent::Finished { choice, reason } => {
                assert!(out[choice].1.is_none(), "choice {choice} finished twice");
                out[choice].1 = Some(reason);
            }
        }
    }
    out
}

/// All tokens of a finished one-choice stream, and how it finished.
fn collect(rx: &Receiver<SeqEvent>) -> (Vec<u32>, Option<FinishReason>) {
    collect_choices(rx, 1).swap_remove(0)
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
            e.add_request(request(p.clone(), max_tokens), tx, CancelHandle::new(1))
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
    e.add_request(request(a, 8), tx, CancelHandle::new(1))
        .expect("admitted");
    e.run_to_completion().expect("run");
    let before = e.pool().stats().hits;
    let (tx, rx_b) = channel();
    e.add_request(request(b, 8), tx, CancelHandle::new(1))
        .expect("admitted");
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

/// `count` prompts of random lengths (1 to ~60 tokens), cut from and joined of the base prompts.
fn random_prompts(count: usize, seed: u64) -> Vec<Vec<u32>> {
    let ps = prompts();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut p = ps[rng.random_range(0..ps.len())].clone();
            for _ in 0..rng.random_range(0..4) {
                p.extend_from_slice(&ps[rng.random_range(0..ps.len())][1..]);
            }
            p.truncate(rng.random_range(1..=p.len()));
            p
        })
        .collect()
}

#[test]
fn sixty_four_requests_with_cancellations_all_finish_and_free_everything() {
    let m = model(ALIAS);
    let ps = random_prompts(64, 7);
    let lens: Vec<usize> = (0..64).map(|i| 3 + (i * 7) % 17).collect();
    let cancelled = |i: usize| i.is_multiple_of(5);
    let mut e = Engine::new(&m.model, config(160));
    let mut streams = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let (tx, rx) = channel();
        let cancel = CancelHandle::new(1);
        e.add_request(request(p.clone(), lens[i]), tx, cancel.clone())
            .expect("admitted");
        streams.push((rx, cancel, Vec::new()));
    }
    let drain = |streams: &mut Vec<(Receiver<SeqEvent>, CancelHandle, Vec<SeqEvent>)>| {
        for (rx, _, seen) in streams.iter_mut() {
            seen.extend(rx.try_iter());
        }
    };
    let ended = |seen: &[SeqEvent]| seen.iter().any(|e| matches!(e, SeqEvent::Finished { .. }));
    let mut steps = 0;
    while e.has_work() {
        e.step().expect("step");
        drain(&mut streams);
        steps += 1;
        if steps == 4 {
            // A fifth of the clients go away mid-stream; their sequences leave at the next step.
            let before = e.num_running() + e.num_waiting();
            let live = (0..64)
                .filter(|&i| cancelled(i) && !ended(&streams[i].2))
                .count();
            assert!(live > 0, "some cancelled requests should still be running");
            for (i, (_, c, _)) in streams.iter().enumerate() {
                if cancelled(i) {
                    c.cancel_all();
                }
            }
            e.step().expect("step");
            drain(&mut streams);
            steps += 1;
            let after = e.num_running() + e.num_waiting();
            assert!(
                after + live <= before,
                "cancelled sequences must leave within one step ({before} -> {after}, {live} cancelled)"
            );
        }
        assert!(steps < 10_000, "engine does not finish");
    }
    for (i, (_, _, seen)) in streams.iter().enumerate() {
        let toks: Vec<u32> = seen
            .iter()
            .filter_map(|e| match e {
                SeqEvent::Token { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        let fin: Vec<FinishReason> = seen
            .iter()
            .filter_map(|e| match e {
                SeqEvent::Finished { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect();
        assert_eq!(fin.len(), 1, "request {i} must end exactly once: {fin:?}");
        if cancelled(i) {
            assert!(
                matches!(fin[0], FinishReason::Cancelled | FinishReason::Length),
                "request {i}: {fin:?}"
            );
            continue;
        }
        assert_eq!(fin[0], FinishReason::Length, "request {i}");
        assert_eq!(
            toks,
            alone(&ps[i], lens[i]),
            "request {i} differs from alone"
        );
    }
    assert_eq!(e.num_running(), 0);
    assert_eq!(e.num_waiting(), 0);
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
    e.pool().check_invariants().expect("pool invariants");
}

#[test]
fn a_request_among_63_others_gets_the_same_greedy_and_seeded_tokens() {
    let m = model(ALIAS);
    let target = prompts()[6].clone();
    let seeded = |r: &mut GenerationRequest| {
        r.sampling = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            seed: Some(1234),
            ..Default::default()
        };
    };
    let run = |neighbours: &[Vec<u32>], twice: bool| {
        let mut e = Engine::new(&m.model, config(400));
        let mut rxs = Vec::new();
        for round in 0..if twice { 2 } else { 1 } {
            for (i, p) in neighbours.iter().enumerate() {
                let (tx, _rx) = channel();
                let mut r = request(p.clone(), 4 + i % 9);
                if i % 2 == 0 {
                    r.sampling.temperature = 1.0;
                    r.sampling.seed = Some(i as u64);
                }
                e.add_request(r, tx, CancelHandle::new(1))
                    .expect("admitted");
            }
            let (tx, rx_greedy) = channel();
            e.add_request(request(target.clone(), 12), tx, CancelHandle::new(1))
                .expect("admitted");
            let (tx, rx_seeded) = channel();
            let mut r = request(target.clone(), 12);
            seeded(&mut r);
            e.add_request(r, tx, CancelHandle::new(1))
                .expect("admitted");
            e.run_to_completion().expect("run");
            if round == 1 {
                assert!(
                    e.pool().stats().hits > 0,
                    "the second round hits the prefix cache"
                );
            }
            rxs.push((collect(&rx_greedy).0, collect(&rx_seeded).0));
        }
        rxs
    };
    let alone_run = run(&[], false);
    let crowd = random_prompts(62, 99);
    let crowded = run(&crowd, true);
    assert_eq!(alone_run[0].0.len(), 12);
    for (round, got) in crowded.iter().enumerate() {
        assert_eq!(
            got.0, alone_run[0].0,
            "greedy tokens changed among 63 others (round {round})"
        );
        assert_eq!(
            got.1, alone_run[0].1,
            "seeded tokens changed among 63 others (round {round})"
        );
    }
}

#[test]
fn n_choices_fork_from_one_prompt() {
    let m = model(ALIAS);
    let p = prompts()[2].clone();
    let greedy_alone = alone(&p, 10);
    let mut e = Engine::new(&m.model, config(64));
    let (tx, rx) = channel();
    let mut r = request(p.clone(), 10);
    r.n = 3;
    e.add_request(r, tx, CancelHandle::new(3))
        .expect("admitted");
    e.run_to_completion().expect("run");
    for (c, (toks, fin)) in collect_choices(&rx, 3).into_iter().enumerate() {
        assert_eq!(fin, Some(FinishReason::Length), "choice {c}");
        assert_eq!(toks, greedy_alone, "greedy choice {c} differs from n = 1");
    }
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");

    // Seeded: choice i samples like an n = 1 request with seed + i.
    let sampled = |seed: u64, n: usize| {
        let mut e = Engine::new(&m.model, config(64));
        let (tx, rx) = channel();
        let mut r = request(p.clone(), 10);
        r.n = n;
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            logprobs: Some(2),
            ..Default::default()
        };
        e.add_request(r, tx, CancelHandle::new(n))
            .expect("admitted");
        e.run_to_completion().expect("run");
        e.pool().check_invariants().expect("pool invariants");
        assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
        collect_choices(&rx, n)
    };
    let forked = sampled(5, 3);
    for (c, got) in forked.iter().enumerate() {
        assert_eq!(*got, sampled(5 + c as u64, 1)[0], "choice {c}");
    }
    assert!(
        forked[0].0 != forked[1].0 || forked[1].0 != forked[2].0,
        "different seeds should give different samples"
    );
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
        .add_request(request(vec![1; 60], 10), tx.clone(), CancelHandle::new(1))
        .expect_err("4 blocks of 16 hold 64 tokens");
    assert!(matches!(err, AdmissionError::TooLong { .. }), "{err}");
    assert_eq!(
        e.add_request(request(vec![], 1), tx.clone(), CancelHandle::new(1))
            .expect_err("empty"),
        AdmissionError::EmptyPrompt
    );
    e.add_request(request(vec![1, 2], 1), tx.clone(), CancelHandle::new(1))
        .expect("fits");
    assert_eq!(
        e.add_request(request(vec![1, 2], 1), tx, CancelHandle::new(1))
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
            e.add_request(r, tx, CancelHandle::new(1))
                .expect("admitted");
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
        e.add_request(r, tx, CancelHandle::new(1))
            .expect("admitted");
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
            SeqEvent::Token { id, logprobs, .. } => {
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
    let handle = std::sync::Arc::new(
        EngineHandle::spawn(loaded, config(128), Default::default()).expect("spawn"),
    );
    let threads: Vec<_> = ps
        .iter()
        .take(4)
        .cloned()
        .map(|p| {
            let h = handle.clone();
            std::thread::spawn(move || {
                let stream = h.submit(request(p, 10)).expect("admitted");
                let mut toks = Vec::new();
                for ev in stream.events.iter() {
                    match ev {
                        SeqEvent::Token { id, .. } => toks.push(id),
                        SeqEvent::Finished { reason, .. } => {
                            assert_eq!(reason, FinishReason::Length);
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
    let err = handle
        .submit(request(vec![], 1))
        .err()
        .expect("empty prompt is refused");
    assert_eq!(err.to_string(), "the prompt is empty");
}
