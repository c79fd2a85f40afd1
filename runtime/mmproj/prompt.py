"""Media in a prompt's token ids: the markers, their expansion, and the rows soft tokens fill.

Token layout (Gemma4UnifiedProcessor, llama.cpp's mtmd; shared/fixtures-mm/README.md): each
`<|image|>` marker of the prompt becomes `<|image>` + N x `<|image|>` + `<image|>`, each
`<|audio|>` becomes `<|audio>` + M x `<|audio|>` + `<audio|>`; the N (M) placeholder rows take the
item's soft tokens, unscaled. Markers are matched to the images (audio clips) in order; a prompt
without any marker of a kind gets one per item before its text (after BOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..engine import MediaRows
from .errors import MediaInputError

IMAGE, AUDIO = "image", "audio"
#: (placeholder, begin, end) token texts of each kind, as in every Gemma 4 vocabulary.
TOKEN_TEXTS = {IMAGE: ("<|image|>", "<|image>", "<image|>"), AUDIO: ("<|audio|>", "<|audio>", "<audio|>")}


@dataclass(frozen=True)
class KindTokens:
    placeholder: int
    begin: int
    end: int


def media_token_ids(token_to_id: dict[str, int]) -> dict[str, KindTokens]:
    """The media token ids of a vocabulary ({kind: KindTokens}); a kind whose tokens are missing
    is left out."""
    out = {}
    for kind, texts in TOKEN_TEXTS.items():
        ids = [token_to_id.get(t) for t in texts]
        if all(i is not None for i in ids):
            out[kind] = KindTokens(*ids)
    return out


@dataclass
class SoftTokens:
    """One media item's soft tokens [N, n_embd] (kind "image" or "audio")."""
    kind: str
    embd: np.ndarray
    label: str = ""

    @property
    def n(self) -> int:
        return int(self.embd.shape[0])


def _tokens_for(tokens: dict[str, KindTokens], kind: str) -> KindTokens:
    t = tokens.get(kind)
    if t is None:
        a, b, c = TOKEN_TEXTS[kind]
        raise MediaInputError(f"the model's vocabulary has no {a} / {b} / {c} tokens: it cannot take {kind}s")
    return t


def expand_prompt(ids: Sequence[int], counts: dict[str, list[int]], tokens: dict[str, KindTokens],
                  bos: Optional[int] = None) -> list[int]:
    """The prompt ids with every marker expanded to begin + n placeholders + end, for counts
    {kind: [soft tokens of each item, in order]}. A kind with items but no marker in the prompt
    gets its markers before the text; markers and items of a kind must then match in number."""
    ids = list(ids)
    for kind in (AUDIO, IMAGE):        # inserted at the front: images end up before audio
        n_items = len(counts.get(kind, []))
        t = tokens.get(kind)
        n_marks = sum(1 for i in ids if t is not None and i == t.placeholder)
        if n_items and n_marks == 0:
            t = _tokens_for(tokens, kind)
            at = 1 if ids and bos is not None and ids[0] == bos else 0
            ids[at:at] = [t.placeholder] * n_items
            n_marks = n_items
        if n_marks != n_items:
            mark = TOKEN_TEXTS[kind][0]
            raise MediaInputError(f"the prompt has {n_marks} {mark} marker{'s' if n_marks != 1 else ''} but "
                                  f"{n_items} {kind}{'s were' if n_items != 1 else ' was'} given")
    out, seen = [], {kind: 0 for kind in counts}
    marks = {t.placeholder: kind for kind, t in tokens.items() if counts.get(kind)}
    for i in ids:
        kind = marks.get(i)
        if kind is None:
            out.append(i)
            continue
        t = tokens[kind]
        out += [t.begin] + [t.placeholder] * counts[kind][seen[kind]] + [t.end]
        seen[kind] += 1
    return out


def placeholder_runs(ids: Sequence[int], placeholders: dict[int, str]) -> list[tuple[str, int, int]]:
    """(kind, start, stop) of every contiguous run of one placeholder id, in order."""
    runs, arr = [], np.asarray(ids)
    p = 0
    while p < len(arr):
        kind = placeholders.get(int(arr[p]))
        if kind is None:
            p += 1
            continue
        q = p
        while q < len(arr) and int(arr[q]) == int(arr[p]):
            q += 1
        runs.append((kind, p, q))
        p = q
    return runs


def media_rows(ids: Sequence[int], items: Sequence[SoftTokens], tokens: dict[str, KindTokens], n_embd: int,
               bidirectional_images: bool) -> MediaRows:
    """The rows of expanded prompt ids that the items' soft tokens fill, item k into the k-th
    placeholder run (runs and items in order of appearance, kinds and lengths equal)."""
    placeholders = {t.placeholder: kind for kind, t in tokens.items()}
    runs = placeholder_runs(ids, placeholders)
    if len(runs) != len(items):
        raise MediaInputError(f"the prompt has {len(runs)} runs of media placeholders but {len(items)} media "
                              f"item{'s' if len(items) != 1 else ''}")
    embd = np.zeros((len(ids), n_embd), np.float32)
    take = np.zeros(len(ids), bool)
    blocks = []
    for k, ((kind, a, b), item) in enumerate(zip(runs, items)):
        if kind != item.kind or b - a != item.n:
            raise MediaInputError(f"media item {k} ({item.kind}, {item.n} soft tokens) meets a run of {b - a} "
                                  f"{kind} placeholders at token {a}")
        if item.embd.shape[1] != n_embd:
            raise MediaInputError(f"media item {k} has {item.embd.shape[1]}-wide soft tokens; the model takes {n_embd}")
        embd[a:b] = item.embd
        take[a:b] = True
        if kind == IMAGE and bidirectional_images:
            blocks.append((a, b))
    return MediaRows(embd, take, tuple(blocks))
