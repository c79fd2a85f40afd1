"""`g4rt serve` through the official `openai` client and raw HTTP: a real server process on a free
localhost port serving a fixture model, compared with in-process generation and the tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

openai = pytest.importorskip("openai")

from server_util import MODEL, ServerProcess, metric, need_fixture  # noqa: E402

CTX = 512
MODEL_ID = "g4-dense-Q4_0"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_fixture()
    srv = ServerProcess(MODEL, "--parallel", "2", "--ctx", str(CTX), "--alias", "local",
                        log_dir=tmp_path_factory.mktemp("serve")).wait_ready()
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model():
    """The same model in process: the reference for texts and token counts."""
    import g4rt
    m = g4rt.load(need_fixture(), backend="auto", ctx=CTX)
    yield m
    m.engine.close()


def _chat(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# ---- the model list, health, metrics ----------------------------------------------------------
def test_models_health_and_metrics(server, client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MODEL_ID and "local" in ids and "g4-dense-Q4_0.gguf" in ids
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    before = metric(httpx.get(server.url + "/metrics").text, "g4rt_requests_total",
                    'endpoint="/v1/completions",status="200"')
    client.completions.create(model=MODEL_ID, prompt="Metrics", max_tokens=3, temperature=0)
    page = httpx.get(server.url + "/metrics").text
    assert metric(page, "g4rt_requests_total", 'endpoint="/v1/completions",status="200"') == before + 1
    assert metric(page, "g4rt_generated_tokens_total") >= 3
    assert metric(page, "g4rt_slots") == 2 and "g4rt_decode_tokens_per_second" in page


# ---- texts equal in-process generation and `g4rt run` -----------------------------------------
def test_completion_with_seed_equals_g4rt_run(client, model):
    prompt, opts = "The weather in Paris", dict(temperature=0.9, top_p=0.95, seed=1234)
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, extra_body={"top_k": 40}, **opts)
    again = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, extra_body={"top_k": 40}, **opts)
    assert r.choices[0].text == again.choices[0].text          # same seed, same text
    local = "".join(model.generate(prompt, max_tokens=24, top_k=40, **opts))
    assert r.choices[0].text == local
    cli = subprocess.run([sys.executable, "-m", "g4rt", "run", str(MODEL), "-p", prompt, "-n", "24", "--temp", "0.9",
                          "--top-k", "40", "--top-p", "0.95", "--seed", "1234", "--ctx", str(CTX), "-q"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout[:-1] == r.choices[0].text                 # run ends its output with one newline


def test_chat_equals_in_process_generation(client, model):
    from g4rt.server.output_text import parse_complete
    msgs = _chat("Name three colours.")
    r = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=20, temperature=0)
    ids = model.encode_prompt(msgs, chat=True)
    assert r.usage.prompt_tokens == len(ids)
    raw = "".join(model.generate(msgs, max_tokens=20, chat=True, temperature=0))
    content, reasoning, calls = parse_complete(raw, parse_tools=False)
    assert (r.choices[0].message.content or "") == content
    assert (getattr(r.choices[0].message, "reasoning_content", None) or "") == reasoning
    assert r.usage.completion_tokens == model.last_stats.generated_tokens
    assert r.choices[0].finish_reason == ("length" if model.last_stats.stop_reason == "max_tokens" else "stop")


def test_streaming_equals_non_streaming(client):
    msgs = _chat("Count to five.")
    full = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (full.choices[0].message.content or "")
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    # text completions stream the same way
    c_full = client.completions.create(model=MODEL_ID, prompt="Once upon", max_tokens=16, temperature=0)
    c_stream = list(client.completions.create(model=MODEL_ID, prompt="Once upon", max_tokens=16, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in c_stream) == c_full.choices[0].text


def test_raw_sse_framing(server):
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json={"prompt": "SSE", "max_tokens": 4, "temperature": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ") and json.loads(e[6:])["object"] == "text_completion"


# ---- stop strings -------------------------------------------------------------------------------
def _offsets(client, prompt, n):
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=n, temperature=0, logprobs=0)
    return r.choices[0].text, r.choices[0].logprobs.text_offset


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_split_across_tokens(client, stream):
    prompt = "The history of"
    text, offsets = _offsets(client, prompt, 24)
    # a stop string that starts inside one token and ends inside a later one
    cut = next(o for o in offsets[3:] if 2 <= o <= len(text) - 2 and text[o - 2:o + 2].strip())
    stop = text[cut - 2:cut + 2]
    expect = text[:text.index(stop)]
    kw = dict(model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=0, stop=[stop, "never-seen-stop"])
    if stream:
        chunks = list(client.completions.create(stream=True, **kw))
        got = "".join(c.choices[0].text for c in chunks if c.choices)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert reason == ["stop"]
    else:
        r = client.completions.create(**kw)
        got = r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
    assert got == expect and stop not in got


def test_stop_string_never_matching_loses_nothing(client):
    text, _ = _offsets(client, "A stop test", 20)
    chunks = list(client.completions.create(model=MODEL_ID, prompt="A stop test", max_tokens=20, temperature=0,
                                            stop=[text[-1] + "\u2603", "\u2603"], stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text


# ---- logprobs, usage, token ids -----------------------------------------------------------------
def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=_chat("hi"), max_tokens=8, temperature=0,
                                       logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and all(v <= 0 for v in tops)
        assert e.logprob == pytest.approx(tops[0])            # greedy takes the most likely token
    stream = list(client.chat.completions.create(model=MODEL_ID, messages=_chat("hi"), max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_completion_logprobs_and_usage(client, model):
    prompt = "Counting tokens"
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10, temperature=0, logprobs=2)
    assert r.usage.prompt_tokens == len(model.tokenizer.encode(prompt, add_bos=model.tokenizer.add_bos))
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 10
    assert "".join(lp.tokens) == r.choices[0].text or r.choices[0].text in "".join(lp.tokens)
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_prompt_as_token_ids(client, model):
    ids = model.tokenizer.encode("Token ids in", add_bos=model.tokenizer.add_bos)
    a = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=8, temperature=0)
    b = client.completions.create(model=MODEL_ID, prompt="Token ids in", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.usage.prompt_tokens == len(ids)


def test_tokenize_detokenize(server, model):
    r = httpx.post(server.url + "/tokenize", json={"content": "Hello <|channel> world", "with_pieces": True})
    assert r.status_code == 200
    ids = [t["id"] for t in r.json()["tokens"]]
    assert ids == model.tokenizer.encode("Hello <|channel> world", add_bos=False)
    d = httpx.post(server.url + "/detokenize", json={"tokens": ids})
    assert d.status_code == 200 and d.json()["content"] == model.tokenizer.decode(ids)


# ---- context, cache ----------------------------------------------------------------------------------
def test_max_tokens_clipped_to_the_context(client, model):
    prompt = "word " * 200
    n = len(model.tokenizer.encode(prompt, add_bos=model.tokenizer.add_bos))
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=10_000, temperature=0)
    assert r.usage.prompt_tokens == n
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == CTX - n
    else:
        assert r.usage.completion_tokens < CTX - n


def test_prompt_over_the_context_is_400_saying_by_how_much(client, model):
    prompt = "word " * 600
    n = len(model.tokenizer.encode(prompt, add_bos=model.tokenizer.add_bos))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4)
    assert f"{n - CTX + 1} more than the context of {CTX}" in str(e.value)


def test_next_chat_turn_reuses_the_cache(client, model):
    msgs = _chat("Tell me a story about a fox and a crow, in the style of an old fable.")
    first = client.chat.completions.create(model=MODEL_ID, messages=msgs, max_tokens=12, temperature=0)
    msgs2 = msgs + [{"role": "assistant", "content": first.choices[0].message.content or ""},
                    {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model=MODEL_ID, messages=msgs2, max_tokens=12, temperature=0)
    from g4rt.engine import common_prefix
    shared = common_prefix(model.encode_prompt(msgs, chat=True), model.encode_prompt(msgs2, chat=True))
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert shared > 40 and shared <= cached < second.usage.prompt_tokens
    assert second.model_extra["timings"]["cache_n"] == cached        # llama-server's field, same count
    # and the answer is the one a fresh prefill gives
    fresh = "".join(model.generate(msgs2, max_tokens=12, chat=True, temperature=0))
    from g4rt.server.output_text import parse_complete
    assert (second.choices[0].message.content or "") == parse_complete(fresh, parse_tools=False)[0]


# ---- errors ----------------------------------------------------------------------------------
def _post(server, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers={"content-type": "application/json"}, timeout=30, **kw)


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": []}, 400, "at least one message"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n=2"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4o"}, 404, "does not exist"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url"}]}]}, 400, "not supported"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 400, "temperature"),
])
def test_bad_requests_get_openai_errors(server, body, status, needle):
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_unknown_fields_are_ignored(client):
    r = client.chat.completions.create(model=MODEL_ID, messages=_chat("x"), max_tokens=2, temperature=0,
                                       extra_body={"frobnicate": True, "mirostat": 2})
    assert r.usage.completion_tokens <= 2


def test_client_errors_map_to_openai_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=_chat("x"), max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_ID, messages=_chat("x"), max_tokens=2, n=3)


# ---- logit_bias and ignore_eos (OpenAI's / llama-server's) --------------------------------------
def _completion_ids(server, prompt: str, **fields) -> tuple[list[int], dict]:
    body = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "temperature": 0, "logprobs": 0,
                                                            **fields}, timeout=60).json()
    tokens = body["choices"][0]["logprobs"]["tokens"]
    ids = [int(t.split(":")[1]) if t.startswith("id:") else None for t in tokens]
    return ids, body


def test_logit_bias_steers_greedy_decoding_as_the_in_process_sampler(server, model):
    """Banning the greedy first token (false, as llama-server; or -100, as OpenAI) gives the text the
    in-process sampler gives with the same bias; a +bias makes a chosen token the greedy one."""
    from g4rt.sampling import Sampler
    prompt = "Bias: the quick brown fox"
    ids = model.encode_prompt(prompt)
    plain = list(model.generate_ids(ids, 6))
    assert plain, "the fixture ends at once; pick another prompt"
    for bias in ({str(plain[0]): False}, {str(plain[0]): -100}, [[plain[0], False]]):
        want = list(model.generate_ids(ids, 6, sampler=Sampler(logit_bias={plain[0]: float("-inf")})))
        r = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0,
                                                             "logit_bias": bias}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == model.tokenizer.decode(want), bias
        assert plain[0] not in want
    favourite = 1234
    r = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0,
                                                         "logit_bias": {str(favourite): 100}}, timeout=60)
    want = list(model.generate_ids(ids, 1, sampler=Sampler(logit_bias={favourite: 100.0})))
    assert r.json()["choices"][0]["text"] == model.tokenizer.decode(want)


def test_ignore_eos_generates_the_whole_budget_without_an_end_token(server, model):
    """llama-server's ignore_eos: the end-of-generation tokens are never chosen, so a request runs to
    max_tokens ("length") whatever the model would rather do - even one whose logit_bias makes an
    end token the certain choice."""
    from g4rt.sampling import Sampler
    tok = model.tokenizer
    prompt = "End: stop here"
    eos = {str(t): 100 for t in tok.eog_ids}
    base = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logit_bias": eos}
    ended = httpx.post(server.url + "/v1/completions", json=base, timeout=60).json()
    assert ended["choices"][0]["finish_reason"] == "stop" and ended["usage"]["completion_tokens"] == 0, ended
    body = httpx.post(server.url + "/v1/completions", json={**base, "ignore_eos": True}, timeout=60).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 24, body
    banned = {t: float("-inf") for t in tok.eog_ids}
    want = list(model.generate_ids(model.encode_prompt(prompt), 24, sampler=Sampler(logit_bias=banned)))
    assert len(want) == 24 and body["choices"][0]["text"] == tok.decode(want)


@pytest.mark.parametrize("bias,fragment", [({"x": 1}, "is not a token id"), ({"-1": 1}, "names token -1"),
                                           ({"99999999": 1}, "the vocabulary has"), ({"5": 101}, "[-100, 100]"),
                                           ({"5": True}, "give a number"), ({"5": "x"}, "give a number"),
                                           ([[5]], "not a [token id, bias] pair")])
def test_a_bad_logit_bias_is_a_400_naming_it(server, bias, fragment):
    from server_util import assert_error_body
    for path, extra in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": _chat("x")})):
        r = httpx.post(server.url + path, json={**extra, "max_tokens": 2, "logit_bias": bias}, timeout=30)
        err = assert_error_body(r, "400")
        assert fragment in err["message"], err
