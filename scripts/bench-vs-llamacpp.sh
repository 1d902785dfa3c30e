#!/usr/bin/env bash
# Serving benchmark: llama.cpp's llama-server and `inhaus serve` on the same GGUF with the same thread
# count, measured by the same `inhaus bench serve` sweep; writes both JSON files per model, one
# comparison chart (`inhaus bench plot`) and prints the inhaus/llama.cpp ratios.
#
#   scripts/bench-vs-llamacpp.sh [ALIAS ...]     # default: qwen2.5-coder-0.5b-instruct gemma-3-270m
#
# Per model: llama-server -m FILE -t THREADS -c SLOTS*(INPUT+OUTPUT+256) -np SLOTS --host 127.0.0.1
# (SLOTS = the largest concurrency) and INHAUS_THREADS=THREADS inhaus serve --model ALIAS are started;
# each point of the sweep, the same for both,
#   inhaus bench serve --url URL --model ALIAS --endpoint completions --concurrency C
#     --input-len INPUT --output-len OUTPUT --duration DURATION --warmup 2 --json FILE
# runs against one server while the other idles, the servers alternating (AB BA AB ...), so that other
# load on the machine falls on both alike; the points are then merged into one JSON file per server.
# Synthetic prompts are sent with ignore_eos, so both generate exactly OUTPUT tokens, to the completions
# endpoint, so no chat template differs between the two.
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
#   PRIORITY=group             group: this session's scheduler autogroup runs at nice -19 while the script
#                              runs, so other sessions' work on a shared machine gets little CPU (the
#                              servers stay ordinary threads among themselves); normal: leave it
# The client shares the cores with the server it measures; other work on the machine is reported per point.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { sed -n '2,31p' "$0"; exit 0; }
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
# Other sessions' work (builds, tests) takes its share of the cores from the servers; llama.cpp's
# spinning threads suffer most. Each session is one scheduler autogroup, and autogroups share the CPU
# by their nice value, so raising this session's group (not the processes' own scheduling) leaves the
# servers' and client's threads ordinary CFS threads among themselves while other sessions get little
# time. Restored at exit.
old_group_nice=""
if [[ "${PRIORITY:-group}" == group && -r /proc/self/autogroup ]]; then
    old_group_nice="$(awk '{print $3}' /proc/self/autogroup)"
    if echo -19 2>/dev/null >/proc/self/autogroup; then
        log "this session's scheduler group at nice -19 (was $old_group_nice; PRIORITY=normal leaves it)"
    else
        old_group_nice=""
    fi
fi
restore_group() { [[ -z "$old_group_nice" ]] || echo "$old_group_nice" >/proc/self/autogroup 2>/dev/null || true; }
rm -f "$BENCH_OUT/other-load.txt"

