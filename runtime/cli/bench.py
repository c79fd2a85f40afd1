"""`g4rt bench` and `g4rt synth`: measure a model or the kernels, and write random-weight models
of the real ones' shapes to measure when the real ones cannot be downloaded. What they measure
and write is in tools/ (bench, bench_parallel, bench_speculative, llama_compare, synth)."""

from __future__ import annotations

import json

import click

from ..errors import G4rtError
from ..speculative import MAX_DRAFT
from .media import MMPROJ_OPTION, resolve_mmproj
from .options import (KV_DTYPE_CHOICE, PRECISION_OPTION, placement_options, runs_on_cpu, speculation,
                      speculative_options, takes_threads)


@click.command("bench")
@click.argument("model", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--backend", default="cpu", show_default=True)
@click.option("--prompt", "n_prompt", default=512, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--gen", "n_gen", default=128, show_default=True, type=click.IntRange(1, 1 << 20))
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0, 1 << 20),
              help="time prefill and decode with this many tokens already in the cache (llama-bench's -d)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of text")
@click.option("--ops", "ops_mode", is_flag=True, help="time each kernel alone at the 12B's shapes instead")
@click.option("--only", default=None, help="with --ops: only kernels whose label contains this")
@click.option("--reps", default=3, show_default=True, help="with --ops: timed repetitions per kernel")
@click.option("--no-warmup", is_flag=True, help="skip the untimed first prefill")
@click.option("--device", default=None, help="device index or name (GPU backends)")
@click.option("--kv-dtype", type=KV_DTYPE_CHOICE, default=None)
@click.option("--threads", "-t", type=click.IntRange(1), default=None,
              help="CPU threads (native CPU backend; default: the physical cores); llama-bench gets the same")
@PRECISION_OPTION
@click.option("--int8", "int8", is_flag=True,
              help="CUDA: the same as --precision q8 (decode matvecs with 8-bit activations and dp4a)")
@placement_options
@speculative_options
@MMPROJ_OPTION
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="PATH",
              help="with --mmproj: an image to encode and prefill (repeatable)")
@click.option("--audio", "audio", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="PATH",
              help="with --mmproj: an audio clip to encode and prefill (repeatable)")
@click.option("--image-max-tokens", type=click.IntRange(1), default=None, help="with --image: the token budget")
@click.option("--text", default=None, help="with --spec/--draft: the prompt (default: a passage to copy with one edit)")
@click.option("--verify-cost", type=click.IntRange(1, MAX_DRAFT), default=None, metavar="K",
              help="time forward passes of 1..K+1 tokens (speculative verification) against a decode step")
@click.option("--parallel", "parallel", default=None, metavar="1,2,4,8",
              help="decode that many sequences together (comma-separated levels): aggregate and per-stream tokens/s")
@click.option("--llama-bench", "llama_bench", default="auto", show_default=True, metavar="PATH|auto|off",
              help="also run llama.cpp's llama-bench on the same model and lengths and compare "
                   "(auto: $G4RT_LLAMA_BENCH or llama-bench on PATH, when installed)")
@click.option("--llama-mtmd", "llama_mtmd", default="off", show_default=True, metavar="PATH|auto|off",
              help="with --mmproj: also run llama.cpp's llama-mtmd-cli on the same model, projector and media and "
                   "compare encode times and prefill (auto: $G4RT_LLAMA_MTMD, llama-mtmd-cli on PATH, or the build "
                   "of scripts/build_llama_mtmd.sh)")
