"""Fidelity of fp16 / bf16 / int8 / fp8 graphs against the fp32 PyTorch module (README, Precision: figures).

For each method: the fp32 graph is exported from the module (random weights, seed 0), each precision is made
from a copy of it with vtp_export.precision (int8 / fp8 calibrated on random images: random weights), and
measure_fidelity compares it with the module on the verification images (seeded random, batch 1).

  .venv/bin/python tools/precision_figures.py --model llava15-tiny [--methods a,b] [--keep 64]
      [--precisions fp16,bf16,int8,fp8] [--samples 3] [--json figures.json]
"""

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vtp_export.calibration import calibration_inputs  # noqa: E402
from vtp_export.encoder import ClipTextEncoder, PrunedVisionEncoder  # noqa: E402
from vtp_export.exporter import load_stack  # noqa: E402
from vtp_export.fidelity import measure_fidelity  # noqa: E402
from vtp_export.graph_io import INPUT_IDS, TEXT_EMBEDS, TEXT_OUTPUTS, VISION_ONNX  # noqa: E402
from vtp_export.methods import METHODS  # noqa: E402
from vtp_export.models import MODELS, geometry_of  # noqa: E402
from vtp_export.onnx_export import export_onnx  # noqa: E402
from vtp_export.precision import LOW_PRECISIONS, data_path, float32_nodes, lower_precision, quantize  # noqa: E402
from vtp_export.verify import random_input_ids, torch_outputs, verification_inputs  # noqa: E402


def method_figures(model: str, method_name: str, keep: int, precisions: list[str], samples: int, work: Path) -> list[dict]:
    config = MODELS.get(model).make_config()
    method = METHODS.get(method_name).create(geometry_of(config), None if method_name == "none" else keep, {})
    stack = load_stack(model, config, None, None, method.text_conditioned, seed=0)
    encoder = PrunedVisionEncoder(stack, method)
    inputs = verification_inputs(stack.geometry, 1, samples, seed=1)
    text_embeds = None
    if method.text_conditioned:
        ids = [{INPUT_IDS: random_input_ids(1, stack.clip.max_length, stack.clip.config.text_config.vocab_size, i)}
               for i in range(samples)]
        texts = torch_outputs(ClipTextEncoder(stack.clip), ids, TEXT_OUTPUTS)
        for sample, text in zip(inputs, texts):
            sample[TEXT_EMBEDS] = text[TEXT_EMBEDS]
        text_embeds = texts[0][TEXT_EMBEDS]
    reference = torch_outputs(encoder, inputs, method.output_names)
    fp32 = work / "fp32" / VISION_ONNX
    fp32.parent.mkdir()
    with torch.no_grad():
        export_onnx(encoder, tuple(torch.from_numpy(a) for a in inputs[0].values()), fp32, encoder.input_names,
                    method.output_names, 18, False)
    del encoder, stack
    gc.collect()
    keep_float32 = float32_nodes(fp32)
    rows = []
    for precision in precisions:
        path = work / precision / VISION_ONNX
        path.parent.mkdir()
        shutil.copy(fp32, path)
        shutil.copy(data_path(fp32), data_path(path))
        if precision in LOW_PRECISIONS:
            record = lower_precision(path, precision, keep_float32)
        else:
            feeds = calibration_inputs("random", geometry_of(config), 1, random_weights=True, text_embeds=text_embeds)
            record = quantize(path, precision, feeds, keep_float32)
        figures = measure_fidelity(path, precision, inputs, reference)
        rows.append({"model": model, "method": method_name, "keep": method.keep, "graph_bytes": record["graph_bytes"]}
                    | figures)
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(path.parent)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava15-tiny")
    parser.add_argument("--methods", default=",".join(METHODS.names()))
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--precisions", default="fp16,bf16,int8,fp8")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.methods.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            rows += method_figures(args.model, name, args.keep, args.precisions.split(","), args.samples, Path(scratch))
    print("| model | method | precision | overlap min / mean | cosine min | weights MB (fp32 -> p) | backend |")
    for r in rows:
        weights = r["graph_bytes"]
        low = weights[r["precision"]]
        overlap = f"{r['token_overlap_min']:.3f} / {r['token_overlap_mean']:.3f}" if "token_overlap_min" in r else "-"
        twin = "ORT, bf16 twin" if "emulation twin" in r["backend"] else "ORT"
        print(f"| {r['model']} | {r['method']} | {r['precision']} | {overlap} | {r['embeds_cosine_min']:.6f} | "
              f"{weights['fp32'] / 1e6:.1f} -> {low / 1e6:.1f} | {twin} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