pids=()
stop_servers() {
    local p
    for p in "${pids[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    pids=()
}
trap 'stop_servers; restore_group' EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_ready PID PORT LOG: until /ready (inhaus: 503 while models load) or, where there is none,
# /health (llama-server: 503 while loading) answers 200.
wait_ready() {
    local t code
    for t in $(seq 1 600); do
        kill -0 "$1" 2>/dev/null || { tail -20 "$3" >&2; die "the server exited (log $3)"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/ready" || true)"
        [[ "$code" == 404 ]] && code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/health" || true)"
        [[ "$code" == 200 ]] && return 0
        sleep 0.2
    done
    tail -20 "$3" >&2
    die "no healthy server on port $2 after 120 s (log $3)"
}

# The machine is shared: other work steals cores from a server (llama.cpp's spinning threads suffer most).
# busy: jiffies the whole machine spent busy; of PID; of this script's finished children (the client).
NCPU="$(nproc)" HZ="$(getconf CLK_TCK)"
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
busy_pid() { awk '{print $14+$15}' "/proc/$1/stat"; }
busy_kids() { awk '{print $16+$17}' "/proc/$$/stat"; }

# wait_quiet: before a point (both servers idle), wait up to QUIET_WAIT seconds (default 10) until the
# machine is less than 10% busy over 2 s.
wait_quiet() {
    local t b0 b1 pct
    for t in $(seq 1 "$(( ${QUIET_WAIT:-10} / 2 ))"); do
        b0="$(busy)"; sleep 2; b1="$(busy)"
        pct=$(( (b1 - b0) * 100 / (2 * HZ * NCPU) ))
        (( pct < 10 )) && return 0
        (( t == 1 )) && log "waiting for the machine to be quiet ($pct% busy) ..."
    done
    log "the machine is still $pct% busy; going on"
}

# point LABEL PORT ALIAS CONCURRENCY JSON SERVER_PID: one point of the sweep against one server; logs
# how much of the machine other work took meanwhile (not the server, not the client).
point() {
    wait_quiet
    local t0 b0 s0 k0 t1 other
    t0="$(date +%s%N)" b0="$(busy)" s0="$(busy_pid "$6")" k0="$(busy_kids)"
    log "$1: inhaus bench serve --concurrency $4 --duration $DURATION"
    "$INHAUS_BIN" bench serve --url "http://127.0.0.1:$2" --model "$3" --label "$1" \
        --endpoint completions --concurrency "$4" --input-len "$INPUT" --output-len "$OUTPUT" \
        --duration "$DURATION" --warmup 2 --json "$5"
    t1="$(date +%s%N)"
    other=$(( ($(busy) - b0 - ($(busy_pid "$6") - s0) - ($(busy_kids) - k0)) * 100 * 1000000000 / ((t1 - t0) * HZ * NCPU) ))
    log "$1 c=$4: other work took ${other}% of the machine during the point"
    echo "$1 c=$4: other work ${other}%" >>"$BENCH_OUT/other-load.txt"
}

# merge OUT PART...: one report whose points are those of the parts, in order.
merge() {
    python3 - "$@" <<'PY'
import json, sys
out, parts = sys.argv[1], [json.load(open(p)) for p in sys.argv[2:]]
merged = dict(parts[0], points=[pt for p in parts for pt in p["points"]],
              interrupted=any(p["interrupted"] for p in parts),
              command=" ; ".join(p["command"] for p in parts))
json.dump(merged, open(out, "w"), indent=2)
PY
}

jsons=()
for alias in "${ALIASES[@]}"; do
    file="$("$INHAUS_BIN" fetch "$alias" | tail -1)"
    [[ "$file" == *.gguf && -f "$file" ]] || die "$alias is not a GGUF model ($file); llama-server cannot run it"
    lport="$(free_port)"
    llog="$BENCH_OUT/llama-server-$alias.log"
    log "llama-server: $LLAMA_SERVER -m $file -t $THREADS -c $((SLOTS * (INPUT + OUTPUT + 256))) -np $SLOTS"
    "$LLAMA_SERVER" -m "$file" -t "$THREADS" -c "$((SLOTS * (INPUT + OUTPUT + 256)))" -np "$SLOTS" \
        --host 127.0.0.1 --port "$lport" >"$llog" 2>&1 &
    lpid=$!
    pids+=("$lpid")
    wait_ready "$lpid" "$lport" "$llog"
    iport="$(free_port)"
    ilog="$BENCH_OUT/inhaus-$alias.log"
    log "inhaus: INHAUS_THREADS=$THREADS $INHAUS_BIN serve --model $alias"
    INHAUS_THREADS="$THREADS" "$INHAUS_BIN" serve --model "$alias" --host 127.0.0.1 --port "$iport" \
        >"$ilog" 2>&1 &
    ipid=$!
    pids+=("$ipid")
    wait_ready "$ipid" "$iport" "$ilog"
    # Both servers are up (an idle one takes no CPU); the points alternate between them, in the order
    # AB BA AB ..., so whatever else loads the machine falls on both alike.
    lparts=() iparts=() n=0
    for c in ${CONC//,/ }; do
        lj="$BENCH_OUT/llamacpp-$alias-c$c.json" ij="$BENCH_OUT/inhaus-$alias-c$c.json"
        if (( n % 2 == 0 )); then
            point "llama.cpp $alias" "$lport" "$alias" "$c" "$lj" "$lpid"
            point "inhaus $alias" "$iport" "$alias" "$c" "$ij" "$ipid"
        else
            point "inhaus $alias" "$iport" "$alias" "$c" "$ij" "$ipid"
            point "llama.cpp $alias" "$lport" "$alias" "$c" "$lj" "$lpid"
        fi
        lparts+=("$lj") iparts+=("$ij") n=$((n + 1))
    done
    stop_servers
    merge "$BENCH_OUT/llamacpp-$alias.json" "${lparts[@]}"
    merge "$BENCH_OUT/inhaus-$alias.json" "${iparts[@]}"
    rm -f "${lparts[@]}" "${iparts[@]}"
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
