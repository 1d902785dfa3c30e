#!/usr/bin/env bash
# Speculative decoding by prompt lookup (`--speculative ngram`) against plain decoding: the same
# binary and model, one server after the other, rounds alternating, on the prompt sets of
# scripts/bench-data/ (make-speculative-prompts.py):
#   copy  - order documents to extract as JSON and Python modules to return edited (1,000-1,500
#           tokens each; answers copy long spans), one stream;
#   free  - stories and explanations (guesses fail), one stream;
#   c16   - 16 streams of the synthetic workload (speculation switches itself off there).
# Each is run greedy (temperature 0) and with the server's default sampling, unless TEMPS says
# otherwise. The decode rate is 1000 / TPOT (time per output token after the first), per request,
# median; the summary prints the ratios ngram / off.
#
#   scripts/bench-speculative.sh                       # default chat model, 2 rounds
#   MODEL=qwen2.5-coder-1.5b-instruct ROUNDS=3 scripts/bench-speculative.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inhaus/target}"
BIN="${BIN:-$CARGO_TARGET_DIR/release/inhaus}"
MODEL="${MODEL:-qwen2.5-coder-0.5b-instruct}"
ROUNDS="${ROUNDS:-2}"
TEMPS="${TEMPS:-0 default}"
PORT="${PORT:-8191}"
OUT="${OUT:-docs/bench/speculative-$(date +%F)}"
K="${K:-3}"
cargo build --release --bin inhaus
mkdir -p "$OUT"
url="http://127.0.0.1:$PORT"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

serve() {
    "$BIN" serve --model "$MODEL" --port "$PORT" --speculative "$1" --num-speculative-tokens "$K" \
        >"$OUT/serve-$1.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        curl -sf "$url/ready" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$OUT/serve-$1.log" >&2; exit 1; }
        sleep 1
    done
    echo "the server did not get ready" >&2
    exit 1
}

bench() { # name mode round temp args...
    local name=$1 mode=$2 round=$3 temp=$4
    shift 4
    "$BIN" bench serve --url "$url" --model "$MODEL" --label "$mode" --temperature "$temp" \
        --json "$OUT/r$round-$mode-$name-t$temp.json" --quiet "$@" | grep -E "^(c=|label)" || true
}

for round in $(seq 1 "$ROUNDS"); do
    # Alternate which mode goes first, so a slow phase of the machine does not favour one.
    modes="off ngram"
    [ $((round % 2)) = 0 ] && modes="ngram off"
    for mode in $modes; do
        echo "== round $round: --speculative $mode"
        serve "$mode"
        for t in $TEMPS; do
            bench copy "$mode" "$round" "$t" --concurrency 1 --dataset scripts/bench-data/speculative-copy.jsonl
            bench free "$mode" "$round" "$t" --concurrency 1 --dataset scripts/bench-data/speculative-free.jsonl
        done
        bench c16 "$mode" "$round" 0 --concurrency 16 --requests 48 --input-len 150 --output-len 128
        curl -s "$url/metrics" | grep -E "^inhaus:spec_decode" >"$OUT/r$round-$mode-metrics.txt" || true
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        pid=""
    done
done

python3 - "$OUT" <<'PY'
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "r*-*.json"))):
    base = os.path.basename(f)[:-5]
    rnd, mode, name, temp = base.split("-", 3)
    p = json.load(open(f))["points"][0]
    rows.setdefault((name, temp), {}).setdefault(mode, []).append(p)
print(f"{'workload':<10} {'temp':<8} {'decode tok/s off':>17} {'ngram':>8} {'ratio':>6} {'out tok/s off':>14} {'ngram':>8} {'ratio':>6}")
for (name, temp), modes in sorted(rows.items()):
    if "off" not in modes or "ngram" not in modes:
        continue
    dec = {m: statistics.median(1000.0 / p["tpot_ms"]["p50"] for p in ps if p["tpot_ms"]["p50"] > 0) for m, ps in modes.items()}
    thr = {m: statistics.median(p["output_throughput"] for p in ps) for m, ps in modes.items()}
    print(f"{name:<10} {temp:<8} {dec['off']:>17.1f} {dec['ngram']:>8.1f} {dec['ngram'] / dec['off']:>6.2f} {thr['off']:>14.1f} {thr['ngram']:>8.1f} {thr['ngram'] / thr['off']:>6.2f}")
PY
