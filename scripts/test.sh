#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test in an optimized build.
# Models the tests need are fetched into $INHAUS_MODELS (default ~/.cache/inhaus/models) first; build
# output goes to $CARGO_TARGET_DIR (default ~/.cache/inhaus/target) so repeated runs reuse it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inhaus/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "== models for the tests"
scripts/fetch-models.sh gemma-3-270m smollm2-135m-instruct qwen2.5-coder-0.5b-instruct all-minilm-l6-v2
echo "== cargo test (release)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last being doc-tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
