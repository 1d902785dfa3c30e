//! Constrained decoding in the engine on a real model (SmolLM2, whose 135M parameters make many
//! mistakes unconstrained): JSON-schema, regex and choice outputs are always valid, greedy and
//! sampled at a high temperature, for `n` forks, beside unconstrained requests in one batch, under
//! preemption and with `min_tokens`; a grammar that cannot finish within `max_tokens` ends with
//! `Length`; an unconstrained neighbour's greedy tokens do not change.
mod common;
use common::*;
use inhaus::engine::constraint::{Constraint, ConstraintMode};
use inhaus::engine::generate::FinishReason;
use inhaus::engine::sampler::SamplingParams;
use inhaus::engine::scheduler::{CancelHandle, Engine, EngineConfig, GenerationRequest, SeqEvent};
use inhaus::grammar::{GrammarCompiler, GrammarSpec, VocabEnv};
use serde_json::{json, Value};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;

const ALIAS: &str = "smollm2-135m-instruct";

fn config(num_blocks: usize) -> EngineConfig {
    engine_config(num_blocks)
}

fn compiler() -> &'static GrammarCompiler {
    static C: OnceLock<GrammarCompiler> = OnceLock::new();
    C.get_or_init(|| {
        let m = model(ALIAS);
        GrammarCompiler::new(VocabEnv::new(&m.tokenizer, m.model.vocab())).expect("compiler")
    })
}

fn constraint(spec: &GrammarSpec) -> Constraint {
    Constraint {
        matcher: compiler().compile(spec).expect("compiles"),
        mode: ConstraintMode::Whole,
    }
}

fn request(prompt: &str, max_tokens: usize, sampling: SamplingParams) -> GenerationRequest {
    let m = model(ALIAS);
    let mut r = GenerationRequest::new(
        m.tokenizer.encode(prompt, true).expect("encode"),
        max_tokens,
    );
    r.sampling = sampling;
    r.stop_ids = m.tokenizer.stop_ids.clone();
    r
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.3,
        seed: Some(seed),
        ..Default::default()
    }
}

/// Each choice's text and how it finished.
fn collect(rx: &Receiver<SeqEvent>, n: usize) -> Vec<(String, Option<FinishReason>)> {
    let m = model(ALIAS);
    let mut toks = vec![Vec::new(); n];
    let mut fin = vec![None; n];
    for ev in rx.try_iter() {
        match ev {
            SeqEvent::Token { choice, id, .. } => {
                if !m.tokenizer.stop_ids.contains(&id) {
                    toks[choice].push(id)
                }
            }
            SeqEvent::Finished { choice, reason } => fin[choice] = Some(reason),
        }
    }
    toks.into_iter()
        .zip(fin)
        .map(|(t, f)| (m.tokenizer.decode(&t, true).expect("decode"), f))
        .collect()
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "tags", "address"],
        "additionalProperties": false
    })
}

/// A hand check of `person_schema` (the Python suite validates with `jsonschema`).
fn check_person(text: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    if keys != ["name", "age", "role", "tags", "address"] {
        return Err(format!("keys {keys:?}"));
    }
    let age = v["age"].as_i64().ok_or("age not an integer")?;
    if !(0..=120).contains(&age) {
        return Err(format!("age {age}"));
    }
    if !["admin", "user", "guest"].contains(&v["role"].as_str().unwrap_or("")) {
        return Err(format!("role {}", v["role"]));
    }
    let tags = v["tags"].as_array().ok_or("tags")?;
    if tags.is_empty() || tags.len() > 3 || !tags.iter().all(Value::is_string) {
        return Err(format!("tags {tags:?}"));
    }
    let zip = v["address"]["zip"].as_str().ok_or("zip")?;
    if zip.len() != 5 || !zip.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("zip {zip}"));
    }
    if v["address"].as_object().map(|a| a.len()) != Some(2) || !v["address"]["city"].is_string() {
        return Err(format!("address {}", v["address"]));
    }
    Ok(())
}

