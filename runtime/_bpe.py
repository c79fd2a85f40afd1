"""The two merge loops llama.cpp uses for Gemma vocabularies, reproduced step for step.

* `bpe_merge` is `llm_tokenizer_bpe_session::tokenize` for one pre-split word: symbols start as
  single characters, and the adjacent pair with the lowest merge rank is merged first (ties: the
  leftmost). The merged string need not be a token; the caller looks the final symbols up.
* `spm_merge` is `llm_tokenizer_spm_session::tokenize`: the adjacent pair whose concatenation is
  a vocabulary token with the highest score is merged first (ties: the leftmost).

Both use a heap of candidate pairs with lazy invalidation, as llama.cpp does, so a word of n
characters costs O(n log n). Text is a Python str, so "one symbol per UTF-8 character" is simply
one symbol per code point.

`word_splitter` cuts a text into independent pieces at the positions no merge can ever cross,
which lets the tokenizer cache whole pieces (words) without changing a single id.
"""

from __future__ import annotations

import heapq
import re
from typing import Callable, Iterable

SPACE = "\u2581"  # '▁', what SentencePiece-style vocabularies write for a space


def bpe_merge(word: str, ranks: dict[str, int]) -> list[str]:
    """Merge the characters of `word` by rank; `ranks` maps "left right" to the merge's rank."""
    n = len(word)
    if n < 2:
        return [word] if n else []
    syms = list(word)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = ranks.get
    heap = []
    for i in range(n - 1):
        r = get(syms[i] + " " + syms[i + 1])
        if r is not None:
            heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        _, left, right, merged = pop(heap)
        a = syms[left]
        b = syms[right]
        # a pair is stale once either side was merged into something else
        if not a or not b or a + b != merged:
            continue
        syms[left] = merged
        syms[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
        before = prv[left]
        if before >= 0:
            r = get(syms[before] + " " + merged)
            if r is not None:
                push(heap, (r, before, left, syms[before] + merged))
        if after >= 0:
            r = get(merged + " " + syms[after])
            if r is not None:
                push(heap, (r, left, after, merged + syms[after]))
    return [s for s in syms if s]


def spm_merge(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Merge the characters of `text` greedily by the score of the token each pair would form."""
    n = len(text)
    if n < 2:
        return [text] if n else []
    syms = list(text)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    get = token_to_id.get
    heap = []
    for i in range(n - 1):
        m = syms[i] + syms[i + 1]
        t = get(m)
        if t is not None:
            # min-heap on (-score, left): highest score first, then the leftmost pair
            heap.append((-scores[t], i, i + 1, m))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        _, left, right, merged = pop(heap)
        a = syms[left]
        b = syms[right]
        if not a or not b or a + b != merged:
            continue
        syms[left] = merged
        syms[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after >= 0:
            prv[after] = left
        before = prv[left]
        if before >= 0:
            m = syms[before] + merged
            t = get(m)
            if t is not None:
                push(heap, (-scores[t], before, left, m))
        if after >= 0:
            m = merged + syms[after]
            t = get(m)
            if t is not None:
                push(heap, (-scores[t], left, after, m))
    return [s for s in syms if s]


def word_splitter(joining_chars: Iterable[str]) -> Callable[[str], list[str]]:
    """A function that cuts text before each '▁' that follows a character other than '▁'.

    Such a cut is only safe if no merge (BPE) or token (SPM) ever joins the character before it
    with a following '▁'; `joining_chars` are the characters for which one does (found by scanning
    the vocabulary at load), and the text is never cut after them. With that, merging each piece
    on its own gives exactly the symbols merging the whole text would: merges never cross a cut,
    and within a piece they happen in the same (rank/score, position) order.
    """
    excluded = SPACE + "".join(sorted(set(joining_chars)))
    pattern = re.compile("(?<=[^" + re.escape(excluded) + "])(?=" + SPACE + ")")
    return pattern.split
