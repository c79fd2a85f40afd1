"""Parity for references whose prompts hold media (shared/fixtures-mm format): per prompt i the
items image_i_k (uint8 [H, W, 3], not resized) / audio_i_k (float32 16 kHz samples), k in order
of appearance, go through the projector into the placeholder runs of ids_i; embd_i_k, when
present, are the soft tokens to compare with."""

from __future__ import annotations

import numpy as np

from ..engine import Engine, MediaRows
from ..mmproj.prompt import AUDIO, IMAGE, SoftTokens
from ..mmproj.prompter import MediaPrompter, PreparedItem
from .parity import topk

#: soft tokens vs embd_i_k (the fixtures' bar; llama.cpp: about 1e-6)
EMBD_BAR = 1e-4


def reference_items(ref, i: int, prompter: MediaPrompter) -> tuple[list[SoftTokens], list[float]]:
    """Prompt i's media as soft tokens, and each one's max |soft - embd_i_k| (nan: no embd)."""
    from ..media.image import prepare_image
    items, diffs, k = [], [], 0
    while f"image_{i}_{k}" in ref or f"audio_{i}_{k}" in ref:
        if f"image_{i}_{k}" in ref:
            rgb = np.asarray(ref[f"image_{i}_{k}"], np.uint8)
            prepared = prepare_image(rgb, patch=prompter.projector.vision.patch, resize=False, name=f"image_{i}_{k}")
            item = PreparedItem(IMAGE, f"image_{i}_{k}", prepared.n_tokens, image=prepared)
        else:
            frames, n_tokens = prompter.encoder.audio_input(np.asarray(ref[f"audio_{i}_{k}"], np.float32),
                                                            f"audio_{i}_{k}")
            item = PreparedItem(AUDIO, f"audio_{i}_{k}", n_tokens, frames=frames)
        soft = prompter.soft_tokens(item)
        want = ref[f"embd_{i}_{k}"] if f"embd_{i}_{k}" in ref else None
        diffs.append(float(np.abs(soft.embd - want).max()) if want is not None and want.shape == soft.embd.shape
                     else float("nan") if want is None else float("inf"))
        items.append(soft)
        k += 1
    return items, diffs


def greedy_media(engine: Engine, ids, media: MediaRows, n: int) -> np.ndarray:
    engine.reset()
    logits = engine.forward(ids, media=media)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        if len(out) == n:
            break
        logits = engine.forward([out[-1]])[-1]
    return np.array(out, dtype=np.int32)


def run_media_reference(engine: Engine, ref, prompter: MediaPrompter, n_greedy: int = 32
                        ) -> tuple[dict[str, np.ndarray], list[list[float]]]:
    """Replay every prompt (teacher-forced on ids_i + greedy_i, then greedy): the outputs in the
    reference format, and per prompt the soft tokens' max |Δ| against embd_i_k."""
    out: dict[str, np.ndarray] = {}
    embd = []
    i = 0
    while f"ids_{i}" in ref:
        ids = np.asarray(ref[f"ids_{i}"], dtype=np.int32)
        tf = np.asarray(ref[f"greedy_{i}"], dtype=np.int32)
        items, diffs = reference_items(ref, i, prompter)
        seq = np.concatenate([ids, tf])
        engine.reset()
        logits = engine.forward(seq, all_logits=True, media=prompter.rows_for(seq, items) if items else None)
        out[f"ids_{i}"], out[f"tf_{i}"] = ids, tf
        out[f"topk_ids_{i}"], out[f"topk_val_{i}"] = topk(logits)
        rows = prompter.rows_for(ids, items) if items else None
        out[f"greedy_{i}"] = greedy_media(engine, ids, rows, n_greedy or len(tf))
        embd.append(diffs)
        i += 1
    return out, embd
