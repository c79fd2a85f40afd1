"""The log-mel front end of the E2B/E4B conformer audio encoder (`gemma4a`), in numpy.

As transformers 5.23's Gemma4AudioFeatureExtractor for one clip at its defaults (llama.cpp's
gemma4a preprocessing uses the same numbers): 16 kHz; the clip zero-padded to a multiple of 128
samples; 160 zeros prepended ("semicausal": frame 0 centred on t=0); frames of 320 samples (20 ms)
every 160 (10 ms); periodic Hann window; |rfft| over 512 points (magnitude, not power); an HTK-scale
mel bank of triangles in Hz, 0..8000 Hz, no Slaney area normalisation; log(mel + 0.001). A frame is
valid only if its whole window lies in the real audio; invalid frames are zeroed, as transformers
does. No preemphasis, dither or per-bin normalisation (all off by default). transformers also cuts
clips at 30 s (480,000 samples) by default: that is the caller's choice here, not done.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 320
HOP = 160
FFT_LENGTH = 512
PAD_MULTIPLE = 128
MEL_FLOOR = 1e-3


class LogMel(NamedTuple):
    features: np.ndarray  # float32 [frames, n_mels]; invalid frames are 0
    mask: np.ndarray      # bool [frames]: the frame's window lies inside the real audio


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_bank(n_mels: int = 128, n_fft: int = FFT_LENGTH, rate: int = SAMPLE_RATE,
             f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """float64 [n_fft // 2 + 1, n_mels]: triangles between HTK-mel-spaced corners, peak 1, in Hz."""
    corners = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    bins = np.linspace(0, rate // 2, n_fft // 2 + 1)
    offset = corners[None, :] - bins[:, None]          # [bins, n_mels + 2]
    width = np.diff(corners)
    rising = -offset[:, :-2] / width[:-1]
    falling = offset[:, 2:] / width[1:]
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.setflags(write=False)
    return bank


def _window() -> np.ndarray:
    n = np.arange(FRAME_LENGTH)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / FRAME_LENGTH)).astype(np.float32)  # periodic Hann


def log_mel(samples: np.ndarray, n_mels: int = 128) -> LogMel:
    """Log-mel features of float32 mono 16 kHz samples (as load_audio returns)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"log_mel takes 1-D samples, not shape {x.shape}")
    n = len(x)
    padded_len = -(-n // PAD_MULTIPLE) * PAD_MULTIPLE
    wave = np.zeros(HOP + padded_len, np.float32)
    wave[HOP:HOP + n] = x
    real = np.zeros(len(wave), bool)
    real[HOP:HOP + n] = True
    span = FRAME_LENGTH + 1                            # transformers unfolds 321 and drops the last
    count = max(0, (len(wave) - span) // HOP + 1)
    if count == 0:
        return LogMel(np.zeros((0, n_mels), np.float32), np.zeros(0, bool))
    starts = np.arange(count) * HOP
    frames = wave[starts[:, None] + np.arange(FRAME_LENGTH)] * _window()
    magnitude = np.abs(np.fft.rfft(frames.astype(np.float64), n=FFT_LENGTH, axis=-1))
    features = np.log(magnitude @ mel_bank(n_mels) + MEL_FLOOR).astype(np.float32)
    mask = real[starts + span - 1]
    features *= mask[:, None]
    return LogMel(features, mask)
