"""Typed, user-facing failures, all of them here. The CLI prints `str(error)` as one line and exits with
`exit_code`; the runtime raises PipelineError, the one type a host process embedding it has to catch."""


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


class RecordError(VtpError):
    """A folder or report is not what its record says: missing, unreadable, corrupt, tampered, of another schema."""


class TargetConstraintError(VtpError):
    """A graph uses something the target's TensorRT cannot run (op, opset, TopK K, data-dependent shape)."""


class EngineMismatchError(VtpError):
    """An engine built for another TensorRT version or GPU."""


class BuildError(VtpError):
    """TensorRT could not build an engine from the graph."""


class PipelineError(VtpError):
    """The runtime cannot serve a request: bad image, prompt too long, an export or engine that does not
    fit. The one exception type a host process embedding the runtime has to catch."""


class Interrupted(VtpError):
    """Ctrl-C: the job stopped and left nothing behind."""

    exit_code = 130


class PrecisionError(ExportError):
    """The graph could not be lowered or quantized to the requested precision."""
