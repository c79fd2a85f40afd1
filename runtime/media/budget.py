"""The size an image is resized to before it is cut into soft-token patches.

`patch` is the side, in pixels, of the square that becomes one soft token: 48 for the real
Gemma 4 12B unified (HF patch_size 16 x pooling_kernel_size 3), 12 for the g4u-mm fixtures
(GGUF `clip.vision.patch_size` 4 x llama.cpp's hard-coded n_merge 3).

Two rules, picked by whether a minimum is given:

* ``min_tokens=None`` (the default): transformers' rule, which the references come from
  (`get_aspect_ratio_preserving_size` in `image_processing_gemma4_unified.py`, 5.23). The image is
  scaled, up or down, so its area fills `max_tokens` patches, then both sides are floored to a
  multiple of `patch`; a side that floors to 0 becomes one patch and the other side
  floor(long/short) patches, capped at `max_tokens`. Only a result equal to the source size
  leaves the image alone, so an image is kept as it is only when its own token count is the
  budget (e.g. a 72x72 image, patch 12, is kept with max_tokens=36 and scaled to 192x192 with
  the default 280). transformers accepts only max_soft_tokens in {70, 140, 280, 560, 1120}; g4rt
  takes any budget, as llama.cpp's --image-max-tokens does.

* ``min_tokens`` set (llama.cpp's --image-min-tokens / --image-max-tokens): llama.cpp's rule
  (`calc_size_preserved_ratio` in tools/mtmd/mtmd-image.cpp, vendored 0.3.36). Each side is
  rounded to the nearest multiple of `patch` (at least one patch); only if that grid has more than
  `max_tokens` is it scaled down (floored), only if fewer than `min_tokens` scaled up (ceiled).
  An image already within the budget keeps its size (min_tokens=1 is how the fixtures' llama.cpp
  reference ran). Two differences from llama.cpp: the grid is capped at `max_tokens` (llama.cpp's
  one-patch floor on the short side of a very long image can overshoot it), and the caller
  stretches the image to the grid, as transformers does, where llama.cpp letterboxes it (scales
  it to fit inside the grid, keeping its aspect ratio, and pads with black, centred).

Both rules work in float64; llama.cpp computes in float32, which can move a side by one patch
when a side lands exactly on a multiple of `patch` after scaling.
"""

from __future__ import annotations

import math

from .errors import MediaError

# transformers' Gemma 4 image processors default (max_soft_tokens)
DEFAULT_MAX_TOKENS = 280
# the budgets transformers accepts; g4rt takes any, these are the ones the model was trained with
HF_SUPPORTED_MAX_TOKENS = (70, 140, 280, 560, 1120)


def _check(height: int, width: int, patch: int, max_tokens: int, min_tokens: int | None) -> None:
    if height < 1 or width < 1:
        raise MediaError("zero_size", "image", f"{height}x{width} pixels (height x width) has no area")
    if patch < 1:
        raise MediaError("bad_budget", "image", f"patch side {patch} px must be at least 1")
    if max_tokens < 1:
        raise MediaError("bad_budget", "image", f"max image tokens {max_tokens} must be at least 1")
    if min_tokens is not None and not 1 <= min_tokens <= max_tokens:
        raise MediaError("bad_budget", "image",
                         f"min image tokens {min_tokens} must be between 1 and max image tokens {max_tokens}")


def fill_budget_size(height: int, width: int, patch: int, max_tokens: int) -> tuple[int, int]:
    """transformers' target (height, width): the largest aspect-kept size of at most max_tokens patches."""
    target_px = max_tokens * patch * patch
    factor = math.sqrt(target_px / (height * width))
    # same float steps as transformers, so the floors agree at the boundaries
    target_h = int(math.floor(factor * height / patch)) * patch
    target_w = int(math.floor(factor * width / patch)) * patch
    max_side = max_tokens * patch
    if target_h == 0:  # far wider than tall: one row, as many columns as the aspect allows
        target_h = patch
        target_w = min(int(math.floor(width / height)) * patch, max_side)
    elif target_w == 0:
        target_w = patch
        target_h = min(int(math.floor(height / width)) * patch, max_side)
    # both 0 needs max_tokens < 1, refused by _check
    return target_h, target_w


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))  # C's std::round for x >= 0 (Python's round() rounds half to even)


def fit_budget_size(height: int, width: int, patch: int, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """llama.cpp's target (height, width): the own size on the patch grid, scaled only into [min, max] tokens."""
    h = max(patch, _round_half_up(height / patch) * patch)
    w = max(patch, _round_half_up(width / patch) * patch)
    max_px, min_px = max_tokens * patch * patch, min_tokens * patch * patch
    if h * w > max_px:
        beta = math.sqrt(height * width / max_px)
        h = max(patch, int(math.floor(height / beta / patch)) * patch)
        w = max(patch, int(math.floor(width / beta / patch)) * patch)
    elif h * w < min_px:
        beta = math.sqrt(min_px / (height * width))
        h = int(math.ceil(height * beta / patch)) * patch
        w = int(math.ceil(width * beta / patch)) * patch
    rows, cols = h // patch, w // patch
    # the one-patch floor (long thin images) or the ceil can overshoot the maximum: cap the long side
    if rows * cols > max_tokens:
        if rows >= cols:
            rows = max(1, max_tokens // cols)
        else:
            cols = max(1, max_tokens // rows)
        # still over only if the short side alone is longer than the budget
        rows = min(rows, max_tokens)
        cols = min(cols, max_tokens // rows)
    return rows * patch, cols * patch


def target_size(height: int, width: int, patch: int, *, max_tokens: int | None = None,
                min_tokens: int | None = None) -> tuple[int, int]:
    """(height, width) to resize a height x width image to; both multiples of `patch`.

    max_tokens defaults to 280; min_tokens None means transformers' fill-the-budget rule, a
    number means llama.cpp's keep-if-within-[min, max] rule (see the module docstring)."""
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else int(max_tokens)
    _check(height, width, patch, max_tokens, min_tokens)
    if min_tokens is None:
        return fill_budget_size(height, width, patch, max_tokens)
    return fit_budget_size(height, width, patch, int(min_tokens), max_tokens)
