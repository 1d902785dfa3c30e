#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints (also of the CUDA build, without a GPU; skip
# that with INHAUS_SKIP_CUDA_CHECK=1), then every test in an optimized build.
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
# The CUDA build, compile-checked without a GPU (nvcc from the CUDA 13.0 wheels, kernels for sm_90,
# its own cached target folder; the first run compiles candle's CUDA kernels, ~15 minutes on 2 cores).
if [ "${INHAUS_SKIP_CUDA_CHECK:-0}" != 1 ]; then
    echo "== cargo clippy --features cuda (scripts/cuda-check.sh)"
    scripts/cuda-check.sh
fi
echo "== models for the tests"
scripts/fetch-models.sh gemma-3-270m smollm2-135m-instruct qwen2.5-coder-0.5b-instruct all-minilm-l6-v2
echo "== cargo test (release)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --workspace 2>&1 | tee "$log"
# The kernels pick their SIMD level at run time; on a CPU with AVX-512 VNNI the run above exercises
# that path only. Run the kernel test binaries just built again, capped to AVX2 and to the scalar
# code (no rebuild: `cargo test -p` alone would resolve features differently and recompile). The
# build already targets the x86-64 baseline (no target-cpu is set anywhere), so these runs are what
# a CPU without AVX-512, or without AVX2, executes.
mapfile -t kernel_tests < <(cargo test --release --workspace --no-run --message-format=json 2>/dev/null |
    grep '"package_id":"[^"]*inhaus-kernels' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
if [ "${#kernel_tests[@]}" -eq 0 ]; then
    echo "no kernel test binaries found" >&2
    exit 1
fi
for level in avx2 scalar; do
    for bin in "${kernel_tests[@]}"; do
        echo "== INHAUS_SIMD=$level $(basename "$bin")"
        (cd kernels && INHAUS_SIMD="$level" "$bin") 2>&1 | tee -a "$log"
    done
done
# One closing line for the whole suite (cargo prints one per test binary, the last being doc-tests;
# the kernel reruns count once per SIMD level).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
