"""A real `g4rt serve` process on a free localhost port, for the server tests."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
MODEL = FIXTURES / "models" / "g4-dense-Q4_0.gguf"
#: words the load tests build prompts from
WORDS = ["cats", "rivers", "volcanoes", "jazz", "bridges", "comets", "tea", "glaciers", "owls",
         "lighthouses", "origami", "tides", "deserts", "violins", "bees", "castles", "fog"]


def need_fixture(path: Path = MODEL) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared fixtures folder is not beside the project)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m g4rt serve MODEL ...` with its stderr in a log file; `url` once healthy."""

    def __init__(self, model: Path, *args: str, log_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "g4rt", "serve", str(model), "--port", str(self.port), "-q", *args]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                r = httpx.get(self.url + "/health", timeout=1.0)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server was not healthy within {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server did not stop within {timeout} s after {sig!r}:\n{self.logs()}")
        self.log.close()
        return self.proc.returncode


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value from a Prometheus text page (0 when absent)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


# ---- helpers of the load and abuse tests ------------------------------------------------------

def start_server(tmp_path_factory, name: str, *args: str) -> ServerProcess:
    """A server on the fixture model, ready; its logs in a temporary folder named `name`."""
    need_fixture()
    return ServerProcess(MODEL, *args, log_dir=tmp_path_factory.mktemp(name)).wait_ready()


def stop_server(srv: ServerProcess) -> None:
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


def wait_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    """Until GET /health answers 200 (a `g4rt serve` started by hand, e.g. with --ray); fails
    with the server's log when it exits or does not come up in time."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"not serving after {timeout:g} s:\n" + log.read_text()
        time.sleep(0.5)
