"""What an export will be, decided and checked before anything is loaded: the request (what the command line asks), the plan (model adapter, config, geometry, method, weights sources) and the default output folder."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtp_export.checkpoint.locate import locate_clip_weights, locate_weights, read_clip_config, read_model_config
from vtp_export.contract import WeightsSource
from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod
from vtp_export.models import MODELS
from vtp_export.models.base import VisionLanguageModel
from vtp_export.precision.transforms import QUANTIZED_PRECISIONS, engine_precision
from vtp_export.records.folder import check_writable
from vtp_export.targets import TARGETS
from vtp_export.toolchains import labels

TENSORRT_CHECKS = ("parse", "build")


MAX_SEED = 2**63 - 1


Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    model: str
    method: str
    target: str
    keep: int | None = None
    method_options: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)  # --grid, --image-size
    out: Path | None = None
    weights: Path | None = None
    text_weights: Path | None = None  # CLIP folder for text-conditioned methods
    random_weights: bool = False
    seed: int = 0
    batch: int = 1
    dynamic_batch: bool = False
    verify_samples: int = 3
    tensorrt_check: str = "parse"  # "build" also builds an engine with the CPU-only builder
    precision: str | None = None  # graph/engine precision; None: the target's default
    calibration: str | None = None  # int8/fp8: a folder of images, or "random" (random weights only)
    replace: bool = False  # replace an existing export folder even if it holds files vtp-export did not write


@dataclass
class Plan:
    """Everything resolved from the request before any heavy work."""

    model: VisionLanguageModel
    method: PruningMethod
    config: Any
    model_options: dict[str, str]
    weights: WeightsSource
    clip_weights: WeightsSource | None
    out: Path


def name_part(name: str, options: dict[str, Any]) -> str:
    """'holov-variant-paper': a name with the options that set it apart, for folder names."""
    return "".join([name, *(f"-{k}-{v}" for k, v in sorted(options.items()))])


def default_out(request: ExportRequest, plan: Plan) -> Path:
    model_variant = {o.name: plan.model_options[o.name] for o in plan.model.options
                     if plan.model_options[o.name] != o.default}
    return Path("exports") / (f"{name_part(request.model, model_variant)}-{name_part(request.method, plan.method.variant())}"
                              f"-k{plan.method.tokens_per_image}-{request.target}")


def plan_export(request: ExportRequest) -> Plan:
    """Validate the whole request (names, ranges, options, weights' configs) before any heavy work."""
    model = MODELS.get(request.model)
    method_class: type[PruningMethod] = METHODS.get(request.method).for_signals(model.signals)
    target = TARGETS.get(request.target)
    model.check_method(method_class)
    if request.batch < 1:
        raise UsageError(f"--batch {request.batch} must be at least 1")
    if request.verify_samples < 1:
        raise UsageError("--verify-samples must be at least 1")
    if not 0 <= request.seed <= MAX_SEED:
        raise UsageError(f"--seed {request.seed} must be in 0..{MAX_SEED}")
    if request.tensorrt_check not in TENSORRT_CHECKS:
        raise UsageError(f"--tensorrt-check {request.tensorrt_check!r} is not one of {', '.join(TENSORRT_CHECKS)}")
    toolchain = target.toolchain
    if request.precision is not None and not toolchain.lowers_precision:
        raise UsageError(f"--precision is for {labels(lambda t: t.lowers_precision)} targets; {target.name} runs the "
                         f"fp32 graph in {toolchain.vision_backend}")
    if toolchain.lowers_precision:
        precision = engine_precision(target, request.precision)
        if precision in QUANTIZED_PRECISIONS and target.strongly_typed and request.calibration is None:
            raise UsageError(f"{precision} is calibrated on images: pass --calibration DIR (a folder of images), or "
                             "--calibration random with --random-weights")
    if request.calibration is not None and not (toolchain.lowers_precision and request.precision in QUANTIZED_PRECISIONS):
        raise UsageError("--calibration is for --precision int8 or fp8")
    if request.calibration == "random" and not (request.random_weights or MODELS.get(request.model).random_only):
        raise UsageError("--calibration random is only for --random-weights exports: calibrate real weights on a "
                         "folder of images (--calibration DIR)")
    if request.text_weights is not None and not method_class.text_conditioned:
        raise UsageError(f"--text-weights is for text-conditioned methods; {request.method} is not one")
    model_options = model.resolved_options(request.model_options)
    weights = locate_weights(model, request.weights, request.random_weights, request.seed)
    config = read_model_config(model, weights)
    geometry = model.geometry(config, model_options)
    method = method_class.create(geometry, request.keep, request.method_options)
    clip_weights = None
    if method.text_conditioned:
        clip_weights = locate_clip_weights(model, request.text_weights, weights)
        read_clip_config(model, clip_weights, config)
    plan = Plan(model, method, config, model_options, weights, clip_weights, Path())
    plan.out = request.out or default_out(request, plan)
    check_writable(plan.out, request.replace)
    return plan
