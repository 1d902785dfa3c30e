#!/usr/bin/env python3
"""Writes tiny random-weight Hugging Face checkpoints plus transformers' reference outputs under
tests/fixtures/hf/<name>/, for testing inhaus' safetensors loader, architectures, tokenizer.json handling and
chat templates against transformers itself.

    scripts/reference/make-hf-fixtures.sh            # all fixtures (pinned venv, offline)
    python scripts/reference/make_hf_fixtures.py --out tests/fixtures/hf [name ...]

Every folder is in real HF layout, written by transformers' own save_pretrained: config.json,
model.safetensors (float32; qwen2-sharded: model-0000N-of-0000M.safetensors + model.safetensors.index.json),
tokenizer.json, tokenizer_config.json (chat_template inside it), generation_config.json, and reference.json
(see tests/fixtures/hf/README.md for its format).

One byte-level BPE tokenizer is trained (tokenizers' BpeTrainer, Qwen2-style NFC + regex split + ByteLevel)
on the small corpus below; each family gets the same merges with its own special tokens at realistic places
(Qwen / Llama 3 / Phi-3 extras after the base vocabulary, <unk>/<s>/</s> and Gemma's <pad>/<eos>/<bos>/<unk>
before it), so the vocabularies differ in size and ids.

Deterministic: fixed seeds, single-threaded torch, CPU only, no network. Rerunning writes identical files.
"""
import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    TokenizersBackend,
)

REPO = Path(__file__).resolve().parents[2]
THREADS = 1
BASE_VOCAB = 640  # 256 byte symbols + 384 merges
N_GREEDY = 16
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
KV_HEADS = 2
MAX_POS = 512  # the Qwen tool-calling renderings run to ~500 tokens with this small vocabulary
SLIDING_WINDOW = 8
# Weight init (the default initializer_range 0.02 gives almost flat logits): every Linear weight ~ N(0, W_STD),
# an untied lm_head ~ N(0, LM_STD), embeddings ~ N(0, E_STD) (tied: also the output projection), biases
# ~ N(0, B_STD); RMSNorm weights 1 + N(0, NORM_STD) (Gemma: N(0, NORM_STD), as Gemma's norm multiplies by
# 1 + weight). Final logits then have a spread of ~4-6, so top-1/top-2 near-ties are rare.
W_STD = 0.25
LM_STD = 0.75
E_STD = 0.75
B_STD = 0.2
NORM_STD = 0.2
# Gemma scales its (tied) embeddings by sqrt(hidden) on input and normalises every sublayer's output, so with the
# values above the residual stream is the current token's embedding and greedy repeats it forever. Smaller
# embeddings plus large output-norm weights (as trained Gemmas have) give varied continuations.
GEMMA_E_STD = 0.1
GEMMA_NORM_MEAN = {"model.norm.weight": 4.0, "post_attention_layernorm": 4.0, "pre_feedforward_layernorm": 4.0,
                   "post_feedforward_layernorm": 4.0}

