"""How much memory a model needs at a context size, and what fits a budget (backend-neutral).

Pure arithmetic over a ModelConfig and its weight specs; nothing is allocated. Three parts:

- weights: the GGUF bytes of every tensor (kept in block layout on every backend);
- KV cache: per layer that owns a cache, K and V of kv_width values per position, sliding
  layers min(ctx, window) positions, global layers ctx, shared-KV layers none;
- scratch: the activations of the largest graph (the prefill batch), i.e. the sum of
  `build_graph(cfg, specs, batch, ctx).buffers`; backends that materialize the attention score
  matrix (the numpy reference) add that too.

Placement is either everything on one device, or a hybrid split with the first `gpu_layers`
layers (their weights and caches) on the device and the rest plus the non-layer tensors
(embeddings, output head) on the host. On a mixture-of-experts model `cpu_moe_layers` = N
(--n-cpu-moe N; --cpu-moe is every layer) also keeps the routed-expert tensors of layers < N in
host RAM, where the CPU runs their products, while the rest of those layers stays on the device.
Backend-specific planners (e.g. CUDA's) build on `layer_weight_bytes`, `kv_bytes_per_layer` and
`scratch_bytes`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


from .backends.registry import backend_info
from .errors import G4rtError, InsufficientMemoryError
from .model.config import LayerConfig, ModelConfig, layer_index
from .model.graph import build_graph
from .ops import WeightSpec
from .gguf.quant_types import row_bytes

KV_DTYPE_BYTES = {"f16": 2, "f32": 4}
DEFAULT_CTX_CAP = 8192          # never default to a model's full trained length (256K would be ~TBs)
DEFAULT_BATCH = 512
_CTX_STEP = 256                 # a budget-limited default context is rounded down to this



# ---- building blocks ----------------------------------------------------------------------------
def tensor_bytes(spec: WeightSpec) -> int:
    return row_bytes(spec.qtype, spec.cols) * spec.rows


def layer_weight_bytes(cfg: ModelConfig, specs: dict[str, WeightSpec]) -> tuple[list[int], int]:
    """(bytes of each layer's tensors, bytes of the non-layer tensors)."""
    per_layer = [0] * cfg.n_layer
    other = 0
    for name, s in specs.items():
        i = layer_index(name)
        if i is not None and i < cfg.n_layer:
            per_layer[i] += tensor_bytes(s)
        else:
            other += tensor_bytes(s)
    return per_layer, other


def expert_weight_bytes(cfg: ModelConfig, specs: dict[str, WeightSpec]) -> list[int]:
    """Bytes of each layer's routed-expert tensors (the 3-D `*_exps.weight`, WeightSpec.experts > 0)."""
    per_layer = [0] * cfg.n_layer
    for name, s in specs.items():
        i = layer_index(name)
        if s.experts and i is not None and i < cfg.n_layer:
            per_layer[i] += tensor_bytes(s)
    return per_layer


def expert_scratch_bytes(cfg: ModelConfig, batch: int) -> int:
    """Host activations of one MoE layer's expert products run on the CPU (reused layer to layer):
    per token its input row, route and output row, and per chosen expert gate+up and down rows."""
    return max((4 * batch * (L.n_expert_used * (2 * L.expert_ffn + cfg.n_embd) + 2 * cfg.n_embd + 2 * L.n_expert_used)
                for L in cfg.layers if L.moe), default=0)


def moe_transfer_bytes(cfg: ModelConfig, cpu_moe_layers: int) -> int:
    """Bytes crossing between device and host per token when the experts of layers < N run on the
    host: each such MoE layer sends its f32 input row and route (weights and indices as f32) and
    gets its f32 output row back."""
    return sum(4 * (2 * cfg.n_embd + 2 * L.n_expert_used) for L in cfg.layers[:cpu_moe_layers] if L.moe)


def expert_layers_on_host(cfg: ModelConfig, backend: str, cpu_moe: bool, n_cpu_moe: Optional[int]) -> int:
    """--cpu-moe / --n-cpu-moe N as the number of leading layers whose experts stay in host RAM
    (0: none), or a G4rtError naming what is wrong with the request."""
    if not cpu_moe and n_cpu_moe is None:
        return 0
    if cpu_moe and n_cpu_moe is not None:
        raise G4rtError("give --cpu-moe or --n-cpu-moe N, not both")
    what = "--cpu-moe" if cpu_moe else "--n-cpu-moe"
    if not backend_info(backend).has_device_memory:
        raise G4rtError(f"{what} needs a GPU backend (--backend cuda or vulkan); on {backend} "
                        "everything already runs on the CPU")
    if not any(L.moe for L in cfg.layers):
        raise G4rtError(f"{what}: this model has no mixture-of-experts layers")
    if cpu_moe:
        return cfg.n_layer
    if not 0 <= n_cpu_moe <= cfg.n_layer:
        raise G4rtError(f"--n-cpu-moe must be in 0..{cfg.n_layer}, got {n_cpu_moe}"
                        + (f" (more than the model's {cfg.n_layer} layers)" if n_cpu_moe > cfg.n_layer else ""))
    return n_cpu_moe


def cpu_moe_option(n: int, n_layer: int) -> str:
    """The command-line spelling of an expert placement."""
    return "--cpu-moe" if n >= n_layer else f"--n-cpu-moe {n}"


def kv_rows(layer: LayerConfig, ctx: int, ring_slack: int = 0) -> int:
    """Cached positions of a layer: a sliding layer's ring holds the window plus `ring_slack` rows
    (kept so that a sequence can move back exactly: chat turns, speculative decoding)."""
    return min(ctx, layer.window + ring_slack) if layer.window else ctx


def kv_bytes_per_layer(cfg: ModelConfig, ctx: int, kv_bytes: int, ring_slack: int = 0) -> list[int]:
    """K and V cache bytes held by each layer (0 for layers reading another layer's cache)."""
    return [2 * kv_rows(L, ctx, ring_slack) * L.kv_width * kv_bytes if L.owns_kv else 0 for L in cfg.layers]


def scratch_bytes(cfg: ModelConfig, specs: dict[str, WeightSpec], batch: int, ctx: int) -> int:
    """Activation bytes of one forward graph of `batch` tokens (every buffer, 4 bytes a value)."""
    g = build_graph(cfg, specs, max(1, min(batch, ctx)), ctx)
    return sum(b.rows * b.cols * 4 for b in g.buffers.values())


def attention_score_bytes(cfg: ModelConfig, batch: int, ctx: int) -> int:
    """Workspace of a backend that materializes attention (the numpy reference): for the widest
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
    cpu_moe_layers: int = 0      # the experts of layers < this are in host RAM (--n-cpu-moe)
    experts_device: int = 0      # routed-expert weight bytes (part of weights_device / weights_host)
    experts_host: int = 0
    moe_transfer: int = 0        # bytes per token between device and host for the host-side experts
    host_budget: Optional[int] = None
    fit_cpu_moe: Optional[int] = None   # fewest layers whose experts must be on the host to fit
    slots: int = 1               # sequences, each with its own KV cache
    ring_slack: int = 0          # extra rows in every sliding ring

    @property
    def hybrid(self) -> bool:
        """Anything on the host: a layer split or experts kept in host RAM."""
        return self.gpu_layers < self.n_layer or self.experts_host > 0

    @property
    def device_total(self) -> int:
        return self.weights_device + self.kv_device + self.scratch_device

    @property
    def host_total(self) -> int:
        return self.weights_host + self.kv_host + self.scratch_host

    @property
    def fits_device(self) -> bool:
        return self.budget is None or self.device_total <= self.budget

    @property
    def fits_host(self) -> bool:
        return self.host_budget is None or self.host_total <= self.host_budget

    @property
    def fits(self) -> bool:
        return self.fits_device and self.fits_host

    @property
    def moe(self) -> bool:
        return self.experts_device + self.experts_host > 0

    def placement(self) -> str:
        place = (f"first {self.gpu_layers} of {self.n_layer} layers on the {self.device}"
                 if self.gpu_layers < self.n_layer else f"all {self.n_layer} layers on the {self.device}")
        if self.cpu_moe_layers >= self.n_layer:
            place += ", every layer's experts in host RAM (--cpu-moe)"
        elif self.cpu_moe_layers:
            place += (f", the experts of layers 0-{self.cpu_moe_layers - 1} in host RAM "
                      f"(--n-cpu-moe {self.cpu_moe_layers})")
        return place

    def advice(self) -> str:
        """One line: what is needed, and what would fit instead."""
        kv = {2: "f16", 4: "f32"}.get(self.kv_bytes, f"{self.kv_bytes}-byte")
        need = (f"{self.model} at context {self.ctx} ({kv} KV) needs {human(self.device_total)} on the "
                f"{self.device} (weights {human(self.weights_device)}, KV cache {human(self.kv_device)}, "
                f"scratch {human(self.scratch_device)})")
        if self.hybrid:
            need += f" and {human(self.host_total)} in host RAM"
        if self.fits:
            within = ([f"the budget of {human(self.budget)}"] if self.budget else []) + \
                ([f"the host budget of {human(self.host_budget)}"] if self.host_budget else [])
            return need + (", within " + " and ".join(within) if within else "")
        over = ([] if self.fits_device else [f"the budget of {human(self.budget)}"]) + \
            ([] if self.fits_host else [f"the host RAM budget of {human(self.host_budget)}"])
        return f"{need}, more than {' and '.join(over)}{self._fit_tail()}"

    def _fit_tail(self) -> str:
        options = []
        if self.fit_ctx:
            options.append(f"a context of {self.fit_ctx} (--ctx {self.fit_ctx})")
        if self.fit_gpu_layers and self.fit_gpu_layers < self.n_layer:
            options.append(f"{self.fit_gpu_layers} of {self.n_layer} layers on the {self.device} at context {self.ctx}")
        if self.fit_cpu_moe is not None:
            which = f"the experts of {self.fit_cpu_moe} of {self.n_layer} layers" if self.fit_cpu_moe else "no experts"
            options.append(f"{which} in host RAM ({cpu_moe_option(self.fit_cpu_moe, self.n_layer)}) "
                           f"at context {self.ctx}")
        if options:
            return "; it would fit with " + ", or with ".join(options)
        if not self.fits_device and self.weights_device > self.budget:
            return "; nothing fits: the weights alone exceed it"
        if not self.fits_host and self.weights_host > self.host_budget:
            return "; nothing fits: the weights in host RAM alone exceed it"
        return "; not even a minimal context fits"

    def error(self) -> InsufficientMemoryError:
        return InsufficientMemoryError(self.advice())

    def markdown(self) -> str:
        kv = {2: "f16", 4: "f32"}.get(self.kv_bytes, f"{self.kv_bytes} B")
        lines = [f"## Memory plan: {self.model}", "",
                 f"Context {self.ctx}, prefill batch {self.batch}, KV cache {kv}{self._kv_layout()}, "
                 f"{self.placement()}.", ""]
        cols = ["part", self.device] + (["host"] if self.hybrid else [])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

        def row(name, dev, host):
            cells = [name, human(dev)] + ([human(host)] if self.hybrid else [])
            lines.append("| " + " | ".join(cells) + " |")
        row("weights", self.weights_device, self.weights_host)
        if self.moe:
            row("&nbsp; routed experts", self.experts_device, self.experts_host)
        row("KV cache", self.kv_device, self.kv_host)
        lines.append(f"| &nbsp; sliding layers | {human(self.kv_sliding)} (all) |" + (" |" if self.hybrid else ""))
        lines.append(f"| &nbsp; global layers | {human(self.kv_global)} (all) |" + (" |" if self.hybrid else ""))
        row("scratch (activations)", self.scratch_device, self.scratch_host)
        row("**total**", self.device_total, self.host_total)
        lines.append("")
        if self.moe_transfer:
            lines += [f"Host-side experts: {human(self.moe_transfer)} cross between the {self.device} and the "
                      "host per token (each such layer's input row and route out, its output row back).", ""]
        if self.budget is not None or self.host_budget is not None:
            lines += self._budget_lines() + [""]
        return "\n".join(lines)

    def _kv_layout(self) -> str:
        out = f" for {self.slots} sequence slots" if self.slots > 1 else ""
        return out + (f" (sliding rings {self.ring_slack} rows longer than the window)" if self.ring_slack else "")

    def _budget_lines(self) -> list[str]:
        lines = []
        for name, total, budget, ok in (("Budget", self.device_total, self.budget, self.fits_device),
                                        ("Host RAM budget", self.host_total, self.host_budget, self.fits_host)):
            if budget is not None:
                lines.append(f"{name} {human(budget)}: {'fits' if ok else 'does NOT fit'} "
                             f"({human(abs(budget - total))} {'to spare' if ok else 'over'}).")
        if self.fit_ctx is not None:
            lines.append(f"Largest context in this budget: {self.fit_ctx}.")
        if self.fit_gpu_layers is not None and self.device != "CPU":
            lines.append(f"Most layers on the {self.device} at context {self.ctx}: "
                         f"{self.fit_gpu_layers} of {self.n_layer}.")
        if self.moe and self.budget is not None and self.device != "CPU":
            lines.append(f"Fewest layers with their experts in host RAM at context {self.ctx}: " + (
                "none fits, even with --cpu-moe." if self.fit_cpu_moe is None else
                "0 (none needed)." if self.fit_cpu_moe == 0 else
                f"{self.fit_cpu_moe} ({cpu_moe_option(self.fit_cpu_moe, self.n_layer)})."))
        return lines


def _within(plan: Plan, budget: Optional[int], host_budget: Optional[int] = None) -> bool:
    return (budget is None or plan.device_total <= budget) and \
        (host_budget is None or plan.host_total <= host_budget)


class _Planner:
    """Caches the ctx-independent parts so searches over ctx or layers stay cheap."""

    def __init__(self, cfg: ModelConfig, specs: dict[str, WeightSpec], batch: int, kv_bytes: int,
                 materialized_attention: bool, ring_slack: int = 0, slots: int = 1):
        if kv_bytes <= 0:
            raise G4rtError(f"KV bytes per value must be positive, got {kv_bytes}")
        if slots < 1 or ring_slack < 0:
            raise G4rtError(f"sequence slots must be >= 1 and ring slack >= 0, got {slots} / {ring_slack}")
        self.ring_slack, self.slots = int(ring_slack), int(slots)
        self.cfg, self.specs, self.batch, self.kv_bytes = cfg, specs, max(1, int(batch)), kv_bytes
        self.materialized = materialized_attention
        self.layer_w, self.other_w = layer_weight_bytes(cfg, specs)
        self.expert_w = expert_weight_bytes(cfg, specs)
        self._scratch: dict[int, int] = {}

    def scratch(self, ctx: int) -> int:
        n = min(self.batch, ctx)
        if n not in self._scratch:     # buffers depend on the batch only, not on ctx
            self._scratch[n] = scratch_bytes(self.cfg, self.specs, n, ctx)
        extra = attention_score_bytes(self.cfg, n, ctx) if self.materialized else 0
        return self._scratch[n] + extra

    def _check(self, ctx: int, k: int, n_moe: int) -> None:
        n_layer = self.cfg.n_layer
        if ctx <= 0:
            raise G4rtError(f"context size must be positive, got {ctx}")
        if not 0 <= k <= n_layer:
            raise G4rtError(f"gpu_layers must be in 0..{n_layer}, got {k}")
        if not 0 <= n_moe <= n_layer:
            raise G4rtError(f"cpu_moe_layers must be in 0..{n_layer}, got {n_moe}")
        if n_moe and not any(self.expert_w):
            raise G4rtError("expert placement (--cpu-moe, --n-cpu-moe) needs a mixture-of-experts model; "
                            "this one has no expert tensors")

    def plan(self, ctx: int, gpu_layers: Optional[int], cpu_moe_layers: int = 0, **labels) -> Plan:
        cfg = self.cfg
        k = cfg.n_layer if gpu_layers is None else gpu_layers
        self._check(ctx, k, cpu_moe_layers)
        kv = [b * self.slots for b in kv_bytes_per_layer(cfg, ctx, self.kv_bytes, self.ring_slack)]
        on_dev = lambda i: i < k                                           # noqa: E731
        all_dev = k == cfg.n_layer
        split_moe = min(cpu_moe_layers, k)     # device layers whose experts stay on the host
        dev_w = [w - (self.expert_w[i] if i < split_moe else 0) for i, w in enumerate(self.layer_w[:k])]
        weights_device = sum(dev_w) + (self.other_w if all_dev else 0)
        experts_host = sum(self.expert_w[:split_moe]) + sum(self.expert_w[k:])
        scratch = self.scratch(ctx)
        return Plan(
            slots=self.slots, ring_slack=self.ring_slack,
            ctx=ctx, batch=min(self.batch, ctx), kv_bytes=self.kv_bytes, n_layer=cfg.n_layer, gpu_layers=k,
            weights_device=weights_device,
            weights_host=sum(self.layer_w) + self.other_w - weights_device,
            kv_device=sum(b for i, b in enumerate(kv) if on_dev(i)),
            kv_host=sum(b for i, b in enumerate(kv) if not on_dev(i)),
            kv_sliding=sum(b for L, b in zip(cfg.layers, kv) if L.window),
            kv_global=sum(b for L, b in zip(cfg.layers, kv) if not L.window),
            scratch_device=scratch if k > 0 or all_dev else 0,
            scratch_host=self._host_scratch(ctx, scratch, all_dev, split_moe),
            cpu_moe_layers=cpu_moe_layers, experts_device=sum(self.expert_w) - experts_host,
            experts_host=experts_host, moe_transfer=moe_transfer_bytes(cfg, split_moe), **labels)

    def _host_scratch(self, ctx: int, scratch: int, all_dev: bool, split_moe: int) -> int:
        if not all_dev:
            return scratch           # a layer split runs whole layers on the host
        if any(self.expert_w[:split_moe]):
            return expert_scratch_bytes(self.cfg, min(self.batch, ctx))
        return 0

    def max_context(self, budget: Optional[int], gpu_layers: Optional[int], limit: int, cpu_moe_layers: int = 0,
                    host_budget: Optional[int] = None) -> int:
        fits = lambda ctx: _within(self.plan(ctx, gpu_layers, cpu_moe_layers), budget, host_budget)  # noqa: E731
        lo, hi = 0, limit            # invariant: lo fits (0 = nothing), hi + 1 does not or is past limit
        if not fits(1):
            return 0
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def max_gpu_layers(self, budget: Optional[int], ctx: int, cpu_moe_layers: int = 0) -> int:
        best = 0
        for k in range(self.cfg.n_layer + 1):
            if _within(self.plan(ctx, k, cpu_moe_layers), budget):
                best = k
            else:
                break
        return best

    def min_cpu_moe_layers(self, budget: Optional[int], ctx: int, gpu_layers: Optional[int],
                           host_budget: Optional[int] = None) -> Optional[int]:
        """The fewest leading layers whose experts must be on the host for the device to fit (the
        device part shrinks and the host part grows with N, so the first N that fits the device
        is also the best chance for the host); None if none fits or the model has no experts."""
        if not any(self.expert_w):
            return None
        for n in range(self.cfg.n_layer + 1):
            p = self.plan(ctx, gpu_layers, n)
            if _within(p, budget):
                return n if _within(p, None, host_budget) else None
        return None


def make_plan(cfg: ModelConfig, specs: dict[str, WeightSpec], ctx: int, *, kv_bytes: int = 2,
              batch: int = DEFAULT_BATCH, budget: Optional[int] = None, gpu_layers: Optional[int] = None,
              materialized_attention: bool = False, device: str = "device", model: str = "model",
              check: bool = True, cpu_moe_layers: int = 0, host_budget: Optional[int] = None,
              ring_slack: int = 0, slots: int = 1) -> Plan:
    """The memory plan at context `ctx`. With a budget (device) or host_budget (host RAM), also what
    fits them; with check=True a plan over budget raises InsufficientMemoryError naming a context,
    layer split or expert placement that would fit. ring_slack, slots: extra sliding-ring rows and
    sequences, each with its own KV cache (as Engine allocates them)."""
    p = _Planner(cfg, specs, batch, kv_bytes, materialized_attention, ring_slack, slots)
    plan = p.plan(ctx, gpu_layers, cpu_moe_layers, device=device, model=model, budget=budget,
                  host_budget=host_budget)
    if budget is not None or host_budget is not None:
        fit_layers = p.max_gpu_layers(budget, ctx, cpu_moe_layers)
        # more layers on the device only shrink the host part: if the most that fit the device
        # overflow the host, no split fits
        if not _within(p.plan(ctx, fit_layers, cpu_moe_layers), None, host_budget):
            fit_layers = None
        plan = Plan(**{**plan.__dict__,
                       "fit_ctx": p.max_context(budget, gpu_layers, max(ctx, cfg.context_length),
                                                cpu_moe_layers, host_budget),
                       "fit_gpu_layers": fit_layers,
                       "fit_cpu_moe": p.min_cpu_moe_layers(budget, ctx, gpu_layers, host_budget)})
        if check and not plan.fits:
            raise plan.error()
    return plan


def max_context(cfg: ModelConfig, specs: dict[str, WeightSpec], budget: int, *, kv_bytes: int = 2,
                batch: int = DEFAULT_BATCH, gpu_layers: Optional[int] = None,
                materialized_attention: bool = False, limit: Optional[int] = None, cpu_moe_layers: int = 0,
                ring_slack: int = 0, slots: int = 1) -> int:
    """The largest context (<= limit, default the trained length) whose plan fits `budget`; 0 if none."""
    p = _Planner(cfg, specs, batch, kv_bytes, materialized_attention, ring_slack, slots)
    return p.max_context(budget, gpu_layers, limit or cfg.context_length, cpu_moe_layers)


def max_gpu_layers(cfg: ModelConfig, specs: dict[str, WeightSpec], ctx: int, budget: int, *,
                   kv_bytes: int = 2, batch: int = DEFAULT_BATCH, materialized_attention: bool = False,
                   cpu_moe_layers: int = 0) -> int:
    """The most leading layers (0..n_layer) whose weights, caches and scratch fit `budget` on the device;
    n_layer means the whole model (with the embeddings and output head) fits."""
    return _Planner(cfg, specs, batch, kv_bytes, materialized_attention).max_gpu_layers(budget, ctx, cpu_moe_layers)


def min_cpu_moe_layers(cfg: ModelConfig, specs: dict[str, WeightSpec], ctx: int, budget: int, *,
                       kv_bytes: int = 2, batch: int = DEFAULT_BATCH, gpu_layers: Optional[int] = None,
                       materialized_attention: bool = False, host_budget: Optional[int] = None) -> Optional[int]:
    """The smallest N such that with the experts of layers < N in host RAM (--n-cpu-moe N) the
    device part fits `budget` (and the host part `host_budget`); None if even --cpu-moe does not."""
    p = _Planner(cfg, specs, batch, kv_bytes, materialized_attention)
    return p.min_cpu_moe_layers(budget, ctx, gpu_layers, host_budget)


def default_context(cfg: ModelConfig, specs: dict[str, WeightSpec], budget: Optional[int] = None, *,
                    kv_bytes: int = 4, batch: int = DEFAULT_BATCH, materialized_attention: bool = False,
                    cpu_moe_layers: int = 0, ring_slack: int = 0, slots: int = 1) -> int:
    """The trained length, capped at 8192 and, when a budget is known, at what fits it."""
    ctx = min(cfg.context_length, DEFAULT_CTX_CAP)
    if budget is None:
        return ctx
    fit = max_context(cfg, specs, budget, kv_bytes=kv_bytes, batch=batch, cpu_moe_layers=cpu_moe_layers,
                      materialized_attention=materialized_attention, limit=ctx, ring_slack=ring_slack, slots=slots)
    if fit == 0:
        raise make_plan(cfg, specs, min(ctx, 256), kv_bytes=kv_bytes, batch=batch, budget=budget,
                        cpu_moe_layers=cpu_moe_layers, materialized_attention=materialized_attention,
                        check=False, ring_slack=ring_slack, slots=slots).error()
    return fit if fit == ctx or fit < _CTX_STEP else fit // _CTX_STEP * _CTX_STEP
