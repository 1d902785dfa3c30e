//! Tokenization must equal llama.cpp's for every fixture string (no bos; special tokens parsed), with
//! bos added as llama.cpp adds it, and decoding must round-trip.
mod common;
use common::*;

fn check_model(alias: &str) {
    let m = model(alias);
    let fx = fixture(alias, "tokenize.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "{alias}: too few tokenizer cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = m.tokenizer.encode(text, false).expect("encode");
        if got != want {
            failures.push(format!(
                "{text:?}\n   llama.cpp {want:?}\n   inhaus    {got:?}"
            ));
        }
        if let Some(wb) = case.get("ids_with_bos") {
            let got_b = m.tokenizer.encode(text, true).expect("encode");
            if got_b != ids(wb) {
                failures.push(format!(
                    "{text:?} with bos\n   llama.cpp {:?}\n   inhaus    {got_b:?}",
                    ids(wb)
                ));
            }
        }
        // Text without special tokens decodes back to itself.
        let has_special = want.iter().any(|&i| {
            m.tokenizer
                .decode(&[i], true)
                .map(|s| s.is_empty())
                .unwrap_or(false)
        });
        if !has_special {
            let back = m.tokenizer.decode(&got, false).expect("decode");
            if back != text {
                failures.push(format!("{text:?} decodes to {back:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{alias}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gemma_tokenizer_matches_llama_cpp() {
    check_model("gemma-3-270m");
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    check_model("smollm2-135m-instruct");
}

#[test]
fn qwen_tokenizer_matches_llama_cpp() {
    check_model("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn incremental_decoder_concatenates_to_full_decode() {
    for alias in REFERENCE_MODELS {
        let m = model(alias);
        let fx = fixture(alias, "tokenize.json");
        for case in fx["cases"].as_array().expect("cases") {
            let ids = ids(&case["ids"]);
            let mut dec = inhaus::tokenizer::IncrementalDecoder::new(false);
            let mut out = String::new();
            for &id in &ids {
                let piece = dec.push(&m.tokenizer, id).expect("push");
                assert!(
                    !piece.contains('\u{FFFD}')
                        || case["text"].as_str().unwrap_or("").contains('\u{FFFD}'),
                    "{alias}: emitted a broken character for {:?}",
                    case["text"]
                );
                out.push_str(&piece);
            }
            out.push_str(&dec.finish(&m.tokenizer).expect("finish"));
            let full = m.tokenizer.decode(&ids, false).expect("decode");
            assert_eq!(
                out, full,
                "{alias}: incremental decode of {:?}",
                case["text"]
            );
        }
    }
}
