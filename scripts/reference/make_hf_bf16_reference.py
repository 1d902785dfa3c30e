#!/usr/bin/env python3
"""Writes tests/fixtures/hf/<name>/reference_bf16.json: transformers' last-position logits of every plain
prompt of the fixture when the model runs as inhaus runs bf16 weights on the CPU.

    "$(scripts/reference/make-hf-fixtures.sh --venv)" scripts/reference/make_hf_bf16_reference.py [name ...]

inhaus keeps a bf16 checkpoint's projection weights, biases and embeddings in bfloat16, rounds each
projection's input rows to bfloat16 (as PyTorch feeds a bf16 matmul) and sums the products in f32; norms,
RoPE, attention, the residual stream and the KV cache stay f32. The reference is the fixture's f32 model
with exactly that: every nn.Linear / embedding weight and bias rounded to bf16, a forward pre-hook rounding
each nn.Linear's input to bf16, and Gemma's embedding scale rounded to bf16 (as HF stores it in the
model's dtype). Norm weights are not rounded. Deterministic: single-threaded torch, CPU, offline.
"""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "hf"
NAMES = ["llama", "mistral", "qwen2", "qwen2-sharded", "qwen3", "gemma3", "phi3"]


def bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


@torch.inference_mode()
def reference(name):
    folder = ROOT / name
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.data = bf16(module.weight.data)
            if getattr(module, "bias", None) is not None:
                module.bias.data = bf16(module.bias.data)
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda _m, args: (bf16(args[0]),))
        if hasattr(module, "embed_scale") and torch.is_tensor(module.embed_scale):
            module.embed_scale = bf16(module.embed_scale)
    ref = json.loads((folder / "reference.json").read_text())
    cases = []
    for case in ref["prompts"]:
        logits = model(torch.tensor([case["ids"]])).logits[0, -1]
        cases.append({"ids": case["ids"], "last_logits": [float(f"{v:.6g}") for v in logits.tolist()]})
    out = {"transformers": __import__("transformers").__version__, "torch": torch.__version__, "cases": cases}
    (folder / "reference_bf16.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{name}: {len(cases)} cases")


def main():
    torch.set_num_threads(1)
    for name in sys.argv[1:] or NAMES:
        reference(name)


if __name__ == "__main__":
    main()
