"""`g4rt parity` and `g4rt conformance`: does a backend compute what it should? Parity compares
the model's logits with a reference file (llama.cpp's or an exact one), conformance every op's
output with another backend's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import G4rtError, ParityError
from .media import MMPROJ_OPTION
from .options import (BACKEND_CHOICE, KV_DTYPE_CHOICE, PRECISION_OPTION, THREADS_OPTION, runs_on_cpu,
                      takes_threads, threads_backend_option)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--ref", "ref_path", type=click.Path(exists=True, dir_okay=False),
              help="Reference .npz (llama.cpp or exact) to replay and compare against.")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False),
              help="A JSON list of prompt strings to tokenize (BOS added, specials parsed) and run "
                   "instead of a reference; needs --out.")
@click.option("--backend", type=BACKEND_CHOICE, default="cpu", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="Write g4rt's outputs here (.npz).")
@click.option("--ctx", type=int, default=None, help="Context size (default: enough for the longest sequence).")
@THREADS_OPTION
@PRECISION_OPTION
@MMPROJ_OPTION
def parity(model, ref_path, prompts_path, backend, out_path, ctx, threads, precision, mmproj):
    """Replay a reference teacher-forced, decode greedily, and compare.

    With --mmproj, a reference whose prompts hold images / audio (image_i_k / audio_i_k into the
    placeholder runs of ids_i) is replayed through the projector, and the soft tokens are
    compared with embd_i_k. Exits non-zero when an .exact reference's bar (MANIFEST.json) is
    missed."""
    from ..tools import parity as parity_tool
    from ..engine import Engine

    if (ref_path is None) == (prompts_path is None):
        raise click.UsageError("give --ref REF.npz or --prompts FILE.json")
    if prompts_path is not None:
        _parity_prompts(model, prompts_path, backend, out_path, ctx, threads, precision)
        return
    ref = np.load(ref_path)
    longest, i = 0, 0
    while f"ids_{i}" in ref:
        longest = max(longest, len(ref[f"ids_{i}"]) + len(ref[f"greedy_{i}"]))
        i += 1
    if i == 0:
        raise G4rtError(f"{ref_path}: no ids_0 — not a reference file")
    engine = Engine(model, backend=backend, ctx=ctx or max(longest, 64), precision=precision,
                    **threads_backend_option(backend, threads))
    has_media = any(k.startswith(("image_", "audio_")) for k in ref.files)
    if has_media and mmproj is None:
        raise G4rtError(f"{Path(ref_path).name} has prompts with images / audio: give --mmproj MMPROJ.gguf")
    embd = None
    if mmproj is not None:
        from ..tools.parity_media import run_media_reference
        prompter = _parity_prompter(engine, mmproj, backend, threads, precision)
        out, embd = run_media_reference(engine, ref, prompter)
    else:
        out = parity_tool.run_reference(engine, ref)
    if out_path:
        np.savez(out_path, **out)
    rows = parity_tool.compare(ref, out)
    click.echo(f"{Path(model).name} on {backend} ({engine.backend.device_name}, precision "
               f"{engine.backend.precision_summary()}) vs {Path(ref_path).name}")
    for r in rows:
        click.echo(f"prompt {r['prompt']}: n={r['positions']} top1 {r['top1']:.3f} "
                   f"max|dlogit| {r['max_dlogit']:.5f} greedy {r['greedy']}/{r['greedy_of']}")
    w = parity_tool.worst(rows)
    click.echo(f"worst: top1 {w['top1']:.3f} max|dlogit| {w['max_dlogit']:.5f} greedy {w['greedy']}/{rows[0]['greedy_of']}")
    bar = parity_tool.find_bar(model, ref_path)
    embd_worst = _report_soft_tokens(embd)
    if bar is not None and embd_worst is not None and not embd_worst <= _embd_bar():
        raise ParityError(f"soft tokens missed their bar: max |Δ| {embd_worst:.3g} against embd_i_k "
                          f"(need <= {_embd_bar():g})")
    if bar is None:
        click.echo("bar: none (not an .exact reference listed in MANIFEST.json)")
    elif parity_tool.meets(rows, bar):
        click.echo(f"bar: met (top1 >= {bar.min_top1}, max|dlogit| <= {bar.max_dlogit})")
    else:
        raise ParityError(f"bar missed: need top1 >= {bar.min_top1} and max|dlogit| <= {bar.max_dlogit}, "
                          f"got top1 {w['top1']:.4f}, max|dlogit| {w['max_dlogit']:.4f}")


def _embd_bar() -> float:
    from ..tools.parity_media import EMBD_BAR
    return EMBD_BAR


def _parity_prompter(engine, mmproj, backend, threads, precision):
    """The projector's encoder on the parity backend, for the engine's vocabulary."""
    from ..mmproj.encoder import MediaEncoder
    from ..mmproj.prompter import MediaPrompter
    from ..mmproj.reader import load_projector
    from ..text.tokenizer import load_tokenizer
    from ..generation import ENCODER_BACKENDS
    projector = load_projector(mmproj, engine.config.n_embd, engine.file.path.name)
    encoder_backend = backend if backend in ENCODER_BACKENDS else "cpu"
    options = dict(precision=precision, **threads_backend_option(encoder_backend, threads)) \
        if encoder_backend == "cpu" else {}
    tok = load_tokenizer(engine.file)
    return MediaPrompter(projector, MediaEncoder(projector, encoder_backend, **options), tok.token_to_id,
                         engine.config.n_embd, tok.bos_id)


def _report_soft_tokens(embd):
    """Print each prompt's soft-token max |Δ| against embd_i_k; the worst one (None: none)."""
    if not embd:
        return None
    known = [d for ds in embd for d in ds if d == d]
    for i, ds in enumerate(embd):
        if ds:
            click.echo(f"prompt {i}: soft tokens max|Δ| vs embd: " + ", ".join(f"{d:.2e}" for d in ds))
    if not known:
        return None
    worst = max(known)
    click.echo(f"soft tokens: worst max|Δ| {worst:.2e} over {len(known)} media items")
    return worst


