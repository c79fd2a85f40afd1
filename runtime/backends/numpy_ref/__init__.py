"""The numpy reference backend (`--backend numpy`): the definition of every op."""

from .backend import NumpyBackend, NumpyGraph, attention, gelu_tanh, rms_norm, rope, rope_angles

__all__ = ["NumpyBackend", "NumpyGraph", "attention", "gelu_tanh", "rms_norm", "rope", "rope_angles"]
