#!/usr/bin/env python3
"""Load-test an OpenAI-compatible streaming server: inhaus or llama.cpp's llama-server, driven the same way.

    scripts/bench-serve.py [--server llama|inhaus | --url http://127.0.0.1:PORT | --both] [options]

For each concurrency C (default 1,4,16,64) it sends one wave of C concurrent streaming requests to the
legacy `/v1/completions` endpoint (raw text prompt; the default model gemma-3-270m is a base model):
each request has its own prompt of about --prompt-tokens tokens (default 150), "max_tokens" 128,
"ignore_eos": true, "temperature": 0, "stream": true. Per request it measures
  TTFT  time from sending the request to the first SSE chunk with non-empty text,
  ITL   the gaps between consecutive chunks with non-empty text,
  tokens output tokens (usage.completion_tokens of the final chunk when sent, else content chunks).
Per wave: output tok/s = all output tokens / wall time of the wave (first send to last stream end),
TTFT p50/p90, ITL p50/p90/p99 (over all gaps of all requests), and TPOT (mean over requests of
(end - first token) / (tokens - 1)).

Variants (--variants, default "greedy"): each concurrency runs one wave per variant against the same
server, round-robin --repeat times (median tok/s reported), so variants are compared in the same run:
  greedy     temperature 0 (the default above)
  t1         temperature 1, no top-k/top-p (what the OpenAI SDKs send by default)
  schema     temperature 0 with a JSON schema (an array of 60 small objects, so 128 tokens never finish
             it): inhaus gets `response_format` json_schema, llama-server its `json_schema` field
  schema-t1  the schema at temperature 1
With a schema variant, the time to first token of a schema never seen before (grammar compiled) and of
the same schema again (cached) is measured first, once per server start, and printed.

Servers:
  --server llama   starts `$LLAMA_SERVER -m FILE -c C*(prompt+max_tokens+slack) -np C -t THREADS
                   --host 127.0.0.1 --port FREE`, once per concurrency (so the slots equal the streams),
                   waits for /health, runs the wave, stops it.
  --server inhaus  starts `INHAUS_THREADS=THREADS $INHAUS_BIN serve --model ALIAS --port FREE [--inhaus-args]`
                   once per concurrency (inhaus is expected to listen on 127.0.0.1).
  --url URL        drives a server that is already running (loopback only); nothing is started.
  --both           llama then inhaus, printed side by side with ratios inhaus/llama.
Servers this script starts are always stopped (also on Ctrl-C, SIGTERM and errors); their logs go to
--log-dir (default: a temporary folder that is removed unless a server failed).

Prompts: "Story W-N." (wave W, request N) followed by sentences of a fixed story, rotated per request,
so every prompt is distinct and no wave reuses an earlier wave's prefix cache. The number of words is
calibrated with the server's /tokenize endpoint (llama-server has one) so the prompt is about
--prompt-tokens tokens; with --both the llama calibration is reused for inhaus, and when no /tokenize
exists a words->tokens estimate is used. The usage prompt_tokens, when the server
reports it, is printed as "prompt tok".

Environment:
  LLAMA_SERVER          llama-server binary (default ~/.cache/inhaus/reference/bin/llama-server,
                        or $INHAUS_REFERENCE_DIR/bin/llama-server)
  INHAUS_BIN            inhaus binary (default $CARGO_TARGET_DIR/release/inhaus; without CARGO_TARGET_DIR the
                        first of ~/.cache/inhaus/target/release/inhaus and target/release/inhaus that exists)
  INHAUS_MODELS         model folder (default ~/.cache/inhaus/models)
Only the Python standard library is used (asyncio + raw HTTP/1.1 over asyncio.open_connection).
"""

import argparse
import asyncio
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "bench-serve"

STORY = [
    "The lighthouse keeper woke before dawn and climbed the spiral stairs to check the lamp.",
    "Outside, the sea was grey and restless, and gulls circled above the rocks below the tower.",
    "She wrote the weather in her logbook: wind from the north-east, visibility poor, rain likely by noon.",
    "A small fishing boat was working its way along the coast, its engine coughing in the cold air.",
    "Her brother had promised to bring supplies from the village, but the road had flooded again.",
    "She made tea on the iron stove and listened to the radio crackle with distant voices.",
    "In the afternoon the fog rolled in so thickly that she could not see the end of the pier.",
    "She started the foghorn and counted the seconds between each long, mournful blast.",
    "Near evening a light appeared on the water, blinking in a pattern she did not recognise.",
    "She took the old signal lamp from its shelf and answered slowly, one letter at a time.",
    "The reply came back: a ship had lost its way and asked for the depth of the channel.",
    "She checked the charts, found the safe passage between the reefs, and sent the numbers.",
]


