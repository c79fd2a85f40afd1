"""Media preprocessing (g4rt.media): decoding, the token budget, patches and frames.

The fixtures' pixel_values / positions / audio (transformers 5.23's own output, ../shared/fixtures-mm)
must come out bit for bit; the resize targets are checked against numbers worked out by hand from
transformers' and llama.cpp's rules (each case's arithmetic is in its comment); every bad input must
raise MediaError naming the problem, and nothing else."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import FIXTURES
from g4rt.errors import G4rtError
from g4rt.media import audio as A
from g4rt.media import image as I
from g4rt.media.audio import audio_frames, audio_sha256, load_audio, log_mel
from g4rt.media.budget import target_size
from g4rt.media.errors import MediaError
from g4rt.media.image import load_image, prepare_image

MM = FIXTURES.parent / "fixtures-mm"
HAVE_MM = (MM / "MANIFEST.json").is_file()
NEED_MM = pytest.mark.skipif(not HAVE_MM, reason=f"{MM} (the multimodal fixtures) is absent")


# ---- helpers ---------------------------------------------------------------------------------
def encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, fmt, **kw) if mode else Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with one empty IDAT: nothing to decode."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def refused(fn, *args, reason: str, words: tuple[str, ...] = (), **kw) -> MediaError:
    with pytest.raises(MediaError) as info:
        fn(*args, **kw)
    e = info.value
    assert isinstance(e, G4rtError)
    assert e.reason == reason, f"reason {e.reason!r} ({e}), wanted {reason!r}"
    for w in words:
        assert w in str(e), f"{w!r} not in the message {str(e)!r}"
    return e


RNG = np.random.default_rng(24)
PICTURE = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


# ---- the fixtures, bit for bit ---------------------------------------------------------------
def fixture_media():
    """(prompt i, media k, file name) for every medium in the dev prompts."""
    prompts = json.loads((MM / "prompts-mm.json").read_text())
    return [(i, k, m) for i, p in enumerate(prompts) for k, m in enumerate(p["media"])]


@NEED_MM
def test_fixture_images_come_out_bit_for_bit():
    ref = np.load(MM / "ref" / "g4u-mm-F32.exact.npz")
    images = [(i, k, m) for i, k, m in fixture_media() if m.endswith(".png")]
    assert len(images) == 5
    for i, k, m in images:
        rgb = load_image(MM / "media" / m)
        assert rgb.dtype == np.uint8 and np.array_equal(rgb, ref[f"image_{i}_{k}"]), m
        want_pv, want_pos = ref[f"pixel_values_{i}_{k}"], ref[f"image_position_ids_{i}_{k}"]
        n = len(want_pv)
        # three honest ways to leave the fixture's size alone: no resize at all; transformers' rule
        # with the budget equal to the image's own token count (its only fixed point); llama.cpp's
        # rule with min 1 (how the fixtures' llama.cpp reference ran), default max 280
        for kw in ({"resize": False}, {"max_tokens": n}, {"min_tokens": 1}):
            p = prepare_image(rgb, patch=12, **kw)
            assert not p.resized, (m, kw)
            assert p.pixel_values.dtype == np.float32 and p.positions.dtype == np.int32
            assert np.array_equal(p.pixel_values, want_pv), (m, kw)
            assert np.array_equal(p.positions, want_pos), (m, kw)
            assert p.n_tokens == n == p.rows * p.cols


@NEED_MM
def test_fixture_images_are_resized_by_the_default_budget():
    """With transformers' default of 280 tokens every fixture image would be scaled up (why the
    fixtures bypassed the resize). Grids by hand, patch 12, target 280*144 = 40320 px:
    72x72: f = sqrt(40320/5184) = 2.7889, 72f = 200.8 -> 16 patches;  48x48: f = 4.1833, 200.8 -> 16;
    60x84: f = sqrt(8) = 2.8284, 169.7 -> 14, 237.6 -> 19;  48x72: f = 3.4157, 164.0 -> 13, 245.9 -> 20;
    96x96: f = 2.0917, 200.8 -> 16."""
    want = {"img_a.png": (16, 16), "img_b.png": (16, 16), "img_c.png": (14, 19), "img_d.png": (13, 20),
            "img_e.png": (16, 16)}
    for m, grid in want.items():
        p = prepare_image(load_image(MM / "media" / m), patch=12)
        assert p.resized and (p.rows, p.cols) == grid, m
        assert p.pixel_values.shape == (grid[0] * grid[1], 432)


@NEED_MM
def test_fixture_audio_comes_out_bit_for_bit():
    ref = np.load(MM / "ref" / "g4u-mm-F32.exact.npz")
    clips = [(i, k, m) for i, k, m in fixture_media() if m.endswith(".wav")]
    tokens = {"aud_a.wav": 25, "aud_b.wav": 12}  # 16000 and 7680 samples / 640
    assert {m for _, _, m in clips} == set(tokens)
    for i, k, m in clips:
        x = load_audio(MM / "media" / m)
        assert x.dtype == np.float32 and np.array_equal(x, ref[f"audio_{i}_{k}"]), m
        frames = audio_frames(x)
        assert frames.shape == (tokens[m], 640) and frames.dtype == np.float32
        assert np.array_equal(frames.reshape(-1), x)  # both lengths are whole frames


# ---- the token budget ------------------------------------------------------------------------
# (H, W, patch, max_tokens) -> (H', W'); transformers' rule: f = sqrt(max*patch^2 / (H*W)),
# sides floor(f*side/patch)*patch; a side flooring to 0 becomes one patch, the other floor(long/short)
# patches capped at max_tokens.
FILL_CASES = [
    # 72x72 p12 280: f = sqrt(40320/5184) = 2.78887, 200.80/12 = 16.73 -> 16 -> 192 (256 tokens)
    ((72, 72, 12, 280), (192, 192)),
    # 72x72 p12 36: f = sqrt(5184/5184) = 1, 72/12 = 6 -> kept (36 tokens)
    ((72, 72, 12, 36), (72, 72)),
    # 60x84 p12 35: f = sqrt(5040/5040) = 1 -> kept (35)
    ((60, 84, 12, 35), (60, 84)),
    # 512x512 p48 280: f = sqrt(645120/262144) = 1.56873, 803.19/48 = 16.73 -> 768 (256; llama.cpp 121)
    ((512, 512, 48, 280), (768, 768)),
    # 2000x20 p48 280: f = sqrt(645120/40000) = 4.01597, h 8031.9/48 = 167.33 -> 8016, w 80.32/48 = 1.67 -> 48
    ((2000, 20, 48, 280), (8016, 48)),
    ((20, 2000, 48, 280), (48, 8016)),
    # 2000x2 p48 280: f = 12.6996, w 25.4/48 -> 0: w = 48, h = min(floor(2000/2)=1000, 280)*48 = 13440
    ((2000, 2, 48, 280), (13440, 48)),
    # 10x10 p48 280: f = 80.3199, 803.2/48 = 16.73 -> 768: tiny images are scaled up to the budget
    ((10, 10, 48, 280), (768, 768)),
    # 4000x3000 p48 280: f = sqrt(645120/1.2e7) = 0.231862, h 927.45/48 = 19.32 -> 912, w 695.59/48 = 14.49 -> 672
    ((4000, 3000, 48, 280), (912, 672)),
    # 1080x1920 p48 1120: f = sqrt(2580480/2073600) = 1.115546, h 1204.8/48 = 25.10 -> 1200, w 2141.8/48 = 44.62 -> 2112
    ((1080, 1920, 48, 1120), (1200, 2112)),
    # 1080x1920 p48 70: f = sqrt(161280/2073600) = 0.278887, h 301.2/48 = 6.27 -> 288, w 535.5/48 = 11.16 -> 528
    ((1080, 1920, 48, 70), (288, 528)),
]


@pytest.mark.parametrize("args,want", FILL_CASES, ids=[f"{a[0]}x{a[1]}p{a[2]}t{a[3]}" for a, _ in FILL_CASES])
def test_transformers_budget_rule(args, want):
    h, w, patch, max_tokens = args
    assert target_size(h, w, patch, max_tokens=max_tokens) == want


# llama.cpp's rule (min_tokens given): sides rounded half-up to multiples of patch (at least one patch);
# scaled down (floor) only above max, up (ceil) only below min; capped at max_tokens.
FIT_CASES = [
    # 72x72 p12 [1, 280]: 6x6 = 36 tokens, within -> kept
    ((72, 72, 12, 1, 280), (72, 72)),
    # 72x72 p12 [70, 280]: 36 < 70: beta = sqrt(10080/5184) = 1.39443, 100.40/12 = 8.37 -> ceil 9 -> 108
    ((72, 72, 12, 70, 280), (108, 108)),
    # 100x100 p48 [1, 280]: 100/48 = 2.08 -> 2 -> 96 (4 tokens; the fill rule would give 768)
    ((100, 100, 48, 1, 280), (96, 96)),
    # 30x50 p12 [1, 280]: 30/12 = 2.5 rounds up to 3 (C's round, not Python's) -> 36; 50/12 = 4.17 -> 48
    ((30, 50, 12, 1, 280), (36, 48)),
    # 4000x3000 p48 [70, 280]: 83x63 patches > 280: beta = sqrt(1.2e7/645120) = 4.31291,
    # 4000/beta = 927.45 -> 19 patches = 912, 3000/beta = 695.59 -> 14 = 672
    ((4000, 3000, 48, 70, 280), (912, 672)),
    # 1x100000 p48 [1, 280]: beta = 0.393712, h 2.54 -> 0 -> one patch, w 253992/48 = 5291 patches:
    # llama.cpp would keep 5291 tokens; capped at 280 -> 48 x 13440
    ((1, 100000, 48, 1, 280), (48, 13440)),
]


@pytest.mark.parametrize("args,want", FIT_CASES, ids=[f"{a[0]}x{a[1]}p{a[2]}[{a[3]},{a[4]}]" for a, _ in FIT_CASES])
def test_llama_cpp_budget_rule(args, want):
    h, w, patch, lo, hi = args
    assert target_size(h, w, patch, min_tokens=lo, max_tokens=hi) == want


def test_budget_invariants_on_random_sizes():
    """Whatever the size: both sides whole patches, 1..max tokens, and (fill rule) the budget is
    filled to within one row/column of patches unless a side is pinned at one patch."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        h, w = (int(v) for v in np.exp(rng.uniform(0, np.log(20000), 2)).round().clip(1))
        patch = int(rng.choice([12, 16, 48]))
        hi = int(rng.choice([70, 140, 280, 560, 1120, 37]))
        for lo in (None, 1, max(1, hi // 4)):
            th, tw = target_size(h, w, patch, max_tokens=hi, min_tokens=lo)
            assert th % patch == 0 and tw % patch == 0 and th >= patch and tw >= patch
            rows, cols = th // patch, tw // patch
            assert 1 <= rows * cols <= hi, (h, w, patch, hi, lo, th, tw)
            if lo is None and rows > 1 and cols > 1:
                assert (rows + 1) * (cols + 1) > hi, (h, w, patch, hi, th, tw)


def test_budget_refuses_impossible_settings():
    refused(target_size, 10, 10, 12, max_tokens=0, reason="bad_budget", words=("max image tokens 0",))
    refused(target_size, 10, 10, 12, max_tokens=70, min_tokens=100, reason="bad_budget", words=("100", "70"))
    refused(target_size, 0, 10, 12, reason="zero_size")


# ---- prepare_image ---------------------------------------------------------------------------
def test_patch_layout_is_row_col_channel_and_row_major():
    patch = 4
    img = RNG.integers(0, 256, (3 * patch, 5 * patch, 3), dtype=np.uint8)
    p = prepare_image(img, patch=patch, resize=False)
    assert (p.rows, p.cols, p.n_tokens) == (3, 5, 15)
    assert p.pixel_values.shape == (15, patch * patch * 3)
    for n in range(15):
        row, col = divmod(n, 5)
        assert tuple(p.positions[n]) == (col, row)
        for py in range(patch):
            for px in range(patch):
                for ch in range(3):
                    u8 = img[row * patch + py, col * patch + px, ch]
                    assert p.pixel_values[n, (py * patch + px) * 3 + ch] == np.float32(u8) * np.float32(1 / 255)


def test_resize_uses_bicubic_and_keeps_flat_colour():
    flat = np.full((50, 70, 3), (200, 30, 90), dtype=np.uint8)
    p = prepare_image(flat, patch=12, max_tokens=70)
    # 50x70: f = sqrt(10080/3500) = 1.69706, 84.85/12 = 7.07 -> 84, 118.8/12 = 9.90 -> 108
    assert p.resized and (p.height, p.width) == (84, 108) and (p.rows, p.cols) == (7, 9)
    assert np.array_equal(p.pixel_values.reshape(-1, 3)[0], np.float32([200, 30, 90]) * np.float32(1 / 255))
    assert np.all(p.pixel_values.reshape(-1, 3) == p.pixel_values.reshape(-1, 3)[0])
    # the filter is Pillow's BICUBIC (transformers: torchvision bicubic with antialias)
    want = np.asarray(Image.fromarray(PICTURE).resize((48, 36), Image.Resampling.BICUBIC))
    q = prepare_image(PICTURE, patch=12, max_tokens=12)  # 30x40: f = sqrt(1728/1200) = 1.2 -> 36x48
    assert (q.height, q.width) == (36, 48)
    assert np.array_equal(q.pixel_values, prepare_image(want, patch=12, resize=False).pixel_values)


def test_resize_false_needs_whole_patches():
    refused(prepare_image, PICTURE, patch=12, resize=False, reason="bad_budget", words=("30x40", "12"))
    refused(prepare_image, PICTURE[:24, :36], patch=12, resize=False, max_tokens=5, reason="bad_budget",
            words=("6 patches", "5"))


def test_image_cache_key_follows_the_encoder_input():
    a = prepare_image(PICTURE, patch=12, max_tokens=12)
    assert a.sha256 == prepare_image(PICTURE.copy(), patch=12, max_tokens=12).sha256
    changed = PICTURE.copy()
    changed[0, 0, 0] ^= 1
    assert a.sha256 != prepare_image(changed, patch=12, max_tokens=12).sha256
    assert a.sha256 != prepare_image(PICTURE, patch=12, max_tokens=70).sha256
    assert len(a.sha256) == 64


def test_prepare_image_rejects_non_rgb_arrays():
    with pytest.raises(TypeError):
        prepare_image(PICTURE.astype(np.float32), patch=12)
    with pytest.raises(TypeError):
        prepare_image(PICTURE[:, :, 0], patch=12)
    refused(prepare_image, np.zeros((0, 5, 3), np.uint8), patch=12, reason="zero_size")


# ---- load_image: formats and modes -----------------------------------------------------------
def test_lossless_formats_round_trip():
    for fmt, kw in (("PNG", {}), ("WEBP", {"lossless": True})):
        assert np.array_equal(load_image(encode(PICTURE, fmt, **kw)), PICTURE), fmt


def test_jpeg_decodes_close_to_the_source():
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.stack([x * 5, y * 7, (x + y) * 3], axis=2).astype(np.uint8)
    data = encode(smooth, "JPEG", quality=95, subsampling=0)
    got = load_image(data)
    assert got.shape == smooth.shape and got.dtype == np.uint8
    assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(got.astype(int) - smooth).mean() < 2


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = 0  # fully transparent: the stored colour stays (no white or black background)
    got = load_image(encode(rgba, "PNG"))
    assert got.shape == (4, 4, 3) and np.all(got == (10, 200, 30))


def test_grey_palette_and_16_bit_modes():
    grey = RNG.integers(0, 256, (5, 6), dtype=np.uint8)
    got = load_image(encode(grey, "PNG"))
    assert got.shape == (5, 6, 3) and all(np.array_equal(got[..., c], grey) for c in range(3))
    pal = Image.fromarray(PICTURE).quantize(16)
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    assert np.array_equal(load_image(buf.getvalue()), np.asarray(pal.convert("RGB")))
    deep = np.array([[0, 255, 256, 40000, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, "PNG")  # 16-bit grey: the top byte, as llama.cpp
    assert load_image(buf.getvalue())[0, :, 0].tolist() == [0, 0, 1, 156, 255]


def test_gif_gives_its_first_frame():
    red = Image.new("RGB", (8, 6), (255, 0, 0))
    blue = Image.new("RGB", (8, 6), (0, 0, 255))
    buf = io.BytesIO()
    red.save(buf, "GIF", save_all=True, append_images=[blue])
    got = load_image(buf.getvalue())
    assert got.shape == (6, 8, 3) and np.all(got == (255, 0, 0))


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(PICTURE).save(buf, "PNG", exif=exif)
    got = load_image(buf.getvalue())
    assert got.shape == (40, 30, 3)
    assert np.array_equal(got, np.rot90(PICTURE, k=-1))


def test_a_path_source_and_its_name_in_messages(tmp_path):
    f = tmp_path / "pic.png"
    f.write_bytes(encode(PICTURE, "PNG"))
    assert np.array_equal(load_image(f), PICTURE) and np.array_equal(load_image(str(f)), PICTURE)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture\n" * 5)
    refused(load_image, bad, reason="not_image", words=("notes.png", "not an image"))
    refused(load_image, b"plain text", name="image 2 of the request", reason="not_image",
            words=("image 2 of the request",))
    refused(load_image, tmp_path / "missing.png", reason="unreadable", words=("missing.png",))


# ---- load_image: bad input -------------------------------------------------------------------
def test_truncated_png():
    data = encode(PICTURE, "PNG")
    refused(load_image, data[: len(data) // 2], reason="truncated", words=("ends early",))


def test_truncated_and_corrupt_jpeg():
    data = encode(PICTURE, "JPEG")
    refused(load_image, data[: len(data) // 2], reason="truncated")
    # libjpeg shrugs off garbage in the entropy-coded data, not a scan naming Huffman table 3,
    # which the file never defines
    scan = data.find(b"\xff\xda")
    broken = bytearray(data)
    broken[scan + 6] = 0x33
    refused(load_image, bytes(broken), reason="corrupt", words=("corrupt",))


def test_not_an_image_and_empty():
    refused(load_image, b"<html><body>a web page, not a picture</body></html>", reason="not_image")
    refused(load_image, b"", reason="empty", words=("0 bytes",))


def test_zero_sized_images():
    # Pillow can write no 0-pixel image; hand-made headers say 0x0 and 1x0
    refused(load_image, png_header_only(0, 0), reason="zero_size", words=("0x0",))
    refused(load_image, png_header_only(1, 0), reason="zero_size", words=("1x0",))


def test_decompression_bomb(monkeypatch):
    # a 60-byte PNG claiming 100000 x 100000: Pillow's own bomb check, turned into a MediaError
    refused(load_image, png_header_only(100_000, 100_000), reason="too_many_pixels", words=("bomb",))
    # 9000 x 9000 = 81 Mpx: under Pillow's limits, over g4rt's 50 Mpx, refused before decoding
    refused(load_image, png_header_only(9000, 9000), reason="too_many_pixels", words=("81000000", "50000000"))
    monkeypatch.setattr(I, "MAX_IMAGE_PIXELS", 1000)
    refused(load_image, encode(PICTURE, "PNG"), reason="too_many_pixels", words=("40x30", "1200", "1000"))


def test_too_many_bytes(tmp_path):
    data = encode(PICTURE, "PNG")
    refused(load_image, data, max_bytes=100, reason="too_large", words=(str(len(data)), "100"))
    f = tmp_path / "big.png"
    f.write_bytes(data)
    refused(load_image, f, max_bytes=100, reason="too_large")


def test_unsupported_image_formats():
    for fmt in ("BMP", "TIFF"):
        refused(load_image, encode(PICTURE, fmt), reason="unsupported_format", words=(fmt, "PNG, JPEG, WebP or GIF"))


def test_mangled_images_raise_only_media_errors():
    rng = np.random.default_rng(11)
    seeds = [encode(PICTURE, "PNG"), encode(PICTURE, "JPEG"), encode(PICTURE, "WEBP"), encode(PICTURE, "GIF")]
    for _ in range(240):
        data = bytearray(seeds[rng.integers(len(seeds))])
        op = rng.integers(3)
        if op == 0:
            data = data[: rng.integers(1, len(data))]
        else:
            for _ in range(rng.integers(1, 12)):
                data[rng.integers(len(data))] = rng.integers(256)
            if op == 2:
                data = data[: rng.integers(1, len(data))]
        try:
            got = load_image(bytes(data))
        except MediaError as e:
            assert str(e).startswith("image: ")
        else:
            assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3


# ---- audio -----------------------------------------------------------------------------------
TONE = (np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 0.5).astype(np.float32)


def test_pcm16_is_divided_by_32768_exactly():
    ints = RNG.integers(-32768, 32768, 3000).astype(np.int16)
    got = load_audio(wav(ints))
    assert got.dtype == np.float32 and np.array_equal(got, ints.astype(np.float32) / np.float32(32768))


def test_channels_are_averaged():
    left = RNG.integers(-32768, 32768, 2000).astype(np.int16)
    right = RNG.integers(-32768, 32768, 2000).astype(np.int16)
    got = load_audio(wav(np.stack([left, right], axis=1)))
    want = ((left / 32768.0 + right / 32768.0) / 2).astype(np.float32)
    assert np.array_equal(got, want)


def test_other_rates_are_resampled_to_16k():
    t = np.arange(44100 * 2) / 44100
    x = (np.sin(2 * np.pi * 1000 * t) * 0.5).astype(np.float32)
    got = load_audio(wav(x, rate=44100, subtype="FLOAT"))
    assert got.dtype == np.float32 and abs(len(got) - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(got[:16000]))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second at 16 kHz
    assert abs(np.sqrt(np.mean(got[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 1e-3


def test_flac_ogg_and_mp3_decode():
    ints = (TONE * 32767).astype(np.int16)  # int16 in: libsndfile's float writers scale differently
    assert np.array_equal(load_audio(wav(ints, fmt="FLAC")), ints.astype(np.float32) / np.float32(32768))
    for fmt, subtype in (("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")):
        if fmt not in sf.available_formats():
            continue
        rate = 48000 if subtype == "OPUS" else 16000
        got = load_audio(wav(np.repeat(TONE, rate // 16000), rate=rate, subtype=subtype, fmt=fmt))
        assert abs(len(got) - 16000) <= 2, (subtype, len(got))
        n = min(len(got), 16000)
        assert np.corrcoef(got[:n], TONE[:n])[0, 1] > 0.9, subtype


def test_audio_frames_pad_the_last_one():
    x = np.arange(1, 642, dtype=np.float32)  # 641 samples -> 2 frames, 639 zeros
    f = audio_frames(x)
    assert f.shape == (2, 640) and f.dtype == np.float32
    assert np.array_equal(f[0], x[:640]) and f[1, 0] == 641 and not f[1, 1:].any()
    assert audio_frames(np.zeros(16000, np.float32)).shape == (25, 640)
    assert audio_frames(np.zeros(7680, np.float32)).shape == (12, 640)
    assert audio_frames(np.ones(10, np.float32), frame=4).shape == (3, 4)
    refused(audio_frames, np.zeros(0, np.float32), reason="no_samples")


def test_audio_cache_key():
    k = audio_sha256(TONE)
    assert k == audio_sha256(TONE.copy()) and len(k) == 64
    other = TONE.copy()
    other[5] += np.float32(1e-3)
    assert k != audio_sha256(other) and k != audio_sha256(TONE[:-1])


def test_audio_with_no_samples():
    refused(load_audio, wav(np.zeros(0, np.int16)), reason="no_samples", words=("0 samples",))


def test_audio_too_long(monkeypatch):
    refused(load_audio, wav(TONE), max_seconds=0.5, reason="too_long", words=("1.00 s", "0.5 s"))
    monkeypatch.setattr(A, "MAX_AUDIO_SECONDS", 0.25)
    refused(load_audio, wav(TONE), name="clip.wav", reason="too_long", words=("clip.wav", "1.00 s", "0.25 s"))
    assert len(load_audio(wav(TONE[:4000]))) == 4000  # exactly at the limit is fine


def test_unsupported_audio_containers():
    refused(load_audio, wav(TONE, fmt="AU"), reason="unsupported_format", words=("AU",))
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 200
    refused(load_audio, mp4, reason="not_audio", words=("not a supported audio file",))
    refused(load_audio, b"just some text, not sound\n" * 10, reason="not_audio")
    refused(load_audio, b"", reason="empty")


def test_truncated_audio():
    data = wav(TONE)
    refused(load_audio, data[: len(data) // 2], name="cut.wav", reason="truncated",
            words=("cut.wav", "32000 bytes"))
    flac = wav(TONE, fmt="FLAC")
    e = refused(load_audio, flac[: len(flac) // 2], reason="corrupt")
    assert "cut short" in str(e) or "corrupt" in str(e)


def test_bad_samples_and_rates():
    nan = TONE.copy()
    nan[100] = np.nan
    refused(load_audio, wav(nan, subtype="FLOAT"), reason="bad_samples", words=("NaN",))
    refused(load_audio, wav(TONE[:500], rate=500), reason="bad_samples", words=("500 Hz",))


def test_mangled_audio_raises_only_media_errors():
    rng = np.random.default_rng(5)
    seeds = [wav(TONE[:4000]), wav(TONE[:4000], fmt="FLAC"), wav(TONE[:4000], fmt="OGG", subtype="VORBIS")]
    for _ in range(150):
        data = bytearray(seeds[rng.integers(len(seeds))])
        for _ in range(rng.integers(1, 10)):
            data[rng.integers(len(data))] = rng.integers(256)
        if rng.integers(2):
            data = data[: rng.integers(1, len(data))]
        try:
            got = load_audio(bytes(data))
        except MediaError as e:
            assert str(e).startswith("audio: ")
        else:
            assert got.dtype == np.float32 and got.ndim == 1 and len(got) > 0 and np.isfinite(got).all()


# ---- log-mel (E2B/E4B conformer front end) ---------------------------------------------------
# HTK mel: m(f) = 2595 log10(1 + f/700); m(8000) = 2840.02, so 130 corners 22.0157 mel apart and
# filter k peaks at mel 22.0157 (k + 1).
def test_log_mel_puts_a_tone_in_its_mel_bin():
    t = np.arange(16000) / 16000
    # 1000 Hz: m = 1000.0 -> 45.42 spacings -> peaks of filters 44 (986 Hz) and 45 (1019 Hz) around it
    # 4000 Hz: m = 2146.1 -> 97.48 spacings -> filters 96 and 97
    for hz, bins in ((1000, {44, 45}), (4000, {96, 97})):
        got = log_mel((0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
        assert got.features.shape == (99, 128) and got.features.dtype == np.float32 and got.mask.all()
        assert int(np.argmax(got.features[2:-2].mean(axis=0))) in bins, hz


def test_log_mel_frames_mask_and_floor():
    # 1100 samples: padded to 1152, 160 zeros in front -> 1312; frames (1312 - 321) // 160 + 1 = 7;
    # frame i needs sample i*160 + 320 <= 1259 (the last real one): i <= 5, so the 7th is masked
    got = log_mel(np.zeros(1100, np.float32))
    assert got.features.shape == (7, 128) and got.mask.tolist() == [True] * 6 + [False]
    assert np.all(got.features[:6] == np.float32(np.log(1e-3))) and not got.features[6].any()
    # filter 0 spans 0..27.9 Hz: between FFT bins 0 and 1 (31.25 Hz), so it is the one empty filter
    from g4rt.media.mel import mel_bank
    bank = mel_bank(128)
    assert bank.shape == (257, 128) and np.flatnonzero(bank.sum(axis=0) == 0).tolist() == [0]
