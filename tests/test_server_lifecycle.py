"""The server while its model loads, when loading fails, and the serve command's start errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from server_util import MODEL, free_port, need_fixture  # noqa: E402


def _app(loader):
    from g4rt.server.app import ServerConfig, ServerState, create_app
    from g4rt.server.metrics import ServerMetrics
    state = ServerState(ServerConfig(model_id="m"), ServerMetrics(1))
    return create_app(state, loader), state


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_health_is_503_while_loading_then_200():
    import g4rt
    gate = threading.Event()

    def loader():
        gate.wait(30)
        return g4rt.load(need_fixture(MODEL), backend="numpy", ctx=64)

    app, state = _app(loader)
    with TestClient(app) as http:            # runs the lifespan: loading starts in a thread
        r = http.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
        assert r.headers["retry-after"]
        gate.set()
        _wait(lambda: http.get("/health").status_code == 200)
        assert http.get("/health").json() == {"status": "ok"}
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    # leaving the context ran the shutdown: the scheduler takes no more work
    from g4rt.server.scheduler import ShuttingDownError
    with pytest.raises(ShuttingDownError):
        state.scheduler.submit(None)


def test_failed_load_is_reported():
    from g4rt.errors import ModelFileError

    def loader():
        raise ModelFileError("broken.gguf: not a GGUF file")

    app, state = _app(loader)
    with TestClient(app) as http:
        _wait(lambda: state.load_error is not None)
        r = http.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "error" and "not a GGUF" in r.json()["message"]
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]


def test_serve_exits_non_zero_on_a_bad_model(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    r = subprocess.run([sys.executable, "-m", "g4rt", "serve", str(bad), "--port", str(free_port()), "-q"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "g4rt: error: the model failed to load" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "g4rt", "serve", str(tmp_path / "missing.gguf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_a_port_in_use():
    import socket
    need_fixture(MODEL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "g4rt", "serve", str(MODEL), "--port", str(port), "-q"],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"could not listen on 127.0.0.1:{port}" in r.stderr


@pytest.mark.parametrize("origins", [(), ("http://ui.example",)])
def test_cors_only_for_the_named_origins(origins):
    from g4rt.server.app import ServerConfig, ServerState, create_app
    from g4rt.server.metrics import ServerMetrics
    state = ServerState(ServerConfig(model_id="m", cors_origins=origins, api_key="k"), ServerMetrics(1))
    http = TestClient(create_app(state))
    pre = http.options("/v1/models", headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "GET",
                                              "Access-Control-Request-Headers": "authorization"})
    r = http.get("/v1/models", headers={"Origin": "http://ui.example", "Authorization": "Bearer k"})
    other = http.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
    assert r.status_code == 200 and "access-control-allow-origin" not in other.headers
    if origins:
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example"
        assert r.headers["access-control-allow-origin"] == "http://ui.example"
    else:
        assert "access-control-allow-origin" not in pre.headers and "access-control-allow-origin" not in r.headers
