"""What a speculative draft adds to the memory plan (`g4rt info MODEL --plan --draft FILE`).

Two kinds of draft cost differently:
- an MTP assistant (gemma4-assistant) runs where the target runs (its weights beside the
  target's, on the device for a GPU target) and has no KV cache: it reads the target's; its
  only other memory is one draft step's activations per slot;
- a separate draft model runs on its own backend (--draft-backend, default the native CPU) with
  its own KV cache for every slot, as Engine allocates it (the same sliding-ring slack).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .gguf.reader import GGUFFile
from .memory_plan import human, make_plan
from .model.config import ModelConfig
from .ops import WeightSpec, activation_bytes


@dataclass(frozen=True)
class DraftCost:
    name: str
    kind: str                    # "MTP assistant" | "draft model"
    where: str                   # the memory it lives in, e.g. "CPU" or "GPU (vulkan)"
    weights: int
    kv: int
    scratch: int
    note: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.scratch

    def markdown(self) -> str:
        kv = human(self.kv) if self.kv else "none (it reads the target's)"
        lines = ["", f"## Draft: {self.name} ({self.kind}, on the {self.where})", "",
                 "| part | bytes |", "|---|---|",
                 f"| weights | {human(self.weights)} |",
                 f"| KV cache | {kv} |",
                 f"| scratch (activations) | {human(self.scratch)} |",
                 f"| **total** | {human(self.total)} |", ""]
        if self.note:
            lines += [self.note, ""]
        return "\n".join(lines)


def assistant_cost(f: GGUFFile, target: ModelConfig, target_specs: dict[str, WeightSpec], ctx: int, *,
                   where: str, slots: int = 1, ring_slack: int = 0) -> DraftCost:
    """An MTP assistant checked against `target` (a mismatch raises as at load time)."""
    from .model.assistant import load_assistant_config
    from .model.assistant_graph import AssistantWeights, build_assistant_graph
    cfg = load_assistant_config(f, target)
    weights = AssistantWeights(f, None, target_specs, cfg)
    # every slot may draft in one step: the activations of a step of `slots` rows
    graph = build_assistant_graph(cfg, target, weights.specs, slots, ctx, ring_slack, slots)
    own = sum(t.nbytes for t in f.tensors.values())
    note = "Its input embedding is the target's own table (not copied)."
    if cfg.has_centroids:
        note += f" Note: {cfg.head_note}."
    return DraftCost(f.path.name, "MTP assistant", where, own, 0, activation_bytes(graph), note)


def draft_model_cost(f: GGUFFile, ctx: int, *, where: str, kv_bytes: int, slots: int = 1,
                     ring_slack: int = 0) -> DraftCost:
    """A separate draft model: its own weights, KV cache per slot and prefill scratch."""
    from .model.config import load_config
    from .model.graph import model_weight_specs
    cfg = load_config(f)
    specs, _ = model_weight_specs(cfg, f)
    p = make_plan(cfg, specs, ctx, kv_bytes=kv_bytes, check=False, device=where, model=f.path.name,
                  ring_slack=ring_slack, slots=slots)
    return DraftCost(f.path.name, "draft model", where, p.weights_device + p.weights_host,
                     p.kv_device + p.kv_host, p.scratch_device + p.scratch_host)


def draft_cost(path, target: ModelConfig, target_specs: dict[str, WeightSpec], ctx: int, *, target_where: str,
               draft_where: str, kv_bytes: int, slots: int = 1, ring_slack: int = 0) -> DraftCost:
    """The cost of `--draft path` beside a target planned at `ctx`."""
    from .model.assistant import is_assistant
    f = GGUFFile(Path(path))
    if is_assistant(f):
        return assistant_cost(f, target, target_specs, ctx, where=target_where, slots=slots, ring_slack=ring_slack)
    return draft_model_cost(f, ctx, where=draft_where, kv_bytes=kv_bytes, slots=slots, ring_slack=ring_slack)


__all__ = ["DraftCost", "assistant_cost", "draft_cost", "draft_model_cost"]
