"""Ollama's API on `g4rt serve`, through the official `ollama` client against a real server process
(the tiny fixture model), compared with the OpenAI routes of the same server; tool calls and
thinking with the real Gemma 4 template and a scripted token stream (as test_server_tools);
malformed bodies fuzzed with hypothesis."""

from __future__ import annotations

import json
import re
import types

import httpx
import pytest

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from server_util import MODEL, need_fixture, start_server, stop_server  # noqa: E402

CTX = 512
NAME = "g4-dense-Q4_0"
USER = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "ollama", "--ctx", str(CTX), "--alias", "local")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=60)


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _v1_chat(oai, messages, **kw):
    return oai.chat.completions.create(model=NAME, messages=messages, **kw)


# ---- chat -------------------------------------------------------------------------------------
def test_chat_equals_openai_chat(client, oai):
    r = client.chat(model=NAME, messages=USER, options=GREEDY)
    ref = _v1_chat(oai, USER, temperature=0, max_tokens=16)
    assert r.message.role == "assistant" and r.message.content == (ref.choices[0].message.content or "")
    assert r.done and r.done_reason == ref.choices[0].finish_reason
    assert r.prompt_eval_count == ref.usage.prompt_tokens and r.eval_count == ref.usage.completion_tokens
    assert r.model == NAME and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r.created_at)
    for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(r, k), int) and getattr(r, k) >= 0, k
    assert r.total_duration >= r.load_duration + r.prompt_eval_duration


