"""graphs/ holds exactly the golden signatures tests/goldens.py names: a golden export that stops being collected
(its model or method now refuses it) or a file left by a renamed one fails here, not silently."""

from tests.goldens import GOLDEN_KEEPS, GRAPHS_DIR, golden_exports, golden_files


def test_graphs_folder_holds_exactly_the_golden_signatures():
    on_disk = set(GRAPHS_DIR.glob("*/*.json"))
    expected = golden_files()
    assert not expected - on_disk, f"missing (run tools/update_graphs.py): {sorted(expected - on_disk)}"
    assert not on_disk - expected, f"no golden export writes these: {sorted(on_disk - expected)}"


def test_the_qwen_models_pin_their_video_graphs():
    for model in ("qwen2.5-vl-tiny", "qwen3-vl-tiny"):
        video = {name: spec.tokens for name, spec in golden_exports(model).items() if spec.model_options}
        assert video == {"video-none": 512, "video-divprune": GOLDEN_KEEPS[model], "video-evs": 256 + 64}
