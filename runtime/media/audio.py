"""Audio: decode to float32 mono 16 kHz, cut into the unified model's 640-sample frames.

    load_audio(source, *, name=None, max_seconds=None, max_bytes=None) -> np.ndarray  float32 [n]
    audio_frames(samples, frame=640) -> np.ndarray  float32 [ceil(n / frame), frame]
    audio_sha256(samples) -> str
    log_mel(samples, n_mels=128) -> LogMel(features float32 [T, n_mels], mask bool [T])
        (the E2B/E4B conformer's front end, from mel.py; the unified 12B takes raw frames)

As Gemma4UnifiedAudioFeatureExtractor (transformers 5.23): one soft token per 640 samples (40 ms),
the last frame zero-padded, no other normalisation. PCM is scaled as libsndfile's float read does
(int16 / 32768: bit-identical to the fixtures' audio_i_k). Several channels are averaged to one;
other rates are resampled with soxr 'HQ', the filter librosa.resample uses by default (transformers
takes 16 kHz only and leaves resampling to the caller; llama.cpp asks miniaudio's decoder for f32
mono at 16 kHz, i.e. its default linear resampler).
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import soundfile as sf
import soxr

from .digest import media_digest
from .errors import MediaError
from .mel import LogMel, log_mel
from .source import Source, read_source

__all__ = ["FRAME", "SAMPLE_RATE", "LogMel", "audio_frames", "audio_sha256", "load_audio", "log_mel"]

SAMPLE_RATE = 16000
FRAME = 640                      # samples per soft token of the unified model (40 ms)
MAX_AUDIO_SECONDS = 600.0        # longer clips are refused (600 s = 15,000 soft tokens)
MAX_AUDIO_BYTES = 256 * 1024 * 1024  # 600 s of 48 kHz stereo 24-bit PCM is 173 MB
MIN_RATE, MAX_RATE = 1000, 384000
# libsndfile format names accepted (MP3 needs libsndfile >= 1.1); AU, VOC, PAF, ... are refused:
# fewer old parsers facing untrusted bytes.
FORMATS = ("WAV", "WAVEX", "RF64", "W64", "FLAC", "OGG", "MP3", "AIFF")
_BLOCK = 1 << 16                 # frames decoded per step: memory stays at the mono 16 kHz output


def _describe(e: Exception) -> str:
    return getattr(e, "error_string", None) or str(e) or type(e).__name__


def _wav_truncated(extra_info: str) -> str | None:
    """libsndfile clamps a WAV whose data chunk runs past the end of the file; its log says so."""
    m = re.search(r"^data : (\d+) \(should be (\d+)\)", extra_info, re.MULTILINE)
    if not m:
        return None
    declared, present = int(m.group(1)), int(m.group(2))
    if declared == 0 or declared >= 0x7FFFFFFF:  # streamed WAVs write 0 or ~4 GiB: length unknown
        return None
    return f"the data chunk declares {declared} bytes but {present} are present" if declared > present else None


class _Bytes(io.BytesIO):
    """BytesIO whose seek before the start stays at 0: libsndfile probes hostile headers with such
    seeks, and a ValueError inside soundfile's cffi callback is printed to stderr, not raised."""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: len(self.getbuffer())}[whence]
        return super().seek(max(0, base + offset))


def _open(data: bytes, label: str) -> sf.SoundFile:
    try:
        f = sf.SoundFile(_Bytes(data))
    except Exception as e:  # noqa: BLE001 - libsndfile's errors, and cffi/ValueError on odd headers
        text = _describe(e)
        if "not recognised" in text:
            raise MediaError("not_audio", label, "not a supported audio file (WAV, FLAC, OGG, MP3 or AIFF "
                                                 "data not recognised)") from e
        if "truncated" in text or "malformed" in text or "lost sync" in text:
            raise MediaError("corrupt", label, f"the audio data is malformed or cut short ({text})") from e
        raise MediaError("corrupt", label, f"the audio data is corrupt ({text})") from e
    if f.format not in FORMATS:
        fmt = f.format
        f.close()
        raise MediaError("unsupported_format", label, f"audio format {fmt} is not supported "
                                                      f"(use WAV, FLAC, OGG, MP3 or AIFF)")
    return f


