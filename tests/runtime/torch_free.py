"""Running the Pipeline in an environment without torch: a site-packages of links to every entry of this one but
torch's, the project on PYTHONPATH."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def answer_without_torch(folder: Path, question: str, new_tokens: int, scratch: Path) -> subprocess.CompletedProcess:
    """The greedy ids of onnxruntime + llama.cpp on the export's seed-0 240x300 picture, printed by a Python that
    cannot import torch (and asserts it never did)."""
    site = Path(sysconfig.get_paths()["purelib"])
    links = scratch / "site-packages"
    links.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith(("torch", "__editable__")) and entry.suffix != ".pth":
            (links / entry.name).symlink_to(entry)
    code = f"""
import importlib.util, sys
import numpy as np
assert importlib.util.find_spec("torch") is None, "torch is importable"
from vtp_export.runtime import Pipeline
image = (np.random.default_rng(0).random((240, 300, 3)) * 255).astype(np.uint8)
with Pipeline.from_dir({str(folder)!r}, llm_backend="llama.cpp", backend="onnxruntime") as pipe:
    answer = pipe.answer({question!r}, [image], max_new_tokens={new_tokens})
assert "torch" not in sys.modules
print(answer.token_ids)
"""
    env = {**os.environ, "PYTHONPATH": f"{links}{os.pathsep}{ROOT}", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=scratch, env=env)
