"""The op-by-op comparison behind `g4rt conformance MODEL --backend cpu|vulkan|cuda [--against numpy]
[--tokens N]` (the command is in cli/checks.py).

Both backends compile the same op lists (a prefill of N prompt tokens, then one decode step) and
run them with an observer that receives every op's output; each backend feeds its own previous
outputs to its next op, as in normal use. Per op we print the relative error
max|a - b| / max|b| (b: the --against side) and stop at the first op past its tolerance, naming
it by the graph's label (e.g. "blk.5.rope_q").

Tolerances (per op kind) are for two correct float32 backends that differ in summation order and,
by default, in KV-cache precision (the native CPU, Vulkan and CUDA caches are f16, the numpy reference's f32): such
differences start near 1e-6 and grow through the layers (a 48-layer model reaches ~1e-3), while a
wrong kernel (a mis-decoded block, a wrong rotation, a mask off by one) is off by 1e-1 or more.
Pass --kv-dtype f32 to give both sides an f32 cache and shrink the differences ~10x.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import G4rtError
from ..ops import one_sequence

#: max |a - b| / max |b| allowed per op kind
TOLERANCES = {
    "embed": 1e-5,       # exact dequantization of the same bits on both sides
    "matmul": 2e-2,      # inherits its input's difference; accumulation order adds ~1e-6
    "rmsnorm": 2e-2,
    "rope": 2e-2,
    "attention": 3e-2,   # f16 cache rounding (~5e-4) on top of the propagated difference
    "kv_store": 3e-2,
    "gelu_mul": 2e-2,
    "gelu": 2e-2,
    "add": 2e-2,
    "mul": 2e-2,
    "scale": 2e-2,
    "softcap": 2e-2,
    "slice": 2e-2,
}
DEFAULT_TOLERANCE = 2e-2


class ConformanceError(G4rtError):
    """The comparison itself could not be made (not a backend missing its tolerance)."""


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.all(np.isfinite(a)):
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30)) if b.size else 0.0


def _collect(graph, tokens, pos0) -> tuple[list, np.ndarray]:
    outs: list = []
    res = graph.run(tokens, one_sequence(len(tokens), pos0),
                    observer=lambda i, op, arr: outs.append(np.array(arr, np.float32)))
    return outs, res


def compare_step(title: str, ga, gb, tokens, pos0: int, echo=print
                 ) -> tuple[Optional[tuple[int, str, float]], np.ndarray]:
    """Run one graph on both sides; print per-op errors; return (the first failure or None, the
    reference's output)."""
    outs_a, _ = _collect(ga, tokens, pos0)
    outs_b, ref_out = _collect(gb, tokens, pos0)
    graph = gb.graph
    labels = graph.labels or [f"op{i}" for i in range(len(graph.ops))]
    echo(f"\n{title}: {len(graph.ops)} ops, {graph.n_tokens} token(s) at pos0 {pos0}")
    echo(f"  {'#':>4}  {'label':<30} {'kind':<10} {'rel.err':>10}  {'tol':>8}")
    if len(outs_a) != len(graph.ops) or len(outs_b) != len(graph.ops):
        raise ConformanceError(f"observer saw {len(outs_a)} / {len(outs_b)} outputs for {len(graph.ops)} ops")
    worst = 0.0
    for i, (op, a, b) in enumerate(zip(graph.ops, outs_a, outs_b)):
        tol = TOLERANCES.get(op.kind, DEFAULT_TOLERANCE)
        err = rel_error(a, b)
        worst = max(worst, err)
        bad = not err <= tol
        echo(f"  {i:>4}  {labels[i]:<30} {op.kind:<10} {err:>10.2e}  {tol:>8.0e}{'  <-- FAIL' if bad else ''}")
        if bad:
            return (i, labels[i], err), ref_out
    echo(f"  worst relative error {worst:.2e}")
    return None, ref_out


def compare_engines(ea, eb, n_tokens: int, seed: int, echo=print) -> Optional[tuple[int, str, float]]:
    """A prefill of n_tokens random ids, then one decode step, on both engines (eb the reference);
    print per-op errors; return the first failure (op index, label, error) or None."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, ea.config.n_vocab, n_tokens).astype(np.int32)
    fail, ref_logits = compare_step("prefill", ea.graph(n_tokens), eb.graph(n_tokens), ids, 0, echo)
    if fail is None:
        nxt = int(np.argmax(ref_logits[-1]))       # the reference's next token, fed to both sides
        fail, _ = compare_step("decode", ea.graph(1), eb.graph(1), np.array([nxt], np.int32), n_tokens, echo)
    return fail
