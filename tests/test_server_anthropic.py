"""The Anthropic Messages API of `g4rt serve` through the official `anthropic` SDK.

A real server process on the fixture model (started with --api-key) for text, streaming, stop
sequences, max_tokens, count_tokens, auth, bad input and a fuzz of malformed bodies; tool use and
thinking with the real Gemma 4 template and vocabulary and a scripted token stream in place of
the model (as tests/test_server_tools.py: random fixture weights never call tools)."""

from __future__ import annotations

import json
import types

import httpx
import pytest

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from server_util import MODEL, ServerProcess, need_fixture, wait_until  # noqa: E402
from test_server_tools import ScriptedEngine  # noqa: E402

KEY = "sk-ant-test-key"
MODEL_ID = "g4-dense-Q4_0"
CTX = 512
AUTH = {"x-api-key": KEY}
#: greedy sampling: this SDK no longer has sampling arguments, but the API still takes the fields
T0 = {"temperature": 0}


# ---- a real server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_fixture()
    srv = ServerProcess(MODEL, "--ctx", str(CTX), "--api-key", KEY,
                        log_dir=tmp_path_factory.mktemp("serve-anthropic")).wait_ready(timeout=240)
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _text(msg) -> str:
    return "".join(b.text for b in msg.content if b.type == "text")


def _thinking(msg) -> str:
    return "".join(b.thinking for b in msg.content if b.type == "thinking")


def _blocks(msg) -> list[dict]:
    """The content blocks without their per-response ids."""
    out = []
    for b in msg.content:
        d = b.model_dump(exclude_none=True)
        d.pop("id", None)
        out.append(d)
    return out


SYSTEM = "You are terse."


def _ask(client, text, **kw):
    kw.setdefault("max_tokens", 16)
    return client.messages.create(model=MODEL_ID, system=SYSTEM, messages=[{"role": "user", "content": text}],
                                  extra_body=T0, **kw)