# ---------------------------------------------------------------------------------------------------------
# Tokenizer training corpus: English prose, German prose, code, chat-ish text. Part of the fixture definition.
CORPUS = r"""
The quick brown fox jumps over the lazy dog. The dog was not amused, but the fox did not care at all.
Once upon a time, in a small village by the sea, there lived an old fisherman and his wife. Every morning
the fisherman went out to sea in his little boat, and every evening he came back with fish for dinner.
The history of computing is a story of steady miniaturisation: relays gave way to vacuum tubes, tubes to
transistors, and transistors to integrated circuits holding billions of devices on a single chip.
What is the capital of France? The capital of France is Paris. Paris is known for the Eiffel Tower.
A mutex is a lock that lets only one thread at a time enter a critical section of the program.
Please write a short poem about the weather. It is raining today, and the wind is cold and strong.
You are a helpful assistant. Answer the question as briefly as possible, and explain your reasoning.
Here is a list of fruits: 1. Apple 2. Banana 3. Cherry 4. Orange 5. Pear. Which one do you like most?
The numbers 17, 23 and 391 are related: 17 times 23 equals 391. Two plus two is four; 3.14 is close to pi.
Der schnelle braune Fuchs springt über den faulen Hund. Die Hauptstadt von Deutschland ist Berlin.
Wie ist das Wetter heute in Köln? Es regnet, und der Wind ist kalt. Morgen wird es vielleicht sonnig.
Ich möchte gern eine Tasse Kaffee und ein Stück Kuchen, bitte. Vielen Dank für Ihre Hilfe!
Größere Städte in Deutschland sind Hamburg, München, Köln, Frankfurt am Main und Düsseldorf.
Können Sie mir bitte erklären, wie dieses Programm funktioniert? Natürlich, gerne erkläre ich es Ihnen.
def add(a, b):
    return a + b

def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

for i in range(10):
    print(f"value {i}: {i * i}")

fn main() {
    let v: Vec<i32> = (1..=10).collect();
    let total: i32 = v.iter().map(|x| x * 2).sum();
    println!("total = {}", total);
}

impl Display for Point {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.x, self.y)
    }
}

{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}
{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
user: Hello! How are you today?
assistant: I am fine, thank you. How can I help you?
user: Can you tell me a joke about programmers?
assistant: Why do programmers prefer dark mode? Because light attracts bugs.
system: You are a terse assistant that answers in one sentence.
You may call one or more functions to assist with the user query. You are provided with function signatures
within <tools></tools> XML tags. For each function call, return a json object with function name and arguments
within <tool_call></tool_call> XML tags. <tool_response> {"temperature": 12, "sky": "rain"} </tool_response>
"""

PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def train_base_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line + "\n" for line in CORPUS.strip("\n").split("\n")]
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    return [t for t, _ in vocab], [tuple(m) for m in model["merges"]]


def family_tokenizer(base_tokens, merges, front, back):
    """front/back: lists of (content, special, rstrip) placed before / after the base vocabulary."""
    vocab = {}
    for content, _, _ in front:
        vocab[content] = len(vocab)
    for t in base_tokens:
        vocab[t] = len(vocab)
    for content, _, _ in back:
        vocab[content] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    added = [AddedToken(c, special=s, normalized=False, rstrip=r, lstrip=False, single_word=False)
             for c, s, r in front + back]
    tok.add_tokens(added)  # keeps the ids above (they are in the vocab already); `special` flags kept
    return tok


# ---------------------------------------------------------------------------------------------------------
# Chat templates (verbatim from the families' Hugging Face tokenizer_config.json files).

# Qwen2.5 (-Instruct / -Coder-Instruct), with tools; identical to the template in the Qwen2.5 GGUF
# (tests/fixtures/qwen2.5-coder-0.5b-instruct/chat_template.json, checked below when present).
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# Meta-Llama-3-8B-Instruct.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.1/v0.2 (the 2024 revision that accepts a leading system message).
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the "
    "exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"
)

# Phi-3-mini-4k-instruct (revision without the leading bos_token; add_bos_token false).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Gemma 3 (-it).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)

# ---------------------------------------------------------------------------------------------------------
# Special tokens per family: (content, special, rstrip).
QWEN_BACK = [("<|endoftext|>", True, False), ("<|im_start|>", True, False), ("<|im_end|>", True, False),
             ("<tool_call>", False, False), ("</tool_call>", False, False)]
