#!/usr/bin/env bash
# Regenerates tests/fixtures/all-minilm-l6-v2/embeddings.json: sentence-transformers' vectors for the
# catalog's embedding model, the reference tests/embeddings_reference.rs checks inhaus against.
#
#   scripts/reference/make-embedding-fixtures.sh
#
# 1. makes a venv under ~/.cache/inhaus/reference/st-venv with pinned sentence-transformers and torch
#    (a no-op once made; the registry's torch wheel for Linux brings its CUDA libraries, which are
#    large but unused: the fixtures are computed on the CPU),
# 2. fetches the model folder if missing (scripts/fetch-models.sh),
# 3. runs scripts/reference/make_embedding_fixtures.py offline against the local folder.
# Deterministic: same pinned packages + same model files => identical output.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ALIAS=all-minilm-l6-v2
VENV="${INHAUS_ST_VENV:-$HOME/.cache/inhaus/reference/st-venv}"
PINS=(
  "torch==2.15.0"
  "sentence-transformers==6.2.0"
  "transformers==5.24.0"
  "tokenizers==0.23.3"
  "numpy<3"
)

if [[ ! -f "$VENV/.pins" ]] || [[ "$(cat "$VENV/.pins")" != "${PINS[*]}" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet "${PINS[@]}"
  echo "${PINS[*]}" >"$VENV/.pins"
fi

"$repo/scripts/fetch-models.sh" "$ALIAS"
models="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$VENV/bin/python" "$here/make_embedding_fixtures.py" \
  --model "$models/$ALIAS" --out "$repo/tests/fixtures/$ALIAS/embeddings.json"
