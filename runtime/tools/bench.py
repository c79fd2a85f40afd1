"""What `g4rt bench MODEL --backend B [--prompt 512] [--gen 128]` and `g4rt bench --ops` measure
(the command is in cli/bench.py).

Model mode: prefill tokens/s on a prompt of random ids, greedy decode tokens/s, decode weight
traffic (bytes of every weight a decode step reads / time per token), Python overhead per decoded
token (wall time of a step minus the time spent inside the backend's replay: the Vulkan graph's
sequence evaluation, or the whole `run()` on backends without that measurement), device name.
The first prefill and the first decode step build the graphs' pipelines; they are run and
reported separately, not counted in the rates.

`--ops` times each kernel alone at the Gemma 4 12B's shapes on random weights: matrix-vector and
512-token matrix-matrix products for Q4_0 and Q4_K at 3840->15360 and 15360->3840, attention over
1K (sliding layer) and 8K (global layer) of cache, RMSNorm and RoPE. A kernel's time is the run
time of a graph [inputs, kernel, 1-row slice] minus that of [inputs, 1-row slice].
"""

from __future__ import annotations

import statistics
import time
from typing import Optional

import numpy as np
from gguf import GGMLQuantizationType as QT

from .. import ops
from ..gguf.quant_types import block_geometry, row_bytes
from ..model.shapes import DENSE_12B
from .synth import random_blocks