FAMILIES = {
    "qwen": dict(
        front=[], back=QWEN_BACK, template=QWEN25_TEMPLATE, tokenizer_class="Qwen2Tokenizer",
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False,
        config_bos="<|endoftext|>", config_eos="<|im_end|>", config_pad=None,
        gen=dict(bos="<|endoftext|>", eos=["<|im_end|>", "<|endoftext|>"], pad="<|endoftext|>",
                 do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),
    ),
    "llama3": dict(
        front=[], back=[("<|begin_of_text|>", True, False), ("<|end_of_text|>", True, False),
                        ("<|start_header_id|>", True, False), ("<|end_header_id|>", True, False),
                        ("<|eot_id|>", True, False)],
        template=LLAMA3_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast",
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, add_bos=True,
        config_bos="<|begin_of_text|>", config_eos=["<|end_of_text|>", "<|eot_id|>"], config_pad=None,
        gen=dict(bos="<|begin_of_text|>", eos=["<|end_of_text|>", "<|eot_id|>"], pad=None,
                 do_sample=True, temperature=0.6, top_p=0.9),
    ),
    "mistral": dict(
        front=[("<unk>", True, False), ("<s>", True, False), ("</s>", True, False)], back=[],
        template=MISTRAL_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast",
        bos="<s>", eos="</s>", pad=None, unk="<unk>", add_bos=True,
        config_bos="<s>", config_eos="</s>", config_pad=None,
        gen=dict(bos="<s>", eos="</s>", pad=None),
    ),
    "phi3": dict(
        front=[("<unk>", True, False), ("<s>", True, False), ("</s>", True, False)],
        back=[("<|endoftext|>", True, False), ("<|assistant|>", True, True), ("<|system|>", True, True),
              ("<|end|>", True, True), ("<|user|>", True, True)],
        template=PHI3_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast",
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", add_bos=False,
        config_bos="<s>", config_eos="<|endoftext|>", config_pad="<|endoftext|>",
        gen=dict(bos="<s>", eos=["<|endoftext|>", "<|assistant|>", "<|end|>"], pad="<|endoftext|>"),
    ),
    "gemma3": dict(
        front=[("<pad>", True, False), ("<eos>", True, False), ("<bos>", True, False), ("<unk>", True, False),
               ("<mask>", True, False), ("<start_of_turn>", True, False), ("<end_of_turn>", True, False),
               ("<start_of_image>", True, False)],
        back=[],
        template=GEMMA3_TEMPLATE, tokenizer_class="PreTrainedTokenizerFast",
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True,
        config_bos="<bos>", config_eos="<eos>", config_pad="<pad>",
        gen=dict(bos="<bos>", eos=["<eos>", "<end_of_turn>"], pad="<pad>", do_sample=True, top_k=64, top_p=0.95),
    ),
}


def rope(theta, **extra):
    return {"rope_type": extra.pop("rope_type", "default"), "rope_theta": theta, **extra}


# name -> (family, model class, config class, config kwargs, seed, save kwargs)
FIXTURES = {
    "llama": ("llama3", LlamaForCausalLM, LlamaConfig, dict(
        num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters=rope(500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64)), 1001, {}),
    "mistral": ("mistral", MistralForCausalLM, MistralConfig, dict(
        num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=SLIDING_WINDOW,
        rope_parameters=rope(10000.0)), 1002, {}),
    "qwen2": ("qwen", Qwen2ForCausalLM, Qwen2Config, dict(
        num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        max_window_layers=2, rope_parameters=rope(1000000.0)), 1003, {}),
    "qwen2-sharded": ("qwen", Qwen2ForCausalLM, Qwen2Config, dict(
        num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        max_window_layers=2, rope_parameters=rope(1000000.0)), 1004, {"max_shard_size": "200KB"}),
    "qwen3": ("qwen", Qwen3ForCausalLM, Qwen3Config, dict(
        num_hidden_layers=2, rms_norm_eps=1e-6, tie_word_embeddings=True, head_dim=32, attention_bias=False,
        use_sliding_window=False, max_window_layers=2, rope_parameters=rope(1000000.0)), 1005, {}),
    "gemma3": ("gemma3", Gemma3ForCausalLM, Gemma3TextConfig, dict(
        num_hidden_layers=3, num_key_value_heads=KV_HEADS, head_dim=32, rms_norm_eps=1e-6,
        tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=48,
        sliding_window=SLIDING_WINDOW, sliding_window_pattern=3,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=None, attn_logit_softcapping=None,
        rope_parameters={"sliding_attention": rope(10000.0), "full_attention": rope(1000000.0)}), 1006, {}),
    "phi3": ("phi3", Phi3ForCausalLM, Phi3Config, dict(
        num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None,
        original_max_position_embeddings=MAX_POS, rope_parameters=rope(10000.0, partial_rotary_factor=1.0)),
        1007, {}),
}

