#!/usr/bin/env bash
# Embedding speed of all-MiniLM-L6-v2, inhaus against sentence-transformers (torch) on the same machine and
# the same 32 texts of 100 tokens (one batch), and their ratio.
#
#   scripts/bench-embeddings.sh [THREADS]        # THREADS defaults to 2 (torch.set_num_threads)
#
# inhaus:                cargo bench --bench embeddings (median of 7 runs); it writes its texts to a file
# sentence-transformers: the model folder loaded on the CPU, model.encode(texts, batch_size=32), one warm-up,
#                        median of 7 runs
# Environment:
#   INHAUS_MODELS   model folder (default ~/.cache/inhaus/models)
#   ST_PYTHON       python with sentence-transformers + torch (default ~/.cache/inhaus/reference/st-venv/bin/python)
# The ratio is sentence-transformers median / inhaus median, so > 1 means inhaus is faster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
THREADS="${1:-2}"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-embeddings: THREADS must be a positive integer" >&2; exit 2; }
MODEL_DIR="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}/all-minilm-l6-v2"
PY="${ST_PYTHON:-$HOME/.cache/inhaus/reference/st-venv/bin/python}"
[[ -x "$PY" ]] || { echo "bench-embeddings: no python at $PY (set ST_PYTHON)" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$repo"
INHAUS_BENCH_TEXTS="$tmp/texts.json" RAYON_NUM_THREADS="$THREADS" cargo bench --bench embeddings 2>/dev/null \
    | tee "$tmp/inhaus.txt"
inhaus_ms="$(sed -n 's/.*median \([0-9.]*\) ms.*/\1/p' "$tmp/inhaus.txt" | head -n1)"
[[ -n "$inhaus_ms" && -s "$tmp/texts.json" ]] || { echo "bench-embeddings: the cargo bench gave no median" >&2; exit 1; }

HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$PY" - "$MODEL_DIR" "$tmp/texts.json" "$THREADS" \
    >"$tmp/st.txt" <<'PYEOF'
import json, statistics, sys, time
import torch
from sentence_transformers import SentenceTransformer
model_dir, texts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
texts = json.load(open(texts_path))
model = SentenceTransformer(model_dir, device="cpu")
tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
with torch.inference_mode():
    model.encode(texts, batch_size=32)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        v = model.encode(texts, batch_size=32)
        times.append(time.perf_counter() - start)
assert v.shape == (len(texts), 384)
times.sort()
print(f"{statistics.median(times) * 1e3:.1f} {times[0] * 1e3:.1f} {tokens} {torch.__version__}")
PYEOF
read -r st_ms st_best st_tokens torch_version <"$tmp/st.txt"
echo "sentence-transformers (torch $torch_version, $THREADS threads): 32 texts, $st_tokens tokens: median $st_ms ms, best $st_best ms"
awk -v a="$inhaus_ms" -v b="$st_ms" 'BEGIN { printf "inhaus median %.1f ms, sentence-transformers median %.1f ms, ratio st/inhaus %.2fx\n", a, b, b / a }'
