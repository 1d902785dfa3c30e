#!/usr/bin/env python3
"""Generates llama.cpp reference fixtures for inhaus's tests under tests/fixtures/<alias>/.

Run with the reference venv's python (scripts/reference/build-llamacpp.sh makes it; the wrapper
scripts/reference/make-fixtures.sh does both):

    ~/.cache/inhaus/reference/venv/bin/python scripts/reference/make_fixtures.py [--out tests/fixtures] [ALIAS ...]

For each model alias it writes
  tokenize.json       llama.cpp tokenization (parse_special=True) of varied strings, with and without
                      add_special (BOS where the GGUF says so);
  greedy.json         32 greedy steps per prompt, with the top-5 log-probabilities (log_softmax over the whole
                      vocabulary of llama.cpp's float32 logits, computed in float64) at each step;
  chat_template.json  (models whose GGUF has tokenizer.chat_template) the template rendered with jinja2 exactly
                      as Hugging Face transformers renders it.

Everything is deterministic: same llama.cpp build + same model file => byte-identical files.
Model files come from $INHAUS_MODELS (default ~/.cache/inhaus/models); see scripts/fetch-models.sh.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from datetime import datetime

import numpy as np

import gguf
import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

import llama_cpp as L

MODELS = {
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

N_CTX = 2048
N_BATCH = 512
N_THREADS = 2
N_STEPS = 32
TOP_K = 5

# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------

TOKENIZE_TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello World!",
    "hello",
    " Hello",
    "   leading spaces",
    "trailing spaces   ",
    "a    b",
    "\t",
    "tab\tseparated\tvalues",
    "\n",
    "\n\n\n",
    "line one\n  line two\r\n\tline three \n\n end\n",
    " \n \n  \n",
    "Grüße aus München, Straße",
    "Ça va? L'élève naïve mange une crème brûlée à l'hôtel.",
    "我爱自然语言处理。今天天气很好！",
    "日本語のテキストです。カタカナとひらがな、そして漢字。",
    "안녕하세요, 세계! 한국어 텍스트입니다.",
    "Привет, мир! Ёлка.",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 rainbow 🏳️‍🌈 flags 🇩🇪🇯🇵🇺🇸",
    "e\u0301 vs \u00e9, zero\u200bwidth, non\u00a0breaking",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo:\n\tdef bar(self):\n\t\treturn {'a': [1, 2, 3]}\n",
    'fn main() {\n    let v: Vec<i32> = (1..=10).collect();\n    println!("{:?}", v);\n}\n',
    "1234567890",
    "3.14159",
    "1,000,000",
    "12 + 345 = 357; 2024-01-31T23:59:59Z",
    "I'm, you'll, they've, we'd, it's, she's, can't, WON'T",
    "https://example.com/path/to/page?query=1&b=two#fragment",
    "user@example.org",
    "!!!???...",
    "--- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}}",
    "MiXeD CaSe tExT and ALLCAPS and lowercase",
    "Donaudampfschifffahrtsgesellschaftskapitänsmütze",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<unk>",
    "<|endoftext|>",
    "<bos>text<eos>",
    "<s> </s> <pad> <mask>",
    "<|im_start|",
    "< |im_start|>",
]

RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Die Hauptstadt von Deutschland ist",
    "Here is a list of fruits:\n1. Apple\n2.",
    "Once upon a time, in a small village by the sea,",
    "fn main() {\n    let v: Vec<i32> = (1..=10).collect();\n",
    "1, 2, 3, 4, 5,",
    "Q: What is the boiling point of water in degrees Celsius?\nA:",
    (
        "The history of computing is a story of steady miniaturisation. The first electronic computers filled "
        "entire rooms, consumed enormous amounts of power and were programmed by rewiring panels of cables. "
        "The invention of the transistor in 1947 and of the integrated circuit a decade later made machines "
        "smaller, cheaper and far more reliable. By the 1970s a complete processor fitted on a single chip, and "
        "the personal computer brought computing into offices and homes. Today a phone in your pocket is "
        "thousands of times faster than those early machines. In the next chapter we will look at"
    ),
]

CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful coding assistant."},
        {"role": "user", "content": "Write a Python function that reverses a string."},
    ],
    [
        {"role": "user", "content": "Hi! Wie geht's?"},
        {"role": "assistant", "content": "Mir geht es gut, danke! Wie kann ich helfen?"},
        {"role": "user", "content": "Nenne drei Städte in Bayern."},
    ],
]

CHAT_TEMPLATE_CASES = [
    ([{"role": "user", "content": "Hello!"}], True),
    (
        [
            {"role": "system", "content": "You are a terse assistant. Answer in one word."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        True,
    ),
    ([{"role": "user", "content": "Write a haiku about Rust."}], True),
    (
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And of Germany?"},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hi!"},
        ],
        False,
    ),
    ([{"role": "user", "content": "Say hi."}], False),
    (
        [
            {"role": "system", "content": "Du bist ein hilfreicher Assistent. Antworte auf Deutsch."},
            {"role": "user", "content": "Grüße aus München! 你好, こんにちは 👋🏽 — naïve café ß"},
        ],
        True,
    ),
    (
        [
            {
                "role": "user",
                "content": "Fix this code:\n\n```python\ndef add(a, b):\n    return a - b\n```\n\nThanks!  ",
            }
        ],
        True,
    ),
    ([{"role": "user", "content": ""}], True),
]


# ---------------------------------------------------------------------------------------------------------
# llama.cpp access (low-level C API through llama-cpp-python's ctypes bindings)
# ---------------------------------------------------------------------------------------------------------


_LOG: list[str] = []

# llama.cpp vendored by each pinned llama-cpp-python release (from its CHANGELOG)
LLAMA_CPP_COMMITS = {"0.3.36": "ggml-org/llama.cpp@0c1e57098"}
GGML_TYPES = {0: "f32", 1: "f16", 8: "q8_0", 30: "bf16"}


@L.llama_log_callback
def _quiet_log(level, text, user_data):  # noqa: ARG001 - llama.cpp log sink
    t = text.decode("utf-8", "replace")
    _LOG.append(t)
    if os.environ.get("FIXTURES_VERBOSE"):
        sys.stderr.write(t)


class Model:
    def __init__(self, path: str):
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = True
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.flash_attn = "unknown"

    def close(self):
        L.llama_model_free(self.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        while True:
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
            if n >= 0:
                return [int(buf[i]) for i in range(n)]
            cap = -n + 16

    def piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, tok, buf, -n, 0, True)
        return buf.raw[:n]

    def new_context(self):
        cp = L.llama_context_default_params()
        cp.n_ctx = N_CTX
        cp.n_batch = N_BATCH
        cp.n_ubatch = N_BATCH
        cp.n_seq_max = 1
        cp.n_threads = N_THREADS
        cp.n_threads_batch = N_THREADS
        cp.no_perf = True
        _LOG.clear()
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        log = "".join(_LOG)
        if "Flash Attention enabled" in log:
            self.flash_attn = "enabled"
        elif "Flash Attention not supported" in log:
            self.flash_attn = "disabled"
        return ctx, cp


def decode(ctx, ids: list[int]):
    """Evaluates ids as ONE batch (one llama_decode call) and returns the last position's logits (float32)."""
    arr = (L.llama_token * len(ids))(*ids)
    batch = L.llama_batch_get_one(arr, len(ids))
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")
    ptr = L.llama_get_logits_ith(ctx, -1)
    return ptr