def _parity_prompts(model, prompts_path, backend, out_path, ctx, threads=None, precision="auto"):
    """Tokenize prompt strings and write this backend's own reference-format outputs."""
    from ..tools import parity as parity_tool
    from ..engine import Engine
    from ..text.tokenizer import load_tokenizer

    if not out_path:
        raise click.UsageError("--prompts needs --out OUT.npz")
    prompts = json.loads(Path(prompts_path).read_text(encoding="utf-8"))
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise G4rtError(f"{prompts_path}: expected a JSON list of strings")
    engine = Engine(model, backend=backend, ctx=ctx, precision=precision, **threads_backend_option(backend, threads))
    tok = load_tokenizer(engine.file)
    click.echo(f"{Path(model).name} on {backend}, precision {engine.backend.precision_summary()}")
    out = {}
    for i, text in enumerate(prompts):
        ids = np.array(tok.encode(text, add_bos=True, parse_special=True), dtype=np.int32)
        greedy = parity_tool.greedy(engine, ids, 32)
        out[f"ids_{i}"], out[f"greedy_{i}"] = ids, greedy
        logits = parity_tool.teacher_forced(engine, np.concatenate([ids, greedy]))
        out[f"topk_ids_{i}"], out[f"topk_val_{i}"] = parity_tool.topk(logits)
        click.echo(f"prompt {i}: {len(ids)} tokens, greedy {greedy[:8].tolist()}...")
    np.savez(out_path, **out)
    click.echo(f"wrote {out_path}")


@click.command("conformance")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--backend", "backend", default="vulkan", show_default=True, help="backend under test")
@click.option("--against", default="numpy", show_default=True, help="reference backend")
@click.option("--tokens", "n_tokens", default=8, show_default=True, type=click.IntRange(1, 4096),
              help="prompt tokens of the prefill step (one decode step follows)")
@click.option("--seed", default=0, show_default=True, help="seed of the random prompt ids")
@click.option("--kv-dtype", type=KV_DTYPE_CHOICE, default=None,
              help="KV cache precision on both sides (default: each backend's own)")
