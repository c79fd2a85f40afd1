"""Options that several commands share, and what turns them into keyword arguments.

Backend names, and which backend takes which option, come from the backend registry."""

from __future__ import annotations

from typing import Optional

import click

from ..backends.registry import PRECISIONS, backend_info, backend_names
from ..errors import G4rtError
from ..speculative import MAX_DRAFT

#: --backend of the commands that inspect or check one backend (info --plan, parity)
BACKEND_CHOICE = click.Choice(list(backend_names()))
#: --backend of the commands that run a model (run, chat, serve): auto picks one
BACKEND_OR_AUTO_CHOICE = click.Choice(["auto", *backend_names()])
#: --kv-dtype: every cache precision some backend offers, in the registry's order
KV_DTYPE_CHOICE = click.Choice(list(dict.fromkeys(dtype for name in backend_names()
                                                  for dtype in backend_info(name).kv_dtypes)))

THREADS_OPTION = click.option("--threads", "-t", type=click.IntRange(1), default=None,
                              help="CPU threads (native CPU backend; default: the physical cores).")

#: --precision: how the matmuls take their activations (the backends' choices are in the registry)
PRECISION_OPTION = click.option(
    "--precision", type=click.Choice(list(PRECISIONS)), default="auto", show_default=True,
    help="Activation precision of the matmuls. auto: the fastest path that passes the quality gates for "
         "this host and weight type (i16 on the native CPU's AVX2 / AVX-512 builds for quantized weights); "
         "exact: float32 activations (the oracle); i16: activations at int16 precision on integer dot "
         "products (near-exact); q8: activations rounded to int8 as llama.cpp does (fastest prefill).")


def takes_threads(backend: str) -> bool:
    """Whether --threads applies to the backend (no for a name the registry does not know, e.g. auto)."""
    return backend in backend_names() and backend_info(backend).takes_threads


def runs_on_cpu(backend: str) -> bool:
    """Whether the backend computes in host RAM (no for a name the registry does not know: that
    name fails later, where the backend is created)."""
    return backend in backend_names() and not backend_info(backend).has_device_memory


def threads_backend_option(backend: str, threads: Optional[int]) -> dict:
    """Backend options for --threads (an error on a backend that takes none)."""
    if threads is None:
        return {}
    if not takes_threads(backend):
        raise G4rtError(f"--threads applies to the native CPU backend, not {backend}")
    return {"threads": threads}


def placement_options(f):
    """Where the layers and experts run when the GPU cannot hold everything (as llama.cpp's)."""
    for opt in reversed([
        click.option("--gpu-layers", type=click.IntRange(0), default=None,
                     help="Only the first N layers on the GPU backend, the rest on the CPU."),
        click.option("--cpu-moe", is_flag=True,
                     help="Mixture-of-experts models: keep every layer's experts in RAM and run them on "
                          "the CPU; attention, the dense MLP and the router stay on the GPU."),
        click.option("--n-cpu-moe", type=click.IntRange(0), default=None, metavar="N",
                     help="As --cpu-moe for the experts of the first N layers only."),
    ]):
        f = opt(f)
    return f


def placement(kw) -> dict:
    """Pops placement_options' values out of a command's keyword arguments."""
    return dict(gpu_layers=kw.pop("gpu_layers"), cpu_moe=kw.pop("cpu_moe"), n_cpu_moe=kw.pop("n_cpu_moe"))


def speculative_options(f):
    """Speculative decoding (as llama.cpp's --model-draft / --spec ngram)."""
    for opt in reversed([
        click.option("--draft", type=click.Path(dir_okay=False), default=None, metavar="MODEL.gguf",
                     help="Speculative decoding: a smaller model with the same vocabulary drafts tokens "
                          "that the model checks in one batched pass (greedy output unchanged)."),
        click.option("--spec", type=click.Choice(["ngram"]), default=None,
                     help="Speculative decoding without a draft model: propose what followed the last "
                          "n tokens earlier in the context (edits, summaries, code)."),
        click.option("--draft-max", type=click.IntRange(1, MAX_DRAFT), default=8, show_default=True,
                     help="Most tokens drafted per verification."),
        click.option("--draft-min", type=click.IntRange(0, MAX_DRAFT), default=0, show_default=True,
                     help="Fewer drafted tokens than this: decode plainly instead."),
        click.option("--draft-backend", type=BACKEND_CHOICE, default=None,
                     help="Backend of the draft model (default: the model's)."),
        click.option("--draft-p-min", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
                     help="Stop drafting when the draft's top probability falls below this (0 = never)."),
        click.option("--ngram-n", type=click.IntRange(1, 16), default=3, show_default=True,
                     help="With --spec ngram: the longest context suffix looked up."),
    ]):
        f = opt(f)
    return f


def speculation(kw) -> dict:
    """Pops speculative_options' values out of a command's keyword arguments."""
    return {k: kw.pop(k) for k in ("draft", "spec", "draft_max", "draft_min", "draft_backend", "draft_p_min",
                                   "ngram_n")}


def sampling_options(f):
    """What `run` and `chat` share: sampling, context, backend, placement, speculation, threads,
    precision."""
    for opt in reversed([
        click.option("-n", "--max-tokens", type=click.IntRange(1), default=256, show_default=True,
                     help="Most tokens to generate."),
        click.option("--temp", "temperature", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Temperature; 0 = greedy."),
        click.option("--top-k", type=click.IntRange(0), default=0, help="Top-k (0 = off)."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="Top-p (1 = off)."),
        click.option("--min-p", type=click.FloatRange(0, 1), default=0.0, help="Min-p (0 = off)."),
        click.option("--repeat-penalty", type=click.FloatRange(0, min_open=True), default=1.0,
                     help="Repetition penalty over the last 64 tokens (1 = off)."),
        click.option("--seed", type=int, default=None, help="Seed: same seed, same output (per backend)."),
        click.option("--ctx", type=click.IntRange(1), default=None, help="Context size in tokens."),
        click.option("--backend", type=BACKEND_OR_AUTO_CHOICE, default="auto", show_default=True),
        placement_options,
        speculative_options,
        THREADS_OPTION,
        PRECISION_OPTION,
        click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary line."),
    ]):
        f = opt(f)
    return f


def sampling(kw) -> dict:
    """The generation arguments among sampling_options' values (the others stay in kw)."""
    return dict(max_tokens=kw["max_tokens"], temperature=kw["temperature"], top_k=kw["top_k"],
                top_p=kw["top_p"], min_p=kw["min_p"], repeat_penalty=kw["repeat_penalty"], seed=kw["seed"])
