#!/usr/bin/env bash
# Benchmarks llama.cpp (the reference built by scripts/reference/build-llamacpp.sh) on one catalog model and,
# when an inhaus binary is available, inhaus on the same model, and prints them side by side.
#
#   scripts/bench-llamacpp.sh ALIAS [THREADS]        # THREADS defaults to 2
#
# llama.cpp: llama-bench -m <file> -p 512 -n 128 -t THREADS -r 3 -o json   (prefill pp512, decode tg128)
# inhaus:    $INHAUS_BIN bench --model ALIAS --prompt-tokens 512 --gen-tokens 128 --threads THREADS --repeats 3
#            which prints one JSON line {"prefill_tok_s": .., "decode_tok_s": .., "simd": ..} (median of repeats).
#
# Environment:
#   INHAUS_BIN            inhaus binary (default $CARGO_TARGET_DIR/release/inhaus, else target/release/inhaus)
#   INHAUS_MODELS         model folder (default ~/.cache/inhaus/models)
#   INHAUS_REFERENCE_DIR  reference build folder (default ~/.cache/inhaus/reference)
#   LLAMA_BENCH           llama-bench binary (default: the reference build's); built on first use
#   BENCH_OUT             if set, a folder where the raw llama-bench JSON and inhaus JSON are saved
# llama.cpp's column is the median of llama-bench's 3 samples (its mean and stddev are shown too); the
# ratio column is inhaus / llama.cpp (median / median), so > 1 means inhaus is faster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
[[ "$1" == -h || "$1" == --help ]] && usage
ALIAS="$1"
THREADS="${2:-2}"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-llamacpp: THREADS must be a positive integer" >&2; exit 2; }
MODELS_DIR="${INHAUS_MODELS:-$HOME/.cache/inhaus/models}"

# ---- the model file, from catalog.toml
MODEL_FILE="$(python3 - "$repo/catalog.toml" "$ALIAS" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    cat = tomllib.load(f)["model"]
m = {e["alias"]: e for e in cat}.get(sys.argv[2])
if m is None:
    sys.exit("bench-llamacpp: unknown alias %r; known: %s" % (sys.argv[2], ", ".join(e["alias"] for e in cat)))
if m.get("format") != "gguf":
    sys.exit("bench-llamacpp: %s is not a GGUF model; llama-bench cannot run it" % sys.argv[2])
print(m["file"])
PY
)"
MODEL="$MODELS_DIR/$MODEL_FILE"
if [[ ! -f "$MODEL" ]]; then
    echo "bench-llamacpp: $MODEL missing; fetching it" >&2
    "$repo/scripts/fetch-models.sh" "$ALIAS"
fi

# ---- llama-bench
if [[ -z "${LLAMA_BENCH:-}" ]]; then
    eval "$("$repo/scripts/reference/build-llamacpp.sh" --print)"
    if [[ ! -x "$LLAMA_BENCH" ]]; then
        echo "bench-llamacpp: building the llama.cpp reference first (takes a while) ..." >&2
        "$repo/scripts/reference/build-llamacpp.sh" >&2
    fi
fi
[[ -x "$LLAMA_BENCH" ]] || { echo "bench-llamacpp: $LLAMA_BENCH not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "llama.cpp: $LLAMA_BENCH -m $MODEL -p 512 -n 128 -t $THREADS -r 3 -o json" >&2
if ! "$LLAMA_BENCH" -m "$MODEL" -p 512 -n 128 -t "$THREADS" -r 3 -o json >"$work/llama.json" 2>"$work/llama.err"; then
    cat "$work/llama.err" >&2
    echo "bench-llamacpp: llama-bench failed" >&2
    exit 1
fi

# ---- inhaus
if [[ -z "${INHAUS_BIN:-}" ]]; then
    if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
        INHAUS_BIN="$CARGO_TARGET_DIR/release/inhaus"
    else
        INHAUS_BIN="$repo/target/release/inhaus"
    fi
fi
inhaus_status="missing"
if [[ -x "$INHAUS_BIN" ]]; then
    echo "inhaus:    $INHAUS_BIN bench --model $ALIAS --prompt-tokens 512 --gen-tokens 128 --threads $THREADS --repeats 3" >&2
    if INHAUS_MODELS="$MODELS_DIR" "$INHAUS_BIN" bench --model "$ALIAS" --prompt-tokens 512 --gen-tokens 128 \
        --threads "$THREADS" --repeats 3 >"$work/inhaus.out" 2>"$work/inhaus.err"; then
        inhaus_status="ok"
    else
        inhaus_status="failed (exit $?)"
        tail -5 "$work/inhaus.err" >&2 || true
    fi
fi

if [[ -n "${BENCH_OUT:-}" ]]; then
    mkdir -p "$BENCH_OUT"
    cp "$work/llama.json" "$BENCH_OUT/llamacpp-$ALIAS-t$THREADS.json"
    [[ -f "$work/inhaus.out" ]] && cp "$work/inhaus.out" "$BENCH_OUT/inhaus-$ALIAS-t$THREADS.json"
fi

python3 - "$work/llama.json" "$work/inhaus.out" "$inhaus_status" "$INHAUS_BIN" "$ALIAS" "$THREADS" <<'PY'
import json, os, statistics, sys
llama_path, inhaus_path, status, inhaus_bin, alias, threads = sys.argv[1:]
with open(llama_path) as f:
    runs = json.load(f)
def pick(kind):
    for r in runs:
        if kind == "pp" and r.get("n_prompt") == 512 and r.get("n_gen") == 0:
            return r
        if kind == "tg" and r.get("n_gen") == 128 and r.get("n_prompt") == 0:
            return r
    sys.exit(f"bench-llamacpp: no {kind} result in llama-bench output")
pp, tg = pick("pp"), pick("tg")
def med(r):
    s = r.get("samples_ts") or [r["avg_ts"]]
    return statistics.median(s)
info = runs[0]
print(f"model {alias} ({info.get('model_type', '?')}, {info.get('model_size', 0) / 2**20:.0f} MiB), threads {threads}, "
      f"llama.cpp build {info.get('build_commit', '?')} ({info.get('backends', '?')}), cpu: {info.get('cpu_info', '?')}")
inh = None
if status == "ok":
    try:
        lines = [l for l in open(inhaus_path).read().splitlines() if l.strip().startswith("{")]
        inh = json.loads(lines[-1])
        float(inh["prefill_tok_s"]); float(inh["decode_tok_s"])
    except Exception as e:
        status = f"failed (unreadable output: {e})"
        inh = None
rows = [("prefill pp512", pp, "prefill_tok_s"), ("decode tg128", tg, "decode_tok_s")]
if inh is None:
    why = "not found at " + inhaus_bin if status == "missing" else status
    print(f"inhaus: {why}; llama.cpp only")
    print(f"{'test':<14} {'llama.cpp tok/s (median)':>25} {'mean ± stddev':>20}")
    for name, r, _ in rows:
        print(f"{name:<14} {med(r):>25.2f} {r['avg_ts']:>11.2f} ± {r['stddev_ts']:<7.2f}")
else:
    print(f"inhaus simd: {inh.get('simd', '?')}")
    print(f"{'test':<14} {'llama.cpp tok/s':>16} {'inhaus tok/s':>14} {'inhaus/llama.cpp':>17}")
    for name, r, key in rows:
        a, b = med(r), float(inh[key])
        print(f"{name:<14} {a:>16.2f} {b:>14.2f} {b / a:>16.2f}x")
PY
