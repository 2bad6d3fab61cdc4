"""vtp-export command line: export (default), and listings of models, methods and targets."""

import argparse
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from vtp_export.errors import Interrupted, UsageError, VtpError
from vtp_export.records.folder import check_writable
from vtp_export.records.graph import LoweredGraph, QuantizedGraph

COMMANDS = ("export", "build", "lint", "run", "profile", "llm", "serve", "models", "methods", "targets")
LISTINGS = ("models", "methods", "targets")
DEBUG_ENV = "VTP_EXPORT_DEBUG"
# What needs the exporter's stack (PyTorch, the modelling and ONNX tooling): the [export] extra. A device install
# ('vtp-export[llama]') runs, profiles, lints and builds export folders without it.
EXPORTER_COMMANDS = ("export", "llm", "methods")


def require_exporter(what: str) -> None:
    if importlib.util.find_spec("torch") is None:
        raise UsageError(f"{what} needs the exporter (PyTorch and the ONNX tooling), which this install lacks: "
                         "pip install 'vtp-export[export]'")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is a UsageError: one line on stderr, exit 2, like every other error."""

    def error(self, message: str):
        raise UsageError(message)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def model_option_flags() -> dict[str, tuple[str, str]]:
    """Every registered model's export options (`--grid`, `--image-size`): name -> (first model with it, help)."""
    from vtp_export.models import MODELS

    flags: dict[str, tuple[str, str]] = {}
    for name, model in MODELS.items():
        for option in model.options:
            flags.setdefault(option.name, (name, f"{option.help} (default {option.default})"))
    return flags


def add_model_option_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    for name, (model, text) in model_option_flags().items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"{prefix}{model}: {text}")


def given_model_options(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, name) for name in model_option_flags() if getattr(args, name)}


