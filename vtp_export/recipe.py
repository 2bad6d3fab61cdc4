"""The device-side TensorRT build recipe: a trtexec command with the target's flags, as a script."""

import shlex
from pathlib import Path

from vtp_export.graph_io import PIXEL_VALUES, VISION_ONNX
from vtp_export.targets import Target

BUILD_SCRIPT = "build_engine.sh"
VISION_ENGINE = "vision.engine"
TIMING_CACHE = "timing.cache"


def trtexec_arguments(target: Target, pixel_shape: list[int], dynamic_batch: bool, max_batch: int) -> list[str]:
    args = [f"--onnx={VISION_ONNX}", f"--saveEngine={VISION_ENGINE}", f"--timingCacheFile={TIMING_CACHE}"]
    if target.default_precision != "fp32":
        args.append(f"--{target.default_precision}")
    if target.workspace_mib:
        args.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if dynamic_batch:
        dims = "x".join(map(str, pixel_shape[1:]))
        args += [f"--minShapes={PIXEL_VALUES}:1x{dims}", f"--optShapes={PIXEL_VALUES}:1x{dims}",
                 f"--maxShapes={PIXEL_VALUES}:{max_batch}x{dims}"]
    return args


def write_build_script(folder: Path, target: Target, pixel_shape: list[int], dynamic_batch: bool,
                       max_batch: int) -> str:
    """Write build_engine.sh into `folder`; return the trtexec command line it runs."""
    command = shlex.join([target.trtexec, *trtexec_arguments(target, pixel_shape, dynamic_batch, max_batch)])
    script = f"""#!/usr/bin/env bash
# Builds {VISION_ENGINE} on the target device: {target.summary}.
# Run it there, in this folder: bash {BUILD_SCRIPT}   (TRTEXEC=/path/to/trtexec to override)
# TensorRT engines are tied to the TensorRT version and GPU they are built with: build on the device.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-{target.trtexec}}}"
"$TRTEXEC" {shlex.join(trtexec_arguments(target, pixel_shape, dynamic_batch, max_batch))}
"""
    path = folder / BUILD_SCRIPT
    path.write_text(script)
    path.chmod(0o755)
    return command
