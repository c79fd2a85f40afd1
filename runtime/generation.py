"""The Python API: `g4rt.load(path)` gives a `Model` that tokenizes, renders chat templates,
generates text as a stream of pieces, and returns logits.

    model = g4rt.load("gemma-4-12b-it-q4_0.gguf", backend="auto")
    for piece in model.generate("The capital of France is", max_tokens=32):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .backends import backend_info, backend_names, create_backend, pick_backend
from .text.chat_template import THINK_CLOSE, THINK_OPEN, load_chat_template, split_thinking
from .engine import Engine, MediaRows
from .errors import ContextOverflowError, G4rtError
from .gguf.reader import GGUFFile
from .memory_plan import expert_layers_on_host
from .model.config import load_config
from .sampling import Sampler
from .slots import BatchResult, BatchStats, SlotRequest, generate_batch, media_from, media_key, reusable_with_media
from .speculative import DEFAULT_DRAFT_MAX, DEFAULT_NGRAM_N, SpecStats, Speculator, create_speculator
from .text.tokenizer import StreamDecoder, load_tokenizer
from .mmproj.errors import MediaInputError
from .mmproj.prompter import MediaPrompter

Messages = Sequence[dict]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0          # prompt tokens already in the KV cache (chat history)
    prefill_s: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0
    stop_reason: str = ""           # "eog", "max_tokens", "context_full", "interrupted"
    media: str = ""                 # the prompt's media, e.g. "1 image (36 tokens)"
    media_tokens: int = 0           # soft tokens among prompt_tokens
    thinking: str = ""
    speculative: Optional[SpecStats] = None      # with a drafter: acceptance, tokens per step

    @property
    def prefill_tps(self) -> float:
        n = self.prompt_tokens - self.reused_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first generated token comes from the prefill's logits; the rest are decode steps.
        n = max(self.generated_tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


class Model:
    """A model bound to a backend, with its tokenizer and chat template."""

    def __init__(self, engine: Engine, backend_reason: str = "", speculator: Optional[Speculator] = None,
                 media: Optional[MediaPrompter] = None):
        self.engine = engine
        self.backend_reason = backend_reason
        self.speculator = speculator
        #: images / audio through a projector (g4rt.load(..., mmproj=)); None: text only
        self.media = media
        self.tokenizer = load_tokenizer(engine.file)
        self._template = None
        self._cached: list[int] = []      # the token sequence whose KV the engine holds
        self.last_stats = GenerationStats()

    def close(self) -> None:
        """Release the backend (and a draft model's)."""
        try:
            if self.speculator is not None:
                self.speculator.close()
            if self.media is not None:
                self.media.close()
        finally:
            self.engine.close()

    @property
    def backend_name(self) -> str:
        return self.engine.backend.name

    @property
    def device_name(self) -> str:
        return self.engine.backend.device_name

    @property
    def precision(self) -> str:
        """The --precision asked for (auto, exact, q8)."""
        return self.engine.backend.precision

    def precision_summary(self) -> str:
        """What the matmuls run with, per weight type (e.g. "q8 (Q4_0), exact (F32)")."""
        return self.engine.backend.precision_summary()

    @property
    def chat_template(self):
        if self._template is None:
            self._template = load_chat_template(self.engine.file, self.tokenizer)
        return self._template

    # ---- prompts ---------------------------------------------------------------------------
    def encode_prompt(self, prompt: Union[str, Messages], chat: Optional[bool] = None,
                      system: Optional[str] = None, **template_opts) -> list[int]:
        """Token ids of a prompt: raw text (BOS added when the vocabulary wants it), or chat
        messages rendered through the model's template (chat=True also wraps a string)."""
        if isinstance(prompt, str) and not chat:
            return self.tokenizer.encode(prompt, add_bos=self.tokenizer.add_bos, parse_special=True)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}] + messages
        text, add_bos = self.chat_template.render_prompt(messages, add_generation_prompt=True,
                                                          add_bos=self.tokenizer.add_bos, **template_opts)
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=True)

    def _single_token(self, text: str) -> Optional[int]:
        ids = self.tokenizer.encode(text, add_bos=False, parse_special=True)
        return ids[0] if len(ids) == 1 and self.tokenizer.is_special(ids[0]) else None

    @functools.cached_property
    def _think_ids(self) -> tuple[Optional[int], Optional[int]]:
        """The thinking channel's open/close token ids (None when the vocabulary has none)."""
        return self._single_token(THINK_OPEN), self._single_token(THINK_CLOSE)

    # ---- low level -------------------------------------------------------------------------
    def logits(self, ids: Sequence[int], media: Optional[MediaRows] = None) -> np.ndarray:
        """Logits at every position of `ids` ([len(ids), n_vocab]), from a fresh sequence
        (media: the soft tokens and image blocks of those rows)."""
        self.engine.reset()
        self._cached = []
        out = self.engine.forward(np.asarray(ids, dtype=np.int32), all_logits=True, media=media)
        self._cached = media_key(ids, media)
        return out

    def media_prompt(self, ids: Sequence[int], images: Sequence = (), audio: Sequence = ()
                     ) -> tuple[list[int], MediaRows, str]:
        """Prompt ids with images / audio placed at their markers (or before the text): the
        expanded ids, their MediaRows and a summary ("1 image (36 tokens)"). Too many tokens for
        the context is refused before any encoder runs."""
        if self.media is None:
            raise MediaInputError("images and audio need a projector: load the model with mmproj= (--mmproj)")
        plan = self.media.plan(ids, images, audio)
        if len(plan.ids) > self.engine.ctx:
            raise ContextOverflowError(
                f"the prompt has {len(plan.ids)} tokens with its media ({plan.summary()}) but the context holds "
                f"{self.engine.ctx}; use a larger --ctx, fewer or smaller media (--image-max-tokens)")
        return plan.ids, self.media.encode(plan), plan.summary()

    def _prefill(self, ids: list[int], media: Optional[MediaRows] = None) -> tuple[np.ndarray, int]:
        """Bring the KV cache to `ids`, keeping the prefix it shares with what is cached (the next
        chat turn) when moving back there is exact (Engine.prefix_to_keep: sliding rings longer
        than the window allow it past a wrap). Media rows are keyed by their soft tokens
        (slots.media_key, as the server's slots), so the next chat turn with the same images keeps
        them; a kept prefix never ends inside an image block."""
        if len(ids) > self.engine.ctx:
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens but the context holds "
                                       f"{self.engine.ctx}; use a larger --ctx or a shorter prompt")
        n_cached = reusable_with_media(self.engine.prefix_to_keep(self._cached, media_key(ids, media)), media)
        self.engine.truncate(n_cached)
        self._cached = self._cached[:n_cached]
        new = ids[n_cached:]
        try:
            logits = self.engine.forward(np.asarray(new, dtype=np.int32),
                                         media=media_from(media, n_cached) if media is not None else None)[-1]
        except BaseException:
            # Interrupted or failed part way: the cache no longer matches any known sequence.
            self.engine.reset()
            self._cached = []
            raise
        self._cached = media_key(ids, media)
        return logits, n_cached

    # ---- generation ------------------------------------------------------------------------
    def generate_ids(self, ids: Sequence[int], max_tokens: int = 256, sampler: Optional[Sampler] = None,
                     stats: Optional[GenerationStats] = None,
                     should_stop: Optional[Callable[[], bool]] = None,
                     media: Optional[MediaRows] = None) -> Iterator[int]:
        """Yield generated token ids (the end-of-generation token is not yielded). media: the
        soft tokens of the prompt's media rows (Model.media_prompt)."""
        sampler = sampler or Sampler()
        stats = stats if stats is not None else GenerationStats()
        ids = list(ids)
        stats.prompt_tokens = len(ids)
        if media is not None:
            stats.media_tokens = int(media.take.sum())
        t0 = time.perf_counter()
        logits, stats.reused_tokens = self._prefill(ids, media)
        stats.prefill_s = time.perf_counter() - t0
        history = list(ids)
        spec = self.speculator
        if spec is not None:
            spec.stats = stats.speculative = SpecStats()
        t1 = time.perf_counter()
        try:
            # decided tokens: all but the last are in the KV cache already (kept proposals)
            pending = [sampler.sample(logits, history)] if max_tokens > 0 else []
            stats.stop_reason = "max_tokens"
            while pending:
                tok = pending.pop(0)
                if self.tokenizer.is_eog(tok):
                    stats.stop_reason = "eog"
                    return
                history.append(tok)
                stats.generated_tokens += 1
                yield tok
                if self._should_end(stats, max_tokens, should_stop, len(history) - 1):
                    return
                if pending:
                    continue
                if spec is None:
                    logits = self.engine.forward([tok])[-1]
                    self._cached.append(tok)
                    pending = [sampler.sample(logits, history)]
                    continue
                try:
                    pending = spec.step(tok, history, sampler, budget=max_tokens - stats.generated_tokens)
                except BaseException:
                    self.engine.reset()
                    self._cached = []
                    raise
                self._cached = media_key(history, media) + pending[:-1]      # tok and the kept proposals
        finally:
            stats.decode_s = time.perf_counter() - t1

    def _should_end(self, stats: GenerationStats, max_tokens: int, should_stop, fed: int) -> bool:
        """After a token was yielded: stop for the caller, the token budget or a full context
        (`fed`: the tokens before it, which plain decoding has in the cache by then)."""
        if should_stop and should_stop():
            stats.stop_reason = "interrupted"
        elif stats.generated_tokens >= max_tokens:
            stats.stop_reason = "max_tokens"
        elif fed >= self.engine.ctx:
            stats.stop_reason = "context_full"
        else:
            return False
        return True

    def generate(self, prompt: Union[str, Messages], max_tokens: int = 256, *, chat: Optional[bool] = None,
                 system: Optional[str] = None, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, repeat_penalty: float = 1.0, seed: Optional[int] = None,
                 show_special: bool = False, show_thinking: bool = True,
                 images: Optional[Sequence] = None, audio: Optional[Sequence] = None,
                 **template_opts) -> Iterator[str]:
        """Yield text pieces as they are produced (valid UTF-8 only). Stats in `last_stats`.

        show_thinking=False hides the model's thinking channel as it streams. images / audio:
        paths, file bytes or arrays (uint8 [H, W, 3]; float32 16 kHz samples), placed at the
        prompt's <|image|> / <|audio|> markers in order, or before its text when it has none
        (needs a model loaded with mmproj=)."""
        ids = self.encode_prompt(prompt, chat=chat, system=system, **template_opts)
        sampler = Sampler(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        self.last_stats = GenerationStats()
        media = None
        # with a projector, a marker without its media is an error too (not a bare placeholder)
        if images or audio or (self.media is not None and self.media.has_markers(ids)):
            ids, media, self.last_stats.media = self.media_prompt(ids, images or (), audio or ())
        dec = StreamDecoder(self.tokenizer, skip_special=not show_special)
        think_open, think_close = self._think_ids
        thinking = False
        for tok in self.generate_ids(ids, max_tokens, sampler, self.last_stats, media=media):
            if not show_thinking and think_open is not None:
                if tok == think_open:
                    thinking = True
                if thinking:
                    thinking = tok != think_close
                    continue
            piece = dec.push(tok)
            if piece:
                yield piece
        tail = dec.flush()
        if tail:
            yield tail

    def generate_many(self, prompts: Sequence[Union[str, Messages, Sequence[int]]], max_tokens: int = 256, *,
                      chat: Optional[bool] = None, system: Optional[str] = None, temperature: float = 0.0,
                      top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repeat_penalty: float = 1.0,
                      seed: Optional[int] = None, samplers: Optional[Sequence[Sampler]] = None,
                      on_token: Optional[Callable[[int, int], None]] = None,
                      cancelled: Optional[Callable[[int], bool]] = None,
                      stats: Optional[BatchStats] = None, images: Optional[Sequence] = None,
                      audio: Optional[Sequence] = None, **template_opts) -> list[BatchResult]:
        """Generate for many prompts, decoding up to the engine's slots (`g4rt.load(slots=N)`)
        together in one batched pass per token; results (tokens and text) in prompt order.

        A prompt is text, chat messages or token ids. Each prompt gets its own sampler (the same
        settings and seed for every prompt, or `samplers`, one per prompt), so its output is the
        one it gets alone whatever else is in the batch. on_token(i, token) streams; cancelled(i)
        ends prompt i early. Speculative decoding does not apply here. images / audio (a model
        loaded with mmproj=): the same items for every prompt, placed in each as `generate`
        places them (its markers, or before its text), each encoded once; a media prompt is
        prefilled alone, then decodes with the others."""
        ids = [list(p) if not isinstance(p, str) and p and isinstance(p[0], (int, np.integer))
               else self.encode_prompt(p, chat=chat, system=system, **template_opts) for p in prompts]
        rows, summaries = [None] * len(ids), [""] * len(ids)
        if images or audio or (self.media is not None and any(self.media.has_markers(x) for x in ids)):
            ids, rows, summaries = self._media_many(ids, images or (), audio or ())
        if samplers is not None and len(samplers) != len(ids):
            raise G4rtError(f"{len(samplers)} samplers for {len(ids)} prompts")
        requests = [SlotRequest(x, max_tokens, samplers[i] if samplers is not None else
                                Sampler(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed), media=rows[i])
                    for i, x in enumerate(ids)]
        self._cached = []        # slot 0 will hold another sequence
        try:
            results = generate_batch(self.engine, self.tokenizer.is_eog, requests, on_token, cancelled, stats)
        finally:
            self.engine.reset()
        for r, summary in zip(results, summaries):
            r.text, r.media = self.tokenizer.decode(r.tokens), summary
        return results

    def _media_many(self, ids: list[list[int]], images: Sequence, audio: Sequence):
        """generate_many's media: per prompt its expanded ids, MediaRows (None: no media) and
        summary; every prompt checked against the context before any encoder runs."""
        if self.media is None:
            raise MediaInputError("images and audio need a projector: load the model with mmproj= (--mmproj)")
        plans = self.media.plan_many(ids, images, audio)
        for i, plan in enumerate(plans):
            if len(plan.ids) > self.engine.ctx:
                raise ContextOverflowError(
                    f"prompt {i + 1} has {len(plan.ids)} tokens with its media ({plan.summary()}) but the context "
                    f"holds {self.engine.ctx}; use a larger --ctx, fewer or smaller media (--image-max-tokens)")
        rows = self.media.encode_many(plans)
        return ([p.ids for p in plans], [r if p.items else None for p, r in zip(plans, rows)],
                [p.summary() for p in plans])


class ChatSession:
    """Multi-turn chat: keeps the history, re-renders it each turn, reuses the KV cache."""

    def __init__(self, model: Model, system: Optional[str] = None, show_thinking: bool = False):
        self.model, self.system, self.show_thinking = model, system, show_thinking
        self.messages: list[dict] = []
        #: the history's images and audio, in order (each turn's prompt holds them all)
        self.images: list = []
        self.audio: list = []

    def reset(self) -> None:
        self.messages = []
        self.images, self.audio = [], []

    def send(self, text: str, images: Sequence = (), audio: Sequence = (), **gen) -> Iterator[str]:
        """Yield the reply's text pieces; the reply (thinking stripped) joins the history.
        images / audio go with this message (image / audio content parts before its text)."""
        if images or audio:
            parts = [{"type": "image"} for _ in images] + [{"type": "audio"} for _ in audio]
            self.messages.append({"role": "user", "content": parts + [{"type": "text", "text": text}]})
        else:
            self.messages.append({"role": "user", "content": text})
        self.images += list(images)
        self.audio += list(audio)
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        pieces = []
        try:
            for piece in self.model.generate(msgs, chat=True, show_thinking=self.show_thinking,
                                             images=self.images, audio=self.audio, **gen):
                pieces.append(piece)
                yield piece
        finally:
            thinking, answer = split_thinking("".join(pieces))
            self.model.last_stats.thinking = thinking
            self.messages.append({"role": "assistant", "content": answer})


def load(path=None, backend: str = "auto", ctx: Optional[int] = None,
         progress: Optional[Callable[[int], None]] = None, gpu_layers: Optional[int] = None,
         threads: Optional[int] = None, slots: int = 1, ring_slack: int = 0, cpu_moe: bool = False,
         n_cpu_moe: Optional[int] = None, draft=None, spec: Optional[str] = None,
         draft_max: int = DEFAULT_DRAFT_MAX, draft_min: int = 0, draft_backend: Optional[str] = None,
         draft_p_min: float = 0.0, ngram_n: int = DEFAULT_NGRAM_N, precision: str = "auto",
         mmproj=None, image_min_tokens: Optional[int] = None, image_max_tokens: Optional[int] = None,
         mmproj_offload: bool = True, **backend_options) -> Model:
    """Load a GGUF model (default: the bundled Gemma 3 270M) on a backend ("auto" picks one).

    gpu_layers: put only the first N layers on the GPU backend and the rest on the native CPU
    backend (for models that do not fit in device memory). cpu_moe / n_cpu_moe: keep the expert
    tensors of every MoE layer (or of the first N layers) on the native CPU backend, which runs
    their expert products, while the rest of those layers runs on the GPU. threads: CPU threads
    (native CPU backend, also the CPU half of a hybrid; default: the physical cores). slots,
    ring_slack: KV caches for several sequences and longer sliding rings (the server's; see Engine).
    draft / spec="ngram": speculative decoding with a draft model (same vocabulary; on
    `draft_backend`, default the target's backend) or prompt lookup; draft_max proposals per
    verification, at least draft_min (see speculative.py). precision: the activation precision,
    "auto" (the fastest path that passes the quality gates here), "exact" (float32 activations)
    or "q8" (int8 blocks of 32, as llama.cpp); the draft model gets the same. mmproj: a
    projector GGUF (images / audio, Model.generate(images=, audio=)); image_min_tokens /
    image_max_tokens: the image token budget (g4rt.media.budget); mmproj_offload=False runs the
    projector's encoder on the native CPU whatever the backend (llama.cpp's --no-mmproj-offload;
    see encoder_placement)."""
    if path is None:
        from .model.bundled import default_model_path
        path = default_model_path()
    speculating = draft is not None or spec is not None
    if speculating:
        ring_slack = max(ring_slack, draft_max)      # proposals are taken back exactly
    reason = f"requested {backend}"
    if backend == "auto":
        backend, reason = pick_backend()
        if mmproj is not None and backend not in MEDIA_BACKENDS:
            backend, reason = "cpu", f"{reason}; cpu instead: media prompts run on {', '.join(MEDIA_BACKENDS)} only"
    if backend not in backend_names():
        names = backend_names()
        raise G4rtError(f"unknown backend {backend!r} (choose auto, {', '.join(names[:-1])} or {names[-1]})")
    projector = None
    if mmproj is not None:       # checked before any device opens
        projector = _open_projector(mmproj, path, backend)
    moe_layers = 0
    if cpu_moe or n_cpu_moe is not None:       # checked on the header, before any device opens
        moe_layers = expert_layers_on_host(load_config(GGUFFile(path)), backend, cpu_moe, n_cpu_moe)
    if gpu_layers is not None or moe_layers:
        hybrid = create_backend(backend, threads=threads, gpu_layers=gpu_layers, cpu_moe_layers=moe_layers,
                                precision=precision, **backend_options)
        if gpu_layers is not None:
            reason += f"; first {gpu_layers} layers on {backend}, the rest on the CPU"
        if moe_layers:
            reason += ("; experts of every MoE layer" if cpu_moe else f"; experts of layers 0-{moe_layers - 1}") \
                + " on the CPU"
        engine = Engine(path, backend=hybrid, ctx=ctx, progress=progress, slots=slots, ring_slack=ring_slack)
    else:
        if threads is not None and not backend_info(backend).takes_threads:
            raise G4rtError(f"--threads applies to the native CPU backend, not {backend}")
        engine = Engine(path, backend=backend, ctx=ctx, progress=progress, slots=slots, ring_slack=ring_slack,
                        threads=threads, precision=precision, **backend_options)
    media = None
    if projector is not None:
        try:
            media = _media_prompter(projector, engine, backend, threads, precision, image_min_tokens,
                                    image_max_tokens, mmproj_offload, backend_options)
        except BaseException:
            engine.close()
            raise
        reason += f"; media: {projector.describe()}, encoded on {media.encoder.backend.name}"
    speculator = None
    if speculating:
        try:
            speculator = create_speculator(engine, load_tokenizer(engine.file), draft=draft, spec=spec,
                                           draft_max=draft_max, draft_min=draft_min,
                                           draft_backend=draft_backend or backend, draft_p_min=draft_p_min,
                                           ngram_n=ngram_n, threads=threads, precision=precision)
        except BaseException:
            if media is not None:
                media.close()
            engine.close()
            raise
        reason += f"; speculative: {speculator.drafter.name}, up to {draft_max} tokens ahead"
    return Model(engine, reason, speculator, media)


#: Backends whose op lists run media prompts (soft tokens, image blocks) so far.
MEDIA_BACKENDS = ("cpu", "numpy", "vulkan", "cuda")
#: Backends with every encoder op (docs/ops-support.md): the projector runs on the text model's
#: backend (its own instance, on the same device), as llama.cpp offloads the mmproj.
ENCODER_BACKENDS = ("cpu", "numpy", "vulkan", "cuda")


def encoder_placement(backend: str, engine: Engine, threads, precision: str, offload: bool = True,
                      backend_options: Optional[dict] = None) -> tuple[str, dict]:
    """(backend, options) for the projector's encoder: the text model's GPU backend (the GPU half
    of a layer split) on the same device, unless offload is off (llama.cpp's --no-mmproj-offload)
    or the Vulkan device is itself a CPU (lavapipe: the native CPU kernels are many times faster
    there); the native CPU otherwise; numpy for the numpy reference."""
    on_cpu = dict(threads=threads, precision=precision)
    if backend == "numpy":
        return "numpy", {}
    if backend not in ENCODER_BACKENDS or backend == "cpu" or not offload:
        return "cpu", on_cpu
    gpu = getattr(engine.backend, "front", engine.backend)      # a hybrid's device half
    if backend == "vulkan" and getattr(getattr(gpu, "info", None), "is_cpu", False):
        return "cpu", on_cpu
    return backend, {k: v for k, v in (backend_options or {}).items() if k == "device"}


def _open_projector(mmproj, model_path, backend: str):
    """The validated projector for this text model (its width checked against the model's).
    Layer and expert splits (--gpu-layers, --cpu-moe) take media too: the hybrid hands the
    soft tokens and the image mask to the halves that read them (HybridBackend.write_inputs)."""
    from .mmproj.reader import load_projector
    if backend not in MEDIA_BACKENDS:
        raise MediaInputError(f"images and audio run on the {' and '.join(MEDIA_BACKENDS)} backends so far, "
                              f"not on {backend}")
    f = GGUFFile(model_path)
    return load_projector(mmproj, load_config(f).n_embd, f.path.name)


def _media_prompter(projector, engine: Engine, backend: str, threads, precision: str, image_min_tokens,
                    image_max_tokens, offload: bool = True, backend_options: Optional[dict] = None) -> MediaPrompter:
    from .mmproj.encoder import MediaEncoder
    encoder_backend, options = encoder_placement(backend, engine, threads, precision, offload, backend_options)
    tok = load_tokenizer(engine.file)
    encoder = MediaEncoder(projector, encoder_backend, **options)
    return MediaPrompter(projector, encoder, tok.token_to_id, engine.config.n_embd, tok.bos_id,
                         image_min_tokens, image_max_tokens)
