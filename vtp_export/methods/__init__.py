"""Method registry. Each method is a module of its own that registers itself here on import."""

from vtp_export.registry import Registry

METHODS: Registry[type] = Registry("method")

from vtp_export.methods import baselines, divprune, fastervlm, holov, none, visionzip  # noqa: E402,F401
