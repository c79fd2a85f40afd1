"""The `g4rt` command line. Errors are one clear line and a non-zero exit; --debug shows tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from .. import __version__
from .generate import THREADS_OPTION
from ..errors import G4rtError, ParityError
from ..speculative import MAX_DRAFT

BACKEND_CHOICE = click.Choice(["cpu", "numpy", "vulkan", "cuda"])


def _threads_option(backend: str, threads) -> dict:
    """Backend options for --threads (the native CPU backend's; an error elsewhere)."""
    if threads is None:
        return {}
    if backend != "cpu":
        raise G4rtError(f"--threads applies to the native CPU backend, not {backend}")
    return {"threads": threads}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="g4rt")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx, debug):
    """g4rt: run Gemma 4 GGUF models on Vulkan, CUDA or the CPU."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plan", "show_plan", is_flag=True,
              help="Print the memory plan (weights, KV cache, scratch) instead of the header.")
@click.option("--ctx", "plan_ctx", type=int, default=None,
              help="[--plan] Context size (default: trained length capped at 8192 and by the budget).")
@click.option("--backend", "plan_backend", type=BACKEND_CHOICE, default="cpu", show_default=True,
              help="[--plan] Where the model would run.")
@click.option("--budget", default=None,
              help="[--plan] Memory budget, e.g. 12GiB (default: available RAM for cpu; required for vulkan/cuda).")
@click.option("--kv-dtype", "kv_dtype", type=click.Choice(["f16", "f32"]), default=None,
              help="[--plan] KV cache type (default: f32 on numpy, f16 on cpu and GPUs).")
@click.option("--batch", type=int, default=512, show_default=True, help="[--plan] Prefill batch size.")
@click.option("--cpu-moe", "cpu_moe", is_flag=True,
              help="[--plan] Keep every layer's expert tensors in host RAM (a MoE model on a GPU backend).")
@click.option("--n-cpu-moe", "n_cpu_moe", type=int, default=None, metavar="N",
              help="[--plan] As --cpu-moe for the experts of the first N layers only.")
@click.option("--host-budget", "host_budget", default=None,
              help="[--plan] Host RAM for what --cpu-moe / --n-cpu-moe keep there (default: available RAM).")
@click.option("--parallel", "-np", "parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="[--plan] Sequence slots, each with its own KV cache (g4rt serve --parallel).")
@click.option("--draft-max", "draft_max", type=click.IntRange(0, MAX_DRAFT), default=0, show_default=True,
              help="[--plan] Speculative decoding: the sliding rings keep this many more rows.")
@click.pass_context
def info(ctx, model, show_plan, plan_ctx, plan_backend, budget, kv_dtype, batch, cpu_moe, n_cpu_moe, host_budget,
         parallel, draft_max):
    """Print a GGUF file's header, layers and tensors as Markdown (or, with --plan, its memory plan)."""
    if not show_plan:
        given = [o for name, o in (("plan_ctx", "--ctx"), ("plan_backend", "--backend"), ("budget", "--budget"),
                                   ("kv_dtype", "--kv-dtype"), ("batch", "--batch"), ("cpu_moe", "--cpu-moe"),
                                   ("n_cpu_moe", "--n-cpu-moe"), ("host_budget", "--host-budget"),
                                   ("parallel", "--parallel"), ("draft_max", "--draft-max"))
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise G4rtError(f"{', '.join(given)} only apply with --plan")
        from ..tools.info import describe
        click.echo(describe(model), nl=False)
        return
    from .. import memory_plan as M
    from ..gguf.reader import GGUFFile
    from ..model.config import load_config
    from ..model.graph import model_weight_specs

    f = GGUFFile(model)
    cfg = load_config(f)
    specs, _ = model_weight_specs(cfg, f)
    on_cpu = plan_backend in ("cpu", "numpy")
    moe_layers = M.expert_layers_on_host(cfg, plan_backend, cpu_moe, n_cpu_moe)
    if budget is not None:
        budget_bytes = M.parse_size(budget)
    elif on_cpu:
        budget_bytes = M.available_ram()
        if budget_bytes is None:
            raise G4rtError("cannot read the available RAM (/proc/meminfo); give --budget, e.g. --budget 16GiB")
    else:
        raise G4rtError(f"--backend {plan_backend} needs --budget (the GPU memory to plan for, e.g. --budget 12GiB)")
    from ..engine import kv_value_bytes
    kv_bytes = kv_value_bytes(plan_backend, kv_dtype)     # the backend's own cache precision
    if batch <= 0:
        raise G4rtError(f"--batch must be positive, got {batch}")
    # Only the numpy reference materializes [heads, tokens, keys] attention scores.
    materialized = plan_backend == "numpy"
    layout = dict(slots=parallel, ring_slack=draft_max)      # the caches the engine would allocate
    n_ctx = plan_ctx or M.default_context(cfg, specs, budget_bytes, kv_bytes=kv_bytes, batch=batch,
                                          materialized_attention=materialized, cpu_moe_layers=moe_layers, **layout)
    # what stays in host RAM must fit there too (only expert placement puts anything there)
    host_bytes = (M.parse_size(host_budget) if host_budget is not None else M.available_ram()) if moe_layers else None
    plan = M.make_plan(cfg, specs, n_ctx, kv_bytes=kv_bytes, batch=batch, budget=budget_bytes,
                       materialized_attention=materialized, device="CPU" if on_cpu else f"GPU ({plan_backend})",
                       model=Path(model).name, check=False, cpu_moe_layers=moe_layers, host_budget=host_bytes,
                       **layout)
    click.echo(plan.markdown())
    if not plan.fits:
        raise plan.error()


@main.command()
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
def parity(model, ref_path, prompts_path, backend, out_path, ctx, threads):
    """Replay a reference teacher-forced, decode greedily, and compare.

    Exits non-zero when an .exact reference's bar (MANIFEST.json) is missed."""
    from ..tools import parity as P
    from ..engine import Engine

    if (ref_path is None) == (prompts_path is None):
        raise click.UsageError("give --ref REF.npz or --prompts FILE.json")
    if prompts_path is not None:
        _parity_prompts(model, prompts_path, backend, out_path, ctx, threads)
        return
    ref = np.load(ref_path)
    longest, i = 0, 0
    while f"ids_{i}" in ref:
        longest = max(longest, len(ref[f"ids_{i}"]) + len(ref[f"greedy_{i}"]))
        i += 1
    if i == 0:
        raise G4rtError(f"{ref_path}: no ids_0 — not a reference file")
    engine = Engine(model, backend=backend, ctx=ctx or max(longest, 64), **_threads_option(backend, threads))
    out = P.run_reference(engine, ref)
    if out_path:
        np.savez(out_path, **out)
    rows = P.compare(ref, out)
    click.echo(f"{Path(model).name} on {backend} ({engine.backend.device_name}) vs {Path(ref_path).name}")
    for r in rows:
        click.echo(f"prompt {r['prompt']}: n={r['positions']} top1 {r['top1']:.3f} "
                   f"max|dlogit| {r['max_dlogit']:.5f} greedy {r['greedy']}/{r['greedy_of']}")
    w = P.worst(rows)
    click.echo(f"worst: top1 {w['top1']:.3f} max|dlogit| {w['max_dlogit']:.5f} greedy {w['greedy']}/{rows[0]['greedy_of']}")
    bar = P.find_bar(model, ref_path)
    if bar is None:
        click.echo("bar: none (not an .exact reference listed in MANIFEST.json)")
    elif P.meets(rows, bar):
        click.echo(f"bar: met (top1 >= {bar.min_top1}, max|dlogit| <= {bar.max_dlogit})")
    else:
        raise ParityError(f"bar missed: need top1 >= {bar.min_top1} and max|dlogit| <= {bar.max_dlogit}, "
                          f"got top1 {w['top1']:.4f}, max|dlogit| {w['max_dlogit']:.4f}")


def _parity_prompts(model, prompts_path, backend, out_path, ctx, threads=None):
    """Tokenize prompt strings and write this backend's own reference-format outputs."""
    from ..tools import parity as P
    from ..engine import Engine
    from ..text.tokenizer import load_tokenizer

    if not out_path:
        raise click.UsageError("--prompts needs --out OUT.npz")
    prompts = json.loads(Path(prompts_path).read_text(encoding="utf-8"))
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise G4rtError(f"{prompts_path}: expected a JSON list of strings")
    engine = Engine(model, backend=backend, ctx=ctx, **_threads_option(backend, threads))
    tok = load_tokenizer(engine.file)
    out = {}
    for i, text in enumerate(prompts):
        ids = np.array(tok.encode(text, add_bos=True, parse_special=True), dtype=np.int32)
        greedy = P.greedy(engine, ids, 32)
        out[f"ids_{i}"], out[f"greedy_{i}"] = ids, greedy
        out[f"topk_ids_{i}"], out[f"topk_val_{i}"] = P.topk(P.teacher_forced(engine, np.concatenate([ids, greedy])))
        click.echo(f"prompt {i}: {len(ids)} tokens, greedy {greedy[:8].tolist()}...")
    np.savez(out_path, **out)
    click.echo(f"wrote {out_path}")


def run(argv=None) -> int:
    """Entry point that turns G4rtError into one line on stderr and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        main.main(args=argv, prog_name="g4rt", standalone_mode=False)
    except G4rtError as e:
        if debug:
            raise
        click.echo(f"g4rt: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("g4rt: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("\ng4rt: interrupted", err=True)
        return 130
    except OSError as e:
        if debug:
            raise
        click.echo(f"g4rt: error: {e}", err=True)
        return 1
    return 0


def entry() -> None:
    sys.exit(run())


from .generate import chat as _chat_command, run as _run_command, tokenize as _tokenize_command  # noqa: E402

main.add_command(_run_command, "run")
main.add_command(_chat_command, "chat")
main.add_command(_tokenize_command, "tokenize")

from .serve import serve as _serve_command  # noqa: E402

main.add_command(_serve_command, "serve")

# Tools: kernel/model benchmarks, synthetic 12B-shaped models, backend-vs-backend conformance.
from ..tools.bench import bench_command as _bench_command  # noqa: E402
from ..tools.conformance import conformance_command as _conformance_command  # noqa: E402
from ..tools.synth import synth_command as _synth_command  # noqa: E402

main.add_command(_bench_command, "bench")
main.add_command(_synth_command, "synth")
main.add_command(_conformance_command, "conformance")
