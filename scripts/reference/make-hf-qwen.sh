#!/usr/bin/env bash
# Converts the catalog's Qwen2.5-Coder-0.5B-Instruct GGUF into a Hugging Face safetensors folder with
# transformers' own GGUF loader (dequantized; f32 by default, INHAUS_HF_DTYPE=bf16 for bfloat16), and records
# transformers' greedy chat completions from that folder in
# tests/fixtures/qwen2.5-coder-0.5b-instruct/hf_greedy.json.
#
#   scripts/reference/make-hf-qwen.sh
#   scripts/reference/make-hf-qwen.sh --skip-convert     # only re-record hf_greedy.json from an existing folder
#
# The folder, ~/.cache/inhaus/models/qwen2.5-coder-0.5b-instruct-hf/ (~2.5 GB in f32: the GGUF's separate
# token_embd/output tensors stay untied), is not committed. Benchmark it with
#   "$(scripts/reference/make-hf-fixtures.sh --venv)" scripts/reference/bench_transformers.py \
#       --model ~/.cache/inhaus/models/qwen2.5-coder-0.5b-instruct-hf --dtype bf16 --threads 2
# Uses the venv of scripts/reference/make-hf-fixtures.sh; fetches the GGUF if missing. Deterministic.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ALIAS=qwen2.5-coder-0.5b-instruct
py="$("$here/make-hf-fixtures.sh" --venv)"
"$repo/scripts/fetch-models.sh" "$ALIAS"
models="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
exec "$py" "$here/convert_gguf_to_hf.py" --gguf "$models/$ALIAS-q4_k_m.gguf" --out "$models/$ALIAS-hf" \
  --dtype "${INHAUS_HF_DTYPE:-f32}" --threads 2 --greedy-out "$repo/tests/fixtures/$ALIAS/hf_greedy.json" "$@"
