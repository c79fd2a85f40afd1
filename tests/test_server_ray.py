"""`g4rt serve --ray`: the options and their errors, the pieces the deployment is made of (the
request carried to a replica, the ingress, routing text, the merged metrics page), without Ray;
and (slow) a real Ray cluster with two replicas of the fixture model behind `g4rt serve --ray`:
answers equal to in-process generation, a conversation staying with its prompt cache, one metrics
page for both replicas, and a replica killed under a request."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import threading
import time

import httpx
import pytest

from g4rt.cli import run
from g4rt.server import ray_serve
from g4rt.server.ray_forward import ForwardedRequest, play, routing_text
from g4rt.server.ray_ingress import IngressApp, Unavailable
from g4rt.server.ray_metrics import MetricsBoard, merge_pages, sample_sum
from server_util import MODEL, free_port, need_fixture, wait_serving

HAVE_RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "ray is not installed (pip install 'g4rt[ray]')"


# ---- the command line ---------------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    """serve_on_ray replaced by a recorder: what `g4rt serve --ray ...` would deploy."""
    calls = []
    monkeypatch.setattr(ray_serve, "serve_on_ray", lambda s, host, port, address, quiet, echo: calls.append(
        (s, host, port, address, quiet)))
    return calls


def test_ray_options_reach_the_deployment(captured):
    model = need_fixture()
    assert run(["serve", str(model), "--ray", "--replicas", "3", "--parallel", "4", "--ctx", "256", "--threads", "2",
                "--ray-address", "10.0.0.1:6379", "--port", "9000", "--api-key", "k", "--alias", "a",
                "--ray-routing", "pow2", "--queue", "7", "-q"]) == 0
    (s, host, port, address, quiet), = captured
    assert (host, port, address, quiet) == ("127.0.0.1", 9000, "10.0.0.1:6379", True)
    assert (s.replicas, s.autoscale, s.parallel, s.ctx, s.threads, s.routing) == (3, None, 4, 256, 2, "pow2")
    assert s.server_config().api_key == "k" and "a" in s.server_config().aliases
    assert s.model == str(model.absolute())
    opts = ray_serve.model_deployment_options(s)
    # a replica takes its slots' worth of requests and as many again waiting; the rest wait in Ray
    assert opts["max_ongoing_requests"] == 8 and opts["num_replicas"] == 3 and opts["max_queued_requests"] == 7
    assert s.server_config().queue == 4                  # so a replica never answers "busy" itself
    assert opts["ray_actor_options"]["num_cpus"] == 2    # as many CPUs as threads
    assert "request_router_config" not in opts           # pow2: Ray's default router


def test_autoscale_options(captured):
    assert run(["serve", str(need_fixture()), "--ray", "--autoscale", "1,4", "--parallel", "2"]) == 0
    s = captured[0][0]
    assert s.autoscale == (1, 4)
    opts = ray_serve.model_deployment_options(s)
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 4, 2)
    assert "num_replicas" not in opts
    assert opts["request_router_config"]["request_router_class"] == "g4rt.server.ray_routing.G4rtPrefixRouter"


@pytest.mark.parametrize("value,needle", [("3", "expected MIN,MAX"), ("a,b", "expected MIN,MAX"),
                                          ("1,2,3", "expected MIN,MAX"), ("4,2", "MIN <= MAX"),
                                          ("0,0", "MAX >= 1"), ("-1,2", "0 <= MIN")])
def test_bad_autoscale_is_a_usage_error(captured, capsys, value, needle):
    assert run(["serve", str(need_fixture()), "--ray", "--autoscale", value]) == 2
    err = capsys.readouterr().err
    assert "--autoscale" in err and needle in err and "Traceback" not in err
    assert not captured


@pytest.mark.parametrize("args,needle", [(["--replicas", "2"], "--replicas only apply with --ray"),
                                         (["--ray-address", "x:1"], "--ray-address only apply with --ray")])
def test_ray_options_need_ray(captured, capsys, args, needle):
    assert run(["serve", str(need_fixture()), *args]) == 1
    assert needle in capsys.readouterr().err and not captured


def test_replicas_and_autoscale_exclude_each_other(captured, capsys):
    assert run(["serve", str(need_fixture()), "--ray", "--replicas", "2", "--autoscale", "1,3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not both" in err and not captured


def test_ray_missing_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` now fails as if absent
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    assert run(["serve", str(need_fixture()), "--ray", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("g4rt: error: --ray needs Ray Serve") and "pip install 'g4rt[ray]'" in err
    assert err.count("\n") == 1


def test_default_paths_never_import_ray():
    code = ("import sys; import g4rt.cli.main, g4rt.server.app, g4rt.server.ray_serve, g4rt.server.ray_ingress, "
            "g4rt.server.ray_forward, g4rt.server.ray_metrics; "
            "from g4rt.cli import run; run(['serve', '--help']); print(sorted(m for m in sys.modules if m == 'ray' "
            "or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "--autoscale MIN,MAX" in out.stdout


def test_builder_arguments():
    s = ray_serve.settings_from_args({"model": "m.gguf", "replicas": "2", "parallel": "4", "alias": "a,b",
                                      "truncate": "true", "max-body": "2MiB", "gpu_layers": "3", "timeout": "30"})
    assert (s.replicas, s.parallel, s.aliases, s.truncate, s.max_body, s.timeout_s) == \
        (2, 4, ("a", "b"), True, 2 << 20, 30.0)
    assert s.load_options == {"gpu_layers": 3}
    for args, needle in [({}, "model=PATH"), ({"model": "m", "replicas": "two"}, "replicas='two'"),
                         ({"model": "m", "colour": "red"}, "unknown argument 'colour'"),
                         ({"model": "m", "autoscale": "5,1"}, "MIN <= MAX"),
                         ({"model": "m", "replicas": "2", "autoscale": "1,2"}, "not both"),
                         ({"model": "m", "routing": "random"}, "prefix, pow2"),
                         ({"model": "m", "parallel": "0"}, "parallel must be at least 1")]:
        with pytest.raises(ray_serve.RayServeError, match=needle):
            ray_serve.settings_from_args(args)


# ---- the pieces, without Ray ------------------------------------------------------------------
def test_routing_text_of_each_api():
    turn1 = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    turn2 = {"messages": turn1["messages"] + [{"role": "assistant", "content": "Hello"},
                                              {"role": "user", "content": [{"type": "text", "text": "More"}]}]}
    t1, t2 = routing_text(json.dumps(turn1).encode()), routing_text(json.dumps(turn2).encode())
    assert t2.startswith(t1) and len(t2) > len(t1) and "More" in t2          # the next turn extends it
    anthropic = routing_text(json.dumps({"system": "S", "messages": [{"role": "user", "content": "x"}]}).encode())
    assert anthropic == "S\x1ex\x1e"
    assert routing_text(b'{"instructions": "I", "input": "question"}') == "I\x1equestion\x1e"
    # two conversations share no leading text for the router to take as one conversation
    other = routing_text(json.dumps({"messages": [{"role": "user", "content": "Owls?"}]}).encode())
    assert other == "Owls?\x1e" and not t1.startswith(other[0])
    assert routing_text(b'{"prompt": ["The sky"]}') == "The sky"
    assert routing_text(b'{"prompt": [1, 2, 3]}') == "1 2 3"
    for body in (b"", b"not json", b"[1, 2]", b'{"model": "m"}', b'{"messages": []}', b"{" * 100000):
        assert routing_text(body) is None


async def _echo_app(scope, receive, send):
    """A plain ASGI app: echoes the body; on /wait streams one chunk, then waits for the client to go."""
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    if scope["path"] != "/wait":
        await send({"type": "http.response.body", "body": scope["method"].encode() + b" " + body})
        return
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    _echo_app.seen = await receive()


def test_play_streams_messages_and_passes_the_disconnect():
    async def main():
        req = ForwardedRequest(method="POST", path="/x", body=b"hello", headers=[(b"host", b"h")])
        got = [m async for m in play(_echo_app, req, replica="R1")]
        assert got[0]["status"] == 200 and (b"x-g4rt-replica", b"R1") in got[0]["headers"]
        assert got[1] == {"type": "http.response.body", "body": b"POST hello", "more_body": False}
        stream = play(_echo_app, ForwardedRequest(method="GET", path="/wait"))
        assert (await stream.__anext__())["type"] == "http.response.start"
        assert (await stream.__anext__())["body"] == b"data: 1\n\n"
        await stream.aclose()                   # what Ray does when the client leaves
        assert _echo_app.seen == {"type": "http.disconnect"}
    asyncio.run(main())


def _call(app, method, path, body=b"", headers=()):
    """One request through an ASGI app: (status, headers dict, body)."""
    async def main():
        sent, chunks = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)
        await app({"type": "http", "method": method, "path": path, "headers": list(headers), "query_string": b""},
                  receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])
    return asyncio.run(main())


def test_ingress_forwards_and_answers_unavailable_in_the_api_shape():
    seen = []

    async def forward(request):
        seen.append(request)
        if request.path == "/v1/messages":
            raise Unavailable("the replica went away")
        if request.path == "/v1/chat/completions":       # dies after the stream began
            yield {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            yield {"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True}
            raise Unavailable("the replica went away")
        async for m in play(_echo_app, request):
            yield m

    async def pages():
        return {}
    app = IngressApp(forward, pages, max_body=10)
    assert _call(app, "POST", "/echo", b'{"prompt": "x"}')[2] == b'POST {"prompt": "x"}'
    assert seen[-1].routing_text is None          # over max_body (10): not parsed, the replica's Guard says 413
    _call(app, "POST", "/echo", b'{"a":1}')
    assert seen[-1].body == b'{"a":1}'
    status, headers, body = _call(app, "POST", "/v1/messages", b"{}")
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert json.loads(body) == {"type": "error", "error": {"type": "overloaded_error",
                                                           "message": "the replica went away"}}
    status, _, body = _call(app, "POST", "/v1/chat/completions", b"{}")
    assert status == 200 and body.startswith(b"data: {}\n\ndata: ")
    assert json.loads(body.split(b"data: ")[-1])["error"]["message"] == "the replica went away"
    # a Content-Length over the limit: the body is not read, the replica answers 413 from the header
    _call(app, "POST", "/echo", b"x" * 50, headers=[(b"content-length", b"50")])
    assert seen[-1].body == b""


def test_metrics_page_of_several_replicas():
    from g4rt.server.metrics import ServerMetrics
    a, b = ServerMetrics(2), ServerMetrics(2)
    for m, n in ((a, 3), (b, 2)):
        for _ in range(n):
            m.record_request("/v1/chat/completions", 200)
        m.ttft.observe(0.3)
    page = merge_pages({"r1": a.render().decode(), "r2": b.render().decode()})
    assert page.count("# TYPE g4rt_requests counter") == 1 and "g4rt_replicas 2" in page
    assert sample_sum(page, "g4rt_requests_total", {"endpoint": "/v1/chat/completions"}) == 5
    assert sample_sum(page, "g4rt_requests_total", {"replica": "r2"}) == 2
    assert sample_sum(page, "g4rt_time_to_first_token_seconds_count") == 2
    assert sample_sum(page, "g4rt_slots") == 4
    now = [0.0]
    board = MetricsBoard(stale_s=10, clock=lambda: now[0])
    board.put("r1", "x")
    now[0] = 5
    board.put("r2", "y")
    assert board.collect() == {"r1": "x", "r2": "y"}
    now[0] = 12                                  # r1 stopped posting: dead or scaled down
    assert board.collect() == {"r2": "y"}


# ---- a real cluster (slow) --------------------------------------------------------------------
CTX = 4096
#: Ray 2.60's own modules use pydantic 1-style Field arguments
RAY_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LONG = 3000          # tokens of the request a replica dies under (~2 s of generation: the kill lands mid-way)


def _msgs(text):
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` (small), then `g4rt serve --ray --ray-address` with 2 replicas on it, and
    this process joined to the cluster as a driver (to find and kill replicas)."""
    if not HAVE_RAY:
        pytest.skip(NO_RAY)
    need_fixture()
    # the cluster, the command and this driver all with Ray's token authentication and one token
    # of their own (not ~/.ray/auth_token: a `ray start` uses that one where it exists, and the
    # clients of an explicit address never assume it)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env, saved = {**os.environ, **auth}, {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    import ray
    ray_bin = str(__import__("pathlib").Path(sys.executable).with_name("ray"))
    gcs, port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("ray")
    env_log = open(logs / "serve.log", "wb")
    proc = None
    try:
        started = subprocess.run([ray_bin, "start", "--head", "--port", str(gcs), "--num-cpus", "4",
                                  "--include-dashboard", "false", "--object-store-memory", str(100 << 20),
                                  "--disable-usage-stats"], capture_output=True, text=True, timeout=120, env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"127.0.0.1:{gcs}"
        proc = subprocess.Popen([sys.executable, "-m", "g4rt", "serve", str(MODEL), "--ray", "--ray-address", address,
                                 "--replicas", "2", "--parallel", "2", "--ctx", str(CTX), "--threads", "1",
                                 "--port", str(port), "-q"], stdout=env_log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_serving(proc, url, logs / "serve.log")
        ray.init(address=address, log_to_driver=False)
        yield url, proc
        proc.terminate()                          # SIGTERM: the command takes its application down, exit 0
        assert proc.wait(60) == 0, (logs / "serve.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)
        env_log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def model():
    """The same model in process (1 thread, as the replicas): the reference answers."""
    import g4rt
    m = g4rt.load(need_fixture(), backend="auto", ctx=CTX, threads=1)
    yield m
    m.engine.close()


def _reference(model, msgs, max_tokens):
    from g4rt.server.output_text import parse_complete
    return parse_complete("".join(model.generate(msgs, max_tokens=max_tokens, chat=True, temperature=0)),
                          parse_tools=False)[0]


def _client(url, retries=0):
    import openai
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=retries, timeout=120)


def _chat(client, msgs, max_tokens):
    """(content, replica that answered, cached prompt tokens)."""
    raw = client.chat.completions.with_raw_response.create(model="g4-dense-Q4_0", messages=msgs,
                                                           max_tokens=max_tokens, temperature=0)
    r = raw.parse()
    return r.choices[0].message.content or "", raw.headers["x-g4rt-replica"], \
        r.usage.prompt_tokens_details.cached_tokens


@pytest.mark.slow
@RAY_WARNINGS
def test_concurrent_clients_get_the_single_server_answers(cluster, model):
    pytest.importorskip("openai")
    url, _ = cluster
    topics = ["rivers", "owls", "comets", "tea", "bridges", "jazz"]
    results, errors = {}, []

    def ask(topic):
        try:
            results[topic] = _chat(_client(url), _msgs(f"Tell me about {topic}."), 24)
        except Exception as e:        # noqa: BLE001  (reported below, with the topic)
            errors.append((topic, e))
    threads = [threading.Thread(target=ask, args=(t,)) for t in topics]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    for topic in topics:
        assert results[topic][0] == _reference(model, _msgs(f"Tell me about {topic}."), 24), topic


def _long_question(head: str) -> list:
    """A first turn of about 1,500 characters, starting with `head`: longer than all the text the
    other tests route, so that after it the other replica holds the least routed text."""
    from server_util import WORDS
    return [{"role": "user", "content": f"{head} " + ", ".join(f"{w} number {i}" for i, w in enumerate(WORDS * 6))
             + ". Which of these is the best?"}]


@pytest.mark.slow
@RAY_WARNINGS
def test_conversations_spread_and_each_stays_with_its_prompt_cache(cluster, model):
    pytest.importorskip("openai")
    url, _ = cluster
    client = _client(url)
    first = {head: _chat(client, _long_question(head), 12) for head in ("Foxes", "Whales")}
    # a new conversation shares nothing with the other: it goes to the replica holding the least
    # routed text, which after the first conversation is the other replica
    assert first["Foxes"][1] != first["Whales"][1], first
    for head, (answer, replica, _) in first.items():
        msgs2 = _long_question(head) + [{"role": "assistant", "content": answer},
                                        {"role": "user", "content": "And then?"}]
        second, replica2, cached = _chat(client, msgs2, 12)
        assert replica2 == replica, head         # routed by prefix to the replica with the cache ...
        assert cached > 100, head                # ... which reused it
        assert second == _reference(model, msgs2, 12), head


def _settled_page(url, timeout=60.0):
    """The merged metrics page once every replica's latest counts are on it: the replicas post
    every POST_EVERY_S, so a page read just after a request may miss it (a baseline must not)."""
    from g4rt.server.ray_metrics import POST_EVERY_S
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        page = httpx.get(url + "/metrics", timeout=10).text
        if page == last and "g4rt_replicas 2" in page and sample_sum(page, "g4rt_busy_slots") == 0:
            return page
        last = page
        time.sleep(POST_EVERY_S * 1.5)
    raise AssertionError(f"the metrics page did not settle within {timeout} s:\n{last}")


@pytest.mark.slow
@RAY_WARNINGS
def test_metrics_page_covers_both_replicas(cluster):
    url, _ = cluster
    from server_util import wait_until

    def page():
        return httpx.get(url + "/metrics", timeout=10).text

    def done(n):
        return sample_sum(page(), "g4rt_requests_total", {"endpoint": "/v1/completions", "status": "200"}) == n
    before = sample_sum(_settled_page(url), "g4rt_requests_total", {"endpoint": "/v1/completions", "status": "200"})
    for i in range(4):
        r = httpx.post(url + "/v1/completions", json={"prompt": f"Count {i}", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200, r.text
    assert wait_until(lambda: done(before + 4), 30, 0.5), page()   # replicas post every 2 s
    assert sample_sum(page(), "g4rt_slots") == 4


@pytest.mark.slow
@RAY_WARNINGS
def test_a_client_that_leaves_cancels_its_generation(cluster):
    url, _ = cluster
    from server_util import wait_until

    def counts():
        page = httpx.get(url + "/metrics", timeout=10).text
        return (sample_sum(page, "g4rt_requests_total", {"endpoint": "/v1/chat/completions", "status": "200"}),
                sample_sum(page, "g4rt_generated_tokens_total"), sample_sum(page, "g4rt_busy_slots"))
    base = _settled_page(url)
    done0 = sample_sum(base, "g4rt_requests_total", {"endpoint": "/v1/chat/completions", "status": "200"})
    generated0 = sample_sum(base, "g4rt_generated_tokens_total")
    # greedy, this prompt runs to max_tokens (the fixture model never ends it)
    body = {"messages": _msgs("Name three colours."), "max_tokens": LONG, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert next(line for line in r.iter_lines() if line.startswith("data: "))
    # gone after its first token: the replica ends the job (counted when its handler returns)
    assert wait_until(lambda: counts()[0] == done0 + 1 and counts()[2] == 0, 30, 0.5), counts()
    # a generation that ran on would have counted its LONG tokens at its end (a cancelled one
    # counts none)
    generated = counts()[1] - generated0
    assert generated < LONG // 2, generated


@pytest.mark.slow
@RAY_WARNINGS
def test_a_killed_replica_is_retried_and_replaced(cluster, model):
    pytest.importorskip("openai")
    import ray
    from ray import serve
    url, _ = cluster
    msgs = _msgs("Name three colours.")
    body = {"model": "g4-dense-Q4_0", "messages": msgs, "max_tokens": LONG, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        victim = r.headers["x-g4rt-replica"]
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))           # generating
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        rest = [line for line in lines if line.startswith("data: ")]
    assert "data: [DONE]" not in rest, "the stream finished before the replica died"
    # the stream ends with an error event, as the server's own mid-stream errors
    assert "went away" in json.loads(rest[-1][6:])["error"]["message"], rest[-3:]
    # a client that retries gets its answer (the openai client retries 503s itself)
    client = _client(url, retries=5)
    answer, replica, _ = _chat(client, msgs, LONG)
    assert replica != victim and answer == _reference(model, msgs, LONG)
    for i in range(3):                                                            # the survivor keeps serving
        assert _chat(client, _msgs(f"Question {i}?"), 4)[1] != victim
    # and Ray starts a new replica in the dead one's place

    def replicas_running():
        dep = serve.status().applications["g4rt"].deployments["G4rtModel"]
        return dep.replica_states.get("RUNNING", 0) == 2 and dep.status == "HEALTHY"
    from server_util import wait_until
    assert wait_until(replicas_running, 120, 1.0), serve.status()