def test_chat_streaming_equals_non_streaming(client):
    whole = client.chat(model="local:latest", messages=USER, options=GREEDY)
    chunks = list(client.chat(model="local:latest", messages=USER, options=GREEDY, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    last = chunks[-1]
    assert last.done_reason == whole.done_reason and last.eval_count == whole.eval_count
    assert last.message.content == "" and all(c.model == "local:latest" for c in chunks)


def test_stream_is_the_default_and_ndjson(server):
    body = {"model": NAME, "messages": USER, "options": {"temperature": 0, "num_predict": 4}}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) >= 2 and lines[-1]["done"] is True and not any(x["done"] for x in lines[:-1])
    assert lines[-1]["eval_count"] == 4 and lines[-1]["done_reason"] == "length"
    r = httpx.post(server.url + "/api/chat", json={**body, "stream": False}, timeout=60)
    assert r.headers["content-type"].startswith("application/json") and r.json()["done"] is True


def test_empty_requests_load_the_model(client):
    r = client.chat(model=NAME, messages=[])
    assert r.done and r.done_reason == "load" and r.message.content == ""
    g = client.generate(model=NAME)
    assert g.done and g.done_reason == "load" and g.response == "" and g.eval_count is None


# ---- generate ---------------------------------------------------------------------------------
def test_generate_uses_the_chat_template_and_streams_the_same(client):
    prompt = "Name three rivers."
    g = client.generate(model=NAME, prompt=prompt, system="You are terse.", options=GREEDY)
    c = client.chat(model=NAME, messages=[{"role": "system", "content": "You are terse."},
                                          {"role": "user", "content": prompt}], options=GREEDY)
    assert g.response == c.message.content and g.prompt_eval_count == c.prompt_eval_count
    parts = list(client.generate(model=NAME, prompt=prompt, system="You are terse.", options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == g.response and parts[-1].done
    assert parts[-1].context == g.context


def test_raw_generate_equals_text_completion(client, oai):
    g = client.generate(model=NAME, prompt="The capital of France is", raw=True, options=GREEDY)
    ref = oai.completions.create(model=NAME, prompt="The capital of France is", max_tokens=16, temperature=0)
    assert g.response == ref.choices[0].text and g.prompt_eval_count == ref.usage.prompt_tokens
    assert g.context is None                  # as Ollama: raw mode returns no context


def test_generate_context_continues_the_exchange(client, server):
    first = client.generate(model=NAME, prompt="Hello.", options=GREEDY)
    tok = httpx.post(server.url + "/tokenize", json={"content": first.response}).json()["tokens"]
    assert len(first.context) == first.prompt_eval_count + len(tok) and first.context[-len(tok):] == tok
    second = client.generate(model=NAME, prompt="And again.", context=first.context, options=GREEDY)
    assert second.context[:len(first.context)] == first.context
    alone = client.generate(model=NAME, prompt="And again.", options=GREEDY)
    # the prompt's own tokens come after the earlier exchange, without a second BOS
    assert second.prompt_eval_count == len(first.context) + alone.prompt_eval_count - 1


# ---- models -----------------------------------------------------------------------------------
def test_tags_show_ps_version(client, server):
    import g4rt
    from g4rt.gguf.reader import GGUFFile
    tags = client.list()
    names = [m.model for m in tags.models]
    assert names[0] == f"{NAME}:latest" and "local:latest" in names
    m = tags.models[0]
    assert m.size == MODEL.stat().st_size and re.fullmatch(r"[0-9a-f]{64}", m.digest)
    assert client.list().models[0].digest == m.digest               # stable
    assert m.details.format == "gguf" and m.details.family == "gemma4" and m.details.quantization_level == "Q4_0"
    assert m.details.parameter_size == "4.27M"
    f = GGUFFile(MODEL)
    s = client.show("local")
    assert s.template == f.get("tokenizer.chat_template") and s.details == m.details
    assert s.modelinfo["general.architecture"] == "gemma4" and s.modelinfo["gemma4.block_count"] == 6
    assert s.modelinfo["tokenizer.ggml.tokens"] == [] and "tools" in s.capabilities
    assert s.modelinfo["general.parameter_count"] == 4267206
    verbose = httpx.post(server.url + "/api/show", json={"model": NAME, "verbose": True}).json()
    assert verbose["model_info"]["tokenizer.ggml.tokens"] == f.get("tokenizer.ggml.tokens")
    ps = client.ps()
    assert ps.models[0].model == f"{NAME}:latest" and ps.models[0].size_vram == 0
    assert ps.models[0].context_length == CTX and ps.models[0].digest == m.digest
    assert httpx.get(server.url + "/api/version").json() == {"version": g4rt.__version__}
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200


# ---- options ----------------------------------------------------------------------------------
def test_num_predict_stop_and_seed(client, oai):
    r = client.chat(model=NAME, messages=USER, options={"temperature": 0, "num_predict": 5})
    assert r.done_reason == "length" and r.eval_count == 5
    text = client.chat(model=NAME, messages=USER, options={"temperature": 0, "num_predict": 24}).message.content
    cut = next(k for k in range(4, len(text) - 3) if text[k:k + 3].strip() and text.index(text[k:k + 3]) == k)
    for stream in (False, True):
        got = client.chat(model=NAME, messages=USER, stream=stream,
                          options={"temperature": 0, "num_predict": 24, "stop": [text[cut:cut + 3]]})
        if stream:
            got = list(got)
            content, last = "".join(c.message.content for c in got), got[-1]
        else:
            content, last = got.message.content, got
        assert content == text[:cut] and last.done_reason == "stop"
    seeded = {"temperature": 1.0, "top_k": 40, "seed": 7, "num_predict": 16}
    a = client.chat(model=NAME, messages=USER, options=seeded).message.content
    b = client.chat(model=NAME, messages=USER, options=seeded).message.content
    ref = _v1_chat(oai, USER, temperature=1.0, seed=7, max_tokens=16, extra_body={"top_k": 40})
    assert a == b == ref.choices[0].message.content


def test_num_predict_unlimited_runs_until_the_context_is_full(client, oai):
    """-1 (Ollama's default) is what /v1/chat/completions does without max_tokens: until the end
    of the turn or of the context."""
    r = client.chat(model=NAME, messages=USER, options={"temperature": 0, "num_predict": -1})
    ref = _v1_chat(oai, USER, temperature=0)
    assert r.message.content == (ref.choices[0].message.content or "")
    assert r.eval_count == ref.usage.completion_tokens and r.done_reason == ref.choices[0].finish_reason
    if r.done_reason == "length":
        assert r.prompt_eval_count + r.eval_count == CTX


def test_num_ctx(client):
    ok = client.chat(model=NAME, messages=USER, options={"temperature": 0, "num_predict": 2, "num_ctx": CTX})
    assert ok.eval_count == 2
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=NAME, messages=USER, options={"num_ctx": CTX + 1})
    assert e.value.status_code == 400 and str(CTX + 1) in e.value.error and str(CTX) in e.value.error


def test_unknown_options_and_keep_alive_are_ignored(client):
    r = client.chat(model=NAME, messages=USER, keep_alive="5m",
                    options={**GREEDY, "mirostat": 0, "num_gpu": 1, "num_thread": 2, "not_an_option": True})
    assert r.message.content == client.chat(model=NAME, messages=USER, options=GREEDY).message.content


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, status, needle", [
    ({"messages": [{"role": "system", "content": "x"}, {"role": "user"}]}, 400, "messages[1].content"),
    ({"messages": [{"role": "assistant"}]}, 400, "messages[0].content"),
    ({"format": "json"}, 400, "format"),
    ({"format": {"type": "object"}}, 400, "JSON schema"),
    ({"model": "nope"}, 404, "model 'nope' not found"),
    ({"messages": [{"role": "user", "content": "what is this?", "images": [b"\x89PNG"]}]}, 400, "images"),
    ({"think": "high"}, 400, "think"),
    ({"options": {"temperature": "hot"}}, 400, "options.temperature"),
    ({"options": {"stop": [1]}}, 400, "options.stop"),
])
def test_bad_chat_requests(client, kw, status, needle):
    args = {"model": NAME, "messages": USER, **kw}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(**args)
    assert e.value.status_code == status and needle in e.value.error, e.value.error


