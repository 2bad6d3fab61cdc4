"""The runtime: an export folder's vision graph stitched to the LLM. See pipeline.Pipeline."""

from vtp_export.errors import PipelineError
from vtp_export.runtime.pipeline import Answer, Pipeline

__all__ = ["Answer", "Pipeline", "PipelineError"]
