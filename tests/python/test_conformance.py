"""The server over plain HTTP, every response checked against OpenAI's OpenAPI schemas (schema.py):
chat and legacy completions (plain and streamed), models, embeddings, error objects, exact usage
counts, vLLM's /tokenize and /detokenize, /health, /ready and /metrics."""

from __future__ import annotations

import json
import math
import re

import pytest

import schema
import suite
from rawhttp import Response, get, post

CHAT_PROMPT = "What is the capital of France?"
TEXT_PROMPT = "The capital of France is"
LONG_PROMPT = "Write a long story about a dragon who lives in a castle."
STORY_PROMPT = "Once upon a time, there was a dragon who"  # goes on well past 16 tokens (greedy)


def chat_body(**kw) -> dict:
    body = {
        "model": suite.CHAT_MODEL,
        "messages": [{"role": "user", "content": CHAT_PROMPT}],
        "max_tokens": 12,
        "temperature": 0,
    }
    body.update(kw)
    return body


def completion_body(**kw) -> dict:
    body = {"model": suite.CHAT_MODEL, "prompt": TEXT_PROMPT, "max_tokens": 12, "temperature": 0}
    body.update(kw)
    return body


def ok_json(r: Response) -> dict:
    assert r.status == 200, str(r)
    assert r.content_type.startswith("application/json"), r.content_type
    return r.json()


def stream_chunks(r: Response) -> list[dict]:
    """The JSON chunks of an SSE response that ends with `data: [DONE]` (and has nothing after it)."""
    assert r.status == 200, str(r)
    assert r.content_type.startswith("text/event-stream"), r.content_type
    events = r.events()
    assert events, f"no SSE events: {r.body[:500]!r}"
    assert events[-1] == "[DONE]", f"stream does not end with [DONE]: {events[-3:]}"
    assert events.count("[DONE]") == 1
    return [json.loads(e) for e in events[:-1]]


def assert_error(r: Response, status: int) -> dict:
    """An OpenAI error object with this status: JSON (never FastAPI-style 422 text), every field of
    ErrorResponse present."""
    assert r.status == status, f"expected {status}: {r}"
    assert r.content_type.startswith("application/json"), f"{r.content_type}: {r}"
    v = r.json()
    schema.validate_error(v)
    assert v["error"]["message"], v
    return v


def check_usage(u: dict) -> None:
    assert u["prompt_tokens"] > 0, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u


# ---------------------------------------------------------------- health, readiness, models


def test_health(base_url):
    r = get(base_url + "/health")
    assert r.status == 200, str(r)


def test_ready(base_url):
    r = get(base_url + "/ready")
    assert r.status == 200, str(r)


def test_models_list(v1, server):
    v = ok_json(get(v1 + "/models"))
    schema.validate_models_list(v)
    ids = [m["id"] for m in v["data"]]
    for m in v["data"]:
        schema.validate_model(m)
    for alias in suite.MODELS:
        assert alias in ids, ids


def test_model_by_id(v1, chat_model):
    v = ok_json(get(f"{v1}/models/{chat_model}"))
    schema.validate_model(v)
    assert v["id"] == chat_model and v["object"] == "model"


def test_model_by_id_unknown(v1):
    v = assert_error(get(v1 + "/models/no-such-model"), 404)
    assert v["error"]["code"] == "model_not_found", v


# ---------------------------------------------------------------- chat completions


def test_chat_completion(v1, chat_model):
    v = ok_json(post(v1 + "/chat/completions", chat_body()))
    schema.validate_chat_completion(v)
    assert v["object"] == "chat.completion" and v["model"] == chat_model
    assert len(v["choices"]) == 1
    c = v["choices"][0]
    assert c["index"] == 0 and c["message"]["role"] == "assistant"
    assert isinstance(c["message"]["content"], str) and c["message"]["content"]
    assert c["finish_reason"] in ("stop", "length")
    check_usage(v["usage"])
    assert 0 < v["usage"]["completion_tokens"] <= 12


