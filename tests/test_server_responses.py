"""OpenAI's Responses API (`/v1/responses`) through the official `openai` client: a real `g4rt serve`
process on the fixture model (texts equal to /v1/chat/completions for the same conversation,
streaming, stored responses, errors, a fuzz of malformed bodies), and Gemma 4 tool calls and
thinking with the real chat template and a scripted token stream (as tests/test_server_tools.py)."""

from __future__ import annotations

import json

import httpx
import pytest

openai = pytest.importorskip("openai")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from server_util import (MODEL, assert_error_body, assert_settled, http, model_id, need_fixture,  # noqa: E402
                         start_server, stop_server)

CTX = 256
RESP = "/v1/responses"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "responses", "--ctx", str(CTX), "--alias", "local")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def name(server):
    return model_id(server.url)


def _chat_text(client, name, messages, n=10, **kw):
    r = client.chat.completions.create(model=name, messages=messages, max_tokens=n, temperature=0, **kw)
    return r.choices[0].message.content, r.usage


def _plain(resp: dict) -> dict:
    """A response body without what differs from one run to the next: ids, times, the prompt-cache
    counts, and the `parsed` fields the SDK's stream helper adds."""
    out = {k: v for k, v in resp.items() if k not in ("id", "created_at", "completed_at")}
    out["usage"] = {k: v for k, v in resp["usage"].items() if k != "input_tokens_details"}
    out["output"] = [{k: ([{n: x for n, x in part.items() if n != "parsed"} for part in v] if k == "content" else v)
                      for k, v in item.items() if k not in ("id", "call_id", "parsed_arguments")}
                     for item in resp["output"]]
    return out


# ---- a real server ------------------------------------------------------------------------------
def test_string_input_equals_chat(client, name):
    r = client.responses.create(model=name, input="Tell me about owls", max_output_tokens=10, temperature=0)
    text, usage = _chat_text(client, name, [{"role": "user", "content": "Tell me about owls"}])
    assert r.object == "response" and r.id.startswith("resp_") and r.model == name
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    (msg,) = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.status == "incomplete"           # cut short, as the response
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert r.output_text == msg.content[0].text == text and text
    assert r.usage.input_tokens == usage.prompt_tokens and r.usage.output_tokens == usage.completion_tokens == 10
    assert r.usage.total_tokens == r.usage.input_tokens + 10 and r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.usage.input_tokens_details.cached_tokens >= 0
    # the alias and the echo fields
    r2 = client.responses.create(model="local", input="Tell me about owls", max_output_tokens=10, temperature=0)
    assert r2.output_text == text and r2.temperature == 0 and r2.max_output_tokens == 10 and r2.tools == []
    assert r2.tool_choice == "auto" and r2.parallel_tool_calls is True and r2.store is True


