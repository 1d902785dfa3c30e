#!/usr/bin/env bash
# Compile-checks the CUDA build on a machine without a GPU or a CUDA install:
#   scripts/cuda-check.sh            # cargo clippy --release --features cuda --all-targets -D warnings
# nvcc and the CUDA 13.0 headers come from the Python registry's NVIDIA wheels (pinned below: the
# release the GPU test machines have, driver 580 / nvcc 13.0), installed into a venv cached at
# $INHAUS_CUDA_VENV (default ~/.cache/inhaus/cuda-venv). candle's CUDA kernels are compiled for
# $CUDA_COMPUTE_CAP (default 90: H100/H200) into a target folder of their own,
# $INHAUS_CUDA_TARGET (default ~/.cache/inhaus/target-cuda), so the first run pays for nvcc (long:
# candle's quantized-matmul kernels) and later runs only re-check inhaus.
# Checking does not link, so no driver or CUDA library is needed here.
# Idempotent: a stamp in the venv records the wheels; while it matches, nothing is installed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${INHAUS_CUDA_VENV:-$HOME/.cache/inhaus/cuda-venv}"
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
stamp="$venv/.inhaus-wheels"

mkdir -p "$(dirname "$venv")"
# One installer at a time: a second run waits, then finds the stamp.
exec 9>"$venv.lock"
flock 9
if [[ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]]; then
    echo "cuda-check: installing ${wheels[*]} into $venv" >&2
    rm -rf "$venv"
    "${INHAUS_PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${wheels[@]}" >&2
    echo "${wheels[*]}" >"$stamp"
fi
flock -u 9

# The wheels put the toolkit (bin/nvcc, include/, nvvm/) under site-packages/nvidia/cu13.
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[[ -x "$cuda/bin/nvcc" ]] || { echo "cuda-check: no nvcc at $cuda/bin" >&2; exit 1; }
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${INHAUS_CUDA_TARGET:-$HOME/.cache/inhaus/target-cuda}"
nvcc --version | tail -n 2 >&2

cd "$repo"
cargo clippy --release --features cuda --all-targets -- -D warnings
echo "cuda-check: the cuda feature builds and is clippy-clean (sm_$CUDA_COMPUTE_CAP)" >&2
