"""`g4rt bench MODEL --spec ngram | --draft D [--draft-max K] [--text T]` and `--verify-cost K`.

Speculative mode generates the same greedy continuation of a real prompt twice, plainly and with
the drafter, and reports both decode rates, the acceptance rate and the tokens per verification
(the outputs must be equal: it says so if not). The default prompt asks for a lightly edited
copy of a passage, where prompt lookup has something to find.

`--verify-cost K` times a forward pass of n = 1 .. K + 1 tokens at the same position (the cost of
verifying n - 1 proposals) against a one-token decode step: n / cost(n) is the most a
verification of n tokens can gain, reached when every proposal is accepted.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

DEFAULT_TEXT = (
    "Rewrite the following passage, changing 'cat' to 'dog' and nothing else.\n\n"
    "The cat sat on the warm windowsill all afternoon, watching the birds in the garden. "
    "When the sun went down, the cat stretched, jumped to the floor and walked to the kitchen, "
    "where a bowl of food was waiting. After dinner the cat curled up on the sofa and slept "
    "until morning.\n\nRewritten passage:\n\n")


def _generate(model, ids, n_gen):
    from ..generation import GenerationStats
    st = GenerationStats()
    t0 = time.perf_counter()
    out = list(model.generate_ids(ids, n_gen, stats=st))
    return out, st, time.perf_counter() - t0


def bench_speculative(model_path, backend: str, n_gen: int, backend_options: dict, spec_options: dict,
                      text: Optional[str] = None, chat: bool = True, echo=None) -> dict:
    from ..generation import load
    plain = load(model_path, backend=backend, **backend_options)
    try:
        ids = plain.encode_prompt(text or DEFAULT_TEXT, chat=chat)
        _generate(plain, ids[:8], 2)                          # records the decode graphs
        ref, st0, _ = _generate(plain, ids, n_gen)
        ran = plain.precision_summary()
    finally:
        plain.close()
    fast = load(model_path, backend=backend, **backend_options, **spec_options)
    try:
        _generate(fast, ids[:8], 2)
        got, st1, _ = _generate(fast, ids, n_gen)
    finally:
        fast.close()
    sp = st1.speculative
    res = dict(prompt_tokens=len(ids), generated=len(got), identical=got == ref,
               plain_decode_tok_s=round(st0.decode_tps, 2), spec_decode_tok_s=round(st1.decode_tps, 2),
               speedup=round(st1.decode_tps / st0.decode_tps, 3) if st0.decode_tps else None,
               **sp.as_dict(), draft_s=round(sp.draft_s, 3), verify_s=round(sp.verify_s, 3),
               precision_summary=ran)
    if echo:
        echo(f"  prompt {len(ids)} tokens, {len(got)} generated; same tokens as plain decoding: "
             f"{'yes' if res['identical'] else 'NO'}")
        echo(f"  plain decode {res['plain_decode_tok_s']} tok/s; speculative {res['spec_decode_tok_s']} tok/s "
             f"({res['speedup']}x)")
        echo(f"  {sp.summary()} ({sp.steps} verifications; drafting {sp.draft_s:.2f} s, "
             f"verifying {sp.verify_s:.2f} s)")
        echo(f"  precision: {ran}")
    return res


def verify_costs(model_path, backend: str, max_k: int, backend_options: dict, reps: int = 5,
                 at: int = 256, echo=None) -> dict:
    """Median time of a forward of n = 1 .. max_k + 1 tokens at position `at`, relative to n = 1."""
    from ..engine import Engine
    eng = Engine(model_path, backend=backend, ctx=at + max_k + 2, ring_slack=max_k + 1, **backend_options)
    try:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, eng.config.n_vocab, at + max_k + 1).astype(np.int32)
        eng.forward(ids[:at])
        times = {}
        for n in range(1, max_k + 2):
            eng.forward(ids[at:at + n], all_logits=True)          # records the graph
            eng.truncate(at)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                eng.forward(ids[at:at + n], all_logits=True)
                ts.append(time.perf_counter() - t0)
                eng.truncate(at)
            times[n] = float(np.median(ts))
        ran = eng.backend.precision_summary()
    finally:
        eng.close()
    rel = {n: t / times[1] for n, t in times.items()}
    if echo:
        echo(f"  verification cost at position {at} (median of {reps}), relative to a decode step "
             f"({times[1] * 1e3:.1f} ms):")
        for n in times:
            echo(f"    {n:2d} tokens ({n - 1} proposals): {times[n] * 1e3:7.1f} ms = {rel[n]:.2f} steps; "
                 f"most gain {n / rel[n]:.2f}x")
        echo(f"  precision: {ran}")
    return {"position": at, "ms": {n: round(t * 1e3, 3) for n, t in times.items()},
            "relative": {n: round(r, 3) for n, r in rel.items()},
            "max_gain": {n: round(n / r, 3) for n, r in rel.items()}, "precision_summary": ran}