def test_items_and_instructions_equal_chat(client, name):
    items = [{"role": "developer", "content": "Answer briefly."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Name a river."}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "The Nile.", "annotations": []}]},
             {"role": "user", "content": "Another one?"}]
    r = client.responses.create(model=name, instructions="You are terse.", input=items, max_output_tokens=10,
                                temperature=0)
    text, usage = _chat_text(client, name, [
        {"role": "system", "content": "You are terse."}, {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Nile."},
        {"role": "user", "content": "Another one?"}])
    assert r.output_text == text and r.usage.input_tokens == usage.prompt_tokens
    assert r.instructions == "You are terse."
    # instructions alone differ from no instructions: they reach the prompt
    plain = client.responses.create(model=name, input=items, max_output_tokens=10, temperature=0)
    assert plain.usage.input_tokens < r.usage.input_tokens


def test_seeded_sampling_equals_chat(client, name):
    kw = dict(temperature=0.9, top_p=0.9)
    ext = {"top_k": 40, "seed": 1234}
    r = client.responses.create(model=name, input="Tell me about comets", max_output_tokens=12, extra_body=ext, **kw)
    c = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Tell me about comets"}],
                                       max_tokens=12, extra_body=ext, **kw)
    assert r.output_text == c.choices[0].message.content
    other = client.responses.create(model=name, input="Tell me about comets", max_output_tokens=12,
                                    extra_body={**ext, "seed": 99}, **kw)
    assert other.output_text != r.output_text


def test_stream_events_equal_the_whole_response(server, client, name):
    ask = dict(model=name, input="Tell me about tides", max_output_tokens=10, temperature=0)
    whole = client.responses.create(**ask)
    events = list(client.responses.create(stream=True, **ask))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    msg_id = events[2].item.id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(e.item_id == msg_id and e.output_index == 0 and e.content_index == 0 for e in deltas)
    assert "".join(e.delta for e in deltas) == events[-4].text == whole.output_text
    final = events[-1].response
    assert final.output[0].id == msg_id and final.id == events[0].response.id
    assert _plain(final.model_dump()) == _plain(whole.model_dump())
    # raw SSE: every event named by an `event:` line equal to its type
    with httpx.stream("POST", server.url + RESP, json={**ask, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    names = [ln[len("event: "):] for ln in lines if ln.startswith("event: ")]
    datas = [json.loads(ln[len("data: "):]) for ln in lines if ln.startswith("data: ")]
    assert names == [d["type"] for d in datas] == kinds


def test_stored_responses_continue_with_previous_response_id(server, client, name):
    first = client.responses.create(model=name, input="Tell me about bees", max_output_tokens=6, temperature=0)
    follow = client.responses.create(model=name, previous_response_id=first.id, input="And wasps?",
                                     max_output_tokens=6, temperature=0)
    assert follow.previous_response_id == first.id
    text, usage = _chat_text(client, name, [{"role": "user", "content": "Tell me about bees"},
                                            {"role": "assistant", "content": first.output_text},
                                            {"role": "user", "content": "And wasps?"}], n=6)
    assert follow.output_text == text and follow.usage.input_tokens == usage.prompt_tokens
    # the whole conversation sent as items gives the same
    items = [{"role": "user", "content": "Tell me about bees"}, *[o.model_dump() for o in first.output],
             {"role": "user", "content": "And wasps?"}]
    again = client.responses.create(model=name, input=items, max_output_tokens=6, temperature=0)
    assert again.output_text == text
    # GET and DELETE
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=name, previous_response_id=first.id, input="x", max_output_tokens=2)
    assert e.value.body["param"] == "previous_response_id" and "not kept" in e.value.body["message"]
    # store: false keeps nothing
    unkept = client.responses.create(model=name, input="hi", max_output_tokens=2, store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)
    # a streamed response is kept too
    events = list(client.responses.create(model=name, input="hi", max_output_tokens=2, stream=True))
    assert client.responses.retrieve(events[-1].response.id).output_text == events[-1].response.output_text


def test_the_store_is_bounded():
    """Least recently used responses go first, past the count or the size bound."""
    from g4rt.server.responses_protocol import input_items
    from g4rt.server.responses_store import ResponseStore
    store = ResponseStore(max_responses=2, max_chars=10_000)
    items = input_items("hello")
    for rid in ("a", "b"):
        store.put({"id": rid}, items)
    assert store.get("a")[0] == {"id": "a"}          # a is now the most recently used
    store.put({"id": "c"}, items)
    assert store.get("b") is None and store.get("a") and store.get("c")
    store.put({"id": "big", "text": "x" * 9_900}, items)      # with c over 10,000 characters
    assert store.get("big") and store.get("a") is None and store.get("c") is None
    assert store.delete("big") and not store.delete("big") and store.get("big") is None
    store.put({"id": "huge", "text": "x" * 20_000}, items)     # larger than the whole bound: not kept
    assert store.get("huge") is None


BAD = [  # (body fields, param named, words in the message)
    ({"input": [{"role": "user"}]}, "input.0.content", "user message needs content"),
    ({"input": [{"role": "user", "content": None}]}, "input.0.content", "needs content"),
    ({"input": [{"role": "system", "content": "x"}, {"type": "message", "role": "user"}]}, "input.1.content",
     "needs content"),
    ({"input": [{"role": "assistant"}]}, "input.0.content", "assistant message needs content"),
    ({"input": 5}, "input", "string or a list"),
    ({"input": []}, "input", "at least one"),
    ({}, "input", "required"),
    ({"input": [5]}, "input.0", "must be an object"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input.0.role", "user"),
    ({"input": [{"role": "user", "content": 5}]}, "input.0.content", "string or a list"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text", "text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]},
     "input.0.content.0", "data: URL"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f1"}]}]},
     "input.0.content.0", "file_id"),
    ({"input": [{"role": "user", "content": [{"type": "picture"}]}]}, "input.0.content.0.type", "picture"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input.0.type", "web_search_call"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "reference"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{not json"}]},
     "input.0.arguments", "not JSON"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]},
     "input.0.arguments", "string"),
    ({"input": [{"role": "user", "content": "x"}, {"type": "function_call_output", "call_id": "nope", "output": "1"}]},
     "input.1.call_id", "nope"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools.0", "'web_search'"),
    ({"input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools.0.name", "required"),
    ({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice", "'g'"),
    ({"input": "x", "temperature": "hot"}, "temperature", "number"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "greater than"),
    ({"input": "x", "max_output_tokens": "5"}, "max_output_tokens", "integer"),
    ({"input": "x", "stream": "yes"}, "stream", "boolean"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "medium"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}}}, "text.format",
     "json_schema"),
    ({"input": "x", "background": True}, "background", "background"),
    ({"input": "x", "top_logprobs": 3}, "top_logprobs", "logprobs"),
    ({"input": "x", "previous_response_id": "resp_nothing"}, "previous_response_id", "not kept"),
]