def test_chat_stream_with_usage(v1, chat_model):
    r = post(
        v1 + "/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})
    )
    chunks = stream_chunks(r)
    for ch in chunks:
        schema.validate_chat_chunk(ch)
        assert ch["object"] == "chat.completion.chunk"
    assert len({ch["id"] for ch in chunks}) == 1, "every chunk has the same id"
    assert len({ch["created"] for ch in chunks}) == 1, "every chunk has the same created"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[0]
    *content_chunks, last = chunks
    assert last["choices"] == [] and last.get("usage"), f"last chunk carries usage only: {last}"
    check_usage(last["usage"])
    for ch in content_chunks:
        assert ch.get("usage") is None, f"usage before the last chunk: {ch}"
        assert len(ch["choices"]) == 1 and ch["choices"][0]["index"] == 0
    finishes = [ch for ch in content_chunks if ch["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1, f"{len(finishes)} chunks carry finish_reason"
    assert finishes[0] is content_chunks[-1], "finish_reason comes in the last choice chunk"


def test_chat_stream_without_usage(v1, chat_model):
    chunks = stream_chunks(post(v1 + "/chat/completions", chat_body(stream=True, max_tokens=4)))
    for ch in chunks:
        schema.validate_chat_chunk(ch)
        assert ch.get("usage") is None, ch
        assert len(ch["choices"]) == 1, "no usage chunk unless include_usage"


def streamed_chat_text(chunks: list[dict]) -> str:
    return "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"])


