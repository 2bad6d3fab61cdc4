import dataclasses
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, LlavaForConditionalGeneration

from vtp_export.models import MODELS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# pytest-xdist runs test files on one worker per core (pyproject addopts): each worker's torch takes its share.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

TINY = MODELS.get("llava15-tiny")


def save_tiny_llava(folder: Path, image_size: int = 336, seed: int = 0) -> Path:
    """A real HF LLaVA checkpoint (random weights, byte-level tokenizer) written with save_pretrained."""
    torch.manual_seed(seed)
    config = TINY.default_config(image_size)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    TINY.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint_224(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny-224"), image_size=224)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A real HF CLIP checkpoint (random weights) of llava15-tiny's vision tower, with its text tower."""
    from vtp_export.models.tokenizer import stand_in_clip_tokenizer

    torch.manual_seed(seed)
    config = TINY.default_clip_config()
    CLIPModel(config).save_pretrained(folder)
    stand_in_clip_tokenizer(config.text_config.vocab_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip-tiny"))


NEXT = MODELS.get("llava-next-tiny")


def save_tiny_llava_next(folder: Path, text: str = "llama", seed: int = 0) -> Path:
    """A real HF LLaVA-NeXT checkpoint (random weights, byte-level tokenizer), Vicuna (llama) or Mistral text."""
    from transformers import LlavaNextForConditionalGeneration, MistralConfig

    from vtp_export.models.llava15 import tiny_llama_text

    torch.manual_seed(seed)
    config = NEXT.default_config()
    if text == "mistral":
        settings = tiny_llama_text() | {"num_key_value_heads": 2, "sliding_window": None}
        config.text_config = MistralConfig(**{k: v for k, v in settings.items() if k != "model_type"})
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    NEXT.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


def save_tiny_qwen(folder: Path, seed: int = 0, model_name: str = "qwen2.5-vl-tiny", config=None) -> Path:
    """A real HF Qwen2.5-VL (or Qwen3-VL: model_name qwen3-vl-tiny) checkpoint (random weights, byte-level
    tokenizer) written with save_pretrained. Weights are drawn wider than HF's initialisation and norm weights away
    from one, so that a wrong norm, order, pairing or position cannot hide behind near-uniform attention: swapping
    the h and w positions of the image tokens changes Qwen2.5-VL's greedy answer. `config`: another config of the
    model (default: the tiny one)."""
    import transformers

    adapter = MODELS.get(model_name)
    torch.manual_seed(seed)
    config = config or adapter.default_config()
    model = getattr(transformers, adapter.hf_class)(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            elif "visual" in name:
                parameter.normal_(0, 0.1)
            elif "embed_tokens" not in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    adapter.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_next_checkpoint(tmp_path_factory, tiny_clip) -> Path:
    """A tiny LLaVA-NeXT checkpoint with its CLIP model in clip/ (text-conditioned methods export from it)."""
    import shutil

    folder = save_tiny_llava_next(tmp_path_factory.mktemp("llava-next-tiny") / "llava")
    shutil.copytree(tiny_clip, folder / "clip")
    return folder


@pytest.fixture(scope="session")
def qwen_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen2.5-vl-tiny"))


@pytest.fixture(scope="session")
def qwen3_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen3-vl-tiny"), model_name="qwen3-vl-tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tiny_clip, tmp_path_factory) -> Path:
    """The tiny LLaVA-1.5 checkpoint with its CLIP model in clip/, so every method (text-conditioned too) exports."""
    folder = tmp_path_factory.mktemp("llava15-bundle") / "llava"
    shutil.copytree(tiny_checkpoint, folder)
    shutil.copytree(tiny_clip, folder / "clip")
    return folder


def _frozen(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Path):
        return str(value.resolve())
    return value


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


class ExportCache:
    """Session-wide exports: `cached_export(model, method, keep, target, **request)` exports once per distinct
    request and returns the same folder to every later caller. The key is the whole ExportRequest but `out`
    (model, method, keep, target, precision, method and model options, weights, batch, verify_samples, seed,
    ...), so two tests share a folder only where they would have exported the same graph.

    Cached folders are read-only by contract: a test that changes one (a GGUF, a rebuilt recipe, a tampered file)
    takes `cached_export.copy(dest, ...)`. Every lookup checks that the folder is as the export left it, so a
    test that breaks the contract fails instead of corrupting later tests. Tests of the export process itself
    (errors, --replace, interrupts, staging folders, the README's commands) export on their own."""

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict[tuple, tuple[Path, dict]] = {}
        self.failures: dict[tuple, BaseException] = {}
        self.files: dict[tuple, set[str]] = {}  # the test files that read each export

    def __call__(self, model: str, method: str, keep: int | None = None, target: str = "cpu", **request) -> Path:
        from vtp_export.export.job import export
        from vtp_export.export.plan import ExportRequest

        assert "out" not in request, "a cached export chooses its own folder; copy it with cached_export.copy"
        wanted = ExportRequest(model=model, method=method, keep=keep, target=target, **request)
        key = _frozen({k: v for k, v in dataclasses.asdict(wanted).items() if k != "out"})
        self.files.setdefault(key, set()).add(os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[0])
        if key in self.failures:
            raise RuntimeError(f"the cached export {key} failed earlier in this session") from self.failures[key]
        if key in self.folders:
            folder, snapshot = self.folders[key]
            assert _snapshot(folder) == snapshot, (
                f"a test changed the cached export {folder}: take a copy with cached_export.copy(...)")
            return folder
        slug = "-".join(str(part) for part in (model, method, f"k{keep}", target, len(self.folders)))
        out = self.root / slug
        try:
            folder = export(dataclasses.replace(wanted, out=out))
        except BaseException as error:
            self.failures[key] = error
            raise
        self.folders[key] = folder, _snapshot(folder)
        return folder

    def copy(self, dest: Path, model: str, method: str, keep: int | None = None, target: str = "cpu",
             **request) -> Path:
        """A private copy of the cached export at `dest`, free to change."""
        shutil.copytree(self(model, method, keep, target, **request), dest)
        return dest


_CACHES: list[ExportCache] = []


@pytest.fixture(scope="session")
def cached_export(tmp_path_factory) -> ExportCache:
    """The session's export cache (see ExportCache)."""
    _CACHES.append(ExportCache(tmp_path_factory.mktemp("cached-exports")))
    return _CACHES[-1]


_CACHE_TOTALS = [0, 0]  # exports made, exports saved: this process's, plus its xdist workers' on the controller


def cache_totals() -> tuple[int, int]:
    made = sum(len(cache.folders) for cache in _CACHES)
    shared = sum(len(files) - 1 for cache in _CACHES for key, files in cache.files.items() if key in cache.folders)
    return made, shared


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker reports its cache to the controller
        workeroutput["export_cache"] = cache_totals()


def pytest_testnodedown(node, error):
    made, shared = getattr(node, "workeroutput", {}).get("export_cache", (0, 0))
    _CACHE_TOTALS[0] += made
    _CACHE_TOTALS[1] += shared


def pytest_terminal_summary(terminalreporter):
    made, shared = cache_totals()
    made, shared = made + _CACHE_TOTALS[0], shared + _CACHE_TOTALS[1]
    terminalreporter.write_line(f"export cache: {made} exports made, {shared} more exports of the same graphs saved "
                                "across test files")


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: skipped with the reason where torch sees none."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
