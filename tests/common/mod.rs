//! Shared helpers of the integration tests: fetching real models through the project's script, loading
//! them once per test binary, and reading the llama.cpp reference fixtures.
#![allow(dead_code)]
use inhaus::loader::{self, LoadedModel};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

pub mod server;

/// An engine configuration for tests: 64 sequences, 256-token steps, 16-token blocks.
pub fn engine_config(num_blocks: usize) -> inhaus::engine::scheduler::EngineConfig {
    inhaus::engine::scheduler::EngineConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: 256,
        block_size: 16,
        num_blocks,
        max_waiting: 256,
        speculative: None,
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Makes sure the model file of `alias` is present, fetching it with `scripts/fetch-models.sh`.
pub fn ensure_model(alias: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let entry = inhaus::catalog::find(alias).expect("alias in catalog");
    if entry.path_in(&inhaus::catalog::models_dir()).is_file() {
        return;
    }
    let status = std::process::Command::new(repo_root().join("scripts/fetch-models.sh"))
        .arg(alias)
        .status()
        .expect("run scripts/fetch-models.sh");
    assert!(status.success(), "scripts/fetch-models.sh {alias} failed");
}

/// The model of `alias`, loaded once per test binary.
pub fn model(alias: &str) -> &'static LoadedModel {
    static MODELS: OnceLock<Mutex<HashMap<String, &'static LoadedModel>>> = OnceLock::new();
    let map = MODELS.get_or_init(Default::default);
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = m.get(alias) {
        return l;
    }
    ensure_model(alias);
    let loaded: &'static LoadedModel =
        Box::leak(Box::new(loader::load(alias).expect("load model")));
    m.insert(alias.to_string(), loaded);
    loaded
}

/// A reference fixture written by `scripts/reference/make-fixtures.sh`.
pub fn fixture(alias: &str, name: &str) -> serde_json::Value {
    let path = repo_root().join("tests/fixtures").join(alias).join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The three models every test run checks against llama.cpp.
pub const REFERENCE_MODELS: [&str; 3] = [
    "gemma-3-270m",
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
];
