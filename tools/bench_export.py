"""Benchmark of the export on full-size LLaVA-1.5 (random weights) on this machine.

Prints, and writes as JSON with --json:
  1. `vtp-export --model llava15 --method holov --keep 64 --target orin --random-weights`: wall time and
     peak RSS of the process, against the target peak < 2x the fp32 weight size of the exported part;
  2. onnxruntime latency and node count of the whole vision graph for `none` and every method at --keep;
  3. the pruning stage's own cost (median of paired runs against the projector alone): the
     method on precomputed features (with what it computes beyond the
     feature layer: PruMerge's next-layer keys, CLIP's visual projection for text-conditioned methods)
     minus the projector over the tokens it projects, as a share of the vision tower up to the feature
     layer (target < 2%), and the same method's official algorithm in eager PyTorch on the same features
     (tests/methods/reference.py, the official code re-stated) for comparison;
  4. the CLIP text graph of text-conditioned methods.

  .venv/bin/python tools/bench_export.py [--keep 64] [--runs 10] [--methods a,b] [--json figures.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.methods import reference  # noqa: E402  the official algorithms, re-stated eagerly

from vtp_export.encoder import ClipTextEncoder, PrunedVisionEncoder  # noqa: E402
from vtp_export.exporter import ExportRequest, export  # noqa: E402
from vtp_export.graph_io import INPUT_IDS, TEXT_ONNX, VISION_ONNX  # noqa: E402
from vtp_export.methods import METHODS  # noqa: E402
from vtp_export.methods.base import PruningMethod, VisionFeatures  # noqa: E402
from vtp_export.models import MODELS, random_clip_text, random_vision_stack  # noqa: E402
from vtp_export.onnx_export import export_onnx  # noqa: E402
from vtp_export.verify import cpu_threads, onnxruntime_session, random_input_ids, random_pixel_values  # noqa: E402

MODEL = "llava15"
STAGE_INPUTS = ("hidden", "cls_attention", "keys", "text_embeds")


class PruningStage(nn.Module):
    """The method alone: from the feature layer's outputs (and the question's text embedding) to projected
    tokens, including what the method computes beyond the feature layer."""

    def __init__(self, encoder: PrunedVisionEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, hidden, cls_attention, keys, text_embeds):
        features = self.encoder.method_inputs(VisionFeatures(hidden, cls_attention, keys), text_embeds)
        return self.encoder.method(features, self.encoder.projector)


def official(method: PruningMethod, encoder: PrunedVisionEncoder, f: VisionFeatures):
    """The method's official algorithm (eager, as its repository runs it) on the same features, projector
    included where the official code applies it; None for methods without one."""
    projector, keep = encoder.projector, method.keep
    name = method.name
    if name == "fastervlm":
        return projector(reference.fastervlm(f.hidden, f.cls_attention, keep)[0])
    if name == "visionzip":
        return projector(reference.visionzip(f.hidden, f.cls_attention, f.keys, method.dominant, method.contextual)[0])
    if name == "holov":
        return reference.holov(projector(f.patches), f.patch_attention(), keep)
    if name == "divprune":
        return reference.divprune(projector(f.patches), keep)
    if name == "vispruner":
        projected = projector(f.patches)
        return projected[:, reference.vispruner(f.patches, f.patch_attention(), keep)[0] - 1]
    if name in ("prumerge", "prumerge_plus"):
        layer = encoder.next_layer
        h = layer.layer_norm1(f.hidden)
        q, k = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)
        lattice = method.lattice.tolist() if name == "prumerge_plus" else None
        top = method.top if name == "prumerge_plus" else keep - 1
        return projector(reference.prumerge(f.hidden, q, k, top, lattice)[0])
    if name in ("trim", "cdpruner"):
        clip_embeds = encoder.visual_projection(encoder.post_layernorm(f.patches))
        if name == "trim":
            return projector(torch.stack(reference.trim(f.patches, clip_embeds, f.text_embeds, keep - 1)[0]))
        return reference.cdpruner(projector(f.patches), clip_embeds, f.text_embeds, keep)
    return None


def median_torch_latency(fn, runs: int) -> float:
    with torch.no_grad():
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_latency(path: Path, feeds: dict, runs: int) -> float:
    session = onnxruntime_session(path)
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_difference(path: Path, feeds: dict, baseline: Path, baseline_feeds: dict, runs: int) -> tuple[float, float]:
    """(median latency of `path`, median of its per-pair excess over `baseline`), the two run back to back
    in each pair: drift of a shared machine cancels in the pairs, where two separate medians of ~60 ms
    stages differ by several ms run to run."""
    session, reference = onnxruntime_session(path), onnxruntime_session(baseline)
    session.run(None, feeds)
    reference.run(None, baseline_feeds)
    totals, excess = [], []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        middle = time.perf_counter()
        reference.run(None, baseline_feeds)
        end = time.perf_counter()
        totals.append(middle - start)
        excess.append((middle - start) - (end - middle))
    return statistics.median(totals), statistics.median(excess)


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
    parser.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    parser.add_argument("--skip-cli", action="store_true", help="skip the CLI export measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = args.methods.split(",") if args.methods else METHODS.names()
    torch.set_num_threads(cpu_threads())
    figures = {"machine": f"{platform.processor() or platform.machine()}, {cpu_threads()} threads, "
                          f"{platform.system()} {platform.release()}", "keep": args.keep}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if not args.skip_cli:
            figures["cli_export"] = cli_export(args.keep, scratch)
            print(f"export (CLI, holov keep {args.keep}, orin): {figures['cli_export']}", flush=True)

        spec = MODELS.get(MODEL)
        stack = random_vision_stack(spec.make_config(), seed=0)
        stack.clip = random_clip_text(spec.make_clip_config(), seed=0)
        geometry = stack.geometry
        pixel_values = random_pixel_values(geometry, 1, seed=0)
        methods = {name: METHODS.get(name).create(geometry, None if name == "none" else args.keep, {})
                   for name in names}
        text_encoder = ClipTextEncoder(stack.clip)
        input_ids = random_input_ids(1, stack.clip.max_length, stack.clip.config.text_config.vocab_size, seed=0)
        with torch.no_grad():
            features = PrunedVisionEncoder(stack, METHODS.get("fastervlm").create(geometry, 8, {})).features(pixel_values)
            text_embeds = text_encoder(torch.from_numpy(input_ids))
        stage_example = (features.hidden, features.cls_attention, features.keys, text_embeds)
        stage_feeds = {name: t.numpy() for name, t in zip(STAGE_INPUTS, stage_example)}

        class Tower(nn.Module):  # up to the feature layer, CLS attention row included
            def __init__(self) -> None:
                super().__init__()
                self.encoder = PrunedVisionEncoder(stack, METHODS.get("fastervlm").create(geometry, 8, {}))

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

        projectors = {}
        for tokens in sorted({geometry.num_patches, args.keep}):
            path = scratch / f"projector-{tokens}.onnx"
            x = features.patches[:, :tokens].contiguous()
            with torch.no_grad():
                export_onnx(stack.projector, (x,), path, ("tokens",), ("projected",), 18, dynamic_batch=False)
            projectors[tokens] = (path, {"tokens": x.numpy()})

        rows = {}
        for name, method in methods.items():
            out = export(ExportRequest(model=MODEL, method=name, keep=None if name == "none" else args.keep,
                                       target="cpu", random_weights=True, out=scratch / name, verify_samples=1))
            config = json.loads((out / "config.json").read_text())
            graph_feeds = {"pixel_values": pixel_values.numpy()}
            if method.text_conditioned:
                graph_feeds["text_embeds"] = text_embeds.numpy()
                if "text_graph_s" not in figures:
                    figures["text_graph_s"] = round(median_latency(out / TEXT_ONNX, {INPUT_IDS: input_ids}, args.runs), 4)
                    figures["text_graph_nodes"] = config["graphs"]["text"]["nodes"]
                    print(f"CLIP text graph: {figures['text_graph_s'] * 1e3:.1f} ms", flush=True)
            graph_s = median_latency(out / VISION_ONNX, graph_feeds, args.runs)
            encoder = PrunedVisionEncoder(stack, method)
            stage_path = scratch / f"stage-{name}.onnx"
            with torch.no_grad():
                export_onnx(PruningStage(encoder), stage_example, stage_path, STAGE_INPUTS, method.output_names, 18,
                            dynamic_batch=False)
            projected = geometry.num_patches if method.projects_all_tokens else args.keep
            stage_s, selection_s = paired_difference(stage_path, stage_feeds, *projectors[projected], 3 * args.runs)
            selection_s = max(selection_s, 0.0)
            features.text_embeds = text_embeds
            with torch.no_grad():
                has_official = official(method, encoder, features) is not None
            official_s = None
            if has_official:
                official_s = median_torch_latency(lambda: official(method, encoder, features), max(3, args.runs // 3))
            nodes = config["graphs"]["vision"]["nodes"]
            rows[name] = {"graph_s": round(graph_s, 4), "graph_nodes": nodes, "stage_with_projector_s": round(stage_s, 5),
                          "selection_s": round(selection_s, 5), "selection_share_of_tower": round(selection_s / tower_s, 5),
                          "official_pytorch_s": None if official_s is None else round(official_s, 5)}
            versus = "" if official_s is None else f"   official PyTorch {official_s * 1e3:8.2f} ms"
            print(f"{name:13} graph {graph_s * 1e3:7.1f} ms ({nodes} nodes)   stage+projector {stage_s * 1e3:6.2f} ms   "
                  f"selection {selection_s * 1e3:6.2f} ms = {100 * selection_s / tower_s:.2f}% of tower{versus}", flush=True)
        figures["methods"] = rows
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
