"""The LLM as GGUF: metadata, tensor names, shapes and values as llama.cpp's LLaMA expects them, for seeded
random weights and a saved checkpoint; every quant loads in llama.cpp; both tokenizer kinds convert; a failed
conversion leaves nothing; the `llm` command records the file in the export's typed record."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.llm_files import TINY, WORDS, sentencepiece_tokenizer_folder, stand_in_tokenizer_folder, tiny_llm
from vtp_export.cli import main
from vtp_export.errors import ExportError, WeightsError
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.models import MODELS
from vtp_export.onnx.names import CONFIG_JSON
from vtp_export.records.codec import sha256
from vtp_export.records.export import LlmFile, read_export, runtime_config
from vtp_export.runtime.llm import gguf as gguf_export
from vtp_export.runtime.llm.gguf import QUANTS, rope_interleaved, write_gguf
from vtp_export.runtime.llm.llama_cpp import LlamaCppLanguageModel
from vtp_export.runtime.llm.transformers import TransformersLanguageModel

pytestmark = [pytest.mark.slow, pytest.mark.llama]

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    return stand_in_tokenizer_folder(tmp_path_factory.mktemp("stand-in-tokenizer"))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory) -> Path:
    return sentencepiece_tokenizer_folder(tmp_path_factory.mktemp("sentencepiece-tokenizer"))


def fields(path: Path) -> tuple[dict, dict]:
    """(metadata, tensors by name) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {t.name: t for t in reader.tensors}


def test_random_weights_gguf_has_llamas_metadata_and_tensors(stand_in, tmp_path):
    llm = tiny_llm()
    written = write_gguf(llm, stand_in, tmp_path / "llm-f32.gguf", "f32")
    meta, tensors = fields(tmp_path / "llm-f32.gguf")
    config = llm.config
    assert (written.n_vocab, written.n_embd, written.n_layer, written.tokenizer) == (32064, 64, 2, "gpt2")
    assert written.sha256 == sha256(tmp_path / "llm-f32.gguf")
    assert written.bytes == (tmp_path / "llm-f32.gguf").stat().st_size
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.embedding_length"] == 64
    assert meta["llama.feed_forward_length"] == 128
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 4)
    assert meta["llama.rope.dimension_count"] == 16 and meta["llama.context_length"] == 2048
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    assert len(meta["tokenizer.ggml.tokens"]) == 32064
    assert meta["tokenizer.ggml.tokens"][32000] == "<image>"
    types = meta["tokenizer.ggml.token_type"]
    assert [types[i] for i in (0, 1, 2, 32000, 100)] == [gguf.TokenType.CONTROL] * 4 + [gguf.TokenType.NORMAL]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert meta["tokenizer.ggml.add_bos_token"] is True
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(2) for name in
        ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    assert tensors["token_embd.weight"].data.shape == (32064, 64)
    assert tensors["blk.0.ffn_down.weight"].data.shape == (64, 128)
    layer = llm.decoder.layers[1].self_attn
    for name, projection in (("attn_q", layer.q_proj), ("attn_k", layer.k_proj)):
        np.testing.assert_array_equal(tensors[f"blk.1.{name}.weight"].data,
                                      rope_interleaved(projection.weight.detach().numpy(), 4))
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight"].data, layer.v_proj.weight.detach().numpy())
    np.testing.assert_array_equal(tensors["output.weight"].data, llm.head.weight.detach().numpy())


