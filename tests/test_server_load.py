"""`g4rt serve` under load and abuse: a real server process per configuration (tiny fixture model).

- many concurrent streaming clients (the official `openai` client) get exactly the text each
  request gets alone, with nothing lost and no cross-talk between slots;
- a full wait queue answers 503 with Retry-After; the accepted requests still complete;
- a client that goes away (mid-stream, by timeout, or while still queued) frees its slot at once;
- a barrage of malformed and hostile requests gets 4xx JSON errors, never a 5xx or a hang, and
  leaves the server answering exactly as before;
- the API key guards every endpoint but /health;
- SIGTERM during active streams ends every stream and the process, promptly and cleanly.
"""

from __future__ import annotations

import functools
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server_util import MODEL, ServerProcess, metric, need_fixture

MAX_TOKENS = 24
WORDS = ["cats", "rivers", "volcanoes", "jazz", "bridges", "comets", "tea", "glaciers", "owls",
         "lighthouses", "origami", "tides", "deserts", "violins", "bees", "castles", "fog"]


# ---- helpers ---------------------------------------------------------------------------------

def _start(tmp_path_factory, name: str, *args: str) -> ServerProcess:
    need_fixture()
    return ServerProcess(MODEL, *args, log_dir=tmp_path_factory.mktemp(name)).wait_ready()


def _stop(srv: ServerProcess) -> None:
    srv.stop()                # asserts that it stops within 20 s; the exit code is test 6's business


@functools.lru_cache(maxsize=None)
def http() -> httpx.Client:
    """One shared client for the status polls (a new httpx client costs ~40 ms of CPU: polling
    with `httpx.get` would load the machine more than the server does)."""
    return httpx.Client(timeout=10)


