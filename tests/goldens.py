"""The golden graph signatures under graphs/: which (model, method, keep) exports each one pins, and where it
lies. tests/test_exporter.py compares fresh exports with them; tools/update_graphs.py rewrites them."""

import json
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


def golden_exports(model: str) -> dict[str, tuple[str, dict[str, str], int | None]]:
    """Golden name -> (method, method options, keep) of every method and variant the model supports."""
    adapter = MODELS.get(model)
    geometry = adapter.geometry(adapter.default_config(), adapter.resolved_options({}))
    candidates = {name: (name, {}) for name in METHODS.names()} | GOLDEN_VARIANTS
    golden = {}
    for name, (method, options) in candidates.items():
        keep = None if method == "none" else GOLDEN_KEEPS[model]
        try:
            method_class = METHODS.get(method).for_signals(adapter.signals)
            adapter.check_method(method_class)
            method_class.create(geometry, keep, options)
        except UsageError:  # the model refuses the method or this variant of it
            continue
        golden[name] = (method, options, keep)
    return golden


def golden_path(model: str, method: str, keep: int) -> Path:
    return GRAPHS_DIR / model / f"{method}-k{keep}.json"


def golden_text_path(model: str) -> Path:
    """The text graph of text-conditioned methods: the same for every method and keep."""
    return GRAPHS_DIR / model / "clip-text.json"


def write_signature(signature: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=2) + "\n")


def read_signature(path: Path) -> dict:
    return json.loads(path.read_text())
