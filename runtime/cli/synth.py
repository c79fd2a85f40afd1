"""`g4rt synth`: random-weight GGUF files with the real models' shapes (the 12B, the 26B-A4B, the
E2B; the 12B's MTP assistant; projectors: the 12B's gemma4uv + gemma4ua, the E2B's gemma4v ViT
and gemma4a conformer) for benchmarks and real-size checks."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("synth")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layers", "n_layers", type=click.IntRange(1, 256), default=None,
              help="number of layers (default: 6; with --edge the E2B's 35)")
@click.option("--type", "qtype", type=click.Choice(["Q4_0", "Q4_K"]), default="Q4_0", show_default=True,
              help="type of every matrix (the embedding included); norms are F32")
@click.option("--vocab", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="GGUF whose tokenizer.* metadata to copy (default: the fixtures' real Gemma 4 vocabulary)")
@click.option("--seed", default=0, show_default=True)
@click.option("--moe", is_flag=True, help="the Gemma 4 26B-A4B's shapes (128 experts, top-8) instead of the 12B's")
@click.option("--assistant", is_flag=True,
              help="an MTP assistant drafter (gemma4-assistant, 4 layers, hidden 1024) for the 12B-shaped target")
@click.option("--mmproj", "mmproj", is_flag=True,
              help="a projector (gemma4uv + gemma4ua, F32, the 12B's shapes) for the 12B-shaped target; with "
                   "--vision / --audio the E2B's encoders instead")
@click.option("--vision", type=click.Choice(["vit"]), default=None,
              help="with --mmproj: a gemma4v ViT with Gemma 4 E2B/E4B's vision tower's shapes (16 blocks of width "
                   "768, 12 heads of 64, FFN 3072, 16-px patches pooled 3x3 = 48 px per soft token, position table "
                   "2 x 10240, clipped linears; transformers' Gemma4VisionConfig defaults) projecting to the E2B's "
                   "text width 1536 (the --edge model), F16 as llama.cpp's converter writes mmproj-*-f16.gguf")
@click.option("--audio", type=click.Choice(["conformer"]), default=None,
              help="with --mmproj: a gemma4a conformer with Gemma 4 E2B/E4B's audio tower's shapes (128 mel bins, "
                   "subsampling channels [128, 32], 12 blocks of width 1024, 8 heads, FFN 4096, output 1536; "
                   "transformers' Gemma4AudioConfig defaults); with --vision vit both go in one file, as the "
                   "real E2B's projector")
@click.option("--edge", is_flag=True,
              help="the Gemma 4 E2B's shapes (hidden 1536, 35 layers, per-layer embeddings, shared-KV tail): "
                   "a separate small draft model for the 12B-shaped target")
def synth(out, n_layers, qtype, vocab, seed, moe, assistant, mmproj, vision, audio, edge):
    """Write a random-weight GGUF with the Gemma 4 12B's (or 26B-A4B's) shapes and N layers."""
    from ..model.shapes import DENSE_12B, EDGE_E2B, MOE_26B
    from ..tools.synth import QT, SynthError, default_vocab_path, write_synthetic
    if (vision or audio) and not mmproj:
        raise click.ClickException("--vision / --audio choose the encoders of a projector: add --mmproj")
    if vision or audio:
        if moe or assistant or edge:
            raise click.ClickException("--vision vit / --audio conformer write the E2B's encoders (for the --edge "
                                       "text model); drop --moe / --assistant / --edge")
        return _edge_mmproj(out, vision, audio, seed)
    if edge and (moe or assistant or mmproj):
        raise click.ClickException("--edge writes an E2B-shaped model; drop --moe / --assistant / --mmproj")
    vocab = vocab or default_vocab_path()
    if vocab is None:
        raise click.ClickException("no vocabulary GGUF found: pass --vocab PATH "
                                   "(e.g. shared/fixtures/tokenizer/ggml-vocab-gemma-4.gguf)")
    q = QT[qtype]
    if mmproj:
        from ..tools.synth_mmproj import write_synthetic_mmproj
        click.echo(f"writing {out}: gemma4uv + gemma4ua projector for the 12B-shaped target (F32, random weights)")
        total = write_synthetic_mmproj(out, (MOE_26B if moe else DENSE_12B).hidden, seed)
        click.echo(f"{out}: {total / 2**30:.2f} GiB of tensors")
        return
    if assistant:
        if moe:
            raise click.ClickException("--assistant writes the 12B-shaped target's assistant; drop --moe")
        from ..tools.synth_assistant import write_synthetic_assistant
        click.echo(f"writing {out}: MTP assistant for the 12B-shaped target, {qtype}, vocabulary from {vocab}")
        try:
            total = write_synthetic_assistant(out, q, vocab, seed)
        except SynthError as e:
            raise click.ClickException(str(e))
        click.echo(f"{out}: {total / 2**30:.2f} GiB of tensors")
        return
    shape = EDGE_E2B if edge else MOE_26B if moe else DENSE_12B
    if n_layers is None:
        n_layers = shape.n_layer if edge else 6
    click.echo(f"writing {out}: {shape.label}-shaped, {n_layers} layers, {qtype}, vocabulary from {vocab}")
    try:
        total = write_synthetic(out, n_layers, q, vocab, seed, echo=click.echo, shape=shape)
    except SynthError as e:
        raise click.ClickException(str(e))
    click.echo(f"{out}: {total / 2**30:.2f} GiB of tensors")


def _edge_mmproj(out: Path, vision, audio, seed: int) -> None:
    from ..tools.synth_mmproj import E2B_CONFORMER, E2B_TEXT_WIDTH, E2B_VIT, write_synthetic_edge_mmproj
    parts = []
    if vision:
        v = E2B_VIT
        parts.append(f"gemma4v ViT ({v.layers} blocks x {v.hidden}, {v.heads} heads, patch {v.patch})")
    if audio:
        a = E2B_CONFORMER
        parts.append(f"gemma4a conformer ({a.layers} blocks x {a.hidden}, {a.heads} heads)")
    click.echo(f"writing {out}: {' + '.join(parts)} projector for the E2B-shaped ({E2B_TEXT_WIDTH} wide) text "
               f"model (F16, random weights)")
    total = write_synthetic_edge_mmproj(out, E2B_TEXT_WIDTH, vision=bool(vision), audio=bool(audio), seed=seed)
    click.echo(f"{out}: {total / 2**30:.2f} GiB of tensors")
