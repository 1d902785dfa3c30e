"""Constrained decoding on the default chat model (Qwen 2.5 Coder 0.5B): `response_format` (json_schema,
json_object, text), the vLLM extensions (`guided_*` and `structured_outputs`, on chat and legacy
completions), forced tool calls (`tool_choice` required / named / none / auto, `parallel_tool_calls`,
streamed argument deltas), the SDK's and LangChain's structured-output helpers, and the 400s for
requests that cannot be constrained.

The schema corpus is tests/python/schemas/*.json, one `{"name", "prompt", "schema", "example"}` per
file. Every schema is run greedy and sampled (temperature 1.3, one run per seed), all requests at once
so that continuous batching serves them together.

Environment (besides suite.py's):
  INHAUS_TEST_STRUCTURED_SEEDS    seeds of the sampled corpus runs (default "1,2"; "" for greedy only)
  INHAUS_TEST_STRUCTURED_WORKERS  corpus requests in flight at once (default 8)
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

import schema
import suite

MODEL = "qwen2.5-coder-0.5b-instruct"
CORPUS_DIR = Path(__file__).resolve().parent / "schemas"
CORPUS = sorted(CORPUS_DIR.glob("*.json"))
SEEDS = [int(s) for s in re.split(r"[,\s]+", os.environ.get("INHAUS_TEST_STRUCTURED_SEEDS", "1,2")) if s]
WORKERS = int(os.environ.get("INHAUS_TEST_STRUCTURED_WORKERS") or 8)
MAX_TOKENS = 300
SAMPLED_TEMPERATURE = 1.3
# At most this share of all corpus runs may run out of tokens (sampled ones only; greedy ones never).
MAX_LENGTH_SHARE = 0.10
LABELS = ["greedy"] + [f"seed{s}" for s in SEEDS]


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def entry(stem: str) -> dict:
    return load(CORPUS_DIR / f"{stem}.json")


def content_validator(s: dict) -> jsonschema.protocols.Validator:
    """Draft 2020-12 with the formats (date, date-time, email, uuid) checked, not just annotated."""
    return jsonschema.Draft202012Validator(s, format_checker=jsonschema.FormatChecker())


def assert_matches(s: dict, value: Any, text: str = "") -> None:
    errs = sorted(content_validator(s).iter_errors(value), key=lambda e: list(e.absolute_path))
    if errs:
        where = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errs[:5])
        raise AssertionError(f"output does not match its schema: {where}\n{text or json.dumps(value)}")


def json_schema_format(e: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": e["name"], "schema": e["schema"], "strict": True}}


def ask(e: dict) -> list[dict]:
    return [{"role": "user", "content": e["prompt"]}]


def dump(obj) -> dict:
    return obj.model_dump(exclude_unset=True)


@pytest.fixture(scope="module")
def structured_server(default_server):
    return default_server


@pytest.fixture(scope="module")
def qwen(structured_server) -> openai.OpenAI:
    # Queued corpus requests wait for a seat in the batch: a generous timeout, no retries.
    return openai.OpenAI(base_url=structured_server.v1, api_key="unused", max_retries=0, timeout=600)


def chat(client: openai.OpenAI, **kw):
    args = {"model": MODEL, "temperature": 0, "max_tokens": 200}
    args.update(kw)
    return client.chat.completions.create(**args)


def complete(client: openai.OpenAI, **kw):
    args = {"model": MODEL, "temperature": 0, "max_tokens": 60}
    args.update(kw)
    return client.completions.create(**args)


# ---------------------------------------------------------------- the corpus itself (no server)


def _strict_problems(node: Any, where: str = "#") -> list[str]:
    """Where `node` leaves OpenAI's strict-mode subset: every object lists all its properties as
    required and forbids others; no keywords strict mode rejects."""
    out: list[str] = []
    if isinstance(node, list):
        for i, x in enumerate(node):
            out += _strict_problems(x, f"{where}/{i}")
        return out
    if not isinstance(node, dict):
        return out
    unsupported = {"minLength", "maxLength", "uniqueItems", "patternProperties", "oneOf", "allOf", "not",
                   "if", "then", "else", "dependentRequired", "dependentSchemas", "minProperties",
                   "maxProperties", "unevaluatedProperties", "contains", "prefixItems"}
    for k in unsupported & node.keys():
        out.append(f"{where}: `{k}` is outside strict mode")
    types = node.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        props = node.get("properties")
        if not isinstance(props, dict):
            out.append(f"{where}: an object without properties")
        elif sorted(node.get("required", [])) != sorted(props):
            out.append(f"{where}: required must list every property")
        if node.get("additionalProperties") is not False:
            out.append(f"{where}: additionalProperties must be false")
    for k, v in node.items():
        if k in ("properties", "$defs"):
            for name, sub in v.items():
                out += _strict_problems(sub, f"{where}/{k}/{name}")
        elif k in ("items", "anyOf"):
            out += _strict_problems(v, f"{where}/{k}")
    return out


def test_format_checking_is_on():
    # Without rfc3339-validator installed, jsonschema silently skips "date-time".
    checker = jsonschema.FormatChecker()
    for f in ("date", "date-time", "email", "uuid"):
        assert f in checker.checkers, f"jsonschema does not check format {f!r} (see requirements.txt)"
    bad = {"type": "string", "format": "date-time"}
    assert not content_validator(bad).is_valid("2025-13-01 10:00")


def test_the_corpus_is_well_formed():
    assert len(CORPUS) >= 30, [p.name for p in CORPUS]
    names = set()
    for path in CORPUS:
        e = load(path)
        assert set(e) == {"name", "prompt", "schema", "example"}, path.name
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", e["name"]), path.name  # OpenAI's json_schema.name
        assert path.stem.endswith(e["name"]), path.name
        assert e["name"] not in names, f"two schemas named {e['name']}"
        names.add(e["name"])
        assert e["prompt"].strip(), path.name
        jsonschema.Draft202012Validator.check_schema(e["schema"])
        assert e["schema"]["type"] == "object", f"{path.name}: strict mode wants an object at the root"
        assert not _strict_problems(e["schema"]), (path.name, _strict_problems(e["schema"]))
        # Satisfiable, and in far fewer tokens than MAX_TOKENS (a token is a few characters).
        assert_matches(e["schema"], e["example"])
        compact = json.dumps(e["example"], separators=(",", ":"), ensure_ascii=False)
        assert len(compact) <= MAX_TOKENS * 1.5, f"{path.name}: example is {len(compact)} chars"


# ---------------------------------------------------------------- the corpus against the server


def _corpus_request(client: openai.OpenAI, e: dict, label: str):
    kw: dict[str, Any] = {"messages": ask(e), "response_format": json_schema_format(e), "max_tokens": MAX_TOKENS}
    if label != "greedy":
        kw.update(temperature=SAMPLED_TEMPERATURE, seed=int(label.removeprefix("seed")))
    return chat(client, **kw)


@pytest.fixture(scope="module")
def corpus_runs(qwen) -> dict[tuple[str, str], Any]:
    """(schema name, run label) -> the ChatCompletion, or the exception the request raised."""
    jobs = [(load(p), label) for p in CORPUS for label in LABELS]
    runs: dict[tuple[str, str], Any] = {}
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        futures = {pool.submit(_corpus_request, qwen, e, label): (e["name"], label) for e, label in jobs}
        for f in concurrent.futures.as_completed(futures):
            try:
                runs[futures[f]] = f.result()
            except Exception as exc:  # reported by the schema's own test
                runs[futures[f]] = exc
    print(f"\ncorpus: {len(jobs)} requests in {time.monotonic() - t0:.0f} s")
    return runs


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_schema(corpus_runs, path):
    e = load(path)
    problems = []
    for label in LABELS:
        r = corpus_runs[(e["name"], label)]
        if isinstance(r, Exception):
            problems.append(f"{label}: request failed: {r!r}")
            continue
        schema.validate_chat_completion(dump(r))
        choice = r.choices[0]
        text = choice.message.content
        if choice.finish_reason == "length":
            # Counted by test_corpus_mostly_stops; a truncation is an unfinished object.
            if label == "greedy":
                problems.append(f"{label}: ran out of {MAX_TOKENS} tokens: {text!r}")
            elif not (text or "").startswith("{") or r.usage.completion_tokens != MAX_TOKENS:
                problems.append(f"{label}: not a truncated object: {text!r} ({r.usage})")
            continue
        if choice.finish_reason != "stop":
            problems.append(f"{label}: finish_reason {choice.finish_reason!r}")
            continue
        try:
            value = json.loads(text)
        except (TypeError, ValueError) as exc:
            problems.append(f"{label}: not JSON ({exc}): {text!r}")
            continue
        try:
            assert_matches(e["schema"], value, text)
        except AssertionError as exc:
            problems.append(f"{label}: {exc}")
        if "\n" in text or text != text.strip():
            problems.append(f"{label}: not compact: {text!r}")
    assert not problems, "\n".join(problems)


def test_corpus_mostly_stops(corpus_runs):
    done = {k: r for k, r in corpus_runs.items() if not isinstance(r, Exception)}
    failed = sorted(k for k in corpus_runs if k not in done)
    assert not failed, f"requests failed: {failed}"
    length = sorted(k for k, r in done.items() if r.choices[0].finish_reason == "length")
    print(f"corpus: {len(length)} of {len(done)} runs ended with `length`: {length}")
    greedy = [k for k in length if k[1] == "greedy"]
    assert not greedy, f"greedy runs out of tokens: {greedy}"
    assert len(length) <= MAX_LENGTH_SHARE * len(done), (
        f"{len(length)} of {len(done)} runs ended with `length`: {length}"
    )


@pytest.mark.parametrize("stem", ["02_flat_person", "08_nested_address", "26_recursive_linked_list"])
def test_streamed_text_equals_non_streamed(qwen, stem):
    e = entry(stem)
    kw = {"messages": ask(e), "response_format": json_schema_format(e), "max_tokens": MAX_TOKENS}
    full = chat(qwen, **kw)
    assert full.choices[0].finish_reason == "stop", full
    chunks = list(chat(qwen, stream=True, **kw))
    for ch in chunks:
        schema.validate_chat_chunk(dump(ch))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) > 1, "streamed in pieces"
    assert_matches(e["schema"], json.loads(text), text)


def test_n2_sampled_choices_each_follow_the_schema(qwen):
    e = entry("02_flat_person")
    r = chat(qwen, messages=ask(e), response_format=json_schema_format(e), n=2, temperature=1.0, seed=3,
             max_tokens=MAX_TOKENS)
    schema.validate_chat_completion(dump(r))
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        assert c.finish_reason == "stop", c
        assert_matches(e["schema"], json.loads(c.message.content), c.message.content)


# ---------------------------------------------------------------- other response formats


def test_json_object(qwen):
    r = chat(qwen, messages=[{"role": "user", "content":
                              "Return a JSON object describing Paris with the keys name, country and population."}],
             response_format={"type": "json_object"}, max_tokens=120)
    schema.validate_chat_completion(dump(r))
    assert r.choices[0].finish_reason == "stop", r
    value = json.loads(r.choices[0].message.content)
    assert isinstance(value, dict), value


def test_response_format_text_is_plain_text(qwen):
    r = chat(qwen, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
             response_format={"type": "text"}, max_tokens=12)
    schema.validate_chat_completion(dump(r))
    assert "Paris" in r.choices[0].message.content


def test_a_schema_that_cannot_finish_ends_with_length(qwen):
    e = entry("29_invoice_de")
    kw = {"messages": ask(e), "response_format": json_schema_format(e), "max_tokens": 5, "timeout": 60}
    t0 = time.monotonic()
    r = chat(qwen, **kw)
    assert time.monotonic() - t0 < 60
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "length", c
    assert r.usage.completion_tokens == 5
    assert c.message.content.startswith("{"), c.message.content
    with pytest.raises(ValueError):
        json.loads(c.message.content)
    # Streamed the same.
    chunks = list(chat(qwen, stream=True, **kw))
    for ch in chunks:
        schema.validate_chat_chunk(dump(ch))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["length"]


# ---------------------------------------------------------------- the SDK's and LangChain's helpers


class Address(pydantic.BaseModel):
    street: str
    postal_code: str
    city: str


class Customer(pydantic.BaseModel):
    name: str
    vip: bool
    address: Address  # a nested model: the SDK's schema gets $defs and a $ref


CUSTOMER_TEXT = ("Extract the customer: \"Neukunde Anna Schmidt (Premiumkundin), "
                 "Lindenstraße 12, 10115 Berlin.\"")


def test_sdk_parse_with_a_pydantic_model(qwen):
    r = qwen.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": CUSTOMER_TEXT}], response_format=Customer,
        temperature=0, max_tokens=150,
    )
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert c.message.refusal is None
    assert isinstance(c.message.parsed, Customer), c.message
    assert isinstance(c.message.parsed.address, Address)
    assert c.message.parsed == Customer.model_validate_json(c.message.content)


class GetWeather(pydantic.BaseModel):
    """Current weather for a city."""

    city: str


def test_sdk_parse_with_a_pydantic_function_tool(qwen):
    r = qwen.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Berlin?"}],
        tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required",
        temperature=0, max_tokens=64,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    call = c.message.tool_calls[0]
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather), call


def _langchain(structured_server, **kw):
    from langchain_openai import ChatOpenAI

    args = dict(base_url=structured_server.v1, api_key="unused", model=MODEL, temperature=0, max_tokens=150,
                max_retries=0, timeout=120)
    args.update(kw)
    return ChatOpenAI(**args)


def test_langchain_with_structured_output(structured_server):
    out = _langchain(structured_server).with_structured_output(Customer).invoke(CUSTOMER_TEXT)
    assert isinstance(out, Customer), out
    assert isinstance(out.address, Address)


def test_langchain_bind_tools_required(structured_server):
    from langchain_core.messages import AIMessage

    llm = _langchain(structured_server, max_tokens=64).bind_tools([GetWeather], tool_choice="required")
    msg = llm.invoke("What is the weather in Paris?")
    assert isinstance(msg, AIMessage)
    assert msg.tool_calls, msg
    for call in msg.tool_calls:
        assert call["name"] == "GetWeather" and call["id"], call
        GetWeather.model_validate(call["args"])
    assert msg.response_metadata.get("finish_reason") == "tool_calls"


# ---------------------------------------------------------------- tool calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Berlin"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "IANA time zone, e.g. Europe/Berlin"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Berlin?"}]
ASK_TWO = [{"role": "user", "content": "What is the weather in Berlin and what is the weather in Paris?"}]


def assert_valid_calls(calls) -> None:
    assert calls, "no tool calls"
    ids = [c.id for c in calls]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for c in calls:
        assert c.type == "function"
        assert c.function.name in PARAMETERS, c
        assert_matches(PARAMETERS[c.function.name], json.loads(c.function.arguments), c.function.arguments)


def test_tool_choice_required(qwen):
    r = chat(qwen, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_tokens=100)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert not c.message.content, c.message
    assert_valid_calls(c.message.tool_calls)


def test_tool_choice_required_even_for_small_talk(qwen):
    r = chat(qwen, messages=[{"role": "user", "content": "Hello! How are you today?"}], tools=TOOLS,
             tool_choice="required", max_tokens=100)
    schema.validate_chat_completion(dump(r))
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
    assert_valid_calls(r.choices[0].message.tool_calls)


def test_a_named_tool_choice_forces_that_function(qwen):
    # The question is about the weather; the named function is called all the same.
    r = chat(qwen, messages=ASK_WEATHER, tools=TOOLS,
             tool_choice={"type": "function", "function": {"name": "get_time"}}, max_tokens=100)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    # OpenAI ends a call forced by name with "stop", vLLM too; "tool_calls" is as good.
    assert c.finish_reason in ("tool_calls", "stop"), c
    assert not c.message.content, c.message
    assert [t.function.name for t in c.message.tool_calls] == ["get_time"]
    assert_valid_calls(c.message.tool_calls)


def test_tool_choice_none_gives_text(qwen):
    r = chat(qwen, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none", max_tokens=48)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.message.tool_calls is None
    assert c.finish_reason in ("stop", "length")
    assert c.message.content


def test_tool_choice_auto_calls_when_the_question_needs_it(qwen):
    r = chat(qwen, messages=ASK_WEATHER, tools=TOOLS, tool_choice="auto", max_tokens=100)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.tool_calls and c.message.tool_calls[0].function.name == "get_weather", c.message
    args = json.loads(c.message.tool_calls[0].function.arguments)
    assert isinstance(args, dict) and "Berlin" in str(args.get("city")), args


def test_parallel_tool_calls(qwen):
    r = chat(qwen, messages=ASK_TWO, tools=TOOLS, tool_choice="required", parallel_tool_calls=True,
             max_tokens=200)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert_valid_calls(c.message.tool_calls)


def test_parallel_tool_calls_false_gives_one_call(qwen):
    r = chat(qwen, messages=ASK_TWO, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
             max_tokens=200)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert len(c.message.tool_calls) == 1, c.message.tool_calls
    assert_valid_calls(c.message.tool_calls)


def test_a_streamed_required_call_arrives_in_openai_deltas(qwen):
    kw = {"messages": ASK_WEATHER, "tools": TOOLS, "tool_choice": "required", "max_tokens": 100}
    full = chat(qwen, **kw).choices[0]
    assert full.finish_reason == "tool_calls"
    chunks = list(chat(qwen, stream=True, **kw))
    by_index: dict[int, list] = {}
    content, finishes = "", []
    for ch in chunks:
        schema.validate_chat_chunk(dump(ch))
        for c in ch.choices:
            content += c.delta.content or ""
            if c.finish_reason:
                finishes.append(c.finish_reason)
            for d in c.delta.tool_calls or []:
                by_index.setdefault(d.index, []).append(d)
    assert finishes == ["tool_calls"]
    assert content == "", f"the call must not also be streamed as content: {content!r}"
    assert sorted(by_index) == list(range(len(full.message.tool_calls))), by_index.keys()
    for i, deltas in sorted(by_index.items()):
        first, rest = deltas[0], deltas[1:]
        assert first.id and first.type == "function" and first.function and first.function.name, first
        for d in rest:  # id, type and name come once, in the call's first delta
            assert d.id is None and d.type is None and (d.function is None or d.function.name is None), d
        pieces = [d.function.arguments for d in deltas if d.function and d.function.arguments]
        assert len(pieces) > 1, f"arguments in one piece: {pieces}"
        want = full.message.tool_calls[i]
        assert first.function.name == want.function.name
        assert json.loads("".join(pieces)) == json.loads(want.function.arguments)


def test_an_agent_round_trip(qwen):
    first = chat(qwen, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_tokens=100).choices[0]
    assert first.finish_reason == "tool_calls"
    calls = first.message.tool_calls
    messages = ASK_WEATHER + [{
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": c.id, "type": "function",
                        "function": {"name": c.function.name, "arguments": c.function.arguments}} for c in calls],
    }]
    results = {"get_weather": "12 degrees Celsius and light rain", "get_time": "14:05"}
    messages += [{"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]} for c in calls]
    # With the results in the history the model may answer or call again (the 0.5B model tends to
    # repeat its call as bare JSON until max_tokens); the reply is well formed and any call validates.
    r = chat(qwen, messages=messages, tools=TOOLS, tool_choice="auto", max_tokens=100)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason in ("stop", "tool_calls", "length"), c
    for call in c.message.tool_calls or []:
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    # The agent's last step asks for the answer without tools: text that uses the result.
    r = chat(qwen, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=100)
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert c.message.tool_calls is None
    assert c.message.content and c.message.content.strip()


# ---------------------------------------------------------------- vLLM's guided decoding

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
SQL_GRAMMAR = 'start: "SELECT " COL " FROM " TABLE ";"\nCOL: /[a-z]+/\nTABLE: /[a-z]+/\n'
SQL_REGEX = r"SELECT [a-z]+ FROM [a-z]+;"

# kind -> (value, chat question, completion prompt, check of the output text)
GUIDED = {
    "choice": (
        ["yes", "no"],
        "Is Paris the capital of France? Answer yes or no.",
        "Question: Is Paris the capital of France? Answer yes or no.\nAnswer: ",
        lambda t: t in ("yes", "no"),
    ),
    "regex": (
        r"\d{3}-\d{4}",
        "Make up a phone number in the format 555-1234.",
        "An example phone number in the format 555-1234: ",
        lambda t: re.fullmatch(r"\d{3}-\d{4}", t),
    ),
    "json": (
        CITY_SCHEMA,
        "Name a European capital and its country.",
        "A European capital and its country, as JSON: ",
        lambda t: content_validator(CITY_SCHEMA).is_valid(json.loads(t)),
    ),
    "grammar": (
        SQL_GRAMMAR,
        "Write an SQL query that selects the column name from the table users.",
        "-- SQL query that selects the column name from the table users\n",
        lambda t: re.fullmatch(SQL_REGEX, t),
    ),
}


def guided_body(style: str, kind: str, value) -> dict:
    return {f"guided_{kind}": value} if style == "guided" else {"structured_outputs": {kind: value}}


@pytest.mark.parametrize("style", ["guided", "structured_outputs"])
@pytest.mark.parametrize("kind", list(GUIDED))
def test_guided_chat(qwen, kind, style):
    value, question, _, ok = GUIDED[kind]
    r = chat(qwen, messages=[{"role": "user", "content": question}], max_tokens=60,
             extra_body=guided_body(style, kind, value))
    schema.validate_chat_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert ok(c.message.content), c.message.content


@pytest.mark.parametrize("style", ["guided", "structured_outputs"])
@pytest.mark.parametrize("kind", list(GUIDED))
def test_guided_completions(qwen, kind, style):
    value, _, prompt, ok = GUIDED[kind]
    r = complete(qwen, prompt=prompt, max_tokens=60, extra_body=guided_body(style, kind, value))
    schema.validate_completion(dump(r))
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert ok(c.text), c.text


def test_guided_completions_stream(qwen):
    kw = {"prompt": GUIDED["regex"][2], "max_tokens": 60, "extra_body": {"guided_regex": GUIDED["regex"][0]}}
    full = complete(qwen, **kw).choices[0]
    chunks = list(complete(qwen, stream=True, **kw))
    for ch in chunks:
        schema.validate_completion_chunk(dump(ch))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full.text
    assert re.fullmatch(r"\d{3}-\d{4}", full.text), full.text


# ---------------------------------------------------------------- requests that cannot be constrained

NO_NAME_TOOL = {"type": "function", "function": {"description": "nameless",
                                                 "parameters": {"type": "object", "properties": {}}}}
BAD_PARAMS_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
BAD_CHAT = {
    "json_schema_invalid_schema": {"response_format": {"type": "json_schema",
                                                       "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
    "response_format_unknown_type": {"response_format": {"type": "yaml"}},
    "json_schema_missing": {"response_format": {"type": "json_schema"}},
    "guided_regex_does_not_compile": {"extra_body": {"guided_regex": "(unclosed"}},
    "guided_json_invalid_schema": {"extra_body": {"guided_json": {"type": "objekt"}}},
    "guided_grammar_undefined_rule": {"extra_body": {"guided_grammar": "start: undefined_rule\n"}},
    "structured_outputs_regex_does_not_compile": {"extra_body": {"structured_outputs": {"regex": "[a-"}}},
    "tool_choice_unknown_function": {"tools": TOOLS,
                                     "tool_choice": {"type": "function", "function": {"name": "get_stock_price"}}},
    "tool_without_function_name": {"tools": [NO_NAME_TOOL], "tool_choice": "auto"},
    "tool_choice_required_without_tools": {"tool_choice": "required"},
    "tool_choice_named_without_tools": {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
    "required_tool_with_invalid_parameters": {"tools": [BAD_PARAMS_TOOL], "tool_choice": "required"},
}
BAD_COMPLETIONS = {
    "guided_regex_does_not_compile": {"extra_body": {"guided_regex": "(unclosed"}},
    "guided_json_invalid_schema": {"extra_body": {"guided_json": {"type": "objekt"}}},
    "structured_outputs_grammar_undefined_rule": {"extra_body": {"structured_outputs": {"grammar": "start: nope\n"}}},
}


def assert_400(excinfo) -> None:
    e = excinfo.value
    assert e.status_code == 400, e
    body = e.response.json()
    schema.validate_error(body)
    assert body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["message"], body


@pytest.mark.parametrize("case", list(BAD_CHAT))
def test_bad_chat_requests_are_400(qwen, case):
    with pytest.raises(openai.BadRequestError) as excinfo:
        chat(qwen, messages=ASK_WEATHER, max_tokens=8, **BAD_CHAT[case])
    assert_400(excinfo)


@pytest.mark.parametrize("case", list(BAD_COMPLETIONS))
def test_bad_completion_requests_are_400(qwen, case):
    with pytest.raises(openai.BadRequestError) as excinfo:
        complete(qwen, prompt="Hello", max_tokens=8, **BAD_COMPLETIONS[case])
    assert_400(excinfo)
