"""Regenerate the golden graph signatures under graphs/ from fresh fp32 exports of the golden tiny models
(tests/goldens.py: every method at GOLDEN_KEEPS on llava15-tiny, llava-next-tiny, qwen2.5-vl-tiny, qwen3-vl-tiny, and
the Qwen models' video graphs).

Run after an intended change to a graph:  .venv/bin/python tools/update_graphs.py
The diff of graphs/ then shows exactly which ops and shapes changed, for review.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the golden table lives in tests/

from tests.goldens import (  # noqa: E402
    GOLDEN_KEEPS, GRAPHS_DIR, golden_exports, golden_files, golden_path, golden_text_path, write_signature,
)
from vtp_export.export.job import export  # noqa: E402
from vtp_export.export.plan import ExportRequest  # noqa: E402
from vtp_export.onnx.names import TEXT_ONNX, VISION_ONNX  # noqa: E402
from vtp_export.onnx.signature import graph_signature  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        for model in GOLDEN_KEEPS:
            for name, spec in golden_exports(model).items():
                out = export(ExportRequest(model=model, method=spec.method, keep=spec.keep, target="cpu",
                                           method_options=spec.method_options, model_options=spec.model_options,
                                           out=Path(scratch) / model / name, verify_samples=1))
                signature = graph_signature(out / VISION_ONNX)
                assert signature["outputs"][1]["shape"][1] == spec.tokens, name
                path = golden_path(model, name, spec.tokens)
                write_signature(signature, path)
                print(f"wrote {path}")
                if (out / TEXT_ONNX).exists():
                    write_signature(graph_signature(out / TEXT_ONNX), golden_text_path(model))
    for stale in sorted(set(GRAPHS_DIR.glob("*/*.json")) - golden_files()):  # a renamed or dropped export's
        stale.unlink()
        print(f"removed {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
