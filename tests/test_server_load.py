"""`g4rt serve` under load and abuse: a real server process per configuration (tiny fixture model).

- many concurrent streaming clients (the official `openai` client) get exactly the text each
  request gets alone, with nothing lost and no cross-talk between slots;
- a full wait queue answers 503 with Retry-After; the accepted requests still complete;
- a client that goes away (mid-stream, by timeout, or while still queued) frees its slot at once;
- the API key guards every endpoint but /health;
- SIGTERM during active streams ends every stream and the process, promptly and cleanly.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server_util import (WORDS, ServerProcess, all_idle, assert_error_body, assert_settled, get_metrics,
                         get_slots, http, metric, model_id, sse_payloads, start_server, stop_server,
                         wait_until)

MAX_TOKENS = 24
USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


# ---- 1. concurrent streaming clients ---------------------------------------------------------

@pytest.fixture(scope="module")
def load_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "load", "--parallel", "4", "--queue", "64", "--ctx", "512")
    yield srv
    stop_server(srv)


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
    srv = start_server(tmp_path_factory, "one", "--parallel", "1", "--queue", "2", "--ctx", "2048")
    yield srv
    stop_server(srv)


def test_queue_overflow_answers_503_with_retry_after(one_slot_server):
    """1 slot and 2 queue places under 8 concurrent requests: 3 are answered, the others get 503 with
    Retry-After. Each request fills the context with ignore_eos (llama-server's), so the three served
    ones take thousands of decode steps one after another: the other five arrive while they run on
    any host (the burst starts at a barrier), and none can end early on an end token."""
    srv = one_slot_server
    prompt = "Overflow: once upon a time"
    budget = 2048 - _prompt_tokens(srv.url, prompt) - 1
    before = get_metrics(srv.url)
    barrier = threading.Barrier(8, timeout=30)

    def request(k: int):
        body = {"prompt": prompt, "max_tokens": budget, "temperature": 0, "ignore_eos": True, "user": f"u{k}"}
        with httpx.Client(timeout=120) as c:
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
    texts = set()
    for r in done:
        body = r.json()
        assert body["choices"][0]["finish_reason"] == "length", body
        assert body["usage"]["completion_tokens"] == budget, body["usage"]
        texts.add(body["choices"][0]["text"])
    assert len(texts) == 1, "the same greedy request gave different texts"
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
    # a request that ran to its end holds budget - 1 new rows (its last token is never fed back)
    assert end - n_prompt < budget - 1, f"all {budget} tokens were decoded: the request ran to its end after {what}"
    # what the slot may still decode while the server notices (one poll of the ASGI channel and
    # the step in flight): well under what it decoded while the client waited
    allowed = max(16.0, 0.5 * before)
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


# ---- 5. API key ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "key", "--api-key", "secret", "--ctx", "256")
    yield srv
    stop_server(srv)


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
    srv = start_server(tmp_path_factory, "term", "--parallel", "2", "--ctx", "4096")
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
