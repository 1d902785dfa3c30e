#!/usr/bin/env python3
"""Writes the sentence-transformers reference for inhaus's embeddings: tests/fixtures/all-minilm-l6-v2/embeddings.json.

Run through scripts/reference/make-embedding-fixtures.sh (it makes the venv with the pinned packages and sets
HF_HUB_OFFLINE=1), or by hand:

    HF_HUB_OFFLINE=1 ~/.cache/inhaus/reference/st-venv/bin/python scripts/reference/make_embedding_fixtures.py \
        --model ~/.cache/inhaus/models/all-minilm-l6-v2 --out tests/fixtures/all-minilm-l6-v2/embeddings.json

The model is loaded from the local folder with sentence-transformers on the CPU, one thread. Each input is
embedded alone (batch of one, so no padding is involved) with the model's own pipeline (Transformer -> mean
Pooling -> Normalize) and truncation (max_seq_length from sentence_bert_config.json: 256 for this model;
longer inputs are cut to their first 254 tokens + [CLS]/[SEP], silently). Per case the fixture records:

  text                the input string
  ids                 the ids the model saw: [CLS] ... [SEP], after truncation (sentence-transformers' preprocess)
  ids_no_special      the untruncated ids without [CLS]/[SEP] (what an OpenAI-style token-array input holds)
  n_tokens            the untruncated count with [CLS]/[SEP]
  truncated           n_tokens > max_seq_length
  embedding           the 384 floats, float32, printed with the shortest repr that round-trips

Deterministic: same packages + same model files => byte-identical output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ALIAS = "all-minilm-l6-v2"

SHORT_TEXTS = [
    "Hello world",
    "HELLO WORLD",
    "a",
    "",
    "   \t\n  ",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Die Bäume im großen Garten blühen früh; Ärger über Öl ist übertrieben.",
    "Ça coûte très cher, n'est-ce pas ? Élève naïve, cafe\u0301 cr\u00e8me.",
    "I love pizza 🍕🍕 and cats 🐱! 😀 👩‍💻",
    "机器学习是人工智能的一个分支。",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!("{:?}", v); }',
    '{"name": "inhaus", "tags": ["rust", "llm"], "n": 42, "ok": true}',
    "Visit https://example.com/path?q=1&x=2 - price $3.50 (approx. 3,50 EUR) on 2024-05-01.",
    "tab\tseparated\tvalues\r\nnew line!!! ??? ...",
]

# Sentences cycled to build the long inputs.
SENTENCES = [
    "On-premises inference keeps every prompt and every document inside the company network.",
    "The server loads open-weight models and answers requests in the format clients already speak.",
    "Embeddings turn a sentence into a vector, so that similar meanings lie close together.",
    "A retrieval system compares the vector of a question with the vectors of many stored passages.",
    "Mean pooling averages the token states of the encoder, ignoring the positions that are only padding.",
    "After pooling, each vector is scaled to unit length, so cosine similarity is a plain dot product.",
    "Long documents are split into chunks, because the encoder only sees a limited number of positions.",
    "Batching many inputs together makes better use of the processor than running them one by one.",
    "Tests compare every vector against a reference computed by an independent implementation.",
    "Small numeric differences are expected, since the order of floating point additions may differ.",
]


def count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=True, truncation=False)["input_ids"])


def text_with_tokens(tok, target: int) -> str:
    """Cycled sentences cut to exactly `target` tokens with [CLS]/[SEP] (topped up with ' a', one token each)."""
    words = " ".join(SENTENCES * 8).split(" ")
    lo, hi = 0, len(words)
    while lo < hi:  # the longest word prefix with at most `target` tokens
        mid = (lo + hi + 1) // 2
        if count(tok, " ".join(words[:mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    while count(tok, text) < target:
        text += " a"
    assert count(tok, text) == target, (target, count(tok, text))
    return text


def f32(x: float) -> float:
    # The shortest decimal that reads back as the same float32 (json then prints it as is).
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="the model folder (config.json, model.safetensors, ...)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    model.eval()
    tok = model.tokenizer
    max_seq_length = int(model.max_seq_length)
    modules = [type(m).__name__ for m in model]
    print(f"modules: {modules}, max_seq_length: {max_seq_length}", file=sys.stderr)

    long_texts = [text_with_tokens(tok, n) for n in (100, 200, 256, 257, 300, 510)]
    texts = SHORT_TEXTS + long_texts

    cases = []
    for text in texts:
        features = model.preprocess([text])
        mask = features["attention_mask"][0].tolist()
        ids = [int(i) for i, m in zip(features["input_ids"][0].tolist(), mask) if m]
        no_special = tok(text, add_special_tokens=False, truncation=False)["input_ids"]
        n_tokens = count(tok, text)
        with torch.inference_mode():
            emb = model.encode([text], batch_size=1, convert_to_numpy=True, show_progress_bar=False)[0]
        emb = emb.astype(np.float32)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_no_special": [int(i) for i in no_special],
                "n_tokens": n_tokens,
                "truncated": n_tokens > max_seq_length,
                "norm": f32(float(np.linalg.norm(emb.astype(np.float64)))),
                "embedding": [f32(x) for x in emb.tolist()],
            }
        )
        print(f"{n_tokens:4d} tokens -> {len(ids):4d} ids  {text[:50]!r}", file=sys.stderr)

    out = {
        "model": ALIAS,
        "generator": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "device": "cpu",
            "threads": 1,
        },
        "modules": modules,
        "max_seq_length": max_seq_length,
        "dimensions": int(model.get_embedding_dimension()),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # One line per case keeps the file diffable.
    head = {k: v for k, v in out.items() if k != "cases"}
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(dump(head)[:-1] + ',"cases":[\n')
        f.write(",\n".join(dump(c) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {args.out}: {len(cases)} cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
