"""Fidelity of each precision to the fp32 PyTorch module, as every export records it (config.json: the vision
graph's `precision.fidelity`): kept-token overlap and the cosine of image_embeds on tokens both kept, over
the verification images; and the graph + weight bytes on disk.

  .venv/bin/python tools/bench_precision.py --model llava15 --random-weights --methods holov,fastervlm,visionzip \\
      --precisions fp16,bf16 [--keep 64] [--target h100] [--samples 3] [--json figures.json]

int8/fp8 calibrate on `--calibration` (default random: random-weight models only).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vtp_export.errors import VtpError  # noqa: E402
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.records.export import read_export  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava15-tiny")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--methods", default="holov")
    parser.add_argument("--precisions", default="fp16,bf16,int8,fp8")
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--target", default="h100", help="a target with every precision asked for (default h100)")
    parser.add_argument("--samples", type=int, default=3, help="verification batches, each one image")
    parser.add_argument("--calibration", default="random")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            for precision in args.precisions.split(","):
                calibration = args.calibration if precision in ("int8", "fp8") else None
                request = ExportRequest(model=args.model, method=method, keep=None if method == "none" else args.keep,
                                        target=args.target, precision=precision, calibration=calibration,
                                        random_weights=args.random_weights, verify_samples=args.samples,
                                        out=Path(scratch) / f"{method}-{precision}")
                try:
                    record = read_export(export(request))
                except VtpError as error:
                    print(f"{method:13} {precision:5} refused: {error}", flush=True)
                    continue
                vision = record.graphs["vision"].precision
                fidelity = vision.fidelity
                row = {"method": method, "precision": precision, "overlap_min": fidelity.token_overlap_min,
                       "overlap_mean": fidelity.token_overlap_mean, "cosine_min": fidelity.embeds_cosine_min,
                       "images": fidelity.images, "meets_target": fidelity.meets_target,
                       "bytes": vision.graph_bytes, "computed_by": fidelity.backend,
                       "seconds": record.timings.get("precision_vision_s")}
                rows.append(row)
                verdict = {True: "meets target", False: "below target", None: ""}[row["meets_target"]]
                print(f"{method:13} {precision:5} overlap min {row['overlap_min']:.3f} mean {row['overlap_mean']:.3f}  "
                      f"cosine min {row['cosine_min']:.6f}  {row['images']} images  "
                      f"{' -> '.join(f'{v / 2**20:.1f}' for v in row['bytes'].values())} MiB  {verdict}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "keep": args.keep, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
