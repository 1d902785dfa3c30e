"""Anthropic's Messages API (/v1/messages) through the official `anthropic` SDK, with strict response
validation: a text reply, the stream (raw events in Anthropic's order, and `messages.stream`'s
accumulation), stop sequences, a tool round trip (streamed and not), `count_tokens`, authentication by
`x-api-key` and by bearer token, and errors in Anthropic's shape. The three chat-shaped APIs render the
same prompt for the same conversation and answer it alike."""
import json

import anthropic
import httpx
import pytest

import suite

MODEL = "qwen2.5-coder-0.5b-instruct"
WEATHER = {
    "name": suite.WEATHER_FUNCTION["name"],
    "description": suite.WEATHER_FUNCTION["description"],
    "input_schema": suite.WEATHER_FUNCTION["parameters"],
}
ASK = [{"role": "user", "content": "What is the weather in Berlin?"}]
# Greedy decoding. This SDK version has no `temperature` argument; the API takes the field (0 to 1).
T0 = {"temperature": 0}


@pytest.fixture(scope="module")
def an(default_server):
    return anthropic.Anthropic(base_url=default_server.url, api_key="unused", max_retries=0, timeout=120,
                               _strict_response_validation=True)


def test_a_text_reply_has_content_blocks_stop_reason_and_usage(an):
    m = an.messages.create(model=MODEL, max_tokens=32, system="Answer briefly.",
                           messages=[{"role": "user", "content": "Say hello in German."}], extra_body=T0)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"] and m.content[0].text.strip()
    assert m.stop_reason in ("end_turn", "max_tokens") and m.stop_sequence is None
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 32


def test_max_tokens_and_stop_sequences_set_the_stop_reason(an):
    m = an.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Count to 50."}],
                           extra_body=T0)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 4
    m = an.messages.create(model=MODEL, max_tokens=64, stop_sequences=["3"], extra_body=T0,
                           messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "3", m
    assert "3" not in m.content[0].text


def test_raw_stream_events_come_in_anthropics_order(an):
    events = list(an.messages.create(model=MODEL, max_tokens=24, extra_body=T0, stream=True,
                                     messages=[{"role": "user", "content": "Name three colours."}]))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    assert set(kinds[2:-3]) == {"content_block_delta"}, kinds
    assert events[0].message.usage.input_tokens > 0 and events[0].message.content == []
    assert events[1].content_block.type == "text" and events[1].index == 0
    assert all(e.index == 0 and e.delta.type == "text_delta" for e in events[2:-3])
    assert events[-2].delta.stop_reason in ("end_turn", "max_tokens")
    assert events[-2].usage.output_tokens > 0


def test_the_stream_helper_accumulates_the_message(an):
    with an.messages.stream(model=MODEL, max_tokens=24, extra_body=T0,
                            messages=[{"role": "user", "content": "Say hi."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip() and final.content[0].text == text
    plain = an.messages.create(model=MODEL, max_tokens=24, extra_body=T0,
                               messages=[{"role": "user", "content": "Say hi."}])
    assert plain.content[0].text == text and plain.usage == final.usage


def test_a_tool_round_trip(an):
    m = an.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
                           messages=ASK, extra_body=T0)
    assert m.stop_reason == "tool_use"
    use = [b for b in m.content if b.type == "tool_use"]
    assert use and use[0].name == "get_weather" and use[0].id.startswith("toolu_")
    assert use[0].input == {"city": "Berlin"}
    # The result goes back as a tool_result block; the model answers in text.
    m2 = an.messages.create(
        model=MODEL, max_tokens=48, tools=[WEATHER], tool_choice={"type": "none"}, extra_body=T0,
        messages=ASK + [
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id,
                                          "content": "Sunny, 21 C"}]},
        ],
    )
    assert m2.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in m2.content] == ["text"] and m2.content[0].text.strip()


def test_a_streamed_tool_use_arrives_as_input_json_deltas(an):
    with an.messages.stream(model=MODEL, max_tokens=64, tools=[WEATHER], extra_body=T0,
                            tool_choice={"type": "tool", "name": "get_weather"}, messages=[
                                {"role": "user", "content": "What is the weather in Bonn?"}]) as s:
        events = list(s)
        final = s.get_final_message()
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert json.loads(partial) == {"city": "Bonn"}
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"city": "Bonn"}


