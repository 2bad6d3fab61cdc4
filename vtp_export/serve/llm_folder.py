"""An export's language model as a folder vLLM loads, written into the export folder once and recorded in its
config.json (ExportRecord.vllm) with the sha256 of every file: the LLM of the transformers backend (the checkpoint's,
or the seeded random weights of a random-weight export, cut to llm_layers) as safetensors in transformers 5's key
layout of the whole model (model.language_model.*, lm_head.weight: vLLM maps it and, with no image limit, builds no
vision tower), the model's config naming the architecture vLLM runs, the tokenizer the export carries, and the
processor files vLLM instantiates. Needs torch (the exporter's venv or the serving venv: vLLM brings it)."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vtp_export.errors import UsageError, VtpError
from vtp_export.models import MODELS
from vtp_export.onnx.names import CONFIG_JSON
from vtp_export.records.codec import sha256
from vtp_export.records.export import (
    IMAGE_NEWLINE_FILE, RUNTIME_FOLDER, VllmFolder, read_export, runtime_config, update_export,
)
from vtp_export.records.folder import staged_folder
from vtp_export.runtime.llm.transformers import DTYPES, converted_llm
from vtp_export.serve.served import served_model

VLLM_FOLDER = "llm-vllm"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


def export_vllm_llm(folder: Path, llm_folder: Path | None = None, llm_layers: int | None = None,
                    dtype: str = "float32") -> VllmFolder:
    """Write folder/llm-vllm (replacing an earlier one) and record it in folder/config.json."""
    if llm_layers is not None and llm_layers < 1:
        raise UsageError(f"--llm-layers {llm_layers} must be at least 1")
    if dtype not in DTYPES:
        raise UsageError(f"--llm-dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    record = read_export(folder)
    model = MODELS.get(record.model.name)
    served = served_model(model.model_type, model.name)
    try:
        config = runtime_config(folder, model)
    except VtpError as error:
        raise UsageError(str(error)) from None
    llm, _ = converted_llm(folder, record, config, llm_folder, llm_layers, dtype)
    tied = llm.head.weight.data_ptr() == llm.decoder.embed_tokens.weight.data_ptr()
    state = {f"model.language_model.{key}": tensor.detach().contiguous()
             for key, tensor in llm.decoder.state_dict().items()}
    if not tied:
        state["lm_head.weight"] = llm.head.weight.detach().contiguous()
    if model.model_type == "llava_next":  # vLLM's LLaVA-NeXT builds it with the LLM (image embeddings never use it)
        newline = folder / IMAGE_NEWLINE_FILE
        state["model.image_newline"] = (torch.from_numpy(np.load(newline)) if newline.is_file()
                                        else torch.zeros(llm.hidden_size)).to(DTYPES[dtype])
    model_config = json.loads((folder / RUNTIME_FOLDER / CONFIG_JSON).read_text())
    model_config |= {"architectures": [served.architecture], "dtype": dtype, "tie_word_embeddings": tied}
    model_config["text_config"] |= {"num_hidden_layers": llm.num_layers, "dtype": dtype, "tie_word_embeddings": tied}
    out = folder / VLLM_FOLDER
    previous = record.vllm

    def own_files(path: Path) -> list[str] | None:  # what an earlier `--format vllm` wrote there
        return list(previous.files) if previous is not None and previous.folder == path.name else None

    with staged_folder(out, own_files=own_files) as stage:
        save_file(state, stage / WEIGHTS_FILE, metadata={"format": "pt"})
        (stage / CONFIG_JSON).write_text(json.dumps(model_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (folder / RUNTIME_FOLDER / name).is_file():
                shutil.copyfile(folder / RUNTIME_FOLDER / name, stage / name)
        for name, content in served.processor_files(config, record.model.geometry).items():
            (stage / name).write_text(json.dumps(content, indent=2) + "\n")
        files = {path.name: sha256(path) for path in sorted(stage.iterdir())}
    written = VllmFolder(out.name, files, served.architecture, llm.num_layers, llm.hidden_size, llm.vocab_size,
                         llm.source)
    update_export(folder, {("vllm",): written})
    return written

