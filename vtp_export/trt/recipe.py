"""The device-side TensorRT build recipe: one trtexec command per graph with the target's flags, as a script.

Strongly typed (TensorRT 9+, every target but JetPack 5): `--stronglyTyped` and no precision flags, the
graph's own types decide (precision/transforms.py puts fp16/bf16 and Q/DQ into the graph; TensorRT 11 has nothing
else). Weakly typed (TensorRT 8.5): `--fp16` with the score path pinned by `--layerPrecisions`.
"""

import shlex
from collections.abc import Iterable
from pathlib import Path

from vtp_export.onnx.names import MAX_DYNAMIC_BATCH
from vtp_export.records.export import GraphRecord
from vtp_export.targets import Target

BUILD_SCRIPT = "build_engine.sh"
TIMING_CACHE = "timing.cache"


def engine_name(onnx_name: str) -> str:
    """vision.onnx -> vision.engine."""
    return Path(onnx_name).with_suffix(".engine").name


def trtexec_arguments(target: Target, graph: GraphRecord, precision: str) -> list[str]:
    """Weakly typed targets only: the engine `precision`, and the graph's float32_nodes as the layers an fp16
    engine keeps in float32 (TensorRT names layers after ONNX nodes)."""
    args = [f"--onnx={graph.file}", f"--saveEngine={engine_name(graph.file)}", f"--timingCacheFile={TIMING_CACHE}"]
    if target.strongly_typed:
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
        if graph.float32_nodes:
            args += ["--precisionConstraints=obey",
                     "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in graph.float32_nodes)]
    if target.workspace_mib:
        args.append(f"--memPoolSize=workspace:{target.workspace_mib}M")
    if graph.dynamic_batch:
        for option, batch in (("--minShapes", 1), ("--optShapes", 1), ("--maxShapes", MAX_DYNAMIC_BATCH)):
            shapes = ",".join(f"{i.name}:" + "x".join(map(str, [batch, *i.shape[1:]])) for i in graph.inputs)
            args.append(f"{option}={shapes}")
    return args


def write_build_script(folder: Path, target: Target, graphs: Iterable[GraphRecord], precision: str) -> list[str]:
    """Write build_engine.sh into `folder` for `graphs`; return the trtexec command lines it runs."""
    graphs = list(graphs)
    arguments = [trtexec_arguments(target, graph, precision) for graph in graphs]
    engines = ", ".join(engine_name(graph.file) for graph in graphs)
    if target.strongly_typed:
        precision = f"{precision}, strongly typed: the precision the graph's types state"
    lines = "\n".join(f'"$TRTEXEC" {shlex.join(args)}' for args in arguments)
    script = f"""#!/usr/bin/env bash
# Builds {engines} ({precision}) on the target device: {target.summary}.
# Run it there, in this folder: bash {BUILD_SCRIPT}   (TRTEXEC=/path/to/trtexec to override)
# TensorRT engines are tied to the TensorRT version and GPU they are built with: build on the device.
# The LLM without PyTorch: on the host `vtp-export llm DIR --format gguf --quant q4_k_m` writes llm-q4_k_m.gguf
# here; on the device `CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python`, then `vtp-export run .
# --llm-backend llama.cpp --image photo.jpg --prompt "..."` runs the engines and llama.cpp (README: LLM on llama.cpp).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-{target.trtexec}}}"
{lines}
"""
    path = folder / BUILD_SCRIPT
    path.write_text(script)
    path.chmod(0o755)
    return [shlex.join([target.trtexec, *args]) for args in arguments]
