"""Benchmark of the export on a full-size model (random weights) on this machine.

Prints, and writes as JSON with --json:
  1. `vtp-export --model MODEL --method holov --keep K --target orin --random-weights` (the default fp16 graph):
     wall time and peak RSS of the process, against the target peak < 2x the fp32 weight size of the
     exported part;
  2. onnxruntime latency and node count of the whole fp32 vision graph for `none` and every method the
     model supports at --keep;
  3. the pruning stage's own cost (median of paired runs against the projector alone): the method on the
     tower's feature-layer outputs (with what it computes beyond them: PruMerge's next-layer keys, CLIP's
     visual projection for text-conditioned methods) minus the projector over the tokens it projects, as a
     share of the tower up to the feature layer (target < 2%), and for LLaVA-1.5 the same method's official
     algorithm in eager PyTorch on the same features (tests/methods/reference.py) for comparison;
  4. the CLIP text graph of text-conditioned methods.

  .venv/bin/python tools/bench_export.py [--model llava15] [--keep 64] [--runs 10] [--methods a,b] [--json f.json]
"""

import argparse
import dataclasses
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
from vtp_export.checkpoint.load import load_clip_text, load_vision_stack  # noqa: E402
from vtp_export.contract import RandomWeights, Signal, VisionFeatures  # noqa: E402
from vtp_export.errors import ExportError, UsageError  # noqa: E402
from vtp_export.export.graph import VisionGraph  # noqa: E402
from vtp_export.export.job import export  # noqa: E402
from vtp_export.export.plan import ExportRequest  # noqa: E402
from vtp_export.methods import METHODS  # noqa: E402
from vtp_export.methods.base import PruningMethod  # noqa: E402
from vtp_export.models import MODELS  # noqa: E402
from vtp_export.onnx.export import export_onnx  # noqa: E402
from vtp_export.onnx.inputs import random_input_ids, random_pixel_values  # noqa: E402
from vtp_export.onnx.names import INPUT_IDS, TEXT_ONNX, VISION_ONNX  # noqa: E402
from vtp_export.onnx.sessions import cpu_threads, onnxruntime_session  # noqa: E402
from vtp_export.towers.clip import ClipTextEncoder  # noqa: E402

TOWER_OUTPUTS = ("hidden", "cls_attention", "keys", "received_attention")


class Everything(PruningMethod):
    """Not a method: asks the tower for every signal it has, to time the tower and feed the stages."""

    name = "everything"
    requires = frozenset(Signal) - {Signal.NEXT_LAYER, Signal.CLIP_TEXT, Signal.PROMPT_EMBEDS}


