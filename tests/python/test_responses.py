"""OpenAI's Responses API (/v1/responses) through the official SDK, with strict response validation (every
field the SDK's typed models require must be there) and against OpenAI's OpenAPI schemas: plain text,
streamed events in OpenAI's order, a function tool and a tool round trip, `text.format` json_schema,
conversations through `previous_response_id`, the stored responses (retrieve, input items, delete), and
the errors of bad input. The OpenAI Agents SDK runs an agent with one function tool against it."""
import asyncio
import json

import httpx
import openai
import pytest

import schema
import suite

MODEL = "qwen2.5-coder-0.5b-instruct"
WEATHER = {"type": "function", **suite.WEATHER_FUNCTION}


@pytest.fixture(scope="module")
def oa(default_server):
    return openai.OpenAI(
        base_url=default_server.v1, api_key="unused", max_retries=0, timeout=120,
        _strict_response_validation=True,
    )


def valid(r) -> dict:
    body = r.model_dump(mode="json", by_alias=True, exclude_unset=True)
    schema.assert_valid("Response", body)
    return body


def test_a_text_response_has_one_message_and_usage(oa):
    r = oa.responses.create(model=MODEL, input="Say hello in German.", max_output_tokens=24, temperature=0)
    valid(r)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete"), r.status
    assert [o.type for o in r.output] == ["message"]
    assert r.output[0].role == "assistant" and r.output[0].content[0].type == "output_text"
    assert r.output_text.strip()
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 24
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_max_output_tokens_gives_an_incomplete_response_with_the_reason(oa):
    r = oa.responses.create(model=MODEL, input="Count from 1 to 100.", max_output_tokens=5, temperature=0)
    valid(r)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


def test_streamed_events_come_in_openai_order_and_add_up_to_the_response(oa):
    events = list(oa.responses.create(model=MODEL, input="Name three colours.", max_output_tokens=32,
                                      temperature=0, stream=True))
    for e in events:
        schema.assert_valid("ResponseStreamEvent", e.model_dump(mode="json", by_alias=True, exclude_unset=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], kinds
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and kinds[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas), kinds
    assert kinds[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done",
                                       "response.completed" if events[-1].response.status == "completed"
                                       else "response.incomplete"], kinds
    final = events[-1].response
    text = "".join(d.delta for d in deltas)
    assert text == final.output_text == events[-4].text
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert final.usage.output_tokens > 0


def test_the_stream_helper_accumulates_the_final_response(oa):
    with oa.responses.stream(model=MODEL, input="Say hi.", max_output_tokens=16, temperature=0) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert text == final.output_text and text.strip()


def test_a_forced_function_call_and_its_result_round_trip(oa):
    r = oa.responses.create(model=MODEL, input="What is the weather in Berlin?", tools=[WEATHER],
                            tool_choice="required", max_output_tokens=64, temperature=0)
    valid(r)
    assert r.status == "completed"
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    assert json.loads(calls[0].arguments) == {"city": "Berlin"}
    # The tool's result goes back as a function_call_output; the model answers in text.
    r2 = oa.responses.create(
        model=MODEL, previous_response_id=r.id, tools=[WEATHER], tool_choice="none",
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
        max_output_tokens=48, temperature=0,
    )
    valid(r2)
    assert r2.previous_response_id == r.id
    assert [o.type for o in r2.output] == ["message"] and r2.output_text.strip()


def test_a_streamed_function_call_arrives_as_argument_deltas(oa):
    events = list(oa.responses.create(model=MODEL, input="What is the weather in Bonn?", tools=[WEATHER],
                                      tool_choice={"type": "function", "name": "get_weather"},
                                      max_output_tokens=64, temperature=0, stream=True))
    kinds = [e.type for e in events]
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert args == done.arguments and json.loads(args) == {"city": "Bonn"}
    assert kinds[-1] == "response.completed"
    assert events[-1].response.output[0].call_id == added.item.call_id


def test_text_format_json_schema_constrains_the_output(oa):
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    # Greedy, as the other tests here: sampled at temperature 1 the 0.5B model sometimes writes an
    # integer of 50 digits, and the reply stops at max_output_tokens inside it (CI caught it once).
    r = oa.responses.create(model=MODEL, input="Invent a person.", max_output_tokens=64, temperature=0,
                            text={"format": {"type": "json_schema", "name": "person", "schema": person,
                                             "strict": True}})
    valid(r)
    assert r.status == "completed", r.incomplete_details
    value = json.loads(r.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert r.text.format.type == "json_schema"


def test_a_conversation_continues_from_the_stored_response(oa, default_server):
    first = oa.responses.create(model=MODEL, instructions="Answer briefly.",
                                input="My name is Anna and I live in Leipzig.", max_output_tokens=24,
                                temperature=0)
    second = oa.responses.create(model=MODEL, previous_response_id=first.id,
                                 input="Where do I live?", max_output_tokens=24, temperature=0)
    valid(second)
    # The second prompt holds the first turn: the same conversation sent whole to chat completions
    # (without the first turn's instructions, which do not carry over) renders the same prompt.
    chat = httpx.post(f"{default_server.v1}/chat/completions", timeout=120, json={
        "model": MODEL, "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": "My name is Anna and I live in Leipzig."},
                     {"role": "assistant", "content": first.output_text},
                     {"role": "user", "content": "Where do I live?"}],
    }).json()
    assert second.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert second.output_text == chat["choices"][0]["message"]["content"]