def die(msg, code=2):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(code)


def log(msg):
    print(f"[{PROG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- catalog / binaries

def catalog_file(alias):
    with open(os.path.join(REPO, "catalog.toml"), "rb") as f:
        cat = tomllib.load(f)["model"]
    m = {e["alias"]: e for e in cat}.get(alias)
    if m is None:
        die(f"unknown alias {alias!r}; known: {', '.join(e['alias'] for e in cat)}")
    if m.get("format") != "gguf":
        die(f"{alias} is not a GGUF model; llama-server cannot run it")
    models = os.environ.get("INHAUS_MODELS") or os.path.expanduser("~/.cache/inhaus/models")
    return os.path.join(models, m["file"])


def llama_server_bin():
    b = os.environ.get("LLAMA_SERVER")
    if not b:
        ref = os.environ.get("INHAUS_REFERENCE_DIR") or os.path.expanduser("~/.cache/inhaus/reference")
        b = os.path.join(ref, "bin", "llama-server")
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        die(f"llama-server not found at {b} (set LLAMA_SERVER, or build it with scripts/reference/build-llamacpp.sh)")
    return b


def inhaus_bin():
    b = os.environ.get("INHAUS_BIN")
    if not b:
        t = os.environ.get("CARGO_TARGET_DIR")
        cands = [os.path.join(t, "release", "inhaus")] if t else \
            [os.path.expanduser("~/.cache/inhaus/target/release/inhaus"),  # scripts/test.sh's default
             os.path.join(REPO, "target", "release", "inhaus")]
        b = next((c for c in cands if os.path.isfile(c)), cands[0])
    return b


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- minimal HTTP/1.1 client

class HttpError(Exception):
    pass


async def _read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise HttpError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _iter_body(reader, headers):
    """Yields body byte pieces as they arrive (chunked, content-length or until close)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # trailers until empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                raise HttpError("connection closed before end of body")
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def _open(host, port, method, path, body, timeout):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    payload = b"" if body is None else json.dumps(body).encode()
    req = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
           f"Accept: */*\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    writer.write(req.encode() + payload)
    await writer.drain()
    return reader, writer


async def http_json(host, port, method, path, body=None, timeout=30.0):
    """One request; returns (status, parsed JSON or text)."""
    async def go():
        reader, writer = await _open(host, port, method, path, body, timeout)
        try:
            status, headers = await _read_head(reader)
            data = b"".join([p async for p in _iter_body(reader, headers)])
        finally:
            writer.close()
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode("utf-8", "replace")
    return await asyncio.wait_for(go(), timeout)


# ---------------------------------------------------------------- one streaming request

class Result:
    def __init__(self):
        self.ok = False
        self.error = None
        self.t_send = None
        self.ttft = None
        self.t_end = None
        self.content_times = []   # perf_counter of each chunk with non-empty text
        self.chunks = 0           # content chunks
        self.usage_tokens = None  # usage.completion_tokens, when reported
        self.prompt_tokens = None
        self.text = []

    @property
    def tokens(self):
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


def _chunk_text(obj):
    ch = obj.get("choices") or []
    if not ch:
        return ""
    c = ch[0]
    if "text" in c and c["text"]:
        return c["text"]
    d = c.get("delta") or {}
    return d.get("content") or ""


async def stream_request(host, port, body, timeout, res):
    async def go():
        res.t_send = time.perf_counter()
        reader, writer = await _open(host, port, "POST", "/v1/completions", body, timeout)
        try:
            status, headers = await _read_head(reader)
            if status != 200:
                data = b"".join([p async for p in _iter_body(reader, headers)])
                raise HttpError(f"HTTP {status}: {data[:300].decode('utf-8', 'replace')}")
            buf = b""
            done = False
            async for piece in _iter_body(reader, headers):
                now = time.perf_counter()
                buf += piece
                while not done:
                    # SSE events end with a blank line; accept \n\n or \r\n\r\n
                    i = buf.find(b"\n\n")
                    j = buf.find(b"\r\n\r\n")
                    if i < 0 and j < 0:
                        break
                    if j >= 0 and (i < 0 or j < i):
                        ev, buf = buf[:j], buf[j + 4:]
                    else:
                        ev, buf = buf[:i], buf[i + 2:]
                    data = "\n".join(ln[5:].lstrip() for ln in ev.decode("utf-8", "replace").splitlines()
                                     if ln.startswith("data:"))
                    if not data:
                        continue
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        raise HttpError(f"server error in stream: {json.dumps(obj['error'])[:300]}")
                    txt = _chunk_text(obj)
                    if txt:
                        if res.ttft is None:
                            res.ttft = now - res.t_send
                        res.content_times.append(now)
                        res.chunks += 1
                        res.text.append(txt)
                    u = obj.get("usage")
                    if isinstance(u, dict):
                        if u.get("completion_tokens") is not None:
                            res.usage_tokens = int(u["completion_tokens"])
                        if u.get("prompt_tokens") is not None:
                            res.prompt_tokens = int(u["prompt_tokens"])
                if done:
                    break
            res.t_end = time.perf_counter()
            if res.chunks == 0:
                raise HttpError("stream ended without any content chunk")
            res.ok = True
        finally:
            writer.close()
    try:
        await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        res.error = f"timed out after {timeout:.0f}s ({res.chunks} chunks received)"
    except (OSError, HttpError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        res.error = f"{type(e).__name__}: {e}"
    if res.t_end is None:
        res.t_end = time.perf_counter()
    return res


# ---------------------------------------------------------------- prompts

WAVES = iter(range(1, 1 << 30))


def make_prompt(i, words, wave=0):
    """Distinct prompt for request i of a wave with `words` story words after the 'Story W-N.'
    header: every wave's prompts are new, so no wave profits from an earlier one's prefix cache."""
    out = []
    k = i % len(STORY)
    while len(out) < words:
        out.extend(STORY[k].split())
        k = (k + 1) % len(STORY)
    return f"Story {wave}-{i + 1}. " + " ".join(out[:words])


async def count_tokens(host, port, text, timeout):
    try:
        st, obj = await http_json(host, port, "POST", "/tokenize", {"content": text, "add_special": True,  # llama-server
                                                                        "prompt": text, "add_special_tokens": True}, timeout)
    except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    if st == 200 and isinstance(obj, dict) and isinstance(obj.get("tokens"), list):
        return len(obj["tokens"])  # add_special: with BOS where the model's completion adds one
    return None


async def calibrate_words(host, port, target, timeout):
    """Number of story words making prompt 0 about `target` tokens; None if the server cannot tokenize."""
    lo, hi = 1, max(8, target * 2)
    n = await count_tokens(host, port, make_prompt(0, hi), timeout)
    if n is None:
        return None, None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if await count_tokens(host, port, make_prompt(0, mid), timeout) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo, await count_tokens(host, port, make_prompt(0, lo), timeout)


# ---------------------------------------------------------------- statistics

def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def summarize(results, wall):
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    itl = []
    tpot = []
    for r in ok:
        ts = r.content_times
        itl.extend(b - a for a, b in zip(ts, ts[1:]))
        if r.tokens > 1 and len(ts) >= 1:
            tpot.append((r.t_end - ts[0]) / (r.tokens - 1) if r.usage_tokens else
                        ((ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else float("nan")))
    toks = sum(r.tokens for r in ok)
    ptoks = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    return {
        "requests": len(results), "ok": len(ok), "errors": [r.error for r in results if not r.ok],
        "wall_s": wall, "out_tokens": toks, "out_tok_s": toks / wall if wall > 0 else float("nan"),
        "ttft_p50": pct(ttft, 50), "ttft_p90": pct(ttft, 90),
        "itl_p50": pct(itl, 50), "itl_p90": pct(itl, 90), "itl_p99": pct(itl, 99),
        "tpot_mean": sum(tpot) / len(tpot) if tpot else float("nan"),
        "tokens_min": min((r.tokens for r in ok), default=0), "tokens_max": max((r.tokens for r in ok), default=0),
        "prompt_tokens": (min(ptoks), max(ptoks)) if ptoks else None,
    }


# ---------------------------------------------------------------- servers

class Server:
    """A server process this script started; stop() is idempotent and always kills the process group."""
    live = []

    def __init__(self, name, argv, port, log_path, env=None):
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.logf = open(log_path, "wb")
        log(f"start {name}: " + "".join(f"{k}={v} " for k, v in (env or {}).items()) + shlex.join(argv))
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=dict(os.environ, **(env or {})))
        except OSError as e:
            self.logf.close()
            raise RuntimeError(f"cannot start {name} ({argv[0]}): {e}")
        Server.live.append(self)

    def log_tail(self, n=15):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join("    | " + ln for ln in lines[-n:])
        except OSError:
            return ""

    def stop(self):
        if self in Server.live:
            Server.live.remove(self)
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.logf.close()

    @classmethod
    def stop_all(cls):
        for s in list(cls.live):
            s.stop()


async def wait_healthy(server, timeout):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with code {server.proc.returncode} before becoming healthy "
                               f"(log {server.log_path}):\n{server.log_tail()}")
        try:
            # /ready (inhaus: 503 while models load), else /health (llama-server: 503 while loading).
            st, body = await http_json("127.0.0.1", server.port, "GET", "/ready", None, 5)
            if st == 404:
                st, body = await http_json("127.0.0.1", server.port, "GET", "/health", None, 5)
            if st == 200:
                return time.monotonic() - t0
            last = f"HTTP {st}"
        except (OSError, HttpError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            last = type(e).__name__
        await asyncio.sleep(0.25)
    raise RuntimeError(f"{server.name} not healthy after {timeout:.0f}s (last: {last}; log {server.log_path}):\n"
                       f"{server.log_tail()}")


def start_server(kind, args, conc, log_dir, words):
    port = free_port()
    env = None
    if kind == "llama":
        ctx = conc * (args.prompt_tokens + args.max_tokens + args.ctx_slack)
        argv = [llama_server_bin(), "-m", args.model_file, "-c", str(ctx), "-np", str(conc),
                "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port)]
        argv += shlex.split(args.llama_args)
    else:
        b = inhaus_bin()
        if not os.path.isfile(b):
            raise RuntimeError(f"inhaus binary not found at {b} (build it with `cargo build --release`, "
                               f"or set INHAUS_BIN)")
        argv = [b, "serve", "--model", args.model, "--port", str(port)] + shlex.split(args.inhaus_args)
        env = {"INHAUS_THREADS": str(args.threads)}
    return Server(kind, argv, port, os.path.join(log_dir, f"{kind}-c{conc}.log"), env)


# ---------------------------------------------------------------- one wave

VARIANTS = ("greedy", "t1", "schema", "schema-t1")

# Never completes within a few hundred tokens: every variant generates exactly --max-tokens tokens.
BENCH_SCHEMA = {
    "type": "object",
    "properties": {"items": {
        "type": "array", "minItems": 60, "maxItems": 60,
        "items": {"type": "object",
                  "properties": {"name": {"type": "string", "maxLength": 24}, "qty": {"type": "integer"}},
                  "required": ["name", "qty"], "additionalProperties": False},
    }},
    "required": ["items"], "additionalProperties": False,
}


def apply_variant(body, variant, kind, schema=None):
    """The request body of `variant` for server `kind` ('llama' or other)."""
    body = dict(body)
    body["temperature"] = 1.0 if variant.endswith("t1") else 0
    if variant.startswith("schema"):
        schema = schema or BENCH_SCHEMA
        if kind == "llama":
            body["json_schema"] = schema
        else:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "bench", "schema": schema}}
    return body


async def schema_ttft(host, port, args, words, kind):
    """TTFT (ms) of a schema seen for the first time, then of the same schema again."""
    fresh = json.loads(json.dumps(BENCH_SCHEMA))
    # A property no earlier run used makes the schema new to any cache.
    fresh["properties"]["items"]["items"]["properties"][f"f{os.getpid()}_{time.time_ns()}"] = {"type": "string"}
    out = []
    for _ in range(2):
        body = {"model": args.model, "prompt": make_prompt(0, words), "max_tokens": 8, "stream": True,
                "ignore_eos": True}
        r = Result()
        await stream_request(host, port, apply_variant(body, "schema", kind, fresh), args.request_timeout, r)
        out.append(r.ttft * 1000 if r.ok and r.ttft is not None else float("nan"))
    return out


async def run_wave(host, port, args, conc, words, label, variant="greedy", kind="inhaus"):
    wave = next(WAVES)
    bodies = []
    for i in range(conc):
        bodies.append(apply_variant({
            "model": args.model, "prompt": make_prompt(i, words, wave), "max_tokens": args.max_tokens,
            "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }, variant, kind))
    if args.warmup:
        wres = await stream_request(host, port, dict(bodies[0], prompt="Warm up. " + bodies[0]["prompt"][:40],
                                                     max_tokens=4), args.request_timeout, Result())
        if not wres.ok:
            log(f"{label}: warm-up request failed: {wres.error}")
    results = [Result() for _ in range(conc)]
    t0 = time.perf_counter()
    await asyncio.gather(*(stream_request(host, port, b, args.request_timeout, r)
                           for b, r in zip(bodies, results)))
    wall = max(r.t_end for r in results) - t0
    s = summarize(results, wall)
    s["label"], s["concurrency"] = label, conc
    if s["errors"]:
        log(f"{label} C={conc}: {len(s['errors'])} of {conc} requests failed; first: {s['errors'][0]}")
    if s["ok"] and s["tokens_min"] != args.max_tokens:
        log(f"{label} C={conc}: output tokens per request {s['tokens_min']}..{s['tokens_max']} "
            f"(asked for {args.max_tokens})")
    if args.show_text and results and results[0].ok:
        log(f"{label} C={conc} request 0 text: {''.join(results[0].text)[:300]!r}")
    return s


async def run_target(kind, args, log_dir, words_hint):
    """kind: 'llama', 'inhaus' or 'url'. Returns (list of summaries, words used)."""
    out = []
    words = words_hint
    for conc in args.concurrency:
        t_run = time.monotonic()
        server = None
        try:
            if kind == "url":
                host, port = args.host, args.port
            else:
                server = start_server(kind, args, conc, log_dir, words)
                up = await wait_healthy(server, args.startup_timeout)
                log(f"{kind} healthy on port {server.port} after {up:.1f}s")
                host, port = "127.0.0.1", server.port
            if words is None:
                words, ntok = await calibrate_words(host, port, args.prompt_tokens, 30)
                if words is None:
                    words = max(1, round(args.prompt_tokens / 1.3) - 4)
                    log(f"{kind}: no /tokenize endpoint; using {words} story words (estimate)")
                else:
                    log(f"{kind}: prompt calibrated to {words} story words = {ntok} tokens (with special tokens)")
            if any(v.startswith("schema") for v in args.variants):
                first, cached = await schema_ttft(host, port, args, words, kind)
                log(f"{kind}: TTFT of a new schema {first:.0f} ms, of the same schema again {cached:.0f} ms")
            waves = {v: [] for v in args.variants}
            for rep in range(args.repeat):
                for variant in args.variants:
                    label = kind if args.variants == ["greedy"] else f"{kind} {variant}"
                    log(f"{label} C={conc}: wave of {conc} streams x {args.max_tokens} tokens "
                        f"(round {rep + 1}/{args.repeat}) ...")
                    s = await run_wave(host, port, args, conc, words, label, variant, kind)
                    log(f"{label} C={conc}: {s['out_tok_s']:.1f} out tok/s, wave {s['wall_s']:.1f}s")
                    waves[variant].append(s)
            for variant, runs in waves.items():
                if len(runs) > 1:
                    # In order: with --no-warmup the first round is a fresh server's first burst.
                    log(f"{kind} {variant} C={conc} rounds: out tok/s "
                        f"{[round(x['out_tok_s'], 1) for x in runs]}, TTFT p50 ms "
                        f"{[round((x.get('ttft_p50') or 0) * 1000) for x in runs]}")
                # The median round by output tok/s stands for the variant.
                runs.sort(key=lambda x: x["out_tok_s"])
                s = runs[len(runs) // 2]
                s["variant"] = variant
                s["out_tok_s_all"] = [x["out_tok_s"] for x in runs]
                s["run_s"] = time.monotonic() - t_run
                out.append(s)
        finally:
            if server is not None:
                server.stop()
    return out, words


# ---------------------------------------------------------------- output

def fmt_ms(x):
    return "-" if x != x else f"{x * 1000:.1f}"


COLS = [("out tok/s", "out_tok_s", lambda x: "-" if x != x else f"{x:.1f}"),
        ("TTFT p50", "ttft_p50", fmt_ms), ("TTFT p90", "ttft_p90", fmt_ms),
        ("ITL p50", "itl_p50", fmt_ms), ("ITL p90", "itl_p90", fmt_ms), ("ITL p99", "itl_p99", fmt_ms),
        ("TPOT", "tpot_mean", fmt_ms), ("wave s", "wall_s", lambda x: f"{x:.1f}")]


def print_table(title, rows):
    """rows: list of (first-column text, summary dict or None, extra dict of preformatted cells)."""
    heads = ["streams", "server"] + [c[0] for c in COLS] + ["ok", "prompt tok"]
    table = []
    for conc, label, s in rows:
        if s is None:
            table.append([str(conc), label] + ["-"] * (len(COLS) + 2))
            continue
        if "ratio" in s:
            table.append([str(conc), label] + [s["ratio"].get(k, "") for _, k, _ in COLS] + ["", ""])
            continue
        pt = s["prompt_tokens"]
        table.append([str(conc), label] + [f(s[k]) for _, k, f in COLS] +
                     [f"{s['ok']}/{s['requests']}", "-" if pt is None else (str(pt[0]) if pt[0] == pt[1] else f"{pt[0]}-{pt[1]}")])
    w = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(heads)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w[i]) for i, h in enumerate(heads)))
    print("  ".join("-" * x for x in w))
    last = None
    for r in table:
        if last is not None and r[0] != last and len(rows) > len(set(x[0] for x in rows)):
            print()
        last = r[0]
        print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))
    print("(times in ms; ITL = gap between content chunks; TPOT = per-request (end - first token) / (tokens - 1))")


def ratio_row(a, b):
    """inhaus/llama per column."""
    r = {}
    for _, k, _ in COLS:
        x, y = b.get(k), a.get(k)
        r[k] = f"{x / y:.2f}x" if x == x and y == y and y else "-"
    return {"ratio": r}


# ---------------------------------------------------------------- main

def parse_args():
    p = argparse.ArgumentParser(prog="bench-serve.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--server", choices=["llama", "inhaus"], help="start this server per concurrency")
    g.add_argument("--url", help="drive an already running server, e.g. http://127.0.0.1:8080")
    g.add_argument("--both", action="store_true", help="llama then inhaus, side by side with ratios")
    p.add_argument("--model", default="gemma-3-270m", help="catalog alias (default gemma-3-270m)")
    p.add_argument("--model-file", help="GGUF for llama-server (default: the alias's file in $INHAUS_MODELS)")
    p.add_argument("-c", "--concurrency", default="1,4,16,64", help="comma-separated stream counts (default 1,4,16,64)")
    p.add_argument("--prompt-tokens", type=int, default=150)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--ctx-slack", type=int, default=64, help="extra context per slot for llama-server (default 64)")
    p.add_argument("-t", "--threads", type=int, default=2, help="server threads (default 2)")
    p.add_argument("--llama-args", default="", help="extra llama-server arguments (one string)")
    p.add_argument("--inhaus-args", default="",
                   help="extra arguments after `inhaus serve --model A --port P` (threads go via INHAUS_THREADS)")
    p.add_argument("--request-timeout", type=float, default=600, help="seconds per request (default 600)")
    p.add_argument("--startup-timeout", type=float, default=120, help="seconds to wait for /health (default 120)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the 4-token warm-up request")
    p.add_argument("--log-dir", help="keep server logs here (default: temporary, kept only on failure)")
    p.add_argument("--json", help="also write all summaries to this JSON file")
    p.add_argument("--show-text", action="store_true", help="print the start of one generated text per wave")
    p.add_argument("--variants", default="greedy",
                   help=f"comma-separated request variants per concurrency, from {','.join(VARIANTS)} (default greedy)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of all variants per concurrency (median reported)")
    a = p.parse_args()
    try:
        a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
        assert a.concurrency and all(c > 0 for c in a.concurrency)
    except (ValueError, AssertionError):
        die("--concurrency must be a comma-separated list of positive integers")
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if not a.variants or any(v not in VARIANTS for v in a.variants):
        die(f"--variants takes a comma-separated list from {', '.join(VARIANTS)}")
    if a.repeat < 1:
        die("--repeat must be at least 1")
    if not (a.server or a.url or a.both):
        a.server = "llama"
    if a.url:
        u = urllib.parse.urlsplit(a.url)
        if u.scheme != "http" or not u.hostname or not u.port:
            die("--url must look like http://127.0.0.1:PORT")
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            die("--url must be a loopback address (127.0.0.1)")
        a.host, a.port = ("127.0.0.1" if u.hostname == "localhost" else u.hostname), u.port
    if (a.server == "llama" or a.both) and not a.model_file:
        a.model_file = catalog_file(a.model)
    if a.model_file and not os.path.isfile(a.model_file):
        die(f"model file {a.model_file} not found (fetch it with scripts/fetch-models.sh {a.model})")
    return a


async def amain(args, log_dir):
    kinds = ["llama", "inhaus"] if args.both else (["url"] if args.url else [args.server])
    results = {}
    failed = {}
    words = None
    t_all = time.monotonic()
    for kind in kinds:
        t0 = time.monotonic()
        try:
            results[kind], w = await run_target(kind, args, log_dir, words)
            words = words or w
        except RuntimeError as e:
            failed[kind] = str(e)
            if kind == "inhaus" and "exited" in str(e):
                log(f"inhaus could not serve: `{inhaus_bin()} serve` exited before answering /health; the `serve` "
                    f"subcommand (the HTTP server) may not exist yet in this build.\n{e}")
            else:
                log(f"{kind} failed: {e}")
        log(f"{kind}: done in {time.monotonic() - t0:.1f}s")
    title = (f"{args.model}: /v1/completions stream, prompt ~{args.prompt_tokens} tok, {args.max_tokens} out tok "
             f"(ignore_eos), variants {','.join(args.variants)}, threads {args.threads}, total {time.monotonic() - t_all:.0f}s")
    rows = []
    for conc in args.concurrency:
        for variant in args.variants:
            tag = "" if args.variants == ["greedy"] else f" {variant}"
            per = {}
            for kind in kinds:
                s = next((x for x in results.get(kind, [])
                          if x["concurrency"] == conc and x.get("variant", "greedy") == variant), None)
                per[kind] = s
                rows.append((conc, ("llama.cpp" if kind == "llama" else kind) + tag, s))
            if args.both and per.get("llama") and per.get("inhaus"):
                rows.append((conc, "inhaus/llama" + tag, ratio_row(per["llama"], per["inhaus"])))
        # Each variant against the first one, per server (e.g. t1/greedy, schema/greedy).
        for kind in kinds:
            base = next((x for x in results.get(kind, [])
                         if x["concurrency"] == conc and x.get("variant") == args.variants[0]), None)
            for variant in args.variants[1:]:
                s = next((x for x in results.get(kind, [])
                          if x["concurrency"] == conc and x.get("variant") == variant), None)
                if base and s and base["out_tok_s"]:
                    log(f"{kind} C={conc}: {variant}/{args.variants[0]} output tok/s = "
                        f"{s['out_tok_s'] / base['out_tok_s']:.3f} (rounds: {s['out_tok_s_all']} vs "
                        f"{base['out_tok_s_all']})")
    if any(r[2] for r in rows):
        print_table(title, rows)
        if args.both:
            print("(ratio: inhaus/llama; > 1 is better for tok/s, < 1 is better for latencies)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results, "failed": failed},
                      f, indent=1, default=str)
    any_errors = any(x["errors"] for v in results.values() for x in v)
    return 1 if failed or not results or any_errors else 0


def main():
    args = parse_args()
    keep = bool(args.log_dir)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="bench-serve-")
    os.makedirs(log_dir, exist_ok=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    rc = 1
    try:
        rc = asyncio.run(amain(args, log_dir))
    except KeyboardInterrupt:
        log("interrupted; stopping servers")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave a server behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Server.stop_all()
        if not keep:
            if rc == 0:
                shutil.rmtree(log_dir, ignore_errors=True)
            else:
                log(f"server logs kept in {log_dir}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
