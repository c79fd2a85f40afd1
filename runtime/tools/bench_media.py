"""`g4rt bench MODEL --mmproj MM --image FILE --audio FILE`: the encoders' time per image and per
second of audio, and the prefill speed of a prompt that holds the media (soft tokens placed, the
image blocks in one pass each), on one backend."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import numpy as np


def _median_s(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_media(model_path, mmproj, backend: str, images: Sequence, audio: Sequence, opts: dict, reps: int = 3,
                image_max_tokens: Optional[int] = None, echo: Optional[Callable[[str], None]] = None) -> dict:
    from ..generation import load
    m = load(model_path, backend=backend, mmproj=mmproj, image_max_tokens=image_max_tokens, **opts)
    try:
        p = m.media
        res = {"model": str(model_path), "mmproj": str(mmproj), "backend": backend,
               "device": m.device_name, "precision_summary": m.precision_summary(), "images": [], "audio": []}
        for k, src in enumerate(images):
            item = p.prepare_image(src, k)
            # the encoder itself: p.soft_tokens would answer the timed repeats from its cache
            encode = lambda: p.encoder.encode_image(item.image.pixel_values, item.image.positions)  # noqa: E731
            encode()                                # records the graph of this size (untimed)
            s = _median_s(encode, reps)
            res["images"].append({"file": item.label, "tokens": item.n_tokens, "encode_s": s,
                                  "tokens_per_s": item.n_tokens / s})
            if echo:
                echo(f"  image {item.label}: {item.n_tokens} soft tokens, encode {s * 1e3:.2f} ms "
                     f"({item.n_tokens / s:.0f} tok/s)")
        for k, src in enumerate(audio):
            item = p.prepare_audio(src, k)
            seconds = item.n_tokens * p.projector.audio.frame / p.projector.audio.sample_rate
            encode = lambda: p.encoder.encode_audio(item.frames)  # noqa: E731
            encode()
            s = _median_s(encode, reps)
            res["audio"].append({"file": item.label, "tokens": item.n_tokens, "seconds": seconds, "encode_s": s,
                                 "encode_s_per_audio_s": s / seconds})
            if echo:
                echo(f"  audio {item.label}: {seconds:.2f} s = {item.n_tokens} soft tokens, encode {s * 1e3:.2f} ms "
                     f"({s / seconds * 1e3:.2f} ms per second of audio)")
        ids = [m.tokenizer.bos_id] if m.tokenizer.bos_id is not None else []
        ids, rows, summary = m.media_prompt(ids, list(images), list(audio))
        eng = m.engine

        def prefill():
            eng.reset()
            eng.forward(np.asarray(ids, np.int32), media=rows)
        prefill()                                   # records the graphs (untimed)
        s = _median_s(prefill, reps)
        res["prefill"] = {"tokens": len(ids), "media": summary, "prefill_s": s, "tokens_per_s": len(ids) / s}
        if echo:
            echo(f"  prefill {len(ids)} tokens with {summary}: {len(ids) / s:.1f} tok/s (encoders excluded)")
        return res
    finally:
        m.close()
