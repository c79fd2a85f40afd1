"""Images: decode to RGB uint8, resize to the token budget, cut into soft-token patches.

    load_image(source, *, name=None, max_bytes=None, max_pixels=None) -> np.ndarray  uint8 [H, W, 3]
    prepare_image(rgb, *, patch, min_tokens=None, max_tokens=None, resize=True, name="image")
        -> PreparedImage(pixel_values float32 [N, patch*patch*3], positions int32 [N, 2] (x=col, y=row),
                         rows, cols, n_tokens, sha256, ...)

What the model sees matches transformers' Gemma4UnifiedImageProcessor (the references come from it):
the budget rule of budget.py, a bicubic resize, `u8 * float32(1/255)` (no mean/std, no 2x-1), each
patch flattened in (row, col, channel) order, patches row-major, token n at (x = n % cols, y = n // cols).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .budget import target_size
from .digest import media_digest
from .errors import MediaError
from .source import Source, read_source

# Decoded pixels refused above this (a 50 Mpx RGB image is 150 MB): a small file can claim a huge
# size and decode into gigabytes. Below Pillow's own bomb limit (89 Mpx warns, 179 Mpx raises).
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Pillow format names accepted; anything else Pillow can read (TIFF, BMP, ICO, PSD, ...) is refused:
# fewer decoders facing untrusted bytes.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# transformers' processors resample with BICUBIC (torchvision, antialias=True, which is modelled on
# Pillow's filter; not compared bit for bit here: no torchvision); llama.cpp's gemma4v too.
RESAMPLE = Image.Resampling.BICUBIC
_SCALE = np.float32(1 / 255)  # u8 * float32(1/255): bit-identical to the fixtures' pixel_values
_HIGH_BIT_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image as the vision embedder takes it."""

    pixel_values: np.ndarray   # float32 [n_tokens, patch*patch*3], each patch in (row, col, channel) order
    positions: np.ndarray      # int32 [n_tokens, 2]: (x = column, y = row) of each patch
    rows: int
    cols: int
    patch: int
    height: int                # the size the patches were cut from (after any resize)
    width: int
    source_height: int
    source_width: int
    sha256: str                # over the resized pixels and the grid: equal keys, equal soft tokens

    @property
    def n_tokens(self) -> int:
        return self.rows * self.cols

    @property
    def resized(self) -> bool:
        return (self.height, self.width) != (self.source_height, self.source_width)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) written in a PNG or GIF header, for a clear message when Pillow refuses it."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _unidentified(data: bytes, label: str) -> MediaError:
    size = _header_size(data)
    if size is not None and 0 in size:
        return MediaError("zero_size", label, f"the header says {size[0]}x{size[1]} pixels (width x height)")
    try:  # a real format g4rt does not take? (header parsing only, nothing is decoded)
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Exception:  # noqa: BLE001 - any failure here just means "not an image"
        fmt = None
    if fmt:
        return MediaError("unsupported_format", label,
                          f"image format {fmt} is not supported (use PNG, JPEG, WebP or GIF)")
    return MediaError("not_image", label, "not an image (no PNG, JPEG, WebP or GIF data recognised)")


def _decode_failure(e: Exception, label: str) -> MediaError:
    if isinstance(e, Image.DecompressionBombError):
        return MediaError("too_many_pixels", label, f"too many pixels, refused as a possible decompression "
                                                    f"bomb (Pillow: {e})")
    text = str(e) or type(e).__name__
    if "truncated" in text or isinstance(e, EOFError):
        return MediaError("truncated", label, f"the image data ends early ({text})")
    return MediaError("corrupt", label, f"the image data is corrupt ({type(e).__name__}: {text})")


def _to_rgb(im: Image.Image, label: str) -> np.ndarray:
    if im.mode in _HIGH_BIT_GRAY:
        # 16-bit grey: keep the top byte, as llama.cpp's stb_image does. PIL's convert("RGB"), which
        # transformers would apply, clips 16-bit values at 255 and turns most of the image white.
        gray = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    # Alpha is dropped, not composited: transformers' convert_to_rgb (PIL's convert("RGB"), the one
    # Gemma 4's processor uses; a few other models' processors composite on white) and llama.cpp
    # (stb_image asked for 3 channels) both keep a transparent pixel's stored colour.
    try:
        rgb = im.convert("RGB")
    except ValueError as e:  # a mode Pillow has no RGB conversion for (e.g. LAB)
        raise MediaError("unsupported_format", label, f"image mode {im.mode} cannot be converted to RGB") from e
    return np.array(rgb, dtype=np.uint8)


