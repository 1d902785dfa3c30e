//! Property tests of the scheduler on a deterministic fake model (no weights, so thousands of steps
//! run in seconds): random workloads — arrivals over time, prompts of every length, `n` choices,
//! stop tokens, seeded sampling, cancellations, pools from barely enough to ample, small and large
//! budgets — must respect the token budget and sequence cap every step, keep the block pool
//! consistent, finish every choice exactly once with the tokens it would get alone (so preempted work
//! resumes correctly and nobody starves), admit first come first served, and free every block.
#[path = "common/fake_model.rs"]
mod fake_model;
use fake_model::FakeModel;
use inhaus::engine::generate::FinishReason;
use inhaus::engine::sampler::{argmax, SamplingParams};
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use inhaus::engine::speculate::{SpecConfig, SpecMethod};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::mpsc::{channel, Receiver};

const VOCAB: usize = 48;

struct Arrival {
    at_step: usize,
    req: GenerationRequest,
    cancel_at: Option<usize>,
}

struct Live {
    rx: Receiver<SeqEvent>,
    cancel: CancelHandle,
    tokens: Vec<Vec<u32>>,
    ends: Vec<Vec<FinishReason>>,
    first_token_step: Option<usize>,
    cancelled: bool,
}

/// Greedy tokens the fake model gives after `prompt`, with the engine's stop rules.
fn greedy_reference(model: &FakeModel, req: &GenerationRequest) -> (Vec<u32>, FinishReason) {
    let mut ctx = req.prompt.clone();
    let mut out = Vec::new();
    loop {
        let mut logits = model.logits_after(&ctx);
        if out.len() < req.min_tokens {
            for &s in &req.stop_ids {
                logits[s as usize] = f32::NEG_INFINITY;
            }
        }
        let t = argmax(&logits);
        out.push(t);
        ctx.push(t);
        if !req.ignore_eos && req.stop_ids.contains(&t) {
            return (out, FinishReason::Stop);
        }
        if out.len() >= req.max_tokens {
            return (out, FinishReason::Length);
        }
    }
}

/// A request's choices run alone in an ample engine.
fn solo(model: &FakeModel, req: &GenerationRequest) -> Vec<(Vec<u32>, FinishReason)> {
    let cfg = EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 1024,
        block_size: 16,
        num_blocks: 256,
        max_waiting: 16,
        speculative: None,
    };
    let mut e = Engine::new(model, cfg);
    let (tx, rx) = channel();
    e.add_request(req.clone(), tx, CancelHandle::new(req.n))
        .expect("admitted alone");
    e.run_to_completion().expect("run alone");
    let mut out = vec![(Vec::new(), FinishReason::Error); req.n];
    for ev in rx.try_iter() {
        match ev {
            SeqEvent::Token { choice, id, .. } => out[choice].0.push(id),
            SeqEvent::Finished { choice, reason } => out[choice].1 = reason,
        }
    }
    out
}

