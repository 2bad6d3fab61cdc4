"""The runtime against HF Qwen3-VL on the tiny checkpoint: for every method that applies, the same greedy ids as
Qwen3VLForConditionalGeneration.generate() given the same pruning (the kept embeddings in the image span, each at
the 3-D position HF's get_rope_index gives its token, their DeepStack levels added there by HF's own text model);
`none` equals HF's own generate from the processor's pixels at a non-square size; the prompt is Qwen3-VL's chat
template; the transformers backend lays the levels out over a left-padded batch (llama.cpp: test_qwen_llama_cpp.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures, Qwen3VLTextModel

from tests.pictures import picture
from tests.runtime.hf_reference import exports_on_demand
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.protocol import Segment
from vtp_export.runtime.llm.transformers import TransformersLanguageModel, deepstack_inputs

QWEN3 = MODELS.get("qwen3-vl")
SIZE = {"image_size": "256x320"}  # 8 x 10 merged tokens: a non-square grid, so h and w positions differ
ROWS, COLS = 8, 10
TOKENS = ROWS * COLS
KEEP = 20
QUESTION = "What is in the picture?"
NEW_TOKENS = 8
IMAGE_TOKEN_ID = 151655
# The Qwen3-VL Instruct checkpoints' preprocessor_config.json (Qwen2VLImageProcessor; its smart_resize, factor 32,
# leaves 256x320 as it is).
PROCESSOR = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                 size={"shortest_edge": 65536, "longest_edge": 16777216})
APPLICABLE = [name for name, method in METHODS.items()  # still images: evs (temporal) takes a video
              if not method.for_signals(QWEN3.signals).requires - QWEN3.signals and not method.temporal]


@pytest.fixture(scope="module")
def hf(qwen3_checkpoint):
    return Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval()


@pytest.fixture(scope="module")
def exports(qwen3_checkpoint, cached_export):
    return exports_on_demand(cached_export, "qwen3-vl", qwen3_checkpoint, KEEP, model_options=SIZE)


def prompt_ids(checkpoint, image_tokens: int) -> torch.Tensor:
    """(1, T) ids of the chat prompt with `image_tokens` <|image_pad|> between <|vision_start|> and <|vision_end|>."""
    content = "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>" + QUESTION
    prompt = QWEN3.prompt(content, read_model_config(QWEN3, WeightsFolder(checkpoint)))
    return AutoTokenizer.from_pretrained(checkpoint)(prompt, return_tensors="pt").input_ids


def rope_index(hf, ids: torch.Tensor) -> torch.Tensor:
    """HF's 3-D positions of the unpruned prompt, (3, 1, T)."""
    grid = torch.tensor([[1, ROWS * 2, COLS * 2]])
    return hf.model.get_rope_index(ids, (ids == IMAGE_TOKEN_ID).int(), image_grid_thw=grid)[0]


def prompt_embedding(hf, ids: torch.Tensor) -> torch.Tensor:
    """(1, D) cdpruner's Qwen text: the mean of HF's input embeddings over the prompt's tokens outside the image span
    (OpenVINO GenAI's instruction tokens: all but <|vision_start|>, <|image_pad|>, <|vision_end|>)."""
    span = torch.tensor([hf.config.vision_start_token_id, IMAGE_TOKEN_ID, hf.config.vision_end_token_id])
    text = ids[0][~torch.isin(ids[0], span)]
    return hf.get_input_embeddings()(text).mean(dim=0, keepdim=True)


def hf_ids_with_pruning(hf, checkpoint, method_name: str, image: np.ndarray) -> list[int]:
    """HF's generate() on the prompt with KEEP image tokens, whose image features are the PyTorch pruning's kept
    embeddings and DeepStack levels (given as HF's own encoder output, which Qwen3VLModel scatters into the image
    tokens and turns into visual_pos_masks and deepstack_visual_embeds), each token at the position get_rope_index
    gives its source token in the unpruned prompt (padding slots at the last image token's)."""
    config = read_model_config(QWEN3, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN3, config, SIZE, WeightsFolder(checkpoint))
    method = METHODS.get(method_name).for_signals(QWEN3.signals).create(stack.geometry,
                                                                          None if method_name == "none" else KEEP, {})
    pixel_values = torch.from_numpy(QWEN3.preprocess([Image.fromarray(image)], stack.geometry))
    full = prompt_ids(checkpoint, TOKENS)
    start = int((full[0] == IMAGE_TOKEN_ID).nonzero()[0])
    with torch.no_grad():
        text_embeds = prompt_embedding(hf, full) if method.prompt_conditioned else None
        image_embeds, token_index, levels = VisionGraph(QWEN3, stack, method)(pixel_values, text_embeds)
        kept = len(token_index[0])
        sources = start + torch.where(token_index[0] >= 1, token_index[0] - 1, TOKENS - 1)
        order = torch.cat([torch.arange(start), sources, torch.arange(start + TOKENS, full.shape[1])])
        positions = rope_index(hf, full)[:, :, order]
        ids = prompt_ids(checkpoint, kept)
        encoded = BaseModelOutputWithDeepstackFeatures(pooler_output=(image_embeds[0],),
                                                       deepstack_features=[(level,) for level in levels[0]])
        generated = hf.generate(input_ids=ids, mm_encoder_outputs={"image": encoded}, position_ids=positions,
                                attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == IMAGE_TOKEN_ID).int(),
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    return generated[0, ids.shape[1]:].tolist()