def load_image(source: Source, *, name: str | None = None, max_bytes: int | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode a PNG, JPEG, WebP or GIF (its first frame) to uint8 RGB [H, W, 3], EXIF orientation applied.

    source: the file's bytes or a path. name: how messages call it (default: the path, or "image").
    Every refusal is a MediaError; no Pillow exception escapes."""
    max_bytes = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    data, label = read_source(source, name=name, kind="image", max_bytes=max_bytes)
    # Pillow's decoders raise a zoo of exceptions on hostile data (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, IndexError, ...): at this trust boundary all of them mean "bad image".
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data, label) from None
    except Exception as e:  # noqa: BLE001
        raise _decode_failure(e, label) from e
    with im:
        width, height = im.size
        if width == 0 or height == 0:
            raise MediaError("zero_size", label, f"the image is {width}x{height} pixels (width x height)")
        if width * height > max_pixels:
            raise MediaError("too_many_pixels", label,
                             f"{width}x{height} = {width * height} pixels is more than the limit of "
                             f"{max_pixels} (refused as a possible decompression bomb)")
        try:
            im.seek(0)  # GIF / animated WebP: the first frame
            im.load()
        except Exception as e:  # noqa: BLE001
            raise _decode_failure(e, label) from e
        # EXIF orientation applied, as transformers' image_utils.load_image does (exif_transpose)
        # for a path or URL; llama.cpp (stb_image) ignores EXIF. A broken EXIF block is ignored
        # rather than refusing an image that decoded.
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001
            oriented = im
        return _to_rgb(oriented if oriented is not None else im, label)


def _patchify(pixels: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    height, width, _ = pixels.shape
    rows, cols = height // patch, width // patch
    scaled = pixels.astype(np.float32) * _SCALE
    values = (scaled.reshape(rows, patch, cols, patch, 3)
              .transpose(0, 2, 1, 3, 4)               # (row, col, py, px, channel)
              .reshape(rows * cols, patch * patch * 3))
    n = np.arange(rows * cols, dtype=np.int32)
    positions = np.stack([n % cols, n // cols], axis=1).astype(np.int32)
    return np.ascontiguousarray(values), positions


def prepare_image(rgb: np.ndarray, *, patch: int, min_tokens: int | None = None,
                  max_tokens: int | None = None, resize: bool = True, name: str = "image") -> PreparedImage:
    """Resize `rgb` (uint8 [H, W, 3]) to its token budget and cut it into patch x patch soft tokens.

    patch: the pixel side of one soft token (48 for the 12B, 12 for the fixtures). Budget: see
    budget.target_size (max_tokens defaults to 280; min_tokens set switches to llama.cpp's rule).
    resize=False takes the image as it is: both sides must then be multiples of `patch` (and, when
    max_tokens is given, the grid at most max_tokens)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError("prepare_image takes a uint8 RGB array [H, W, 3] (as load_image returns)")
    src_h, src_w = rgb.shape[:2]
    if src_h == 0 or src_w == 0:
        raise MediaError("zero_size", name, f"the image is {src_w}x{src_h} pixels (width x height)")
    if resize:
        height, width = target_size(src_h, src_w, patch, max_tokens=max_tokens, min_tokens=min_tokens)
        pixels = rgb
        if (height, width) != (src_h, src_w):  # transformers skips the resample when the size is kept
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height), RESAMPLE))
    else:
        if patch < 1 or src_h % patch or src_w % patch:
            raise MediaError("bad_budget", name,
                             f"{src_h}x{src_w} pixels (height x width) is not a whole grid of {patch}-pixel patches")
        if max_tokens is not None and (src_h // patch) * (src_w // patch) > max_tokens:
            raise MediaError("bad_budget", name, f"{(src_h // patch) * (src_w // patch)} patches is more than "
                                                 f"the {max_tokens} image tokens allowed")
        height, width, pixels = src_h, src_w, rgb
    values, positions = _patchify(pixels, patch)
    rows, cols = height // patch, width // patch
    return PreparedImage(pixel_values=values, positions=positions, rows=rows, cols=cols, patch=patch,
                         height=height, width=width, source_height=src_h, source_width=src_w,
                         sha256=media_digest("image", pixels, patch))