@pytest.mark.parametrize("kw, needle", [
    ({"suffix": "tail"}, "suffix"), ({"template": "{{ .Prompt }}"}, "template"),
    ({"raw": True, "system": "x"}, "raw mode"), ({"context": [10 ** 6]}, "context"),
    ({"images": [b"\x89PNG"]}, "images"), ({"format": "json"}, "format"),
])
def test_bad_generate_requests(client, kw, needle):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=NAME, prompt="hi", **kw)
    assert e.value.status_code == 400 and needle in e.value.error, e.value.error


def test_errors_are_ollama_shaped(server):
    for path, body in (("/api/chat", {"model": "nope", "messages": USER}), ("/api/show", {"model": "nope"}),
                       ("/api/generate", {"model": NAME, "prompt": 5}), ("/api/chat", b"{not json")):
        r = httpx.post(server.url + path, **({"content": body} if isinstance(body, bytes) else {"json": body}))
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json")
        err = r.json()
        assert list(err) == ["error"] and isinstance(err["error"], str) and err["error"], err
    assert httpx.post(server.url + "/api/show", json={"model": "nope"}).json() == {"error": "model 'nope' not found"}


# ---- hostile bodies (hypothesis) ---------------------------------------------------------------
def _not_a(*types_):
    """JSON values of none of `types_`."""
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                            max_size=2))
    return values.filter(lambda v: not isinstance(v, types_))


def _unknown_model():
    from g4rt.server.ollama_models import resolve
    return st.text(min_size=1, max_size=12).filter(lambda s: resolve(s, (NAME, "local", MODEL.name)) is None)


