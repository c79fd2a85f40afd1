"""`g4rt serve` against malformed and hostile requests: a barrage of them gets 4xx JSON errors, never
a 5xx or a hang, and leaves the server answering exactly as before (a real server process on the
tiny fixture model)."""

from __future__ import annotations

import json
import random
import re

import httpx
import pytest

from server_util import (WORDS, assert_error_body, assert_settled, get_metrics, http, start_server,
                         stop_server, wait_until)


# ---- 4. malformed and hostile requests --------------------------------------------------------

HOSTILE_CTX = 128
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "hostile", "--parallel", "2", "--queue", "8", "--ctx", str(HOSTILE_CTX),
                 "--max-body", "64KiB")
    yield srv
    stop_server(srv)


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
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}}]}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
    ("messages", [{"role": 5, "content": "x"}]), ("messages", [{"role": "user", "content": "x", "name": 5}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]),
    ("messages", [{"role": "assistant", "tool_calls": "f"}]),
    ("messages", [{"role": "user"}]), ("messages", [{"role": "user", "content": None}]),
    ("messages", [{"role": "system", "content": "x"}, {"role": "user"}]), ("messages", [{"role": "assistant"}]),
    ("messages", [{"role": "tool", "tool_call_id": "1"}]),
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


def test_a_message_without_content_is_refused_naming_it(hostile_server):
    """OpenAI and llama-server answer 400 for a user message with no content (an empty prompt
    would otherwise be answered 200); the error names the message. An assistant turn that only
    calls tools needs none."""
    srv = hostile_server
    r = http().post(srv.url + CHAT, json={"messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user"}], "max_tokens": 2})
    assert r.status_code == 400, r.text
    err = assert_error_body(r, "no content")
    assert err["param"] == "messages.1" and "user message needs content" in err["message"], err
    calls_only = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                              "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"}], "max_tokens": 2}
    assert http().post(srv.url + CHAT, json=calls_only).status_code == 200
    assert_settled(srv)
