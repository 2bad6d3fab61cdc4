"""Typed, user-facing failures. The CLI prints `str(error)` as one line and exits with `exit_code`."""


class VtpError(Exception):
    """A failure the user can act on; its message is one line."""

    exit_code = 2


class UsageError(VtpError):
    """A bad value on the command line: unknown name, keep out of range, bad option."""


class WeightsError(VtpError):
    """Checkpoint missing, empty, corrupt, or not of the expected architecture."""


class ExportError(VtpError):
    """The exporter could not turn the module into an ONNX graph."""


class VerificationError(ExportError):
    """The exported graph disagrees with the PyTorch module."""


class ShapeMismatchError(VerificationError):
    """An output of the graph has another shape or dtype than the module's."""


class IndexMismatchError(VerificationError):
    """The graph selected other tokens than the module."""


class ToleranceError(VerificationError):
    """Embeddings differ by more than the stated tolerance."""


class TensorRTParseError(VtpError):
    """The TensorRT ONNX parser rejected the graph."""


class OutputFolderError(VtpError):
    """The output folder cannot be written or would overwrite something foreign."""


class TargetConstraintError(VtpError):
    """A graph uses something the target's TensorRT cannot run (op, opset, TopK K, data-dependent shape)."""


class PipelineError(VtpError):
    """The runtime cannot serve a request: bad image, prompt too long, an export or engine that does not
    fit. The one exception type a host process embedding the runtime has to catch."""


class PrecisionError(ExportError):
    """The graph could not be lowered or quantized to the requested precision."""
