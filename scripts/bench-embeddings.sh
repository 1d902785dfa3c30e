#!/usr/bin/env bash
# Embedding speed of all-MiniLM-L6-v2, inhaus against sentence-transformers (torch) on the same machine and
# the same 32 texts of 100 tokens (one batch), and their ratio.
#
#   scripts/bench-embeddings.sh [THREADS] [ROUNDS]    # THREADS defaults to 2 (torch.set_num_threads), ROUNDS to 3
#
# Each round runs both, one after the other: inhaus = cargo bench --bench embeddings (7 timed runs; it writes
# its texts to a file), sentence-transformers = the model folder on the CPU, model.encode(texts,
# batch_size=32), one warm-up then 7 timed runs. The medians are over all rounds' runs, so that a slow
# stretch of a shared machine weighs on both sides alike.
# Environment:
#   INHAUS_MODELS   model folder (default ~/.cache/inhaus/models)
#   ST_PYTHON       python with sentence-transformers + torch (default ~/.cache/inhaus/reference/st-venv/bin/python)
# The ratio is sentence-transformers median / inhaus median, so > 1 means inhaus is faster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
THREADS="${1:-2}"
ROUNDS="${2:-3}"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-embeddings: THREADS must be a positive integer" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-embeddings: ROUNDS must be a positive integer" >&2; exit 2; }
MODEL_DIR="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}/all-minilm-l6-v2"
PY="${ST_PYTHON:-$HOME/.cache/inhaus/reference/st-venv/bin/python}"
[[ -x "$PY" ]] || { echo "bench-embeddings: no python at $PY (set ST_PYTHON)" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/st.py" <<'PYEOF'
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
model_dir, texts_path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
texts = json.load(open(texts_path))
model = SentenceTransformer(model_dir, device="cpu")
with torch.inference_mode():
    model.encode(texts, batch_size=32)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        v = model.encode(texts, batch_size=32)
        times.append(time.perf_counter() - start)
assert v.shape == (len(texts), 384)
print("samples_ms " + " ".join(f"{t * 1e3:.1f}" for t in times))
print(f"torch {torch.__version__}")
PYEOF

cd "$repo"
cargo bench --bench embeddings --no-run 2>/dev/null
: >"$tmp/inhaus.txt"
: >"$tmp/st.txt"
for round in $(seq "$ROUNDS"); do
    INHAUS_BENCH_TEXTS="$tmp/texts.json" cargo bench --bench embeddings 2>/dev/null >"$tmp/out.txt"
    grep -q '^samples_ms ' "$tmp/out.txt" || { cat "$tmp/out.txt" >&2; echo "bench-embeddings: the cargo bench gave no samples" >&2; exit 1; }
    grep -v '^samples_ms ' "$tmp/out.txt" | sed "s/^/round $round: inhaus /"
    sed -n 's/^samples_ms //p' "$tmp/out.txt" >>"$tmp/inhaus.txt"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
        "$PY" "$tmp/st.py" "$MODEL_DIR" "$tmp/texts.json" "$THREADS" 2>/dev/null >"$tmp/out.txt"
    sed -n 's/^samples_ms //p' "$tmp/out.txt" >>"$tmp/st.txt"
    echo "round $round: sentence-transformers ($(sed -n 's/^torch //p' "$tmp/out.txt"), $THREADS threads): $(sed -n 's/^samples_ms //p' "$tmp/out.txt") ms"
done
stats() { tr ' ' '\n' <"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s %d\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[1], NR }'; }
read -r a_med a_best a_n < <(stats "$tmp/inhaus.txt")
read -r b_med b_best b_n < <(stats "$tmp/st.txt")
echo "inhaus:                median ${a_med} ms, best ${a_best} ms ($a_n runs)"
echo "sentence-transformers: median ${b_med} ms, best ${b_best} ms ($b_n runs, torch $THREADS threads)"
awk -v a="$a_med" -v b="$b_med" -v x="$a_best" -v y="$b_best" \
    'BEGIN { printf "ratio sentence-transformers / inhaus: %.2fx by median, %.2fx by best (> 1: inhaus faster)\n", b / a, y / x }'
