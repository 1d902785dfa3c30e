"""The server through the official `openai` Python SDK: chat and legacy completions (plain and
streamed), n, stop, seed, logprobs, max_completion_tokens, embeddings (float and base64), the SDK's
error classes, and API keys (a second server started with --api-key)."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

import schema
import suite
from rawhttp import get, post

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who lives in a castle."}]
STORY_PROMPT = "Once upon a time, there was a dragon who"  # goes on well past 16 tokens (greedy)


def chat(client, **kw):
    args = {"model": suite.CHAT_MODEL, "messages": CHAT, "max_tokens": 12, "temperature": 0}
    args.update(kw)
    return client.chat.completions.create(**args)


def complete(client, **kw):
    args = {"model": suite.CHAT_MODEL, "prompt": STORY_PROMPT, "max_tokens": 12, "temperature": 0}
    args.update(kw)
    return client.completions.create(**args)


# ---------------------------------------------------------------- chat and completions


def test_chat(client, chat_model):
    r = chat(client)
    assert r.object == "chat.completion" and r.model == chat_model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream(client, chat_model):
    full = chat(client, max_tokens=16)
    chunks = list(chat(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    finishes = [
        ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason
    ]
    assert finishes == [full.choices[0].finish_reason]


def test_completion(client, chat_model):
    r = complete(client)
    assert r.object == "text_completion" and r.model == chat_model
    assert r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12


def test_completion_stream(client, chat_model):
    full = complete(client)
    chunks = list(complete(client, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_n2(client, chat_model):
    r = chat(client, n=2, temperature=0.8, seed=7, max_tokens=8)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(c.message.content is not None for c in r.choices)
    assert (
        2 <= r.usage.completion_tokens <= 16
    ), "completion_tokens counts both choices (2 x at most 8)"


def test_chat_n2_stream(client, chat_model):
    chunks = list(chat(client, n=2, temperature=0.8, seed=7, max_tokens=6, stream=True))
    seen = {c.index for ch in chunks for c in ch.choices}
    assert seen == {0, 1}
    finished = [c.index for ch in chunks for c in ch.choices if c.finish_reason]
    assert sorted(finished) == [0, 1], "each choice finishes exactly once"


def test_completion_n2(client, chat_model):
    r = complete(client, n=2, temperature=0.8, seed=7, max_tokens=6)
    assert sorted(c.index for c in r.choices) == [0, 1]


# ---------------------------------------------------------------- stop


def _third_word(text: str) -> str:
    words = text.split()
    assert len(words) > 3, f"continuation too short: {text!r}"
    return words[2]


def test_stop_string_completion(client, chat_model):
    text = complete(client, max_tokens=16).choices[0].text
    stop = _third_word(text)
    r = complete(client, max_tokens=16, stop=stop)
    got = r.choices[0].text
    assert stop not in got and r.choices[0].finish_reason == "stop"
    assert text.startswith(got) and text[len(got) :].startswith(stop), (got, text)
    streamed = "".join(
        ch.choices[0].text for ch in complete(client, max_tokens=16, stop=stop, stream=True)
    )
    assert streamed == got


def test_stop_list_chat(client, chat_model):
    text = chat(client, messages=STORY, max_tokens=16).choices[0].message.content
    stop = _third_word(text)
    r = chat(client, messages=STORY, max_tokens=16, stop=["never-in-the-output-xyz", stop])
    got = r.choices[0].message.content
    assert stop not in got and r.choices[0].finish_reason == "stop"
    assert text.startswith(got), (got, text)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in chat(client, messages=STORY, max_tokens=16, stop=[stop], stream=True)
        if ch.choices
    )
    assert streamed == got


# ---------------------------------------------------------------- seed


def test_seed_reproduces_sampling(client, chat_model):
    a = chat(client, messages=STORY, temperature=0.8, seed=1234, max_tokens=12)
    b = chat(client, messages=STORY, temperature=0.8, seed=1234, max_tokens=12)
    assert a.choices[0].message.content == b.choices[0].message.content
    c = complete(client, temperature=0.8, seed=99, max_tokens=12)
    d = complete(client, temperature=0.8, seed=99, max_tokens=12)
    assert c.choices[0].text == d.choices[0].text


# ---------------------------------------------------------------- logprobs


def test_chat_logprobs(client, chat_model):
    r = chat(client, messages=STORY, logprobs=True, top_logprobs=3, max_tokens=8)
    c = r.choices[0]
    assert c.logprobs is not None and c.logprobs.content, c
    content = c.logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert isinstance(e.token, str)
        assert e.logprob <= 0
        assert isinstance(e.bytes, list) and all(0 <= b < 256 for b in e.bytes)
        if e.token.isascii():
            assert bytes(e.bytes) == e.token.encode(), e
        assert len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True), "top_logprobs most likely first"
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(e.logprob, tops[0], abs_tol=1e-4), (e.logprob, tops)
    if c.finish_reason == "length":
        joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
        assert joined == c.message.content


def test_completion_logprobs(client, chat_model):
    r = complete(client, logprobs=2, max_tokens=8)
    c = r.choices[0]
    lp = c.logprobs
    assert lp is not None, c
    n = r.usage.completion_tokens
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    )
    assert all(x <= 0 for x in lp.token_logprobs)
    for top in lp.top_logprobs:
        # Up to 2 alternatives, plus the sampled token when it is not among them (OpenAI's rule);
        # tokens that decode to the same text share one key.
        assert 1 <= len(top) <= 3, top
        assert all(v <= 0 for v in top.values())
    for i in range(n - 1):
        assert lp.text_offset[i + 1] - lp.text_offset[i] == len(lp.tokens[i])
    if c.finish_reason == "length":
        assert "".join(lp.tokens) == c.text


# ---------------------------------------------------------------- max_completion_tokens


def test_max_completion_tokens(client, chat_model):
    r = chat(client, messages=STORY, max_tokens=None, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


# ---------------------------------------------------------------- embeddings


def _norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_float_and_base64(client, embed_model):
    text = "The quick brown fox jumps over the lazy dog."
    floats = client.embeddings.create(model=embed_model, input=text, encoding_format="float")
    vec = floats.data[0].embedding
    assert len(vec) == 384
    assert abs(_norm(vec) - 1) < 1e-3
    b64 = client.embeddings.create(model=embed_model, input=text, encoding_format="base64")
    raw = b64.data[0].embedding
    assert isinstance(raw, str), "base64 embeddings come as a string"
    decoded = struct.unpack(f"<{len(base64.b64decode(raw)) // 4}f", base64.b64decode(raw))
    assert len(decoded) == 384
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vec, decoded))
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    default = client.embeddings.create(model=embed_model, input=text)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vec, default.data[0].embedding))


def test_embeddings_list_input(client, embed_model):
    r = client.embeddings.create(
        model=embed_model, input=["a cat", "a dog", "stock prices"], encoding_format="float"
    )
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 and abs(_norm(v) - 1) < 1e-3 for v in vecs)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 (unit vectors)
    assert cos(vecs[0], vecs[1]) > cos(
        vecs[0], vecs[2]
    ), "cat is nearer to dog than to stock prices"
    assert r.usage.prompt_tokens > 0


# ---------------------------------------------------------------- errors


def test_not_found_errors(client, chat_model):
    with pytest.raises(openai.NotFoundError):
        chat(client, model="no-such-model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_models_retrieve(client, chat_model):
    m = client.models.retrieve(chat_model)
    assert m.id == chat_model and m.object == "model"
    assert chat_model in [m.id for m in client.models.list()]


def test_bad_request_errors(client, chat_model):
    with pytest.raises(openai.BadRequestError):
        chat(client, max_tokens=100_000_000)
    with pytest.raises(openai.BadRequestError):
        chat(client, temperature=5)
    with pytest.raises(openai.BadRequestError):
        complete(client, prompt=[1, 2, 999_999_999])


# ---------------------------------------------------------------- API keys


def test_auth_missing_key_is_401(auth_server):
    for r in (
        get(auth_server.v1 + "/models"),
        post(
            auth_server.v1 + "/chat/completions",
            {"model": suite.CHAT_MODEL, "messages": CHAT, "max_tokens": 2},
        ),
    ):
        assert r.status == 401, str(r)
        schema.validate_error(r.json())


def test_auth_wrong_key_is_401(auth_server):
    bad = openai.OpenAI(base_url=auth_server.v1, api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        chat(bad, max_tokens=2)


def test_auth_right_key_is_200(auth_server):
    good = openai.OpenAI(base_url=auth_server.v1, api_key=suite.API_KEY, max_retries=0, timeout=60)
    assert suite.CHAT_MODEL in [m.id for m in good.models.list()]
    assert chat(good, max_tokens=2).choices[0].message.content is not None


def test_auth_health_stays_public(auth_server):
    assert get(auth_server.url + "/health").status == 200