def export_parser() -> Parser:
    p = Parser(prog="vtp-export", description="Export a VLM vision tower with in-graph static visual-token pruning "
               "to ONNX, verified against PyTorch, with a TensorRT build recipe for GPU targets. "
               f"Other commands: {', '.join(COMMANDS[1:])}.")
    p.add_argument("--model", required=True, help="model name (see: vtp-export models)")
    p.add_argument("--method", required=True, help="pruning method (see: vtp-export methods)")
    p.add_argument("--keep", type=int, help="visual tokens the LLM receives (1..N-1; not needed for 'none')")
    p.add_argument("--target", required=True, help="deployment target (see: vtp-export targets)")
    p.add_argument("--out", type=Path, help="output folder (default: exports/MODEL-METHOD-kKEEP-TARGET, with any "
                                            "non-default method/model options in the name)")
    p.add_argument("--replace", action="store_true",
                   help="replace an existing export folder even if it holds files vtp-export did not write there")
    add_model_option_arguments(p)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", type=Path, help="local HF-format LLaVA checkpoint folder")
    weights.add_argument("--random-weights", action="store_true", help="real-size architecture, seeded random weights")
    p.add_argument("--text-weights", type=Path,
                   help="text-conditioned methods: HF-format CLIP folder with the text tower (default: the clip/ "
                        "subfolder of --weights, else the model's CLIP in the offline HF cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and verification images (default 0)")
    p.add_argument("--method-opt", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (see: vtp-export methods)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis (all other axes static)")
    p.add_argument("--verify-samples", type=int, default=3, help="random batches compared with PyTorch (default 3)")
    p.add_argument("--precision", help="TensorRT targets: fp16 (default), bf16, int8, fp8 or fp32, one the target "
                                       "supports; put into the graph (scores and norms stay fp32) for strongly "
                                       "typed engines")
    p.add_argument("--calibration", help="int8/fp8: a folder of calibration images, or 'random' with --random-weights")
    p.add_argument("--build", action="store_true",
                   help="then build the engines (as `vtp-export build OUT`): on the target device with TensorRT, "
                        "else the device recipe is explained")
    p.add_argument("--tensorrt-check", choices=("parse", "build"), default="parse",
                   help="GPU targets: TensorRT ONNX parser only (default), or also a CPU-only engine build "
                        "(about 4x the weights in memory)")
    return p


def run_export(argv: Sequence[str]) -> int:
    from vtp_export.export.job import export
    from vtp_export.export.plan import ExportRequest

    args = export_parser().parse_args(argv)
    request = ExportRequest(
        model=args.model, method=args.method, target=args.target, keep=args.keep,
        method_options=dict(args.method_opt), model_options=given_model_options(args), out=args.out,
        weights=args.weights,
        text_weights=args.text_weights, random_weights=args.random_weights, seed=args.seed, batch=args.batch,
        dynamic_batch=args.dynamic_batch, verify_samples=args.verify_samples, tensorrt_check=args.tensorrt_check,
        precision=args.precision, calibration=args.calibration, replace=args.replace,
    )
    out = export(request, progress=progress)
    print(summary(out))
    if args.build:
        from vtp_export.trt.builder import build

        print(build(out, progress=progress).message)
    return 0


def progress(message: str) -> None:
    print(f"[vtp-export] {message}", flush=True)


def run_build(argv: Sequence[str]) -> int:
    from vtp_export.trt.builder import build

    p = Parser(prog="vtp-export build", description="Build TensorRT engines from an export folder on the target "
               "device; elsewhere, explain how to build them on the device (the folder carries the recipe).")
    p.add_argument("folder", type=Path, help="export folder written by vtp-export")
    p.add_argument("--out", type=Path, help="engine folder (default: FOLDER/engine)")
    p.add_argument("--precision", help="fp16 (default: the export's; scores and norms stay fp32) or fp32")
    args = p.parse_args(argv)
    print(build(args.folder, args.out, args.precision, progress=progress).message)
    return 0


def run_pipeline(argv: Sequence[str]) -> int:
    from vtp_export.runtime import Pipeline

    p = Parser(prog="vtp-export run", description="Answer a question about images with an export folder's vision "
               "graph and the LLM, streaming the answer.")
    p.add_argument("folder", type=Path, help="export folder written by vtp-export")
    p.add_argument("--image", type=Path, action="append", default=[], help="image file, repeatable")
    p.add_argument("--video", type=Path, action="append", default=[],
                   help="video exports (--frames): a video file, sampled evenly to the export's frames; repeatable "
                        "(one per camera)")
    p.add_argument("--frame", type=Path, nargs="+", action="append", default=[],
                   help="video exports: one video given as its frames (image files, exactly the export's frames); "
                        "repeatable (one per camera)")
    p.add_argument("--prompt", required=True, help="the question; the model's image placeholder (<image> for LLaVA, "
                                                   "<|vision_start|><|image_pad|><|vision_end|> for Qwen2.5-VL; "
                                                   "<|vision_start|><|video_pad|><|vision_end|> for a video) "
                                                   "marks where each image or video goes")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--backend", help="onnxruntime, tensorrt or torch (default: a matching engine, else onnxruntime)")
    add_llm_arguments(p)
    p.add_argument("--position-ids", help="sequential or original (default: the model's, sequential for LLaVA, "
                                          "original for Qwen2.5-VL's M-RoPE)")
    p.add_argument("--layout", default="static", help="static (default), or hf: an unpruned llava-next export's "
                                                      "tokens unpadded with image_newline, as HF lays them out")
    args = p.parse_args(argv)
    videos = clips_of(args.folder, args.image, [*args.video, *args.frame])  # bad input refused before the LLM loads
    with Pipeline.from_dir(args.folder, llm=args.llm, backend=args.backend, llm_backend=args.llm_backend,
                           position_ids=args.position_ids, llm_layers=args.llm_layers, dtype=args.llm_dtype,
                           layout=args.layout) as pipe:
        answer = pipe.answer(args.prompt, videos or args.image, args.max_new_tokens, args.temperature, args.seed,
                             on_text=lambda _, piece: print(piece, end="", flush=True))
    decode = f"{answer.decode_tokens_per_s:.1f} tokens/s" if answer.decode_tokens_per_s else "n/a"
    images = len(answer.image_tokens)
    noun = "video" if videos else "image"
    visual = (f" ({'+'.join(map(str, answer.image_tokens))} visual from {images} {noun}{'s' * (images != 1)})"
              if images else " (no image)")
    print(f"\n[vtp-export] {len(answer.token_ids)} tokens; time to first token {answer.time_to_first_token_s:.3f} s; "
          f"decode {decode}; {answer.prompt_tokens} prompt tokens{visual}; vision {answer.backend}, "
          f"LLM {answer.llm_backend}")
    return 0


def clips_of(folder: Path, images: list[Path], videos: list) -> list:
    """`vtp-export run`'s videos (files, or lists of frames) loaded at the export's frames, checked against what the
    export takes: images or videos."""
    from vtp_export.records.export import read_export
    from vtp_export.util.video import load_video

    if images and videos:
        raise UsageError("an export takes images or videos, not both: give --image, or --video / --frame")
    if not images and not videos:
        return []
    frames = read_export(folder, verify=False).model.geometry.frames
    if videos and not frames:
        raise UsageError(f"{folder} takes still images (--image); export with --frames F for video")
    if images and frames:
        raise UsageError(f"{folder} takes videos of {frames} frames: give --video FILE or --frame FILE ...")
    return [load_video(video, frames) for video in videos]


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    from vtp_export.runtime.llm.backends import DEFAULT_LLM_BACKEND, LLM_BACKENDS, LlmBackend, llm_backend_names

    def described(backend: LlmBackend) -> str:
        if backend.name == DEFAULT_LLM_BACKEND:
            return f"{backend.name} (default)"
        if backend.llm_format:
            return f"{backend.name} (a {backend.llm_format.upper()} from vtp-export llm)"
        return backend.name

    backends = [LLM_BACKENDS.get(name) for name in llm_backend_names()]
    dtypes = list(dict.fromkeys(dtype for b in backends for dtype in b.dtypes))
    p.add_argument("--llm", type=Path, help="the LLM: " + " or ".join(f"{b.weights} ({b.name})" for b in backends)
                   + "; default: the export's own")
    p.add_argument("--llm-backend", default=DEFAULT_LLM_BACKEND, choices=llm_backend_names(),
                   help=" or ".join(map(described, backends)))
    p.add_argument("--llm-layers", type=int, help="random-weight exports: a random LLM of the checkpoint's width and "
                   "vocabulary with this many decoder layers (for machines that cannot hold the full LLM)")
    p.add_argument("--llm-dtype", default="float32", choices=dtypes,
                   help=f"{', '.join(b.name for b in backends if b.dtypes)}: the LLM's dtype (default float32)")


def run_profile(argv: Sequence[str]) -> int:
    from vtp_export.records.profile import read_report
    from vtp_export.runtime import profile as profiling
    from vtp_export.runtime.llm.backends import LLM_BACKENDS

    p = Parser(prog="vtp-export profile", description="Latency profile of export folders (DIR ...), of a sweep "
               "over methods and keeps (--model --method a,b:key=value --keep k1,k2 --target), or a --compare of "
               "two reports.")
    p.add_argument("folders", type=Path, nargs="*", help="export folders to profile")
    p.add_argument("--model", help="sweep: model to export")
    p.add_argument("--method", help="sweep: comma-separated methods, each with options as method:key=value")
    p.add_argument("--keep", help="sweep: comma-separated keeps; N (all tokens) profiles the unpruned model")
    p.add_argument("--target", default="cpu", help="sweep: export target (default cpu)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", type=Path, help="sweep: checkpoint folder")
    weights.add_argument("--random-weights", action="store_true", help="sweep: seeded random weights")
    add_model_option_arguments(p, "sweep, ")
    add_llm_arguments(p)
    p.add_argument("--runs", type=int, default=10, help="timed runs per stage after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--duration", type=float, help="seconds per stage instead of a run count")
    p.add_argument("--new-tokens", type=int, default=16, help="decoded tokens per decode measurement (default 16, "
                                                               "at least 2)")
    p.add_argument("--backend", help="vision backend: onnxruntime, tensorrt or torch (default: best available)")
    p.add_argument("--out", type=Path, default=Path("profile"), help="report folder (default ./profile)")
    p.add_argument("--replace", action="store_true", help="replace a report folder that holds other files too")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="two report.json files")
    args = p.parse_args(argv)
    if args.compare:
        print(profiling.compare(*(read_report(path) for path in args.compare)))
        return 0
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup not negative")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"--duration {args.duration} must be a positive number of seconds")
    if args.new_tokens < 2:
        raise UsageError(f"--new-tokens {args.new_tokens}: decoding is timed from the second token on, use 2 or more")
    check_writable(args.out, args.replace, own_files=profiling.report_files)
    timing = dict(runs=args.runs, warmup=args.warmup, duration_s=args.duration, backend=args.backend,
                  new_tokens=args.new_tokens, llm_backend=args.llm_backend, llm_layers=args.llm_layers,
                  llm=args.llm)
    if args.folders:
        if args.model or args.method or args.keep:
            raise UsageError("profile takes export folders or a sweep (--model --method --keep), not both")
        profiles = []
        for i, folder in enumerate(args.folders):
            progress(profiling.progress_bar(i, len(args.folders), str(folder)))
            profiles.append(profiling.profile_export(folder, **timing))
        progress(profiling.progress_bar(len(args.folders), len(args.folders), "done"))
    else:
        if not (args.model and args.method and args.keep):
            raise UsageError("profile needs export folders, or --model, --method and --keep for a sweep")
        require_exporter("vtp-export profile --model (a sweep exports)")
        llm_format = LLM_BACKENDS.get(args.llm_backend).llm_format
        if llm_format is not None and args.llm is None:
            raise UsageError(f"a sweep's scratch exports have no {llm_format.upper()}: with --llm-backend "
                             f"{args.llm_backend} pass --llm FILE.{llm_format} (from vtp-export llm DIR --format "
                             f"{llm_format} on an export of the same model)")
        requests = profiling.sweep_plan(args.model, profiling.parse_methods(args.method),
                                        profiling.parse_keeps(args.keep), args.target, weights=args.weights,
                                        random_weights=args.random_weights, model_options=given_model_options(args))
        profiles = profiling.sweep(requests, progress, **timing)
    report = profiling.new_report(profiles)
    written = profiling.write_report(report, args.out, args.replace)
    print(profiling.table(report))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def run_llm(argv: Sequence[str]) -> int:
    from vtp_export.runtime.llm.gguf import QUANTS, export_llm

    p = Parser(prog="vtp-export llm", description="Convert the LLM of an export folder (the checkpoint it came "
               "from, or its seeded random weights) for the engine that runs it: DIR/llm-QUANT.gguf for llama.cpp on "
               "the device, or DIR/llm-vllm/ for vLLM (vtp-export serve), recorded in DIR/config.json in place of "
               "any earlier one.")
    p.add_argument("folder", type=Path, help="export folder written by vtp-export")
    p.add_argument("--format", required=True, choices=("gguf", "vllm"), help="gguf: llama.cpp; vllm: a folder vLLM "
                   "loads (safetensors, config, tokenizer)")
    p.add_argument("--quant", default="f16", choices=QUANTS, help="gguf: f32, f16 (default), or llama.cpp's "
                   "q8_0 / q4_k_m quantization of the f16 file")
    p.add_argument("--llm-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="vllm: the weights' dtype (default float32)")
    p.add_argument("--llm", type=Path, help="HF checkpoint folder of the LLM (default: the export's checkpoint)")
    p.add_argument("--llm-layers", type=int, help="random-weight exports: cut the random LLM to this many decoder "
                   "layers (as run/profile --llm-layers)")
    args = p.parse_args(argv)
    if args.format == "vllm":
        from vtp_export.serve.llm_folder import export_vllm_llm

        folder = export_vllm_llm(args.folder, args.llm, args.llm_layers, args.llm_dtype)
        print(f"wrote {args.folder / folder.folder}: {folder.architecture}, {folder.n_layer} layers x "
              f"{folder.n_embd}, {folder.n_vocab} tokens, {len(folder.files)} files ({folder.source})")
        return 0
    written = export_llm(args.folder, args.quant, args.llm, args.llm_layers)
    print(f"wrote {args.folder / written.file}: {written.quant}, {written.bytes / 2**20:.1f} MiB, "
          f"{written.n_layer} layers x {written.n_embd}, {written.n_vocab} tokens ({written.tokenizer} tokenizer), "
          f"sha256 {written.sha256[:16]}...")
    return 0


def run_serve(argv: Sequence[str]) -> int:
    p = Parser(prog="vtp-export serve", description="An OpenAI-compatible chat-completions endpoint over an export "
               "folder: its vision graph in front of a vLLM engine serving its LLM (image embeddings only). Runs in "
               "the serving venv (tools/setup_serve_venv.sh). On first start it writes DIR/llm-vllm (as "
               "`vtp-export llm DIR --format vllm`). The vLLM options are vLLM's own engine arguments.")
    p.add_argument("folder", type=Path, help="export folder written by vtp-export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), help="the vision graph's backend (default: a "
                   "matching TensorRT engine, else onnxruntime)")
    p.add_argument("--max-images", type=int, default=4, help="images per request (default 4)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="pixels of one image (default 40M)")
    p.add_argument("--image-root", type=Path, help="requests may name local image files under this folder (default: "
                   "none; data URLs only)")
    p.add_argument("--max-tokens", type=int, default=512, help="ceiling of a request's max_tokens (default 512; "
                   "a request without one gets as many as the context leaves, up to this)")
    p.add_argument("--llm", type=Path, help="first start: HF checkpoint folder of the LLM (default: the export's)")
    p.add_argument("--llm-layers", type=int, help="first start, random-weight exports: cut the random LLM")
    p.add_argument("--llm-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="first start: the dtype of the weights written for vLLM (default float32)")
    vllm = p.add_argument_group("vLLM engine arguments (passed through)")
    vllm.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    vllm.add_argument("--tensor-parallel-size", type=int, default=1)
    vllm.add_argument("--pipeline-parallel-size", type=int, default=1)
    vllm.add_argument("--data-parallel-size", type=int, default=1)
    vllm.add_argument("--kv-cache-memory-bytes", type=int, help="KV cache size in bytes (default: vLLM's)")
    vllm.add_argument("--gpu-memory-utilization", type=float)
    vllm.add_argument("--max-num-seqs", type=int, help="requests batched at once")
    vllm.add_argument("--dtype", default="auto", help="vLLM's compute dtype (default auto: the weights')")
    vllm.add_argument("--enforce-eager", action="store_true")
    vllm.add_argument("--engine-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                      help="any other AsyncEngineArgs field, VALUE as JSON (or a string), repeatable")
    args = p.parse_args(argv)
    if importlib.util.find_spec("vllm") is None:
        raise UsageError("vtp-export serve needs vLLM, which this venv lacks: make the serving venv with "
                         "tools/setup_serve_venv.sh and run .venv-serve/bin/vtp-export serve")
    if min(args.max_images, args.max_image_pixels, args.max_tokens) < 1:
        raise UsageError("--max-images, --max-image-pixels and --max-tokens must be at least 1")
    if args.image_root is not None and not args.image_root.is_dir():
        raise UsageError(f"--image-root {args.image_root} is not a folder")
    from vtp_export.serve.engine import EngineOptions
    from vtp_export.serve.requests import RequestLimits
    from vtp_export.serve.server import ServeSettings, serve

    limits = RequestLimits(args.max_images, args.max_image_pixels,
                           args.image_root.resolve() if args.image_root else None, args.max_tokens)
    engine = EngineOptions(args.max_model_len, args.tensor_parallel_size, args.pipeline_parallel_size,
                           args.data_parallel_size, args.kv_cache_memory_bytes, args.gpu_memory_utilization,
                           args.max_num_seqs, args.dtype, args.enforce_eager,
                           {key: json_value(value) for key, value in args.engine_arg})
    return serve(ServeSettings(args.folder, args.host, args.port, args.backend, limits, engine, args.llm,
                               args.llm_layers, args.llm_dtype))


def json_value(text: str) -> object:
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def run_lint(argv: Sequence[str]) -> int:
    from vtp_export.records.export import read_export
    from vtp_export.targets import TARGETS
    from vtp_export.toolchains import labels
    from vtp_export.trt.lint import lint_graph

    p = Parser(prog="vtp-export lint", description="Check an export folder's graphs against a TensorRT target's "
               "constraints (ops, opset, TopK K, static shapes), without TensorRT.")
    p.add_argument("folder", type=Path, help="export folder written by vtp-export")
    p.add_argument("--target", help="target to check against (default: the export's own)")
    args = p.parse_args(argv)
    record = read_export(args.folder)
    target = TARGETS.get(args.target or record.target.name)
    if not target.toolchain.lints:
        raise UsageError(f"target {target.name} runs {target.toolchain.vision_backend}; the lint checks "
                         f"{labels(lambda t: t.lints)} targets")
    for graph in record.graphs.values():
        result = lint_graph(args.folder / graph.file, target, graph.dynamic_batch)
        print(f"{graph.file}: fits {target.name} (opset {result.opset}, {result.nodes} nodes)")
    return 0


def summary(out: Path) -> str:
    from vtp_export.records.export import read_export

    record = read_export(out, verify=False)
    lines = [f"wrote {out}"]
    for graph in record.graphs.values():
        check = graph.verification
        reduced = graph.precision if isinstance(graph.precision, (LoweredGraph, QuantizedGraph)) else None
        measured = reduced is not None and reduced.fidelity is not None
        shapes = "  ".join(f"{v.name} {v.shape}" for v in graph.outputs)
        diffs = ", ".join(f"{name} max |diff| {value:.2e}" for name, value in check.max_abs_diff.items())
        selection = f"token_index {check.selection}, " if check.selection else ""
        passed_over = check.near_tie_samples_passed_over
        ties = f" ({passed_over} more passed over: near-tied scores)" if passed_over else ""
        lines += [
            f"  {graph.file}: {graph.nodes} nodes, opset {graph.opset}, {shapes}",
            f"    {'fp32 graph ' if measured else ''}verified against "
            f"PyTorch on {check.samples} random batches{ties}: {selection}{diffs}",
        ]
        if measured:
            lines.append("    " + precision_line(reduced))
        if graph.lint is not None:
            lines.append(f"    fits {graph.lint.target}: TensorRT ops, opset, constant TopK K, static shapes")
        parser = graph.tensorrt_parser
        if parser is not None and parser.checked:
            built = ", engine built (CPU-only builder)" if parser.engine_built else ""
            lines.append(f"    TensorRT ONNX parser ({parser.parser}): accepted, {parser.layers} layers{built}")
        elif parser is not None:
            lines.append(f"    TensorRT ONNX parser: not checked ({parser.reason})")
    if record.device_build is not None:
        build = record.device_build
        kept = sum(len(g.float32_nodes) for g in record.graphs.values())
        fp32 = (f", {kept} score/norm layers pinned to fp32" if kept else
                ", strongly typed" if record.target.strongly_typed else "")
        lines.append(f"  build the engines on the device ({build.precision}{fp32}): bash {out / build.script}")
    return "\n".join(lines)


def precision_line(precision: LoweredGraph | QuantizedGraph) -> str:
    """'fp16 graph (ModelOpt ...): kept-token overlap min 1.000, embeddings cosine min 0.99999 (onnxruntime)'."""
    fidelity = precision.fidelity
    overlap = (f"kept-token overlap with fp32 PyTorch min {fidelity.token_overlap_min:.3f} mean "
               f"{fidelity.token_overlap_mean:.3f}, " if fidelity.token_overlap_min is not None else "")
    verdict = ""
    if fidelity.target is not None:
        bounds = (f"token overlap >= {fidelity.target.token_overlap_min}, "
                  f"embeds cosine >= {fidelity.target.embeds_cosine_min}")
        verdict = "; meets the target" if fidelity.meets_target else f"; BELOW the target ({bounds})"
    backend = "emulated in onnxruntime" if "emulation" in fidelity.backend else "onnxruntime"
    return (f"{precision.precision} graph ({precision.tool}): {overlap}embeddings cosine min "
            f"{fidelity.embeds_cosine_min:.5f} over {fidelity.images} images ({backend}){verdict}")


def run_listing(command: str, argv: Sequence[str]) -> int:
    Parser(prog=f"vtp-export {command}", description=f"List the registered {command}.").parse_args(argv)
    if command == "models":
        from vtp_export.models import MODELS

        for name, model in MODELS.items():
            options = "".join(f"; --{o.name.replace('_', '-')} (default {o.default})" for o in model.options)
            print(f"{name:16} {model.summary}" + (f"  [{model.canonical_repo}]" if model.canonical_repo else "")
                  + options)
    elif command == "methods":
        from vtp_export.methods import METHODS

        for name, method in METHODS.items():
            conditioning = "text-conditioned (question -> text.onnx)" if method.text_conditioned else "image only"
            if method.temporal:
                conditioning = "video only, one budget over the temporal groups"
            needs = ", ".join(s.value for s in method.requires) or "the patch features only"
            print(f"{name:13} {method.summary}\n{'':13} {conditioning}; reads {needs}; reference: {method.reference}")
            for option in method.options:
                default = "derived" if option.default is None else option.default
                kind = "|".join(map(str, option.choices)) if option.choices else option.type.__name__
                print(f"{'':13} --method-opt {option.name}=<{kind}> (default {default}): {option.help}")
    else:
        from vtp_export.targets import TARGETS

        for name, target in TARGETS.items():
            engine = (f"TensorRT {target.tensorrt_range}, {target.gpu_arch}, workspace {target.workspace_mib} MiB, "
                      f"DLA {'present (unused)' if target.dla else 'none'}; "
                      if target.toolchain.builds_engines else "")
            print(f"{name:14} {target.summary}\n{'':14} {engine}precisions {'/'.join(target.precisions)} "
                  f"(default {target.default_precision}); opset {target.opset} (ceiling {target.max_opset}); "
                  f"memory budget {target.memory_budget_mib} MiB")
    return 0


def dispatch(argv: Sequence[str]) -> int:
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        command, rest = "export", argv
    if command in EXPORTER_COMMANDS:
        require_exporter(f"vtp-export {command}")
    if command in LISTINGS:
        return run_listing(command, rest)
    commands = {"export": run_export, "build": run_build, "lint": run_lint, "run": run_pipeline, "profile": run_profile,
                "llm": run_llm, "serve": run_serve}
    try:
        return commands[command](rest)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was left behind") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return dispatch(argv)
    except VtpError as error:
        print(f"vtp-export: error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"vtp-export: internal error: {type(error).__name__}: {error} (set {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 1