def log_softmax64(logits32: np.ndarray) -> np.ndarray:
    x = logits32.astype(np.float64)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def greedy_run(model: Model, prompt_ids: list[int]) -> tuple[list[dict], list[int]]:
    if len(prompt_ids) > N_BATCH:
        raise ValueError("prompt longer than one batch")
    ctx, _ = model.new_context()
    try:
        steps = []
        out_ids = []
        ptr = decode(ctx, prompt_ids)
        for step in range(N_STEPS):
            logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).copy()
            if not np.all(np.isfinite(logits)):
                raise RuntimeError("non-finite logits")
            lp = log_softmax64(logits)
            # descending by logprob, ties by ascending id (stable sort on the negated values)
            order = np.argsort(-lp, kind="stable")[:TOP_K]
            tok = int(np.argmax(logits))  # greedy: first maximal id
            assert tok == int(order[0])
            steps.append({"token": tok, "top": [[int(i), float(lp[i])] for i in order]})
            out_ids.append(tok)
            if step + 1 < N_STEPS:
                ptr = decode(ctx, [tok])
        return steps, out_ids
    finally:
        L.llama_free(ctx)


# ---------------------------------------------------------------------------------------------------------
# GGUF metadata and the Hugging Face style chat template renderer
# ---------------------------------------------------------------------------------------------------------


