#!/usr/bin/env python3
"""Thin wrapper: the serving load test is now part of the binary, `inhaus bench serve`.

    scripts/bench-serve.py --url http://127.0.0.1:8080 --model ALIAS [inhaus bench serve options]

runs `$INHAUS_BIN bench serve` with the arguments given (see `inhaus bench serve --help`);
`scripts/bench-vs-llamacpp.sh` starts llama-server and inhaus on the same GGUF and sweeps both.
The earlier standalone Python load tester (--server, --both, --variants, ...) that measured the
README's older serving figures is kept in git history: `git show 382d58e:scripts/bench-serve.py`.

Environment: INHAUS_BIN (default $CARGO_TARGET_DIR/release/inhaus; without CARGO_TARGET_DIR the first of
~/.cache/inhaus/target/release/inhaus and target/release/inhaus that exists).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD = ("--server", "--both", "--variants", "--repeat", "--llama-args", "--inhaus-args", "--no-warmup")


def inhaus_bin():
    if os.environ.get("INHAUS_BIN"):
        return os.environ["INHAUS_BIN"]
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "inhaus")
    for b in (os.path.expanduser("~/.cache/inhaus/target/release/inhaus"),
              os.path.join(REPO, "target", "release", "inhaus")):
        if os.path.isfile(b):
            return b
    return os.path.join(REPO, "target", "release", "inhaus")


def main():
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    old = [a for a in args if a.split("=")[0] in OLD]
    if old:
        sys.exit(f"bench-serve: {', '.join(old)} belonged to the former script; use `inhaus bench serve` "
                 f"(--url, --concurrency, --request-rate, ...) or scripts/bench-vs-llamacpp.sh")
    b = inhaus_bin()
    if not os.path.isfile(b):
        sys.exit(f"bench-serve: inhaus binary not found at {b} (cargo build --release, or set INHAUS_BIN)")
    os.execv(b, [b, "bench", "serve", *args])


if __name__ == "__main__":
    sys.exit(main())
