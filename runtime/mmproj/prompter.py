"""A text model's media support: images and audio in, expanded prompt ids and MediaRows out.

    prompter = MediaPrompter(projector, encoder, tokenizer, n_embd=cfg.n_embd)
    plan = prompter.plan(ids, images=["a.png"], audio=["b.wav"])   # decoded, counted, expanded
    rows = prompter.encode(plan)                                   # soft tokens -> MediaRows

`plan` does everything but the encoders (decode, resize, count soft tokens, expand the markers),
so a prompt too long for the context is refused before any encoder runs.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..engine import MediaRows
from .encoder import MediaEncoder
from .errors import MediaInputError
from .prompt import AUDIO, IMAGE, SoftTokens, expand_prompt, media_rows, media_token_ids, placeholder_runs
from .reader import Projector, images_bidirectional


@dataclass
class PreparedItem:
    kind: str
    label: str
    n_tokens: int
    image: Any = None           # a prepared image (pixel_values, positions)
    frames: Optional[np.ndarray] = None


@dataclass
class MediaPlan:
    ids: list[int]                              # the prompt ids, markers expanded
    items: list[PreparedItem]                   # in order of appearance in ids
    counts: dict[str, int] = field(default_factory=dict)     # soft tokens per kind

    def summary(self) -> str:
        """e.g. "1 image (36 tokens), 1 audio clip (25 tokens)"."""
        parts = []
        for kind, word in ((IMAGE, "image"), (AUDIO, "audio clip")):
            n = sum(1 for it in self.items if it.kind == kind)
            if n:
                parts.append(f"{n} {word}{'s' if n != 1 else ''} ({self.counts[kind]} tokens)")
        return ", ".join(parts)


#: Soft tokens kept for items seen again (a 12B image of 280 tokens is 4.3 MB).
SOFT_TOKEN_CACHE_BYTES = 256 << 20


def _item_key(item: PreparedItem) -> bytes:
    """A digest of what the encoder reads for the item (so equal inputs give equal soft tokens)."""
    h = hashlib.blake2b(item.kind.encode(), digest_size=20)
    if item.kind == IMAGE:
        parts = (item.image.pixel_values, item.image.positions)
    elif isinstance(item.frames, np.ndarray):
        parts = (item.frames,)
    else:                                   # gemma4a's AudioFeatures
        parts = (item.frames.features, item.frames.mask, np.array([item.frames.n_tokens]))
    for a in parts:
        a = np.ascontiguousarray(a)
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.digest()


def _label(source, kind: str, k: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"{kind} {k + 1}"


class MediaPrompter:
    def __init__(self, projector: Projector, encoder: MediaEncoder, token_to_id: dict[str, int], n_embd: int,
                 bos: Optional[int] = None, image_min_tokens: Optional[int] = None,
                 image_max_tokens: Optional[int] = None):
        self.projector, self.encoder, self.n_embd, self.bos = projector, encoder, n_embd, bos
        self.tokens = media_token_ids(token_to_id)
        self.image_min_tokens, self.image_max_tokens = image_min_tokens, image_max_tokens
        v = projector.vision
        self.bidirectional = bool(v) and images_bidirectional(v.projector, n_embd)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()    # item key -> soft tokens
        self._cache_bytes = 0
        self.cache_hits = 0

    def has_markers(self, ids: Sequence[int]) -> bool:
        """Whether the ids hold an image / audio marker (which then needs its media)."""
        marks = {t.placeholder for t in self.tokens.values()}
        return any(int(i) in marks for i in ids)

    # ---- preparing (no encoder yet) --------------------------------------------------------
    def prepare_image(self, source, k: int = 0) -> PreparedItem:
        v = self.projector.vision
        label = _label(source, IMAGE, k)
        if v is None:
            raise MediaInputError(f"{self.projector.path.name} has no vision projector: images cannot be given")
        if hasattr(source, "pixel_values") and hasattr(source, "positions"):
            prepared = source
        else:
            from ..media.image import load_image, prepare_image
            rgb = source if isinstance(source, np.ndarray) else load_image(source, name=label)
            prepared = prepare_image(rgb, patch=v.patch, min_tokens=self.image_min_tokens,
                                     max_tokens=self.image_max_tokens, name=label)
        return PreparedItem(IMAGE, label, int(np.asarray(prepared.pixel_values).shape[0]), image=prepared)

    def prepare_audio(self, source, k: int = 0) -> PreparedItem:
        a = self.projector.audio
        label = _label(source, AUDIO, k)
        if a is None:
            raise MediaInputError(f"{self.projector.path.name} has no audio projector: audio cannot be given")
        from ..media.audio import load_audio
        samples = np.asarray(source, np.float32) if isinstance(source, np.ndarray) else load_audio(source, name=label)
        frames, n_tokens = self.encoder.audio_input(samples, label)     # frames, or gemma4a's log-mel
        return PreparedItem(AUDIO, label, n_tokens, frames=frames)

    def plan(self, ids: Sequence[int], images: Sequence = (), audio: Sequence = ()) -> MediaPlan:
        """Decode and count every item and expand the prompt's markers (no encoder runs)."""
        return self._plan(ids, self._prepare(images, audio))

    def plan_many(self, prompts: Sequence[Sequence[int]], images: Sequence = (), audio: Sequence = ()
                  ) -> list[MediaPlan]:
        """The same images / audio for every prompt (`g4rt run --batch --image ...`): each item is
        decoded once and placed in each prompt as `plan` places it (at the prompt's markers, or
        before its text); an error names the prompt (1-based)."""
        prepared = self._prepare(images, audio)
        plans = []
        for i, ids in enumerate(prompts):
            try:
                plans.append(self._plan(ids, prepared))
            except MediaInputError as e:
                raise type(e)(f"prompt {i + 1}: {e}") from None
        return plans

    def encode_many(self, plans: Sequence[MediaPlan]) -> list[MediaRows]:
        """The MediaRows of plans that share their items (plan_many): each item encoded once."""
        done: dict[int, SoftTokens] = {}
        out = []
        for plan in plans:
            items = []
            for it in plan.items:
                if id(it) not in done:
                    done[id(it)] = self.soft_tokens(it)
                items.append(done[id(it)])
            out.append(media_rows(plan.ids, items, self.tokens, self.n_embd, self.bidirectional))
        return out

    def _prepare(self, images: Sequence, audio: Sequence) -> dict[str, list[PreparedItem]]:
        return {IMAGE: [self.prepare_image(s, k) for k, s in enumerate(images)],
                AUDIO: [self.prepare_audio(s, k) for k, s in enumerate(audio)]}

    def _plan(self, ids: Sequence[int], prepared: dict[str, list[PreparedItem]]) -> MediaPlan:
        counts = {kind: [it.n_tokens for it in its] for kind, its in prepared.items() if its}
        expanded = expand_prompt(ids, counts, self.tokens, self.bos)
        placeholders = {t.placeholder: kind for kind, t in self.tokens.items() if kind in counts}
        order, taken = [], {IMAGE: 0, AUDIO: 0}
        for kind, _, _ in placeholder_runs(expanded, placeholders):
            order.append(prepared[kind][taken[kind]])
            taken[kind] += 1
        return MediaPlan(expanded, order, {kind: sum(c) for kind, c in counts.items()})

    # ---- encoding --------------------------------------------------------------------------
    def soft_tokens(self, item: PreparedItem) -> SoftTokens:
        """The item's soft tokens; an item encoded recently (the same prepared pixels or audio
        features: a chat's earlier image, sent again with every turn) comes from the cache."""
        key = _item_key(item)
        embd = self._cache.get(key)
        if embd is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return SoftTokens(item.kind, embd, item.label)
        if item.kind == IMAGE:
            embd = self.encoder.encode_image(item.image.pixel_values, item.image.positions)
        else:
            embd = self.encoder.encode_audio(item.frames)
        embd.setflags(write=False)          # shared by every prompt that holds the item
        self._cache[key] = embd
        self._cache_bytes += embd.nbytes
        while self._cache_bytes > SOFT_TOKEN_CACHE_BYTES and len(self._cache) > 1:
            self._cache_bytes -= self._cache.popitem(last=False)[1].nbytes
        return SoftTokens(item.kind, embd, item.label)

    def encode(self, plan: MediaPlan, ids: Optional[Sequence[int]] = None) -> MediaRows:
        """The MediaRows of the plan's ids (or of `ids`: the plan's ids followed by more tokens)."""
        items = [self.soft_tokens(it) for it in plan.items]
        return media_rows(plan.ids if ids is None else ids, items, self.tokens, self.n_embd, self.bidirectional)

    def rows_for(self, ids: Sequence[int], items: Sequence[SoftTokens]) -> MediaRows:
        """MediaRows for ids whose placeholder runs already match `items` (a reference replay)."""
        return media_rows(ids, items, self.tokens, self.n_embd, self.bidirectional)

    def close(self) -> None:
        self.encoder.close()