# What an implementation must get right per architecture (as transformers 5.24 computes it), for reference.json.
NOTES = {
    "llama": ["rope_parameters.rope_type llama3: inv_freq kept where wavelength < original_max/high_freq_factor "
              "(16), divided by factor (8) where wavelength > original_max/low_freq_factor (64), smoothly "
              "interpolated between; head_dim 16 so all three regions occur",
              "GQA 4 query / 2 kv heads; untied lm_head; tokenizer adds <|begin_of_text|> (post_processor)"],
    "mistral": ["sliding_window 8 on every layer: position q attends to k with q - 8 < k <= q",
                "the chat template's ' [INST] ' / ' [/INST]' are plain text (no special tokens); tokenizer adds <s>"],
    "qwen2": ["q/k/v projections have biases (random, non-zero); o_proj has none", "tied embeddings (no lm_head "
              "tensor in the checkpoint)", "use_sliding_window false: sliding_window is null, all layers full"],
    "qwen2-sharded": ["same architecture as qwen2 (other weights): 3 shards + model.safetensors.index.json "
                      "(weight_map: tensor name -> shard file)"],
    "qwen3": ["head_dim 32 != hidden_size/heads (16): q_proj 64->128, o_proj 128->64", "per-head RMSNorm "
              "q_norm/k_norm (weight shape [head_dim]) on q and k before RoPE; no qkv bias; tied embeddings"],
    "gemma3": ["embeddings multiplied by sqrt(hidden_size) = 8 (cast to the embedding dtype)",
               "RMSNorm computes x * (1 + weight) (weights stored as offsets from 1), also for q_norm/k_norm",
               "4 norms per layer: input, post_attention, pre_feedforward, post_feedforward (sandwich)",
               "attention scale query_pre_attn_scalar**-0.5 = 48**-0.5, not head_dim**-0.5; head_dim 32",
               "layer_types [sliding, sliding, full]: sliding layers use window 8 and rope_theta 10000 "
               "(rope_parameters.sliding_attention), the full layer rope_theta 1e6 (rope_parameters.full_attention)",
               "MLP act gelu_pytorch_tanh; final_logit_softcapping and attn_logit_softcapping null (as in real "
               "Gemma 3 checkpoints); tied embeddings; tokenizer adds <bos>, and the template writes bos_token too"],
    "phi3": ["fused self_attn.qkv_proj [q (4*16) | k (2*16) | v (2*16)] x hidden and mlp.gate_up_proj "
             "[gate (128) | up (128)] x hidden; split in that order", "partial_rotary_factor 1.0, rope_type "
             "default (no longrope), sliding_window null; untied lm_head",
             "<|system|> <|user|> <|assistant|> <|end|> are rstrip added tokens: the newline after them is "
             "swallowed when tokenizing (see chat_renderings ids); add_bos_token false"],
}

