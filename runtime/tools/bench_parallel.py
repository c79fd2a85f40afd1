"""`g4rt bench MODEL --parallel 1,2,4,8`: decode throughput with several sequences at once.

For each level P: P different random prompts of --prompt tokens are prefilled into P slots, then
--gen greedy decode steps run all P sequences in one batched pass each (Engine.forward_batch).
Reported: aggregate decode tokens/s (P tokens per step), per-stream tokens/s and the speed-up
over one stream. Comparable with llama.cpp's `llama-batched-bench -npl 1,2,4,8` (its S_TG).
"""

from __future__ import annotations

import time

import numpy as np


def bench_parallel(model, backend: str, levels: list[int], n_prompt: int, n_gen: int, backend_options: dict,
                   echo=None) -> dict:
    from ..engine import Engine
    from .bench import precision_fields
    most = max(levels)
    eng = Engine(model, backend=backend, ctx=n_prompt + n_gen + 4, slots=most, **backend_options)
    try:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, eng.config.n_vocab, n_prompt).astype(np.int32) for _ in range(most)]
        res = {"model": str(model), "backend": backend, "device": eng.backend.device_name,
               "prompt_tokens": n_prompt, "gen_tokens": n_gen, "levels": []}
        if echo:
            echo(f"{model}: {backend} on {eng.backend.device_name}; "
                 "one batched pass per step")
        base = None
        for P in levels:
            slots = list(range(P))
            for s in slots:
                eng.reset(s)
            last = eng.forward_batch([(s, prompts[s]) for s in slots])
            toks = [int(np.argmax(x)) for x in last]
            # two untimed steps: the first records this batch size's graph
            for _ in range(2):
                last = eng.forward_batch([(s, [t]) for s, t in zip(slots, toks)])
                toks = [int(np.argmax(x)) for x in last]
            t0 = time.perf_counter()
            for _ in range(n_gen):
                last = eng.forward_batch([(s, [t]) for s, t in zip(slots, toks)])
                toks = [int(np.argmax(x)) for x in last]
            dt = time.perf_counter() - t0
            agg = P * n_gen / dt
            base = base or (agg if P == 1 else None)
            row = {"parallel": P, "decode_s": round(dt, 3), "aggregate_tok_s": round(agg, 2),
                   "per_stream_tok_s": round(agg / P, 2)}
            if base:
                row["speedup_vs_1"] = round(agg / base, 2)
            res["levels"].append(row)
            if echo:
                echo(f"  {P:>2} streams: aggregate {agg:7.2f} tok/s, per stream {agg / P:6.2f} tok/s"
                     + (f", {agg / base:.2f}x one stream" if base else ""))
        res.update(precision_fields(eng.backend))
        if echo:
            echo(f"  precision {res['precision']}: {res['precision_summary']}")
        return res
    finally:
        eng.close()
