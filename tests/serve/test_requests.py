"""The server's request parsing and the plugin's image-data checks, in this venv: each refusal one line."""

import pytest
import torch

from tests.pictures import picture
from tests.serve.server import data_url
from vtp_export.serve.requests import BadRequest, RequestLimits, parse_chat_request
from vtp_export.serve.vllm_plugin import check_image_data, qwen_image_data

LIMITS = RequestLimits(max_images=2, max_image_pixels=100_000, image_root=None, max_tokens=64)


def body(*parts, **extra):
    return {"messages": [{"role": "user", "content": list(parts)}], **extra}


def image(seed=0, size=(300, 240)):
    return {"type": "image_url", "image_url": {"url": data_url(picture(seed, size))}}


def text(words):
    return {"type": "text", "text": words}


def test_images_before_the_text_are_placed_by_the_pipeline_and_after_text_where_they_are():
    request = parse_chat_request(body(image(), text("What?"), max_tokens=5, temperature=0.5, seed=3), LIMITS, "<image>")
    assert request.prompt == "What?" and len(request.images) == 1 and request.images[0].size == (300, 240)
    assert (request.max_tokens, request.temperature, request.seed, request.stream) == (5, 0.5, 3, False)
    request = parse_chat_request(body(text("Compare "), image(0), text(" with "), image(1)), LIMITS, "<image>")
    assert request.prompt == "Compare <image> with <image>" and len(request.images) == 2
    assert parse_chat_request({"messages": [{"role": "user", "content": "Hi"}]}, LIMITS, "<image>").max_tokens is None


@pytest.mark.parametrize("request_body, message", [
    ("text", "JSON object"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}, "one user message"),
    (body(image(), image(), image()), "more than 2 images"),
    (body(image(size=(400, 300))), "more than the server's --max-image-pixels"),
    (body({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}), "not valid base64"),
    (body({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}), "cannot be read"),
    (body({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), "data URLs and local paths"),
    (body({"type": "image_url", "image_url": {"url": "/etc/hostname"}}), "local image paths are off"),
    (body({"type": "audio"}), "unsupported content part"),
    (body(text("look: <image>")), "image placeholder"),
    (body(text("x"), max_tokens=65), "max_tokens must be an integer from 1 to 64"),
    (body(text("x"), temperature=-1), "temperature"),
    (body(text("x"), stream="yes"), "stream must be true or false"),
])
def test_bad_requests_are_one_line(request_body, message):
    with pytest.raises(BadRequest, match=message) as error:
        parse_chat_request(request_body, LIMITS, "<image>")
    assert "\n" not in str(error.value)


def test_local_paths_only_under_the_image_root(tmp_path):
    from PIL import Image

    Image.fromarray(picture(0)).save(tmp_path / "a.png")
    limits = RequestLimits(2, 100_000, tmp_path.resolve(), 64)
    assert parse_chat_request(body({"type": "image_url", "image_url": {"url": f"file://{tmp_path}/a.png"}}), limits,
                              "<image>").images[0].size == (300, 240)
    for url, message in ((str(tmp_path / "b.png"), "does not exist"), (str(tmp_path / ".." / "x.png"), "outside")):
        with pytest.raises(BadRequest, match=message):
            parse_chat_request(body({"type": "image_url", "image_url": {"url": url}}), limits, "<image>")


def qwen_data(images=2, kept=3, width=8):
    return qwen_image_data([torch.zeros(kept, width) for _ in range(images)],
                           [torch.tensor([1, 5, -1]).numpy()[:kept]] * images, (1, 8, 12))


def test_the_plugins_image_data():
    data = qwen_data()
    assert data["image_embeds"].shape == (6, 8) and data["image_grid_thw"].tolist() == [[1, 8, 12]] * 2
    assert data["image_token_index"].tolist() == [[1, 5, -1]] * 2
    check_image_data(data, 2, 8)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("image_token_index"), "exactly"),
    (lambda d: d.update(image_embeds=torch.zeros(5, 8)), "5 rows for 2 images of 3"),
    (lambda d: d.update(image_embeds=torch.zeros(6, 9)), "9 wide, the LLM takes 8"),
    (lambda d: d.update(image_grid_thw=torch.tensor([[1, 8, 12]])), "must be \\(n, 3\\)"),
    (lambda d: d.update(image_grid_thw=torch.tensor([[2, 8, 12]] * 2)), "rows must be \\(1, h, w\\)"),
    (lambda d: d.update(image_grid_thw=torch.tensor([[1, 7, 12]] * 2)), "multiples of 2"),
    (lambda d: d.update(image_token_index=torch.tensor([[1, 25, 2]] * 2)), "merged tokens 1..M"),
    (lambda d: d.update(image_token_index=torch.tensor([[0, 2, 3]] * 2)), "merged tokens 1..M"),
    (lambda d: d.update(image_embeds=torch.zeros(6, 8, dtype=torch.int64)), "floating point"),
])
def test_image_data_that_does_not_fit_is_refused_before_the_engine(change, message):
    data = qwen_data()
    change(data)
    with pytest.raises(ValueError, match=message) as error:
        check_image_data(data, 2, 8)
    assert "\n" not in str(error.value)


def test_qwen3_rows_carry_their_deepstack_levels():
    """Qwen3-VL's rows are the embedding and its levels side by side; rows without the levels are refused."""
    check_image_data(qwen_data(width=24), 2, 8, levels=2)
    with pytest.raises(ValueError, match="8 wide, the LLM takes 24 \\(8 and 2 DeepStack levels of 8\\)"):
        check_image_data(qwen_data(), 2, 8, levels=2)