class GgufInfo:
    def __init__(self, path: str):
        r = gguf.GGUFReader(path)
        self.fields = r.fields
        self.tokens = self._get("tokenizer.ggml.tokens")

    def _get(self, key, default=None):
        f = self.fields.get(key)
        if f is None:
            return default
        return f.contents()

    def get(self, key, default=None):
        return self._get(key, default)

    def token_str(self, key) -> str | None:
        i = self.get(key)
        if i is None or not (0 <= int(i) < len(self.tokens)):
            return None
        return self.tokens[int(i)]


def hf_render(template: str, messages: list[dict], add_generation_prompt: bool, special: dict) -> str:
    """Renders like transformers' apply_chat_template (chat_template_utils._compile_jinja_template + render)."""

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        # transformers uses the current time; fixed here so fixtures are deterministic (unused by these models)
        return datetime(2024, 1, 1).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    tmpl = env.from_string(template)
    return tmpl.render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **special,
    )


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------


def _is_scalar(v):
    return v is None or isinstance(v, (bool, int, float, str))


def dumps(obj, indent=0) -> str:
    """Pretty JSON, but lists of scalars and lists of [id, logprob] pairs stay on one line."""
    pad = "  " * indent
    pad1 = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        if all(not isinstance(v, (dict, str)) for v in obj.values()) and all(
            not isinstance(v, list) or all(_is_scalar(w) or isinstance(w, list) for w in v) for v in obj.values()
        ):
            # e.g. a greedy step: {"token": 7042, "top": [[7042, -0.24], ...]} on one line
            return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
        items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(_is_scalar(v) for v in obj) or all(
            isinstance(v, list) and all(_is_scalar(w) for w in v) for v in obj
        ):
            return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(pad1 + dumps(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps(obj))
        f.write("\n")
    os.replace(tmp, path)
    print(f"  wrote {path} ({os.path.getsize(path)} bytes)")


def generator_info(cp=None, flash_attn=None) -> dict:
    info = {
        "llama_cpp_python": L.__version__,
        "llama_cpp": LLAMA_CPP_COMMITS.get(L.__version__, "vendored in llama-cpp-python " + L.__version__),
        "build": "CPU, GGML_NATIVE (see scripts/reference/build-llamacpp.sh)",
        "script": "scripts/reference/make_fixtures.py",
    }
    if cp is not None:
        info.update(
            {
                "n_ctx": cp.n_ctx,
                "n_batch": cp.n_batch,
                "n_ubatch": cp.n_ubatch,
                "n_threads": cp.n_threads,
                "flash_attn_type": {-1: "auto", 0: "disabled", 1: "enabled"}.get(cp.flash_attn_type, cp.flash_attn_type),
                "flash_attn_resolved": flash_attn,
                "kv_cache_type_k": GGML_TYPES.get(int(cp.type_k), int(cp.type_k)),
                "kv_cache_type_v": GGML_TYPES.get(int(cp.type_v), int(cp.type_v)),
            }
        )
    return info


def tokenizer_info(g: GgufInfo) -> dict:
    keys = [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ]
    out = {}
    for k in keys:
        v = g.get(k)
        if v is not None:
            out[k.removeprefix("tokenizer.ggml.")] = v if not isinstance(v, (np.generic,)) else v.item()
    out["n_vocab"] = len(g.tokens)
    return out


def make_for(alias: str, path: str, out_dir: str) -> None:
    print(f"{alias}: {path}")
    g = GgufInfo(path)
    model = Model(path)
    try:
        assert model.n_vocab == len(g.tokens), (model.n_vocab, len(g.tokens))
        add_bos = bool(L.llama_vocab_get_add_bos(model.vocab))
        tok_info = tokenizer_info(g)

        # ---- tokenize.json
        cases = []
        for text in TOKENIZE_TEXTS:
            cases.append(
                {
                    "text": text,
                    "ids": model.tokenize(text, add_special=False, parse_special=True),
                    "ids_with_bos": model.tokenize(text, add_special=True, parse_special=True),
                }
            )
        write_json(
            os.path.join(out_dir, alias, "tokenize.json"),
            {
                "model": alias,
                "file": os.path.basename(path),
                "note": "ids: llama_tokenize(add_special=false, parse_special=true); "
                "ids_with_bos: add_special=true (adds BOS only where the GGUF's add_bos_token says so)",
                "tokenizer": tok_info,
                "llama_add_bos": add_bos,
                "generator": generator_info(),
                "cases": cases,
            },
        )

        # ---- chat template
        template = g.get("tokenizer.chat_template")
        special = {
            "bos_token": g.token_str("tokenizer.ggml.bos_token_id") or "",
            "eos_token": g.token_str("tokenizer.ggml.eos_token_id") or "",
        }
        if template is not None:
            tcases = [
                {
                    "messages": msgs,
                    "add_generation_prompt": agp,
                    "rendered": hf_render(template, msgs, agp, special),
                }
                for msgs, agp in CHAT_TEMPLATE_CASES
            ]
            write_json(
                os.path.join(out_dir, alias, "chat_template.json"),
                {
                    "model": alias,
                    "note": "GGUF tokenizer.chat_template rendered like transformers' apply_chat_template: jinja2 "
                    "ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True), raise_exception global, "
                    "tojson filter (ensure_ascii=False), tools=None; bos_token/eos_token from the GGUF vocabulary",
                    "bos_token": special["bos_token"],
                    "eos_token": special["eos_token"],
                    "chat_template": template,
                    "cases": tcases,
                },
            )
        else:
            print(f"  {alias}: no tokenizer.chat_template in the GGUF; no chat_template.json")

        # ---- greedy.json
        gcases = []
        prompts = [(p, None) for p in RAW_PROMPTS]
        if template is not None:
            prompts += [(hf_render(template, msgs, True, special), msgs) for msgs in CHAT_PROMPTS]
        for prompt, msgs in prompts:
            ids = model.tokenize(prompt, add_special=True, parse_special=True)
            steps, out_ids = greedy_run(model, ids)
            text = b"".join(model.piece(t) for t in out_ids).decode("utf-8", "replace")
            case = {"prompt": prompt}
            if msgs is not None:
                case["chat"] = True
                case["messages"] = msgs
            case["prompt_ids"] = ids
            case["completion"] = text
            case["steps"] = steps
            gcases.append(case)
            print(f"  greedy {len(ids):4d} prompt tokens -> {text[:60]!r}")
        ctx, cp = model.new_context()
        L.llama_free(ctx)
        write_json(
            os.path.join(out_dir, alias, "greedy.json"),
            {
                "model": alias,
                "file": os.path.basename(path),
                "n_threads": N_THREADS,
                "n_ctx": N_CTX,
                "n_batch": N_BATCH,
                "n_steps": N_STEPS,
                "note": "prompt_ids: llama_tokenize(add_special=true, parse_special=true); the prompt is evaluated as one "
                "batch, then one token per step; token = argmax of the float32 logits; top = 5 best "
                "[id, log_softmax over the full vocabulary computed in float64], descending. Greedy decoding "
                "does NOT stop at end-of-generation tokens. completion = the 32 tokens' pieces, concatenated.",
                "generator": generator_info(cp, model.flash_attn),
                "cases": gcases,
            },
        )
    finally:
        model.close()


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("aliases", nargs="*", help="model aliases (default: all)")
    ap.add_argument("--out", default=os.path.join(repo, "tests", "fixtures"))
    ap.add_argument("--models", default=os.environ.get("INHAUS_MODELS", os.path.expanduser("~/.cache/inhaus/models")))
    args = ap.parse_args()
    aliases = args.aliases or list(MODELS)
    unknown = [a for a in aliases if a not in MODELS]
    if unknown:
        ap.error(f"unknown alias(es) {unknown}; known: {list(MODELS)}")
    missing = [a for a in aliases if not os.path.isfile(os.path.join(args.models, MODELS[a]))]
    if missing:
        print(
            f"make_fixtures: missing model file(s) for {missing} in {args.models}; run scripts/fetch-models.sh "
            + " ".join(missing),
            file=sys.stderr,
        )
        return 1

    L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
    L.llama_backend_init()
    print("llama.cpp system info:", L.llama_print_system_info().decode().strip())
    for a in aliases:
        make_for(a, os.path.join(args.models, MODELS[a]), args.out)
    L.llama_backend_free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
