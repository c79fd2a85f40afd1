"""How much memory a model needs at a context size, and what fits a budget (backend-neutral).

Pure arithmetic over a ModelConfig and its weight specs; nothing is allocated. Three parts:

- weights: the GGUF bytes of every tensor (kept in block layout on every backend);
- KV cache: per layer that owns a cache, K and V of kv_width values per position, sliding
  layers min(ctx, window) positions, global layers ctx, shared-KV layers none;
- scratch: the activations of the largest graph (the prefill batch), i.e. the sum of
  `build_graph(cfg, specs, batch, ctx).buffers`; backends that materialize the attention score
  matrix (the CPU reference) add that too.

Placement is either everything on one device, or a hybrid split with the first `gpu_layers`
layers (their weights and caches) on the device and the rest plus the non-layer tensors
(embeddings, output head) on the host. Backend-specific planners (e.g. CUDA's) build on
`layer_weight_bytes`, `kv_bytes_per_layer` and `scratch_bytes`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from gguf import GGMLQuantizationType

from .errors import G4rtError, InsufficientMemoryError
from .model.config import LayerConfig, ModelConfig
from .model.graph import build_graph
from .ops import WeightSpec
from .quant_types import row_bytes

KV_DTYPE_BYTES = {"f16": 2, "f32": 4}
DEFAULT_CTX_CAP = 8192          # never default to a model's full trained length (256K would be ~TBs)
DEFAULT_BATCH = 512
_CTX_STEP = 256                 # a budget-limited default context is rounded down to this

QT = GGMLQuantizationType


# ---- building blocks ----------------------------------------------------------------------------
def tensor_bytes(spec: WeightSpec) -> int:
    return row_bytes(spec.qtype, spec.cols) * spec.rows


def _layer_index(name: str) -> Optional[int]:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def layer_weight_bytes(cfg: ModelConfig, specs: dict[str, WeightSpec]) -> tuple[list[int], int]:
    """(bytes of each layer's tensors, bytes of the non-layer tensors)."""
    per_layer = [0] * cfg.n_layer
    other = 0
    for name, s in specs.items():
        i = _layer_index(name)
        if i is not None and i < cfg.n_layer:
            per_layer[i] += tensor_bytes(s)
        else:
            other += tensor_bytes(s)
    return per_layer, other


def kv_rows(layer: LayerConfig, ctx: int) -> int:
    return min(ctx, layer.window) if layer.window else ctx


def kv_bytes_per_layer(cfg: ModelConfig, ctx: int, kv_bytes: int) -> list[int]:
    """K and V cache bytes held by each layer (0 for layers reading another layer's cache)."""
    return [2 * kv_rows(L, ctx) * L.kv_width * kv_bytes if L.owns_kv else 0 for L in cfg.layers]


def scratch_bytes(cfg: ModelConfig, specs: dict[str, WeightSpec], batch: int, ctx: int) -> int:
    """Activation bytes of one forward graph of `batch` tokens (every buffer, 4 bytes a value)."""
    g = build_graph(cfg, specs, max(1, min(batch, ctx)), ctx)
    return sum(b.rows * b.cols * 4 for b in g.buffers.values())


def attention_score_bytes(cfg: ModelConfig, batch: int, ctx: int) -> int:
    """Workspace of a backend that materializes attention (the CPU reference): for the widest
    layer, scores, their masked copy and probabilities [heads, n, T] plus K/V repeated per head."""
    n = max(1, min(batch, ctx))
    worst = 0
    for L in cfg.layers:
        t = min(ctx, kv_rows(L, ctx) + n)
        worst = max(worst, 4 * L.n_head * (3 * n * t + 2 * t * L.head_dim))
    return worst


def parse_size(text: str) -> int:
    """'12GiB', '11.5G', '8000MiB', '12GB' (decimal), '1073741824' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?)(B?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise G4rtError(f"cannot read the size {text!r} (examples: 12GiB, 11.5G, 8000MiB)")
    value, prefix, i, b = m.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    base = 1000 if (prefix and b and not i) else 1024   # "GB" is decimal, "G" and "GiB" binary
    return int(float(value) * base ** power)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def available_ram() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    ctx: int
    batch: int
    kv_bytes: int                # bytes per cached value (2 = f16, 4 = f32)
    n_layer: int
    gpu_layers: int              # layers on the device (n_layer: everything on one device)
    weights_device: int
    weights_host: int
    kv_device: int
    kv_host: int
    kv_sliding: int              # breakdown of kv_device + kv_host by attention type
    kv_global: int
    scratch_device: int
    scratch_host: int
    budget: Optional[int] = None
    device: str = "device"
    model: str = "model"
    # what fits the budget at these settings (filled by make_plan when a budget is given)
    fit_ctx: Optional[int] = None
    fit_gpu_layers: Optional[int] = None

    @property
    def hybrid(self) -> bool:
        return self.gpu_layers < self.n_layer

    @property
    def device_total(self) -> int:
        return self.weights_device + self.kv_device + self.scratch_device

    @property
    def host_total(self) -> int:
        return self.weights_host + self.kv_host + self.scratch_host

    @property
    def fits(self) -> bool:
        return self.budget is None or self.device_total <= self.budget

    def advice(self) -> str:
        """One line: what is needed, and what would fit instead."""
        kv = {2: "f16", 4: "f32"}.get(self.kv_bytes, f"{self.kv_bytes}-byte")
        need = (f"{self.model} at context {self.ctx} ({kv} KV) needs {human(self.device_total)} on the "
                f"{self.device} (weights {human(self.weights_device)}, KV cache {human(self.kv_device)}, "
                f"scratch {human(self.scratch_device)})")
        if self.fits:
            return need + (f", within the budget of {human(self.budget)}" if self.budget else "")
        options = []
        if self.fit_ctx:
            options.append(f"a context of {self.fit_ctx} (--ctx {self.fit_ctx})")
        if self.fit_gpu_layers and self.fit_gpu_layers < self.n_layer:
            options.append(f"{self.fit_gpu_layers} of {self.n_layer} layers on the {self.device} at context {self.ctx}")
        tail = ("; it would fit with " + ", or with ".join(options)) if options else \
            "; nothing fits: the weights alone exceed it" if self.weights_device > self.budget else \
            "; not even a minimal context fits"
        return f"{need}, more than the budget of {human(self.budget)}{tail}"

    def error(self) -> InsufficientMemoryError:
        return InsufficientMemoryError(self.advice())

    def markdown(self) -> str:
        kv = {2: "f16", 4: "f32"}.get(self.kv_bytes, f"{self.kv_bytes} B")
        place = (f"first {self.gpu_layers} of {self.n_layer} layers on the {self.device}" if self.hybrid
                 else f"all {self.n_layer} layers on the {self.device}")
        lines = [f"## Memory plan: {self.model}", "",
                 f"Context {self.ctx}, prefill batch {self.batch}, KV cache {kv}, {place}.", ""]
        cols = ["part", self.device] + (["host"] if self.hybrid else [])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

        def row(name, dev, host):
            cells = [name, human(dev)] + ([human(host)] if self.hybrid else [])
            lines.append("| " + " | ".join(cells) + " |")
        row("weights", self.weights_device, self.weights_host)
        row("KV cache", self.kv_device, self.kv_host)
        lines.append(f"| &nbsp; sliding layers | {human(self.kv_sliding)} (all) |" + (" |" if self.hybrid else ""))
        lines.append(f"| &nbsp; global layers | {human(self.kv_global)} (all) |" + (" |" if self.hybrid else ""))
        row("scratch (activations)", self.scratch_device, self.scratch_host)
        row("**total**", self.device_total, self.host_total)
        lines.append("")
        if self.budget is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"Budget {human(self.budget)}: {verdict} "
                         f"({human(abs(self.budget - self.device_total))} "
                         f"{'to spare' if self.fits else 'over'}).")
            if self.fit_ctx is not None:
                lines.append(f"Largest context in this budget: {self.fit_ctx}.")
            if self.fit_gpu_layers is not None and self.device != "CPU":
                lines.append(f"Most layers on the {self.device} at context {self.ctx}: "
                             f"{self.fit_gpu_layers} of {self.n_layer}.")
            lines.append("")
        return "\n".join(lines)


class _Planner:
    """Caches the ctx-independent parts so searches over ctx or layers stay cheap."""

    def __init__(self, cfg: ModelConfig, specs: dict[str, WeightSpec], batch: int, kv_bytes: int,
                 materialized_attention: bool):
        if kv_bytes <= 0:
            raise G4rtError(f"KV bytes per value must be positive, got {kv_bytes}")
        self.cfg, self.specs, self.batch, self.kv_bytes = cfg, specs, max(1, int(batch)), kv_bytes
        self.materialized = materialized_attention
        self.layer_w, self.other_w = layer_weight_bytes(cfg, specs)
        self._scratch: dict[int, int] = {}

    def scratch(self, ctx: int) -> int:
        n = min(self.batch, ctx)
        if n not in self._scratch:     # buffers depend on the batch only, not on ctx
            self._scratch[n] = scratch_bytes(self.cfg, self.specs, n, ctx)
        extra = attention_score_bytes(self.cfg, n, ctx) if self.materialized else 0
        return self._scratch[n] + extra

    def plan(self, ctx: int, gpu_layers: Optional[int], **labels) -> Plan:
        cfg = self.cfg
        if ctx <= 0:
            raise G4rtError(f"context size must be positive, got {ctx}")
        k = cfg.n_layer if gpu_layers is None else gpu_layers
        if not 0 <= k <= cfg.n_layer:
            raise G4rtError(f"gpu_layers must be in 0..{cfg.n_layer}, got {k}")
        kv = kv_bytes_per_layer(cfg, ctx, self.kv_bytes)
        on_dev = lambda i: i < k                                           # noqa: E731
        all_dev = k == cfg.n_layer
        scratch = self.scratch(ctx)
        return Plan(
            ctx=ctx, batch=min(self.batch, ctx), kv_bytes=self.kv_bytes, n_layer=cfg.n_layer, gpu_layers=k,
            weights_device=sum(w for i, w in enumerate(self.layer_w) if on_dev(i)) + (self.other_w if all_dev else 0),
            weights_host=sum(w for i, w in enumerate(self.layer_w) if not on_dev(i)) + (0 if all_dev else self.other_w),
            kv_device=sum(b for i, b in enumerate(kv) if on_dev(i)),
            kv_host=sum(b for i, b in enumerate(kv) if not on_dev(i)),
            kv_sliding=sum(b for L, b in zip(cfg.layers, kv) if L.window),
            kv_global=sum(b for L, b in zip(cfg.layers, kv) if not L.window),
            scratch_device=scratch if k > 0 or all_dev else 0,
            scratch_host=0 if all_dev else scratch, **labels)

    def max_context(self, budget: int, gpu_layers: Optional[int], limit: int) -> int:
        lo, hi = 0, limit            # invariant: lo fits (0 = nothing), hi + 1 does not or is past limit
        if self.plan(1, gpu_layers).device_total > budget:
            return 0
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.plan(mid, gpu_layers).device_total <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def max_gpu_layers(self, budget: int, ctx: int) -> int:
        best = 0
        for k in range(self.cfg.n_layer + 1):
            if self.plan(ctx, k).device_total <= budget:
                best = k
            else:
                break
        return best


def make_plan(cfg: ModelConfig, specs: dict[str, WeightSpec], ctx: int, *, kv_bytes: int = 2,
              batch: int = DEFAULT_BATCH, budget: Optional[int] = None, gpu_layers: Optional[int] = None,
              materialized_attention: bool = False, device: str = "device", model: str = "model",
              check: bool = True) -> Plan:
    """The memory plan at context `ctx`. With a budget, also what fits it; with check=True a plan
    over budget raises InsufficientMemoryError naming a context or layer split that would fit."""
    p = _Planner(cfg, specs, batch, kv_bytes, materialized_attention)
    plan = p.plan(ctx, gpu_layers, device=device, model=model, budget=budget)
    if budget is not None:
        fit_ctx = p.max_context(budget, gpu_layers, max(ctx, cfg.context_length))
        fit_layers = p.max_gpu_layers(budget, ctx)
        plan = Plan(**{**plan.__dict__, "fit_ctx": fit_ctx, "fit_gpu_layers": fit_layers})
        if check and not plan.fits:
            raise plan.error()
    return plan


def max_context(cfg: ModelConfig, specs: dict[str, WeightSpec], budget: int, *, kv_bytes: int = 2,
                batch: int = DEFAULT_BATCH, gpu_layers: Optional[int] = None,
                materialized_attention: bool = False, limit: Optional[int] = None) -> int:
    """The largest context (<= limit, default the trained length) whose plan fits `budget`; 0 if none."""
    p = _Planner(cfg, specs, batch, kv_bytes, materialized_attention)
    return p.max_context(budget, gpu_layers, limit or cfg.context_length)


def max_gpu_layers(cfg: ModelConfig, specs: dict[str, WeightSpec], ctx: int, budget: int, *,
                   kv_bytes: int = 2, batch: int = DEFAULT_BATCH, materialized_attention: bool = False) -> int:
    """The most leading layers (0..n_layer) whose weights, caches and scratch fit `budget` on the device;
    n_layer means the whole model (with the embeddings and output head) fits."""
    return _Planner(cfg, specs, batch, kv_bytes, materialized_attention).max_gpu_layers(budget, ctx)


def default_context(cfg: ModelConfig, specs: dict[str, WeightSpec], budget: Optional[int] = None, *,
                    kv_bytes: int = 4, batch: int = DEFAULT_BATCH, materialized_attention: bool = False) -> int:
    """The trained length, capped at 8192 and, when a budget is known, at what fits it."""
    ctx = min(cfg.context_length, DEFAULT_CTX_CAP)
    if budget is None:
        return ctx
    fit = max_context(cfg, specs, budget, kv_bytes=kv_bytes, batch=batch,
                      materialized_attention=materialized_attention, limit=ctx)
    if fit == 0:
        raise make_plan(cfg, specs, min(ctx, 256), kv_bytes=kv_bytes, batch=batch, budget=budget,
                        materialized_attention=materialized_attention, check=False).error()
    return fit if fit == ctx or fit < _CTX_STEP else fit // _CTX_STEP * _CTX_STEP


# ---- synthetic models (no file): for tables and tests ------------------------------------------------
def dense_gemma4(*, n_layer: int, n_embd: int, n_head: int, ffn: int, head_dim_swa: int, n_kv_swa: int,
                 head_dim: int, n_kv: int, window: int, period: int, n_vocab: int, context_length: int,
                 matrix_type: QT = QT.Q4_0, norm_type: QT = QT.F32) -> tuple[ModelConfig, dict[str, WeightSpec]]:
    """A dense Gemma 4 config and weight specs shaped like a real file (every `period`-th layer
    global), tied embeddings, every matrix of `matrix_type` (Q4_0 as Google's QAT files)."""
    layers = []
    for i in range(n_layer):
        sl = (i + 1) % period != 0
        D = head_dim_swa if sl else head_dim
        layers.append(LayerConfig(
            index=i, sliding=sl, n_head=n_head, n_kv_head=n_kv_swa if sl else n_kv, head_dim=D, ffn_dim=ffn,
            rope_base=1e4 if sl else 1e6, rope_dims=D, rope_freq_factors=not sl, window=window if sl else 0,
            kv_source=i, has_v_proj=True))
    cfg = ModelConfig(architecture="gemma4", family="gemma4", n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab,
                      context_length=context_length, rms_eps=1e-6, final_softcap=30.0, attn_scale=1.0,
                      v_norm=True, embed_scale=math.sqrt(n_embd), per_layer_dim=0, shared_kv_layers=0,
                      tied_output=True, layers=tuple(layers))
    specs: dict[str, WeightSpec] = {}

    def add(nm, rows, cols, qt):
        specs[nm] = WeightSpec(nm, qt, rows, cols)
    add("token_embd.weight", n_vocab, n_embd, matrix_type)
    add("output_norm.weight", 1, n_embd, norm_type)
    add("rope_freqs.weight", 1, head_dim // 2, QT.F32)
    for L in layers:
        p = f"blk.{L.index}."
        for nm, w in (("attn_norm", n_embd), ("post_attention_norm", n_embd), ("ffn_norm", n_embd),
                      ("post_ffw_norm", n_embd), ("attn_q_norm", L.head_dim), ("attn_k_norm", L.head_dim),
                      ("layer_output_scale", 1)):
            add(p + nm + ".weight", 1, w, norm_type)
        add(p + "attn_q.weight", L.q_width, n_embd, matrix_type)
        add(p + "attn_k.weight", L.kv_width, n_embd, matrix_type)
        add(p + "attn_v.weight", L.kv_width, n_embd, matrix_type)
        add(p + "attn_output.weight", n_embd, L.q_width, matrix_type)
        add(p + "ffn_gate.weight", ffn, n_embd, matrix_type)
        add(p + "ffn_up.weight", ffn, n_embd, matrix_type)
        add(p + "ffn_down.weight", n_embd, ffn, matrix_type)
    build_graph(cfg, specs, 1, 16)    # the same shape checks a real file gets
    return cfg, specs


def gemma4_12b_shape(context_length: int = 131072) -> tuple[ModelConfig, dict[str, WeightSpec]]:
    """The 12B's shape: hidden 3840, 48 layers (5 sliding : 1 global, window 1024), 16 heads,
    sliding head_dim 256 / 8 KV heads, global head_dim 512 / 4 KV heads, FFN 15360,
    vocabulary 262144, Q4_0 everywhere including the embeddings (the QAT q4_0 file)."""
    return dense_gemma4(n_layer=48, n_embd=3840, n_head=16, ffn=15360, head_dim_swa=256, n_kv_swa=8,
                        head_dim=512, n_kv=4, window=1024, period=6, n_vocab=262144,
                        context_length=context_length)
