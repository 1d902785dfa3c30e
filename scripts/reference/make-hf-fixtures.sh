#!/usr/bin/env bash
# Regenerates tests/fixtures/hf/<name>/: tiny random-weight Hugging Face checkpoints (llama, mistral, qwen2,
# qwen2-sharded, qwen3, gemma3, phi3) in real HF layout plus transformers' reference outputs (reference.json),
# the fixtures inhaus' safetensors/config/tokenizer.json/chat-template code is checked against.
#
#   scripts/reference/make-hf-fixtures.sh              # all fixtures
#   scripts/reference/make-hf-fixtures.sh qwen3 phi3   # some
#   scripts/reference/make-hf-fixtures.sh --venv       # only make the venv; prints its python
#
# 1. makes a venv under ~/.cache/inhaus/reference/hf-venv (override: INHAUS_HF_VENV) with pinned transformers,
#    torch, tokenizers, ... (a no-op once made; the registry's torch wheel for Linux brings its CUDA libraries,
#    which are large but unused: everything is computed on the CPU). scripts/reference/make-hf-qwen.sh uses it too,
# 2. runs scripts/reference/make_hf_fixtures.py offline (no model download: the checkpoints are built locally).
# Deterministic: same pinned packages => identical files (fixed seeds, 1 thread).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
VENV="${INHAUS_HF_VENV:-$HOME/.cache/inhaus/reference/hf-venv}"
PINS=(
  "torch==2.15.0"
  "transformers==5.24.0"
  "tokenizers==0.23.3"
  "safetensors==0.8.0"
  "jinja2==3.1.6"
  "gguf==0.19.0"
  "accelerate==1.15.0"
  "numpy<3"
)

if [[ ! -f "$VENV/.pins" ]] || [[ "$(cat "$VENV/.pins")" != "${PINS[*]}" ]]; then
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet "${PINS[@]}" >&2
  echo "${PINS[*]}" >"$VENV/.pins"
fi

if [[ "${1:-}" == "--venv" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
exec "$VENV/bin/python" "$here/make_hf_fixtures.py" --out "$repo/tests/fixtures/hf" "$@"
