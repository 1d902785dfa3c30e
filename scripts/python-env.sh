#!/usr/bin/env bash
# Creates the Python environment of the client test suite (tests/python): a venv at
# $INHAUS_PY_VENV (default ~/.cache/inhaus/py-venv) with the exact versions pinned in
# tests/python/requirements.txt, installed through pip.
# Idempotent: a stamp file in the venv records the hash of the requirements and of the venv's Python;
# while it matches, nothing is installed. Concurrent runs wait for each other (flock).
# The last line printed on stdout is the venv's python; pip's chatter goes to stderr.
#   scripts/python-env.sh                 # then: "$(scripts/python-env.sh | tail -n1)" -m pytest tests/python
# $INHAUS_PYTHON picks the interpreter that creates the venv (default python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$repo/tests/python/requirements.txt"
venv="${INHAUS_PY_VENV:-$HOME/.cache/inhaus/py-venv}"
base_python="${INHAUS_PYTHON:-python3}"
py="$venv/bin/python"
stamp="$venv/.inhaus-requirements.sha256"

[[ -f "$req" ]] || { echo "python-env: missing $req" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"

# One installer at a time: a second run waits, then finds the stamp and returns at once.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
fi

want_stamp() {
    { "$py" -c 'import sys; print(sys.version)'; cat "$req"; } | sha256sum | cut -d' ' -f1
}

if [[ -f "$stamp" ]] && "$py" -c '' 2>/dev/null && [[ "$(cat "$stamp")" == "$(want_stamp)" ]]; then
    echo "$py"
    exit 0
fi

# A venv whose interpreter no longer runs (the base Python moved) is made anew.
if ! "$py" -c '' 2>/dev/null; then
    echo "python-env: creating $venv" >&2
    rm -rf "$venv"
    "$base_python" -m venv "$venv" >&2
fi
rm -f "$stamp"
echo "python-env: installing tests/python/requirements.txt into $venv" >&2
"$py" -m pip install --disable-pip-version-check --no-input --quiet -r "$req" >&2
want_stamp >"$stamp"
echo "$py"