def test_count_tokens_matches_the_prompt_of_a_create(an):
    kwargs = dict(model=MODEL, system="Be brief.", tools=[WEATHER], messages=ASK)
    counted = an.messages.count_tokens(**kwargs)
    m = an.messages.create(max_tokens=1, **kwargs)
    assert counted.input_tokens == m.usage.input_tokens > 0


def anthropic_error(r: httpx.Response) -> dict:
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
    return body["error"]


def test_bad_input_gets_anthropics_error_shape(default_server, an):
    url = f"{default_server.url}/v1/messages"
    r = httpx.post(url, json={"model": MODEL, "messages": ASK}, timeout=60)
    assert r.status_code == 400 and "max_tokens" in anthropic_error(r)["message"]
    assert anthropic_error(r)["type"] == "invalid_request_error"
    r = httpx.post(url, json={"model": "nope", "max_tokens": 4, "messages": ASK}, timeout=60)
    assert r.status_code == 404 and anthropic_error(r)["type"] == "not_found_error"
    r = httpx.post(url, json={"model": MODEL, "max_tokens": 4, "messages": ASK,
                              "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, timeout=60)
    assert r.status_code == 400 and "web_search" in anthropic_error(r)["message"]
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and anthropic_error(r)["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        an.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "system", "content": "x"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_keys_work_as_x_api_key_and_as_bearer_and_a_wrong_key_is_an_authentication_error(auth_server):
    url = f"{auth_server.url}/v1/messages"
    body = {"model": suite.CHAT_MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    head = {"anthropic-version": "2023-06-01"}
    assert httpx.post(url, json=body, headers={**head, "x-api-key": suite.API_KEY}, timeout=60).status_code == 200
    good = anthropic.Anthropic(base_url=auth_server.url, api_key=suite.API_KEY, max_retries=0, timeout=60)
    assert good.messages.create(**body).content
    r = httpx.post(url, json=body, headers={**head, "x-api-key": "sk-wrong"}, timeout=60)
    assert r.status_code == 401 and anthropic_error(r)["type"] == "authentication_error"
    bad = anthropic.Anthropic(base_url=auth_server.url, api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(**body)


def test_the_three_apis_render_the_same_prompt_and_answer_alike(default_server, an):
    """One conversation with a system prompt, a tool call and its result, asked through chat
    completions, the Responses API and the Messages API: the same prompt tokens and the same greedy
    reply."""
    import openai

    oa = openai.OpenAI(base_url=default_server.v1, api_key="unused", max_retries=0, timeout=120)
    args = '{"city": "Berlin"}'
    chat_tools = [{"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                    "parameters": WEATHER["input_schema"]}}]
    chat = oa.chat.completions.create(model=MODEL, max_tokens=32, temperature=0, tools=chat_tools, messages=[
        {"role": "system", "content": "Be brief."}, ASK[0],
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 C"},
    ])
    resp = oa.responses.create(model=MODEL, max_output_tokens=32, temperature=0, instructions="Be brief.",
                               tools=[{"type": "function", "name": WEATHER["name"],
                                       "description": WEATHER["description"],
                                       "parameters": WEATHER["input_schema"]}], input=[
        ASK[0],
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": args},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny, 21 C"},
    ])
    msg = an.messages.create(model=MODEL, max_tokens=32, extra_body=T0, system="Be brief.", tools=[WEATHER],
                             messages=ASK + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "get_weather",
                                           "input": {"city": "Berlin"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "Sunny, 21 C"}]},
    ])
    assert chat.usage.prompt_tokens == resp.usage.input_tokens == msg.usage.input_tokens
    # The reply, whatever it is (text, or another call), is the same in the three shapes.
    c = chat.choices[0].message
    replies = [
        (c.content or "", [(t.function.name, json.loads(t.function.arguments)) for t in c.tool_calls or []]),
        ("".join(p.text for o in resp.output if o.type == "message" for p in o.content),
         [(o.name, json.loads(o.arguments)) for o in resp.output if o.type == "function_call"]),
        ("".join(b.text for b in msg.content if b.type == "text"),
         [(b.name, b.input) for b in msg.content if b.type == "tool_use"]),
    ]
    assert replies[0][0] or replies[0][1]
    assert replies[0] == replies[1] == replies[2], replies
