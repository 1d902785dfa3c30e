//! The Python client suite (tests/python) against this build's server: the official `openai` SDK,
//! LangChain's OpenAI integration, and raw HTTP checked against OpenAI's OpenAPI schemas.
//! `scripts/python-env.sh` makes the pinned venv (once; later runs find its stamp), then pytest runs
//! with INHAUS_BIN pointing at the `inhaus` binary cargo built. The suite's own knobs
//! (INHAUS_TEST_MODELS and friends, see tests/python/suite.py) pass through from the environment.
mod common;
use common::*;
use std::process::Command;

/// The models the suite's server loads: INHAUS_TEST_MODELS, as tests/python/suite.py reads it.
fn suite_models() -> Vec<String> {
    let chat =
        std::env::var("INHAUS_TEST_CHAT_MODEL").unwrap_or_else(|_| "smollm2-135m-instruct".into());
    let embed =
        std::env::var("INHAUS_TEST_EMBED_MODEL").unwrap_or_else(|_| "all-minilm-l6-v2".into());
    let list = std::env::var("INHAUS_TEST_MODELS").unwrap_or_else(|_| format!("{chat},{embed}"));
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn python_clients_pass() {
    // The suite's models, and the default ones the README's examples use.
    for alias in suite_models()
        .into_iter()
        .chain(inhaus::catalog::default_serve_aliases())
    {
        if inhaus::catalog::find(&alias).is_some() {
            ensure_model(&alias);
        }
    }
    let root = repo_root();
    let env = Command::new("bash")
        .arg(root.join("scripts/python-env.sh"))
        .current_dir(&root)
        .output()
        .expect("run scripts/python-env.sh");
    let stdout = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.status.success(),
        "scripts/python-env.sh failed ({}):\n{stdout}\n{}",
        env.status,
        String::from_utf8_lossy(&env.stderr)
    );
    let python = stdout
        .lines()
        .last()
        .expect("python-env.sh prints the venv's python")
        .trim()
        .to_string();

    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "tests/python"])
        .current_dir(&root)
        .env("INHAUS_BIN", env!("CARGO_BIN_EXE_inhaus"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {python} -m pytest: {e}"));
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "pytest tests/python failed ({}); its output is above",
        out.status
    );
}