#[test]
fn schema_outputs_validate_greedy_sampled_forked_and_beside_free_text() {
    let m = model(ALIAS);
    let c = constraint(&GrammarSpec::JsonSchema(person_schema()));
    let prompt = "Write a JSON record of a person:";
    // Alone first: the unconstrained neighbour's greedy text must not change in the mixed batch.
    let free = || request("The capital of France is", 24, SamplingParams::default());
    let mut e = Engine::new(&m.model, config(512));
    let (tx, rx) = channel();
    e.add_request(free(), tx, CancelHandle::new(1))
        .expect("admitted");
    e.run_to_completion().expect("run");
    let free_alone = collect(&rx, 1).remove(0);

    let mut e = Engine::new(&m.model, config(512));
    let mut rxs = Vec::new();
    let mut add = |mut r: GenerationRequest, constrained: bool| {
        if constrained {
            r.constraint = Some(c.clone());
        }
        let n = r.n;
        let (tx, rx) = channel();
        e.add_request(r, tx, CancelHandle::new(n))
            .expect("admitted");
        rxs.push((rx, n, constrained));
    };
    add(request(prompt, 200, SamplingParams::default()), true);
    for seed in 0..6 {
        add(request(prompt, 200, sampled(seed)), true);
    }
    let mut forked = request(prompt, 200, sampled(99));
    forked.n = 3;
    add(forked, true);
    add(free(), false);
    e.run_to_completion().expect("run");
    let mut checked = 0;
    for (i, (rx, n, constrained)) in rxs.iter().enumerate() {
        for (k, (text, fin)) in collect(rx, *n).into_iter().enumerate() {
            if !constrained {
                assert_eq!(
                    (text.clone(), fin),
                    free_alone,
                    "the free neighbour changed"
                );
                continue;
            }
            assert_eq!(
                fin,
                Some(FinishReason::Stop),
                "request {i} choice {k}: {text}"
            );
            check_person(&text).unwrap_or_else(|e| panic!("request {i} choice {k}: {e}"));
            assert!(!text.contains('\n'), "compact JSON expected: {text}");
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
    assert_eq!(e.pool().num_free(), e.pool().num_blocks(), "blocks leaked");
}

#[test]
fn regex_and_choice_outputs_match_even_against_min_tokens() {
    let m = model(ALIAS);
    let phone = constraint(&GrammarSpec::Regex(r"\+49 [1-9][0-9]{2} [0-9]{6,8}".into()));
    let choice = constraint(&GrammarSpec::Choice(vec![
        "positiv".into(),
        "negativ".into(),
        "neutral".into(),
    ]));
    let mut e = Engine::new(&m.model, config(64));
    let mut rxs = Vec::new();
    for seed in 0..8u64 {
        let (c, prompt) = if seed % 2 == 0 {
            (phone.clone(), "Our office phone number in Munich is")
        } else {
            (
                choice.clone(),
                "The sentiment of 'Das Produkt ist super, ich bin sehr zufrieden!' is",
            )
        };
        let mut r = request(prompt, 40, sampled(seed));
        r.constraint = Some(c);
        r.min_tokens = 60; // more than the grammar allows: the ban on stop tokens must yield
        r.max_tokens = 80;
        let (tx, rx) = channel();
        e.add_request(r, tx, CancelHandle::new(1))
            .expect("admitted");
        rxs.push((seed, rx));
    }
    e.run_to_completion().expect("run");
    for (seed, rx) in rxs {
        let (text, fin) = collect(&rx, 1).remove(0);
        assert_eq!(fin, Some(FinishReason::Stop), "{seed}: {text}");
        if seed % 2 == 0 {
            let rest = text
                .strip_prefix("+49 ")
                .unwrap_or_else(|| panic!("{text}"));
            let parts: Vec<&str> = rest.split(' ').collect();
            assert_eq!(parts.len(), 2, "{text}");
            assert!(
                parts[0].len() == 3
                    && parts[0].bytes().all(|b| b.is_ascii_digit())
                    && !parts[0].starts_with('0'),
                "{text}"
            );
            assert!(
                (6..=8).contains(&parts[1].len()) && parts[1].bytes().all(|b| b.is_ascii_digit()),
                "{text}"
            );
        } else {
            assert!(
                ["positiv", "negativ", "neutral"].contains(&text.as_str()),
                "{text}"
            );
        }
    }
}

#[test]
fn preemption_and_recompute_keep_schema_outputs_valid() {
    let m = model(ALIAS);
    let c = constraint(&GrammarSpec::JsonSchema(person_schema()));
    // 10 blocks of 16 tokens cannot hold 8 records of ~70 tokens at once.
    let mut e = Engine::new(&m.model, config(10));
    let mut rxs = Vec::new();
    for seed in 0..8u64 {
        let mut r = request("Write a JSON record of a person:", 150, sampled(seed));
        r.constraint = Some(c.clone());
        let (tx, rx) = channel();
        e.add_request(r, tx, CancelHandle::new(1))
            .expect("admitted");
        rxs.push(rx);
    }
    e.run_to_completion().expect("run");
    assert!(e.stats().preemptions > 0, "the small pool should preempt");
    for (i, rx) in rxs.iter().enumerate() {
        let (text, fin) = collect(rx, 1).remove(0);
        assert_eq!(fin, Some(FinishReason::Stop), "{i}: {text}");
        check_person(&text).unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    assert_eq!(e.pool().num_free(), e.pool().num_blocks());
}

#[test]
fn a_grammar_that_cannot_finish_in_time_ends_with_length() {
    let m = model(ALIAS);
    let mut r = request(
        "Write a JSON record of a person:",
        5,
        SamplingParams::default(),
    );
    r.constraint = Some(constraint(&GrammarSpec::JsonSchema(person_schema())));
    let mut e = Engine::new(&m.model, config(64));
    let (tx, rx) = channel();
    e.add_request(r, tx, CancelHandle::new(1))
        .expect("admitted");
    e.run_to_completion().expect("run");
    let (text, fin) = collect(&rx, 1).remove(0);
    assert_eq!(fin, Some(FinishReason::Length), "{text}");
    assert!(text.starts_with('{'), "{text}");
}

#[test]
fn invalid_grammars_are_refused_with_the_reason() {
    for spec in [
        GrammarSpec::JsonSchema(json!({"type": "objekt"})),
        GrammarSpec::JsonSchema(
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
        ),
        GrammarSpec::Regex("(unclosed".into()),
        GrammarSpec::Lark("start: undefined_rule".into()),
    ] {
        match compiler().compile(&spec) {
            Ok(_) => panic!("{spec:?} compiled"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let ok = GrammarSpec::JsonObject;
    assert!(!compiler().is_cached(&GrammarSpec::Regex("x{3}".into())));
    compiler().compile(&ok).expect("json_object");
    assert!(compiler().is_cached(&ok), "compiled grammars are cached");
}

#[test]
fn a_triggered_constraint_holds_from_its_token_until_complete_then_text_is_free() {
    let m = model(ALIAS);
    let prompt = "The capital of France is";
    // The free greedy continuation; its third token becomes the trigger.
    let mut e = Engine::new(&m.model, config(64));
    let (tx, rx) = channel();
    let mut free = request(prompt, 30, SamplingParams::default());
    free.ignore_eos = true;
    e.add_request(free.clone(), tx, CancelHandle::new(1))
        .expect("admitted");
    e.run_to_completion().expect("run");
    let free_ids: Vec<u32> = rx
        .try_iter()
        .filter_map(|ev| match ev {
            SeqEvent::Token { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    let trigger = free_ids[2];
    let spec = GrammarSpec::Regex(" #[0-9]{4}#".into());
    let mut r = free;
    r.constraint = Some(Constraint {
        matcher: compiler().compile(&spec).expect("compiles"),
        mode: ConstraintMode::Triggered { trigger },
    });
    let mut e = Engine::new(&m.model, config(64));
    let (tx, rx) = channel();
    e.add_request(r, tx, CancelHandle::new(1))
        .expect("admitted");
    e.run_to_completion().expect("run");
    let (ids, fin): (Vec<u32>, Vec<FinishReason>) =
        rx.try_iter()
            .fold((Vec::new(), Vec::new()), |(mut ids, mut fin), ev| {
                match ev {
                    SeqEvent::Token { id, .. } => ids.push(id),
                    SeqEvent::Finished { reason, .. } => fin.push(reason),
                }
                (ids, fin)
            });
    assert_eq!(
        fin,
        vec![FinishReason::Length],
        "a complete triggered grammar does not end it"
    );
    assert_eq!(ids[..3], free_ids[..3], "free until the trigger");
    let after = m.tokenizer.decode(&ids[3..], true).expect("decode");
    let code = after
        .strip_prefix(" #")
        .and_then(|t| t.get(..5))
        .unwrap_or_else(|| panic!("the grammar's text follows the trigger: {after:?}"));
    assert!(
        code[..4].bytes().all(|b| b.is_ascii_digit()) && code.ends_with('#'),
        "{after:?}"
    );
    assert_eq!(
        ids.len(),
        30,
        "free text continues after the grammar: {after:?}"
    );
}
