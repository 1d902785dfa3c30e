#!/usr/bin/env python3
"""Turns a GGUF file into a Hugging Face safetensors folder with transformers' own GGUF loader, and
optionally records transformers' greedy chat completions from that folder as a small fixture.

    python scripts/reference/convert_gguf_to_hf.py \
        --gguf ~/.cache/inhaus/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --out ~/.cache/inhaus/models/qwen2.5-coder-0.5b-instruct-hf [--dtype f32|bf16] \
        [--greedy-out tests/fixtures/qwen2.5-coder-0.5b-instruct/hf_greedy.json]

(scripts/reference/make-hf-qwen.sh runs exactly this for the catalog's Qwen model, in the pinned venv.)

- Weights: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=...)` dequantizes the GGUF
  tensors (Q4_K/Q6_K/... -> float) and un-permutes them into the HF layout; `save_pretrained` writes
  `model.safetensors` (+ index when sharded) in the requested dtype (f32 default, `--dtype bf16` halves it).
- Tokenizer: `AutoTokenizer.from_pretrained(dir, gguf_file=name)` rebuilds a `tokenizers` tokenizer from
  the GGUF vocabulary/merges; saved as tokenizer.json + tokenizer_config.json, the chat template kept inside
  tokenizer_config.json (`save_jinja_files=False`), then reloaded and saved again so that tokenizer.json
  carries the NFC normalizer Qwen2Tokenizer adds on load (checked: tokenizer.json alone == transformers).
- generation_config.json: what transformers derives from the GGUF (bos/eos/pad ids); GGUF files carry no
  sampling defaults, so none are invented.
- `--greedy-out`: reloads the saved folder in float32 (not the in-memory GGUF model), renders 4 chat
  prompts with `apply_chat_template(add_generation_prompt=True)` and records 32 greedy tokens each
  (eos stopping disabled) plus the top-1/top-2 logit gap per step. 1-2 CPU threads; deterministic.
Needs HF_HUB_OFFLINE=1: everything is local.
"""
import argparse
import copy
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

CHAT_PROMPTS = [
    "Write a Python function that reverses a string.",
    "What is 17*23?",
    "Name three German cities.",
    "Explain what a mutex is in one sentence.",
]
N_NEW = 32
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def convert(gguf: Path, out: Path, dtype: str):
    src_dir, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    # dequantize=True: unpack every tensor into a dense float model (5.x otherwise keeps them packed in
    # GgufLinear modules, and a GGUF-quantized model refuses save_pretrained).
    loaded = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True))
    # Re-home the dense weights in a plain model built from the same config minus the quantization entry,
    # so that save_pretrained writes an ordinary checkpoint.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    del loaded
    model = model.to(DTYPES[dtype]).eval()
    model.generation_config = GenerationConfig.from_model_config(model.config)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tok.save_pretrained(out, save_jinja_files=False)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    if not cfg.get("chat_template"):
        print("warning: the GGUF tokenizer has no chat template", file=sys.stderr)
    # The tokenizer.json built from the GGUF has no normalizer, while the class tokenizer_config.json names
    # (Qwen2Tokenizer) rebuilds its pipeline with NFC on load. Save once more from the reloaded tokenizer, so
    # that tokenizer.json alone (the `tokenizers` library, inhaus) tokenizes exactly as transformers does.
    tok = AutoTokenizer.from_pretrained(out)
    tok.save_pretrained(out, save_jinja_files=False)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in ["e\u0301 vs \u00e9, zero\u200bwidth", "<|im_start|>user\nHallo<|im_end|>", "def f(x):\n    return x"]:
        assert raw.encode(text).ids == tok(text).input_ids, text
    return model, tok


def greedy_fixture(folder: Path, threads: int):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    # generate() fills the unset fields of the config it is given from model.generation_config (eos ids,
    # repetition_penalty, ...): plain greedy needs a blank one there.
    model.generation_config = GenerationConfig()
    gen = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, min_new_tokens=None, eos_token_id=None,
                           pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
    cases = []
    for prompt in CHAT_PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        enc = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        tmpl_ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        assert tmpl_ids == ids, (tmpl_ids, ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            res = model.generate(x, generation_config=gen, output_logits=True, return_dict_in_generate=True)
        new = res.sequences[0, len(ids):].tolist()
        assert len(new) == N_NEW, len(new)
        gaps = []
        for step, logits in enumerate(res.logits):
            top2 = torch.topk(logits[0].float(), 2)
            assert top2.indices[0].item() == new[step]
            gaps.append(float(f"{(top2.values[0] - top2.values[1]).item():.4g}"))
        cases.append({
            "prompt": prompt,
            "messages": messages,
            "rendered_text": text,
            "prompt_ids": ids,
            "greedy_ids": new,
            "greedy_text": tok.decode(new),
            "greedy_gaps": gaps,
        })
        print(f"{prompt!r} -> {tok.decode(new)!r}", file=sys.stderr)
    return {
        "model": folder.name,
        "source": "transformers' GGUF loader, dequantized to float32 (scripts/reference/convert_gguf_to_hf.py)",
        "generator": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "dtype": "float32",
            "device": "cpu",
            "threads": threads,
            "python": platform.python_version(),
        },
        "note": ("Greedy decoding with transformers' generate (KV cache, do_sample=False, eos stopping disabled, "
                 f"{N_NEW} new tokens). Prompt = apply_chat_template(messages, add_generation_prompt=True), tokenized "
                 "without adding special tokens (identical to apply_chat_template(tokenize=True)). greedy_gaps = "
                 "top1 - top2 raw logit at each step; skip exact-token comparisons after a step with a small gap "
                 "(< ~0.1), since a quantized or reordered-arithmetic implementation may flip near-ties. Weights are "
                 "the q4_k_m GGUF dequantized to f32, so an implementation running the quantized GGUF differs from "
                 "this by quantized-activation effects."),
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--greedy-out", type=Path)
    ap.add_argument("--skip-convert", action="store_true", help="reuse an existing --out folder")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.skip_convert:
        convert(a.gguf.expanduser(), a.out.expanduser(), a.dtype)
        print(f"wrote {a.out}", file=sys.stderr)
    if a.greedy_out:
        data = greedy_fixture(a.out.expanduser(), a.threads)
        a.greedy_out.parent.mkdir(parents=True, exist_ok=True)
        a.greedy_out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        print(f"wrote {a.greedy_out}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