def bench(model, backend, n_prompt, n_gen, depth, as_json, ops_mode, only, reps, no_warmup, device, kv_dtype,
          threads, precision, int8, llama_bench, text, verify_cost, parallel, mmproj, images, audio,
          image_max_tokens, llama_mtmd, **place):
    """Prefill / decode throughput of MODEL on a backend, or (--ops) per-kernel timings."""
    from ..tools.bench import bench_model, bench_ops, is_hybrid
    from ..tools.llama_compare import find_llama_bench, run_llama_bench, summary_lines
    opts = {}
    if kv_dtype:
        opts["kv_dtype"] = kv_dtype
    if int8:        # kept for scripts written before --precision
        if backend != "cuda":
            raise click.UsageError("--int8 is a CUDA option (--backend cuda)")
        if precision == "exact":
            raise click.UsageError("--int8 is --precision q8: it contradicts --precision exact")
        precision = "q8"
    opts["precision"] = precision
    if threads is not None:
        if not takes_threads(backend):
            raise click.UsageError("--threads is a native CPU backend option (--backend cpu)")
        opts["threads"] = threads
    if device is not None and not runs_on_cpu(backend):
        opts["device"] = int(device) if str(device).isdigit() else device
    echo = None if as_json else click.echo
    spec = speculation(place)
    speculating = spec["draft"] is not None or spec["spec"] is not None
    if depth and (ops_mode or parallel or verify_cost or speculating):
        raise click.UsageError("--depth applies to the prefill/decode benchmark (not with --ops, --parallel, "
                               "--spec/--draft or --verify-cost)")
    if (images or audio) and mmproj is None:
        mmproj = resolve_mmproj(model, None, True, as_json)
    try:
        if mmproj is not None:
            from ..tools.bench_media import bench_media
            if model is None or not (images or audio):
                raise click.UsageError("--mmproj benchmarks a MODEL with --image / --audio files")
            media_opts = {k: v for k, v in opts.items() if k in ("threads", "precision")}
            # --gpu-layers / --cpu-moe / --n-cpu-moe: the text side as placed (the encoders as without)
            media_opts.update({k: place[k] for k in ("gpu_layers", "cpu_moe", "n_cpu_moe") if k in place})
            res = bench_media(model, mmproj, backend, images, audio, media_opts, reps, image_max_tokens, echo)
            _compare_llama_mtmd(res, llama_mtmd, model, mmproj, backend, images, audio, threads, image_max_tokens,
                                echo)
        elif ops_mode:
            res = bench_ops(backend, opts, reps, only, echo)
        elif parallel:
            from ..tools.bench_parallel import bench_parallel
            if model is None:
                raise click.UsageError("MODEL is required")
            try:
                levels = sorted({int(x) for x in parallel.split(",") if x.strip()})
            except ValueError:
                raise click.UsageError(f"--parallel takes comma-separated counts such as 1,2,4,8, not {parallel!r}")
            if not levels or levels[0] < 1 or levels[-1] > 64:
                raise click.UsageError("--parallel levels must be between 1 and 64")
            res = bench_parallel(model, backend, levels, n_prompt, n_gen, opts, echo)
        elif verify_cost or speculating:
            from ..tools.bench_speculative import bench_speculative, verify_costs
            if model is None:
                raise click.UsageError("MODEL is required")
            res = {"model": str(model), "backend": backend, "precision": precision}
            if verify_cost:
                res["verify_cost"] = verify_costs(model, backend, verify_cost, opts, reps=max(reps, 5), echo=echo)
            if speculating:
                res["speculative"] = bench_speculative(model, backend, n_gen, opts, spec, text, echo=echo)
            res["precision_summary"] = res.get("speculative", res.get("verify_cost"))["precision_summary"]
        else:
            if model is None:
                raise click.UsageError("MODEL is required (or pass --ops)")
            res = bench_model(model, backend, n_prompt, n_gen, opts, not no_warmup, echo, place, depth)
            hybrid = is_hybrid(place)
            if hybrid:
                res["placement"] = place
            exe = None if hybrid else find_llama_bench(llama_bench)
            if exe:
                on_cpu = runs_on_cpu(backend)
                n_threads = threads or (_cpu_threads() if on_cpu else None)
                res["llama_cpp"] = run_llama_bench(exe, model, n_prompt, n_gen, gpu=not on_cpu,
                                                   threads=n_threads, depth=depth)
                if echo:
                    for line in summary_lines(res, res["llama_cpp"]):
                        echo(line)
            elif echo and hybrid:
                echo("  llama.cpp: not compared (a GPU + CPU placement; llama-bench here is a CPU build)")
            elif echo:
                echo("  llama.cpp: llama-bench not found (set G4RT_LLAMA_BENCH or --llama-bench PATH to compare)")
    except G4rtError as e:
        raise click.ClickException(str(e))
    if as_json:
        click.echo(json.dumps(res, indent=1))


def _compare_llama_mtmd(res, choice, model, mmproj, backend, images, audio, threads, image_max_tokens, echo):
    """--llama-mtmd: llama-mtmd-cli on the same files, threads and image budget (res["llama_cpp"])."""
    from ..tools.llama_compare import find_llama_mtmd, mtmd_summary_lines, run_llama_mtmd
    exe = find_llama_mtmd(choice)
    if exe is None:
        if choice == "auto" and echo:
            echo("  llama.cpp: llama-mtmd-cli not found (scripts/build_llama_mtmd.sh builds it; or set "
                 "G4RT_LLAMA_MTMD / --llama-mtmd PATH)")
        return
    from ..media.budget import DEFAULT_MAX_TOKENS
    on_cpu = runs_on_cpu(backend)
    n_threads = threads or (_cpu_threads() if on_cpu else None)
    res["llama_cpp"] = run_llama_mtmd(exe, model, mmproj, images, audio, threads=n_threads,
                                      image_max_tokens=image_max_tokens or DEFAULT_MAX_TOKENS, gpu=not on_cpu)
    if echo:
        for line in mtmd_summary_lines(res, res["llama_cpp"]):
            echo(line)


def _cpu_threads() -> int:
    """The native CPU backend's default thread count (llama-bench gets the same)."""
    from ..backends.cpu.backend import default_threads
    return default_threads()
