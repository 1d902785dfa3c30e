//! The `inhaus` binary as a user runs it: `tokenize` prints llama.cpp's ids as JSON; `generate` streams
//! only the generated text to stdout and ends stderr with the timing line.
mod common;
use common::*;
use std::process::Command;

fn inhaus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args(args)
        .output()
        .expect("run inhaus")
}

#[test]
fn tokenize_prints_reference_ids() {
    ensure_model("gemma-3-270m");
    let fx = fixture("gemma-3-270m", "tokenize.json");
    for case in fx["cases"].as_array().expect("cases").iter().take(6) {
        let text = case["text"].as_str().expect("text");
        let out = inhaus(&["tokenize", "--model", "gemma-3-270m", "--", text]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(ids(&v["ids"]), ids(&case["ids"]), "{text:?}");
    }
}

#[test]
fn generate_streams_only_the_greedy_text() {
    use inhaus::engine::generate::{generate, GenerateOptions};
    use inhaus::engine::sampler::SamplingParams;
    let m = model("gemma-3-270m");
    let prompt = "The capital of France is";
    let ids = m.tokenizer.encode(prompt, true).expect("encode");
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::default(),
        ignore_eos: true,
        stop_ids: vec![],
        prefill_chunk: 512,
        speculative: None,
    };
    let (want, _) = generate(&m.model, &ids, &opts, |_| true).expect("generate");
    let expected = m.tokenizer.decode(&want, true).expect("decode");
    assert!(!expected.trim().is_empty());
    let out = inhaus(&[
        "generate",
        "--model",
        "gemma-3-270m",
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--ignore-eos",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.trim_end_matches('\n'), expected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("prompt: 6 tokens in ")
            && last.contains("; decode: 8 tokens in ")
            && last.ends_with("tok/s)"),
        "timing line: {last:?}"
    );
}

#[test]
fn unknown_model_is_a_clear_error() {
    let out = inhaus(&["tokenize", "--model", "no-such-model", "hi"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown model `no-such-model`"), "{stderr}");
}

#[test]
fn too_many_tokens_is_a_clear_error_not_an_allocation() {
    ensure_model("smollm2-135m-instruct");
    let out = inhaus(&[
        "generate",
        "--model",
        "smollm2-135m-instruct",
        "--prompt",
        "Hi",
        "--max-tokens",
        "1000000000",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds the model's context"), "{stderr}");
}

#[test]
fn bad_serve_settings_are_clear_errors_before_anything_loads() {
    let dir = std::env::temp_dir().join(format!("inhaus-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "port = 8080\nkv_cache_mib = 64\n").expect("write config");
    let out = inhaus(&["serve", "--config", cfg.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown field `kv_cache_mib`") && err.contains("kv_cache_memory"),
        "names the bad key and the known ones: {err}"
    );
    std::fs::write(&cfg, "max_body = \"2 parsecs\"\n").expect("write config");
    let out = inhaus(&["serve", "--config", cfg.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown size unit"),
        "{err}"
    );
    let out = inhaus(&["serve", "--kv-cache-memory", "lots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a size"),
        "{err}"
    );
    let out = inhaus(&["fetch", "no-such-model"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown model alias `no-such-model`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_limits_that_would_refuse_every_request() {
    // A model path that does not exist: were the limits accepted, the load would fail instead.
    let base = ["serve", "--port", "0", "--model", "/no/such/model.gguf"];
    let out = inhaus(&[&base[..], &["--max-waiting", "0"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--max-waiting must be at least 1"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("inhaus-cli-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("limits.toml");
    std::fs::write(&cfg, "max_waiting = 4\nmax_connections = 0\n").expect("write config");
    let out = inhaus(&[&base[..], &["--config", cfg.to_str().expect("utf-8 path")]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--max-connections must be at least 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_speculation_settings_that_make_no_sense() {
    let base = ["serve", "--port", "0", "--model", "/no/such/model.gguf"];
    for (args, want) in [
        (
            &[
                "--speculative",
                "ngram",
                "--ngram-prompt-lookup-min",
                "4",
                "--ngram-prompt-lookup-max",
                "2",
            ][..],
            "--ngram-prompt-lookup-min (4) must be at least 1",
        ),
        (
            &["--speculative", "ngram", "--num-speculative-tokens", "0"][..],
            "--num-speculative-tokens must be between 1 and 32",
        ),
        (&["--speculative", "medusa"][..], "invalid value 'medusa'"),
    ] {
        let out = inhaus(&[&base[..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    let dir = std::env::temp_dir().join(format!("inhaus-cli-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("spec.toml");
    std::fs::write(&cfg, "speculative = \"draft\"\n").expect("write config");
    let out = inhaus(&[&base[..], &["--config", cfg.to_str().expect("utf-8 path")]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("speculative must be \"off\" or \"ngram\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
