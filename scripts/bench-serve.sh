#!/usr/bin/env bash
# Thin wrapper: streaming load test of an OpenAI-compatible server (inhaus or llama-server) at 1/4/16/64
# concurrent streams. All arguments go to scripts/bench-serve.py (standard-library Python 3.11+); see
#   scripts/bench-serve.sh --help
# Examples:
#   scripts/bench-serve.sh --server llama --model gemma-3-270m
#   scripts/bench-serve.sh --both -c 1,4,16
#   scripts/bench-serve.sh --url http://127.0.0.1:8080 -c 16
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/bench-serve.py" "$@"
