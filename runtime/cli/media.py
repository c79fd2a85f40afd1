"""The media options (--mmproj, --image, --audio, the image token budget) and where a command
finds its projector: the one given, else a single mmproj*.gguf beside the model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ..mmproj.errors import MediaInputError

MMPROJ_OPTION = click.option("--mmproj", type=click.Path(dir_okay=False), default=None, metavar="MMPROJ.gguf",
                             help="Multimodal projector for images / audio (default with --image / --audio: "
                                  "the one mmproj*.gguf beside the model).")


def media_options(f):
    """--mmproj, --image, --audio and the image token budget (g4rt run)."""
    for opt in reversed([
        MMPROJ_OPTION,
        click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False, exists=True),
                     metavar="PATH", help="An image (PNG, JPEG, WebP, GIF), placed at the prompt's next <|image|> "
                                          "marker, or before the text when it has none. Repeatable."),
        click.option("--audio", "audio", multiple=True, type=click.Path(dir_okay=False, exists=True),
                     metavar="PATH", help="An audio clip (WAV, FLAC, MP3, OGG), placed at the next <|audio|> "
                                          "marker, or before the text. Repeatable."),
        budget_options,
    ]):
        f = opt(f)
    return f


def budget_options(f):
    """The image token budget (as llama.cpp's --image-min-tokens / --image-max-tokens) and where
    the projector runs (--no-mmproj-offload, as llama.cpp's)."""
    for opt in reversed([
        click.option("--no-mmproj-offload", "mmproj_offload", is_flag=True, default=True, flag_value=False,
                     help="Run the projector's encoder on the native CPU, not on the model's GPU backend "
                          "(default: the GPU; a CPU Vulkan driver such as lavapipe always uses the native CPU)."),
        click.option("--image-min-tokens", type=click.IntRange(1), default=None,
                     help="Image token budget as llama.cpp's: resize only to keep between this and "
                          "--image-max-tokens soft tokens (default: fill the budget as transformers)."),
        click.option("--image-max-tokens", type=click.IntRange(1), default=None,
                     help="Most soft tokens per image (default 280, as Gemma 4's processor)."),
    ]):
        f = opt(f)
    return f


def beside(model_path) -> Optional[Path]:
    """The one mmproj*.gguf in the model's folder (None: none, or several)."""
    if model_path is None:
        return None
    found = sorted(Path(model_path).absolute().parent.glob("mmproj*.gguf"))   # the folder as named (links kept)
    return found[0] if len(found) == 1 else None


def resolve_mmproj(model_path, mmproj, wanted: bool, quiet: bool) -> Optional[str]:
    """The projector a command uses: --mmproj, else (when media are given) the one beside the
    model, said on stderr; media without any projector is an error."""
    if mmproj is not None:
        return mmproj
    if not wanted:
        return None
    found = beside(model_path)
    if found is None:
        raise MediaInputError("images / audio need a projector: give --mmproj MMPROJ.gguf (none, or more than "
                              "one, mmproj*.gguf lies beside the model)")
    if not quiet:
        click.echo(f"g4rt: using the projector {found.name} found beside the model", err=True)
    return str(found)


def media_load_options(kw, model_path) -> dict:
    """Pops media_options' values for g4rt.load (the images / audio stay in kw)."""
    mmproj = resolve_mmproj(model_path, kw.pop("mmproj"), bool(kw["images"] or kw["audio"]), kw["quiet"])
    return dict(mmproj=mmproj, image_min_tokens=kw.pop("image_min_tokens"),
                image_max_tokens=kw.pop("image_max_tokens"), mmproj_offload=kw.pop("mmproj_offload"))