BAD_OPTIONS = st.one_of(
    _not_a(dict).filter(lambda v: v is not None),
    st.fixed_dictionaries({"temperature": st.one_of(st.floats(max_value=-0.01), st.text(max_size=3))}),
    st.fixed_dictionaries({"top_k": st.one_of(st.integers(max_value=-1), st.floats(allow_nan=False))}),
    st.fixed_dictionaries({"top_p": st.one_of(st.floats(min_value=1.01), st.just(0))}),
    st.fixed_dictionaries({"num_ctx": st.integers(min_value=CTX + 1)}),
    st.fixed_dictionaries({"num_predict": st.one_of(st.text(max_size=3), st.floats(allow_nan=False))}),
    st.fixed_dictionaries({"stop": st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=2))}),
    st.fixed_dictionaries({"seed": st.one_of(st.text(max_size=3), st.integers(min_value=2 ** 64))}),
    st.fixed_dictionaries({"repeat_penalty": st.floats(max_value=0)}),
)
COMMON_BAD = {
    "model": st.one_of(_not_a(str).filter(lambda v: v is not None), _unknown_model(), st.just("")),
    "stream": _not_a(bool).filter(lambda v: v is not None),
    "options": BAD_OPTIONS,
    "format": st.one_of(st.just("json"), st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=2)),
    "think": st.one_of(st.text(max_size=5), st.integers(), st.lists(st.booleans(), max_size=2)),
    "keep_alive": st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers())),
    "top_logprobs": st.one_of(st.integers(min_value=21), st.integers(max_value=-1), st.text(max_size=3)),
}
BAD_MESSAGE = st.one_of(
    _not_a(dict),
    st.fixed_dictionaries({"role": st.text(max_size=6).filter(lambda r: r not in ("system", "user", "assistant",
                                                                                   "tool")),
                           "content": st.just("x")}),
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "tool"])}),
    st.fixed_dictionaries({"role": st.just("user"), "content": _not_a(str).filter(lambda v: v is not None)}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.just("x"),
                           "images": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("assistant"),
                           "tool_calls": st.one_of(_not_a(list).filter(lambda v: v is not None),
                                                   st.lists(_not_a(dict), min_size=1, max_size=2))}),
)
CHAT_BAD = {**COMMON_BAD,
            "messages": st.one_of(_not_a(list).filter(lambda v: v is not None),
                                  st.lists(BAD_MESSAGE, min_size=1, max_size=2).map(lambda ms: [USER[1]] + ms)),
            "tools": st.one_of(_not_a(list).filter(lambda v: v is not None), st.lists(_not_a(dict), min_size=1,
                                                                                     max_size=2))}
GEN_BAD = {**COMMON_BAD,
           "prompt": _not_a(str).filter(lambda v: v is not None),
           "suffix": st.text(min_size=1, max_size=5),
           "template": st.text(min_size=1, max_size=5),
           "system": _not_a(str).filter(lambda v: v is not None),
           "raw": _not_a(bool).filter(lambda v: v is not None),
           "context": st.one_of(st.lists(st.integers().filter(lambda t: not 0 <= t < 2048), min_size=1, max_size=3),
                                _not_a(list).filter(lambda v: v is not None)),
           "images": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=2)}
VALID = {"/api/chat": {"model": NAME, "messages": USER, "stream": False, "options": {"num_predict": 2}},
         "/api/generate": {"model": NAME, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}}


