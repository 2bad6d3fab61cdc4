"""The qwen2.5-vl adapter: geometry from the checkpoint's config and --image-size, checkpoint key layouts, which
methods apply, bad input as one line, an fp16 graph with padded windows. Every applicable method's fp32 graph is
checked against its golden signature, the lint and the TensorRT parser in tests/test_exporter.py."""

import json

import pytest

from tests.test_cli import assert_clean_failure
from vtp_export.cli import main
from vtp_export.errors import UsageError, WeightsError
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.names import CONFIG_JSON

QWEN, TINY = MODELS.get("qwen2.5-vl"), MODELS.get("qwen2.5-vl-tiny")
REFUSED = {
    "fastervlm": "the CLS token's attention row", "visionzip": "the CLS token's attention row",
    "prumerge": "the next layer's CLS attention", "prumerge_plus": "the next layer's CLS attention",
    "trim": "CLIP's text tower",
}


def legacy_config(width: int) -> dict:
    """config.json as the hub's Qwen2.5-VL checkpoints have it: text fields at the top level."""
    return {"model_type": "qwen2_5_vl", "hidden_size": width, "num_hidden_layers": 2, "num_attention_heads": 16,
            "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 151936, "image_token_id": 151655,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420,
                              "out_hidden_size": width, "fullatt_block_indexes": [7, 15, 23, 31]}}


def test_geometry_of_the_3b_and_7b_layouts():
    g = QWEN.geometry(QWEN.default_config(), {})
    assert (g.image_height, g.image_width, g.grid_rows, g.grid_cols, g.num_patches) == (448, 448, 16, 16, 256)
    assert (g.vision_width, g.num_heads, g.head_dim, g.llm_width, g.feature_layer) == (5120, 16, 80, 2048, 31)
    assert not g.cls_token and g.sequence_length == g.tokens_per_image == 256
    seven = QWEN.geometry(QWEN.config_from_dict(legacy_config(3584)), {"image_size": "392x644"})
    assert (seven.grid_rows, seven.grid_cols, seven.num_patches, seven.llm_width) == (14, 23, 322, 3584)


def test_checkpoint_keys_of_both_layouts():
    assert QWEN.vision_key("visual.blocks.0.attn.qkv.weight") == "tower.blocks.0.attn.qkv.weight"
    assert QWEN.vision_key("model.visual.patch_embed.proj.weight") == "tower.patch_embed.proj.weight"
    assert QWEN.vision_key("visual.merger.mlp.0.weight") == "projector.mlp.0.weight"
    assert QWEN.vision_key("model.visual.merger.ln_q.weight") == "projector.ln_q.weight"
    assert QWEN.vision_key("model.layers.0.mlp.up_proj.weight") is None
    assert QWEN.vision_key("model.language_model.embed_tokens.weight") is None and QWEN.vision_key("lm_head.weight") is None


@pytest.mark.parametrize("size,message", [
    ("450x448", "must be multiples of 28 (patch x merge), e.g. 448x448"),
    ("448", "expected two positive integers"),
    ("28x28", "too small: Qwen2.5-VL's processor takes at least 56x56 pixels"),
    ("1792x1792", "too large: 4096 merged tokens"),
])
def test_bad_image_sizes(size, message):
    with pytest.raises(UsageError) as error:
        QWEN.geometry(QWEN.default_config(), {"image_size": size})
    assert message in str(error.value)


def test_a_merger_narrower_than_the_llm_is_refused():
    raw = legacy_config(2048)
    raw["vision_config"]["out_hidden_size"] = 3584
    with pytest.raises(WeightsError, match="merger's width 3584 differs from the LLM's 2048"):
        QWEN.geometry(QWEN.config_from_dict(raw), {})


def test_methods_apply_or_refuse_in_one_line():
    for name, registered in METHODS.items():
        method = registered.for_signals(QWEN.signals)  # cdpruner: its Qwen form
        if name in REFUSED:
            with pytest.raises(UsageError) as error:
                QWEN.check_method(method)
            message = str(error.value)
            assert message.startswith(f"method {name} needs {REFUSED[name]}") and "which qwen2.5-vl does not" in message
            assert "\n" not in message and message.endswith(f"({method.unsupported_reason})")
        else:
            QWEN.check_method(method)


BAD_INPUTS = {
    "not-multiple-of-28": (["--model", "qwen2.5-vl-tiny", "--image-size", "450x448"], "multiples of 28"),
    "too-small": (["--model", "qwen2.5-vl-tiny", "--image-size", "28x56"], "too small"),
    "too-large": (["--model", "qwen2.5-vl-tiny", "--image-size", "1680x1792"], "too large: 3840 merged tokens"),
    "not-a-size": (["--model", "qwen2.5-vl-tiny", "--image-size", "big"], "--image-size 'big': expected two"),
    "image-size-for-llava15": (["--model", "llava15-tiny", "--image-size", "448x448"],
                               "--image-size is not an option of llava15-tiny"),
    "cls-method": (["--model", "qwen2.5-vl-tiny", "--method", "visionzip"], "method visionzip needs the CLS token's"),
    "keep-all": (["--model", "qwen2.5-vl-tiny", "--keep", "256"], "the model has 256 tokens"),
    "paper-crops-too-many": (["--model", "qwen2.5-vl-tiny", "--image-size", "112x448", "--method-opt", "variant=paper",
                              "--method-opt", "crops=25"], "square number of crops of at most 4x4"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--method", "holov", "--keep", "16", "--target", "cpu", *args]
    assert_clean_failure(main(argv), capsys, message, tmp_path)


def test_a_foreign_checkpoint_folder_is_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["--model", "qwen2.5-vl", "--weights", str(tiny_checkpoint), "--method", "holov", "--keep", "16",
                 "--target", "cpu"])
    assert_clean_failure(code, capsys, "is not a qwen2.5-vl checkpoint (model_type='llava', expected 'qwen2_5_vl')",
                         tmp_path)


def test_an_fp16_graph_with_padded_windows(tmp_path):
    """392x280: 14 x 10 merge units, so the edge windows are partial (masked pad slots); scores stay float32."""
    out = export(ExportRequest(model=TINY.name, method="holov", keep=40, target="orin", out=tmp_path / "e",
                               model_options={"image_size": "392x280"}, verify_samples=3))
    record = json.loads((out / CONFIG_JSON).read_text())
    vision = record["graphs"]["vision"]
    assert record["model"]["geometry"]["grid_rows"] == 14
    assert record["model"]["options"] == {"image_size": "392x280", "frames": "0"}
    assert vision["precision"]["precision"] == "fp16" and vision["tensorrt_parser"]["checked"]
    assert vision["precision"]["fidelity"]["token_overlap_min"] >= 0.98
    assert vision["precision"]["fidelity"]["embeds_cosine_min"] >= 0.999