# ---- model benchmark --------------------------------------------------------------------------
def decode_weight_bytes(graph: ops.Graph) -> int:
    """Weight bytes a one-token graph reads: every matrix of every MatMul, one embedding row per
    EmbedLookup, the small vectors; of an expert matrix only the k selected experts' rows (the
    active weights of a mixture of experts)."""
    total = 0
    seen = set()
    for op in graph.ops:
        for name in ops.op_weights(op):
            spec = graph.weights[name]
            rb = row_bytes(spec.qtype, spec.cols)
            if isinstance(op, ops.EmbedLookup):
                total += rb * graph.n_tokens
            elif isinstance(op, ops.MoeMatMul):
                k = graph.buffers[op.route].cols // 2
                total += rb * (spec.rows // op.n_expert) * min(op.n_expert, k * graph.n_tokens)
            elif name not in seen or isinstance(op, ops.MatMul):
                total += rb * spec.rows
            seen.add(name)
    return total


class _Timed:
    """Wraps a compiled graph's run() to measure the time inside it and inside its replay."""

    def __init__(self, graph):
        self.graph = graph
        self.run_s = 0.0
        self.replay_s = 0.0
        self._orig = graph.run

        def run(tokens, segments, observer=None):
            t0 = time.perf_counter()
            out = self._orig(tokens, segments, observer)
            dt = time.perf_counter() - t0
            self.run_s += dt
            self.replay_s += getattr(graph, "last_replay_s", None) or dt
            return out
        graph.run = run


def precision_fields(backend) -> dict:
    """The --precision asked for and what the matmuls ran with (read after the runs: a hybrid's
    halves know their weights from the first compile on)."""
    return {"precision": backend.precision, "precision_summary": backend.precision_summary()}


def is_hybrid(place: dict) -> bool:
    """Whether a placement (gpu_layers, cpu_moe, n_cpu_moe as the CLI's options) splits the model
    between a GPU backend and the native CPU."""
    return place["gpu_layers"] is not None or place["cpu_moe"] or place["n_cpu_moe"] is not None


def bench_model(model: str, backend: str, n_prompt: int, n_gen: int, backend_options: dict,
                warmup: bool = True, echo=None, place: Optional[dict] = None, depth: int = 0) -> dict:
    """place: --gpu-layers / --cpu-moe / --n-cpu-moe (a hybrid with the native CPU backend).

    depth 0: the prompt is prefilled into an empty cache and decoding continues after it. depth N
    (llama-bench's -d N): the prefill and, separately, the decode each start with N tokens already
    in the cache (filled untimed), so both are timed at that depth."""
    from ..engine import Engine
    t0 = time.perf_counter()
    if place and is_hybrid(place):
        from ..generation import load
        eng = load(model, backend=backend, ctx=depth + n_prompt + n_gen + 2, **place, **backend_options).engine
    else:
        eng = Engine(model, backend=backend, ctx=depth + n_prompt + n_gen + 2, **backend_options)
    load_s = time.perf_counter() - t0
    try:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, eng.config.n_vocab, n_prompt).astype(np.int32)
        context = rng.integers(0, eng.config.n_vocab, depth).astype(np.int32)

        def start_at_depth():
            """An empty cache holding `depth` tokens (untimed)."""
            eng.reset()
            if depth:
                eng.forward(context)
        res = dict(model=str(model), backend=backend, device=eng.backend.device_name,
                   prompt_tokens=n_prompt, gen_tokens=n_gen, depth=depth, load_s=round(load_s, 3))
        if echo:
            echo(f"{model}: {backend} on {eng.backend.device_name}; loaded in {load_s:.1f} s")
        first = None
        if warmup:
            start_at_depth()
            t0 = time.perf_counter()
            logits = eng.forward(ids)
            first = time.perf_counter() - t0
            res["first_prefill_s"] = round(first, 3)
            if echo:
                echo(f"  first prefill (builds pipelines): {first:.2f} s")
        start_at_depth()
        t0 = time.perf_counter()
        logits = eng.forward(ids)
        prefill_s = time.perf_counter() - t0
        res["prefill_s"] = round(prefill_s, 3)
        res["prefill_tok_s"] = round(n_prompt / prefill_s, 2)
        if echo:
            at = f" at depth {depth}" if depth else ""
            echo(f"  prefill {n_prompt} tokens{at}: {prefill_s:.2f} s = {n_prompt / prefill_s:.2f} tokens/s")

        tok = int(np.argmax(logits[-1]))
        if depth:
            start_at_depth()
        t0 = time.perf_counter()
        logits = eng.forward([tok])        # builds the one-token graph
        res["first_decode_s"] = round(time.perf_counter() - t0, 3)
        g1 = eng.graph(1)
        timer = _Timed(g1)
        steps = []
        for _ in range(n_gen):
            t0 = time.perf_counter()
            tok = int(np.argmax(logits[-1]))
            logits = eng.forward([tok])
            steps.append(time.perf_counter() - t0)
        total = sum(steps)
        per_tok = total / n_gen
        wbytes = decode_weight_bytes(g1.graph)
        overhead = (total - timer.replay_s) / n_gen
        res.update(decode_s=round(total, 3), decode_tok_s=round(n_gen / total, 3),
                   ms_per_token=round(per_tok * 1e3, 2), decode_weight_bytes=wbytes,
                   decode_weight_gb_s=round(wbytes / per_tok / 1e9, 3),
                   python_overhead_ms_per_token=round(overhead * 1e3, 3),
                   python_overhead_pct=round(100 * overhead / per_tok, 2),
                   replay_ms_per_token=round(timer.replay_s / n_gen * 1e3, 2), **precision_fields(eng.backend))
        if echo:
            echo(f"  decode {n_gen} tokens{' at depth %d' % depth if depth else ''}: {total:.2f} s = {n_gen / total:.3f} tokens/s "
                 f"({per_tok * 1e3:.1f} ms/token)")
            echo(f"  decode weight traffic: {wbytes / 2**20:.0f} MiB/token -> {wbytes / per_tok / 1e9:.2f} GB/s")
            echo(f"  Python overhead per decoded token: {overhead * 1e3:.2f} ms = {100 * overhead / per_tok:.1f} % "
                 f"(backend replay {timer.replay_s / n_gen * 1e3:.1f} ms)")
            echo(f"  precision {res['precision']}: {res['precision_summary']}")
        return res
    finally:
        eng.close()


# ---- kernel benchmark -------------------------------------------------------------------------
E, F = DENSE_12B.hidden, DENSE_12B.ffn