def load_audio(source: Source, *, name: str | None = None, max_seconds: float | None = None,
               max_bytes: int | None = None) -> np.ndarray:
    """Decode WAV / FLAC / OGG (Vorbis, Opus) / MP3 / AIFF to float32 mono 16 kHz samples.

    Refused with a MediaError: unreadable, empty, not audio or an unsupported format, corrupt or
    truncated, 0 samples, longer than max_seconds (default 600), NaN/inf samples, a sample rate
    outside 1 kHz..384 kHz. No soundfile/soxr exception escapes."""
    max_seconds = MAX_AUDIO_SECONDS if max_seconds is None else float(max_seconds)
    max_bytes = MAX_AUDIO_BYTES if max_bytes is None else max_bytes
    data, label = read_source(source, name=name, kind="audio", max_bytes=max_bytes)
    with _open(data, label) as f:
        rate, channels, fmt = int(f.samplerate), int(f.channels), f.format
        if not MIN_RATE <= rate <= MAX_RATE:
            raise MediaError("bad_samples", label, f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE} Hz")
        limit = int(math.floor(max_seconds * rate))
        if f.frames > limit:  # the header's length, checked before decoding anything
            raise MediaError("too_long", label, f"{f.frames / rate:.2f} s is longer than the limit of "
                                                f"{max_seconds:g} s")
        samples, n_read = _decode(f, label, rate, channels, limit, max_seconds)
        declared = f.frames
        cut = _wav_truncated(f.extra_info) if fmt in ("WAV", "WAVEX") else None
    if cut is None and n_read < declared:  # e.g. an MP3 whose Xing header counts more than is there
        cut = f"the header declares {declared} samples but {n_read} decode"
    if cut:
        raise MediaError("truncated", label, f"the audio data ends early: {cut}")
    if n_read == 0 or samples.size == 0:
        raise MediaError("no_samples", label, "the audio has 0 samples")
    return samples


def _decode(f: sf.SoundFile, label: str, rate: int, channels: int, limit: int,
            max_seconds: float) -> tuple[np.ndarray, int]:
    """(mono 16 kHz float32 samples, source frames read), block by block."""
    stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32",
                                                                  quality="HQ")
    parts, n_read = [], 0
    try:
        while True:
            block = f.read(_BLOCK, dtype="float32", always_2d=True)
            n_read += len(block)
            if n_read > limit:  # the header may lie: count what actually decodes
                raise MediaError("too_long", label, f"more than {max_seconds:g} s of audio (the limit) "
                                                    f"decodes; {n_read / rate:.2f} s so far")
            last = len(block) < _BLOCK
            if len(block) and not np.isfinite(block).all():
                raise MediaError("bad_samples", label, "the audio holds NaN or infinite samples")
            mono = block[:, 0] if channels == 1 else block.mean(axis=1, dtype=np.float64).astype(np.float32)
            if stream is not None:
                mono = stream.resample_chunk(mono, last=last)
            if len(mono):
                parts.append(mono)
            if last:
                break
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - decoder errors mid-stream (lost sync, bad packets)
        raise MediaError("corrupt", label, f"the audio data is corrupt ({_describe(e)})") from e
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32), n_read


def audio_frames(samples: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """float32 [ceil(n / frame), frame]: consecutive frames, the last zero-padded; one soft token each."""
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio_frames takes 1-D samples, not shape {samples.shape}")
    if frame < 1:
        raise ValueError(f"frame must be at least 1 sample, not {frame}")
    if samples.size == 0:
        raise MediaError("no_samples", "audio", "the audio has 0 samples")
    n_tokens = -(-samples.size // frame)
    out = np.zeros(n_tokens * frame, np.float32)
    out[:samples.size] = samples
    return out.reshape(n_tokens, frame)


def audio_sha256(samples: np.ndarray) -> str:
    """The prompt-cache key of a clip: sha256 over its float32 16 kHz samples (the frames follow from them)."""
    return media_digest("audio", np.asarray(samples, dtype=np.float32), SAMPLE_RATE)
