"""Qwen2.5-VL's forms of the methods on the tiny checkpoint's tower: HoloV against the eager re-statement of its
official Qwen code (tests/methods/reference.py), with the evidence for the two quirks not reproduced; the paper
variant and the uniform baseline on a rows x cols grid; CDPruner's Qwen form (Qwen2.5-VL and Qwen3-VL towers)
against the eager re-statement of OpenVINO GenAI's."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from tests.methods import reference
from tests.methods.features import run_method, tiny_geometry
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.methods import METHODS
from vtp_export.methods.cdpruner import CDPruner, CDPrunerPromptRelevance
from vtp_export.models import MODELS

QWEN = MODELS.get("qwen2.5-vl")
VISION_START = 151652


@pytest.fixture(scope="module")
def hf(qwen_checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval()


def run(checkpoint, size: str, method_name: str, keep: int, pixel_values: torch.Tensor, **options):
    config = read_model_config(QWEN, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN, config, {"image_size": size}, WeightsFolder(checkpoint))
    method = METHODS.get(method_name)(stack.geometry, keep, **options)
    with torch.no_grad():
        features = QWEN.feature_extractor(stack, method)(pixel_values)
        return method, features, stack.projector(features.hidden), run_method(method, features, stack.projector)


def images(size: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    height, width = map(int, size.split("x"))
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size,keep", [("448x448", 64), ("448x448", 28), ("224x336", 24), ("224x336", 90),
                                       ("392x280", 40), ("392x280", 1)])
def test_holov_equals_the_official_qwen_code(qwen_checkpoint, hf, size, keep):
    pixel_values = images(size, seed=keep)
    method, _, _, (embeds, index) = run(qwen_checkpoint, size, "holov", keep, pixel_values)
    tokens_count = method.geometry.num_patches
    assert method.settings["crops"] == min(max(1, int(((1024 / 576) * tokens_count) / keep)), tokens_count)
    for b in range(pixel_values.shape[0]):
        with torch.no_grad():
            scores = reference.holov_qwen_scores(hf.model.visual, *reference.qwen_patch_rows(pixel_values[b:b + 1]))
        tokens, positions = reference.holov_qwen(*scores, keep)
        assert torch.equal(index[b], positions)
        torch.testing.assert_close(embeds[b], tokens, atol=1e-5, rtol=1e-5)


def test_the_official_code_ranks_tokens_by_other_tokens_scores(qwen_checkpoint, hf):
    """Evidence for not reproducing the official pairing: slot j of its span is ranked by the window-order score
    j, which belongs to token window_index[j] (only the 64 of 256 slots where window_index[j] = j carry their own
    token's score at 448x448), and the span starts at <|vision_start|>, one slot before the image features. The
    kept sets then differ from HoloV's on the same scores correctly paired."""
    keep, size = 64, "448x448"
    pixel_values = images(size, batch=1, seed=5)
    _, _, _, (_, index) = run(qwen_checkpoint, size, "holov", keep, pixel_values)
    with torch.no_grad():
        merged, window_scores, window_index = reference.holov_qwen_scores(
            hf.model.visual, *reference.qwen_patch_rows(pixel_values))
        vision_start = hf.get_input_embeddings()(torch.tensor(VISION_START))
    assert int((window_index == torch.arange(256)).sum()) == 64
    _, official = reference.holov_qwen(merged, window_scores, window_index, keep, vision_start=vision_start)
    official_features = set((official[official > 1] - 2).tolist())  # span slot s holds feature s - 1
    ours = set((index[0] - 1).tolist())
    assert len(ours & official_features) < keep - 8
    window_order_only = reference.holov(merged.unsqueeze(0), window_scores.unsqueeze(0), keep,
                                        max(1, int(((1024 / 576) * 256) / keep)))[1]
    assert set((window_order_only[0] - 1).tolist()) != ours


def test_default_crops_follow_the_tower():
    llava, qwen = tiny_geometry(), QWEN.geometry(QWEN.default_config(), {})
    holov = METHODS.get("holov")
    assert holov(llava, 64).settings["crops"] == 16
    assert [holov(qwen, keep).settings["crops"] for keep in (64, 128, 192, 16)] == [7, 3, 2, 28]
    assert holov(qwen, 64, variant="paper").settings["crops"] == 16


@pytest.mark.parametrize("keep,crops,tau", [(24, 16, 1.0), (40, 4, 0.1), (90, 9, 1.0), (5, 1, 1.0)])
def test_holov_paper_on_a_rows_x_cols_grid(qwen_checkpoint, keep, crops, tau):
    pixel_values = images("224x336", seed=keep)
    method, features, projected, (embeds, index) = run(qwen_checkpoint, "224x336", "holov", keep, pixel_values,
                                                       variant="paper", crops=crops, tau=tau)
    tokens, positions = reference.holov_paper(projected, features.patch_attention(), keep, int(crops ** 0.5), tau,
                                              grid=(8, 12))
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("keep", [1, 12, 24, 95])
def test_uniform_spreads_over_a_rows_x_cols_grid(qwen_checkpoint, keep):
    _, _, _, (_, index) = run(qwen_checkpoint, "224x336", "uniform", keep, images("224x336"))
    rows, cols = (index[0] - 1) // 12, (index[0] - 1) % 12
    assert len(set(index[0].tolist())) == keep and torch.equal(index[0], index[1])
    if keep >= 24:
        assert len(set(rows.tolist())) >= 4 and len(set(cols.tolist())) >= 6
        assert abs(rows.float().mean() - 3.5) < 1 and abs(cols.float().mean() - 5.5) < 1.5


def test_cdpruner_form_follows_the_models_signals():
    for name in ("qwen2.5-vl", "qwen2.5-vl-tiny", "qwen3-vl", "qwen3-vl-tiny"):
        form = METHODS.get("cdpruner").for_signals(MODELS.get(name).signals)
        assert form is CDPrunerPromptRelevance and form.prompt_conditioned and not form.text_conditioned
    for name in ("llava15", "llava15-tiny", "llava-next", "llava-next-tiny"):
        assert METHODS.get("cdpruner").for_signals(MODELS.get(name).signals) is CDPruner


@pytest.mark.parametrize("model_name,size", [("qwen2.5-vl", "224x336"), ("qwen3-vl", "256x320")])
@pytest.mark.parametrize("keep", [1, 12, 40, 64])
def test_cdpruner_equals_openvinos_qwen_form(request, model_name, size, keep):
    """The graph's picks and kept merger outputs are OpenVINO GenAI's (float64 re-statement, its epsilons, split
    threshold 0) for a random prompt embedding, on both Qwen towers, up to the kernel's rank (the LLM width 64)."""
    model = MODELS.get(model_name)
    checkpoint = request.getfixturevalue("qwen_checkpoint" if model_name == "qwen2.5-vl" else "qwen3_checkpoint")
    config = read_model_config(model, WeightsFolder(checkpoint))
    stack = load_vision_stack(model, config, {"image_size": size}, WeightsFolder(checkpoint))
    method = METHODS.get("cdpruner").for_signals(model.signals)(stack.geometry, keep)
    pixel_values = images(size, seed=keep)
    text_embeds = torch.randn(2, stack.geometry.llm_width, generator=torch.Generator().manual_seed(keep))
    with torch.no_grad():
        features = model.feature_extractor(stack, method)(pixel_values, text_embeds)
        projected = stack.projector(features.hidden)
        embeds, index = run_method(method, features, stack.projector)
    tokens, positions = reference.cdpruner_openvino(projected, text_embeds, keep)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=1e-5, rtol=1e-5)
