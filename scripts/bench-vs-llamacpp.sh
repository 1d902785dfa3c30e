#!/usr/bin/env bash
# Serving benchmark: llama.cpp's llama-server and `inhaus serve` on the same GGUF with the same thread
# count, measured by the same `inhaus bench serve` sweep; writes both JSON files per model, one
# comparison chart (`inhaus bench plot`) and prints the inhaus/llama.cpp ratios.
#
#   scripts/bench-vs-llamacpp.sh [ALIAS ...]     # default: qwen2.5-coder-0.5b-instruct gemma-3-270m
#
# Per model: llama-server -m FILE -t THREADS -c SLOTS*(INPUT+OUTPUT+256) -np SLOTS --host 127.0.0.1
# (SLOTS = the largest concurrency) is started, swept, stopped; then INHAUS_THREADS=THREADS inhaus serve
# --model ALIAS is started, swept, stopped (never both at once). The sweep, the same for both:
#   inhaus bench serve --url URL --model ALIAS --endpoint completions --concurrency CONC
#     --input-len INPUT --output-len OUTPUT --duration DURATION --warmup 2 --json FILE
# (synthetic prompts sent with ignore_eos, so both generate exactly OUTPUT tokens; the completions
# endpoint, so no chat template differs between the two).
#
# Environment (defaults):
#   THREADS=2  CONC=1,4,16,64  INPUT=128  OUTPUT=128  DURATION=30s (requests are sent for this long per
#   point; the point ends when they have all finished)
#   BENCH_OUT=bench-out        where the JSON files and serve-vs-llamacpp.svg go
#   CHART=$BENCH_OUT/serve-vs-llamacpp.svg
#   INHAUS_BIN                 inhaus binary (default $CARGO_TARGET_DIR/release/inhaus, else target/release/inhaus)
#   INHAUS_MODELS              model folder (default ~/.cache/inhaus/models)
#   LLAMA_SERVER               llama-server binary (default: the reference build of
#                              scripts/reference/build-llamacpp.sh, built on first use)
# Run it alone on the machine: the client shares the cores with the server it measures.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { sed -n '2,27p' "$0"; exit 0; }
ALIASES=("$@")
[[ ${#ALIASES[@]} -gt 0 ]] || ALIASES=(qwen2.5-coder-0.5b-instruct gemma-3-270m)
THREADS="${THREADS:-2}"
CONC="${CONC:-1,4,16,64}"
INPUT="${INPUT:-128}"
OUTPUT="${OUTPUT:-128}"
DURATION="${DURATION:-30s}"
BENCH_OUT="${BENCH_OUT:-bench-out}"
CHART="${CHART:-$BENCH_OUT/serve-vs-llamacpp.svg}"
export INHAUS_MODELS="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}"
log() { echo "bench-vs-llamacpp: $*" >&2; }
die() { log "error: $*"; exit 1; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer"
SLOTS="$(tr ',' '\n' <<<"$CONC" | sort -n | tail -1)"
[[ "$SLOTS" =~ ^[1-9][0-9]*$ ]] || die "CONC must be comma-separated positive integers"

# ---- binaries
if [[ -z "${INHAUS_BIN:-}" ]]; then
    INHAUS_BIN="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/inhaus}"
    [[ -n "$INHAUS_BIN" ]] || INHAUS_BIN="$repo/target/release/inhaus"
fi
[[ -x "$INHAUS_BIN" ]] || die "inhaus binary not found at $INHAUS_BIN (cargo build --release, or set INHAUS_BIN)"
if [[ -z "${LLAMA_SERVER:-}" ]]; then
    eval "$("$repo/scripts/reference/build-llamacpp.sh" --print)"
    if [[ ! -x "$LLAMA_SERVER" ]]; then
        log "building the llama.cpp reference first (takes a while) ..."
        "$repo/scripts/reference/build-llamacpp.sh" >&2
    fi
fi
[[ -x "$LLAMA_SERVER" ]] || die "$LLAMA_SERVER not found"
mkdir -p "$BENCH_OUT"

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap stop_server EXIT INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_ready PORT LOG: until /ready (inhaus: 503 while models load) or, where there is none, /health
# (llama-server: 503 while loading) answers 200.
wait_ready() {
    local t code
    for t in $(seq 1 600); do
        kill -0 "$server_pid" 2>/dev/null || { tail -20 "$2" >&2; die "the server exited (log $2)"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready" || true)"
        [[ "$code" == 404 ]] && code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.2
    done
    tail -20 "$2" >&2
    die "no healthy server on port $1 after 120 s (log $2)"
}

# sweep LABEL PORT ALIAS JSON
sweep() {
    log "$1: inhaus bench serve --concurrency $CONC --duration $DURATION"
    "$INHAUS_BIN" bench serve --url "http://127.0.0.1:$2" --model "$3" --label "$1" \
        --endpoint completions --concurrency "$CONC" --input-len "$INPUT" --output-len "$OUTPUT" \
        --duration "$DURATION" --warmup 2 --json "$4"
}

jsons=()
for alias in "${ALIASES[@]}"; do
    file="$("$INHAUS_BIN" fetch "$alias" | tail -1)"
    [[ "$file" == *.gguf && -f "$file" ]] || die "$alias is not a GGUF model ($file); llama-server cannot run it"
    port="$(free_port)"
    llog="$BENCH_OUT/llama-server-$alias.log"
    log "llama-server: $LLAMA_SERVER -m $file -t $THREADS -c $((SLOTS * (INPUT + OUTPUT + 256))) -np $SLOTS"
    "$LLAMA_SERVER" -m "$file" -t "$THREADS" -c "$((SLOTS * (INPUT + OUTPUT + 256)))" -np "$SLOTS" \
        --host 127.0.0.1 --port "$port" >"$llog" 2>&1 &
    server_pid=$!
    wait_ready "$port" "$llog"
    sweep "llama.cpp $alias" "$port" "$alias" "$BENCH_OUT/llamacpp-$alias.json"
    stop_server

    port="$(free_port)"
    ilog="$BENCH_OUT/inhaus-$alias.log"
    log "inhaus: INHAUS_THREADS=$THREADS $INHAUS_BIN serve --model $alias"
    INHAUS_THREADS="$THREADS" "$INHAUS_BIN" serve --model "$alias" --host 127.0.0.1 --port "$port" \
        >"$ilog" 2>&1 &
    server_pid=$!
    wait_ready "$port" "$ilog"
    sweep "inhaus $alias" "$port" "$alias" "$BENCH_OUT/inhaus-$alias.json"
    stop_server
    jsons+=("$BENCH_OUT/llamacpp-$alias.json" "$BENCH_OUT/inhaus-$alias.json")
done

"$INHAUS_BIN" bench plot "${jsons[@]}" --chart "$CHART"
log "chart: $CHART"

# ---- ratios inhaus / llama.cpp per model and concurrency
python3 - "${jsons[@]}" <<'PY'
import json, sys
files = sys.argv[1:]
print("| model | streams | llama.cpp out tok/s | inhaus out tok/s | ratio | TTFT p50 ms llama.cpp / inhaus | TPOT p50 ms llama.cpp / inhaus | errors llama.cpp / inhaus |")
print("|---|---|---|---|---|---|---|---|")
for i in range(0, len(files), 2):
    l, h = (json.load(open(f)) for f in files[i:i + 2])
    for pl, ph in zip(l["points"], h["points"]):
        a, b = pl["output_throughput"], ph["output_throughput"]
        ratio = f"{b / a:.2f}x" if a else "-"
        print(f"| {l['model']} | {pl['load'].removeprefix('c=')} | {a:.1f} | {b:.1f} | {ratio} | "
              f"{pl['ttft_ms']['p50']:.0f} / {ph['ttft_ms']['p50']:.0f} | "
              f"{pl['tpot_ms']['p50']:.1f} / {ph['tpot_ms']['p50']:.1f} | {pl['failed']} / {ph['failed']} |")
PY
