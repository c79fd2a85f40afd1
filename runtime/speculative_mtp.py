"""The MTP assistant drafter (`--draft ASSISTANT.gguf` of arch gemma4-assistant): Google's Gemma 4
assistant proposes tokens from the target's own state, so it has no prefill and no KV cache.

Each proposal round starts from the target's post-norm hidden state of its last cached position
(the row the target's last forward computed: Engine.hidden_state, no second pass) and the token
that row produced (the last token of the history, not yet cached). Every draft step runs at that
token's position (as transformers' SinglePositionMultiTokenCandidateGenerator and llama.cpp's
draft-mtp do): it reads the target's caches in place and feeds its argmax and its projected
hidden state to the next step. Proposals are greedy point masses, so Speculator's acceptance rule
keeps the target's distribution.

Nothing of the target's KV cache is copied. On a host target (native CPU, numpy reference) the
drafter's op list runs on a second backend of the target's kind whose caches are the target
backend's own cache arrays (the same objects). On a device target (Vulkan, CUDA) it is compiled on
the target's own backend instance: its weights are uploaded there under the prefix `mtp.` (the
target's embedding table is the one already on the device), and its PastAttention ops bind the
target's cache buffers by name. A hybrid target drafts on the half that holds those caches.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .backends import create_backend
from .engine import Engine
from .errors import G4rtError
from .gguf.reader import GGUFFile
from .model.assistant import AssistantConfig, load_assistant_config
from .model.assistant_graph import NEXT_HIDDEN, TARGET_EMBD, AssistantWeights, build_assistant_graph, hidden_input_name
from .ops import WEIGHT_FIELDS, Graph, Segment

#: The drafter's weights on a backend shared with the target (the assistant's tensors are named
#: blk.N... like the target's).
MTP_PREFIX = "mtp."
#: Backends whose load_weights adds to what is loaded (the drafter shares the target's instance).
SHARED_KINDS = ("vulkan", "cuda")


class AssistantBackendError(G4rtError):
    """A target backend the assistant drafter cannot share a KV cache with."""


def host_caches(target: Engine, backend=None) -> dict[str, np.ndarray]:
    """The target backend's (or of `backend`, the half of a hybrid target holding the caches the
    drafter reads) KV cache arrays by name, when they live in host memory."""
    be = target.backend if backend is None else backend
    caches = getattr(be, "caches", None)
    if not isinstance(caches, dict) or not all(isinstance(a, np.ndarray) for a in caches.values()):
        raise AssistantBackendError(f"the MTP assistant reads the target's KV cache in host memory; the target's "
                                    f"backend ({be.device_name}) keeps it elsewhere: run the target "
                                    "on the cpu or numpy backend, or use a draft model")
    return caches


def cache_home(target: Engine, names) -> object:
    """The backend holding the caches the drafter reads: the target's, or of a hybrid target
    (--gpu-layers) the half that holds all of them (each half gets its caches when the hybrid
    compiles its first graph: the decode graph is compiled here if it was not yet)."""
    tb = target.backend
    if tb.name != "hybrid":
        return tb
    if getattr(tb, "back_expert_layers", 0):
        raise AssistantBackendError(f"the MTP assistant drafter does not run beside a target whose experts are "
                                    f"placed apart (--cpu-moe / --n-cpu-moe, {tb.device_name}): its pieces keep no "
                                    "hidden rows to read; use a draft model")
    target.graph(1)
    for half in (tb.front, tb.back):
        if all(n in getattr(half, "caches", {}) for n in names):
            return half
    raise AssistantBackendError(f"the MTP assistant drafter reads the caches {', '.join(sorted(names))} through one "
                                f"backend; this hybrid target ({tb.device_name}, --gpu-layers) splits them over its "
                                "two halves: move the --gpu-layers split, or use a draft model")


def drafter_backend(target: Engine, home=None):
    """(backend, shared) for the drafter, by the backend holding the caches it reads (`home`:
    cache_home's answer, default the target's backend): on a host backend a new backend of its
    kind (the native CPU with its threads, KV dtype and precision, or the numpy reference), whose
    caches are then set to its arrays; on Vulkan / CUDA that backend instance itself (shared),
    which holds the caches on the device."""
    tb = target.backend if home is None else home
    if tb.name == "cpu":
        return create_backend("cpu", threads=tb.threads, kv_dtype=tb.kv_dtype, precision=tb.precision), False
    if tb.name == "numpy":
        return create_backend("numpy", kv_dtype=tb.kv_dtype), False
    if tb.name in SHARED_KINDS:
        return tb, True
    if tb.name == "hybrid":
        raise AssistantBackendError(f"the MTP assistant drafter runs on the half of a hybrid target ({tb.device_name}, "
                                    "--gpu-layers) that holds the caches it reads (cache_home), not on the hybrid")
    raise AssistantBackendError(f"the MTP assistant drafter runs beside a cpu, numpy, vulkan or cuda target; this "
                                f"target runs on {tb.device_name}: use a draft model (--draft a small model) instead")


def _cache_shape(backend, name: str):
    """(rows, cols) of a cache as a backend holds it (numpy array, Vulkan CacheLocation, CUDA
    DeviceArray), None when it has none of that name."""
    c = backend.caches.get(name)
    if c is None:
        return None
    if isinstance(c, np.ndarray):
        return c.shape
    if hasattr(c, "cache"):                              # Vulkan: the KvCache it was placed for
        return (c.cache.slots * c.cache.rows, c.cache.cols)
    return (c.rows, c.cols)


class DrafterSource:
    """The WeightSource of a backend the drafter shares with the target: `mtp.`-prefixed names are
    the drafter's (AssistantWeights), every other name the target's own source."""

    def __init__(self, target_source, drafter_weights: AssistantWeights):
        self.target, self.drafter = target_source, drafter_weights

    def weight_bytes(self, name: str) -> np.ndarray:
        if name.startswith(MTP_PREFIX):
            return self.drafter.weight_bytes(name[len(MTP_PREFIX):])
        return self.target.weight_bytes(name)

    def release_weight(self, name: str) -> int:
        """The target's mapped pages of a weight the backend copied (the drafter's stay)."""
        release = getattr(self.target, "release_weight", None)
        return 0 if name.startswith(MTP_PREFIX) or release is None else release(name)


def namespaced(graph: Graph, rename: dict[str, str]) -> Graph:
    """The graph with its weights renamed: `rename[name]` where given, else MTP_PREFIX + name."""
    def new(name):
        return rename.get(name, MTP_PREFIX + name)
    ops = []
    for op in graph.ops:
        fields = {a: new(getattr(op, a)) for a in WEIGHT_FIELDS if getattr(op, a, None) is not None}
        ops.append(dataclasses.replace(op, **fields) if fields else op)
    weights = {new(n): dataclasses.replace(w, name=new(n)) for n, w in graph.weights.items()}
    return dataclasses.replace(graph, ops=ops, weights=weights)


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
        tb = cache_home(target, graph.caches)          # the target's backend, or a hybrid's half
        if tb.name not in SHARED_KINDS + ("cpu", "numpy"):
            drafter_backend(target, tb)                 # the refusal, with its reason
        if tb.name not in SHARED_KINDS:
            host_caches(target, tb)
        for name, c in graph.caches.items():
            if _cache_shape(tb, name) != (c.slots * c.rows, c.cols):
                raise AssistantBackendError(f"the target has no cache {name} of {c.slots * c.rows} x {c.cols}")
        if tb.name not in SHARED_KINDS:
            check_assistant_fits(self.file, tb.name)
        self.backend, self.shared = drafter_backend(target, tb)
        if self.shared:
            # the target's backend: the drafter's weights beside the target's (prefixed), the
            # target's embedding table as it is on the device, the target's caches by name
            embd = "token_embd.weight"
            loaded = getattr(tb, "weights", {})
            if any(n.startswith(MTP_PREFIX) for n in loaded):
                raise AssistantBackendError(f"the target's backend ({tb.device_name}) already holds an MTP "
                                            "drafter's weights: one assistant per target")
            have = embd in loaded
            self._rename = {TARGET_EMBD: embd} if have else {}
            graph = namespaced(graph, self._rename)
            self.backend.load_weights({n: w for n, w in graph.weights.items() if n.startswith(MTP_PREFIX)},
                                      DrafterSource(tb.source, self.weights))
        else:
            caches = host_caches(target, tb)
            self.backend.load_weights(graph.weights, self.weights)
            self.backend.allocate_caches(graph.caches)      # its bookkeeping; the arrays are then
            self.backend.caches.update({name: caches[name] for name in graph.caches})   # the target's own
        self._graphs = {1: self._compile(graph)}      # one compiled step per row count (slots together)
        target.keep_hidden = True          # the target keeps its hidden rows for propose

    def _build(self, n_rows: int):
        t = self.target
        return build_assistant_graph(self.config, t.config, self.weights.specs, n_rows, t.ctx, t.ring_slack, t.slots)

    @property
    def graph(self):
        """The compiled one-row draft step."""
        return self._graphs[1]

    def _graph_for(self, n_rows: int):
        g = self._graphs.get(n_rows)
        if g is None:
            graph = self._build(n_rows)
            if self.shared:
                graph = namespaced(graph, self._rename)
            g = self._graphs[n_rows] = self._compile(graph)
        return g

    def _compile(self, graph):
        self.backend.declare_inputs({n: (b.rows, b.cols) for n, b in graph.inputs.items()})
        return self.backend.compile(graph)

    def step(self, token: int, hidden: np.ndarray, pos: int, slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """One draft step: (logits [n_vocab], next hidden [H_target]) for `token` at `pos` with the
        previous hidden state (the target's, or the last step's projection)."""
        logits, nxt = self.step_many([token], np.asarray(hidden, np.float32).reshape(1, -1), [pos], [slot])
        return logits[0], nxt[0]

    def step_many(self, tokens: Sequence[int], hiddens: np.ndarray, positions: Sequence[int],
                  slots: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`step` for several slots in one graph call (row-exact: each row's bits are its one-row
        step's): logits [n, n_vocab] and next hidden states [n, H_target]."""
        n = len(tokens)
        g = self._graph_for(n)
        self.backend.write_inputs({hidden_input_name(n): np.asarray(hiddens, np.float32).reshape(n, -1)})
        segs = tuple(Segment(i, 1, int(p), int(s)) for i, (p, s) in enumerate(zip(positions, slots)))
        logits = np.array(g.run(np.asarray(tokens, np.int32), segs), np.float32, copy=True)
        return logits.reshape(n, -1), np.array(g.read_buffers([NEXT_HIDDEN])[NEXT_HIDDEN][:n], np.float32)

    def propose(self, history: Sequence[int], k: int, slot: int = 0) -> list[int]:
        return self.propose_many([(history, k, slot)])[0]

    def propose_many(self, asks: Sequence[tuple[Sequence[int], int, int]]) -> list[list[int]]:
        """Proposals for several slots ((history, k, slot) each): the slots still drafting step
        together, one graph call per draft step (the weights read once for all of them)."""
        outs: list[list[int]] = [[] for _ in asks]
        live = []                                  # [index, token, hidden, pos, slot, k]
        for i, (history, k, slot) in enumerate(asks):
            pos = self.target.position(slot)
            hidden = self.target.hidden_state(slot)
            if k < 1 or pos < 1 or hidden is None or len(history) != pos + 1:
                continue       # no hidden state of the last position at hand: a plain step makes one
            live.append([i, int(history[-1]), hidden, pos, slot, k])
        while live:
            logits, hidden = self.step_many([r[1] for r in live], np.stack([r[2] for r in live]),
                                            [r[3] for r in live], [r[4] for r in live])
            still = []
            for r, row, h in zip(live, logits, hidden):
                tok = int(np.argmax(row))
                if self.p_min > 0.0 and _top_probability(row) < self.p_min:
                    continue
                outs[r[0]].append(tok)
                if len(outs[r[0]]) < r[5]:
                    r[1], r[2] = tok, h
                    still.append(r)
            live = still
        return outs

    def close(self) -> None:
        if not self.shared:            # a shared backend is the target's: it closes with the target
            self.backend.close()


def _top_probability(logits: np.ndarray) -> float:
    x = logits.astype(np.float64)
    return float(1.0 / np.exp(x - x.max()).sum())


__all__ = ["AssistantBackendError", "AssistantDrafter", "host_caches"]
