"""A loaded model bound to a backend: weights on the device, KV caches, recorded graphs, position."""

from __future__ import annotations

import functools

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .backends import backend_info, backend_names, create_backend
from .backends.base import Backend, CompiledGraph
from .errors import ContextOverflowError, G4rtError
from .gguf.reader import GGUFFile
from .memory_plan import DEFAULT_CTX_CAP, KV_DTYPE_BYTES, default_context, make_plan
from .model.config import ModelConfig, load_config
from .model.graph import build_graph, kv_caches, media_input_names, model_weight_specs
from .ops import ROW_EXACT_MAX, Segment, input_rows, one_sequence

DEFAULT_CTX = DEFAULT_CTX_CAP
DEFAULT_PREFILL_CHUNK = 512
#: Shorter shared prefixes are prefilled again: reusing a few tokens (BOS, a template header) saves
#: nothing, and prefill cut at a different place gives slightly different float rounding.
MIN_PREFIX_REUSE = 16
#: Extra sliding-ring rows for callers that reuse a cached prefix across chat turns (the server,
#: `g4rt chat`): as llama.cpp's SWA cache, one prefill chunk beyond the window.
CHAT_RING_SLACK = DEFAULT_PREFILL_CHUNK


@dataclass(frozen=True)
class MediaRows:
    """What a prompt's media put into its rows (for the ids of one forward call): soft tokens
    `embd` [n, n_embd] taken, unscaled, by the rows where `take` is true instead of their token
    embeddings, and `blocks`: (start, stop) row ranges whose rows see each other on sliding layers
    (one image each; empty when the projector keeps images causal). Each block is prefilled in
    one pass, whatever the chunk size."""
    embd: np.ndarray
    take: np.ndarray
    blocks: tuple[tuple[int, int], ...] = ()

    def check(self, n: int, n_embd: int) -> None:
        if self.embd.shape != (n, n_embd) or self.take.shape != (n,):
            raise G4rtError(f"media rows of shape {list(self.embd.shape)} / {list(self.take.shape)} for {n} tokens "
                            f"of width {n_embd}")
        last = 0
        for b0, b1 in self.blocks:
            if not last <= b0 < b1 <= n:
                raise G4rtError(f"media block {b0}..{b1} out of order or outside the {n} tokens")
            last = b1

    def inputs(self, start: int, stop: int) -> Optional[dict[str, np.ndarray]]:
        """The media graph's inputs for rows [start, stop) (None: those rows hold no media)."""
        take = self.take[start:stop]
        blocks = [(max(b0, start), min(b1, stop)) for b0, b1 in self.blocks if b0 < stop and b1 > start]
        if not take.any() and not blocks:
            return None
        n = stop - start
        cap = input_rows(n)             # the inputs' rows: the graph reads the first n
        embd = np.zeros((cap, self.embd.shape[1]), np.float32)
        embd[:n] = self.embd[start:stop]
        flags, ahead = np.zeros((cap, 1), np.float32), np.zeros((cap, 1), np.float32)
        flags[:n, 0] = take
        for b0, b1 in blocks:
            ahead[b0 - start:b1 - start, 0] = np.arange(b1 - b0 - 1, -1, -1)
        names = media_input_names(n)
        return {names["embd"]: embd, names["take"]: flags, names["ahead"]: ahead}


