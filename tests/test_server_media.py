"""Images in requests on `g4rt serve --mmproj`: an OpenAI chat request with an image (a data: URL)
answers as transformers' float64 reference does on the multimodal fixture (same prompt tokens, same
greedy tokens); the same image through the Responses, Anthropic and Ollama APIs gives the same text;
a second image is not confused with the first (no prompt-cache reuse of media rows); and the media
policy and bad media give clear 4xx errors without disturbing the server."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
ollama = pytest.importorskip("ollama")

from server_util import ServerProcess  # noqa: E402

MM = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures-mm"
MODEL, MMPROJ = MM / "models" / "g4u-mm-F32.gguf", MM / "models" / "mmproj-g4u-mm-F32.gguf"
QUESTION = "What is shown in this image?"
N = 6


def b64(name: str) -> str:
    return base64.b64encode((MM / "media" / name).read_bytes()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not MODEL.is_file() or not MMPROJ.is_file():
        pytest.skip(f"{MM} is absent (the multimodal fixtures are not beside the project)")
    # --image-min-tokens 1: images at their own size (llama.cpp's rule), as the references were made
    srv = ServerProcess(MODEL, "--mmproj", str(MMPROJ), "--image-min-tokens", "1", "--ctx", "512", "--parallel", "2",
                        log_dir=tmp_path_factory.mktemp("media")).wait_ready(120)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(oai, image: str, text: str = QUESTION, n: int = N, **kw):
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                                         {"type": "text", "text": text}]}]
    return oai.chat.completions.create(model=MODEL.stem, messages=msgs, max_tokens=n, temperature=0, **kw)


def test_an_openai_chat_request_with_an_image_answers_as_the_reference(oai):
    ref = np.load(MM / "ref" / "g4u-mm-F32.exact.npz")
    ids, greedy = ref["ids_4"], ref["greedy_4"][:N]        # prompt 4: chat-image, img_e.png
    r = chat(oai, b64("img_e.png"), logprobs=True)
    assert r.usage.prompt_tokens == len(ids)
    from g4rt.gguf.reader import GGUFFile
    from g4rt.text.tokenizer import load_tokenizer
    tok = load_tokenizer(GGUFFile(MODEL))
    assert r.choices[0].message.content == tok.decode([int(t) for t in greedy])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == N


def test_the_same_image_gives_the_same_text_on_every_api(server, oai):
    img = b64("img_e.png")
    want = chat(oai, img).choices[0].message.content
    resp = oai.responses.create(model=MODEL.stem, max_output_tokens=N, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": f"data:image/png;base64,{img}"},
                                     {"type": "input_text", "text": QUESTION}]}])
    claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0).messages.create(
        model=MODEL.stem, max_tokens=N, extra_body={"temperature": 0}, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": img}},
            {"type": "text", "text": QUESTION}]}])
    llama = ollama.Client(host=server.url).chat(model=MODEL.stem, options={"temperature": 0, "num_predict": N},
                                                 messages=[{"role": "user", "content": QUESTION, "images": [img]}])
    assert resp.output_text == want
    assert "".join(b.text for b in claude.content if b.type == "text") == want
    assert llama.message.content == want


def test_a_different_image_is_not_taken_from_the_cache(oai):
    a = chat(oai, b64("img_e.png"), "Describe.").choices[0].message.content
    b = chat(oai, b64("img_a.png"), "Describe.").choices[0].message.content
    assert a != b
    again = chat(oai, b64("img_e.png"), "Describe.")
    assert again.choices[0].message.content == a


def test_bad_media_and_the_media_policy_are_clear_4xx(server, oai):
    def status(url):
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "hi"}]}]
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                       json={"messages": msgs, "max_tokens": 2})
        return r.status_code, r.json()["error"]["message"]
    code, msg = status("data:image/png;base64," + base64.b64encode(b"not a png at all").decode())
    assert code == 400 and "image" in msg.lower()
    code, msg = status("https://example.com/cat.png")
    assert code == 403 and "--allow-remote-media" in msg
    code, msg = status("/etc/passwd")
    assert code == 403 and "--media-dir" in msg
    code, msg = status("data:image/png;base64,@@@")
    assert code == 400 and "base64" in msg
    # the server is unharmed: the reference answer again
    assert chat(oai, b64("img_e.png")).usage.completion_tokens == N


def test_the_next_turn_reuses_the_cached_image_and_answers_as_a_cold_start(oai, tmp_path):
    """A follow-up turn with the same image keeps the KV of the image's rows (keyed by its soft
    tokens, as llama-server keys by the media's hash) and answers as the model does from scratch."""
    img = b64("img_e.png")
    first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}},
                                          {"type": "text", "text": "Describe."}]}]
    a = oai.chat.completions.create(model=MODEL.stem, messages=first, max_tokens=4, temperature=0)
    turn2 = first + [{"role": "assistant", "content": a.choices[0].message.content},
                     {"role": "user", "content": "And the colours?"}]
    b = oai.chat.completions.create(model=MODEL.stem, messages=turn2, max_tokens=N, temperature=0)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert cached > 64, cached                 # past the image's 64 soft tokens
    # the same conversation from scratch, in process
    import g4rt
    m = g4rt.load(str(MODEL), backend="cpu", mmproj=str(MMPROJ), image_min_tokens=1)
    try:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
                turn2[1], turn2[2]]
        ids = m.encode_prompt(msgs, chat=True)
        ids, rows, _ = m.media_prompt(ids, images=[(MM / "media" / "img_e.png").read_bytes()])
        assert len(ids) == b.usage.prompt_tokens
        toks = list(m.generate_ids(ids, max_tokens=N, media=rows))
        assert b.choices[0].message.content == m.tokenizer.decode(toks)
    finally:
        m.close()
