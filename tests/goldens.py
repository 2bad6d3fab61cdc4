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
    tokens: int  # the graph's image_embeds rows per input, the k of its file name
    method_options: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)


def golden_export(model: str, method: str, keep: int | None, method_options: dict[str, str] | None = None,
                  model_options: dict[str, str] | None = None) -> GoldenExport:
    """The export, checked as the exporter checks it: UsageError where the model or the method refuses it."""
    adapter = MODELS.get(model)
    geometry = adapter.geometry(adapter.default_config(), adapter.resolved_options(model_options or {}))
    method_class = METHODS.get(method).for_signals(adapter.signals)
    adapter.check_method(method_class)
    tokens = method_class.create(geometry, keep, method_options or {}).tokens_per_image
    return GoldenExport(method, keep, tokens, method_options or {}, model_options or {})


def golden_exports(model: str) -> dict[str, GoldenExport]:
    """Golden name -> export of every method and variant the model supports, and of its video graphs."""
    keep = GOLDEN_KEEPS[model]
    candidates = {name: (name, None if name == "none" else keep, {}) for name in METHODS.names()}
    candidates |= {name: (method, keep, options) for name, (method, options) in GOLDEN_VARIANTS.items()}
    golden = {}
    for name, (method, method_keep, options) in candidates.items():
        try:
            golden[name] = golden_export(model, method, method_keep, options)
        except UsageError:  # the model refuses the method or this variant of it, or it takes videos only
            continue
    adapter = MODELS.get(model)
    if any(option.name == "frames" for option in adapter.options):  # no refusal expected: one would raise here
        video = {"frames": str(GOLDEN_FRAMES)}
        group_tokens = adapter.geometry(adapter.default_config(), adapter.resolved_options(video)).num_patches
        for method in GOLDEN_VIDEO_METHODS:
            golden[f"video-{method}"] = golden_export(model, method, None if method == "none" else keep,
                                                      model_options=video)
        for method in (name for name in METHODS.names() if METHODS.get(name).temporal):
            golden[f"video-{method}"] = golden_export(model, method, group_tokens + keep, model_options=video)
    return golden


def golden_path(model: str, name: str, tokens: int) -> Path:
    return GRAPHS_DIR / model / f"{name}-k{tokens}.json"


def golden_text_path(model: str) -> Path:
    """The text graph of text-conditioned methods: the same for every method and keep."""
    return GRAPHS_DIR / model / "clip-text.json"


def golden_files() -> set[Path]:
    """What graphs/ holds: each golden export's signature, and the text graph's where one of a model's golden
    exports is text-conditioned."""
    files = set()
    for model in GOLDEN_KEEPS:
        signals = MODELS.get(model).signals
        for name, spec in golden_exports(model).items():
            files.add(golden_path(model, name, spec.tokens))
            if METHODS.get(spec.method).for_signals(signals).text_conditioned:
                files.add(golden_text_path(model))
    return files


def write_signature(signature: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=2) + "\n")


def read_signature(path: Path) -> dict:
    return json.loads(path.read_text())
