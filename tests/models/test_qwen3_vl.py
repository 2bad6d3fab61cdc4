"""The qwen3-vl adapter: geometry from the checkpoint's config and --image-size, checkpoint key layouts, which
methods apply, bad input as one line, deepstack_embeds as the level mergers on the kept tokens, an fp16 graph.
Every applicable method's fp32 graph is checked against its golden signature, the lint and the TensorRT parser
in tests/test_exporter.py."""

import json

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from tests.test_cli import assert_clean_failure
from tests.towers.test_qwen3 import hf_reference
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.cli import main
from vtp_export.contract import WeightsFolder
from vtp_export.errors import UsageError, WeightsError
from vtp_export.export.graph import VisionGraph
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.names import CONFIG_JSON, DEEPSTACK_EMBEDS, IMAGE_EMBEDS, TOKEN_INDEX

QWEN3 = MODELS.get("qwen3-vl")
REFUSED = {
    "fastervlm": "the CLS token's attention row", "visionzip": "the CLS token's attention row",
    "prumerge": "the next layer's CLS attention", "prumerge_plus": "the next layer's CLS attention",
    "trim": "CLIP's text tower",
}
APPLICABLE = ("holov", "vispruner", "dart", "divprune", "uniform", "random", "none", "cdpruner", "evs")