@pytest.mark.parametrize("fields,param,words", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_input_is_a_400_naming_the_field(server, fields, param, words):
    r = http().post(server.url + RESP, json={"max_output_tokens": 2, **fields})
    assert r.status_code == 400, r.text
    err = assert_error_body(r, str(fields))
    assert err["param"] == param and words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_the_sdk_raises_its_errors(client, name):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=name, input=[{"role": "user", "content": None}], max_output_tokens=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "input.0.content"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=name, input="x", tools=[{"type": "file_search", "vector_store_ids": ["v"]}])
    assert "'file_search'" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-9", input="x", max_output_tokens=2)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")


# ---- a fuzz of malformed bodies -----------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
                     max_leaves=8)
_not_str = _json.filter(lambda v: not isinstance(v, str))
_not_str_or_list = _json.filter(lambda v: not isinstance(v, (str, list)))
_not_bool = _json.filter(lambda v: not isinstance(v, bool))
_not_number = _json.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
_not_dict = _json.filter(lambda v: not isinstance(v, dict))
_role = st.sampled_from(["user", "assistant", "system", "developer"])
_bad_item = st.one_of(
    _not_dict,
    st.fixed_dictionaries({"role": _role}, optional={"content": st.none() | _not_str_or_list}),
    st.fixed_dictionaries({"role": st.text(max_size=8).filter(lambda r: r not in ("user", "assistant", "system",
                                                                                  "developer")),
                           "content": st.text(max_size=8)}),
    st.fixed_dictionaries({"type": st.text(max_size=12).filter(
        lambda t: t not in ("message", "function_call", "function_call_output", "reasoning"))}, optional={"id": _json}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.text(min_size=1, max_size=4),
                           "name": st.text(min_size=1, max_size=4), "arguments": _not_str}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.text(max_size=4),
                           "output": _json}),
    st.fixed_dictionaries({"role": _role, "content": st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["input_image", "input_file", "input_audio", "bogus", "input_text"])},
        optional={"text": _not_str}), min_size=1, max_size=2)}),
)
_bad_fields = {
    "input": st.one_of(_not_str_or_list, st.lists(_bad_item, min_size=1, max_size=3)),
    "model": _not_str.filter(lambda v: v is not None),
    "instructions": _not_str.filter(lambda v: v is not None),
    "temperature": st.one_of(_not_number.filter(lambda v: v is not None), st.floats(max_value=-0.01),
                             st.floats(min_value=101, allow_infinity=False)),
    "top_p": st.one_of(st.just(0), st.floats(min_value=1.01, allow_infinity=False), st.text(max_size=3)),
    "max_output_tokens": st.one_of(st.integers(max_value=0), st.text(max_size=3), st.booleans(),
                                   st.floats(allow_nan=False)),
    "seed": st.one_of(st.integers(max_value=-1), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    "stream": _not_bool.filter(lambda v: v is not None),
    "store": _not_bool.filter(lambda v: v is not None),
    "tools": st.one_of(_not_dict.filter(lambda v: v is not None and not isinstance(v, list)),
                       st.lists(st.fixed_dictionaries({"type": st.text(max_size=10).filter(lambda t: t != "function")}),
                                min_size=1, max_size=2),
                       st.lists(st.fixed_dictionaries({"type": st.just("function")},
                                                      optional={"name": _not_str, "parameters": _not_dict}),
                                min_size=1, max_size=2)),
    "tool_choice": st.one_of(st.text(max_size=8).filter(lambda t: t not in ("none", "auto", "required")),
                             st.integers(), st.fixed_dictionaries({"type": st.text(max_size=8)})),
    "reasoning": st.one_of(_not_dict.filter(lambda v: v is not None), st.fixed_dictionaries({"effort": st.text(
        max_size=8).filter(lambda t: t not in ("none", "minimal", "low", "medium", "high", "xhigh"))})),
    "text": st.one_of(_not_dict.filter(lambda v: v is not None), st.fixed_dictionaries(
        {"format": st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "json_object", "grammar"])})})),
    "previous_response_id": st.one_of(_not_str.filter(lambda v: v is not None), st.text(max_size=12)),
    "metadata": st.one_of(_not_dict.filter(lambda v: v is not None),
                          st.dictionaries(st.text(max_size=4), _not_str, min_size=1, max_size=2)),
}