def _chat(oai, text, **kw):
    kw.setdefault("max_tokens", 16)
    return oai.chat.completions.create(model=MODEL_ID, temperature=0, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": text}], **kw)


def test_text_equals_chat_completions(client, oai):
    """The same messages at temperature 0 give the same text, token counts and reason as chat."""
    msg = _ask(client, "Name three colours.")
    ref = _chat(oai, "Name three colours.")
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL_ID
    assert msg.id.startswith("msg_")
    assert _text(msg) == (ref.choices[0].message.content or "")
    assert _thinking(msg) == (getattr(ref.choices[0].message, "reasoning_content", None) or "")
    assert msg.usage.output_tokens == ref.usage.completion_tokens
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens == ref.usage.prompt_tokens
    assert msg.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[ref.choices[0].finish_reason]
    assert msg.stop_sequence is None


def test_system_prompt_is_rendered(client, oai):
    """`system` as a string and as text blocks render alike, and differently from no system."""
    user = [{"role": "user", "content": "Hello there"}]
    as_str = client.messages.count_tokens(model=MODEL_ID, system=SYSTEM, messages=user).input_tokens
    as_blocks = client.messages.count_tokens(model=MODEL_ID, messages=user,
                                             system=[{"type": "text", "text": "You are "},
                                                     {"type": "text", "text": "terse."}]).input_tokens
    without = client.messages.count_tokens(model=MODEL_ID, messages=user).input_tokens
    assert as_str == as_blocks and as_str > without
    ref = oai.chat.completions.create(model=MODEL_ID, max_tokens=1, temperature=0,
                                      messages=[{"role": "system", "content": SYSTEM}, *user])
    assert as_str == ref.usage.prompt_tokens
    a = client.messages.create(model=MODEL_ID, max_tokens=12, extra_body=T0, system=SYSTEM, messages=user)
    b = client.messages.create(model=MODEL_ID, max_tokens=12, extra_body=T0, messages=user,
                               system=[{"type": "text", "text": SYSTEM}])
    assert _blocks(a) == _blocks(b)


def test_stream_helper_assembles_the_same_message(client):
    full = _ask(client, "Count to five.", max_tokens=24)
    with client.messages.stream(model=MODEL_ID, system=SYSTEM, max_tokens=24, extra_body=T0,
                                messages=[{"role": "user", "content": "Count to five."}]) as stream:
        deltas = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert _blocks(final) == _blocks(full) and deltas == _text(full)
    assert final.stop_reason == full.stop_reason and final.stop_sequence is None
    assert final.usage.output_tokens == full.usage.output_tokens
    total = lambda m: m.usage.input_tokens + m.usage.cache_read_input_tokens  # noqa: E731
    assert total(final) == total(full)


def test_raw_sse_events(server):
    """Named events whose `event:` is the data's type, in Anthropic's order, with block indices."""
    body = {"model": MODEL_ID, "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Say hi"}]}
    events = []
    with httpx.stream("POST", server.url + "/v1/messages", json=body, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append(data)
    types_ = [e["type"] for e in events]
    assert types_[:2] == ["message_start", "ping"] and types_[-2:] == ["message_delta", "message_stop"]
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    open_ = None
    for e in events[2:-2]:
        if e["type"] == "content_block_start":
            assert open_ is None
            open_ = e["index"]
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_
        else:
            assert e["type"] == "content_block_stop" and e["index"] == open_
            open_ = None
    assert open_ is None
    assert events[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert events[-2]["usage"]["output_tokens"] <= 8


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_reports_the_matched_string(client, stream):
    text = _text(_ask(client, "Tell a story.", max_tokens=24))
    assert len(text) > 8, text
    cut = len(text) // 2
    stop = text[cut - 2:cut + 2]
    expect = text[:text.index(stop)]
    kw = dict(model=MODEL_ID, system=SYSTEM, max_tokens=24, extra_body=T0,
              messages=[{"role": "user", "content": "Tell a story."}], stop_sequences=["never-seen-stop", stop])
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert _text(msg) == expect


def test_max_tokens_stop_reason(client, oai):
    ref = _chat(oai, "Write a long poem.", max_tokens=3)
    assert ref.choices[0].finish_reason == "length"      # this prompt runs on past 3 tokens
    msg = _ask(client, "Write a long poem.", max_tokens=3)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


def test_count_tokens_equals_the_chat_prompt(client, oai):
    tool = {"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    n = client.messages.count_tokens(model=MODEL_ID, system=SYSTEM, messages=msgs, tools=[tool]).input_tokens
    ref = oai.chat.completions.create(model=MODEL_ID, max_tokens=1, temperature=0,
                                      messages=[{"role": "system", "content": SYSTEM}, *msgs],
                                      tools=[{"type": "function", "function": {
                                          "name": tool["name"], "description": tool["description"],
                                          "parameters": tool["input_schema"]}}])
    assert n == ref.usage.prompt_tokens
    assert n > client.messages.count_tokens(model=MODEL_ID, system=SYSTEM, messages=msgs).input_tokens


def test_api_key(server):
    wrong = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        wrong.messages.create(model=MODEL_ID, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401 and "API key" in str(e.value)
    r = httpx.post(server.url + "/v1/messages", json={"max_tokens": 2, "messages": []}, timeout=10)
    assert r.status_code == 401
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
    # the SDK's auth_token (Authorization: Bearer) is let in as well as api_key (X-Api-Key)
    bearer = anthropic.Anthropic(base_url=server.url, auth_token=KEY, max_retries=0)
    assert bearer.messages.count_tokens(model=MODEL_ID, messages=USER).input_tokens > 0


def _post(server, body, path="/v1/messages"):
    return httpx.post(server.url + path, json=body, headers=AUTH, timeout=30)


def _error(r: httpx.Response) -> dict:
    """Anthropic's error body, checked: {"type": "error", "error": {"type", "message"}}."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    body = r.json()
    assert body["type"] == "error" and isinstance(body["error"]["type"], str), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,needle", [
    ({"messages": USER}, "max_tokens"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 5}, "messages"),
    ({"messages": [{"role": "user"}], "max_tokens": 5}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": ""}], "max_tokens": 5}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": []}], "max_tokens": 5}, "messages.0.content"),
    ({"messages": [{"role": "tool", "content": "x"}], "max_tokens": 5}, "messages.0.role"),
    ({"messages": USER, "max_tokens": 5, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"messages": USER, "max_tokens": 5, "tool_choice": "auto"}, "tool_choice"),
    ({"messages": USER, "max_tokens": 5, "tool_choice": {"type": "tool", "name": "nope"},
      "tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tool_choice"),
    ({"messages": USER, "max_tokens": 5, "tools": [{"name": "bad name!", "input_schema": {}}]}, "tools.0.name"),
    ({"messages": USER, "max_tokens": 5, "tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"messages": USER, "max_tokens": 5, "temperature": 1.5}, "temperature"),
    ({"messages": USER, "max_tokens": 5, "top_p": "x"}, "top_p"),
    ({"messages": USER, "max_tokens": 5, "stop_sequences": "x"}, "stop_sequences"),
    ({"messages": USER, "max_tokens": 5, "stop_sequences": [""]}, "stop_sequences"),
    ({"messages": USER, "max_tokens": 5, "thinking": {"type": "enabled", "budget_tokens": 10}}, "budget_tokens"),
    ({"messages": USER, "max_tokens": 5, "system": 5}, "system"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}], "max_tokens": 5},
     "messages.0.content.0: this server has no projector for images"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x",
                                                "content": "42"}]}], "max_tokens": 5}, "tool_use_id"),
    ({"messages": [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f",
                                                            "input": {}}]}], "max_tokens": 5}, "tool_result"),
    ({"messages": [*USER, {"role": "assistant", "content": "Sure "}], "max_tokens": 5}, "whitespace"),
])
def test_bad_requests_get_anthropic_errors(server, body, needle):
    r = _post(server, {"model": MODEL_ID, **body})
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["type"] == "invalid_request_error" and needle in err["message"], err


def test_client_errors_map_to_sdk_exceptions(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-none", max_tokens=2, messages=USER)
    assert e.value.body["error"]["type"] == "not_found_error" and "claude-none" in str(e.value)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL_ID, max_tokens=2, messages=[{"role": "user"}])
    assert e.value.body["error"]["type"] == "invalid_request_error" and "messages.0.content" in str(e.value)
    with pytest.raises(anthropic.BadRequestError, match="role"):
        client.messages.create(model=MODEL_ID, max_tokens=2, messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        client.messages.create(model=MODEL_ID, max_tokens=2, messages=USER, tool_choice={"type": "never"})
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-none", messages=USER)
    # unknown fields and metadata are ignored
    r = client.messages.create(model=MODEL_ID, max_tokens=2, messages=USER, metadata={"user_id": "u1"},
                               extra_body={"frobnicate": True})
    assert r.usage.output_tokens <= 2


def test_a_body_over_max_body_is_request_too_large(server):
    r = _post(server, {"model": MODEL_ID, "max_tokens": 2, "messages": [{"role": "user", "content": "a" * (1 << 20)}]})
    assert r.status_code == 413 and _error(r)["type"] == "request_too_large"


def test_a_prompt_over_the_context_is_a_400(client):
    with pytest.raises(anthropic.BadRequestError, match="more than the context"):
        client.messages.create(model=MODEL_ID, max_tokens=2,
                               messages=[{"role": "user", "content": "alpha beta gamma delta " * 200}])


# ---- malformed bodies, fuzzed ------------------------------------------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)
_not_int = _json.filter(lambda v: not isinstance(v, int) or isinstance(v, bool) or v < 1)
_not_list = _json.filter(lambda v: not isinstance(v, list))


def _typed(v, *kinds) -> bool:
    """A dict whose `type` is one of `kinds` (might be valid: the fuzz leaves those out)."""
    return isinstance(v, dict) and v.get("type") in kinds


# in a user message only a non-empty text block is valid (images are refused, tool results
# answer no call, other kinds belong to assistant turns)
_bad_block = st.dictionaries(st.sampled_from(["type", "text", "source", "id", "input", "tool_use_id"]),
                             _json | st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking"]),
                             max_size=3).filter(
    lambda d: not (d.get("type") == "text" and isinstance(d.get("text"), str) and d["text"])
    and d.get("type") != "redacted_thinking")
_bad_message = st.one_of(
    _json.filter(lambda v: not isinstance(v, dict)),
    st.fixed_dictionaries({"role": _json.filter(lambda v: v not in ("user", "assistant", "system")),
                           "content": st.just("hi")}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                           "content": _json.filter(lambda v: not isinstance(v, (str, list)))}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(_bad_block, min_size=1, max_size=2)}),
)
#: (field, a strategy of values that field refuses)
_BAD_FIELDS = st.one_of(
    st.tuples(st.just("max_tokens"), _not_int),
    st.tuples(st.just("messages"), _not_list | st.just([]) | st.lists(_bad_message, min_size=1, max_size=2)),
    st.tuples(st.just("temperature"), _json.filter(lambda v: v is not None and (
        not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1))),
    st.tuples(st.just("top_k"), _json.filter(lambda v: v is not None and (
        not isinstance(v, int) or isinstance(v, bool) or v < 0))),
    st.tuples(st.just("stop_sequences"), _json.filter(lambda v: v is not None and not (
        isinstance(v, list) and len(v) <= 16 and all(isinstance(s, str) and s for s in v)))),
    st.tuples(st.just("tools"), _json.filter(lambda v: v is not None and v != [] and not (
        isinstance(v, list) and all(isinstance(t, dict) and "name" in t and "input_schema" in t for t in v)))),
    st.tuples(st.just("tool_choice"), _json.filter(lambda v: v is not None and not _typed(v, "auto", "any", "none",
                                                                                          "tool"))),
    st.tuples(st.just("thinking"), _json.filter(lambda v: v is not None and not _typed(v, "enabled", "disabled",
                                                                                       "adaptive"))),
    st.tuples(st.just("system"), _json.filter(lambda v: v is not None and not isinstance(v, str) and not (
        isinstance(v, list) and all(_typed(b, "text") for b in v)))),
    st.tuples(st.just("stream"), _json.filter(lambda v: not isinstance(v, bool))),
)

GREEDY = {"model": MODEL_ID, "max_tokens": 12, "temperature": 0,
          "messages": [{"role": "user", "content": "Say something about lighthouses"}]}


def _greedy(server) -> list:
    r = _post(server, GREEDY)
    assert r.status_code == 200, r.text
    return r.json()["content"]


@pytest.fixture(scope="module")
def greedy_reference(server):
    return _greedy(server)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(bad=st.lists(_BAD_FIELDS, min_size=1, max_size=3), raw=st.none() | st.binary(max_size=64))
def test_malformed_bodies_get_4xx(server, greedy_reference, bad, raw):
    if raw is not None:
        content = raw               # any bytes: not JSON, or JSON that is no valid request
    else:
        body = dict(GREEDY, max_tokens=2)
        body.update(dict(bad))
        content = json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/messages", content=content, timeout=30,
                   headers={**AUTH, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, (content[:300], r.status_code, r.text[:300])
    _error(r)


def test_fuzz_left_the_server_as_it_was(server, greedy_reference):
    """Runs after the fuzz (file order): the same greedy answer, every slot idle again."""
    assert _greedy(server) == greedy_reference
    assert httpx.get(server.url + "/health").status_code == 200
    assert wait_until(lambda: all(x["state"] == "idle" for x in
                                  httpx.get(server.url + "/slots", headers=AUTH).json()), 3.0)


# ---- tool use and thinking: the real template, a scripted model --------------------------------
WEATHER = {"name": "get_weather", "description": "Weather forecast for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "days": {"type": "integer"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time", "input_schema": {"type": "object", "properties": {}}}
TOOL_SCRIPT = ('<|channel>thought\nI should check the weather.<channel|>'
               '<|tool_call>call:get_weather{city:<|"|>Paris, France<|"|>,days:3}<tool_call|><|tool_response>')
THINK = {"type": "enabled", "budget_tokens": 2048}


@pytest.fixture(scope="module")
def real_model():
    import g4rt
    return g4rt.load(need_fixture(MODEL), backend="numpy", ctx=1024)


class Scripted:
    """An in-process server whose model 'writes' `script`, with both SDKs on it."""

    def __init__(self, model, script: str):
        from g4rt.server.app import ServerConfig, ServerState, create_app
        from g4rt.server.metrics import ServerMetrics
        self.tokenizer = model.tokenizer
        ids = model.tokenizer.encode(script, add_bos=False, parse_special=True)
        self.engine = ScriptedEngine(model.engine, ids)
        fake = types.SimpleNamespace(engine=self.engine, tokenizer=model.tokenizer,
                                     encode_prompt=model.encode_prompt, _think_ids=model._think_ids,
                                     backend_name="scripted")
        self.state = ServerState(ServerConfig(model_id="gemma4"), ServerMetrics(1))
        self.state.attach(fake)
        http = TestClient(create_app(self.state))
        self.client = anthropic.Anthropic(base_url="http://testserver", api_key="x", http_client=http,
                                          max_retries=0)
        self.oai = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)

    def prompt(self, k: int = -1) -> str:
        return self.tokenizer.decode(self.engine.prompts[k], skip_special=False)

    def ask(self, **kw):
        kw.setdefault("messages", [{"role": "user", "content": "Weather in Paris?"}])
        return self.client.messages.create(model="gemma4", max_tokens=200, extra_body=T0, **kw)

    def close(self):
        self.state.shutdown()


@pytest.fixture
def scripted(real_model):
    made = []

    def make(script):
        made.append(Scripted(real_model, script))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_tool_use_with_thinking(scripted):
    s = scripted(TOOL_SCRIPT)
    msg = s.ask(tools=[WEATHER], thinking=THINK)
    prompt = s.prompt()
    assert "<|think|>" in prompt
    assert "<|tool>declaration:get_weather{description:<|\"|>Weather forecast for a city<|\"|>" in prompt
    assert [b.type for b in msg.content] == ["thinking", "tool_use"]
    think, call = msg.content
    assert think.thinking == "I should check the weather." and think.signature
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == {"city": "Paris, France", "days": 3}
    assert msg.stop_reason == "tool_use" and msg.stop_sequence is None
    # the stream helper assembles the same message from thinking, signature and input_json deltas
    with s.client.messages.stream(model="gemma4", max_tokens=200, extra_body=T0, tools=[WEATHER], thinking=THINK,
                                  messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        kinds = {ev.delta.type for ev in stream if ev.type == "content_block_delta"}
        final = stream.get_final_message()
    assert kinds == {"thinking_delta", "signature_delta", "input_json_delta"}
    assert _blocks(final) == _blocks(msg) and final.stop_reason == "tool_use"
    assert final.usage.output_tokens == msg.usage.output_tokens


def test_thinking_off_by_default_and_disabled(scripted):
    s = scripted("<|channel>thought\nTwo plus two.<channel|>\nThe answer is 4.<turn|>")
    for thinking in (None, {"type": "disabled"}):
        kw = {"thinking": thinking} if thinking else {}
        msg = s.ask(messages=[{"role": "user", "content": "2+2?"}], **kw)
        assert "<|think|>" not in s.prompt()
    # the model thought anyway: still a thinking block, never text
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in msg.content] == \
        [("thinking", "Two plus two."), ("text", "The answer is 4.")]
    assert msg.stop_reason == "end_turn"
    omitted = s.ask(messages=[{"role": "user", "content": "2+2?"}],
                    thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"})
    assert "<|think|>" in s.prompt()
    assert omitted.content[0].type == "thinking" and omitted.content[0].thinking == ""
    assert omitted.content[0].signature and _text(omitted) == "The answer is 4."
    s.ask(messages=[{"role": "user", "content": "2+2?"}], thinking={"type": "adaptive"})
    assert "<|think|>" in s.prompt()


def test_tool_result_round_trip_renders_as_chat_does(scripted):
    """tool_use / tool_result turns render exactly as the same conversation sent as OpenAI chat."""
    s = scripted("It is sunny in Paris.<turn|>")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should check.", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny, 21 C"}]}]},
    ]
    msg = s.ask(messages=messages, tools=[WEATHER])
    assert _text(msg) == "It is sunny in Paris." and msg.stop_reason == "end_turn"
    mine = s.prompt()
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in mine
    assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>' in mine
    s.oai.chat.completions.create(model="gemma4", max_tokens=50, tools=[{"type": "function", "function": {
        "name": WEATHER["name"], "description": WEATHER["description"], "parameters": WEATHER["input_schema"]}}],
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "reasoning_content": "I should check.", "tool_calls": [
                      {"id": "toolu_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
                  {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny, 21 C"}])
    assert s.prompt() == mine
    # an error result says so; its text and a following text block both reach the model
    messages[2]["content"] = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "city unknown",
                               "is_error": True}, {"type": "text", "text": "Try again."}]
    s.ask(messages=messages, tools=[WEATHER])
    prompt = s.prompt()
    assert '{value:<|"|>Error: city unknown<|"|>}<tool_response|>' in prompt and "Try again." in prompt


def test_sdk_response_content_goes_back_as_is(scripted):
    """The SDK's own response blocks (thinking with its signature, tool_use) are valid input."""
    s = scripted(TOOL_SCRIPT)
    first = s.ask(tools=[WEATHER], thinking=THINK)
    follow = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": first.content},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[1].id,
                                            "content": "rain"}]}]
    s.ask(tools=[WEATHER], thinking=THINK, messages=follow)
    assert '<|tool_response>response:get_weather{value:<|"|>rain<|"|>}' in s.prompt()
    n = s.client.messages.count_tokens(model="gemma4", tools=[WEATHER], thinking=THINK, messages=follow)
    assert n.input_tokens == len(s.engine.prompts[-1])