def wait_until(pred, timeout: float, interval: float = 0.01):
    """Poll `pred` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def get_slots(url: str) -> list[dict]:
    r = http().get(url + "/slots")
    assert r.status_code == 200, r.text
    return r.json()


def get_metrics(url: str) -> str:
    r = http().get(url + "/metrics")
    assert r.status_code == 200, r.text
    return r.text


def all_idle(url: str) -> bool:
    return all(s["state"] == "idle" for s in get_slots(url))


def assert_settled(srv: ServerProcess, timeout: float = 3.0) -> None:
    """Healthy, every slot idle, and the load gauges back at zero (polled: the worker updates
    the gauges just after it sends a request's last event)."""
    assert http().get(srv.url + "/health").status_code == 200
    assert wait_until(lambda: all_idle(srv.url), timeout), f"slots still busy: {get_slots(srv.url)}"

    def gauges_zero():
        text = get_metrics(srv.url)
        return metric(text, "g4rt_queue_depth") == 0 and metric(text, "g4rt_busy_slots") == 0
    assert wait_until(gauges_zero, timeout), \
        f"gauges not back at 0: queue {metric(get_metrics(srv.url), 'g4rt_queue_depth')}, " \
        f"busy {metric(get_metrics(srv.url), 'g4rt_busy_slots')}"


def sse_payloads(response: httpx.Response):
    """The `data:` payloads of an SSE response, in order (str)."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: "):]


def model_id(url: str) -> str:
    return http().get(url + "/v1/models").json()["data"][0]["id"]


def assert_error_body(r: httpx.Response, what: str = "") -> dict:
    assert r.headers.get("content-type", "").startswith("application/json"), \
        f"{what}: {r.status_code} with content-type {r.headers.get('content-type')!r}: {r.text[:200]!r}"
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: {body!r}"
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], f"{what}: {body!r}"
    return body["error"]


# ---- 1. concurrent streaming clients ---------------------------------------------------------

@pytest.fixture(scope="module")
def load_server(tmp_path_factory):
    srv = _start(tmp_path_factory, "load", "--parallel", "4", "--queue", "64", "--ctx", "512")
    yield srv
    _stop(srv)


def _spec(i: int, j: int) -> tuple[str, str]:
    kind = "chat" if (i + j) % 2 == 0 else "completion"
    return kind, f"Request {i}-{j}: tell me about {WORDS[(7 * i + j) % len(WORDS)]}"


def _alone(client: openai.OpenAI, model: str, kind: str, text: str) -> tuple:
    """(reasoning, text, finish_reason, completion tokens) of one non-streaming request."""
    if kind == "chat":
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                           temperature=0, max_tokens=MAX_TOKENS)
        msg = r.choices[0].message
        return (getattr(msg, "reasoning_content", None) or "", msg.content or "", r.choices[0].finish_reason,
                r.usage.completion_tokens)
    r = client.completions.create(model=model, prompt=text, temperature=0, max_tokens=MAX_TOKENS)
    return "", r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens


def _streamed(client: openai.OpenAI, model: str, kind: str, text: str) -> tuple:
    """The same, streamed: the deltas concatenated; the stream must end with a finish_reason."""
    reasoning, parts, finish, usage, chunks = [], [], None, None, 0
    if kind == "chat":
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                temperature=0, max_tokens=MAX_TOKENS, stream=True,
                                                stream_options={"include_usage": True})
    else:
        stream = client.completions.create(model=model, prompt=text, temperature=0, max_tokens=MAX_TOKENS,
                                           stream=True, stream_options={"include_usage": True})
    for chunk in stream:             # ends at `data: [DONE]`; an error chunk raises openai.APIError
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for ch in chunk.choices:
            assert finish is None, f"a chunk after the finish_reason: {chunk!r}"
            if kind == "chat":
                reasoning.append(getattr(ch.delta, "reasoning_content", None) or "")
                parts.append(ch.delta.content or "")
            else:
                parts.append(ch.text or "")
            if ch.finish_reason is not None:
                finish = ch.finish_reason
    assert finish is not None, f"the stream of {text!r} ended without a finish_reason after {chunks} chunks"
    assert usage is not None, f"the stream of {text!r} ended without its usage chunk"
    return "".join(reasoning), "".join(parts), finish, usage


def test_concurrent_streams_match_sequential_greedy(load_server):
    srv = load_server
    model = model_id(srv.url)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
    specs = {(i, j): _spec(i, j) for i in range(32) for j in range(3)}

    expected = {key: _alone(client, model, *spec) for key, spec in specs.items()}
    assert len({e[:2] for e in expected.values()}) > 80, "the prompts should give (nearly) all different outputs"
    before = get_metrics(srv.url)

    barrier = threading.Barrier(32, timeout=30)

    def one_client(i: int) -> dict:
        barrier.wait()
        out = {}
        for j in range(3):
            try:
                out[(i, j)] = _streamed(client, model, *specs[(i, j)])
            except Exception as e:          # recorded, so one failure does not hide the others
                out[(i, j)] = e
        return out

    results: dict = {}
    peak_busy = peak_queue = 0
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(one_client, i) for i in range(32)]
        deadline = time.monotonic() + 60
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            text = get_metrics(srv.url)
            peak_busy = max(peak_busy, metric(text, "g4rt_busy_slots"))
            peak_queue = max(peak_queue, metric(text, "g4rt_queue_depth"))
            time.sleep(0.02)
        for f in futures:
            results.update(f.result(timeout=max(1.0, deadline - time.monotonic())))

    assert len(results) == 96, f"{96 - len(results)} results lost"
    failed = {k: repr(v) for k, v in results.items() if isinstance(v, Exception)}
    assert not failed, f"{len(failed)} streams failed: {dict(list(failed.items())[:5])}"
    wrong = {k: (specs[k], expected[k], v) for k, v in results.items() if v != expected[k]}
    reused = metric(get_metrics(srv.url), "g4rt_prompt_cached_tokens_total") - \
        metric(before, "g4rt_prompt_cached_tokens_total")
    assert not wrong, (f"{len(wrong)} of 96 streamed answers differ from the same request alone "
                       f"({reused:g} prompt tokens reused from slot caches under load); "
                       "(spec, alone (reasoning, text, finish, tokens), streamed):\n"
                       + "\n".join(f"{k}: {w}" for k, w in list(wrong.items())[:5]))
    assert peak_busy == 4, f"the load never used every slot (peak busy {peak_busy})"
    assert peak_queue > 0, "the load never queued a request"
    steps = metric(get_metrics(srv.url), "g4rt_batch_steps_total") - metric(before, "g4rt_batch_steps_total")
    seqs = metric(get_metrics(srv.url), "g4rt_batch_sequences_total") - metric(before, "g4rt_batch_sequences_total")
    assert seqs / steps > 2.5, f"the slots were not batched: {seqs:g} sequences in {steps:g} steps"

    after = get_metrics(srv.url)
    for endpoint, n in (("/v1/chat/completions", 48), ("/v1/completions", 48)):
        label = f'endpoint="{endpoint}",status="200"'
        assert metric(after, "g4rt_requests_total", label) - metric(before, "g4rt_requests_total", label) == n
    gen = metric(after, "g4rt_generated_tokens_total") - metric(before, "g4rt_generated_tokens_total")
    assert gen == sum(v[3] for v in results.values())
    assert_settled(srv)


# ---- 2. queue overflow -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    srv = _start(tmp_path_factory, "one", "--parallel", "1", "--queue", "2", "--ctx", "2048")
    yield srv
    _stop(srv)


def test_queue_overflow_answers_503_with_retry_after(one_slot_server):
    srv = one_slot_server
    before = get_metrics(srv.url)
    barrier = threading.Barrier(8, timeout=30)

    def request(k: int):
        body = {"prompt": f"Overflow {k}: once upon a time", "max_tokens": 800, "temperature": 0}
        with httpx.Client(timeout=30) as c:
            barrier.wait()
            return c.post(srv.url + "/v1/completions", json=body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(request, range(8)))

    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503}, statuses
    busy = [r for r in answers if r.status_code == 503]
    done = [r for r in answers if r.status_code == 200]
    assert busy, f"no 503 with 1 slot and --queue 2 under 8 concurrent long requests: {statuses}"
    assert len(done) >= 3, f"the slot and the 2 queue places should take 3 requests: {statuses}"
    for r in busy:
        assert re.fullmatch(r"\d+", r.headers.get("retry-after", "")), dict(r.headers)
        err = assert_error_body(r, "503")
        assert err["type"] == "server_busy_error", err
    for r in done:
        body = r.json()
        # the random-weight model may sample its end-of-turn token before max_tokens
        assert body["choices"][0]["finish_reason"] in ("stop", "length"), body
        assert 1 <= body["usage"]["completion_tokens"] <= 800, body["usage"]
        assert (body["choices"][0]["finish_reason"] == "length") == (body["usage"]["completion_tokens"] == 800)
    after = get_metrics(srv.url)
    label = 'endpoint="/v1/completions",status="503"'
    assert metric(after, "g4rt_requests_total", label) - metric(before, "g4rt_requests_total", label) == len(busy)
    assert_settled(srv)


# ---- 3. clients that go away -----------------------------------------------------------------

def _prompt_tokens(url: str, prompt: str) -> int:
    r = http().post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def _assert_stops_soon(srv: ServerProcess, n_prompt: int, started: float, left: float, at_leave: int,
                       budget: int, what: str) -> None:
    """The slot frees promptly once the client is gone, and decodes only a little after it left.

    Judged against this host's own pace (tokens the slot decoded while the client was there), not a
    fixed count: a fast host decodes the tiny fixture at thousands of tokens per second."""
    assert wait_until(lambda: all_idle(srv.url), 2.0), f"the slot is still busy 2 s after {what}: " \
                                                        f"{get_slots(srv.url)}"
    freed = time.monotonic() - left
    end = get_slots(srv.url)[0]["cache_tokens"]
    before, after = at_leave - n_prompt, end - at_leave
    assert end - n_prompt < budget, f"all {budget} tokens were decoded: the request ran to its end after {what}"
    pace = before / max(left - started, 1e-3)          # tokens/s while the client was connected
    # what the slot may still decode while the server notices (one poll of the ASGI channel and
    # the step in flight): well under the time the client waited
    allowed = max(16.0, 0.5 * pace * (left - started))
    assert after <= allowed, f"{after} tokens decoded after {what} ({before} before, in " \
                             f"{left - started:.2f} s; slot idle {freed:.2f} s after)"
    assert_settled(srv)


def test_disconnect_mid_stream_frees_the_slot(one_slot_server):
    srv = one_slot_server
    prompt = "Disconnect: write a very long story about the sea"
    n_prompt = _prompt_tokens(srv.url, prompt)
    budget = 2048 - n_prompt - 1                       # as much as the context holds
    with httpx.Client(timeout=10) as c:
        started = time.monotonic()
        with c.stream("POST", srv.url + "/v1/completions",
                      json={"prompt": prompt, "max_tokens": budget, "temperature": 0, "stream": True}) as r:
            assert r.status_code == 200
            got = []
            for data in sse_payloads(r):
                got.append(json.loads(data))
                if len(got) == 3:
                    break
            at_leave = get_slots(srv.url)[0]["cache_tokens"]
        left = time.monotonic()        # leaving the block closes the half-read connection
    assert len(got) == 3 and all(g["choices"][0]["finish_reason"] is None for g in got)
    _assert_stops_soon(srv, n_prompt, started, left, at_leave, budget, "the client left after 3 chunks")


def test_client_timeout_on_non_streaming_request_frees_the_slot(one_slot_server):
    srv = one_slot_server
    prompt = "Timeout: list every prime number you know"
    n_prompt = _prompt_tokens(srv.url, prompt)
    budget = 2048 - n_prompt - 1
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        http().post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": budget, "temperature": 0},
                    timeout=0.15)
    at_leave = get_slots(srv.url)[0]["cache_tokens"]
    left = time.monotonic()
    _assert_stops_soon(srv, n_prompt, started, left, at_leave, budget, "the client timed out")


def test_request_dropped_while_queued_never_runs(one_slot_server):
    srv = one_slot_server
    first = {"prompt": "Queued A: describe a long journey", "max_tokens": 1800, "temperature": 0, "stream": True,
             "stream_options": {"include_usage": True}}
    n_prompt_a = _prompt_tokens(srv.url, first["prompt"])
    before = get_metrics(srv.url)
    result: dict = {}

    def run_first():
        try:
            with httpx.stream("POST", srv.url + "/v1/completions", json=first, timeout=30) as r:
                result["status"] = r.status_code
                result["payloads"] = list(sse_payloads(r))
        except Exception as e:
            result["error"] = e

    a = threading.Thread(target=run_first, daemon=True)
    a.start()
    assert wait_until(lambda: get_slots(srv.url)[0]["state"] == "processing", 5), "the first request never started"
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", srv.url + "/v1/completions",
                      json={"prompt": "Queued B: never answer this, it is dropped while it waits in the queue",
                            "max_tokens": 50, "temperature": 0,
                            "stream": True}) as r:
            assert r.status_code == 200
            assert wait_until(lambda: metric(get_metrics(srv.url), "g4rt_queue_depth") == 1, 5), \
                "the second request was not queued"
        # B's client is gone while A still holds the slot: B leaves the queue without running

    def queue_empty():
        if metric(get_metrics(srv.url), "g4rt_queue_depth") == 0:
            return get_slots(srv.url)[0]        # read after: who held the only slot all along
    slot = wait_until(queue_empty, 5)
    assert slot is not None, "the dropped request stays in the queue"
    assert slot["state"] == "processing" and slot["prompt_tokens"] == n_prompt_a, \
        f"the queue emptied only once A was done (B ran, or A ended too early to tell): {slot}"
    a.join(30)
    assert not a.is_alive(), "the first stream never ended"
    assert "error" not in result, result.get("error")
    assert result["status"] == 200 and result["payloads"][-1] == "[DONE]"
    usage = [json.loads(p)["usage"] for p in result["payloads"][:-1] if json.loads(p).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 1800, usage
    assert wait_until(lambda: all_idle(srv.url), 2.0)
    after = get_metrics(srv.url)
    assert metric(after, "g4rt_generated_tokens_total") - metric(before, "g4rt_generated_tokens_total") == 1800
    assert metric(after, "g4rt_prompt_tokens_total") - metric(before, "g4rt_prompt_tokens_total") == n_prompt_a
    # the slot still holds A's sequence (the last sampled token is never fed back): B never ran
    assert get_slots(srv.url)[0]["cache_tokens"] == n_prompt_a + 1800 - 1, get_slots(srv.url)
    assert_settled(srv)


# ---- 4. malformed and hostile requests --------------------------------------------------------

HOSTILE_CTX = 128
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    srv = _start(tmp_path_factory, "hostile", "--parallel", "2", "--queue", "8", "--ctx", str(HOSTILE_CTX),
                 "--max-body", "64KiB")
    yield srv
    _stop(srv)


USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
JSON_CT = {"content-type": "application/json"}

# (field, bad value) pairs for the chat body: wrong types and out-of-range values for each field
CHAT_BAD_FIELDS = [
    ("model", 5), ("model", []), ("model", {"id": "x"}),
    ("messages", {}), ("messages", "hi"), ("messages", []), ("messages", [1]), ("messages", [[]]),
    ("messages", [{"role": "wizard", "content": "x"}]), ("messages", [{"content": "x"}]),
    ("messages", [{"role": "user", "content": 5}]), ("messages", [{"role": "user", "content": {"a": 1}}]),
    ("messages", [{"role": "user", "content": [{"text": "x"}]}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
    ("messages", [{"role": 5, "content": "x"}]), ("messages", [{"role": "user", "content": "x", "name": 5}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": "f"}]),
    ("messages", [{"role": "user", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]),
    ("max_tokens", "10"), ("max_tokens", 1.5), ("max_tokens", -5), ("max_tokens", 0), ("max_tokens", True),
    ("max_tokens", [10]), ("max_completion_tokens", -1), ("max_completion_tokens", "x"),
    ("temperature", [1]), ("temperature", "0.5"), ("temperature", -1), ("temperature", 1e9),
    ("temperature", {"t": 1}),
    ("top_p", 0), ("top_p", 1.5), ("top_p", "x"), ("top_k", -1), ("top_k", 1.5), ("min_p", 2),
    ("min_p", -0.1), ("seed", "1"), ("seed", 1.5), ("seed", -1), ("seed", [1]),
    ("stop", 5), ("stop", [1]), ("stop", {"a": 1}), ("stop", ["s"] * 17), ("stop", [None]),
    ("frequency_penalty", 3), ("presence_penalty", -3), ("repeat_penalty", 0), ("repeat_penalty", "x"),
    ("stream", "yes"), ("stream", 1), ("stream_options", 5), ("stream_options", {"include_usage": "yes"}),
    ("n", 2), ("n", 0), ("n", "1"), ("logprobs", "yes"), ("logprobs", 1), ("top_logprobs", 100),
    ("top_logprobs", -1), ("tools", 5), ("tools", [{"type": "function", "function": {"name": ""}}]),
    ("tools", [{"type": "retrieval", "function": {"name": "f"}}]), ("tools", [{"type": "function"}]),
    ("tool_choice", "sometimes"), ("tool_choice", 5),
    ("chat_template_kwargs", 5), ("chat_template_kwargs", {"messages": []}),
    ("chat_template_kwargs", {"bos_token": "x"}), ("user", 5), ("reasoning_format", 5),
]

CMPL_BAD_FIELDS = [
    ("prompt", 5), ("prompt", None), ("prompt", {"a": 1}), ("prompt", [1, "a"]), ("prompt", [-1]),
    ("prompt", [2048]), ("prompt", [10 ** 30]), ("prompt", [1.5]), ("prompt", ["a", "b"]), ("prompt", []),
    ("prompt", [[]]), ("prompt", [[1], [2]]), ("logprobs", -1), ("logprobs", 100), ("logprobs", "x"),
    ("echo", "x"), ("suffix", "tail"), ("max_tokens", -1), ("max_tokens", "16"), ("temperature", [0]),
    ("n", 2), ("stop", 7), ("seed", -7), ("model", 1),
]


def hostile_cases(long_prompt: str) -> list:
    """(name, method, path, headers, body, expected status or None for any 4xx); body is bytes,
    an iterator of bytes (sent chunked) or None."""
    cases = []

    def add(name, path, body, status=400, method="POST", headers=JSON_CT):
        cases.append((name, method, path, headers, body, status))

    for field, value in CHAT_BAD_FIELDS:
        add(f"chat {field}={value!r}"[:80], CHAT,
            json.dumps({"messages": USER, "max_tokens": 2, field: value}).encode())
    for field, value in CMPL_BAD_FIELDS:
        body = {"prompt": "hi", "max_tokens": 2, field: value}
        add(f"completion {field}={value!r}"[:80], CMPL, json.dumps(body).encode())
    add("chat tool_choice naming a missing tool", CHAT,
        json.dumps({"messages": USER, "max_tokens": 2, "tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "function", "function": {"name": "missing"}}}).encode())
    add("chat without messages", CHAT, b'{"max_tokens": 2}')
    add("completion without prompt", CMPL, b'{"max_tokens": 2}')
    add("tokenize without content", "/tokenize", b"{}")
    add("tokenize content=5", "/tokenize", b'{"content": 5}')
    add("tokenize add_special='x'", "/tokenize", b'{"content": "a", "add_special": "x"}')
    add("detokenize tokens='abc'", "/detokenize", b'{"tokens": "abc"}')
    add("detokenize tokens=[-1]", "/detokenize", b'{"tokens": [-1]}')
    add("detokenize tokens=[1.5]", "/detokenize", b'{"tokens": [1.5]}')
    add("detokenize tokens=[10**30]", "/detokenize", json.dumps({"tokens": [10 ** 30]}).encode())
    add("prompt too long (completion)", CMPL, json.dumps({"prompt": long_prompt, "max_tokens": 2}).encode())
    add("prompt too long (chat)", CHAT,
        json.dumps({"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 2}).encode())
    # bodies that are not a JSON object
    for path in (CHAT, CMPL, "/tokenize", "/detokenize"):
        for body in (b"", b"[]", b"5", b'"text"', b"null", b"true", b"{", b'{"messages": [}', b"{'a': 1}",
                     b'{"messages": [],}', b"NaN", b"\x00\x01\x02", b'{"prompt": "a"}garbage'):
            add(f"{path} body {body[:20]!r}", path, body)
        add(f"{path} deep [ nesting", path, b"[" * 60000)
        add(f"{path} deep nesting in an object", path, b'{"messages": ' + b"[" * 60000 + b"}")
        add(f"{path} non-UTF-8 bytes", path, b'{"content": "\xff\xfe\xfd", "messages": "\xc3\x28"}')
        if path != "/detokenize":    # valid JSON, but not valid Unicode text
            add(f"{path} lone surrogate", path,
                b'{"content": "\\ud800", "prompt": "\\ud800", '
                b'"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}')
        add(f"{path} body over --max-body", path, b'{"content": "' + b"a" * MAX_BODY + b'"}', 413)
        add(f"{path} chunked body over --max-body", path,
            iter([b'{"content": "'] + [b"a" * 8192] * 9 + [b'"}']), 413)
        add(f"{path} form content-type", path, b"messages=hi&prompt=hi",
            headers={"content-type": "application/x-www-form-urlencoded"})
        add(f"{path} multipart content-type", path,
            b'--xx\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nhi\r\n--xx--\r\n',
            headers={"content-type": "multipart/form-data; boundary=xx"})
    deep = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    add("chat deep content", CHAT, deep.replace(b'"hi"', b"[" * 5000 + b"]" * 5000))
    add("chat unknown model", CHAT, json.dumps({"messages": USER, "model": "gpt-9", "max_tokens": 2}).encode(), 404)
    add("completion unknown model", CMPL, json.dumps({"prompt": "x", "model": "gpt-9", "max_tokens": 2}).encode(),
        404)
    for path in ("/v1/nothing", "/v1/embeddings", "/v2/chat/completions", "/admin", "/v1/chat/completions/x",
                 "/%2e%2e/etc/passwd"):
        add(f"unknown endpoint {path}", path, b"{}", 404)
        add(f"GET unknown endpoint {path}", path, None, 404, method="GET")
    for path in (CHAT, CMPL, "/tokenize", "/detokenize"):
        add(f"GET {path}", path, None, 405, method="GET")
        add(f"DELETE {path}", path, None, 405, method="DELETE")
    for path in ("/v1/models", "/health", "/metrics", "/slots"):
        add(f"POST {path}", path, b"{}", 405)
        add(f"PUT {path}", path, b"{}", 405, method="PUT")
    return cases


def _garbage(rng: random.Random):
    n = rng.choice([1, 7, 100, 4000])
    return ("garbage bytes", "POST", rng.choice([CHAT, CMPL, "/tokenize", "/detokenize"]),
            {"content-type": rng.choice(["application/json", "application/octet-stream", "text/plain"])},
            rng.randbytes(n), 400)


def _requests_counted(text: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("g4rt_requests_total{"))


def _greedy_chat(c: httpx.Client) -> str:
    r = c.post(CHAT, json={"messages": [{"role": "user", "content": "Say something about lighthouses"}],
                           "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_malformed_and_hostile_requests_get_4xx(hostile_server):
    srv = hostile_server
    rng = random.Random(20240611)
    c = httpx.Client(base_url=srv.url, timeout=10)
    reference = _greedy_chat(c)
    long_prompt = " ".join(rng.choice(WORDS) for _ in range(400))
    cases = hostile_cases(long_prompt)
    # every case at least once, the rest drawn at random, with random garbage mixed in
    plan = list(cases) + [rng.choice(cases) if rng.random() < 0.8 else None for _ in range(1000 - len(cases))]
    rng.shuffle(plan)
    assert len(plan) == 1000

    problems: dict[str, str] = {}
    timeouts = drops = answered = 0
    counted_before = _requests_counted(get_metrics(srv.url))
    for case in plan:
        name, method, path, headers, body, status = case if case is not None else _garbage(rng)
        if name.endswith("chunked body over --max-body"):     # an iterator is consumed: a fresh one
            body = iter([b'{"content": "'] + [b"a" * 8192] * 9 + [b'"}'])
        r = None
        for attempt in (1, 2):
            try:
                r = c.request(method, path, headers=headers, content=body)
                answered += 1
                break
            except httpx.TimeoutException:
                timeouts += 1
                problems.setdefault(name, "no answer within 10 s")
                break
            except httpx.TransportError as e:
                # the server closes a keep-alive connection after a 500: once more on a fresh one
                drops += 1
                if attempt == 2:
                    problems.setdefault(name, f"the connection was dropped twice: {e!r}")
        if timeouts >= 3:
            break
        if r is None:
            continue
        if not 400 <= r.status_code < 500 or (status is not None and r.status_code != status):
            problems.setdefault(name, f"{r.status_code} (expected {status or '4xx'}): {r.text[:300]}")
            continue
        try:
            assert_error_body(r, name)
        except (AssertionError, ValueError) as e:
            problems.setdefault(name, f"bad error body: {e}")
    # every answer is counted in g4rt_requests_total (+ the scrape before the barrage and each
    # earlier scrape of this poll; polled: a request is counted just after its answer is sent)
    scrapes = [0]

    def count_settled():
        scrapes[0] += 1
        got = _requests_counted(get_metrics(srv.url)) - counted_before
        return got if got == answered + scrapes[0] else None
    counted_ok = wait_until(count_settled, 1.0, interval=0.05)
    counted = _requests_counted(get_metrics(srv.url)) - counted_before - scrapes[0] - 1

    # the server survived and still answers exactly as before
    assert http().get(srv.url + "/health").status_code == 200
    c.close()
    with httpx.Client(base_url=srv.url, timeout=10) as c2:
        assert _greedy_chat(c2) == reference, "the barrage changed a greedy answer"
    assert_settled(srv)
    failures = []
    if problems:
        failures.append(f"{len(problems)} kinds of hostile request were mishandled ({drops} connections dropped "
                        f"on the way):\n" + "\n".join(f"  {k}: {v}" for k, v in problems.items()))
    if not counted_ok:
        failures.append(f"g4rt_requests_total counted {counted:g} of the {answered} answers")
    assert not failures, "\n".join(failures)


def test_prompt_too_long_says_by_how_much(hostile_server):
    srv = hostile_server
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        prompt = "alpha beta gamma delta " * 60
        for path, body in ((CMPL, {"prompt": prompt, "max_tokens": 4}),
                           (CHAT, {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4})):
            r = c.post(path, json=body)
            assert r.status_code == 400, r.text
            msg = assert_error_body(r, path)["message"]
            m = re.search(r"has (\d+) tokens, (\d+) more than the context of (\d+)", msg)
            assert m, msg
            n, over, ctx = map(int, m.groups())
            assert ctx == HOSTILE_CTX and over == n - ctx + 1 and n > ctx, msg
        n_plain = len(c.post("/tokenize", json={"content": prompt}).json()["tokens"])
        r = c.post(CMPL, json={"prompt": prompt, "max_tokens": 4})
        n = int(re.search(r"has (\d+) tokens", r.json()["error"]["message"]).group(1))
        assert n_plain <= n <= n_plain + 1, (n_plain, n)      # + BOS at most
        # a prompt that fits with max_tokens far past the context is clipped, not refused
        r = c.post(CMPL, json={"prompt": "short", "max_tokens": 10 ** 12, "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["finish_reason"] == "length", body
        assert body["usage"]["total_tokens"] <= HOSTILE_CTX, body["usage"]


# ---- 5. API key ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_server(tmp_path_factory):
    srv = _start(tmp_path_factory, "key", "--api-key", "secret", "--ctx", "256")
    yield srv
    _stop(srv)


def test_api_key(key_server):
    url = key_server.url
    assert http().get(url + "/health", timeout=5).status_code == 200
    for path in ("/v1/models", "/slots", "/metrics"):
        r = http().get(url + path, timeout=5)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert assert_error_body(r, path)["type"] == "authentication_error"
    for headers in ({"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}, {"Authorization": "secret"},
                    {"Authorization": "Bearer secretx"}, {"Authorization": "Bearer"}, {"X-Api-Key": ""}):
        r = http().get(url + "/v1/models", headers=headers, timeout=5)
        assert r.status_code == 401, (headers, r.status_code)
        assert assert_error_body(r)["type"] == "authentication_error"
    r = http().post(url + CHAT, json={"messages": USER, "max_tokens": 2}, timeout=10)
    assert r.status_code == 401 and assert_error_body(r)["type"] == "authentication_error"
    for headers in ({"Authorization": "Bearer secret"}, {"authorization": "bearer secret"}, {"X-Api-Key": "secret"}):
        r = http().get(url + "/v1/models", headers=headers, timeout=5)
        assert r.status_code == 200, (headers, r.text)
        assert r.json()["data"][0]["id"]
    model = http().get(url + "/v1/models", headers={"X-Api-Key": "secret"}, timeout=5).json()["data"][0]["id"]
    good = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=30)
    r = good.chat.completions.create(model=model, messages=USER, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    assert [m.id for m in good.models.list()][0] == model
    bad = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=model, messages=USER, max_tokens=4)


# ---- 6. SIGTERM during active streams --------------------------------------------------------

def test_sigterm_during_streams_ends_them_and_exits_cleanly(tmp_path_factory):
    srv = _start(tmp_path_factory, "term", "--parallel", "2", "--ctx", "4096")
    results: dict = {}
    started = [threading.Event(), threading.Event()]

    def stream(k: int):
        body = {"messages": [{"role": "user", "content": f"Stream {k}: tell a story that never ends"}],
                "max_tokens": 4000, "temperature": 0, "stream": True}
        payloads = []
        try:
            with httpx.stream("POST", srv.url + CHAT, json=body,
                              timeout=httpx.Timeout(5.0, read=15.0)) as r:
                results[k] = {"status": r.status_code, "payloads": payloads}
                for data in sse_payloads(r):
                    payloads.append(data)
                    started[k].set()
        except Exception as e:               # a timeout here means the stream hung
            results[k] = {"error": e, "payloads": payloads}
        finally:
            started[k].set()

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(2)]
    try:
        for t in threads:
            t.start()
        assert all(e.wait(10) for e in started), "the streams never started"
        assert wait_until(lambda: all(s["state"] == "processing" for s in get_slots(srv.url)), 5), \
            f"both streams should be running: {get_slots(srv.url)}"
    except BaseException:
        srv.stop()
        raise
    t0 = time.monotonic()
    code = srv.stop()                        # SIGTERM; asserts the process is gone within 20 s
    took = time.monotonic() - t0
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a client stream hung after SIGTERM"
    log = srv.log_path.read_text(errors="replace")
    for k in range(2):
        res = results[k]
        assert "error" not in res, f"stream {k} did not end cleanly: {res['error']!r} " \
                                   f"after {len(res['payloads'])} chunks\n{log[-3000:]}"
        assert res["status"] == 200
        last = res["payloads"][-1]
        if last != "[DONE]":
            err = json.loads(last).get("error")
            assert err and err.get("message"), f"stream {k} ended on {last!r}"
    assert code == 0, f"the server exited with {code} after SIGTERM (took {took:.1f} s)\n{log[-2000:]}"