def hub_config(vision: dict, width: int) -> dict:
    """config.json as the hub's Qwen3-VL checkpoints have it (text and vision sub-configs)."""
    return {"model_type": "qwen3_vl", "image_token_id": 151655, "tie_word_embeddings": False,
            "text_config": {"model_type": "qwen3_vl_text", "hidden_size": width, "num_hidden_layers": 2,
                            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                            "intermediate_size": 64, "vocab_size": 151936, "rope_theta": 5000000,
                            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                             "rope_type": "default"}},
            "vision_config": {"model_type": "qwen3_vl", "out_hidden_size": width, "patch_size": 16,
                              "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                              **vision}}


EIGHT_B = {"depth": 27, "hidden_size": 1152, "num_heads": 16, "intermediate_size": 4304,
           "deepstack_visual_indexes": [8, 16, 24]}


def test_geometry_of_the_2b_4b_and_8b_layouts():
    g = QWEN3.geometry(QWEN3.default_config(), {})
    assert (g.image_height, g.image_width, g.grid_rows, g.grid_cols, g.num_patches) == (512, 512, 16, 16, 256)
    assert (g.vision_width, g.num_heads, g.head_dim, g.llm_width, g.feature_layer) == (4096, 16, 64, 2048, 23)
    assert not g.cls_token and g.sequence_length == g.tokens_per_image == 256
    four = QWEN3.config_from_dict(hub_config({"depth": 24, "hidden_size": 1024, "num_heads": 16,
                                              "intermediate_size": 4096, "deepstack_visual_indexes": [5, 11, 17]}, 2560))
    assert QWEN3.geometry(four, {}).llm_width == 2560
    eight = QWEN3.geometry(QWEN3.config_from_dict(hub_config(EIGHT_B, 4096)), {"image_size": "384x640"})
    assert (eight.grid_rows, eight.grid_cols, eight.vision_width, eight.head_dim, eight.llm_width,
            eight.feature_layer) == (12, 20, 4608, 72, 4096, 26)


def test_checkpoint_keys_of_both_layouts():
    assert QWEN3.vision_key("model.visual.blocks.0.attn.qkv.weight") == "tower.blocks.0.attn.qkv.weight"
    assert QWEN3.vision_key("visual.pos_embed.weight") == "tower.pos_embed.weight"
    assert QWEN3.vision_key("model.visual.merger.linear_fc1.weight") == "projector.linear_fc1.weight"
    assert QWEN3.vision_key("visual.merger.norm.bias") == "projector.norm.bias"
    assert (QWEN3.vision_key("model.visual.deepstack_merger_list.2.linear_fc2.weight")
            == "tower.deepstack_merger_list.2.linear_fc2.weight")
    assert QWEN3.vision_key("model.language_model.layers.0.mlp.up_proj.weight") is None
    assert QWEN3.vision_key("lm_head.weight") is None


@pytest.mark.parametrize("size,message", [
    ("500x512", "must be multiples of 32 (patch x merge), e.g. 512x512"),
    ("512", "expected two positive integers"),
    ("32x64", "too small: Qwen3-VL takes at least 64x64 pixels (2x2 merged tokens)"),
    ("2048x2048", "too large: 4096 merged tokens"),
])
def test_bad_image_sizes(size, message):
    with pytest.raises(UsageError) as error:
        QWEN3.geometry(QWEN3.default_config(), {"image_size": size})
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_configs_are_refused():
    raw = hub_config(EIGHT_B, 4096)
    raw["vision_config"]["out_hidden_size"] = 2048
    with pytest.raises(WeightsError, match="merger's width 2048 differs from the LLM's 4096"):
        QWEN3.geometry(QWEN3.config_from_dict(raw), {})
    raw = hub_config(EIGHT_B | {"deepstack_visual_indexes": [8, 27]}, 4096)
    with pytest.raises(WeightsError, match=r"deepstack_visual_indexes \[8, 27\] are not blocks of the 27-block"):
        QWEN3.geometry(QWEN3.config_from_dict(raw), {})


def test_methods_apply_or_refuse_in_one_line():
    assert set(METHODS.names()) == set(REFUSED) | set(APPLICABLE)
    for name, registered in METHODS.items():
        method = registered.for_signals(QWEN3.signals)  # cdpruner: its Qwen form
        if name in REFUSED:
            with pytest.raises(UsageError) as error:
                QWEN3.check_method(method)
            message = str(error.value)
            assert message.startswith(f"method {name} needs {REFUSED[name]}") and "which qwen3-vl does not" in message
            assert "\n" not in message and message.endswith(f"({method.unsupported_reason})")
        else:
            QWEN3.check_method(method)


BAD_INPUTS = {
    "not-multiple-of-32": (["--image-size", "448x450"], "multiples of 32"),
    "too-small": (["--image-size", "32x32"], "too small"),
    "too-large": (["--image-size", "1920x2048"], "too large: 3840 merged tokens"),
    "cls-method": (["--method", "fastervlm"], "method fastervlm needs the CLS token's"),
    "text-method": (["--method", "trim"], "method trim needs CLIP's text tower"),
    "keep-all": (["--keep", "256"], "the model has 256 tokens"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "qwen3-vl-tiny", "--method", "holov", "--keep", "16", "--target", "cpu", *args]
    assert_clean_failure(main(argv), capsys, message, tmp_path)


def vision_graph(checkpoint, size: str, method: str, keep: int | None) -> VisionGraph:
    config = read_model_config(QWEN3, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN3, config, {"image_size": size}, WeightsFolder(checkpoint))
    return VisionGraph(QWEN3, stack, METHODS.get(method).create(stack.geometry, keep, {}))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["holov", "vispruner", "dart", "divprune", "uniform", "random"])
def test_deepstack_rows_are_the_level_mergers_on_the_kept_tokens(qwen3_checkpoint, method):
    """Each slot's DeepStack rows: level l's merger on the level-l units of the token image_embeds' slot holds,
    zero where the slot is empty (HoloV's padding)."""
    graph = vision_graph(qwen3_checkpoint, "256x320", method, 24)
    pixel_values = torch.randn(2, 3, 256, 320, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = dict(zip(graph.output_names, graph(pixel_values)))
        features = graph.features(pixel_values)
        mergers = graph.prune.selection.levels
        assert graph.output_names == (IMAGE_EMBEDS, TOKEN_INDEX, DEEPSTACK_EMBEDS)
        index, deepstack = outputs[TOKEN_INDEX], outputs[DEEPSTACK_EMBEDS]
        assert deepstack.shape == (2, 2, 24, 64)
        for b in range(2):
            kept = index[b] >= 1
            source = index[b][kept] - 1
            main_rows = graph.projector(features.hidden[b:b + 1, source])[0]
            torch.testing.assert_close(outputs[IMAGE_EMBEDS][b][kept], main_rows, atol=1e-6, rtol=1e-5)
            for level, (merger, hidden) in enumerate(zip(mergers, features.levels)):
                expected = merger.projector(hidden[b:b + 1, source])[0]
                torch.testing.assert_close(deepstack[b, level][kept], expected, atol=1e-6, rtol=1e-5)
                assert not deepstack[b, level][~kept].any()


@pytest.fixture(scope="module")
def hf_visual(qwen3_checkpoint):
    return Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval().model.visual


@pytest.mark.slow
@pytest.mark.parametrize("size", ["224x224", "320x192"])
def test_unpruned_graph_is_hfs_image_and_deepstack_features(qwen3_checkpoint, hf_visual, size):
    height, width = map(int, size.split("x"))
    graph = vision_graph(qwen3_checkpoint, size, "none", None)
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        embeds, token_index, deepstack = graph(pixel_values)
        merged, levels, _ = hf_reference(hf_visual, pixel_values)
    torch.testing.assert_close(embeds[0], merged, atol=1e-5, rtol=1e-5)
    assert token_index[0].tolist() == list(range(1, (height // 32) * (width // 32) + 1))
    for level, expected in enumerate(levels):
        torch.testing.assert_close(deepstack[0, level], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_an_fp16_graph_of_a_checkpoint(qwen3_checkpoint, tmp_path):
    """The default Orin graph of a checkpoint folder: fp16 with the scores and the selection float32; the DeepStack
    mergers are projectors (fp16), like the main merger. (The tiny model's HF initialisation attends almost
    uniformly, so its HoloV selections sit near ties; the checkpoint's wider weights do not.)"""
    out = export(ExportRequest(model=QWEN3.name, method="holov", keep=24, target="orin", out=tmp_path / "e",
                               weights=qwen3_checkpoint, model_options={"image_size": "256x320"}, verify_samples=3))
    record = json.loads((out / CONFIG_JSON).read_text())
    vision = record["graphs"]["vision"]
    assert [o["name"] for o in vision["outputs"]] == [IMAGE_EMBEDS, TOKEN_INDEX, DEEPSTACK_EMBEDS]
    assert vision["outputs"][2]["shape"] == [1, 2, 24, 64]
    assert vision["precision"]["precision"] == "fp16" and vision["tensorrt_parser"]["checked"]
    assert vision["precision"]["fidelity"]["token_overlap_min"] >= 0.98
    assert vision["precision"]["fidelity"]["embeds_cosine_min"] >= 0.999
