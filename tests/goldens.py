"""The golden graph signatures under graphs/: which exports of the golden tiny models each one pins, and where it
lies. tests/test_exporter.py compares fresh exports with them; tools/update_graphs.py rewrites them."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.models import MODELS

GRAPHS_DIR = Path(__file__).resolve().parent.parent / "graphs"
# Every registered method a golden model supports has a golden signature of its fp32 graph at that model's
# keep (`none` at its own N), and so do the method variants whose graphs differ in structure.
GOLDEN_KEEPS = {"llava15-tiny": 64, "llava-next-tiny": 320, "qwen2.5-vl-tiny": 64, "qwen3-vl-tiny": 64}
GOLDEN_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "holov-paper": ("holov", {"variant": "paper"}),
    "trim-iqr": ("trim", {"count": "iqr"}),
}
# Models with --frames also pin video graphs of GOLDEN_FRAMES frames: unpruned, one spatial method (its keep
# spread over the temporal groups) and each temporal method (the first group whole plus the model's keep).
GOLDEN_FRAMES = 4
GOLDEN_VIDEO_METHODS = ("none", "divprune")


@dataclass(frozen=True)
class GoldenExport:
    method: str
    keep: int | None
    method_options: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)


def golden_exports(model: str) -> dict[str, GoldenExport]:
    """Golden name -> export of every method and variant the model supports (and its video graphs)."""
    adapter = MODELS.get(model)
    candidates = {name: GoldenExport(name, None if name == "none" else GOLDEN_KEEPS[model])
                  for name in METHODS.names()}
    candidates |= {name: GoldenExport(method, GOLDEN_KEEPS[model], options)
                   for name, (method, options) in GOLDEN_VARIANTS.items()}
    if any(option.name == "frames" for option in adapter.options):
        video = {"frames": str(GOLDEN_FRAMES)}
        group_tokens = adapter.geometry(adapter.default_config(), adapter.resolved_options(video)).num_patches
        candidates |= {f"video-{name}": GoldenExport(name, None if name == "none" else GOLDEN_KEEPS[model],
                                                     model_options=video) for name in GOLDEN_VIDEO_METHODS}
        candidates |= {f"video-{name}": GoldenExport(name, group_tokens + GOLDEN_KEEPS[model], model_options=video)
                       for name in METHODS.names() if METHODS.get(name).temporal}
    golden = {}
    for name, spec in candidates.items():
        geometry = adapter.geometry(adapter.default_config(), adapter.resolved_options(spec.model_options))
        try:
            method_class = METHODS.get(spec.method).for_signals(adapter.signals)
            adapter.check_method(method_class)
            method_class.create(geometry, spec.keep, spec.method_options)
        except UsageError:  # the model refuses the method, this variant of it, or a still image for it
            continue
        golden[name] = spec
    return golden


def golden_path(model: str, name: str, keep: int) -> Path:
    return GRAPHS_DIR / model / f"{name}-k{keep}.json"


def golden_text_path(model: str) -> Path:
    """The text graph of text-conditioned methods: the same for every method and keep."""
    return GRAPHS_DIR / model / "clip-text.json"


def write_signature(signature: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=2) + "\n")


def read_signature(path: Path) -> dict:
    return json.loads(path.read_text())