/// One random workload; with `speculate`, on a model whose output repeats itself and an engine
/// that guesses by prompt lookup (every output must still equal the run without speculation).
/// Returns the guessed and accepted token counts.
fn random_case(seed: u64, speculate: bool) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = FakeModel {
        vocab: VOCAB,
        context_len: 160,
        // Greedy copies the token `period` back (bonus ≥ 8); sampling often does.
        repeat: speculate.then(|| {
            (
                rng.random_range(1..=6),
                [9.0, 4.0, 2.0][rng.random_range(0..3)],
            )
        }),
    };
    let block_size = [4, 8, 16][rng.random_range(0..3)];
    let max_num_seqs = rng.random_range(1..=16);
    let n_req = rng.random_range(1..=24);
    let mut arrivals = Vec::new();
    let mut longest = 0;
    for _ in 0..n_req {
        let plen = rng.random_range(1..=70);
        let mut prompt: Vec<u32> = (0..plen)
            .map(|_| rng.random_range(0..VOCAB as u32))
            .collect();
        // Some prompts repeat a pattern (prompt lookup finds it).
        if speculate && rng.random_bool(0.3) {
            let period = rng.random_range(1..=8);
            for i in period..prompt.len() {
                prompt[i] = prompt[i - period];
            }
        }
        // Some prompts share a prefix (prefix-cache hits).
        if rng.random_bool(0.3) && plen > 20 {
            for (i, t) in prompt.iter_mut().take(20).enumerate() {
                *t = i as u32;
            }
        }
        let mut req = GenerationRequest::new(prompt, rng.random_range(1..=20));
        req.n = if rng.random_bool(0.2) {
            rng.random_range(2..=3)
        } else {
            1
        };
        req.n = req.n.min(max_num_seqs);
        if rng.random_bool(0.3) {
            req.stop_ids = vec![
                rng.random_range(0..VOCAB as u32),
                rng.random_range(0..VOCAB as u32),
            ];
            req.min_tokens = rng.random_range(0..3);
        } else {
            req.ignore_eos = true;
        }
        if rng.random_bool(0.4) {
            req.sampling = SamplingParams {
                temperature: 1.0,
                top_k: rng.random_range(0..10),
                seed: Some(rng.random()),
                presence_penalty: if rng.random_bool(0.3) { 0.5 } else { 0.0 },
                ..Default::default()
            };
        }
        longest = longest.max(req.prompt.len() + req.max_tokens);
        arrivals.push(Arrival {
            at_step: if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(0..30)
            },
            cancel_at: rng.random_bool(0.15).then(|| rng.random_range(0..40)),
            req,
        });
    }
    arrivals.sort_by_key(|a| a.at_step);
    // From barely enough blocks for the longest request to ample.
    let min_blocks = longest.div_ceil(block_size) + 1;
    let cfg = EngineConfig {
        max_num_seqs,
        max_num_batched_tokens: rng.random_range(8..=128),
        block_size,
        num_blocks: rng.random_range(min_blocks..=min_blocks * 6),
        max_waiting: 64,
        speculative: speculate.then(|| {
            let min_n = rng.random_range(1..=2);
            SpecConfig {
                method: SpecMethod::Ngram {
                    min_n,
                    max_n: rng.random_range(min_n..=3),
                },
                max_tokens: rng.random_range(1..=8),
                max_seqs: rng.random_range(1..=16),
            }
        }),
    };
    if std::env::var("DEBUG_SEED").is_ok_and(|v| v == seed.to_string()) {
        eprintln!("model {:?} cfg {cfg:?}", model.repeat);
        for a in &arrivals {
            eprintln!("at {} cancel {:?} req {:?}", a.at_step, a.cancel_at, a.req);
        }
    }
    let mut e = Engine::new(&model, cfg.clone());
    let mut live: Vec<Live> = Vec::new();
    let mut next = 0;
    let mut step = 0;
    loop {
        while next < arrivals.len() && arrivals[next].at_step <= step {
            let (tx, rx) = channel();
            let n = arrivals[next].req.n;
            let cancel = CancelHandle::new(n);
            e.add_request(arrivals[next].req.clone(), tx, cancel.clone())
                .unwrap_or_else(|err| panic!("seed {seed}: refused: {err}"));
            live.push(Live {
                rx,
                cancel,
                tokens: vec![Vec::new(); n],
                ends: vec![Vec::new(); n],
                first_token_step: None,
                cancelled: false,
            });
            next += 1;
        }
        for (i, l) in live.iter_mut().enumerate() {
            if arrivals[i].cancel_at == Some(step) {
                l.cancel.cancel_all();
                l.cancelled = true;
            }
        }
        if next == arrivals.len() && !e.has_work() {
            break;
        }
        let computed = e
            .step()
            .unwrap_or_else(|err| panic!("seed {seed}: step: {err}"));
        assert!(
            computed <= cfg.max_num_batched_tokens,
            "seed {seed}: step {step} computed {computed} tokens over the budget"
        );
        assert!(
            e.num_running() <= cfg.max_num_seqs,
            "seed {seed}: too many running"
        );
        e.pool()
            .check_invariants()
            .unwrap_or_else(|err| panic!("seed {seed}: pool: {err}"));
        for l in live.iter_mut() {
            for ev in l.rx.try_iter() {
                match ev {
                    SeqEvent::Token { choice, id, .. } => {
                        assert!(
                            l.ends[choice].is_empty(),
                            "seed {seed}: token after the end"
                        );
                        l.tokens[choice].push(id);
                        l.first_token_step.get_or_insert(step);
                    }
                    SeqEvent::Finished { choice, reason } => l.ends[choice].push(reason),
                }
            }
        }
        step += 1;
        assert!(
            step < 20_000,
            "seed {seed}: the engine does not finish (starvation)"
        );
    }
    for (i, l) in live.iter().enumerate() {
        let req = &arrivals[i].req;
        let expected = if req.sampling.temperature == 0.0 {
            vec![greedy_reference(&model, req); req.n]
        } else {
            solo(&model, req)
        };
        for (c, want) in expected.iter().enumerate() {
            assert_eq!(
                l.ends[c].len(),
                1,
                "seed {seed}: request {i} choice {c} ends {:?}",
                l.ends[c]
            );
            if l.cancelled && l.ends[c][0] == FinishReason::Cancelled {
                assert!(
                    want.0.starts_with(&l.tokens[c]),
                    "seed {seed}: request {i} choice {c}: cancelled prefix differs"
                );
                continue;
            }
            assert_eq!(
                (&l.tokens[c], l.ends[c][0]),
                (&want.0, want.1),
                "seed {seed}: request {i} choice {c} differs from running alone"
            );
        }
    }
    // First come, first served: without preemption, no request gets its first token before an
    // earlier arrival (cancelled ones aside).
    if e.stats().preemptions == 0 {
        let mut last = 0;
        for (i, l) in live.iter().enumerate() {
            if l.cancelled {
                continue;
            }
            let s = l.first_token_step.unwrap_or(usize::MAX);
            assert!(
                s >= last,
                "seed {seed}: request {i} overtook an earlier arrival"
            );
            last = s;
        }
    }
    assert_eq!(e.num_running() + e.num_waiting(), 0, "seed {seed}");
    assert_eq!(
        e.pool().num_free(),
        e.pool().num_blocks(),
        "seed {seed}: blocks leaked"
    );
    let stats = e.stats();
    (stats.spec_draft_tokens, stats.spec_accepted_tokens)
}

