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


# -- hostile or broken files (raised by gguf_validate before anything trusts the header) -------
class NotGGUFError(ModelFileError):
    """The file does not start with the GGUF magic."""


class BadVersionError(ModelFileError):
    """The GGUF version field is not a known version."""


class TruncatedFileError(ModelFileError):
    """The file ends inside a header structure or before a tensor's data."""


class OversizeLengthError(ModelFileError):
    """A count, string length or array length is larger than the file can hold (or than any model needs)."""


class BadNameError(ModelFileError):
    """A metadata key or tensor name is empty, implausibly long, or not UTF-8."""


class BadValueTypeError(MetadataError):
    """A metadata value type id is unknown, or an array is nested."""


class DuplicateKeyError(MetadataError):
    """The same metadata key appears twice."""


class BadAlignmentError(MetadataError):
    """general.alignment is not a non-zero power-of-two UINT32."""


class MissingKeyError(MetadataError):
    """A required metadata key is absent."""


class MetadataTypeError(MetadataError):
    """A metadata key holds a value of the wrong type (e.g. a string where an integer is required)."""


class TensorShapeError(TensorError):
    """A tensor's dimension count or dimensions are impossible, or do not match the model config."""


class UnknownTensorTypeError(TensorError):
    """A tensor's type id is not a GGML type at all (as opposed to a known type without a kernel)."""


class TensorAlignmentError(TensorError):
    """A tensor's data offset is not a multiple of the file's alignment."""


class TensorOutOfBoundsError(TensorError):
    """A tensor's data runs past the end of the file."""


class TensorOverlapError(TensorError):
    """Two tensors' data ranges overlap."""


class DuplicateTensorError(TensorError):
    """The same tensor name appears twice."""


class MissingTensorError(TensorError):
    """A tensor the model needs is absent."""


class InsufficientMemoryError(G4rtError):
    """The model, KV cache and scratch do not fit the memory budget; the message says what would fit."""


class UnsupportedModelError(G4rtError):
    """The file is valid but describes something g4rt does not run (architecture, quant type)."""


class BackendUnavailableError(G4rtError):
    """The requested backend cannot run on this machine (no driver, no device, library missing)."""


class PrecisionUnavailableError(G4rtError):
    """The backend does not offer the requested activation precision (--precision)."""


class ContextOverflowError(G4rtError):
    """A prompt or generation does not fit the context window."""


class ParityError(G4rtError):
    """A parity run missed its bar."""

    exit_code = 3