def test_tool_choice(scripted):
    two = ('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
           '<|tool_call>call:get_weather{city:<|"|>Rome<|"|>,days:2}<tool_call|><|tool_response>')
    s = scripted(two)
    both = s.ask(tools=[WEATHER, TIME])
    assert [b.input["city"] for b in both.content] == ["Paris", "Rome"] and len({b.id for b in both.content}) == 2
    assert "declaration:get_time" in s.prompt() and "declaration:get_weather" in s.prompt()
    one = s.ask(tools=[WEATHER, TIME], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.input for b in one.content] == [{"city": "Paris"}] and one.stop_reason == "tool_use"
    s.ask(tools=[WEATHER, TIME], tool_choice={"type": "tool", "name": "get_weather"})
    assert "declaration:get_weather" in s.prompt() and "declaration:get_time" not in s.prompt()
    s.ask(tools=[WEATHER, TIME], tool_choice={"type": "any"})
    assert "declaration:get_time" in s.prompt()
    none = s.ask(tools=[WEATHER], tool_choice={"type": "none"})
    assert "<|tool>" not in s.prompt()
    # without the tools shown, a call is not parsed: it stays text
    assert [b.type for b in none.content] == ["text"] and none.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_tool_call_is_text(scripted, stream):
    bad = '<|tool_call>call:get_weather{city:Paris}<tool_call|>'
    s = scripted(bad + "<turn|>")
    if stream:
        with s.client.messages.stream(model="gemma4", max_tokens=100, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "Weather?"}]) as st_:
            msg = st_.get_final_message()
    else:
        msg = s.ask(tools=[WEATHER])
    assert [b.type for b in msg.content] == ["text"] and _text(msg) == bad and msg.stop_reason == "end_turn"


