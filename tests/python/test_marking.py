"""AI output is marked (EU AI Act Art. 50): every generation response carries the `AI-Disclosure` header
and a `provenance` object (in the final event of a stream) with the model, its weights' sha256, the
sampling parameters, the request id and the digest of the generated content, signed with the server's
Ed25519 key (`--signing-key`). `inhaus provenance verify` accepts a saved response and refuses it after a
one-byte edit of its content or of its provenance. Responses with the extension field stay valid against
OpenAI's schemas."""
import copy
import hashlib
import json
import subprocess

import anthropic
import httpx
import openai
import pytest

import schema
import suite
from conftest import _start


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("signing")
    key = d / "signing.key"
    r = subprocess.run([suite.BIN, "keys", "signing-key", "new", "--out", str(key)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    public = (d / "signing.key.pub").read_text().strip()
    assert r.stdout.strip() == public
    assert (key.stat().st_mode & 0o077) == 0, "the signing key must be readable by its owner only"
    return key, d / "signing.key.pub"


@pytest.fixture(scope="module")
def signed(keys):
    srv = _start([suite.CHAT_MODEL], ["--signing-key", str(keys[0])], name="signing server")
    yield srv
    srv.stop()


def verify(tmp_path, body: dict, pub) -> subprocess.CompletedProcess:
    f = tmp_path / f"r{hashlib.sha1(json.dumps(body).encode()).hexdigest()[:8]}.json"
    f.write_text(json.dumps(body, ensure_ascii=False))
    return subprocess.run([suite.BIN, "provenance", "verify", str(f), "--public-key", str(pub)],
                          capture_output=True, text=True, timeout=60)


def canonical(v) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(choices) -> str:
    """The provenance's content digest of [(text, [(name, arguments), ...]), ...]."""
    def args(a):
        try:
            return canonical(json.loads(a))
        except ValueError:
            return a
    return hashlib.sha256(canonical([
        {"text": t, "tool_calls": [{"name": n, "arguments": args(a)} for n, a in calls]} for t, calls in choices
    ]).encode()).hexdigest()


def check_disclosure(headers, model):
    h = headers.get("ai-disclosure")
    assert h and "mode=ai-generated" in h and f'model="{model}"' in h and "date=@" in h, headers


def check_provenance(p, model, request_id=None):
    assert p["model"] == model and p["ai_generated"] is True
    assert len(p["weights_sha256"]) == 64 and p["quantization"]
    assert {"temperature", "top_p", "seed"} <= set(p["sampling"])
    assert p["signature"]["alg"] == "ed25519" and p["signature"]["value"]
    if request_id:
        assert p["request_id"] == request_id


ENDPOINTS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 12}),
    "completions": ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12}),
    "responses": ("/v1/responses", {"input": "Say hi.", "max_output_tokens": 12}),
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 12}),
}


@pytest.mark.parametrize("api", list(ENDPOINTS))
def test_every_endpoint_marks_and_signs_its_output_and_verify_catches_one_byte_edits(signed, keys, tmp_path, api):
    path, body = ENDPOINTS[api]
    r = httpx.post(signed.url + path, json={"model": suite.CHAT_MODEL, **body}, timeout=120,
                   headers={"X-Request-Id": f"mark-{api}"})
    assert r.status_code == 200, r.text
    check_disclosure(r.headers, suite.CHAT_MODEL)
    saved = r.json()
    check_provenance(saved["provenance"], suite.CHAT_MODEL, request_id=f"mark-{api}")
    if api == "chat":
        schema.validate_chat_completion(saved)
    if api == "responses":
        schema.assert_valid("Response", saved)
    ok = verify(tmp_path, saved, keys[1])
    assert ok.returncode == 0 and ok.stdout.startswith("ok"), ok.stderr
    # One byte more in the content.
    edited = copy.deepcopy(saved)
    if api == "chat":
        edited["choices"][0]["message"]["content"] += "!"
    elif api == "completions":
        edited["choices"][0]["text"] += "!"
    elif api == "responses":
        edited["output"][0]["content"][0]["text"] += "!"
    else:
        edited["content"][0]["text"] += "!"
    bad = verify(tmp_path, edited, keys[1])
    assert bad.returncode != 0 and "content" in bad.stderr, bad.stderr
    # One byte of the provenance.
    edited = copy.deepcopy(saved)
    edited["provenance"]["created"] += 1
    bad = verify(tmp_path, edited, keys[1])
    assert bad.returncode != 0 and "signature" in bad.stderr, bad.stderr


def test_a_signed_tool_call_verifies(signed, keys, tmp_path):
    tools = [{"type": "function", "function": suite.WEATHER_FUNCTION}]
    r = httpx.post(signed.v1 + "/chat/completions", timeout=120, json={
        "model": suite.CHAT_MODEL, "messages": [{"role": "user", "content": "Weather in Berlin?"}],
        "tools": tools, "tool_choice": "required", "max_tokens": 96, "temperature": 0})
    body = r.json()
    assert body["choices"][0]["message"]["tool_calls"], body
    assert verify(tmp_path, body, keys[1]).returncode == 0
    edited = copy.deepcopy(body)
    edited["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Bonn"}'
    assert verify(tmp_path, edited, keys[1]).returncode != 0


def test_streams_carry_the_provenance_in_their_final_event(signed, keys, tmp_path):
    oa = openai.OpenAI(base_url=signed.v1, api_key="unused", max_retries=0, timeout=120)
    with oa.chat.completions.with_streaming_response.create(
        model=suite.CHAT_MODEL, messages=[{"role": "user", "content": "Count to 3."}], max_tokens=16,
        stream=True,
    ) as raw:
        check_disclosure(raw.headers, suite.CHAT_MODEL)
        chunks = [c for c in raw.parse()]
    for c in chunks:
        schema.validate_chat_chunk(c.model_dump(exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.choices for c in chunks), "no chunk without choices unless include_usage"
    last = chunks[-1].model_dump()
    assert last["choices"][0]["finish_reason"]
    p = last["provenance"]
    check_provenance(p, suite.CHAT_MODEL)
    assert p["content_sha256"] == digest([(text, [])])
    whole = {"object": "chat.completion", "choices": [{"message": {"content": text}}], "provenance": p}
    assert verify(tmp_path, whole, keys[1]).returncode == 0

    events = list(oa.responses.create(model=suite.CHAT_MODEL, input="Say hi.", max_output_tokens=12, stream=True))
    final = events[-1].response.model_dump(mode="json", by_alias=True)
    check_provenance(final["provenance"], suite.CHAT_MODEL)
    assert verify(tmp_path, final, keys[1]).returncode == 0

    an = anthropic.Anthropic(base_url=signed.url, api_key="unused", max_retries=0, timeout=120)
    events = list(an.messages.create(model=suite.CHAT_MODEL, max_tokens=12, stream=True,
                                     messages=[{"role": "user", "content": "Say hi."}]))
    stop = events[-1].model_dump()
    assert stop["type"] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert stop["provenance"]["content_sha256"] == digest([(text, [])])
    whole = {"type": "message", "content": [{"type": "text", "text": text}], "provenance": stop["provenance"]}
    assert verify(tmp_path, whole, keys[1]).returncode == 0


def test_without_a_signing_key_output_is_still_marked(server):
    r = httpx.post(server.v1 + "/chat/completions", timeout=120, json={
        "model": suite.CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    check_disclosure(r.headers, suite.CHAT_MODEL)
    p = r.json()["provenance"]
    assert p["model"] == suite.CHAT_MODEL and "signature" not in p
    assert p["content_sha256"] == digest([(r.json()["choices"][0]["message"]["content"], [])])
