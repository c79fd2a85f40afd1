"""Images through `g4rt serve --ray --mmproj`: the media policy (--media-dir, --allow-remote-media,
--max-media) reaches the replicas, which parse each request's media as `g4rt serve` does.

Without Ray: the options and the builder's arguments land in RaySettings and in the server config
each replica builds. Marked slow (a Ray cluster with one replica of the multimodal fixture): an
OpenAI chat request with an image (a data: URL) answers as transformers' float64 reference does,
a path inside --media-dir is taken, and a path outside it and an item over --max-media get the
local server's own 4xx JSON."""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from g4rt.cli import run
from g4rt.server import ray_serve
from server_util import ServerProcess, free_port, wait_serving

HAVE_RAY = importlib.util.find_spec("ray") is not None
MM = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures-mm"
MODEL, MMPROJ = MM / "models" / "g4u-mm-F32.gguf", MM / "models" / "mmproj-g4u-mm-F32.gguf"
N = 6
MAX_MEDIA = 64 << 10          # over every fixture image (22 KB at most), under the oversize item
#: Ray 2.60's own modules use pydantic 1-style Field arguments
RAY_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def need_mm():
    if not MODEL.is_file() or not MMPROJ.is_file():
        pytest.skip(f"{MM} is absent (the multimodal fixtures are not beside the project)")


# ---- the options, without Ray -------------------------------------------------------------------
@pytest.fixture
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_serve, "serve_on_ray", lambda s, host, port, address, quiet, echo: calls.append(s))
    return calls


def test_the_media_policy_reaches_the_replicas_config(captured, tmp_path):
    need_mm()
    assert run(["serve", str(MODEL), "--ray", "--mmproj", str(MMPROJ), "--media-dir", str(tmp_path),
                "--allow-remote-media", "--max-media", "64K", "-q"]) == 0
    s, = captured
    media = s.server_config().media            # what each replica's app parses requests with
    assert (media.media_dir, media.allow_remote, media.max_bytes) == (tmp_path.absolute(), True, 64 << 10)
    assert s.load_options["mmproj"] == str(MMPROJ)
    captured.clear()
    assert run(["serve", str(MODEL), "--ray", "-q"]) == 0          # defaults: the local server's
    media = captured[0].server_config().media
    assert (media.media_dir, media.allow_remote, media.max_bytes) == (None, False, 20 << 20)


def test_builder_media_arguments(tmp_path):
    s = ray_serve.settings_from_args({"model": "m.gguf", "mmproj": "mm.gguf", "media-dir": str(tmp_path),
                                      "allow_remote_media": "yes", "max_media": "1MiB"})
    media = s.server_config().media
    assert (media.media_dir, media.allow_remote, media.max_bytes) == (tmp_path, True, 1 << 20)
    assert s.load_options == {"mmproj": "mm.gguf"}
    with pytest.raises(ray_serve.RayServeError, match="max_media='lots'"):
        ray_serve.settings_from_args({"model": "m", "max_media": "lots"})
    with pytest.raises(ray_serve.RayServeError, match="allow_remote_media='maybe'"):
        ray_serve.settings_from_args({"model": "m", "allow_remote_media": "maybe"})


# ---- a real cluster (slow) ----------------------------------------------------------------------
def _flags(media_dir: Path) -> list[str]:
    # --image-min-tokens 1: images at their own size (llama.cpp's rule), as the references were made
    return ["--mmproj", str(MMPROJ), "--image-min-tokens", "1", "--ctx", "512", "--parallel", "1",
            "--threads", "1", "--media-dir", str(media_dir), "--max-media", str(MAX_MEDIA)]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    shutil.copy(MM / "media" / "img_e.png", d / "img_e.png")
    return d


def _wait_port(port: int, proc, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} not listening after {timeout} s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory, media_dir):
    """A Ray head of its own (`ray start --head --block` in a session of its own, its own token;
    taken down by its process group, so that no other Ray on the machine is touched), then
    `g4rt serve --ray --ray-address` with one replica of the multimodal fixture and a media policy."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'g4rt[ray]')")
    need_mm()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    gcs, port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("ray")
    log = open(logs / "serve.log", "wb")
    head_log = open(logs / "head.log", "wb")
    head = proc = None
    try:
        head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(gcs), "--num-cpus", "2",
                                 "--include-dashboard", "false", "--object-store-memory", str(100 << 20),
                                 "--disable-usage-stats"], stdout=head_log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        _wait_port(gcs, head, 120, "ray start --head")
        proc = subprocess.Popen([sys.executable, "-m", "g4rt", "serve", str(MODEL), "--ray", "--ray-address",
                                 f"127.0.0.1:{gcs}", "--replicas", "1", *_flags(media_dir), "--port", str(port), "-q"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_serving(proc, url, logs / "serve.log")
        yield url
        proc.terminate()                # SIGTERM: the command takes its application down, exit 0
        assert proc.wait(60) == 0, (logs / "serve.log").read_text()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if head is not None:
            head.terminate()            # --block: ray start stops the processes it started
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(head.pid, signal.SIGKILL)      # whatever of its session is left
            except ProcessLookupError:
                pass
        log.close()
        head_log.close()


@pytest.fixture(scope="module")
def local_url(tmp_path_factory, media_dir):
    """`g4rt serve` with the same options, no Ray: the answers to match."""
    need_mm()
    srv = ServerProcess(MODEL, *_flags(media_dir), log_dir=tmp_path_factory.mktemp("local")).wait_ready(120)
    yield srv.url
    srv.stop()


def _chat(url: str, image_url: str) -> httpx.Response:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": "What is shown in this image?"}]}]
    return httpx.post(url + "/v1/chat/completions", timeout=120,
                      json={"model": MODEL.stem, "messages": msgs, "max_tokens": N, "temperature": 0})


@pytest.mark.slow
@RAY_WARNINGS
def test_an_image_through_ray_answers_as_the_reference_and_the_policy_holds(ray_url, local_url, media_dir):
    from g4rt.gguf.reader import GGUFFile
    from g4rt.text.tokenizer import load_tokenizer
    ref = np.load(MM / "ref" / "g4u-mm-F32.exact.npz")       # prompt 4: chat-image, img_e.png
    want = load_tokenizer(GGUFFile(MODEL)).decode([int(t) for t in ref["greedy_4"][:N]])
    png = (media_dir / "img_e.png").read_bytes()
    r = _chat(ray_url, "data:image/png;base64," + base64.b64encode(png).decode())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(ref["ids_4"])
    assert body["choices"][0]["message"]["content"] == want and body["usage"]["completion_tokens"] == N
    # --media-dir reached the replica: a path inside it is read there (refused without the policy)
    r = _chat(ray_url, str(media_dir / "img_e.png"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want
    # a path outside it, and an item over --max-media: the local server's answer, byte for byte
    oversize = "data:image/png;base64," + base64.b64encode(os.urandom(MAX_MEDIA + 1024)).decode()
    for image_url, status in (("/etc/passwd", 403), (oversize, 413)):
        got, local = _chat(ray_url, image_url), _chat(local_url, image_url)
        assert (got.status_code, local.status_code) == (status, status), (got.text, local.text)
        assert got.json() == local.json() and "error" in got.json()
        assert got.headers["content-type"].startswith("application/json")
