"""Every error g4rt raises on purpose is a G4rtError: the CLI prints its message and exits non-zero."""


class G4rtError(Exception):
    """Base class: a problem the user can act on, described in one line."""

    exit_code = 1


class ModelFileError(G4rtError):
    """The file is not a readable, well-formed GGUF (truncated, corrupt, hostile)."""


class MetadataError(ModelFileError):
    """A metadata key is missing, has the wrong type, or holds an impossible value."""


class TensorError(ModelFileError):
    """A tensor is missing, has the wrong shape or type, or lies outside the file."""


class UnsupportedModelError(G4rtError):
    """The file is valid but describes something g4rt does not run (architecture, quant type)."""


class BackendUnavailableError(G4rtError):
    """The requested backend cannot run on this machine (no driver, no device, library missing)."""


class ContextOverflowError(G4rtError):
    """A prompt or generation does not fit the context window."""


class ParityError(G4rtError):
    """A parity run missed its bar."""

    exit_code = 3
