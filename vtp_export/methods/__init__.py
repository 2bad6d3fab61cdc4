"""Method registry. Each method is a module of its own that registers itself here on import."""

from vtp_export.registry import Registry

METHODS: Registry[type] = Registry("method")

from vtp_export.methods import (  # noqa: E402,F401
    baselines, cdpruner, dart, divprune, fastervlm, holov, none, prumerge, trim, vispruner, visionzip,
)