def test_the_methods_that_apply():
    assert APPLICABLE == ["cdpruner", "dart", "divprune", "holov", "none", "random", "uniform", "vispruner"]


def test_prompt_is_the_chat_template_without_a_system_turn():
    """Qwen3-VL's chat template writes a system turn only where the conversation has one (Qwen2.5-VL's adds 'You
    are a helpful assistant.')."""
    content = QWEN3.image_token + QUESTION
    assert QWEN3.prompt(content, QWEN3.default_config()) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert MODELS.get("qwen2.5-vl").prompt(content, None).startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_deepstack_inputs_follow_left_padding():
    """visual_pos_masks marks each prompt's image tokens after its left padding; each level holds those tokens in
    the mask's row-major order; a batch without levels passes nothing."""
    def image(tokens: int, first: float) -> Segment:
        levels = first + np.arange(2 * tokens, dtype=np.float32).reshape(2, tokens, 1).repeat(3, axis=2)
        return Segment(np.zeros((3, tokens), np.int64), embeds=np.zeros((tokens, 3), np.float32), deepstack=levels)

    def text(tokens: int) -> Segment:
        return Segment(np.zeros((3, tokens), np.int64), token_ids=np.zeros(tokens, np.int64))

    requests = [[text(2), image(2, 0), text(1)], [text(1), image(1, 10), text(2), image(2, 20), text(1)]]
    inputs = deepstack_inputs(requests, 7, torch.device("cpu"), torch.float32)
    assert inputs["visual_pos_masks"].int().tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 1, 1, 0]]
    levels = inputs["deepstack_visual_embeds"]
    assert len(levels) == 2 and [tuple(level.shape) for level in levels] == [(5, 3), (5, 3)]
    assert levels[0][:, 0].tolist() == [0, 1, 10, 20, 21] and levels[1][:, 0].tolist() == [2, 3, 11, 22, 23]
    assert deepstack_inputs([[text(3)]], 3, torch.device("cpu"), torch.float32) == {}


