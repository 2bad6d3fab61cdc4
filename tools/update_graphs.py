"""Regenerate the golden graph signatures under graphs/ from fresh llava15-tiny exports.

Run after an intended change to a method's graph:  .venv/bin/python tools/update_graphs.py
The diff of graphs/ then shows exactly which ops and shapes changed, for review.
"""

import sys
import tempfile
from pathlib import Path

from vtp_export.exporter import ExportRequest, export
from vtp_export.graph_io import VISION_ONNX
from vtp_export.methods import METHODS
from vtp_export.signature import GOLDEN_KEEP, GOLDEN_MODEL, golden_path, graph_signature, write_signature


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        for method in METHODS.names():
            keep = None if method == "none" else GOLDEN_KEEP
            out = export(ExportRequest(model=GOLDEN_MODEL, method=method, keep=keep, target="cpu",
                                       out=Path(scratch) / method, verify_samples=1))
            signature = graph_signature(out / VISION_ONNX)
            path = golden_path(GOLDEN_MODEL, method, signature["outputs"][1]["shape"][1])
            write_signature(signature, path)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
