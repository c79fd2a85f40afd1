"""Gemma 4 tool calls and thinking through the server, with the real Gemma 4 chat template and
vocabulary, and a scripted token stream in place of the model (random fixture weights never call
tools): the engine's logits pick the scripted tokens one after another."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

openai = pytest.importorskip("openai")
from starlette.testclient import TestClient  # noqa: E402

from server_util import MODEL, need_fixture  # noqa: E402

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}


class ScriptedEngine:
    """Stands in for Engine: every forward returns logits whose argmax is the next scripted token
    (the first one after a prompt), and it records the prompts it was given."""

    def __init__(self, real, script_ids):
        self.real, self.script = real, list(script_ids)
        self.file, self.config, self.ctx = real.file, real.config, real.ctx
        self.slots, self.prefill_chunk = 1, 512
        self.backend = types.SimpleNamespace(name="scripted", device_name="scripted")
        self.prompts: list[list[int]] = []
        self._next, self._pos, self._fed = 0, 0, []

    def _logits(self, tid):
        out = np.full((1, self.config.n_vocab), -10.0, np.float32)
        out[0, tid] = 10.0
        return out

    def forward(self, ids, all_logits=False, slot=0):
        ids = list(ids)
        self._pos += len(ids)
        if self._next and ids == [self.script[self._next - 1]]:
            tid = self.script[self._next]
            self._next += 1
        else:                                   # a prompt: the script starts over
            self.prompts.append(self._fed + ids)
            self._fed = []
            tid, self._next = self.script[0], 1
        return self._logits(tid)

    def forward_batch(self, items, on_pass=None):
        outs = []
        for i, (slot, ids) in enumerate(items):       # one pass per item, as an unbatched engine
            outs.append(self.forward(ids, slot=slot)[-1])
            if on_pass is not None:
                on_pass([i], [outs[-1]])
        return outs

    def reset(self, slot=0):
        self._pos, self._fed = 0, []

    def truncate(self, n, slot=0):
        self._pos = n

    def prefix_to_keep(self, cached, ids):
        return 0

    def position(self, slot=0):
        return self._pos

    def close(self):
        pass


@pytest.fixture(scope="module")
def real_model():
    import g4rt
    m = g4rt.load(need_fixture(MODEL), backend="numpy", ctx=1024)
    yield m


def make_client(model, script_text):
    """(openai client, scripted engine) for a server whose model 'writes' script_text."""
    from g4rt.server.app import ServerConfig, ServerState, create_app
    from g4rt.server.metrics import ServerMetrics
    script = model.tokenizer.encode(script_text, add_bos=False, parse_special=True)
    eng = ScriptedEngine(model.engine, script)
    scripted = types.SimpleNamespace(engine=eng, tokenizer=model.tokenizer, encode_prompt=model.encode_prompt,
                                     _think_ids=model._think_ids, backend_name="scripted")
    state = ServerState(ServerConfig(model_id="gemma4"), ServerMetrics(1))
    state.attach(scripted)
    http = TestClient(create_app(state))
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0), eng, state


TOOL_SCRIPT = ('<|channel>thought\nI should check the weather.<channel|>'
               '<|tool_call>call:get_weather{city:<|"|>Paris, France<|"|>,days:3}<tool_call|><|tool_response>')


def _ask(client, stream=False, **kw):
    return client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          tools=[WEATHER_TOOL], temperature=0, max_tokens=200, stream=stream, **kw)


def test_tools_are_rendered_by_the_template(real_model):
    client, eng, state = make_client(real_model, "Fine.<turn|>")
    _ask(client)
    prompt = real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    assert "<|tool>declaration:get_weather{description:<|\"|>Weather forecast for a city<|\"|>" in prompt
    client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "hi"}],
                                   tools=[WEATHER_TOOL], tool_choice="none", max_tokens=5)
    assert "<|tool>" not in real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    state.shutdown()


def test_tool_call_non_streaming(real_model):
    client, eng, state = make_client(real_model, TOOL_SCRIPT)
    r = _ask(client)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris, France", "days": 3}
    assert choice.message.reasoning_content == "I should check the weather."
    assert not choice.message.content
    state.shutdown()


def test_tool_call_streaming(real_model):
    client, eng, state = make_client(real_model, TOOL_SCRIPT)
    chunks = list(_ask(client, stream=True))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert reasoning == "I should check the weather." and content == ""
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris, France", "days": 3}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    state.shutdown()


def test_two_tool_calls(real_model):
    script = ('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
              '<|tool_call>call:get_weather{city:<|"|>Rome<|"|>,days:2}<tool_call|><|tool_response>')
    client, eng, state = make_client(real_model, script)
    calls = _ask(client).choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2
    state.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_tool_call_comes_back_as_content(real_model, stream):
    bad = '<|tool_call>call:get_weather{city:Paris}<tool_call|>'
    client, eng, state = make_client(real_model, bad + "<turn|>")
    if stream:
        chunks = list(_ask(client, stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        r = _ask(client)
        content, reason = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert not r.choices[0].message.tool_calls
    assert content == bad and reason == ["stop"]
    state.shutdown()


def test_tool_results_are_rendered_back(real_model):
    client, eng, state = make_client(real_model, "It is sunny in Paris.<turn|>")
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = client.chat.completions.create(model="gemma4", messages=messages, tools=[WEATHER_TOOL], max_tokens=50)
    assert r.choices[0].message.content == "It is sunny in Paris." and r.choices[0].finish_reason == "stop"
    prompt = real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in prompt
    assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>' in prompt
    state.shutdown()


def test_thinking_goes_to_reasoning_content(real_model):
    client, eng, state = make_client(real_model, "<|channel>thought\nTwo plus two.<channel|>\nThe answer is 4.<turn|>")
    r = client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "2+2?"}], max_tokens=50,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert "<|think|>" in real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    msg = r.choices[0].message
    assert msg.reasoning_content == "Two plus two." and msg.content == "The answer is 4."
    chunks = list(client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "2+2?"}],
                                                 max_tokens=50, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is 4."
    assert "<channel|>" not in "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                                       for c in chunks if c.choices)
    state.shutdown()


def test_reserved_template_kwargs_are_refused(real_model):
    client, eng, state = make_client(real_model, "x<turn|>")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"chat_template_kwargs": {"messages": []}})
    assert "may not set messages" in str(e.value)
    state.shutdown()


def test_base_model_chat_says_so(tmp_path):
    """The bundled default (a base model without a chat template): the chat endpoint answers with a
    warning field and header, and `g4rt run --chat` prints the notice once."""
    import subprocess
    import sys

    from g4rt.model.bundled import default_model_path
    try:
        path = default_model_path()
    except Exception as e:
        pytest.skip(f"the bundled default model is not installed: {e}")
    import g4rt
    from g4rt.server.app import ServerConfig, ServerState, create_app
    from g4rt.server.metrics import ServerMetrics
    m = g4rt.load(path, backend="auto", ctx=256)
    state = ServerState(ServerConfig(model_id="base"), ServerMetrics(1))
    state.attach(m)
    http = TestClient(create_app(state))
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200 and "base model" in r.json()["warning"] and "base model" in r.headers["x-g4rt-warning"]
    state.shutdown()
    cli = subprocess.run([sys.executable, "-m", "g4rt", "run", "-p", "Hi", "--chat", "-n", "2", "-q", "--ctx", "256"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stderr.count("pretrained base model") == 1


def test_a_job_that_cannot_start_fails_alone(real_model):
    """An engine error while a job is admitted answers that request with an error; the worker
    keeps serving the next one (no hang)."""
    client, eng, state = make_client(real_model, "Fine.<turn|>")
    calls = {"n": 0}

    def flaky(cached, ids):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return 0
    eng.prefix_to_keep = flaky
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert "boom" in str(e.value)
    r = client.chat.completions.create(model="gemma4", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert r.choices[0].message.content == "Fine."
    state.shutdown()