fn prop_cases() -> u64 {
    std::env::var("INHAUS_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn random_workloads_respect_budgets_and_match_solo_runs() {
    for seed in 0..prop_cases() {
        random_case(seed, false);
    }
}

/// Speculative decoding changes no output: greedy and seeded sampled choices equal their runs
/// without it, through preemption, prefix-cache hits, `n`, stop tokens, `min_tokens` and
/// cancellations, every step within the budget, and no block leaks.
#[test]
fn speculation_changes_no_output_in_random_workloads() {
    let (mut guessed, mut accepted) = (0, 0);
    for seed in 0..prop_cases() {
        let (g, a) = random_case(seed, true);
        guessed += g;
        accepted += a;
    }
    // The guesses were made and mostly (not always) right: both paths ran.
    assert!(
        accepted > 1000 && accepted < guessed,
        "{accepted} of {guessed} guesses accepted"
    );
}

#[test]
fn preemption_happens_and_preempted_work_resumes() {
    // A pool that only holds one long sequence at a time forces preemption; all must still finish.
    let model = FakeModel {
        vocab: VOCAB,
        context_len: 160,
        repeat: None,
    };
    let cfg = EngineConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        block_size: 4,
        num_blocks: 12,
        max_waiting: 16,
        speculative: None,
    };
    let mut e = Engine::new(&model, cfg);
    let mut rxs = Vec::new();
    let reqs: Vec<GenerationRequest> = (0..6)
        .map(|i| {
            let mut r =
                GenerationRequest::new((0..10).map(|t| (t * 7 + i) % VOCAB as u32).collect(), 30);
            r.ignore_eos = true;
            r
        })
        .collect();
    for r in &reqs {
        let (tx, rx) = channel();
        e.add_request(r.clone(), tx, CancelHandle::new(1))
            .expect("admitted");
        rxs.push(rx);
    }
    e.run_to_completion().expect("run");
    assert!(e.stats().preemptions > 0, "this pool must preempt");
    for (r, rx) in reqs.iter().zip(&rxs) {
        let toks: Vec<u32> = rx
            .try_iter()
            .filter_map(|ev| match ev {
                SeqEvent::Token { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(toks, greedy_reference(&model, r).0);
    }
    assert_eq!(e.pool().num_free(), e.pool().num_blocks());
}

#[test]
fn generate_is_a_one_request_client_of_the_engine() {
    // The CLI's `generate` runs the engine: chunked prefill of any chunk size, stop tokens and
    // max_tokens as the engine applies them, and a callback that returns false cancels.
    use inhaus::engine::generate::{generate, GenerateOptions};
    let model = FakeModel {
        vocab: VOCAB,
        context_len: 160,
        repeat: None,
    };
    let prompt: Vec<u32> = (0..37).map(|t| (t * 5 + 3) % VOCAB as u32).collect();
    for (chunk, stop_ids, ignore_eos) in [
        (1, vec![], true),
        (7, vec![], true),
        (512, vec![], true),
        (7, vec![3, 11, 19], false),
    ] {
        let opts = GenerateOptions {
            max_tokens: 40,
            sampling: SamplingParams::default(),
            ignore_eos,
            stop_ids: stop_ids.clone(),
            prefill_chunk: chunk,
            speculative: None,
        };
        let mut seen = Vec::new();
        let (got, stats) = generate(&model, &prompt, &opts, |id| {
            seen.push(id);
            true
        })
        .expect("generate");
        let mut req = GenerationRequest::new(prompt.clone(), 40);
        req.stop_ids = stop_ids;
        req.ignore_eos = ignore_eos;
        let (want, reason) = greedy_reference(&model, &req);
        assert_eq!(got, want, "chunk {chunk}");
        assert_eq!(seen, want);
        assert_eq!(stats.finish, reason);
        assert_eq!(stats.prompt_tokens, prompt.len());
        assert_eq!(stats.generated_tokens, want.len());
    }
    // Cancel after the third token: nothing more is generated.
    let opts = GenerateOptions {
        max_tokens: 40,
        sampling: SamplingParams::default(),
        ignore_eos: true,
        stop_ids: vec![],
        prefill_chunk: 16,
        speculative: None,
    };
    let mut n = 0;
    let (got, stats) = generate(&model, &prompt, &opts, |_| {
        n += 1;
        n < 3
    })
    .expect("generate");
    assert_eq!(got.len(), 3);
    assert_eq!(stats.finish, FinishReason::Cancelled);
    // Requests that cannot fit are refused, not run.
    assert!(generate(&model, &[], &opts, |_| true).is_err());
    let long = GenerateOptions {
        max_tokens: 200,
        ..opts
    };
    let err = generate(&model, &prompt, &long, |_| true).expect_err("too long");
    assert!(
        err.to_string().contains("exceeds the model's context"),
        "{err}"
    );
    let huge = GenerateOptions {
        max_tokens: usize::MAX,
        ..long
    };
    assert!(generate(&model, &prompt, &huge, |_| true).is_err());
}

#[test]
fn tenants_share_seats_and_the_queue_fairly() {
    // One seat, a queue of four: tenant a fills the queue, yet tenant b's request is still taken
    // and runs right after a's first one, not after a's whole queue.
    use inhaus::engine::fair_share::Tenant;
    use inhaus::engine::scheduler::AdmissionError;
    let model = FakeModel {
        vocab: VOCAB,
        context_len: 160,
        repeat: None,
    };
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: 64,
        block_size: 4,
        num_blocks: 64,
        max_waiting: 4,
        speculative: None,
    };
    let mut e = Engine::new(&model, cfg);
    let req = |tenant: &str, i: u32| {
        let mut r = GenerationRequest::new((0..6).map(|t| (t * 3 + i) % VOCAB as u32).collect(), 5);
        r.ignore_eos = true;
        r.tenant = Some(Tenant::new(tenant));
        r
    };
    let mut queued = Vec::new();
    let mut add = |e: &mut Engine<'_, FakeModel>, tenant: &'static str, i: u32| {
        let (tx, rx) = channel();
        let r = e.add_request(req(tenant, i), tx, CancelHandle::new(1));
        if r.is_ok() {
            queued.push((tenant, rx));
        }
        r.map(|_| ())
    };
    for i in 0..4 {
        add(&mut e, "a", i).expect("a queued");
    }
    assert!(matches!(
        add(&mut e, "a", 9),
        Err(AdmissionError::QueueFull)
    ));
    add(&mut e, "b", 7).expect("a tenant with nothing waiting is let in");
    assert!(matches!(
        add(&mut e, "b", 8),
        Err(AdmissionError::QueueFull)
    ));
    let mut finished = Vec::new();
    while e.has_work() {
        e.step().expect("step");
        for (tenant, rx) in &queued {
            if rx
                .try_iter()
                .any(|ev| matches!(ev, SeqEvent::Finished { .. }))
            {
                finished.push(*tenant);
            }
        }
    }
    assert_eq!(finished, ["a", "b", "a", "a", "a"]);
    assert_eq!(e.pool().num_free(), e.pool().num_blocks());
}
