"""Model registry: one adapter per architecture, each in a module of its own that registers itself here."""

from vtp_export.models.base import VisionLanguageModel
from vtp_export.registry import Registry

MODELS: Registry[VisionLanguageModel] = Registry("model")


def register(cls: type[VisionLanguageModel]) -> type[VisionLanguageModel]:
    MODELS.add(cls.name, cls())
    return cls


from vtp_export.models import llava15, llava_next, qwen2_5_vl  # noqa: E402,F401