@click.option("--device", default=None, help="device index or name for GPU backends")
@click.option("--threads", "-t", type=click.IntRange(1), default=None, help="threads of the native CPU backend")
@PRECISION_OPTION
def conformance(model, backend, against, n_tokens, seed, kv_dtype, device, threads, precision):
    """Compare every op of BACKEND against AGAINST on the same op lists.

    --precision applies to BACKEND; AGAINST, the reference, always runs exact."""
    from ..engine import Engine
    from ..tools.conformance import ConformanceError, compare_engines

    def opts(name):
        o = {}
        if kv_dtype:
            o["kv_dtype"] = kv_dtype
        if threads is not None and takes_threads(name):
            o["threads"] = threads
        if device is not None and not runs_on_cpu(name):
            o["device"] = int(device) if str(device).isdigit() else device
        return o

    ctx = n_tokens + 1
    try:
        ea = Engine(model, backend=backend, ctx=ctx, precision=precision, **opts(backend))
        eb = Engine(model, backend=against, ctx=ctx, precision="exact", **opts(against))
    except G4rtError as e:
        raise click.ClickException(str(e))
    try:
        click.echo(f"{model}: {backend} ({ea.backend.device_name}, precision {ea.backend.precision_summary()}) "
                   f"vs {against} ({eb.backend.device_name}, precision {eb.backend.precision_summary()})")
        try:
            fail = compare_engines(ea, eb, n_tokens, seed, click.echo)
        except ConformanceError as e:
            raise click.ClickException(str(e))
        if fail is not None:
            i, label, err = fail
            click.echo(f"\nFIRST FAILURE: op {i} '{label}': relative error {err:.3e} past its tolerance")
            sys.exit(1)
        click.echo("\nall ops within tolerance")
    finally:
        ea.close()
        eb.close()


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("-f", "--file", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the text to score (UTF-8)")
@click.option("--ctx", default=512, show_default=True, type=click.IntRange(8, 1 << 20),
              help="tokens per chunk; the second half of each is scored")
@click.option("--chunks", type=click.IntRange(1), default=None, help="score at most this many chunks")
@click.option("--backend", type=BACKEND_CHOICE, default="cpu", show_default=True)
@click.option("--kv-dtype", type=KV_DTYPE_CHOICE, default=None)
@THREADS_OPTION
@PRECISION_OPTION
@click.option("--kl-base", "kl_base", type=click.Path(dir_okay=False), default=None,
              help="without --kl: save this run's top next-token probabilities here; with --kl: compare against them")
@click.option("--kl", "kl", is_flag=True, help="report the KL divergence from the --kl-base run")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text")
def perplexity(model, text_file, ctx, chunks, backend, kv_dtype, threads, precision, kl_base, kl, as_json):
    """Perplexity of MODEL on a text, as llama-perplexity computes it (chunks of --ctx tokens, BOS
    first, the second half of each scored), optionally with the KL divergence from a base run."""
    from ..engine import Engine
    from ..model.bundled import default_model_path
    from ..text.tokenizer import load_tokenizer
    from ..tools import perplexity as ppl_tool

    if kl and not kl_base:
        raise click.UsageError("--kl needs --kl-base FILE (a base saved by an earlier run)")
    base = ppl_tool.load_kl_base(kl_base) if kl else None
    path = model or str(default_model_path())
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise G4rtError(f"{text_file} is not UTF-8 text: {e}") from None
    options = threads_backend_option(backend, threads)
    if kv_dtype:
        options["kv_dtype"] = kv_dtype
    engine = Engine(path, backend=backend, ctx=ctx, precision=precision, **options)
    ran = engine.backend.precision_summary()
    try:
        tok = load_tokenizer(engine.file)
        if tok.bos_id is None:
            raise G4rtError(f"{path} has no BOS token: llama-perplexity's chunking starts every chunk with one")
        tokens = tok.encode(text, add_bos=True, parse_special=False)

        def forward(chunk):
            engine.reset()
            return engine.forward(chunk, all_logits=True)

        from tqdm import tqdm
        bar = None
        shown = []

        def progress(done, total, value):
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc="perplexity", unit="chunk", disable=as_json or total < 2,
                           file=sys.stderr, leave=False)
            bar.update(1)
            bar.set_postfix(ppl=f"{value:.4f}")
            shown.append(f"[{done}]{value:.4f}")
        try:
            result, saved = ppl_tool.perplexity(forward, tokens, ctx, tok.bos_id, chunks, kl_base=base,
                                                save_base=bool(kl_base) and not kl, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    finally:
        engine.close()
    if saved is not None:
        ppl_tool.save_kl_base(kl_base, saved)
    if as_json:
        out = dict(model=path, backend=backend, precision=precision, precision_summary=ran, text=str(text_file),
                   tokens=len(tokens), **result.as_dict())
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(f"{Path(path).name} on {backend} (precision {ran}): {len(tokens)} tokens, {result.chunks} chunks "
               f"of {ctx}, {result.scored_tokens} scored")
    click.echo(",".join(shown))
    click.echo(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}")
    if saved is not None:
        click.echo(f"KL base saved to {kl_base}")
    if result.kl is not None:
        k = result.kl
        click.echo(f"Mean KLD: {k['mean_kl']:.6f} +/- {k['mean_kl_error']:.6f}  (max {k['max_kl']:.6f}; "
                   f"top {ppl_tool.KL_TOP} of the base + the rest)")
        click.echo(f"Same top p: {100 * k['same_top_p']:.3f} %")
        click.echo(f"Mean Δp: {100 * k['mean_delta_p']:.4f} %, RMS Δp: {100 * k['rms_delta_p']:.4f} %")
