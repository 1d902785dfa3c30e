//! all-MiniLM-L6-v2 embeddings against sentence-transformers (tests/fixtures/all-minilm-l6-v2/embeddings.json,
//! written by scripts/reference/make-embedding-fixtures.sh): same token ids, same vectors (cosine), unit length,
//! independent of batching, token-array input equal to text input, too-long input refused.
mod common;

use common::{ensure_model, fixture, ids};
use inhaus::embeddings::{EmbedError, Embedder};
use std::sync::OnceLock;

const ALIAS: &str = "all-minilm-l6-v2";

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| {
        ensure_model(ALIAS);
        Embedder::load(ALIAS).expect("load the embedding model")
    })
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_no_special: Vec<u32>,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let f = fixture(ALIAS, "embeddings.json");
    f["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: ids(&c["ids"]),
            ids_no_special: ids(&c["ids_no_special"]),
            n_tokens: c["n_tokens"].as_u64().expect("n_tokens") as usize,
            embedding: c["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

#[test]
fn fixture_and_model_agree_on_shape() {
    let f = fixture(ALIAS, "embeddings.json");
    let e = embedder();
    assert_eq!(e.dimensions(), 384);
    assert_eq!(f["dimensions"].as_u64(), Some(384));
    assert_eq!(e.max_input_tokens(), 512);
    assert_eq!(
        f["max_seq_length"].as_u64(),
        Some(e.max_seq_length() as u64),
        "sentence-transformers truncates at max_seq_length; inhaus must use the same"
    );
    assert_eq!(e.max_seq_length(), 256);
    let cases = cases();
    assert!(cases.len() >= 20);
    // The fixture exercises truncation: inputs at, just over, and far over max_seq_length.
    assert!(cases.iter().any(|c| c.n_tokens == 256));
    assert!(cases.iter().any(|c| c.n_tokens == 257));
    assert!(cases.iter().any(|c| c.n_tokens > 500));
}

#[test]
fn token_ids_match_sentence_transformers() {
    let e = embedder();
    for c in cases() {
        let got = e.tokenize(&c.text).expect("tokenize");
        assert_eq!(got, c.ids_no_special, "ids of {:?}", short(&c.text));
        assert_eq!(
            e.model_input_ids(&got),
            c.ids,
            "model input of {:?}",
            short(&c.text)
        );
        assert_eq!(e.count_tokens(&c.text).expect("count"), c.n_tokens);
    }
}

#[test]
fn vectors_match_sentence_transformers() {
    let e = embedder();
    let cases = cases();
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let got = e.embed_texts(&texts).expect("embed");
    assert_eq!(got.len(), cases.len());
    let mut min = f64::INFINITY;
    for (c, v) in cases.iter().zip(&got) {
        assert_eq!(v.len(), 384);
        let cos = cosine(v, &c.embedding);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", short(&c.text));
        let max_abs = v
            .iter()
            .zip(&c.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_abs < 1e-3,
            "max |diff| {max_abs} for {:?}",
            short(&c.text)
        );
        min = min.min(cos);
    }
    eprintln!(
        "min cosine vs sentence-transformers: {min:.9} (1 - min = {:.2e})",
        1.0 - min
    );
    // Distinct inputs give distinct vectors (the comparison above is not against a constant).
    assert!(cosine(&got[0], &got[5]) < 0.9);
}

#[test]
fn vectors_are_unit_length() {
    let e = embedder();
    let texts: Vec<String> = cases().into_iter().map(|c| c.text).collect();
    for (t, v) in texts.iter().zip(e.embed_texts(&texts).expect("embed")) {
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm} for {:?}", short(t));
    }
}

#[test]
fn batching_does_not_change_vectors() {
    let e = embedder();
    let texts: Vec<String> = cases().into_iter().map(|c| c.text).collect();
    let all = e.embed_texts(&texts).expect("embed all");
    // More than one internal batch: 40 inputs, mixed lengths, in a different order.
    let mut many: Vec<String> = texts.iter().rev().cloned().collect();
    many.extend(texts.iter().take(17).cloned());
    let many_vectors = e.embed_texts(&many).expect("embed many");
    let mut min = f64::INFINITY;
    for (t, v) in texts.iter().zip(&all) {
        let alone = e.embed_texts(std::slice::from_ref(t)).expect("embed one");
        let cos = cosine(v, &alone[0]);
        assert!(
            cos >= 0.99999,
            "batched vs alone cosine {cos} for {:?}",
            short(t)
        );
        min = min.min(cos);
        let j = many.iter().position(|m| m == t).expect("present");
        let cos = cosine(v, &many_vectors[j]);
        assert!(
            cos >= 0.99999,
            "batch order cosine {cos} for {:?}",
            short(t)
        );
        min = min.min(cos);
    }
    eprintln!(
        "min cosine batched vs alone: {min:.9} (1 - min = {:.2e})",
        1.0 - min
    );
}

#[test]
fn token_arrays_equal_texts() {
    let e = embedder();
    let cases = cases();
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let arrays: Vec<Vec<u32>> = cases.iter().map(|c| c.ids_no_special.clone()).collect();
    let from_text = e.embed_texts(&texts).expect("texts");
    let from_ids = e.embed_tokens(&arrays).expect("token arrays");
    for ((t, a), b) in texts.iter().zip(&from_text).zip(&from_ids) {
        assert_eq!(a, b, "token array vs text for {:?}", short(t));
    }
}

#[test]
fn too_long_and_invalid_inputs_are_errors() {
    let e = embedder();
    // 510 ids + [CLS]/[SEP] = 512: accepted (and truncated to max_seq_length like sentence-transformers).
    let ok = vec![2023u32; 510];
    assert_eq!(e.embed_tokens(&[ok]).expect("512 tokens").len(), 1);
    let long = vec![2023u32; 511];
    match e.embed_tokens(&[vec![2023], long]) {
        Err(err @ EmbedError::InputTooLong { .. }) => {
            assert!(err.is_invalid_input());
            assert!(matches!(
                err,
                EmbedError::InputTooLong {
                    index: 1,
                    tokens: 513,
                    max: 512
                }
            ));
        }
        other => panic!("expected InputTooLong, got {:?}", other.map(|v| v.len())),
    }
    let text = "word ".repeat(600);
    assert!(matches!(
        e.embed_texts(&[text]),
        Err(EmbedError::InputTooLong { index: 0, .. })
    ));
    match e.embed_tokens(&[vec![101, 40_000]]) {
        Err(err @ EmbedError::InvalidToken { .. }) => assert!(err.is_invalid_input()),
        other => panic!("expected InvalidToken, got {:?}", other.map(|v| v.len())),
    }
    assert!(e.embed_texts::<String>(&[]).expect("no inputs").is_empty());
}