def test_rope_interleaving_makes_pair_rotation_score_as_half_rotation():
    """Attention scores of q at position m and k at position n, per head: HF rotates (q[i], q[i + d/2]);
    llama.cpp's LLaMA rope rotates (q[2i], q[2i + 1]) of the reordered projection. They must agree."""
    rng = np.random.default_rng(0)
    heads, head_dim, m, n = 2, 8, 7, 3
    theta = 10000.0 ** (-np.arange(head_dim // 2) * 2 / head_dim)
    wq, wk, x, y = (rng.standard_normal((heads * head_dim, 5)), rng.standard_normal((heads * head_dim, 5)),
                    rng.standard_normal(5), rng.standard_normal(5))

    def halves(v, position):
        a, b = v[: head_dim // 2], v[head_dim // 2:]
        cos, sin = np.cos(theta * position), np.sin(theta * position)
        return np.concatenate([a * cos - b * sin, b * cos + a * sin])

    def pairs(v, position):
        a, b = v[0::2], v[1::2]
        cos, sin = np.cos(theta * position), np.sin(theta * position)
        return np.stack([a * cos - b * sin, b * cos + a * sin], axis=1).ravel()

    def scores(rotate, q_weight, k_weight):
        q, k = (q_weight @ x).reshape(heads, head_dim), (k_weight @ y).reshape(heads, head_dim)
        return [rotate(q[h], m) @ rotate(k[h], n) for h in range(heads)]

    hf = scores(halves, wq, wk)
    np.testing.assert_allclose(scores(pairs, rope_interleaved(wq, heads), rope_interleaved(wk, heads)), hf)
    assert not np.allclose(scores(pairs, wq, wk), hf)  # without the reordering they differ


def test_checkpoint_folder_converts_with_its_own_weights(tiny_checkpoint, tmp_path):
    config = TINY.default_config()
    llm = TransformersLanguageModel.from_checkpoint(TINY, tiny_checkpoint, TINY.geometry(config, {}), dtype="float16")
    written = write_gguf(llm, tiny_checkpoint, tmp_path / "llm-f16.gguf", "f16")
    meta, tensors = fields(tmp_path / "llm-f16.gguf")
    assert written.source == str(tiny_checkpoint) and meta["general.name"] == tiny_checkpoint.name
    assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # norms stay f32
    np.testing.assert_array_equal(tensors["token_embd.weight"].data,
                                  llm.decoder.embed_tokens.weight.detach().numpy())
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16


@pytest.mark.parametrize("quant", QUANTS)
def test_each_quant_writes_a_file_llama_cpp_loads(quant, stand_in, tmp_path):
    pytest.importorskip("llama_cpp")
    written = write_gguf(tiny_llm(), stand_in, tmp_path / f"llm-{quant}.gguf", quant)
    assert sorted(p.name for p in tmp_path.iterdir()) == [written.file]  # no temp or f16 intermediate left
    _, tensors = fields(tmp_path / written.file)
    kinds = {t.tensor_type.name for t in tensors.values()}
    # q4_k_m: K-quants need rows of 256; llama.cpp's quantizer falls back (q5_0, q8_0) at this width of 64
    assert kinds == {"f32": {"F32"}, "f16": {"F16", "F32"}, "q8_0": {"Q8_0", "F32"},
                     "q4_k_m": {"Q5_0", "Q8_0", "F32"}}[quant]
    with LlamaCppLanguageModel.from_gguf(tmp_path / written.file, n_ctx=64) as llm:
        assert (llm.hidden_size, llm.vocab_size, llm.num_layers, llm.eos_token_id) == (64, 32064, 2, 2)


def test_sentencepiece_tokenizer_converts_to_llamas_own(sentencepiece, tmp_path):
    """The GGUF tokenizes as SentencePiece does, text piece by text piece around <image> (as LLaVA's own
    code does), and its detokenizer gives back SentencePiece's text."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    llm = tiny_llm()
    llm.tokenizer = AutoTokenizer.from_pretrained(sentencepiece)
    written = write_gguf(llm, sentencepiece, tmp_path / "llm-f32.gguf", "f32")
    meta, _ = fields(tmp_path / "llm-f32.gguf")
    processor = spm.SentencePieceProcessor(model_file=str(sentencepiece / "tokenizer.model"))
    assert written.tokenizer == "llama" and meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.tokens"][:400] == [processor.id_to_piece(i) for i in range(400)]
    assert meta["tokenizer.ggml.scores"][:400] == pytest.approx([processor.get_score(i) for i in range(400)])
    image_id = 400
    assert meta["tokenizer.ggml.tokens"][image_id] == "<image>"
    assert meta["tokenizer.ggml.token_type"][image_id] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.tokens"][-1] == "[PAD32063]"
    with LlamaCppLanguageModel.from_gguf(tmp_path / "llm-f32.gguf", n_ctx=64) as model:
        for text in ["USER: <image>\nWhat is in the picture? ASSISTANT:", "a red 12 car 日本 ünï\ttab  two spaces"]:
            first, *rest = text.split("<image>")
            expected = [1] + processor.encode(first) + sum(([image_id] + processor.encode(p) for p in rest), [])
            assert model.tokenize(text) == expected
        answer = processor.encode("the dog sits on a blue chair 7?")
        assert model.decode(answer + [2]) == processor.decode(answer)


def test_qwen2_tokenizer_converts_to_llamas_qwen2_pre_tokenizer(tmp_path):
    """A byte-level BPE with Qwen2's split before its byte-level step (the tokenizer.json of Qwen2.5-VL and Qwen3-VL
    checkpoints) is written as llama.cpp's "qwen2" pre-tokenizer, which tokenizes as HF does: contractions,
    digits one by one, runs of spaces and newlines, and <|image_pad|> as one control token."""
    pytest.importorskip("llama_cpp")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gguf_export.QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 9 + 3)) + f" {i}'s\n" for i in range(500)]
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|image_pad|>"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    hf.save_pretrained(tmp_path / "qwen2-tokenizer")
    llm = tiny_llm(vocab_size=640)
    llm.tokenizer = hf
    written = write_gguf(llm, tmp_path / "qwen2-tokenizer", tmp_path / "llm-f32.gguf", "f32")
    meta, _ = fields(tmp_path / "llm-f32.gguf")
    assert (written.tokenizer, meta["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    with LlamaCppLanguageModel.from_gguf(tmp_path / "llm-f32.gguf", n_ctx=64) as model:
        for text in ["<|image_pad|>What's in the picture 2024?\n\n  two  spaces", "the dog's 12345 red\tcar  \n"]:
            assert model.tokenize(text, add_bos=False) == hf(text).input_ids
    with pytest.raises(WeightsError, match="splits text in a way llama.cpp does not know"):
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path / "other")
        write_gguf(llm, tmp_path / "other", tmp_path / "other.gguf", "f32")


def test_failed_conversion_leaves_nothing(stand_in, tmp_path, monkeypatch):
    original, count = gguf_export.tensor_array, []

    def failing(name, *args):  # fails midway through writing the tensors
        count.append(name)
        if len(count) == 5:
            raise OSError("disk full")
        return original(name, *args)

    monkeypatch.setattr(gguf_export, "tensor_array", failing)
    with pytest.raises(OSError):
        write_gguf(tiny_llm(), stand_in, tmp_path / "llm-f16.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_failed_quantization_is_one_line_and_leaves_nothing(stand_in, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    original = gguf_export.write_weights

    def truncated(llm, architecture, levels, vocab, folder, path, *args):  # an f16 file llama.cpp cannot quantize
        original(llm, architecture, levels, vocab, folder, path, *args)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(gguf_export, "write_weights", truncated)
    with pytest.raises(ExportError) as error:
        write_gguf(tiny_llm(), stand_in, tmp_path / "llm-q8_0.gguf", "q8_0")
    assert "llama.cpp could not quantize" in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_tokenizer_larger_than_the_llm_vocabulary_is_refused(stand_in, tmp_path):
    llm = tiny_llm()
    llm.config.vocab_size = 1000
    with pytest.raises(WeightsError, match="32064 tokens, more than the LLM's vocabulary of 1000"):
        write_gguf(llm, stand_in, tmp_path / "llm-f32.gguf", "f32")
    assert list(tmp_path.iterdir()) == []


def test_folder_without_tokenizer_files_is_one_line(tmp_path):
    with pytest.raises(WeightsError, match="neither SentencePiece"):
        write_gguf(tiny_llm(), tmp_path, tmp_path / "llm-f32.gguf", "f32")


def test_missing_gguf_package_is_one_line(stand_in, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "gguf", None)
    with pytest.raises(ExportError, match=r"needs the gguf package: pip install 'vtp-export\[llama\]'"):
        write_gguf(tiny_llm(), stand_in, tmp_path / "llm-f32.gguf", "f32")


@pytest.fixture(scope="module")
def random_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llm-cli") / "export"
    export(ExportRequest(model="llava15-tiny", method="none", target="cpu", seed=3, out=out, verify_samples=1))
    return out


def test_llm_command_converts_the_exports_llm_and_records_it(random_export, capsys):
    before = json.loads((random_export / CONFIG_JSON).read_text())
    assert main(["llm", str(random_export), "--format", "gguf", "--quant", "f16"]) == 0
    assert "wrote" in capsys.readouterr().out
    record = read_export(random_export)  # typed, and every file it lists is there
    path = random_export / "llm-f16.gguf"
    assert record.llm == LlmFile(file="llm-f16.gguf", quant="f16", sha256=sha256(path), bytes=path.stat().st_size,
                                 n_vocab=32064, n_embd=64, n_layer=2, tokenizer="gpt2", source="random(seed=3)")
    assert json.loads((random_export / CONFIG_JSON).read_text())["llm"]["format"] == "gguf"
    after = json.loads((random_export / CONFIG_JSON).read_text())
    assert {**after, "llm": None} == {**before, "llm": None}, "vtp-export llm updates its section only"
    _, tensors = fields(path)
    seeded = TransformersLanguageModel.random(TINY, TINY.default_config(), 3)  # the transformers backend's LLM
    np.testing.assert_array_equal(tensors["output.weight"].data,
                                  seeded.head.weight.detach().numpy().astype(np.float16))
    assert not [p for p in random_export.iterdir() if p.name.startswith(".")]


def test_llm_command_cuts_a_random_llm_and_replaces_the_recorded_file(random_export, capsys):
    assert main(["llm", str(random_export), "--format", "gguf", "--quant", "f16"]) == 0
    assert main(["llm", str(random_export), "--format", "gguf", "--quant", "q8_0", "--llm-layers", "1"]) == 0
    record = read_export(random_export)
    assert (record.llm.file, record.llm.n_layer, record.llm.source) == ("llm-q8_0.gguf", 1, "random(seed=3, 1 layers)")
    assert sorted(p.name for p in random_export.glob("*.gguf")) == ["llm-q8_0.gguf"], "the earlier file is gone"


def test_llm_command_takes_another_checkpoint(random_export, tiny_checkpoint, capsys):
    assert main(["llm", str(random_export), "--format", "gguf", "--quant", "f32", "--llm", str(tiny_checkpoint)]) == 0
    record = read_export(random_export)
    assert record.llm.source == str(tiny_checkpoint) and record.llm.quant == "f32"
    _, tensors = fields(random_export / "llm-f32.gguf")
    checkpoint = TransformersLanguageModel.from_checkpoint(TINY, tiny_checkpoint, record.model.geometry)
    np.testing.assert_array_equal(tensors["output.weight"].data, checkpoint.head.weight.detach().numpy())
    cut = ["--llm", str(tiny_checkpoint), "--llm-layers", "1"]
    assert main(["llm", str(random_export), "--format", "gguf", *cut]) == 2
    assert "--llm-layers cuts a random LLM" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--format", "gguf", "--quant", "q3_k"], "argument --quant: invalid choice: 'q3_k'"),
    (["--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
    (["--quant", "f16"], "the following arguments are required: --format"),
    (["--format", "gguf", "--llm-layers", "0"], "--llm-layers 0 must be at least 1"),
])
def test_llm_command_bad_arguments_are_one_line(args, message, random_export, capsys):
    assert main(["llm", str(random_export), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtp-export: error: ") and message in err and err.count("\n") == 1


def test_llm_command_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["llm", str(tmp_path / "nowhere"), "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


@pytest.mark.parametrize("model,size,architecture,levels", [
    ("qwen2.5-vl-tiny", "112x112", "qwen2vl", None),
    ("qwen3-vl-tiny", "128x128", "qwen3vl", 2),
])
def test_llm_command_writes_the_qwen_architectures(model, size, architecture, levels, tmp_path, capsys):
    """llama.cpp's own architecture for the Qwen LLMs, named by gguf's tables: M-RoPE sections padded to four, q/k
    rows as HF has them (no pair reordering: M-RoPE rotates half against half), Qwen2's q/k/v biases, Qwen3's q/k
    norms, the DeepStack level count; llama.cpp loads it."""
    out = tmp_path / "qwen"
    export(ExportRequest(model=model, method="none", target="cpu", out=out, verify_samples=1,
                         model_options={"image_size": size}))
    assert main(["llm", str(out), "--format", "gguf", "--quant", "f32"]) == 0
    metadata, tensors = fields(out / "llm-f32.gguf")
    assert metadata["general.architecture"] == architecture
    assert metadata[f"{architecture}.rope.dimension_sections"] == [4, 2, 2, 0]
    assert metadata.get(f"{architecture}.n_deepstack_layers") == levels
    adapter = MODELS.get(model)
    llm = TransformersLanguageModel.random(adapter, runtime_config(out, adapter), read_export(out).model.weights.seed)
    extra = ("attn_q.bias", "attn_k.bias", "attn_v.bias") if architecture == "qwen2vl" else \
        ("attn_q_norm.weight", "attn_k_norm.weight")
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{name}" for i in range(llm.num_layers) for name in extra + tuple(f"{name}.weight" for name in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"))}
    assert set(tensors) == expected
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data,
                                  llm.decoder.layers[0].self_attn.q_proj.weight.detach().numpy())
    with LlamaCppLanguageModel.from_gguf(out / "llm-f32.gguf") as loaded:
        assert (loaded.mrope, loaded.deepstack_levels) == (True, levels or 0)


def test_an_llm_llama_cpp_is_not_given_here_is_one_line(stand_in, tmp_path):
    llm = tiny_llm()
    llm.config.model_type = "phi3"
    with pytest.raises(WeightsError) as error:
        write_gguf(llm, stand_in, tmp_path / "llm-f32.gguf", "f32")
    assert "this LLM is 'phi3': run it with the transformers backend" in str(error.value)
    assert "\n" not in str(error.value) and not list(tmp_path.glob("*.gguf*"))


def test_a_deepstack_llm_with_no_layer_after_its_levels_is_one_line(tmp_path, capsys):
    out = tmp_path / "qwen3"
    export(ExportRequest(model="qwen3-vl-tiny", method="none", target="cpu", out=out, verify_samples=1,
                         random_weights=True, model_options={"image_size": "128x128"}))
    assert main(["llm", str(out), "--format", "gguf", "--llm-layers", "2"]) == 2
    err = capsys.readouterr().err
    assert "the LLM has 2 decoder layers for 2 DeepStack levels; llama.cpp adds level i after layer i" in err
    assert err.count("\n") == 1 and not list(out.glob("*.gguf*"))
