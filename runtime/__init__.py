"""g4rt: a Gemma 4 inference runtime. One backend-neutral op list, run on numpy, Vulkan or CUDA."""

from .errors import G4rtError

__version__ = "0.1.0"

__all__ = ["G4rtError", "__version__"]
