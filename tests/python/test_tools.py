"""Function calling through the official SDK, on the default chat model (Qwen 2.5 Coder): the tools
reach the model through its chat template, a call comes back as `tool_calls` with
finish_reason `tool_calls` (streamed as a tool_calls delta), and the tool's result can be sent back."""
import json

import openai
import pytest

import schema
import suite

MODEL = "qwen2.5-coder-0.5b-instruct"
TOOLS = [{"type": "function", "function": suite.WEATHER_FUNCTION}]
ASK = [{"role": "user", "content": "What is the weather in Berlin?"}]


@pytest.fixture(scope="module")
def qwen(default_server):
    return openai.OpenAI(base_url=default_server.v1, api_key="unused", max_retries=0)


def test_a_tool_call_comes_back_as_tool_calls(qwen):
    r = qwen.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=64)
    schema.validate_chat_completion(r.model_dump(exclude_unset=True))
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Berlin"}


def test_a_streamed_tool_call_arrives_as_a_delta(qwen):
    stream = qwen.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=64, stream=True
    )
    calls, finish, content = [], None, ""
    for chunk in stream:
        schema.validate_chat_chunk(chunk.model_dump(exclude_unset=True))
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            content += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls"
    assert content.strip() == "", f"the call must not also be streamed as content: {content!r}"
    # OpenAI's shape: the first delta of a call has its id and name, the arguments follow in pieces.
    assert calls[0].id and calls[0].function.name == "get_weather"
    assert all(c.index == 0 for c in calls) and all(c.id is None for c in calls[1:])
    arguments = "".join(c.function.arguments or "" for c in calls)
    assert json.loads(arguments) == {"city": "Berlin"}


def test_the_call_and_the_tool_result_reach_the_template(qwen):
    # What the model is shown for a follow-up turn: the assistant's call (arguments as an object, as
    # Hugging Face templates expect) and the tool's result, in the model's own format.
    messages = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Berlin\"}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12 degrees Celsius and rain"},
    ]
    base = str(qwen.base_url).rstrip("/").removesuffix("/v1")
    ids = qwen.post(base + "/tokenize", cast_to=object, body={"model": MODEL, "messages": messages})["tokens"]
    text = qwen.post(base + "/detokenize", cast_to=object, body={"model": MODEL, "tokens": ids})["prompt"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>' in text, text
    assert "<tool_response>\n12 degrees Celsius and rain\n</tool_response>" in text, text
    # And the server answers such a conversation.
    r = qwen.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=16)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_without_tools_json_stays_content_and_tool_choice_none_turns_them_off(qwen):
    r = qwen.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                     temperature=0, max_tokens=32)
    assert r.choices[0].message.tool_calls is None
    with pytest.raises(openai.BadRequestError):
        qwen.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required", max_tokens=8)
    with pytest.raises(openai.BadRequestError):
        qwen.chat.completions.create(model=MODEL, messages=ASK, tools=[{"type": "function"}], max_tokens=8)