class Tower(nn.Module):
    """The tower up to its feature layer (and its score signals): what every method shares."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, pixel_values):
        f = self.features.tower_features(pixel_values)
        return tuple(getattr(f, name) for name in TOWER_OUTPUTS if getattr(f, name) is not None)


class PruningStage(nn.Module):
    """The method alone: from the tower's feature-layer outputs (and the question's text embedding) to
    projected tokens, including what the method computes beyond the feature layer."""

    def __init__(self, graph: VisionGraph, names: tuple[str, ...], cls_token: bool) -> None:
        super().__init__()
        self.graph, self.names, self.cls_token = graph, names, cls_token

    def forward(self, *tensors):
        *tower, text_embeds = tensors
        features = VisionFeatures(cls_token=self.cls_token, **dict(zip(self.names, tower)))
        features = self.graph.features.method_inputs(features, text_embeds)
        return self.graph.prune(features)


def official(method: PruningMethod, graph: VisionGraph, f: VisionFeatures):
    """LLaVA-1.5: the method's official algorithm (eager, as its repository runs it) on the same features,
    projector included where the official code applies it; None for methods without one."""
    projector, keep, name = graph.projector, method.keep, method.name
    if name == "fastervlm":
        return projector(reference.fastervlm(f.hidden, f.cls_attention, keep)[0])
    if name == "visionzip":
        return projector(reference.visionzip(f.hidden, f.cls_attention, f.keys, method.dominant, method.contextual)[0])
    if name == "holov":
        return reference.holov(projector(f.patches), f.patch_attention(), keep)
    if name == "divprune":
        return reference.divprune(projector(f.patches), keep)
    if name == "vispruner":
        return projector(f.patches)[:, reference.vispruner(f.patches, f.patch_attention(), keep)[0] - 1]
    if name in ("prumerge", "prumerge_plus"):
        layer = graph.features.next_layer
        h = layer.layer_norm1(f.hidden)
        q, k = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)
        lattice = method.lattice.tolist() if name == "prumerge_plus" else None
        top = method.top if name == "prumerge_plus" else keep - 1
        return projector(reference.prumerge(f.hidden, q, k, top, lattice)[0])
    if name in ("trim", "cdpruner"):
        clip_embeds = graph.features.visual_projection(graph.features.post_layernorm(f.patches))
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
    session, reference_session = onnxruntime_session(path), onnxruntime_session(baseline)
    session.run(None, feeds)
    reference_session.run(None, baseline_feeds)
    totals, excess = [], []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        middle = time.perf_counter()
        reference_session.run(None, baseline_feeds)
        end = time.perf_counter()
        totals.append(middle - start)
        excess.append((middle - start) - (end - middle))
    return statistics.median(totals), statistics.median(excess)


def cli_export(model: str, keep: int, scratch: Path) -> dict:
    command = [sys.executable, "-m", "vtp_export", "--model", model, "--method", "holov", "--keep", str(keep),
               "--target", "orin", "--random-weights", "--out", str(scratch / "cli")]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = json.loads((scratch / "cli" / "config.json").read_text())
    weights_mib = record["model"]["vision_parameters_bytes_fp32"] / 2**20
    return {"command": " ".join(command[3:]), "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib),
            "weights_fp32_mib": round(weights_mib), "peak_over_weights": round(peak_mib / weights_mib, 2),
            "stage_timings_s": record["timings"]}


def supported(model, geometry, name: str, keep: int) -> PruningMethod | None:
    """The method's form for the model, None where refused or prompt-conditioned (cdpruner on Qwen: its text_embeds
    come from the LLM's embedding table, which this bench does not load; not benchmarked yet)."""
    form = METHODS.get(name).for_signals(model.signals)
    try:
        model.check_method(form)
        method = form.create(geometry, None if name == "none" else keep, {})
    except UsageError:
        return None
    return None if method.prompt_conditioned else method


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava15")
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--methods", help="comma-separated subset (default: every method the model supports)")
    parser.add_argument("--skip-cli", action="store_true", help="skip the CLI export measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(cpu_threads())
    model = MODELS.get(args.model)
    config = model.default_config()
    options = model.resolved_options({})
    figures = {"model": args.model, "machine": f"{platform.processor() or platform.machine()}, {cpu_threads()} "
               f"threads, {platform.system()} {platform.release()}", "keep": args.keep}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if not args.skip_cli:
            figures["cli_export"] = cli_export(args.model, args.keep, scratch)
            print(f"export (CLI, holov keep {args.keep}, orin): {figures['cli_export']}", flush=True)

        stack = load_vision_stack(model, config, options, RandomWeights(0))
        geometry = stack.geometry
        if Signal.CLIP_TEXT in model.signals:
            stack.clip = load_clip_text(model, config, RandomWeights(0))
        names = args.methods.split(",") if args.methods else METHODS.names()
        methods = {name: m for name in names if (m := supported(model, geometry, name, args.keep)) is not None}
        pixel_values = torch.from_numpy(random_pixel_values(geometry, 1, seed=0))
        tower = Tower(model.feature_extractor(stack, Everything(geometry, 1)))
        with torch.no_grad():
            tower_outputs = tower(pixel_values)
        tower_names = tuple(n for n in TOWER_OUTPUTS
                            if getattr(tower.features.tower_features(pixel_values), n) is not None)
        tower_path = scratch / "tower.onnx"
        with torch.no_grad():
            export_onnx(tower, (pixel_values,), tower_path, ("pixel_values",), tower_names, 18, dynamic_batch=False)
        tower_s = median_latency(tower_path, {"pixel_values": pixel_values.numpy()}, args.runs)
        figures["tower_s"] = round(tower_s, 4)
        print(f"vision tower to the feature layer: {tower_s * 1e3:.1f} ms", flush=True)

        text_embeds = torch.zeros(geometry.crops, 1)
        input_ids = None
        if stack.clip is not None:
            input_ids = random_input_ids(1, stack.clip.max_length, stack.clip.vocab_size, seed=0)
            with torch.no_grad():
                text_embeds = ClipTextEncoder(stack.clip)(torch.from_numpy(input_ids)).repeat_interleave(
                    geometry.crops, dim=0)
        stage_example = (*tower_outputs, text_embeds)
        stage_inputs = (*tower_names, "text_embeds")
        stage_feeds = {name: t.numpy() for name, t in zip(stage_inputs, stage_example)}
        hidden = tower_outputs[0]
        patches = hidden[:, 1:] if geometry.cls_token else hidden
        projectors = {}
        for method in methods.values():
            tokens = geometry.num_patches if method.projects_all_tokens else min(method.keep, geometry.num_patches)
            if tokens in projectors:
                continue
            path = scratch / f"projector-{tokens}.onnx"
            x = patches[:, :tokens].contiguous()
            with torch.no_grad():
                export_onnx(stack.projector, (x,), path, ("tokens",), ("projected",), 18, dynamic_batch=False)
            projectors[tokens] = (path, {"tokens": x.numpy()})

        rows = {}
        for name, method in methods.items():
            out = export(ExportRequest(model=args.model, method=name, keep=None if name == "none" else args.keep,
                                       target="cpu", random_weights=True, out=scratch / name, verify_samples=1))
            config_json = json.loads((out / "config.json").read_text())
            graph_feeds = {"pixel_values": pixel_values.numpy()}
            if method.text_conditioned:
                graph_feeds["text_embeds"] = text_embeds[:1].numpy()
                if "text_graph_s" not in figures:
                    figures["text_graph_s"] = round(median_latency(out / TEXT_ONNX, {INPUT_IDS: input_ids}, args.runs), 4)
                    figures["text_graph_nodes"] = config_json["graphs"]["text"]["nodes"]
                    print(f"CLIP text graph: {figures['text_graph_s'] * 1e3:.1f} ms", flush=True)
            graph_s = median_latency(out / VISION_ONNX, graph_feeds, args.runs)
            graph = VisionGraph(model, stack, method)
            stage_path = scratch / f"stage-{name}.onnx"
            tokens = geometry.num_patches if method.projects_all_tokens else min(method.keep, geometry.num_patches)
            try:
                with torch.no_grad():
                    export_onnx(PruningStage(graph, tower_names, geometry.cls_token), stage_example, stage_path,
                                stage_inputs, method.output_names, 18, dynamic_batch=False)
                stage_s, selection_s = paired_difference(stage_path, stage_feeds, *projectors[tokens], 3 * args.runs)
                selection_s = max(selection_s, 0.0)
            except ExportError:  # torch.export cannot cut LLaVA-NeXT's crops module at the feature layer
                stage_s = selection_s = None
            official_s = None
            if geometry.crops == 1 and geometry.cls_token:
                features = VisionFeatures(**dict(zip(tower_names, tower_outputs)))
                features = graph.features.method_inputs(features, text_embeds) if method.text_conditioned else features
                features = dataclasses.replace(features, text_embeds=text_embeds)
                with torch.no_grad():
                    if official(method, graph, features) is not None:
                        official_s = median_torch_latency(lambda: official(method, graph, features),
                                                          max(3, args.runs // 3))
            nodes = config_json["graphs"]["vision"]["nodes"]
            stage = None if stage_s is None else {"stage_with_projector_s": round(stage_s, 5),
                                                  "selection_s": round(selection_s, 5),
                                                  "selection_share_of_tower": round(selection_s / tower_s, 5)}
            rows[name] = {"graph_s": round(graph_s, 4), "graph_nodes": nodes, **(stage or {}),
                          "official_pytorch_s": None if official_s is None else round(official_s, 5)}
            versus = "" if official_s is None else f"   official PyTorch {official_s * 1e3:8.2f} ms"
            measured = "stage: not measured" if stage is None else (
                f"stage+projector {stage_s * 1e3:6.2f} ms   selection {selection_s * 1e3:6.2f} ms = "
                f"{100 * selection_s / tower_s:.2f}% of tower")
            print(f"{name:13} graph {graph_s * 1e3:7.1f} ms ({nodes} nodes)   {measured}{versus}", flush=True)
        figures["methods"] = rows
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