def test_text_then_tool_use_blocks_in_order(scripted):
    s = scripted('Let me look.<|tool_call>call:get_time{}<tool_call|><|tool_response>')
    msg = s.ask(tools=[WEATHER, TIME])
    assert [(b.type, getattr(b, "text", None) or getattr(b, "name", None)) for b in msg.content] == \
        [("text", "Let me look."), ("tool_use", "get_time")]
    assert msg.content[1].input == {}
    with s.client.messages.stream(model="gemma4", max_tokens=100, tools=[WEATHER, TIME],
                                  messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        starts = [ev.index for ev in stream if ev.type == "content_block_start"]
        final = stream.get_final_message()
    assert starts == [0, 1] and _blocks(final) == _blocks(msg)


def test_stop_sequence_scripted(scripted):
    s = scripted("Fine. STOP here and more.<turn|>")
    msg = s.ask(stop_sequences=["here", "STOP"])
    assert _text(msg) == "Fine. " and msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"


def test_prefill_is_continued(scripted):
    """A last assistant turn is a prefill: the prompt ends with it, after the generation prompt,
    and the answer is what follows it."""
    s = scripted(" 4.<turn|>")
    msg = s.ask(messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "The answer is"}])
    assert s.prompt().endswith("<|turn>model\n<|channel>thought\n<channel|>The answer is")
    assert _text(msg) == " 4." and msg.stop_reason == "end_turn"
    # consecutive user turns are one turn, as Anthropic combines them
    s.ask(messages=[{"role": "user", "content": "Hello."}, {"role": "user", "content": "2+2?"}])
    assert s.prompt().count("<|turn>user") == 1 and "Hello.\n\n2+2?" in s.prompt()
    # leading system messages (the SDK's SystemMessageParam) join `system` in the system turn
    s.ask(system="Be brief.", messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}])
    assert s.prompt().count("<|turn>system") == 1 and "Be brief.\n\nBe kind.<turn|>" in s.prompt()


def test_error_mid_stream_is_an_error_event(scripted):
    """A generation that fails after the stream began ends with Anthropic's `event: error`,
    which the SDK raises; the next request is served."""
    s = scripted("One two three four five six.<turn|>")
    real = s.engine.forward_batch
    calls = {"n": 0}

    def failing(items, on_pass=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the middle")
        return real(items, on_pass)
    s.engine.forward_batch = failing
    with pytest.raises(anthropic.APIStatusError, match="boom in the middle") as e:
        with s.client.messages.stream(model="gemma4", max_tokens=50, messages=USER) as stream:
            stream.get_final_message()
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "api_error"
    assert _text(s.ask(messages=USER)) == "One two three four five six."