def _one_bad_field(path, fields):
    """A valid body with one field replaced by a wrong value (bad bodies, not random valid ones)."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda key: fields[key].map(lambda v: (path, json.dumps({**VALID[path], key: v}).encode())))


HOSTILE = st.one_of(
    _one_bad_field("/api/chat", CHAT_BAD), _one_bad_field("/api/generate", GEN_BAD),
    st.tuples(st.sampled_from(sorted(VALID)),
              st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode),
                        _not_a(dict).map(lambda v: json.dumps(v).encode()))),
)


def test_malformed_bodies_get_4xx_and_change_nothing(server, client):
    before = client.chat(model=NAME, messages=USER, options=GREEDY).message.content
    seen = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        @settings(max_examples=300, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(HOSTILE)
        def hostile(case):
            path, body = case
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            seen.append(r.status_code)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text[:300])
            err = r.json()
            assert list(err) == ["error"] and isinstance(err["error"], str) and err["error"], (path, body, err)
        hostile()
    assert len(seen) >= 100 and 404 in seen and 400 in seen
    assert httpx.get(server.url + "/health").status_code == 200
    assert client.chat(model=NAME, messages=USER, options=GREEDY).message.content == before


# ---- tool calls and thinking (scripted token stream, real template) ----------------------------
@pytest.fixture(scope="module")
def real_model():
    import g4rt
    return g4rt.load(need_fixture(MODEL), backend="numpy", ctx=1024)


def scripted(model, script_text):
    """(ollama client, scripted engine) for an in-process server whose model 'writes' script_text.
    The client's HTTP client is swapped for Starlette's TestClient (the engine lives in this process)."""
    from starlette.testclient import TestClient
    from test_server_tools import ScriptedEngine

    from g4rt.server.app import ServerConfig, ServerState, create_app
    from g4rt.server.metrics import ServerMetrics
    eng = ScriptedEngine(model.engine, model.tokenizer.encode(script_text, add_bos=False, parse_special=True))
    fake = types.SimpleNamespace(engine=eng, tokenizer=model.tokenizer, encode_prompt=model.encode_prompt,
                                 _think_ids=model._think_ids, backend_name="scripted",
                                 chat_template=model.chat_template)
    state = ServerState(ServerConfig(model_id="gemma4"), ServerMetrics(1))
    state.attach(fake)
    c = ollama.Client(host="http://testserver")
    c._client = TestClient(create_app(state))
    return c, eng, state


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "days": {"type": "integer"}}, "required": ["city"]}}}
TOOL_SCRIPT = ('<|channel>thought\nI should check the weather.<channel|>'
               '<|tool_call>call:get_weather{city:<|"|>Paris, France<|"|>,days:3}<tool_call|><|tool_response>')
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(real_model, stream):
    c, eng, state = scripted(real_model, TOOL_SCRIPT)
    r = c.chat(model="gemma4", messages=ASK, tools=[WEATHER], options={"temperature": 0}, stream=stream)
    if stream:
        chunks = list(r)
        calls = [tc for ch in chunks for tc in (ch.message.tool_calls or [])]
        thinking = "".join(ch.message.thinking or "" for ch in chunks)
        content, last = "".join(ch.message.content or "" for ch in chunks), chunks[-1]
    else:
        calls, thinking, content, last = r.message.tool_calls, r.message.thinking, r.message.content, r
    (call,) = calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris, France", "days": 3}
    assert thinking == "I should check the weather." and content == "" and last.done_reason == "stop"
    prompt = real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    assert '<|tool>declaration:get_weather{description:<|"|>Weather forecast for a city<|"|>' in prompt
    state.shutdown()


def test_tool_results_render_as_on_the_openai_route(real_model):
    c, eng, state = scripted(real_model, "It is sunny in Paris.<turn|>")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    for result in ({"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
                   {"role": "tool", "content": "sunny, 21 C"}):          # named, or by position
        r = c.chat(model="gemma4", tools=[WEATHER],
                   messages=ASK + [{"role": "assistant", "content": "", "tool_calls": [call]}, result])
        assert r.message.content == "It is sunny in Paris." and r.done_reason == "stop"
        prompt = real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
        assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in prompt
        assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>' in prompt
    # the same conversation through /v1/chat/completions gives the same prompt tokens
    ours, n = eng.prompts[-1], len(eng.prompts)
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1_0", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1_0", "content": "sunny, 21 C"}]
    r = c._client.post("/v1/chat/completions", json={"model": "gemma4", "tools": [WEATHER], "max_tokens": 5,
                                                     "messages": messages})
    assert r.status_code == 200 and len(eng.prompts) == n + 1 and eng.prompts[-1] == ours
    state.shutdown()


@pytest.mark.parametrize("stream", [False, True])
def test_think_true_turns_thinking_on(real_model, stream):
    c, eng, state = scripted(real_model, "<|channel>thought\nTwo plus two.<channel|>The answer is 4.<turn|>")
    r = c.chat(model="gemma4", messages=[{"role": "user", "content": "2+2?"}], think=True, stream=stream)
    if stream:
        chunks = list(r)
        thinking = "".join(ch.message.thinking or "" for ch in chunks)
        content = "".join(ch.message.content or "" for ch in chunks)
    else:
        thinking, content = r.message.thinking, r.message.content
    assert thinking == "Two plus two." and content == "The answer is 4."
    assert "<|think|>" in real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    c.chat(model="gemma4", messages=[{"role": "user", "content": "2+2?"}], think=False)
    assert "<|think|>" not in real_model.tokenizer.decode(eng.prompts[-1], skip_special=False)
    g = c.generate(model="gemma4", prompt="2+2?", think=True)
    assert g.thinking == "Two plus two." and g.response == "The answer is 4."
    state.shutdown()
