"""The MTP assistant drafter (`--draft ASSISTANT.gguf` of arch gemma4-assistant): Google's Gemma 4
assistant proposes tokens from the target's own state, so it has no prefill and no KV cache.

Each proposal round starts from the target's post-norm hidden state of its last cached position
(the row the target's last forward computed: Engine.hidden_state, no second pass) and the token
that row produced (the last token of the history, not yet cached). Every draft step runs at that
token's position (as transformers' SinglePositionMultiTokenCandidateGenerator and llama.cpp's
draft-mtp do): it reads the target's caches in place and feeds its argmax and its projected
hidden state to the next step. Proposals are greedy point masses, so Speculator's acceptance rule
keeps the target's distribution.

The drafter's op list runs on a backend of the target's kind (native CPU or the numpy reference)
whose caches are the target backend's own cache arrays (the same objects: nothing is copied), so
it needs a target whose KV caches live in host memory.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .backends import create_backend
from .engine import Engine
from .errors import G4rtError
from .gguf.reader import GGUFFile
from .model.assistant import AssistantConfig, load_assistant_config
from .model.assistant_graph import NEXT_HIDDEN, AssistantWeights, build_assistant_graph, hidden_input_name
from .ops import Segment


class AssistantBackendError(G4rtError):
    """A target backend the assistant drafter cannot share a KV cache with."""


def host_caches(target: Engine) -> dict[str, np.ndarray]:
    """The target backend's KV cache arrays by name, when they live in host memory."""
    caches = getattr(target.backend, "caches", None)
    if not isinstance(caches, dict) or not all(isinstance(a, np.ndarray) for a in caches.values()):
        raise AssistantBackendError(f"the MTP assistant reads the target's KV cache in host memory; the target's "
                                    f"backend ({target.backend.device_name}) keeps it elsewhere: run the target "
                                    "on the cpu or numpy backend, or use a draft model")
    return caches


def drafter_backend(target: Engine):
    """A backend of the target's kind for the drafter (its own weights, the target's caches):
    the native CPU backend with the target's threads, KV dtype and precision, or the numpy
    reference."""
    tb = target.backend
    if tb.name == "cpu":
        return create_backend("cpu", threads=tb.threads, kv_dtype=tb.kv_dtype, precision=tb.precision)
    if tb.name == "numpy":
        return create_backend("numpy", kv_dtype=tb.kv_dtype)
    raise AssistantBackendError(f"the MTP assistant drafter runs beside a cpu or numpy target; this target runs on "
                                f"{tb.device_name}: use a draft model (--draft a small model) instead")


def check_assistant_fits(f: GGUFFile, backend_name: str) -> None:
    """Refuse, before loading, an assistant whose weights exceed the RAM still available (it
    needs no KV cache: it reads the target's; the numpy reference also keeps f32 copies of the
    weights it dequantizes, bounded by its cache)."""
    from .memory_plan import available_ram
    need = sum(t.raw.nbytes for t in f.tensors.values())
    avail = available_ram()
    if avail is not None and need > avail:
        raise AssistantBackendError(f"the assistant {f.path.name} needs {need / 2**20:.1f} MiB of weights but "
                                    f"{avail / 2**20:.1f} MiB of RAM is available ({backend_name} drafter)")


class AssistantDrafter:
    """Drafts with a gemma4-assistant file for `target` (an Engine): up to k greedy proposals per
    round, fewer when its top probability falls below p_min."""

    name = "mtp"

    def __init__(self, target: Engine, path, p_min: float = 0.0):
        if not 0.0 <= p_min < 1.0:
            raise G4rtError(f"--draft-p-min must be in [0, 1), got {p_min}")
        self.target, self.p_min = target, float(p_min)
        self.file = path if isinstance(path, GGUFFile) else GGUFFile(path)
        self.config: AssistantConfig = load_assistant_config(self.file, target.config)
        if self.config.has_centroids:         # said where the run is announced (the drafter's name)
            self.name = f"mtp ({self.config.head_note})"
        self.weights = AssistantWeights(self.file, target, target.specs, self.config)
        graph = self._build(1)
        caches = host_caches(target)
        for name, c in graph.caches.items():
            if name not in caches or caches[name].shape != (c.slots * c.rows, c.cols):
                raise AssistantBackendError(f"the target has no cache {name} of {c.slots * c.rows} x {c.cols}")
        check_assistant_fits(self.file, target.backend.name)
        self.backend = drafter_backend(target)
        self.backend.load_weights(graph.weights, self.weights)
        self.backend.allocate_caches(graph.caches)      # its bookkeeping; the arrays are then
        self.backend.caches.update({name: caches[name] for name in graph.caches})   # the target's own
        self.backend.declare_inputs({n: (b.rows, b.cols) for n, b in graph.inputs.items()})
        self.graph = self.backend.compile(graph)
        target.keep_hidden = True          # the target keeps its hidden rows for propose

    def _build(self, n_rows: int):
        t = self.target
        return build_assistant_graph(self.config, t.config, self.weights.specs, n_rows, t.ctx, t.ring_slack, t.slots)

    def step(self, token: int, hidden: np.ndarray, pos: int, slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """One draft step: (logits [n_vocab], next hidden [H_target]) for `token` at `pos` with the
        previous hidden state (the target's, or the last step's projection)."""
        self.backend.write_inputs({hidden_input_name(1): np.asarray(hidden, np.float32).reshape(1, -1)})
        logits = self.graph.run(np.array([token], np.int32), (Segment(0, 1, pos, slot),))
        logits = np.array(logits[0], np.float32, copy=True)
        return logits, self.graph.read_buffers([NEXT_HIDDEN])[NEXT_HIDDEN][0]

    def propose(self, history: Sequence[int], k: int, slot: int = 0) -> list[int]:
        pos = self.target.position(slot)
        hidden = self.target.hidden_state(slot)
        if k < 1 or pos < 1 or hidden is None or len(history) != pos + 1:
            return []          # no hidden state of the last position at hand: a plain step makes one
        tok, out = int(history[-1]), []
        while len(out) < k:
            logits, hidden = self.step(tok, hidden, pos, slot)
            tok = int(np.argmax(logits))
            if self.p_min > 0.0 and _top_probability(logits) < self.p_min:
                break
            out.append(tok)
        return out

    def close(self) -> None:
        self.backend.close()


def _top_probability(logits: np.ndarray) -> float:
    x = logits.astype(np.float64)
    return float(1.0 / np.exp(x - x.max()).sum())


__all__ = ["AssistantBackendError", "AssistantDrafter", "host_caches"]