PROMPTS = [
    "Hello",
    "def fibonacci(n):\n    if n < 2:",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    ("Once upon a time, in a small village by the sea, there lived an old fisherman and his wife. Every morning "
     "the fisherman went out to sea in his little boat, and every evening he came back with fish for dinner."),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Köln"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
CHATS = [
    dict(messages=[{"role": "system", "content": "You are a terse assistant."},
                   {"role": "user", "content": "What is the capital of France?"}], tools=None),
    dict(messages=[{"role": "user", "content": "Hallo! Wie geht es dir?"},
                   {"role": "assistant", "content": "Mir geht es gut, danke. How can I help you?"},
                   {"role": "user", "content": "Write a Python function that adds two numbers."}], tools=None),
]
TOOL_CHATS = [
    dict(messages=[{"role": "system", "content": "You are a helpful assistant."},
                   {"role": "user", "content": "Wie ist das Wetter heute in Köln?"}], tools=[WEATHER_TOOL]),
    dict(messages=[{"role": "user", "content": "Wie ist das Wetter heute in Köln?"},
                   {"role": "assistant", "content": "",
                    "tool_calls": [{"type": "function", "function": {
                        "name": "get_weather", "arguments": {"city": "Köln", "unit": "celsius"}}}]},
                   {"role": "tool", "name": "get_weather", "content": "{\"temperature\": 12, \"sky\": \"rain\"}"}],
         tools=[WEATHER_TOOL]),
]


def r6(x):
    return float(f"{x:.6g}")


def rows(t):
    return [[r6(v) for v in row] for row in t.tolist()]


def tok_id(tok, s):
    if s is None:
        return None
    if isinstance(s, list):
        return [tok_id(tok, x) for x in s]
    i = tok.convert_tokens_to_ids(s)
    assert isinstance(i, int) and tok.convert_ids_to_tokens(i) == s, s
    return i


def write_tokenizer(folder, fam, base_tokens, merges):
    raw = family_tokenizer(base_tokens, merges, fam["front"], fam["back"])
    kw = dict(tokenizer_object=raw, chat_template=fam["template"], model_max_length=MAX_POS,
              add_bos_token=fam["add_bos"], add_eos_token=False, clean_up_tokenization_spaces=False)
    for key in ("bos", "eos", "pad", "unk"):
        if fam[key] is not None:
            kw[key + "_token"] = fam[key]
    tok = TokenizersBackend(**kw)
    tok.save_pretrained(folder, save_jinja_files=False)
    # What save_pretrained leaves out but real tokenizer_config.json files carry: the class to load it with, and
    # add_bos_token/add_eos_token (5.x bakes them into tokenizer.json's post_processor and drops them).
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = fam["tokenizer_class"]
    cfg["add_bos_token"] = fam["add_bos"]
    cfg["add_eos_token"] = False
    for key in ("bos", "eos", "pad", "unk"):
        cfg.setdefault(key + "_token", None)  # explicit nulls, as Qwen's files have (Qwen2Tokenizer's defaults differ)
    cfg_path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2, ensure_ascii=False) + "\n")


