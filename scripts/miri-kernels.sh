#!/usr/bin/env bash
# Runs the kernel crate's tests under Miri, the interpreter that detects undefined behaviour (out-of-
# bounds or misaligned accesses, data races, invalid values): block views, dot products, matmuls,
# paged and packed-sequence attention, quantization and the compute pool, all on their scalar paths.
# Tests too slow to interpret are marked #[cfg_attr(miri, ignore)].
#
# Needs a nightly toolchain with Miri (`rustup toolchain install nightly --component miri`), so it is
# not part of scripts/test.sh; the first run also builds the dev-dependencies (candle-core) for Miri,
# several minutes on two cores. Extra arguments go to cargo (e.g. `--test soundness`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inhaus/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Scalar paths only (Miri interprets few SIMD intrinsics); the pool's workers are never joined, by design.
export INHAUS_SIMD=scalar
export MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-ignore-leaks -Zmiri-env-forward=INHAUS_SIMD"
exec cargo +nightly miri test -p inhaus-kernels --tests "$@"
