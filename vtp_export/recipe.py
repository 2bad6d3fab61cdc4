"""The device-side TensorRT build recipe: one trtexec command per graph with the target's flags, as a script."""

import shlex
from pathlib import Path

from vtp_export.targets import Target

BUILD_SCRIPT = "build_engine.sh"
TIMING_CACHE = "timing.cache"


def engine_name(onnx_name: str) -> str:
    """vision.onnx -> vision.engine."""
    return Path(onnx_name).with_suffix(".engine").name


def trtexec_arguments(target: Target, onnx_name: str, inputs: list[dict], dynamic_batch: bool,
                      max_batch: int) -> list[str]:
    """`inputs`: the graph's input signatures (name, dtype, shape) as graph_signature records them."""
    args = [f"--onnx={onnx_name}", f"--saveEngine={engine_name(onnx_name)}", f"--timingCacheFile={TIMING_CACHE}"]
    if target.default_precision != "fp32":
        args.append(f"--{target.default_precision}")
    if target.workspace_mib:
        args.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if dynamic_batch:
        for option, batch in (("--minShapes", 1), ("--optShapes", 1), ("--maxShapes", max_batch)):
            shapes = ",".join(f"{i['name']}:" + "x".join(map(str, [batch, *i["shape"][1:]])) for i in inputs)
            args.append(f"{option}={shapes}")
    return args


def write_build_script(folder: Path, target: Target, graph_inputs: dict[str, list[dict]], dynamic_batch: bool,
                       max_batch: int) -> list[str]:
    """Write build_engine.sh into `folder` for each graph in `graph_inputs` (ONNX file name -> input
    signatures); return the trtexec command lines it runs."""
    arguments = [trtexec_arguments(target, name, inputs, dynamic_batch, max_batch)
                 for name, inputs in graph_inputs.items()]
    engines = ", ".join(engine_name(name) for name in graph_inputs)
    lines = "\n".join(f'"$TRTEXEC" {shlex.join(args)}' for args in arguments)
    script = f"""#!/usr/bin/env bash
# Builds {engines} on the target device: {target.summary}.
# Run it there, in this folder: bash {BUILD_SCRIPT}   (TRTEXEC=/path/to/trtexec to override)
# TensorRT engines are tied to the TensorRT version and GPU they are built with: build on the device.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-{target.trtexec}}}"
{lines}
"""
    path = folder / BUILD_SCRIPT
    path.write_text(script)
    path.chmod(0o755)
    return [shlex.join([target.trtexec, *args]) for args in arguments]
