"""The one error the media front end raises on purpose: a file or part the user sent that g4rt will not use."""

from __future__ import annotations

from ..errors import G4rtError

# Why a medium was refused. A server can map them to status codes (too_large / too_long -> 413,
# the rest -> 400) without parsing the message.
REASONS = (
    "unreadable",          # the path could not be read
    "empty",               # zero bytes
    "too_large",           # more bytes than the limit
    "not_image",           # no image format recognises the data
    "not_audio",           # libsndfile recognises no audio format in the data
    "unsupported_format",  # a real image/audio format, but not one g4rt accepts
    "truncated",           # the data ends early
    "corrupt",             # the decoder rejected the data
    "zero_size",           # width or height is 0
    "too_many_pixels",     # width x height above the limit (decompression bomb)
    "no_samples",          # audio with 0 samples
    "too_long",            # audio longer than the limit
    "bad_samples",         # NaN/inf samples, or a sample rate outside what the resampler takes
    "bad_budget",          # an impossible token budget or grid
)


class MediaError(G4rtError):
    """An image or audio input g4rt refuses; the message names the medium and the problem.

    `reason` is one of REASONS; `media` is the name given for the medium (a file name, or a part
    such as "image 2 of the request")."""

    def __init__(self, reason: str, media: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown media error reason {reason!r}")
        self.reason = reason
        self.media = media
        self.detail = detail
        super().__init__(f"{media}: {detail}")