@st.composite
def _malformed(draw, fields=None):
    """(body, the fields made invalid): `fields` (or one or two drawn) each certainly invalid, plus
    unknown fields (ignored)."""
    body = {"input": "hi", "max_output_tokens": 2}
    fields = fields or draw(st.lists(st.sampled_from(sorted(_bad_fields)), min_size=1, max_size=2, unique=True))
    for field in fields:
        body[field] = draw(_bad_fields[field])
    body.update(draw(st.dictionaries(st.sampled_from(["foo", "n", "stop", "x-extra"]), _json, max_size=2)))
    return json.dumps(body).encode(), fields


def _greedy(url):
    r = http().post(url + RESP, json={"input": "Say something about lighthouses", "max_output_tokens": 8,
                                      "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["output"][0]["content"][0]["text"]


def _fuzz(url: str, strategy, n: int):
    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(strategy)
    def check(case):
        body, fields = case
        r = http().post(url + RESP, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, f"{r.status_code} for {body[:300]!r}: {r.text[:300]}"
        err = assert_error_body(r, repr(body[:100]))
        if len(fields) == 1:        # the error names the one bad field
            (field,) = fields
            assert err["param"] == field or (err["param"] or "").startswith(field + "."), (body, err)
    check()


def test_malformed_bodies_get_4xx_and_change_nothing(server):
    """Each field made invalid alone (the error names it), then mixes of them, bodies that are not
    JSON objects and random bytes: only 4xx JSON errors, and the same greedy answer afterwards."""
    reference = _greedy(server.url)
    for field in sorted(_bad_fields):
        _fuzz(server.url, _malformed(fields=[field]), 15)
    not_objects = _json.map(lambda v: json.dumps(v).encode()).filter(lambda b: not b.startswith(b"{"))
    _fuzz(server.url, st.one_of(_malformed(), not_objects, st.binary(max_size=40))
          .map(lambda v: v if isinstance(v, tuple) else (v, [])), 150)
    assert http().get(server.url + "/health").status_code == 200
    assert _greedy(server.url) == reference
    assert_settled(server)


# ---- tool calls and thinking: the real template, a scripted token stream ------------------------
@pytest.fixture(scope="module")
def real_model():
    import g4rt
    m = g4rt.load(need_fixture(MODEL), backend="numpy", ctx=1024)
    yield m


def _scripted(real_model, script):
    from test_server_tools import make_client
    return make_client(real_model, script)


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather forecast for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                           "days": {"type": "integer"}}, "required": ["city"]}}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
TOOL_SCRIPT = ('<|channel>thought\nI should check the weather.<channel|>'
               '<|tool_call>call:get_weather{city:<|"|>Paris, France<|"|>,days:3}<tool_call|><|tool_response>')


def _prompt(real_model, eng) -> str:
    return real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)


def test_function_call_and_reasoning(real_model):
    client, eng, state = _scripted(real_model, TOOL_SCRIPT)
    r = client.responses.create(model="gemma4", input="Weather in Paris?", tools=[WEATHER],
                                reasoning={"effort": "medium"})
    prompt = _prompt(real_model, eng)
    assert "<|think|>" in prompt and "<|tool>declaration:get_weather{" in prompt
    assert r.status == "completed" and r.incomplete_details is None and r.output_text == ""
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", "I should check the weather.")]
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris, France", "days": 3}
    assert 0 < r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    assert r.tools[0].name == "get_weather" and r.reasoning.effort == "medium"
    # without reasoning asked for, no <|think|>; tool_choice none leaves the tools out
    client.responses.create(model="gemma4", input="Weather in Paris?", tools=[WEATHER], tool_choice="none")
    assert "<|think|>" not in _prompt(real_model, eng) and "<|tool>" not in _prompt(real_model, eng)
    state.shutdown()


