"""`g4rt run` and `g4rt chat`: what a user touches."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import G4rtError
from .media import MMPROJ_OPTION, budget_options, media_load_options, media_options, resolve_mmproj
from .options import placement, sampling, sampling_options, speculation


class _LoadProgress:
    """The weight-loading bar: Engine calls start(total bytes) once, then the backend reports bytes
    as it uploads (or, on the CPU, pages in) each weight. No bar for a backend that loads nothing."""

    def __init__(self):
        self.total, self.bar = None, None

    def start(self, total: int) -> None:
        self.total = total

    def __call__(self, nbytes: int) -> None:
        # The bar appears with the first loaded bytes, so early errors print alone.
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(desc="loading weights", total=self.total, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, file=sys.stderr)
        self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(model_path, backend, ctx, quiet, place=None, threads=None, ring_slack=0, spec=None, slots=1,
          precision="auto", media=None):
    from ..generation import load
    if model_path is None:
        from ..model.bundled import default_model_path
        model_path = default_model_path()
        if not quiet:
            click.echo(f"g4rt: no MODEL given, using the bundled default {Path(model_path).name}", err=True)
    progress = _LoadProgress()
    try:
        model = load(model_path, backend=backend, ctx=ctx, progress=None if quiet else progress,
                     threads=threads, ring_slack=ring_slack, slots=slots, precision=precision,
                     **(place or {}), **(spec or {}), **(media or {}))
    finally:
        progress.close()
    if not quiet:
        click.echo(f"g4rt: {Path(model_path).name} on {model.backend_name} ({model.device_name}, "
                   f"precision {model.precision_summary()}); {model.backend_reason}", err=True)
    return model


def _base_model_notice(model) -> None:
    """Chat on a base model echoes the conversation: say so once, before the first reply."""
    from ..text.chat_template import BASE_MODEL_NOTICE, is_base_model
    if is_base_model(model.engine.file):
        click.echo(f"g4rt: note: {BASE_MODEL_NOTICE}", err=True)


def _summary(model) -> str:
    s = model.last_stats
    media = f" with {s.media}" if s.media else ""
    return (f"[prompt {s.prompt_tokens} tokens{media} ({s.reused_tokens} cached), prefill {s.prefill_tps:.1f} tok/s, "
            f"decode {s.decode_tps:.1f} tok/s, {s.generated_tokens} generated, stop: {s.stop_reason}, "
            f"backend {model.backend_name}, device {model.device_name}, precision {model.precision_summary()}"
            + (f"; {s.speculative.summary()}" if s.speculative else "") + "]")


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("-p", "--prompt", help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.File("r", encoding="utf-8"), help="Read the prompt from a file.")
@click.option("--chat/--raw", default=False, show_default=True,
              help="Wrap the prompt in the model's chat template, or feed it as raw text.")
@click.option("--system", help="System prompt (implies --chat).")
@click.option("--show-thinking", is_flag=True, help="Show the model's thinking channel in chat output.")
@click.option("--batch", "batch_file", type=click.File("r", encoding="utf-8"), default=None,
              help="A file of prompts (one per line, or JSON lines with a \"prompt\" field): generate for "
                   "all, decoding --parallel of them together; prints one JSON line per prompt, in order. "
                   "--image / --audio go with every prompt, placed as for -p.")
@click.option("--parallel", "-np", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --batch: how many prompts decode together (KV cache slots).")
@media_options
@sampling_options
def run(model, prompt, prompt_file, chat, system, show_thinking, batch_file, parallel, **kw):
    """Generate text from a prompt, streaming it as it is produced.

    MODEL defaults to the bundled Gemma 3 270M when its package is installed."""
    given = [x is not None for x in (prompt, prompt_file, batch_file)]
    if not any(given):
        raise click.UsageError("give a prompt with -p TEXT or -f FILE, or prompts with --batch FILE")
    if sum(given) > 1:
        raise click.UsageError("give one of -p, -f and --batch")
    media = media_load_options(kw, model)
    images, audio = kw.pop("images"), kw.pop("audio")
    if batch_file is not None:
        # --image / --audio go with every prompt of the batch, each placed as for -p
        _run_batch(model, batch_file, parallel, chat or system is not None, system, kw, media, images, audio)
        return
    text = prompt if prompt is not None else prompt_file.read()
    m = _load(model, kw["backend"], kw["ctx"], kw["quiet"], placement(kw), kw["threads"], spec=speculation(kw),
              precision=kw["precision"], media=media)
    chat = chat or system is not None
    if chat:
        _base_model_notice(m)
    interrupted = False
    try:
        for piece in m.generate(text, chat=chat, system=system, show_thinking=show_thinking or not chat,
                                images=list(images), audio=list(audio), **sampling(kw)):
            click.echo(piece, nl=False)
            sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        m.last_stats.stop_reason = "interrupted"
    click.echo()
    if not kw["quiet"]:
        click.echo(_summary(m), err=True)
    if interrupted:
        raise SystemExit(130)


def read_batch_prompts(f) -> list[str]:
    """Prompts of a --batch file: JSON lines ({"prompt": ...} or a JSON string) when every
    non-blank line is JSON, else one prompt per non-blank line."""
    lines = [ln.rstrip("\r\n") for ln in f.read().splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise G4rtError(f"--batch {getattr(f, 'name', 'file')}: no prompts")
    prompts = []
    for n, ln in enumerate(lines, 1):
        if not ln.lstrip().startswith(("{", '"')):
            return lines
        try:
            obj = json.loads(ln)
        except ValueError:
            return lines
        if isinstance(obj, dict):
            obj = obj.get("prompt")
        if not isinstance(obj, str) or not obj:
            raise G4rtError(f"--batch line {n}: a JSON line needs a non-empty \"prompt\" string")
        prompts.append(obj)
    return prompts


def _run_batch(model, batch_file, parallel, chat, system, kw, media=None, images=(), audio=()) -> None:
    from ..slots import BatchStats
    spec = speculation(kw)
    if spec["draft"] is not None or spec["spec"] is not None:
        raise click.UsageError("--batch decodes prompts together without speculation: drop --draft / --spec")
    prompts = read_batch_prompts(batch_file)
    slots = min(parallel, len(prompts))
    m = _load(model, kw["backend"], kw["ctx"], kw["quiet"], placement(kw), kw["threads"], slots=slots,
              precision=kw["precision"], media=media)
    stats = BatchStats()
    t0 = time.perf_counter()
    try:
        results = m.generate_many(prompts, chat=chat, system=system, stats=stats, images=list(images),
                                  audio=list(audio), **sampling(kw))
    except KeyboardInterrupt:
        raise SystemExit(130)
    for i, (p, r) in enumerate(zip(prompts, results)):
        line = {"index": i, "prompt": p, "text": r.text, "tokens": len(r.tokens), "stop_reason": r.stop_reason}
        if r.media:
            line["media"] = r.media
        click.echo(json.dumps(line, ensure_ascii=False))
    if not kw["quiet"]:
        wall = time.perf_counter() - t0
        gen = sum(len(r.tokens) for r in results)
        click.echo(f"[{len(prompts)} prompts, {slots} together (batched); "
                   f"{gen} tokens generated in {wall:.1f} s = {gen / wall:.1f} tok/s in all; "
                   f"{stats.steps} steps of {stats.mean_batch:.1f} rows on average; backend {m.backend_name}, "
                   f"device {m.device_name}, precision {m.precision_summary()}]", err=True)


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--system", help="System prompt.")
@click.option("--show-thinking", is_flag=True, help="Show the model's thinking channel.")
@MMPROJ_OPTION
@budget_options
@sampling_options
def chat(model, system, show_thinking, mmproj, image_min_tokens, image_max_tokens, mmproj_offload, **kw):
    """Interactive multi-turn chat. /reset clears the history, /exit (or Ctrl-D) leaves;
    Ctrl-C stops a reply without ending the session. With --mmproj, /image PATH and /audio PATH
    attach media to the next message."""
    from ..engine import CHAT_RING_SLACK
    from ..generation import ChatSession
    # longer sliding rings: each turn keeps the history's KV although the template re-renders the
    # previous answer differently from how it was generated
    m = _load(model, kw["backend"], kw["ctx"], kw["quiet"], placement(kw), kw["threads"],
              ring_slack=CHAT_RING_SLACK, spec=speculation(kw), precision=kw["precision"],
              media=dict(mmproj=resolve_mmproj(model, mmproj, False, kw["quiet"]), image_min_tokens=image_min_tokens,
                         image_max_tokens=image_max_tokens, mmproj_offload=mmproj_offload))
    session = ChatSession(m, system=system, show_thinking=show_thinking)
    pending: dict[str, list] = {"image": [], "audio": []}
    _base_model_notice(m)
    if not kw["quiet"]:
        click.echo("g4rt chat: /reset clears the history, /exit leaves, Ctrl-C stops a reply.", err=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
            continue
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return
        if cmd == "/reset":
            session.reset()
            pending = {"image": [], "audio": []}
            click.echo("(history cleared)", err=True)
            continue
        verb, _, arg = cmd.partition(" ")
        if verb in ("/image", "/audio"):
            kind = verb[1:]
            if m.media is None:
                click.echo("g4rt: error: images and audio need a projector: start g4rt chat with --mmproj", err=True)
            elif not arg.strip() or not Path(arg.strip()).is_file():
                click.echo(f"g4rt: error: {verb} needs the path of a file, got {arg.strip()!r}", err=True)
            else:
                pending[kind].append(arg.strip())
                click.echo(f"({kind} {arg.strip()} goes with your next message)", err=True)
            continue
        try:
            images, audio = pending["image"], pending["audio"]
            pending = {"image": [], "audio": []}
            for piece in session.send(line, images=images, audio=audio, **sampling(kw)):
                click.echo(piece, nl=False)
                sys.stdout.flush()
        except KeyboardInterrupt:
            m.last_stats.stop_reason = "interrupted"
            click.echo(" [stopped]", nl=False)
        except G4rtError as e:
            click.echo(f"\ng4rt: error: {e}", err=True)
            continue
        click.echo()
        if not kw["quiet"]:
            click.echo(_summary(m), err=True)
