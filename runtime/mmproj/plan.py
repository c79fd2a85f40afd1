"""What a projector adds to the memory plan (`g4rt info MODEL --plan --mmproj MM`): its weights
(memory-mapped, read by the encoder on the host) and the encoder's buffers for the largest
image / clip, and what media cost in context tokens."""

from __future__ import annotations

from typing import Optional

from ..memory_plan import human
from ..ops import activation_bytes
from .graphs import audio_graph, image_graph, projector_weight_specs
from .reader import ConformerConfig, Projector

#: Gemma 4's processor default (g4rt.media.budget.DEFAULT_MAX_TOKENS)
DEFAULT_IMAGE_TOKENS = 280


def encoder_graphs(projector: Projector, image_tokens: int = DEFAULT_IMAGE_TOKENS,
                   audio_seconds: float = 30.0) -> dict:
    """The encoder graphs for an image at `image_tokens` soft tokens and a clip of audio_seconds
    ({"image": (graph, soft tokens), "audio": ...}, for the kinds the projector has)."""
    specs = projector_weight_specs(projector.file)
    out = {}
    if projector.vision:
        n = image_tokens
        if projector.vision.vit is not None:        # gemma4v: the ViT over the image's n x 9 patches
            from .vision_vit import image_graph as vit_graph, vit_weight_specs
            graph = vit_graph(projector.vision, vit_weight_specs(projector.file, projector.vision), n)
        else:
            graph = image_graph(projector.vision, specs, n)
        out["image"] = (graph, n)
    if projector.audio:
        a = projector.audio
        n = int(audio_seconds * a.sample_rate) // a.frame
        if isinstance(a, ConformerConfig):          # gemma4a: the conformer over the clip's log-mel frames
            from .audio_conformer import conformer_graph
            t0 = int(audio_seconds * a.sample_rate) // 160 - 1
            graph = conformer_graph(a, specs, t0, n)
        else:
            graph = audio_graph(a, specs, n)
        out["audio"] = (graph, n)
    return out


def _weight_bytes(projector: Projector) -> int:
    return sum(t.nbytes for t in projector.file.tensors.values())


def projector_bytes(projector: Projector, image_tokens: int = DEFAULT_IMAGE_TOKENS,
                    audio_seconds: float = 30.0, graphs: Optional[dict] = None) -> tuple[int, int]:
    """(weights, the largest encoder graph's buffers): what the encoder needs where it runs.
    graphs: encoder_graphs' result when the caller has it already."""
    graphs = graphs if graphs is not None else encoder_graphs(projector, image_tokens, audio_seconds)
    return _weight_bytes(projector), max((activation_bytes(g) for g, _ in graphs.values()), default=0)


def projector_markdown(projector: Projector, ctx: int, image_tokens: int = DEFAULT_IMAGE_TOKENS,
                       audio_seconds: float = 30.0, where: str = "CPU", graphs: Optional[dict] = None) -> str:
    """where: the memory the encoder runs in (the model's GPU backend, as generation.encoder_placement
    puts it; "CPU": memory-mapped, read in place). graphs: as projector_bytes."""
    weights = _weight_bytes(projector)
    held = "memory-mapped, read by the native CPU encoder" if where == "CPU" else \
        f"uploaded to the {where}, where the encoder runs (--no-mmproj-offload: the native CPU)"
    lines = ["", f"## Projector {projector.path.name}", "",
             f"- weights: {human(weights)} ({held})"]
    graphs = graphs if graphs is not None else encoder_graphs(projector, image_tokens, audio_seconds)
    if "image" in graphs:
        graph, n = graphs["image"]
        lines.append(f"- an image at {n} soft tokens: {n + 2} context tokens (with <|image>, <image|>), "
                     f"encoder buffers {human(activation_bytes(graph))}")
    if "audio" in graphs:
        graph, n = graphs["audio"]
        lines.append(f"- {audio_seconds:g} s of audio: {n} soft tokens, {n + 2} context tokens, encoder buffers "
                     f"{human(activation_bytes(graph))}")
    if projector.vision:
        per = image_tokens + 2
        lines.append(f"- the context of {ctx} tokens holds at most {ctx // per} such image(s) with no text")
    return "\n".join(lines) + "\n"
