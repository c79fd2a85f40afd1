"""The errors of projector files and media inputs (all G4rtError, so the CLI prints one line)."""

from __future__ import annotations

from ..errors import G4rtError, ModelFileError


class MmprojError(ModelFileError):
    """A projector file is not one, or a tensor's shape contradicts its metadata."""


class ProjectorMismatchError(G4rtError):
    """A projector belongs to another model (another type, or soft tokens of another width)."""


class MediaInputError(G4rtError):
    """Images / audio do not fit the prompt: more media than markers or the reverse, an image
    larger than the position table, media without a projector, too many soft tokens."""