def test_stream_helper_assembles_the_same_response(real_model):
    client, eng, state = _scripted(real_model, TOOL_SCRIPT)
    ask = dict(model="gemma4", input="Weather in Paris?", tools=[WEATHER], reasoning={"effort": "low"})
    whole = client.responses.create(**ask)
    with client.responses.stream(**ask) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     *["response.reasoning_text.delta"] * (len(kinds) - 12),
                     "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
                     "response.output_item.added", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert _plain(final.model_dump()) == _plain(whole.model_dump())
    assert json.loads(final.output[1].arguments) == {"city": "Paris, France", "days": 3}
    state.shutdown()


def test_text_after_thinking(real_model):
    client, eng, state = _scripted(real_model, "<|channel>thought\nTwo plus two.<channel|>\nThe answer is 4.<turn|>")
    r = client.responses.create(model="gemma4", input="2+2?", reasoning={"effort": "high"})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "Two plus two." and r.output_text == "The answer is 4."
    events = list(client.responses.create(model="gemma4", input="2+2?", reasoning={"effort": "high"}, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Two plus two."
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "The answer is 4."
    assert [e.output_index for e in events if e.type == "response.output_item.done"] == [0, 1]
    assert _plain(events[-1].response.model_dump()) == _plain(r.model_dump())
    state.shutdown()


def test_function_call_output_round_trip_renders_as_chat(real_model):
    """function_call + function_call_output items (and the reasoning before them) render exactly as
    the same conversation through /v1/chat/completions, and the answer comes back as a message."""
    client, eng, state = _scripted(real_model, "It is sunny in Paris.<turn|>")
    args = json.dumps({"city": "Paris"})
    r = client.responses.create(model="gemma4", tools=[WEATHER], reasoning={"effort": "low"}, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Check it."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": args},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}])
    assert r.output_text == "It is sunny in Paris." and r.status == "completed"
    via_responses = _prompt(real_model, eng)
    assert '<|channel>thought\nCheck it.\n<channel|>' in via_responses
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in via_responses
    assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>' in via_responses
    client.chat.completions.create(model="gemma4", tools=[CHAT_WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "Check it.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}],
        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert _prompt(real_model, eng) == via_responses
    state.shutdown()


def test_a_response_continues_through_its_tool_call(real_model):
    """previous_response_id after a function call: the call (with its reasoning) and the new output
    item render as the explicit conversation would."""
    client, eng, state = _scripted(real_model, TOOL_SCRIPT)
    first = client.responses.create(model="gemma4", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[-1]
    out = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    client.responses.create(model="gemma4", tools=[WEATHER], previous_response_id=first.id, input=[out])
    chained = _prompt(real_model, eng)
    client.responses.create(model="gemma4", tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris?"}, *[o.model_dump() for o in first.output], out])
    assert _prompt(real_model, eng) == chained and "<|tool_response>response:get_weather" in chained
    state.shutdown()


def test_named_tool_choice_shows_only_that_tool(real_model):
    client, eng, state = _scripted(real_model, "Fine.<turn|>")
    other = {**WEATHER, "name": "get_time", "description": "The time in a city"}
    client.responses.create(model="gemma4", input="hi", tools=[WEATHER, other],
                            tool_choice={"type": "function", "name": "get_time"})
    prompt = _prompt(real_model, eng)
    assert "declaration:get_time{" in prompt and "declaration:get_weather{" not in prompt
    client.responses.create(model="gemma4", input="hi", tools=[WEATHER, other],
                            tool_choice={"type": "allowed_tools", "mode": "auto",
                                         "tools": [{"type": "function", "name": "get_weather"}]})
    prompt = _prompt(real_model, eng)
    assert "declaration:get_weather{" in prompt and "declaration:get_time{" not in prompt
    state.shutdown()


def test_a_failing_generation_ends_the_stream_with_response_failed(real_model):
    client, eng, state = _scripted(real_model, "Fine.<turn|>")
    calls = {"n": 0}

    def flaky(cached, ids):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return 0
    eng.prefix_to_keep = flaky
    events = list(client.responses.create(model="gemma4", input="hi", stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert "boom" in events[2].message and events[-1].response.status == "failed"
    assert "boom" in events[-1].response.error.message
    assert client.responses.create(model="gemma4", input="hi").output_text == "Fine."
    state.shutdown()
