"""g4rt: a Gemma 4 inference runtime. One backend-neutral op list, run on numpy, Vulkan or CUDA."""

from .errors import G4rtError

__version__ = "0.1.0"


def load(path=None, backend: str = "auto", ctx=None, *, precision: str = "auto", **options):
    """Load a Gemma GGUF model; see g4rt.generation.load. precision: "auto", "exact" or "q8"
    (activations; model.precision_summary() says what runs)."""
    from .generation import load as _load
    return _load(path, backend=backend, ctx=ctx, precision=precision, **options)


__all__ = ["G4rtError", "load", "__version__"]
