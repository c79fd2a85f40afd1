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


def _heap_merge(text: str, priority: Callable[[str, str], object]) -> list[str]:
    """Merge adjacent symbols of `text`, smallest `priority(left, right)` first (ties: leftmost);
    a pair whose priority is None never merges. A doubly linked list over the symbols and a heap
    of candidate pairs, invalidated lazily, as llama.cpp does."""
    n = len(text)
    if n < 2:
        return [text] if n else []
    syms = list(text)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        p = priority(syms[i], syms[i + 1])
        if p is not None:
            heap.append((p, i, i + 1, syms[i] + syms[i + 1]))
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
            p = priority(syms[before], merged)
            if p is not None:
                push(heap, (p, before, left, syms[before] + merged))
        if after >= 0:
            p = priority(merged, syms[after])
            if p is not None:
                push(heap, (p, left, after, merged + syms[after]))
    return [s for s in syms if s]


def bpe_merge(word: str, ranks: dict[str, int]) -> list[str]:
    """Merge the characters of `word` by rank; `ranks` maps "left right" to the merge's rank."""
    get = ranks.get
    return _heap_merge(word, lambda a, b: get(a + " " + b))


def spm_merge(text: str, token_to_id: dict[str, int], scores: list[float]) -> list[str]:
    """Merge the characters of `text` greedily by the score of the token each pair would form."""
    get = token_to_id.get

    def priority(a: str, b: str):
        t = get(a + b)
        return None if t is None else -scores[t]   # highest score first
    return _heap_merge(text, priority)


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