class _MemSource:
    def __init__(self):
        self.raw: dict[str, np.ndarray] = {}
        self.specs: dict[str, ops.WeightSpec] = {}

    def add(self, name, qtype, raw, cols):
        self.raw[name] = raw
        self.specs[name] = ops.WeightSpec(name, qtype, raw.shape[0], cols)

    def weight_bytes(self, name):
        return self.raw[name]


def _random_matrix(qtype: QT, rows: int, cols: int, rng) -> np.ndarray:
    block, size = block_geometry(qtype)
    return random_blocks(qtype, rows * cols // block, rng).reshape(rows, -1)


def _f32(values) -> np.ndarray:
    v = np.ascontiguousarray(values, np.float32)
    return v.view(np.uint8).reshape(v.shape[0], -1)


class OpBench:
    """One kernel: a graph [inputs -> kernel -> 1-row slice] and its baseline without the kernel."""

    def __init__(self, label, n, inputs, op_fn, out_cols, flops, nbytes, weights=None, caches=None, pos0=0):
        self.label, self.n, self.inputs, self.op_fn = label, n, inputs, op_fn
        self.out_cols, self.flops, self.nbytes = out_cols, flops, nbytes
        self.weights = weights or {}
        self.caches = caches or {}
        self.pos0 = pos0

    def graphs(self, src: _MemSource):
        n = self.n
        bufs = {"tokens": ops.Buffer("tokens", n, 1, "i32")}
        input_ops = []
        for name, cols in self.inputs.items():
            bufs[name] = ops.Buffer(name, n, cols)
            input_ops.append(ops.EmbedLookup(name, f"table.{name}", 1.0))
        base_ops = list(input_ops) + [ops.Slice("probe", next(iter(self.inputs)), 0, 0)]
        bufs_base = dict(bufs, probe=ops.Buffer("probe", 1, next(iter(self.inputs.values()))))
        op = self.op_fn()
        bufs[op.out] = ops.Buffer(op.out, n, self.out_cols)
        full_ops = list(input_ops) + [op, ops.Slice("probe", op.out, 0, 0)]
        bufs_full = dict(bufs, probe=ops.Buffer("probe", 1, self.out_cols))
        mk = lambda b, o: ops.Graph(n_tokens=n, buffers=b, caches=self.caches, weights=dict(src.specs), ops=o,
                                    output="probe", labels=[f"op{i}" for i in range(len(o))])
        return mk(bufs_base, base_ops), mk(bufs_full, full_ops)


def kernel_benches(rng) -> tuple[_MemSource, list[OpBench]]:
    src = _MemSource()
    P = 512
    for name, cols in (("x", E), ("xf", F)):
        src.add(f"table.{name}", QT.F32, _f32(rng.standard_normal((P, cols)) * 0.5), cols)
    benches = []
    for qt in (QT.Q4_0, QT.Q4_K):
        up, down = f"{qt.name}.up", f"{qt.name}.down"
        src.add(up, qt, _random_matrix(qt, F, E, rng), E)
        src.add(down, qt, _random_matrix(qt, E, F, rng), F)
        wb_up, wb_down = src.raw[up].nbytes, src.raw[down].nbytes
        for n in (1, P):
            kind = "matvec" if n == 1 else f"matmul n={n}"
            benches.append(OpBench(f"{kind} {qt.name} {E}->{F}", n, {"x": E},
                                   lambda up=up: ops.MatMul("y", "x", up), F, 2 * n * E * F, wb_up + 4 * n * (E + F)))
            benches.append(OpBench(f"{kind} {qt.name} {F}->{E}", n, {"xf": F},
                                   lambda down=down: ops.MatMul("y", "xf", down), E, 2 * n * E * F,
                                   wb_down + 4 * n * (E + F)))
    # attention: the 12B's sliding layer (its window of cache) and global layer (at the end of an
    # 8K context), one decode step
    shape = DENSE_12B
    for label, H, KV, D, window, ring, pos0 in (
            (f"attention 1K ctx (sliding, D={shape.d_swa})", shape.n_head, shape.kv_swa, shape.d_swa, shape.window,
             shape.window, shape.window - 1),
            (f"attention 8K ctx (global, D={shape.d_global})", shape.n_head, shape.kv_global, shape.d_global, 0,
             8192, 8191)):
        qc, kc = H * D, KV * D
        for name, cols in (("q", qc), ("k", kc), ("v", kc)):
            if f"table.{name}{D}" not in src.raw:
                src.add(f"table.{name}{D}", QT.F32, _f32(rng.standard_normal((P, cols))), cols)
        caches = {"ck": ops.KvCache("ck", ring, kc), "cv": ops.KvCache("cv", ring, kc)}
        T = min(window, pos0 + 1) if window else pos0 + 1
        benches.append(OpBench(
            label, 1, {f"q{D}": qc, f"k{D}": kc, f"v{D}": kc},
            lambda H=H, KV=KV, D=D, window=window: ops.Attention("o", f"q{D}", f"k{D}", f"v{D}", "ck", "cv", H, KV, D,
                                                               window, 1.0),
            qc, 4 * H * T * D, 2 * T * kc * 2 + 8 * qc, caches=caches, pos0=pos0))
    src.add("norm.w", QT.F32, _f32(np.ones((1, E))), E)
    for n in (1, P):
        benches.append(OpBench(f"rmsnorm n={n} x {E}", n, {"x": E}, lambda: ops.RmsNorm("y", "x", "norm.w", 1e-6, E),
                               E, 4 * n * E, 8 * n * E + 4 * E))
    Q = shape.n_head * shape.d_swa          # the sliding layers' queries
    src.add(f"table.x{Q}", QT.F32, _f32(rng.standard_normal((P, Q))), Q)
    for n in (1, P):
        benches.append(OpBench(f"rope n={n} x {shape.n_head} heads x {shape.d_swa}", n, {f"x{Q}": Q},
                               lambda: ops.Rope("y", f"x{Q}", shape.d_swa, shape.d_swa, 1e4, None), Q, 6 * n * Q,
                               8 * n * Q))
    return src, benches


def _time_graph(cg, n, pos0, reps) -> float:
    toks = np.arange(n, dtype=np.int32) % 512
    segments = ops.one_sequence(n, pos0)
    cg.run(toks, segments)     # warm: pipelines
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        cg.run(toks, segments)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_ops(backend: str, backend_options: dict, reps: int, only: Optional[str] = None, echo=None) -> dict:
    from ..backends import create_backend
    rng = np.random.default_rng(0)
    src, benches = kernel_benches(rng)
    if only:
        benches = [b for b in benches if only.lower() in b.label.lower()]
    be = create_backend(backend, **backend_options)
    res = dict(backend=backend, device=be.device_name, kernels=[])
    try:
        be.load_weights(src.specs, src)
        res.update(precision_fields(be))
        if echo:
            echo(f"kernels on {be.device_name}, precision {res['precision']}: {res['precision_summary']} "
                 f"(median of {reps}; graph with the kernel minus graph without)")
            echo(f"  {'kernel':<40} {'ms':>10} {'GB/s':>8} {'GFLOP/s':>9}")
        for b in benches:
            be.allocate_caches(b.caches)
            base, full = b.graphs(src)
            cb, cf = be.compile(base), be.compile(full)
            t_base = _time_graph(cb, b.n, b.pos0, reps)
            t_full = _time_graph(cf, b.n, b.pos0, reps)
            dt = max(t_full - t_base, 1e-9)
            row = dict(kernel=b.label, ms=round(dt * 1e3, 3), gb_s=round(b.nbytes / dt / 1e9, 3),
                       gflop_s=round(b.flops / dt / 1e9, 3), bytes=b.nbytes, flops=b.flops)
            res["kernels"].append(row)
            if echo:
                echo(f"  {b.label:<40} {dt * 1e3:>10.3f} {row['gb_s']:>8.2f} {row['gflop_s']:>9.2f}")
    finally:
        be.close()
    return res