def common_prefix(a, b) -> int:
    """How many leading tokens two id sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


#: Recorded graphs kept per engine: prompts of every length would otherwise each keep one (a
#: server sees thousands); the decode graphs are used every step and so never leave.
MAX_RECORDED_GRAPHS = 24


def kv_value_bytes(backend: str | Backend, kv_dtype: Optional[str] = None) -> int:
    """Bytes per cached K/V value for memory planning: the kv_dtype asked for, else the backend's
    own (a backend object's `kv_dtype`, a hybrid's front's; by name: its registry default; a
    choice not yet made, such as "auto", plans for f32, the larger)."""
    if kv_dtype is None:
        if isinstance(backend, str):
            kv_dtype = backend_info(backend).default_kv_dtype if backend in backend_names() else "f32"
        else:
            kv_dtype = backend.kv_dtype
    return KV_DTYPE_BYTES.get(kv_dtype, 4)


class Engine:
    """Runs a model's op list on one backend. `forward` appends tokens to a sequence.

    slots: how many sequences keep their own KV caches (the server's parallel slots); each slot
    has its own position. Slot 0 is the default everywhere. ring_slack: extra rows in the sliding
    layers' rings, so that a slot can move back that far exactly (see reusable_prefix)."""

    def __init__(self, path, backend: str | Backend = "cpu", ctx: Optional[int] = None,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                 progress: Optional[Callable[[int], None]] = None, memory_budget: Optional[int] = None,
                 slots: int = 1, ring_slack: int = 0, **backend_options):
        self.file = GGUFFile(path)
        self.config: ModelConfig = load_config(self.file)
        self.specs, self.derived = model_weight_specs(self.config, self.file)
        self.prefill_chunk = max(1, int(prefill_chunk))
        # Default: the trained length capped at DEFAULT_CTX and by the budget when one is given
        # (never a blind 256K allocation); an explicit ctx over budget is refused with what fits.
        self.slots = int(slots)
        if self.slots < 1:
            raise G4rtError(f"the number of sequence slots must be at least 1, got {slots}")
        self.ring_slack = max(0, int(ring_slack))
        kv_bytes = kv_value_bytes(backend, backend_options.get("kv_dtype"))
        layout = dict(ring_slack=self.ring_slack, slots=self.slots)    # the caches allocated below
        self.ctx = int(ctx or default_context(self.config, self.specs, memory_budget, kv_bytes=kv_bytes,
                                              batch=self.prefill_chunk, **layout))
        if self.ctx <= 0:
            raise G4rtError(f"context size must be positive, got {self.ctx}")
        if memory_budget is not None:
            make_plan(self.config, self.specs, self.ctx, kv_bytes=kv_bytes, batch=self.prefill_chunk,
                      budget=memory_budget, model=self.file.path.name, **layout)
        # The one-token graph names every weight the model uses: validate and upload those.
        probe = build_graph(self.config, self.specs, 1, self.ctx, ring_slack=self.ring_slack)
        self.backend = create_backend(backend, **backend_options) if isinstance(backend, str) else backend
        if progress is not None and hasattr(progress, "start"):
            # a progress display learns the total first (bytes of every weight the model reads)
            progress.start(sum(int(self.weight_bytes(n).nbytes) for n in probe.weights))
        self.backend.load_weights(probe.weights, self, progress)
        # Every slot lives in one cache per layer; one recorded graph serves any mix of sequences
        # (the segments of a call say which rows continue which slot).
        self.backend.allocate_caches(kv_caches(self.config, self.ctx, self.ring_slack, self.slots))
        self._graphs: OrderedDict[tuple[int, bool, bool], CompiledGraph] = OrderedDict()
        self._pos = [0] * self.slots
        #: Keep each call's post-norm hidden rows per slot (an MTP drafter's input: hidden_state);
        #: off unless a drafter asks, since it copies rows out of every call.
        self.keep_hidden = False
        self._hidden: dict[int, tuple[int, np.ndarray]] = {}    # slot -> (position of row 0, rows)

    # WeightSource
    def weight_bytes(self, name: str) -> np.ndarray:
        if name in self.derived:
            return self.derived[name].view(np.uint8)
        return self.file.tensor(name).raw

    def release_weight(self, name: str) -> int:
        """A backend has its own copy of this weight: the file's mapped pages of it may go."""
        return 0 if name in self.derived else self.file.release_pages(name)

    def graph(self, n_tokens: int, all_logits: bool = False, media: bool = False) -> CompiledGraph:
        """The recorded graph for a batch of n_tokens rows (of any slots: the segments of a call
        place them); media: the variant that takes soft tokens and image blocks (MediaRows)."""
        key = (n_tokens, all_logits and n_tokens > 1, media)
        g = self._graphs.get(key)
        if g is None:
            graph = build_graph(self.config, self.specs, n_tokens, self.ctx, key[1], self.ring_slack, self.slots,
                                media=media)
            if graph.inputs:
                self.backend.declare_inputs({name: (b.rows, b.cols) for name, b in graph.inputs.items()})
            g = self.backend.compile(graph)
            self._graphs[key] = g
            while len(self._graphs) > MAX_RECORDED_GRAPHS:
                self._graphs.popitem(last=False)        # least recently used
        else:
            self._graphs.move_to_end(key)
        return g

    # Slot 0's position, for the single-sequence callers.
    @property
    def pos(self) -> int:
        return self._pos[0]

    @pos.setter
    def pos(self, value: int) -> None:
        self._pos[0] = int(value)

    def position(self, slot: int = 0) -> int:
        return self._pos[slot]

    @property
    def remaining(self) -> int:
        """Positions left in the context: generation must stop when this reaches 0."""
        return self.ctx - self.pos

    def reset(self, slot: int = 0) -> None:
        """Start a new sequence (cache rows are overwritten before they are read again)."""
        self._pos[slot] = 0

    @functools.cached_property
    def _rings(self) -> list[tuple[int, int]]:
        """(ring rows, window) of every sliding layer whose ring is shorter than the context."""
        out = []
        for L in self.config.layers:
            if L.owns_kv and L.window:
                rows = min(self.ctx, L.window + self.ring_slack)
                if rows < self.ctx:
                    out.append((rows, L.window))
        return out

    def reusable_prefix(self, cached_len: int, common: int) -> int:
        """How many of a slot's `cached_len` cached positions a new sequence sharing its first
        `common` tokens can keep. Moving the position back is exact on global layers (later rows
        are rewritten before they are read); on a sliding layer's ring of R rows and window W it
        is exact while the ring has not wrapped (cached_len <= R) or the move is at most R - W
        positions (the window's rows are still there). Otherwise only a pure extension is kept."""
        common = min(common, cached_len)
        if common == cached_len:
            return common
        for rows, window in self._rings:
            if cached_len > rows and cached_len - common > rows - window:
                return 0
        return common

    def prefix_to_keep(self, cached: list[int], ids: list[int]) -> int:
        """Cached positions a new sequence `ids` can keep from a slot holding `cached`: the shared
        prefix (at least one token of ids left to run), when exact (reusable_prefix) and worth it."""
        keep = self.reusable_prefix(len(cached), common_prefix(cached, ids[:-1]))
        return keep if keep >= MIN_PREFIX_REUSE else 0

    def _keep_hidden(self, g: CompiledGraph, slot: int, pos0: int, n: int) -> None:
        rows = g.read_buffers(["h_out"])["h_out"]       # every row, or only the last one's
        self._hidden[slot] = (pos0 + n - len(rows), rows)

    def hidden_state(self, slot: int = 0) -> Optional[np.ndarray]:
        """The post-norm hidden state (the output head's input, [n_embd]) of the slot's last cached
        position, as the forward call that computed it left it (no second pass; keep_hidden must
        be on); None when no call kept that row (only a call's last row is kept without
        all_logits). Exact after a move back: a position's state depends on earlier tokens only."""
        kept = self._hidden.get(slot)
        if kept is None:
            return None
        p0, rows = kept
        r = self._pos[slot] - 1 - p0
        return rows[r].copy() if 0 <= r < len(rows) else None

    def truncate(self, n: int, slot: int = 0) -> None:
        """Move a slot back to position n (see reusable_prefix for when that is exact)."""
        if not 0 <= n <= self._pos[slot]:
            raise G4rtError(f"cannot move slot {slot} from position {self._pos[slot]} to {n}")
        self._pos[slot] = n

    def _checked(self, ids, slot: int) -> np.ndarray:
        """ids as int32, once they are known to fit the slot's context and the vocabulary."""
        ids = np.asarray(ids, dtype=np.int32).reshape(-1)
        if not 0 <= slot < self.slots:
            raise G4rtError(f"slot {slot} out of range (the engine has {self.slots})")
        if len(ids) == 0:
            raise G4rtError("no tokens to process")
        pos = self._pos[slot]
        if pos + len(ids) > self.ctx:
            raise ContextOverflowError(
                f"{pos + len(ids)} tokens do not fit the context of {self.ctx} "
                f"({pos} already used{f' in slot {slot}' if slot else ''}, {len(ids)} new); use a larger --ctx")
        if ids.min() < 0 or ids.max() >= self.config.n_vocab:
            raise G4rtError(f"token id out of range [0, {self.config.n_vocab})")
        return ids

    def _chunks(self, n: int, media: Optional[MediaRows]) -> list[tuple[int, int]]:
        """Prefill chunks of at most prefill_chunk rows, except that no image block is cut: a cut
        inside one moves back to its start, or past its end when the block starts the chunk."""
        blocks = media.blocks if media is not None else ()
        cuts, s = [], 0
        while s < n:
            e = min(s + self.prefill_chunk, n)
            for b0, b1 in blocks:
                if b0 < e < b1:
                    e = b0 if b0 > s else b1
            cuts.append((s, e))
            s = e
        return cuts

    def forward(self, ids, all_logits: bool = False, slot: int = 0, media: Optional[MediaRows] = None) -> np.ndarray:
        """Feed tokens at the slot's current position; return logits [len(ids) or 1, n_vocab].
        media: soft tokens and image blocks of these rows (a prompt with images / audio)."""
        ids = self._checked(ids, slot)
        if media is not None:
            media.check(len(ids), self.config.n_embd)
        outs = []
        for start, stop in self._chunks(len(ids), media):
            chunk = ids[start:stop]
            last = stop == len(ids)
            inputs = media.inputs(start, stop) if media is not None else None
            if inputs is not None:
                if self.config.per_layer_dim:
                    # PLE models (E2B/E4B): a soft-token row's per-layer input is the pad token's, as
                    # transformers (placeholders -> pad_token_id) and llama.cpp (PLE row 0) do
                    pad = int(self.file.get("tokenizer.ggml.padding_token_id", 0))
                    chunk = np.where(np.asarray(media.take[start:stop], bool), pad, np.asarray(chunk))
                g = self.graph(len(chunk), all_logits, media=True)
                self.backend.write_inputs(inputs)
            else:
                g = self.graph(len(chunk), all_logits)
            out = g.run(chunk, one_sequence(len(chunk), self._pos[slot], slot))
            if self.keep_hidden:
                self._keep_hidden(g, slot, self._pos[slot], len(chunk))
            self._pos[slot] += len(chunk)
            if all_logits or last:
                outs.append(np.array(out, dtype=np.float32, copy=True))
        # one chunk (every decode step): its copy is the answer, no second copy of the logits
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def forward_batch(self, items, on_pass: Optional[Callable[[list[int], list[np.ndarray]], None]] = None,
                      all_logits: bool = False) -> list[np.ndarray]:
        """Feed several sequences at once: items are (slot, ids) with distinct slots, or (slot,
        ids, MediaRows) for a prompt with media (it runs alone, as `forward` runs it); returns
        each one's logits for its last token ([n_vocab]), or with all_logits for every one of its
        tokens ([len(ids), n_vocab]: several slots' speculative verifications in one pass).

        Items share graph calls: packs of at most ROW_EXACT_MAX rows in all, within which every
        row gets the bits it gets alone (row-exact), so a sequence's tokens do not depend on what
        it was batched with; a longer item (a prompt chunk) runs alone, in chunks as `forward`
        cuts them. Items run in the order given; on_pass(indexes, logits) hears of each pass's
        items as it ends."""
        media = [item[2] if len(item) > 2 else None for item in items]
        items = [(int(item[0]), self._checked(item[1], int(item[0]))) for item in items]   # all, before any runs
        for (_, ids), m in zip(items, media):
            if m is not None:
                m.check(len(ids), self.config.n_embd)
        slots = [slot for slot, _ in items]
        if len(set(slots)) != len(slots):
            raise G4rtError(f"a batch holds each slot once, got slots {slots}")
        out: list[Optional[np.ndarray]] = [None] * len(items)
        pack: list[int] = []

        def done(indexes, rows):
            for i, row in zip(indexes, rows):
                out[i] = row
            if on_pass is not None:
                on_pass(list(indexes), list(rows))

        def alone(i: int) -> np.ndarray:
            rows = self.forward(items[i][1], all_logits=all_logits, slot=items[i][0], media=media[i])
            return rows if all_logits else rows[-1]

        def run_pack():
            if len(pack) == 1:
                done(pack, [alone(pack[0])])
            elif pack:
                done(pack, self._forward_segments([items[i] for i in pack], all_logits))
            pack.clear()

        rows = 0
        for i, (slot, ids) in enumerate(items):
            if len(ids) > ROW_EXACT_MAX or media[i] is not None:
                done([i], [alone(i)])
                continue
            if rows + len(ids) > ROW_EXACT_MAX:
                run_pack()
                rows = 0
            pack.append(i)
            rows += len(ids)
        run_pack()
        return out

    def _forward_segments(self, items, all_logits: bool = False) -> list[np.ndarray]:
        """One graph call over several sequences' rows (an all-rows graph: each segment's last row
        is its answer, or with all_logits all its rows)."""
        segs, row = [], 0
        for slot, ids in items:
            segs.append(Segment(row, len(ids), self._pos[slot], slot))
            row += len(ids)
        tokens = np.concatenate([ids for _, ids in items])
        logits_graph = self.graph(row, all_logits=True)
        logits = logits_graph.run(tokens, segs)
        if self.keep_hidden:
            hidden = logits_graph.read_buffers(["h_out"])["h_out"]
            for seg in segs:
                self._hidden[seg.slot] = (seg.pos0, hidden[seg.row0:seg.row0 + seg.rows].copy())
        for slot, ids in items:
            self._pos[slot] += len(ids)
        if all_logits:
            return [np.array(logits[s.row0:s.row0 + s.rows], dtype=np.float32, copy=True) for s in segs]
        return [np.array(logits[s.row0 + s.rows - 1], dtype=np.float32, copy=True) for s in segs]

    def close(self) -> None:
        self.backend.close()
