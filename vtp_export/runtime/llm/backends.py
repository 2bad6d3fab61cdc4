"""The LLM backends the runtime opens by name, each declaring what it takes and refuses. A backend is a module
with a LanguageModelBackend (runtime/llm/protocol.py) and `open_llm(LlmRequest)`, plus its entry here; the module is
imported only when the backend is opened: this registry and the torch-free backends import without torch."""

import importlib
import importlib.util
from dataclasses import dataclass

from vtp_export.errors import PipelineError
from vtp_export.registry import Registry
from vtp_export.runtime.llm.protocol import POSITION_POLICIES, LanguageModelBackend, LlmRequest

DEFAULT_LLM_BACKEND = "transformers"


@dataclass(frozen=True)
class LlmBackend:
    name: str
    module: str  # holds open_llm(LlmRequest) -> LanguageModelBackend
    position_policies: tuple[str, ...]  # of POSITION_POLICIES, on models with one position per token
    position_refusal: str = ""  # why the other policies are refused there
    mrope_position_policies: tuple[str, ...] = POSITION_POLICIES  # on M-RoPE models (VisionLanguageModel.mrope)
    layer_cut_refusal: str | None = None  # why llm_layers is refused; None: it cuts a random LLM to llm_layers
    devices: tuple[str, ...] = ()  # device types it takes ("cuda" for "cuda:1"); (): it places the LLM itself
    dtypes: tuple[str, ...] = ()  # weight dtypes it loads in; (): its weights file fixes them
    llm_format: str | None = None  # `vtp-export llm --format` of the file it runs; None: the export's checkpoint
    needs_torch: bool = False

    def policies(self, mrope: bool) -> tuple[str, ...]:
        """The position policies it runs on a model with M-RoPE positions or without."""
        return self.mrope_position_policies if mrope else self.position_policies

    @property
    def weights(self) -> str:
        """What `llm` / --llm names for this backend."""
        return f"a {self.llm_format.upper()} file" if self.llm_format else "a HF checkpoint folder"

    def check(self, device: str, dtype: str) -> None:
        """PipelineError where the device or dtype is not one it takes (both ignored where it declares none)."""
        if self.devices and device.split(":")[0] not in self.devices:
            raise PipelineError(f"device={device!r}: the {self.name} LLM backend runs on {', '.join(self.devices)}")
        if self.dtypes and dtype not in self.dtypes:
            raise PipelineError(f"dtype={dtype!r}: the {self.name} LLM backend loads {', '.join(self.dtypes)}")

    def open(self, request: LlmRequest) -> LanguageModelBackend:
        self.check(request.device, request.dtype)
        if self.needs_torch and importlib.util.find_spec("torch") is None:
            without = next(name for name in llm_backend_names() if not LLM_BACKENDS.get(name).needs_torch)
            raise PipelineError(f"the {self.name} LLM backend needs PyTorch; on a device without it use "
                                f"llm_backend={without!r} (--llm-backend {without})")
        return importlib.import_module(self.module).open_llm(request)


LLM_BACKENDS: Registry[LlmBackend] = Registry("LLM backend")


def register(backend: LlmBackend) -> LlmBackend:
    if not set(backend.position_policies) <= set(POSITION_POLICIES):
        raise ValueError(f"LLM backend {backend.name}: position policies {backend.position_policies} must come "
                         f"from {POSITION_POLICIES}")
    return LLM_BACKENDS.add(backend.name, backend)


def llm_backend_names() -> list[str]:
    """The default first, then the others by name: the order of choices and messages."""
    return [DEFAULT_LLM_BACKEND, *(name for name in LLM_BACKENDS.names() if name != DEFAULT_LLM_BACKEND)]


def llm_backend(name: str) -> LlmBackend:
    """The named backend; PipelineError for an unknown name."""
    if name not in LLM_BACKENDS:
        raise PipelineError(f"llm_backend={name!r} is not one of {', '.join(llm_backend_names())}")
    return LLM_BACKENDS.get(name)


register(LlmBackend(
    name="transformers", module="vtp_export.runtime.llm.transformers", position_policies=POSITION_POLICIES,
    devices=("cpu", "cuda"), dtypes=("float32", "bfloat16", "float16"), needs_torch=True,
))
register(LlmBackend(
    name="llama.cpp", module="vtp_export.runtime.llm.llama_cpp", position_policies=("sequential",),
    position_refusal="llama.cpp needs consecutive positions on LLaMA models; use 'sequential' or the transformers "
                     "LLM backend",
    layer_cut_refusal="a GGUF has the layers it was converted with (vtp-export llm DIR --format gguf --llm-layers N)",
    llm_format="gguf",
))
