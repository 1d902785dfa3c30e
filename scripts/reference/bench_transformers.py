#!/usr/bin/env python3
"""CPU throughput of transformers itself on a Hugging Face folder, as a yardstick for inhaus.

    python scripts/reference/bench_transformers.py --model ~/.cache/inhaus/models/qwen2.5-coder-0.5b-instruct-hf \
        --dtype f32|bf16 --threads 2 [--runs 3] [--prompt-tokens 64] [--new-tokens 128] [--prefill-tokens 512]

(a) decode: single stream, batch 1, a 64-token prompt prefilled once, then 128 greedy steps, one token each,
    through the KV cache (DynamicCache; argmax of the last position's logits). Reported: decode-only tokens/s
    = 128 / (time of the 128 steps), the prefill excluded; median of --runs runs.
(b) prefill: one forward pass over 512 tokens into a fresh cache, computing only the last position's logits
    (logits_to_keep=1, as generate does); seconds and tokens/s, median of --runs runs.
One warm-up of each before timing. torch.set_num_threads(N) (also interop threads 1). Default attention
implementation (sdpa). Prints one JSON line. Timings are wall-clock and noisy on a shared machine.
"""
import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
TEXT = ("The history of computing is a story of steady miniaturisation. The first electronic computers filled "
        "rooms, drew kilowatts of power and failed every few hours; today a phone holds billions of transistors. "
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n")


def prompt_ids(tok, n):
    ids = tok(TEXT, add_special_tokens=False).input_ids
    while len(ids) < n:
        ids = ids + ids
    return torch.tensor([ids[:n]])


@torch.inference_mode()
def decode_run(model, ids, new_tokens):
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t0 = time.perf_counter()
    for _ in range(new_tokens):  # positions follow from the cache length
        out = model(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    assert cache.get_seq_length() == ids.shape[1] + new_tokens
    return time.perf_counter() - t0


@torch.inference_mode()
def prefill_run(model, ids):
    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    out.logits[:, -1].argmax(-1)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    folder = os.path.expanduser(a.model)
    tok = AutoTokenizer.from_pretrained(folder)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[a.dtype]).eval()
    load_s = time.perf_counter() - t0

    short = prompt_ids(tok, a.prompt_tokens)
    long = prompt_ids(tok, a.prefill_tokens)
    decode_run(model, short, 8)  # warm-up
    dec = [decode_run(model, short, a.new_tokens) for _ in range(a.runs)]
    prefill_run(model, long)  # warm-up
    pre = [prefill_run(model, long) for _ in range(a.runs)]
    dec_tps = sorted(a.new_tokens / s for s in dec)
    pre_s = sorted(pre)
    print(json.dumps({
        "bench": "transformers",
        "model": os.path.basename(folder.rstrip("/")),
        "dtype": a.dtype,
        "threads": a.threads,
        "attn_implementation": model.config._attn_implementation,
        "load_s": round(load_s, 2),
        "decode": {"prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                   "tokens_per_s_median": round(statistics.median(dec_tps), 2),
                   "tokens_per_s_runs": [round(x, 2) for x in dec_tps]},
        "prefill": {"tokens": a.prefill_tokens, "seconds_median": round(statistics.median(pre_s), 3),
                    "tokens_per_s_median": round(a.prefill_tokens / statistics.median(pre_s), 1),
                    "seconds_runs": [round(x, 3) for x in pre_s]},
        "runs": a.runs,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