def test_stored_responses_can_be_retrieved_listed_and_deleted(oa):
    r = oa.responses.create(model=MODEL, input=[{"role": "user", "content": "Hi"}], max_output_tokens=8,
                            metadata={"ticket": "T-1"})
    got = oa.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.metadata == {"ticket": "T-1"}
    items = oa.responses.input_items.list(r.id)
    schema.assert_valid("ResponseItemList", items.model_dump(mode="json", by_alias=True, exclude_unset=True))
    assert [i.type for i in items.data] == ["message"] and items.data[0].id
    assert [i.id for i in items] == [items.data[0].id]  # auto-paging ends
    for bad in ({"limit": 0}, {"limit": 101}, {"order": "sideways"}, {"after": "item_unknown"}):
        with pytest.raises(openai.BadRequestError) as e:
            oa.responses.input_items.list(r.id, **bad)
        assert error_of(e.value)["param"] == next(iter(bad)), bad
    oa.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(r.id)


def test_store_false_keeps_nothing(oa):
    r = oa.responses.create(model=MODEL, input="Hi", max_output_tokens=4, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(r.id)


def error_of(exc) -> dict:
    body = exc.response.json()
    schema.assert_valid("ErrorResponse", body)
    return body["error"]


def test_bad_input_gets_the_right_status_and_error_shape(oa):
    with pytest.raises(openai.NotFoundError) as e:
        oa.responses.create(model=MODEL, input="Hi", previous_response_id="resp_unknown")
    assert error_of(e.value)["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=MODEL, input="Hi", tools=[{"type": "web_search"}])
    err = error_of(e.value)
    assert err["param"] == "tools" and "web_search" in err["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=MODEL, input="Hi", max_output_tokens=0)
    assert error_of(e.value)["param"] == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=MODEL, input=[{"type": "function_call_output"}])
    assert error_of(e.value)["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        oa.responses.create(model="no-such-model", input="Hi")
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=MODEL, input="word " * 40000, max_output_tokens=8)
    assert error_of(e.value)["code"] == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_turns_instead_of_failing(auth_server):
    oa = openai.OpenAI(base_url=auth_server.v1, api_key=suite.API_KEY, max_retries=0, timeout=120)
    turns = [{"role": "user", "content": f"Note {i}: " + "lorem ipsum dolor " * 150} for i in range(40)]
    turns.append({"role": "user", "content": "Say OK."})
    with pytest.raises(openai.BadRequestError) as e:
        oa.responses.create(model=suite.CHAT_MODEL, input=turns, max_output_tokens=8)
    assert error_of(e.value)["code"] == "context_length_exceeded"
    r = oa.responses.create(model=suite.CHAT_MODEL, input=turns, truncation="auto", max_output_tokens=8)
    assert r.truncation == "auto" and r.status in ("completed", "incomplete")
    # Kept: the newest turns that fit, far fewer tokens than the whole conversation.
    whole = sum(len(t["content"].split()) for t in turns)
    assert 0 < r.usage.input_tokens < whole


def test_another_keys_stored_response_is_not_found(auth_server):
    def client(key):
        return openai.OpenAI(base_url=auth_server.v1, api_key=key, max_retries=0, timeout=120)

    mine, theirs = client(suite.API_KEY), client(suite.OTHER_API_KEY)
    r = mine.responses.create(model=suite.CHAT_MODEL, input="Hi", max_output_tokens=4)
    assert mine.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model=suite.CHAT_MODEL, input="Hi", previous_response_id=r.id)
    assert mine.responses.retrieve(r.id).id == r.id  # still there for its owner


def test_an_agents_sdk_agent_calls_its_tool_and_answers(default_server):
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem

    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    cities = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        cities.append(city)
        return f"Sunny, 21 degrees Celsius in {city}."

    client = openai.AsyncOpenAI(base_url=default_server.v1, api_key="unused", max_retries=0, timeout=120,
                                _strict_response_validation=True)
    agent = Agent(
        name="weather", instructions="Use the get_weather tool to answer questions about the weather.",
        tools=[get_weather], model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        model_settings=ModelSettings(temperature=0, max_tokens=96),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Berlin?", max_turns=4))
    kinds = [type(i) for i in result.new_items]
    assert cities == ["Berlin"], kinds
    assert kinds[:2] == [ToolCallItem, ToolCallOutputItem] and kinds[-1] == MessageOutputItem, kinds
    assert isinstance(result.final_output, str) and result.final_output.strip()
