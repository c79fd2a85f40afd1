"""Teacher-forced and greedy parity against reference .npz files (format: shared fixtures README).

The comparison metric is the one defined by the fixtures' compare.py, reimplemented here so that
g4rt works without the fixtures folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..engine import Engine

TOPK = 16


def topk(logits: np.ndarray, k: int = TOPK) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return order.astype(np.int32), np.take_along_axis(logits, order, axis=-1).astype(np.float32)


def teacher_forced(engine: Engine, seq) -> np.ndarray:
    engine.reset()
    return engine.forward(seq, all_logits=True)


def greedy(engine: Engine, ids, n: int) -> np.ndarray:
    engine.reset()
    logits = engine.forward(ids)[-1]
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        out.append(t)
        if len(out) == n:
            break
        logits = engine.forward([t])[-1]
    return np.array(out, dtype=np.int32)


def _sequence(x, i):
    tail = x[f"tf_{i}"] if f"tf_{i}" in x else x[f"greedy_{i}"]
    return np.concatenate([x[f"ids_{i}"], tail])


def compare(a, b) -> list[dict]:
    """Per prompt: compared positions, top-1 agreement, max |dlogit| over a's top-4, greedy run."""
    rows = []
    i = 0
    while f"topk_ids_{i}" in a and f"topk_ids_{i}" in b:
        ia, va, ib, vb = a[f"topk_ids_{i}"], a[f"topk_val_{i}"], b[f"topk_ids_{i}"], b[f"topk_val_{i}"]
        n = min(len(ia), len(ib))
        if f"ids_{i}" in a and f"ids_{i}" in b:
            sa, sb = _sequence(a, i), _sequence(b, i)
            m = min(len(sa), len(sb))
            diff = np.nonzero(sa[:m] != sb[:m])[0]
            n = min(n, int(diff[0]) + 1 if len(diff) else m)
        top1 = float((ia[:n, 0] == ib[:n, 0]).mean()) if n else 0.0
        diffs = []
        for p in range(n):
            m = {int(t): float(v) for t, v in zip(ib[p], vb[p])}
            diffs += [abs(float(v) - m[int(t)]) for t, v in zip(ia[p][:4], va[p][:4]) if int(t) in m]
        d = max(diffs) if diffs else float("inf")
        ga, gb = a[f"greedy_{i}"], b[f"greedy_{i}"]
        k = 0
        while k < min(len(ga), len(gb)) and ga[k] == gb[k]:
            k += 1
        rows.append(dict(prompt=i, positions=n, top1=top1, max_dlogit=d, greedy=k, greedy_of=len(ga)))
        i += 1
    return rows


def worst(rows: list[dict]) -> dict:
    return dict(top1=min(r["top1"] for r in rows), max_dlogit=max(r["max_dlogit"] for r in rows),
                greedy=min(r["greedy"] for r in rows))


def run_reference(engine: Engine, ref, n_greedy: int = 32) -> dict[str, np.ndarray]:
    """Replay every sequence of a reference file; return arrays in the reference format."""
    out: dict[str, np.ndarray] = {}
    i = 0
    while f"ids_{i}" in ref:
        ids = np.asarray(ref[f"ids_{i}"], dtype=np.int32)
        tf = np.asarray(ref[f"greedy_{i}"], dtype=np.int32)
        logits = teacher_forced(engine, np.concatenate([ids, tf]))
        out[f"ids_{i}"] = ids
        out[f"tf_{i}"] = tf
        out[f"topk_ids_{i}"], out[f"topk_val_{i}"] = topk(logits)
        out[f"greedy_{i}"] = greedy(engine, ids, n_greedy or len(tf))
        i += 1
    return out


@dataclass
class Bar:
    min_top1: float
    max_dlogit: float


def find_bar(model_path: str | Path, ref_path: str | Path) -> Optional[Bar]:
    """The `bar_vs_exact` of MANIFEST.json (next to the ref/ folder) for an .exact reference."""
    ref_path = Path(ref_path)
    if not ref_path.name.endswith(".exact.npz"):
        return None
    manifest = ref_path.resolve().parent.parent / "MANIFEST.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    model_stem = Path(model_path).name.removesuffix(".gguf")
    ref_name = ref_path.name.removesuffix(".exact.npz")
    try:
        bar = data[model_stem]["references"][ref_name]["bar_vs_exact"]
    except (KeyError, TypeError):
        try:        # fixtures-mm: bars.references[<ref file>] (the file is named after its model)
            bar = data["bars"]["references"][ref_path.name]["bar_vs_exact"]
        except (KeyError, TypeError):
            return None
    return Bar(float(bar["min_top1"]), float(bar["max_dlogit"]))


def meets(rows: list[dict], bar: Bar) -> bool:
    w = worst(rows)
    return w["top1"] >= bar.min_top1 and w["max_dlogit"] <= bar.max_dlogit
