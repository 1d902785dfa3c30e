#!/usr/bin/env bash
# Regenerates the llama.cpp reference fixtures under tests/fixtures/<alias>/ (tokenize.json, greedy.json,
# chat_template.json) for the three small test models.
#
#   scripts/reference/make-fixtures.sh                  # all aliases
#   scripts/reference/make-fixtures.sh gemma-3-270m     # some aliases
#
# 1. builds the reference (scripts/reference/build-llamacpp.sh; a no-op once built),
# 2. fetches the model files if missing (scripts/fetch-models.sh; a no-op when present and verified),
# 3. runs scripts/reference/make_fixtures.py with the reference venv's python.
# Deterministic: rerunning with the same build and model files rewrites identical files.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
ALIASES=(gemma-3-270m smollm2-135m-instruct qwen2.5-coder-0.5b-instruct)
if [[ $# -gt 0 ]]; then ALIASES=("$@"); fi

"$here/build-llamacpp.sh" >/dev/null
eval "$("$here/build-llamacpp.sh" --print)"
"$repo/scripts/fetch-models.sh" "${ALIASES[@]}"
exec "$REFERENCE_PYTHON" "$here/make_fixtures.py" --out "$repo/tests/fixtures" "${ALIASES[@]}"