def reinit(model, gemma, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "_norm." in name:
                mean = 1.0
                if gemma:
                    mean = next((v for k, v in GEMMA_NORM_MEAN.items() if k in name), 0.0)
                p.copy_(mean + NORM_STD * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(B_STD * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_((GEMMA_E_STD if gemma else E_STD) * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(LM_STD * torch.randn(p.shape, generator=g))
            else:
                assert name.endswith(".weight") and p.dim() == 2, name
                p.copy_(W_STD * torch.randn(p.shape, generator=g))


def greedy_manual(model, ids, n):
    """Greedy by full recomputation (no cache): the ids and each step's raw logits."""
    seq = list(ids)
    out, gaps = [], []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1]
        top = torch.topk(logits, 2)
        out.append(int(top.indices[0]))
        gaps.append(float(f"{(top.values[0] - top.values[1]).item():.4g}"))
        seq.append(out[-1])
    return out, gaps


def greedy_generate(model, ids, n, pad_id):
    gen = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=pad_id,
                           bos_token_id=None)
    with torch.no_grad():
        res = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=gen)
    return res[0, len(ids):].tolist()


def run_case(model, ids, tok, pad_id, sample_positions):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    greedy, gaps = greedy_manual(model, ids, N_GREEDY)
    gen = greedy_generate(model, ids, N_GREEDY, pad_id)
    case = {"ids": ids, "last_logits": [r6(v) for v in logits[-1].tolist()]}
    if sample_positions:
        pos = sorted({0, len(ids) // 2, len(ids) - 2} - {len(ids) - 1}) if len(ids) > 1 else []
        pos = [p for p in pos if 0 <= p < len(ids) - 1][:3]
        case["positions_logits_sample"] = {"positions": pos, "logits": rows(logits[pos]) if pos else []}
    case.update({"greedy": greedy, "greedy_gaps": gaps, "greedy_text": tok.decode(greedy),
                 "generate_matches_full_recompute": gen == greedy})
    return case, logits


def build(name, out_root, base_tokens, merges):
    family, model_cls, cfg_cls, cfg_kw, seed, save_kw = FIXTURES[name]
    fam = FAMILIES[family]
    folder = out_root / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    write_tokenizer(folder, fam, base_tokens, merges)
    tok = AutoTokenizer.from_pretrained(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab_size = len(tok)
    assert vocab_size == raw.get_vocab_size(with_added_tokens=True)

    kw = dict(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
              num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
              bos_token_id=tok_id(tok, fam["config_bos"]), eos_token_id=tok_id(tok, fam["config_eos"]),
              pad_token_id=tok_id(tok, fam["config_pad"]))
    kw.update(copy.deepcopy(cfg_kw))
    config = cfg_cls(**kw)
    torch.manual_seed(seed)
    model = model_cls(config)
    reinit(model, family == "gemma3", seed)
    model.eval()
    g = fam["gen"]
    gen_kw = {k: v for k, v in g.items() if k not in ("bos", "eos", "pad")}
    model.generation_config = GenerationConfig(bos_token_id=tok_id(tok, g["bos"]), eos_token_id=tok_id(tok, g["eos"]),
                                               pad_token_id=tok_id(tok, g["pad"]), **gen_kw)
    model.save_pretrained(folder, **save_kw)

    # Everything below uses the checkpoint as loaded back from disk, in eager attention.
    ref_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    # generate() fills the unset fields of the config it is given from model.generation_config (eos ids,
    # repetition_penalty, ...): plain greedy needs a blank one there.
    ref_model.generation_config = GenerationConfig()
    saved, loaded = model.state_dict(), ref_model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved), "reload differs"

    ids_match = True
    prompts = []
    for text in PROMPTS:
        ids = tok(text).input_ids
        ids_match &= ids == raw.encode(text, add_special_tokens=True).ids
        case, _ = run_case(ref_model, ids, tok, pad_id, True)
        prompts.append({"text": text, **case})
    assert len(prompts[0]["ids"]) <= 4, prompts[0]["ids"]
    long_ids = prompts[-1]["ids"]
    assert len(long_ids) >= 20 and len(long_ids) > 2 * SLIDING_WINDOW, len(long_ids)

    chats = []
    for chat in CHATS + (TOOL_CHATS if family == "qwen" else []):
        text = tok.apply_chat_template(chat["messages"], tools=chat["tools"], add_generation_prompt=True,
                                       tokenize=False)
        enc = tok.apply_chat_template(chat["messages"], tools=chat["tools"], add_generation_prompt=True,
                                      tokenize=True)
        ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        ids_match &= ids == raw.encode(text, add_special_tokens=False).ids
        case, _ = run_case(ref_model, ids, tok, pad_id, False)
        chats.append({"messages": chat["messages"], "tools": chat["tools"], "add_generation_prompt": True,
                      "text": text, **case})

    checks = {"tokenizer_json_matches_transformers": ids_match,
              "generate_matches_full_recompute": all(c["generate_matches_full_recompute"] for c in prompts + chats)}
    assert ids_match, "tokenizers' Tokenizer.from_file(tokenizer.json) disagrees with AutoTokenizer"
    if getattr(config, "sliding_window", None):
        # The same weights without the window (gemma: window wider than any prompt, layer pattern kept).
        override = {"sliding_window": None} if family == "mistral" else {"sliding_window": 4096}
        wide = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                                    **override).eval()
        with torch.no_grad():
            a = ref_model(torch.tensor([long_ids])).logits[0]
            b = wide(torch.tensor([long_ids])).logits[0]
        w = SLIDING_WINDOW
        checks["sliding_window_changes_logits"] = bool((a[w:] - b[w:]).abs().max() > 1e-3)
        checks["sliding_window_first_window_identical"] = bool((a[:w] - b[:w]).abs().max() < 1e-5)
        assert checks["sliding_window_changes_logits"] and checks["sliding_window_first_window_identical"]

    special = {t.content: {"id": i, "special": t.special, "rstrip": t.rstrip}
               for i, t in sorted(tok.added_tokens_decoder.items())}
    ref = {
        "fixture": name,
        "architecture": config.architectures[0] if config.architectures else model_cls.__name__,
        "model_type": config.model_type,
        "dtype": "float32",
        "generator": {"transformers": transformers.__version__, "torch": torch.__version__,
                      "tokenizers": tokenizers.__version__, "python": platform.python_version(),
                      "device": "cpu", "threads": THREADS, "attn_implementation": "eager",
                      "script": "scripts/reference/make_hf_fixtures.py"},
        "tolerance_note": ("float32 on CPU, eager attention. Logits are rounded to 6 significant digits; expect "
                           "|diff| up to ~1e-4 (relative ~1e-5) from a correct f32 implementation with a "
                           "different summation order, more for bf16/f16. Compare greedy tokens exactly only "
                           "while every earlier greedy_gaps entry is clear (e.g. > 1e-2); greedy_gaps[i] is "
                           "top1 - top2 raw logit at step i. greedy = argmax by full recomputation, never "
                           "stopping at eos; it equals transformers' generate(do_sample=False) with the KV cache "
                           "where generate_matches_full_recompute is true."),
        "sliding_window_semantics": ("token at position q attends to keys k with q - sliding_window < k <= q "
                                     "(window includes the current token)") if getattr(config, "sliding_window", None) else None,
        "special_tokens": {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                           "unk_token": tok.unk_token, "add_bos_token": fam["add_bos"], "added_tokens": special},
        "vocab_size": vocab_size,
        "notes": NOTES[name],
        "checks": checks,
        "prompts": prompts,
        "chat_renderings": chats,
    }
    (folder / "reference.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n")
    for f in folder.iterdir():
        f.chmod(0o644)  # save_pretrained writes the safetensors files 0600
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "hf")
    ap.add_argument("names", nargs="*", default=list(FIXTURES))
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    committed = REPO / "tests/fixtures/qwen2.5-coder-0.5b-instruct/chat_template.json"
    if committed.exists():
        assert json.loads(committed.read_text())["chat_template"] == QWEN25_TEMPLATE, "Qwen2.5 template drifted"
    base_tokens, merges = train_base_tokenizer()
    for name in a.names:
        folder = build(name, a.out, base_tokens, merges)
        total = sum(f.stat().st_size for f in folder.iterdir())
        assert total <= 2 * 1024 * 1024, (name, total)
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.iterdir()))).hexdigest()[:16]
        ref = json.loads((folder / "reference.json").read_text())
        gaps = sorted(g for c in ref["prompts"] + ref["chat_renderings"] for g in c["greedy_gaps"])
        print(f"{name}: {total / 1024:.0f} KiB, sha256 {digest}, checks {ref['checks']}, greedy gaps: "
              f"min {gaps[0]}, median {gaps[len(gaps) // 2]}, {sum(g < 0.05 for g in gaps)}/{len(gaps)} < 0.05",
              file=sys.stderr)


if __name__ == "__main__":
    main()