def test_chat_stream_concatenates_to_non_stream(v1, chat_model):
    body = chat_body(max_tokens=16)
    full = ok_json(post(v1 + "/chat/completions", body))
    chunks = stream_chunks(
        post(
            v1 + "/chat/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    )
    assert streamed_chat_text(chunks) == full["choices"][0]["message"]["content"]
    fin = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert fin[-1] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == full["usage"]


def test_chat_logprobs_validate(v1, chat_model):
    v = ok_json(post(v1 + "/chat/completions", chat_body(logprobs=True, top_logprobs=2)))
    schema.validate_chat_completion(v)
    lp = v["choices"][0]["logprobs"]
    assert lp is not None and lp["content"] is not None, v["choices"][0]
    assert len(lp["content"]) == v["usage"]["completion_tokens"]
    for e in lp["content"]:
        assert len(e["top_logprobs"]) == 2


# ---------------------------------------------------------------- legacy completions


def test_completion_string_prompt(v1, chat_model):
    v = ok_json(post(v1 + "/completions", completion_body()))
    schema.validate_completion(v)
    assert v["object"] == "text_completion" and v["model"] == chat_model
    assert len(v["choices"]) == 1 and v["choices"][0]["index"] == 0
    assert v["choices"][0]["text"]
    check_usage(v["usage"])


def test_completion_list_of_strings(v1, chat_model):
    prompts = [TEXT_PROMPT, "One, two, three,"]
    v = ok_json(post(v1 + "/completions", completion_body(prompt=prompts, max_tokens=8)))
    schema.validate_completion(v)
    assert sorted(c["index"] for c in v["choices"]) == [0, 1], v["choices"]
    check_usage(v["usage"])
    # Each choice is what the prompt alone would give (greedy).
    second = ok_json(post(v1 + "/completions", completion_body(prompt=prompts[1], max_tokens=8)))
    by_index = {c["index"]: c["text"] for c in v["choices"]}
    assert by_index[1] == second["choices"][0]["text"]


# Token ids valid in any of the catalog's vocabularies (all are well over 10,000 entries).
TOKEN_PROMPT = [504, 3575, 282, 4649, 314]


def test_completion_token_array(v1, chat_model):
    v = ok_json(post(v1 + "/completions", completion_body(prompt=TOKEN_PROMPT, max_tokens=8)))
    schema.validate_completion(v)
    assert len(v["choices"]) == 1
    assert v["usage"]["prompt_tokens"] == len(TOKEN_PROMPT)


def test_completion_list_of_token_arrays(v1, chat_model):
    v = ok_json(
        post(
            v1 + "/completions",
            completion_body(prompt=[TOKEN_PROMPT, TOKEN_PROMPT[:3]], max_tokens=4),
        )
    )
    schema.validate_completion(v)
    assert sorted(c["index"] for c in v["choices"]) == [0, 1]
    assert v["usage"]["prompt_tokens"] == len(TOKEN_PROMPT) + 3


def test_completion_stream_concatenates_to_non_stream(v1, chat_model):
    body = completion_body(max_tokens=16)
    full = ok_json(post(v1 + "/completions", body))
    chunks = stream_chunks(
        post(
            v1 + "/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    )
    for ch in chunks:
        schema.validate_completion_chunk(ch)
        assert ch["object"] == "text_completion"
    *text_chunks, last = chunks
    assert last["choices"] == [] and last.get("usage"), last
    assert last["usage"] == full["usage"]
    text = "".join(ch["choices"][0]["text"] for ch in text_chunks)
    assert text == full["choices"][0]["text"]
    finishes = [ch for ch in text_chunks if ch["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1 and finishes[0] is text_chunks[-1]
    assert finishes[0]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_completion_logprobs_validate(v1, chat_model):
    v = ok_json(post(v1 + "/completions", completion_body(logprobs=2)))
    schema.validate_completion(v)
    lp = v["choices"][0]["logprobs"]
    assert lp is not None, v["choices"][0]
    n = v["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == n, lp
    assert len(lp["top_logprobs"]) == n


# ---------------------------------------------------------------- exact usage


def test_usage_completion_tokens_hit_max_tokens(v1, chat_model):
    # Both prompts go on well past 8 tokens (greedy), so generation stops at max_tokens.
    v = ok_json(post(v1 + "/completions", completion_body(prompt=STORY_PROMPT, max_tokens=8)))
    assert v["choices"][0]["finish_reason"] == "length", v["choices"][0]
    assert v["usage"]["completion_tokens"] == 8, v["usage"]
    v = ok_json(
        post(
            v1 + "/chat/completions",
            chat_body(messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=8),
        )
    )
    assert v["choices"][0]["finish_reason"] == "length", v["choices"][0]
    assert v["usage"]["completion_tokens"] == 8, v["usage"]


def test_usage_counts_streamed_completion_tokens(v1, chat_model):
    body = completion_body(
        prompt=STORY_PROMPT,
        max_tokens=10,
        logprobs=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = stream_chunks(post(v1 + "/completions", body))
    *text_chunks, last = chunks
    streamed = sum(
        len((ch["choices"][0].get("logprobs") or {}).get("tokens") or []) for ch in text_chunks
    )
    assert streamed == last["usage"]["completion_tokens"], (streamed, last["usage"])


def test_usage_counts_streamed_chat_tokens(v1, chat_model):
    body = chat_body(
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=10,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = stream_chunks(post(v1 + "/chat/completions", body))
    *content_chunks, last = chunks
    streamed = sum(
        len((ch["choices"][0].get("logprobs") or {}).get("content") or []) for ch in content_chunks
    )
    assert streamed == last["usage"]["completion_tokens"], (streamed, last["usage"])


def tokenize(base_url: str, **body) -> dict:
    v = ok_json(post(base_url + "/tokenize", {"model": suite.CHAT_MODEL, **body}))
    return v


def test_usage_prompt_tokens_match_tokenize(base_url, v1, chat_model):
    v = ok_json(post(v1 + "/completions", completion_body(max_tokens=2)))
    assert v["usage"]["prompt_tokens"] == tokenize(base_url, prompt=TEXT_PROMPT)["count"]
    messages = [{"role": "user", "content": CHAT_PROMPT}]
    v = ok_json(post(v1 + "/chat/completions", chat_body(messages=messages, max_tokens=2)))
    assert v["usage"]["prompt_tokens"] == tokenize(base_url, messages=messages)["count"]


# ---------------------------------------------------------------- /tokenize and /detokenize (vLLM's shapes)


def test_tokenize_prompt(base_url, chat_model):
    v = tokenize(base_url, prompt=TEXT_PROMPT)
    assert set(v) >= {"count", "max_model_len", "tokens"}, v
    assert v["count"] == len(v["tokens"]) > 0
    assert all(isinstance(t, int) and t >= 0 for t in v["tokens"])
    assert isinstance(v["max_model_len"], int) and v["max_model_len"] > v["count"]
    plain = tokenize(base_url, prompt=TEXT_PROMPT, add_special_tokens=False)
    assert plain["count"] <= v["count"]
    assert v["tokens"][len(v["tokens"]) - plain["count"] :] == plain["tokens"]


def test_tokenize_messages(base_url, chat_model):
    messages = [{"role": "user", "content": CHAT_PROMPT}]
    v = tokenize(base_url, messages=messages)
    assert v["count"] == len(v["tokens"])
    plain = tokenize(base_url, prompt=CHAT_PROMPT, add_special_tokens=False)
    # The chat template wraps the content: more tokens than the content alone.
    assert v["count"] > plain["count"]
    no_gen = tokenize(base_url, messages=messages, add_generation_prompt=False)
    assert no_gen["count"] < v["count"], "add_generation_prompt appends the assistant header"


def test_detokenize_round_trip(base_url, chat_model):
    toks = tokenize(base_url, prompt=TEXT_PROMPT, add_special_tokens=False)["tokens"]
    v = ok_json(post(base_url + "/detokenize", {"model": suite.CHAT_MODEL, "tokens": toks}))
    assert v["prompt"] == TEXT_PROMPT, v


def test_token_prompt_equals_string_prompt(base_url, v1, chat_model):
    toks = tokenize(base_url, prompt=TEXT_PROMPT)["tokens"]
    a = ok_json(post(v1 + "/completions", completion_body(max_tokens=8)))
    b = ok_json(post(v1 + "/completions", completion_body(prompt=toks, max_tokens=8)))
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"] == b["usage"]


def test_tokenize_errors(base_url):
    assert_error(post(base_url + "/tokenize", {"model": "no-such-model", "prompt": "x"}), 404)
    assert_error(post(base_url + "/tokenize", {"model": suite.CHAT_MODEL}), 400)
    assert_error(post(base_url + "/detokenize", {"model": suite.CHAT_MODEL, "tokens": "abc"}), 400)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_malformed_json_is_400(v1, path):
    assert_error(post(v1 + path, raw=b'{"model": "x", "messages": [}'), 400)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/chat/completions", {"messages": 5}),
        ("/chat/completions", {"max_tokens": "ten"}),
        ("/chat/completions", {"temperature": "hot"}),
        ("/chat/completions", {"messages": [{"role": "user", "content": 7}]}),
        ("/completions", {"prompt": {"text": "x"}}),
        ("/completions", {"max_tokens": -1}),
        ("/completions", {"stream": "yes"}),
    ],
    ids=lambda x: json.dumps(x) if isinstance(x, dict) else x,
)
def test_invalid_fields_are_400(v1, chat_model, path, body):
    base = chat_body() if path == "/chat/completions" else completion_body()
    assert_error(post(v1 + path, {**base, **body}), 400)


def test_missing_fields_are_400(v1, chat_model):
    assert_error(post(v1 + "/chat/completions", {"model": chat_model, "max_tokens": 4}), 400)
    assert_error(post(v1 + "/completions", {"model": chat_model, "max_tokens": 4}), 400)


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_unknown_model_is_404(v1, path):
    base = chat_body() if path == "/chat/completions" else completion_body()
    v = assert_error(post(v1 + path, {**base, "model": "no-such-model"}), 404)
    assert v["error"]["code"] == "model_not_found", v


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_max_tokens_beyond_context_is_400(v1, chat_model, path):
    base = chat_body() if path == "/chat/completions" else completion_body()
    assert_error(post(v1 + path, {**base, "max_tokens": 100_000_000}), 400)


def test_unknown_route_is_404_json(v1):
    assert_error(get(v1 + "/nothing-here"), 404)


def test_unknown_fields_are_ignored(v1, chat_model):
    extra = {"some_unknown_field": 1, "another_one": {"nested": [1, 2]}, "user": "tester"}
    v = ok_json(post(v1 + "/chat/completions", chat_body(max_tokens=4, **extra)))
    schema.validate_chat_completion(v)
    v = ok_json(post(v1 + "/completions", completion_body(max_tokens=4, **extra)))
    schema.validate_completion(v)


# ---------------------------------------------------------------- embeddings


def test_embeddings(v1, embed_model):
    v = ok_json(post(v1 + "/embeddings", {"model": embed_model, "input": "The quick brown fox"}))
    schema.validate_embedding_response(v)
    assert v["model"] == embed_model and len(v["data"]) == 1
    vec = v["data"][0]["embedding"]
    assert len(vec) == 384
    assert abs(math.sqrt(sum(x * x for x in vec)) - 1) < 1e-3
    assert v["usage"]["prompt_tokens"] > 0
    assert v["usage"]["total_tokens"] == v["usage"]["prompt_tokens"]

    v = ok_json(post(v1 + "/embeddings", {"model": embed_model, "input": ["one", "two", "three"]}))
    schema.validate_embedding_response(v)
    assert [d["index"] for d in v["data"]] == [0, 1, 2]


def test_embeddings_errors(v1, embed_model):
    assert_error(post(v1 + "/embeddings", {"model": "no-such-model", "input": "x"}), 404)
    assert_error(post(v1 + "/embeddings", {"model": embed_model}), 400)
    assert_error(post(v1 + "/embeddings", {"model": embed_model, "input": {"text": "x"}}), 400)
    assert_error(post(v1 + "/embeddings", raw=b"{nope"), 400)


# ---------------------------------------------------------------- metrics


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    line_re = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)")
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(label_re.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


ROUTE_LABELS = ("route", "handler", "path", "endpoint")
STATUS_LABELS = ("status", "status_code", "code")


def http_counts(samples) -> list[tuple[str, str, float]]:
    """(route, status, count) of every HTTP request counter sample."""
    out = []
    for name, labels, value in samples:
        if "http" not in name or "request" not in name or not name.endswith("_total"):
            continue
        route = next((labels[k] for k in ROUTE_LABELS if k in labels), None)
        status = next((labels[k] for k in STATUS_LABELS if k in labels), None)
        if route is not None and status is not None:
            out.append((route, status, value))
    return out


def test_metrics(base_url, v1, chat_model):
    ok_json(post(v1 + "/completions", completion_body(max_tokens=2)))
    assert_error(post(v1 + "/completions", completion_body(model="no-such-model")), 404)
    r = get(base_url + "/metrics")
    assert r.status == 200, str(r)
    assert r.content_type.startswith(("text/plain", "application/openmetrics-text")), r.content_type
    samples = parse_prometheus(r.text)
    names = {s[0] for s in samples}
    for want in (
        "inhaus:num_requests_running",
        "inhaus:prompt_tokens_total",
        "inhaus:time_to_first_token_seconds_bucket",
    ):
        assert want in names, f"{want} missing from /metrics"
    prompt_total = sum(v for n, _, v in samples if n == "inhaus:prompt_tokens_total")
    assert prompt_total > 0
    counts = http_counts(samples)
    assert counts, "no HTTP request counter with route and status labels"
    done = {(route, status) for route, status, v in counts if v >= 1}
    assert any(r.endswith("/v1/completions") and s in ("200", "2xx") for r, s in done), done
    assert any(r.endswith("/v1/completions") and s in ("404", "4xx") for r, s in done), done
