"""Media in batched generation: `g4rt run --batch FILE --image A --audio B` (and
`Model.generate_many(prompts, images=, audio=)`) gives every prompt of the batch the same items,
each placed as for a single prompt (at the prompt's markers, or before its text), encodes each item
once, prefills each media prompt alone and decodes it with the others: every output equals the
single-prompt run with the same media, token for token (greedy), with more prompts than slots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_multimodal import HAVE_MM, MM, MMPROJ, REPO, model_path

pytestmark = pytest.mark.skipif(not HAVE_MM, reason="fixtures folder ../shared/fixtures-mm is absent "
                                                    "(set G4RT_FIXTURES_MM to point at it)")
IMG, WAV = MM / "media" / "img_a.png", MM / "media" / "aud_a.wav"
PROMPTS = ["<|image|>What is in this picture?", "Describe the colours.", "Say hi <|image|> now", "A cat"]
N = 12


@pytest.fixture(scope="module")
def mm():
    """The Q4_0 fixture at the default precision (the native CPU's integer paths), 2 slots."""
    import g4rt
    m = g4rt.load(model_path("g4u-mm-Q4_0-pure"), backend="cpu", ctx=256, slots=2, threads=2, mmproj=MMPROJ,
                  image_min_tokens=1)
    yield m
    m.close()


def _alone(m, prompt, images=(), audio=(), n=N):
    ids, rows, summary = m.media_prompt(m.encode_prompt(prompt), images, audio)
    return list(m.generate_ids(ids, n, media=rows)), summary


@pytest.mark.parametrize("images,audio", [([IMG], []), ([IMG], [WAV])], ids=["image", "image+audio"])
def test_each_batched_output_is_the_single_prompt_output(mm, images, audio):
    from g4rt.slots import BatchStats
    stats = BatchStats()
    got = mm.generate_many(PROMPTS, N, images=images, audio=audio, stats=stats)
    for prompt, r in zip(PROMPTS, got):
        want, summary = _alone(mm, prompt, images, audio)
        assert r.tokens == want and len(want) == N, prompt
        assert r.media == summary and r.text == mm.tokenizer.decode(want)
    assert got[0].media.startswith("1 image (36 tokens)")
    assert stats.mean_batch > 1          # the media prompts did decode together
    # the image changes the answers (the soft tokens were used, not the placeholder ids)
    plain = mm.generate_many(["Describe the colours."], N)
    assert plain[0].tokens != got[1].tokens and plain[0].media == ""


def test_batch_media_errors_name_the_prompt(mm):
    from g4rt.errors import ContextOverflowError
    from g4rt.mmproj.errors import MediaInputError
    with pytest.raises(MediaInputError, match=r"^prompt 2: the prompt has 2 <\|image\|> markers but 1 image"):
        mm.generate_many(["<|image|>a", "<|image|> <|image|>b"], 2, images=[IMG])
    with pytest.raises(MediaInputError, match=r"^prompt 1: .*marker.* 0 image"):
        mm.generate_many(["<|image|>a"], 2)              # a marker without its media
    with pytest.raises(ContextOverflowError, match=r"^prompt 1 has \d+ tokens with its media \(6 images"):
        mm.generate_many(["x " * 50], 2, images=[IMG] * 6)


def _g4rt(*args):
    return subprocess.run([sys.executable, "-m", "g4rt", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_cli_run_batch_with_an_image_prints_the_single_run_texts(tmp_path):
    common = [model_path("g4u-mm-F32"), "--mmproj", MMPROJ, "--image", IMG, "--image-min-tokens", "1", "-n", N,
              "--ctx", "256", "-t", "2"]
    batch = tmp_path / "prompts.txt"
    batch.write_text("\n".join(PROMPTS[:3]) + "\n")
    r = _g4rt("run", *common, "--batch", batch, "--parallel", "2")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["prompt"] for x in lines] == PROMPTS[:3]
    assert all(x["media"] == "1 image (36 tokens)" and x["tokens"] == N for x in lines), lines
    for x in lines:
        single = _g4rt("run", *common, "-p", x["prompt"], "-q")
        assert single.returncode == 0, single.stderr
        assert single.stdout == x["text"] + "\n", x["prompt"]
    bad = tmp_path / "bad.txt"
    bad.write_text("<|image|> one\n<|image|><|image|> two\n")
    r = _g4rt("run", *common, "--batch", bad, "-q")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "g4rt: error: prompt 2: the prompt has 2 <|image|> markers but 1 image was given"]
