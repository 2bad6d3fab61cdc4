"""Benchmark of the export on full-size LLaVA-1.5 (random weights) on this machine.

Prints, and writes as JSON with --json:
  1. `vtp-export --model llava15 --method holov --keep 64 --target orin --random-weights`: wall time and
     peak RSS of the process, against the target peak < 2x the fp32 weight size of the exported part;
  2. onnxruntime latency and node count of the whole vision graph for `none` and every method at --keep;
  3. the pruning stage's own cost: the method on precomputed features minus the projector over the
     tokens it projects, as a share of the vision tower up to the feature layer (target < 1%).

  .venv/bin/python tools/bench_export.py [--keep 64] [--runs 10] [--json figures.json]
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from vtp_export.encoder import PrunedVisionEncoder
from vtp_export.exporter import ExportRequest, export
from vtp_export.graph_io import VISION_ONNX
from vtp_export.methods import METHODS
from vtp_export.methods.base import VisionFeatures
from vtp_export.models import MODELS, random_vision_stack
from vtp_export.onnx_export import export_onnx
from vtp_export.verify import cpu_threads, onnxruntime_session, random_pixel_values

MODEL = "llava15"


class PruningStage(nn.Module):
    """The method alone, from the feature layer's outputs to projected tokens."""

    def __init__(self, method: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.method, self.projector = method, projector

    def forward(self, hidden, cls_attention, keys):
        return self.method(VisionFeatures(hidden, cls_attention, keys), self.projector)


def median_latency(path: Path, feeds: dict, runs: int) -> float:
    session = onnxruntime_session(path)
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli_export(keep: int, scratch: Path) -> dict:
    command = [sys.executable, "-m", "vtp_export", "--model", MODEL, "--method", "holov", "--keep", str(keep),
               "--target", "orin", "--random-weights", "--out", str(scratch / "cli")]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = json.loads((scratch / "cli" / "config.json").read_text())
    weights_mib = record["model"]["vision_parameters_bytes_fp32"] / 2**20
    return {"command": " ".join(command[2:]), "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib),
            "weights_fp32_mib": round(weights_mib), "peak_over_weights": round(peak_mib / weights_mib, 2),
            "stage_timings_s": record["timings"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(cpu_threads())
    figures = {"machine": f"{platform.processor() or platform.machine()}, {cpu_threads()} threads, "
                          f"{platform.system()} {platform.release()}", "keep": args.keep}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        figures["cli_export"] = cli_export(args.keep, scratch)
        print(f"export (CLI, holov keep {args.keep}, orin): {figures['cli_export']}", flush=True)

        stack = random_vision_stack(MODELS.get(MODEL).make_config(), seed=0)
        geometry = stack.geometry
        pixel_values = random_pixel_values(geometry, 1, seed=0)
        methods = {name: METHODS.get(name).create(geometry, None if name == "none" else args.keep, {})
                   for name in METHODS.names()}
        with torch.no_grad():
            features = PrunedVisionEncoder(stack, methods["fastervlm"]).features(pixel_values)
        stage_feeds = {"hidden": features.hidden.numpy(), "cls_attention": features.cls_attention.numpy(),
                       "keys": features.keys.numpy()}

        class Tower(nn.Module):  # up to the feature layer, CLS attention row included
            def __init__(self) -> None:
                super().__init__()
                self.encoder = PrunedVisionEncoder(stack, methods["fastervlm"])

            def forward(self, pixel_values):
                f = self.encoder.features(pixel_values)
                return f.hidden, f.cls_attention, f.keys

        tower_path = scratch / "tower.onnx"
        with torch.no_grad():
            export_onnx(Tower(), (pixel_values,), tower_path, ("pixel_values",), ("hidden", "cls_attention", "keys"),
                        18, dynamic_batch=False)
        tower_s = median_latency(tower_path, {"pixel_values": pixel_values.numpy()}, args.runs)
        figures["tower_s"] = round(tower_s, 4)
        print(f"vision tower to the feature layer: {tower_s * 1e3:.1f} ms", flush=True)

        projector_cost = {}
        for tokens in sorted({geometry.num_patches, args.keep}):
            path = scratch / f"projector-{tokens}.onnx"
            x = features.patches[:, :tokens].contiguous()
            with torch.no_grad():
                export_onnx(stack.projector, (x,), path, ("tokens",), ("projected",), 18, dynamic_batch=False)
            projector_cost[tokens] = median_latency(path, {"tokens": x.numpy()}, args.runs)

        rows = {}
        for name, method in methods.items():
            out = export(ExportRequest(model=MODEL, method=name, keep=None if name == "none" else args.keep,
                                       target="cpu", random_weights=True, out=scratch / name, verify_samples=1))
            graph_s = median_latency(out / VISION_ONNX, {"pixel_values": pixel_values.numpy()}, args.runs)
            stage_path = scratch / f"stage-{name}.onnx"
            with torch.no_grad():
                export_onnx(PruningStage(method, stack.projector), (features.hidden, features.cls_attention, features.keys),
                            stage_path, tuple(stage_feeds), ("image_embeds", "token_index"), 18, dynamic_batch=False)
            stage_s = median_latency(stage_path, stage_feeds, args.runs)
            projected = geometry.num_patches if method.projects_all_tokens else args.keep
            selection_s = max(stage_s - projector_cost[projected], 0.0)
            nodes = json.loads((out / "config.json").read_text())["graph"]["nodes"]
            rows[name] = {"graph_s": round(graph_s, 4), "graph_nodes": nodes, "stage_with_projector_s": round(stage_s, 5),
                          "selection_s": round(selection_s, 5), "selection_share_of_tower": round(selection_s / tower_s, 5)}
            print(f"{name:10} graph {graph_s * 1e3:7.1f} ms ({nodes} nodes)   stage+projector {stage_s * 1e3:6.2f} ms   "
                  f"selection {selection_s * 1e3:6.2f} ms = {100 * selection_s / tower_s:.2f}% of tower", flush=True)
        figures["methods"] = rows
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
