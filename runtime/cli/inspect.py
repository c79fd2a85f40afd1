"""`g4rt info` and `g4rt tokenize`: what a GGUF file holds (header, tensors, memory plan, vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ..backends.registry import backend_info
from ..errors import G4rtError
from ..speculative import MAX_DRAFT
from .options import BACKEND_CHOICE, KV_DTYPE_CHOICE, PRECISION_OPTION


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--plan", "show_plan", is_flag=True,
              help="Print the memory plan (weights, KV cache, scratch) instead of the header.")
@click.option("--ctx", "plan_ctx", type=int, default=None,
              help="[--plan] Context size (default: trained length capped at 8192 and by the budget).")
@click.option("--backend", "plan_backend", type=BACKEND_CHOICE, default="cpu", show_default=True,
              help="[--plan] Where the model would run.")
@click.option("--budget", default=None,
              help="[--plan] Memory budget, e.g. 12GiB (default: available RAM for cpu; required for vulkan/cuda).")
@click.option("--kv-dtype", "kv_dtype", type=KV_DTYPE_CHOICE, default=None,
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
@PRECISION_OPTION
@click.option("--mmproj", type=click.Path(dir_okay=False), default=None, metavar="MMPROJ.gguf",
              help="[--plan] A projector: its weights and what images / audio cost.")
@click.option("--no-mmproj-offload", "mmproj_offload", is_flag=True, default=True, flag_value=False,
              help="[--plan] The projector's encoder on the native CPU (as run / serve --no-mmproj-offload).")
@click.option("--draft", type=click.Path(dir_okay=False, exists=True), default=None, metavar="DRAFT.gguf",
              help="[--plan] A speculative draft (a draft model or an MTP assistant): its weights, KV cache and "
                   "scratch, counted with the target's where they share memory.")
@click.option("--draft-backend", "draft_backend", type=BACKEND_CHOICE, default="cpu", show_default=True,
              help="[--plan] Where a separate draft model would run (an MTP assistant runs with the target).")
@click.pass_context
def info(ctx, model, show_plan, plan_ctx, plan_backend, budget, kv_dtype, batch, cpu_moe, n_cpu_moe, host_budget,
         parallel, draft_max, precision, mmproj, mmproj_offload, draft, draft_backend):
    """Print a GGUF file's header, layers and tensors as Markdown (or, with --plan, its memory plan)."""
    if not show_plan:
        given = [o for name, o in (("plan_ctx", "--ctx"), ("plan_backend", "--backend"), ("budget", "--budget"),
                                   ("kv_dtype", "--kv-dtype"), ("batch", "--batch"), ("cpu_moe", "--cpu-moe"),
                                   ("n_cpu_moe", "--n-cpu-moe"), ("host_budget", "--host-budget"),
                                   ("parallel", "--parallel"), ("draft_max", "--draft-max"),
                                   ("precision", "--precision"), ("mmproj", "--mmproj"), ("mmproj_offload", "--no-mmproj-offload"), ("draft", "--draft"),
                                   ("draft_backend", "--draft-backend"))
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise G4rtError(f"{', '.join(given)} only apply with --plan")
        from ..tools.info import describe
        click.echo(describe(model), nl=False)
        return
    from .. import memory_plan
    from ..gguf.reader import GGUFFile
    from ..model.config import load_config
    from ..model.graph import model_weight_specs

    f = GGUFFile(model)
    cfg = load_config(f)
    specs, _ = model_weight_specs(cfg, f)
    on_cpu = not backend_info(plan_backend).has_device_memory
    moe_layers = memory_plan.expert_layers_on_host(cfg, plan_backend, cpu_moe, n_cpu_moe)
    from ..tools.precision_plan import precision_markdown
    precision_text = precision_markdown(specs, plan_backend, precision, moe_layers)   # a refused choice fails first
    if budget is not None:
        budget_bytes = memory_plan.parse_size(budget)
    elif on_cpu:
        budget_bytes = memory_plan.available_ram()
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
    if draft is not None and ctx.get_parameter_source("draft_max") != click.core.ParameterSource.COMMANDLINE:
        from ..speculative import DEFAULT_DRAFT_MAX
        draft_max = DEFAULT_DRAFT_MAX                        # what run / serve use with --draft
    layout = dict(slots=parallel, ring_slack=draft_max)      # the caches the engine would allocate
    device = "CPU" if on_cpu else f"GPU ({plan_backend})"
    draft_cost = None
    target_budget = budget_bytes           # what the default context may use of the budget
    if draft is not None:
        from ..draft_plan import draft_cost as cost_of
        draft_on_cpu = not backend_info(draft_backend).has_device_memory
        draft_cost = lambda c: cost_of(draft, cfg, specs, c, target_where=device,       # noqa: E731
                                       draft_where="CPU" if draft_on_cpu else f"GPU ({draft_backend})",
                                       kv_bytes=kv_value_bytes(draft_backend, kv_dtype), **layout)
        fixed = draft_cost(1)              # the draft's ctx-independent part comes out of the budget first
        if plan_ctx is None and fixed.where == device:
            target_budget = budget_bytes - fixed.weights
            if target_budget <= 0:
                raise G4rtError(f"the draft {Path(draft).name} alone ({memory_plan.human(fixed.weights)} "
                                f"of weights) exceeds the budget of {memory_plan.human(budget_bytes)}")
    n_ctx = plan_ctx or memory_plan.default_context(cfg, specs, target_budget, kv_bytes=kv_bytes, batch=batch,
                                                    materialized_attention=materialized, cpu_moe_layers=moe_layers,
                                                    **layout)
    # what stays in host RAM must fit there too (only expert placement puts anything there)
    host_bytes = None
    if moe_layers:
        host_bytes = memory_plan.parse_size(host_budget) if host_budget is not None else memory_plan.available_ram()
    plan = memory_plan.make_plan(cfg, specs, n_ctx, kv_bytes=kv_bytes, batch=batch, budget=budget_bytes,
                                 materialized_attention=materialized,
                                 device=device, model=Path(model).name,
                                 check=False, cpu_moe_layers=moe_layers, host_budget=host_bytes, **layout)
    click.echo(plan.markdown())
    click.echo(precision_text, nl=False)
    on_device = 0              # what else lives in the target's memory: an offloaded projector
    if mmproj is not None:
        from ..mmproj.plan import encoder_graphs, projector_bytes, projector_markdown
        from ..mmproj.reader import load_projector
        projector = load_projector(mmproj, cfg.n_embd, Path(model).name)
        offloaded = not on_cpu and mmproj_offload
        graphs = encoder_graphs(projector)            # built once for the section and the budget
        click.echo(projector_markdown(projector, n_ctx, where=device if offloaded else "CPU", graphs=graphs), nl=False)
        if offloaded:
            on_device = sum(projector_bytes(projector, graphs=graphs))
            _check_shared(plan.device_total + on_device, budget_bytes, f"Model + projector on the {device}",
                          f"{plan.model} with the projector {Path(mmproj).name}", refuse=plan.fits)
    if not plan.fits:
        raise plan.error()
    if draft_cost is not None:
        _check_with_draft(plan, draft_cost(n_ctx), budget_bytes, on_device)


def _check_shared(total: int, limit: Optional[int], what: str, who: str, refuse: bool = True) -> None:
    """Print whether `total` fits `limit`; when not, and `refuse` (False: the plan's own error
    follows), raise InsufficientMemoryError."""
    from ..memory_plan import InsufficientMemoryError, human
    if limit is None:
        return
    ok = total <= limit
    click.echo(f"{what}: {human(total)}; limit {human(limit)}: "
               f"{'fits' if ok else 'does NOT fit'} ({human(abs(limit - total))} {'to spare' if ok else 'over'}).\n")
    if not ok and refuse:
        raise InsufficientMemoryError(f"{who} needs {human(total)}, more than {human(limit)}; use a smaller "
                                      f"--ctx, fewer --parallel slots, fewer --gpu-layers or --no-mmproj-offload")


def _check_with_draft(plan, cost, budget_bytes: int, on_device: int = 0) -> None:
    """Print the draft's section and whether target + draft fit the memory they share (the budget
    when the draft lives with the target, with `on_device` more there; else host RAM); refuse what
    does not fit."""
    from .. import memory_plan
    from ..memory_plan import InsufficientMemoryError, human
    click.echo(cost.markdown(), nl=False)
    if cost.where == plan.device:
        shared, limit = plan.device_total + on_device + cost.total, budget_bytes
        label = f"the budget of {human(budget_bytes)}"
    elif cost.where == "CPU":       # a GPU target with a CPU draft: host RAM, beside a split's host part
        shared, limit = cost.total + plan.host_total, memory_plan.available_ram()
        label = f"the available RAM of {human(limit)}" if limit is not None else ""
    else:                           # a draft on another GPU backend: its memory is not planned here
        click.echo(f"The draft's {human(cost.total)} on the {cost.where} are not checked against a budget.\n")
        return
    if limit is None:
        return
    ok = shared <= limit
    click.echo(f"Target + draft on the {cost.where}: {human(shared)}; {label}: "
               f"{'fits' if ok else 'does NOT fit'} ({human(abs(limit - shared))} {'to spare' if ok else 'over'}).\n")
    if not ok:
        raise InsufficientMemoryError(f"{plan.model} with the draft {cost.name} needs {human(shared)} on the "
                                      f"{cost.where}, more than {label}; use a smaller --ctx, fewer --parallel "
                                      f"slots, or another draft")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("text", required=False)
@click.option("--json", "json_file", type=click.File("r", encoding="utf-8"),
              help="A JSON list of strings; prints one JSON list of ids per string.")
@click.option("--no-special", is_flag=True, help="Do not parse special tokens in the text.")
@click.option("--bos", is_flag=True, help="Add BOS first.")
def tokenize(model, text, json_file, no_special, bos):
    """Print the token ids of TEXT (works on vocabulary-only GGUF files)."""
    from ..gguf.reader import GGUFFile
    from ..text.tokenizer import load_tokenizer
    if (text is None) == (json_file is None):
        raise click.UsageError("give TEXT or --json FILE")
    tok = load_tokenizer(GGUFFile(model))
    strings = [text] if json_file is None else json.load(json_file)
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise G4rtError("--json must hold a list of strings")
    for s in strings:
        click.echo(json.dumps(tok.encode(s, add_bos=bos, parse_special=not no_special)))
