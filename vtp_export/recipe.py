"""The device-side TensorRT build recipe: one trtexec command per graph with the target's flags, as a script.

Strongly typed (TensorRT 9+, every target but JetPack 5): `--stronglyTyped` and no precision flags, the
graph's own types decide (precision.py puts fp16/bf16 and Q/DQ into the graph; TensorRT 11 has nothing
else). Weakly typed (TensorRT 8.5): `--fp16` with the score path pinned by `--layerPrecisions`.
"""

import shlex
from pathlib import Path

from vtp_export.targets import Target

BUILD_SCRIPT = "build_engine.sh"
TIMING_CACHE = "timing.cache"


def engine_name(onnx_name: str) -> str:
    """vision.onnx -> vision.engine."""
    return Path(onnx_name).with_suffix(".engine").name


def trtexec_arguments(target: Target, onnx_name: str, inputs: list[dict], dynamic_batch: bool, max_batch: int,
                      precision: str, float32_nodes: list[str]) -> list[str]:
    """`inputs`: the graph's input signatures (name, dtype, shape) as graph_signature records them;
    `precision`, `float32_nodes`: weakly typed targets only, the engine precision and the layers an fp16
    engine keeps in float32 (TensorRT names layers after ONNX nodes)."""
    args = [f"--onnx={onnx_name}", f"--saveEngine={engine_name(onnx_name)}", f"--timingCacheFile={TIMING_CACHE}"]
    if target.strongly_typed:
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
        if float32_nodes:
            args += ["--precisionConstraints=obey",
                     "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in float32_nodes)]
    if target.workspace_mib:
        args.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if dynamic_batch:
        for option, batch in (("--minShapes", 1), ("--optShapes", 1), ("--maxShapes", max_batch)):
            shapes = ",".join(f"{i['name']}:" + "x".join(map(str, [batch, *i["shape"][1:]])) for i in inputs)
            args.append(f"{option}={shapes}")
    return args


def write_build_script(folder: Path, target: Target, graphs: dict[str, dict], dynamic_batch: bool, max_batch: int,
                       precision: str) -> list[str]:
    """Write build_engine.sh into `folder` for each graph in `graphs` (ONNX file name -> {"inputs": input
    signatures, "float32_nodes": [...]}); return the trtexec command lines it runs."""
    arguments = [trtexec_arguments(target, name, g["inputs"], dynamic_batch, max_batch, precision, g["float32_nodes"])
                 for name, g in graphs.items()]
    engines = ", ".join(engine_name(name) for name in graphs)
    if target.strongly_typed:
        precision = "strongly typed: the precision each graph's types state"
    lines = "\n".join(f'"$TRTEXEC" {shlex.join(args)}' for args in arguments)
    script = f"""#!/usr/bin/env bash
# Builds {engines} ({precision}) on the target device: {target.summary}.
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
