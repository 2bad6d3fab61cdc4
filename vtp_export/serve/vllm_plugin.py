"""vtp-export's vLLM plugin, registered through vLLM's own entry point (pyproject: vllm.general_plugins), which
every vLLM process calls at start: it adds the Qwen2.5-VL and Qwen3-VL models that take pruned image embeddings
(serve/qwen_vllm.py, imported only when vLLM builds one). Also the image data a request hands those models, and its
checks: a request that would not fit is refused before it reaches the engine (ValueError in vLLM's input processing:
HTTP 400), never a dead engine.

The image data, per request ({"image": qwen_image_data(...)}), one row per image:
  image_embeds       (sum of K, D * (1 + L)) float: each image's kept tokens, image after image; a Qwen3-VL row is
                     the token's embedding followed by its L DeepStack levels (vLLM's layout for Qwen3-VL)
  image_grid_thw     (n, 3) int64: the unpruned image's patch grid (1, H/p, W/p), as Qwen's processor gives it
  image_token_index  (n, K) int64: the vision graph's token_index (merged tokens 1..M in raster order, -1 padding)
"""

from typing import Any

from vtp_export.serve.served import QWEN2_5_VL_PLUGIN, QWEN3_VL_PLUGIN

IMAGE_EMBEDS, IMAGE_GRID_THW, IMAGE_TOKEN_INDEX = "image_embeds", "image_grid_thw", "image_token_index"


def register() -> None:
    from vllm import ModelRegistry

    for architecture in (QWEN2_5_VL_PLUGIN, QWEN3_VL_PLUGIN):
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, f"vtp_export.serve.qwen_vllm:{architecture}")


def qwen_image_data(embeds: list, token_index: list, grid_thw: tuple[int, int, int]) -> dict[str, Any]:
    """The plugin's image data for images of one grid: embeds (K, D) and token_index (K,) per image."""
    import numpy as np
    import torch

    return {IMAGE_EMBEDS: torch.cat(embeds),
            IMAGE_GRID_THW: torch.tensor([grid_thw] * len(embeds), dtype=torch.int64),
            IMAGE_TOKEN_INDEX: torch.from_numpy(np.stack(token_index).astype(np.int64))}


def check_image_data(data: dict, merge: int, hidden_size: int | None, levels: int = 0) -> None:
    """ValueError (one line) where the image data does not fit the model: its fields, shapes and values. `levels`:
    the DeepStack levels each row carries after the embedding (Qwen3-VL), each hidden_size wide."""
    import torch

    if not isinstance(data, dict) or set(data) != {IMAGE_EMBEDS, IMAGE_GRID_THW, IMAGE_TOKEN_INDEX}:
        raise ValueError(f"vtp-export's Qwen models take image data with exactly {IMAGE_EMBEDS}, {IMAGE_GRID_THW} "
                         f"and {IMAGE_TOKEN_INDEX} (pruned embeddings: no pixels)")
    embeds, grid, index = data[IMAGE_EMBEDS], data[IMAGE_GRID_THW], data[IMAGE_TOKEN_INDEX]
    if not all(isinstance(t, torch.Tensor) for t in (embeds, grid, index)):
        raise ValueError(f"{IMAGE_EMBEDS}, {IMAGE_GRID_THW} and {IMAGE_TOKEN_INDEX} must be tensors")
    if grid.ndim != 2 or grid.shape[1] != 3 or index.ndim != 2 or index.shape[0] != grid.shape[0] or embeds.ndim != 2:
        raise ValueError(f"{IMAGE_GRID_THW} must be (n, 3), {IMAGE_TOKEN_INDEX} (n, K) and {IMAGE_EMBEDS} "
                         f"(n*K, D); got {list(grid.shape)}, {list(index.shape)}, {list(embeds.shape)}")
    if embeds.shape[0] != index.numel():
        raise ValueError(f"{IMAGE_EMBEDS} has {embeds.shape[0]} rows for {index.shape[0]} images of {index.shape[1]} "
                         "kept tokens")
    if hidden_size is not None and embeds.shape[1] != hidden_size * (1 + levels):
        stacked = f" ({hidden_size} and {levels} DeepStack levels of {hidden_size})" if levels else ""
        raise ValueError(f"{IMAGE_EMBEDS} are {embeds.shape[1]} wide, the LLM takes {hidden_size * (1 + levels)}"
                         f"{stacked}")
    if not embeds.is_floating_point() or index.is_floating_point() or grid.is_floating_point():
        raise ValueError(f"{IMAGE_EMBEDS} must be floating point, {IMAGE_GRID_THW} and {IMAGE_TOKEN_INDEX} integer")
    if bool((grid[:, 0] != 1).any()) or bool((grid[:, 1:] % merge != 0).any()) or bool((grid[:, 1:] < merge).any()):
        raise ValueError(f"{IMAGE_GRID_THW} rows must be (1, h, w) with h and w multiples of {merge}")
    merged = grid[:, 1] * grid[:, 2] // (merge * merge)
    if bool((index < -1).any()) or bool((index > merged[:, None]).any()) or bool((index == 0).any()):
        raise ValueError(f"{IMAGE_TOKEN_INDEX} values must be merged tokens 1..M of their image's grid, or -1")