def test_random_llm_is_qwen3_text_model_with_deepstack():
    """The stand-in LLM is Qwen3-VL's text model built from the config; its prefill adds the levels (zero levels
    change nothing, others do)."""
    tiny = MODELS.get("qwen3-vl-tiny")
    config = tiny.default_config()
    llm = TransformersLanguageModel.random(tiny, config, seed=0)
    assert isinstance(llm.decoder, Qwen3VLTextModel) and llm.num_layers == 3
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((4, 64)).astype(np.float32)
    levels = 3 * rng.standard_normal((2, 4, 64)).astype(np.float32)

    def prefill(deepstack: np.ndarray | None) -> torch.Tensor:
        segments = [Segment(np.arange(3)[None].repeat(3, 0), token_ids=np.array([151644, 872, 198])),
                    Segment(np.array([[3] * 4, [3, 3, 4, 4], [3, 4, 3, 4]]), embeds=embeds, deepstack=deepstack)]
        sequence, positions = llm.sequence(segments)
        with torch.no_grad():
            return llm.decoder(inputs_embeds=sequence[None], position_ids=positions[:, None],
                               **deepstack_inputs([segments], 7, llm.device, llm.dtype)).last_hidden_state

    plain = prefill(None)
    assert torch.equal(prefill(np.zeros_like(levels)), plain)
    assert not torch.allclose(prefill(levels), plain, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("method", APPLICABLE)
def test_greedy_ids_equal_hf_with_the_same_pruning(method, qwen3_checkpoint, hf, exports):
    # VisPruner's kept set legitimately differs between backends (float noise, see its module): it runs the
    # PyTorch backend, so that the pruning is the same and the LLM side is what is compared.
    backend = "onnxruntime" if METHODS.get(method).exact_selection else "torch"
    pipe = Pipeline.from_dir(exports(method), backend=backend)
    answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
    assert answer.token_ids == hf_ids_with_pruning(hf, qwen3_checkpoint, method, picture())
    assert answer.image_tokens == [TOKENS if method == "none" else KEEP] and answer.position_ids == "original"


@pytest.mark.slow
def test_none_equals_unmodified_hf_generate(qwen3_checkpoint, hf, exports):
    pipe = Pipeline.from_dir(exports("none"))
    answer = pipe.answer(QUESTION, [picture(1)], max_new_tokens=NEW_TOKENS)
    ids = prompt_ids(qwen3_checkpoint, TOKENS)
    resized = Image.fromarray(picture(1)).resize((320, 256), Image.Resampling.BICUBIC)
    image_tokens = ids == IMAGE_TOKEN_ID
    pixels = Qwen2VLImageProcessorPil(**PROCESSOR)(resized, return_tensors="pt")  # HF's processing of the size
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values=pixels["pixel_values"],
                                image_grid_thw=pixels["image_grid_thw"], mm_token_type_ids=image_tokens.int(),
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    assert pixels["image_grid_thw"].tolist() == [[1, 16, 20]]
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.image_tokens == [TOKENS] and answer.prompt_tokens == ids.shape[1]


@pytest.mark.slow
def test_positions_follow_hf_rope_index(qwen3_checkpoint, hf, exports):
    """Unpruned: exactly HF's get_rope_index; pruned: the kept tokens at their source's (t, h, w), the text resuming
    after the unpruned image."""
    ids = prompt_ids(qwen3_checkpoint, TOKENS)
    full = rope_index(hf, ids)[:, 0].numpy()
    pipe = Pipeline.from_dir(exports("none"))
    segments = pipe.segments(QWEN3.image_token + QUESTION, pipe.encode_images([picture()], [QUESTION]), range(1))
    assert (np.concatenate([s.positions for s in segments], axis=1) == full).all()
    pipe = Pipeline.from_dir(exports("holov"))
    vision = pipe.encode_images([picture()], [QUESTION])
    segments = pipe.segments(QWEN3.image_token + QUESTION, vision, range(1))
    start = len(segments[0])
    sources = start + vision["token_index"][0] - 1
    kept = np.concatenate([np.arange(start), sources, np.arange(start + TOKENS, ids.shape[1])])
    assert (np.concatenate([s.positions for s in segments], axis=1) == full[:, kept]).all()
    assert segments[2].positions[0, 0] == start + 10, "text resumes at the image start + max(8, 10)"
    assert segments[1].deepstack.shape == (2, KEEP, 64)
    np.testing.assert_array_equal(segments[1].deepstack, vision["deepstack_embeds"][0])


@pytest.fixture(scope="module")
def loud_checkpoint(qwen3_checkpoint, tmp_path_factory):
    """The tiny checkpoint with its DeepStack mergers' output scaled by 100. On the tiny checkpoint itself the levels
    move the last logits by about 0.02 and leave the greedy answer as it is (the last level is added after the last
    layer, so only the first one reaches the text, through layer 1's attention); scaled by 30 or more, they change
    the 8-token answer from its 6th token on (100 and 300 give the same answer)."""
    folder = tmp_path_factory.mktemp("qwen3-vl-tiny-loud")
    model = Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint)
    with torch.no_grad():
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.mul_(100)
            merger.linear_fc2.bias.mul_(100)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(qwen3_checkpoint).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_deepstack_levels_decide_an_answer_as_in_hf(loud_checkpoint, cached_export):
    """Where the levels change the greedy answer, the pipeline still equals HF with the same pruning, and dropping
    the levels from its segments gives another answer: the equalities above cover the levels."""
    folder = exports_on_demand(cached_export, "qwen3-vl", loud_checkpoint, KEEP, model_options=SIZE)("divprune")
    pipe = Pipeline.from_dir(folder)
    answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS).token_ids
    hf = Qwen3VLForConditionalGeneration.from_pretrained(loud_checkpoint).eval()
    assert answer == hf_ids_with_pruning(hf, loud_checkpoint, "divprune", picture())
    segments = pipe.segments(QWEN3.image_token + QUESTION, pipe.encode_images([picture()], [QUESTION]), range(1))
    assert segments[1].deepstack is not None
    stripped = [Segment(s.positions, s.token_ids, s.embeds) for s in segments]
    assert pipe.llm.generate([segments], NEW_TOKENS).token_ids[0] == answer
    assert pipe.llm.generate([stripped], NEW_TOKENS).token_ids[0] != answer


@pytest.mark.slow
def test_batch_and_two_images_in_one_prompt(exports):
    pipe = Pipeline.from_dir(exports("dart"))
    single = [pipe.answer(QUESTION, [picture(s)], max_new_tokens=4).token_ids for s in (3, 4)]
    batch = pipe.answer_batch([(QUESTION, [picture(3)]), (f"{QWEN3.image_token}{QWEN3.image_token}Compare.",
                                                          [picture(3), picture(4)]), (QUESTION, [picture(4)])],
                              max_new_tokens=4)
    assert batch[0].token_ids == single[0] and batch[2].token_ids == single[1], "left padding changes nothing"
    assert batch[1].image_tokens == [KEEP, KEEP]
