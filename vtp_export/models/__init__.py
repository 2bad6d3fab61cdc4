"""Model adapters, one module per architecture, registered in MODELS on import."""

from vtp_export.models import llava15, llava_next, qwen2_5_vl, qwen3_vl  # noqa: F401
from vtp_export.models.base import MODELS

__all__ = ["MODELS"]
