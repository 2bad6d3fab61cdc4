"""`vtp-export serve DIR`: an OpenAI-compatible chat-completions endpoint over an export folder. Each request's
images run through the export's vision graph (onnxruntime or TensorRT, the Pipeline's backends), the Pipeline lays
out the prompt (template, image placeholders, the pruned tokens), and a vLLM engine serving the export's LLM (no
vision tower: image embeddings only) generates, continuously batched with the other requests, streamed or whole.

Routes: POST /v1/chat/completions, GET /v1/models, GET /health. A request the server refuses is HTTP 400 with
{"error": {"message": one line, ...}}; it never reaches the engine. SIGTERM / SIGINT: in-flight requests finish,
then the engine shuts down and the process exits 0. Serving venv only (vLLM, FastAPI and uvicorn)."""

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtp_export.errors import PipelineError, UsageError, VtpError
from vtp_export.models import MODELS
from vtp_export.records.export import read_export, runtime_config
from vtp_export.runtime.pipeline import Pipeline
from vtp_export.serve.engine import (
    EngineInput, EngineOptions, PromptSide, check_cpu_attention, check_vllm_folder, engine_args, engine_input,
)
from vtp_export.serve.requests import BadRequest, ChatRequest, RequestLimits, parse_chat_request
from vtp_export.serve.served import SERVED_MODELS, served_model


@dataclass
class ServeSettings:
    folder: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str | None = None  # the vision graph's: None (a matching TensorRT engine, else onnxruntime)
    limits: RequestLimits = field(default_factory=lambda: RequestLimits(4, 40_000_000, None, 512))
    engine: EngineOptions = field(default_factory=EngineOptions)
    llm: Path | None = None  # the LLM's checkpoint, where the export's is elsewhere (first start only)
    llm_layers: int | None = None  # a random-weight export's LLM cut to this many layers (first start only)
    llm_dtype: str = "float32"  # the weights written for vLLM (first start only)


def serve(settings: ServeSettings) -> int:
    """Write the LLM folder vLLM loads if the export has none, start the engine, serve until SIGTERM / SIGINT."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    record = read_export(settings.folder)
    model = MODELS.get(record.model.name)
    served_model(model.model_type, model.name)
    if record.method.prompt_conditioned:
        raise UsageError(f"{record.method.name} on {record.model.name} prunes by the prompt's LLM input embeddings, "
                         "which vtp-export serve does not compute yet: serve another method")
    if record.vllm is None:
        from vtp_export.serve.llm_folder import export_vllm_llm

        written = export_vllm_llm(settings.folder, settings.llm, settings.llm_layers, settings.llm_dtype)
        print(f"wrote {settings.folder / written.folder}: the LLM for vLLM ({written.n_layer} layers x "
              f"{written.n_embd}, {written.source})", flush=True)
        record = read_export(settings.folder)
    elif settings.llm is not None or settings.llm_layers is not None:
        raise UsageError(f"{settings.folder} already has its LLM for vLLM ({record.vllm.folder}): --llm and "
                         f"--llm-layers apply when it is written (vtp-export llm {settings.folder} --format vllm)")
    root = check_vllm_folder(settings.folder, record.vllm)
    check_cpu_attention(root)
    return asyncio.run(run_server(settings, root))


async def run_server(settings: ServeSettings, root: Path) -> int:
    import uvicorn
    from vllm.v1.engine.async_llm import AsyncLLM

    args = engine_args(root, settings.folder.name, settings.engine)
    try:
        engine = AsyncLLM.from_engine_args(args)
    except Exception as error:  # vLLM raises many types for configurations it cannot run
        raise UsageError(f"vLLM could not start the engine: {str(error).splitlines()[0][:300]}") from None
    try:
        record = read_export(settings.folder, verify=False)
        config = runtime_config(settings.folder, MODELS.get(record.model.name))
        prompt_side = PromptSide(root, record, config, engine.model_config.max_model_len)
        pipe = Pipeline.from_dir(settings.folder, llm=prompt_side, backend=settings.backend)
        service = ChatService(pipe, engine, settings.folder.name, settings.limits)
        http = uvicorn.Config(make_app(service), host=settings.host, port=settings.port, log_level="warning",
                              lifespan="off", timeout_graceful_shutdown=30)
        server = graceful_server(http)
        print(f"serving {settings.folder} on http://{settings.host}:{settings.port}/v1 as {settings.folder.name!r}: "
              f"{record.model.name} {record.method.label}, {record.keep} tokens per image, vision on "
              f"{pipe.backend.name}, LLM on vLLM (max model length {service.max_model_len})", flush=True)
        await server.serve()
    finally:
        engine.shutdown()
    print("stopped", flush=True)
    return 0


def graceful_server(config: Any) -> Any:
    """uvicorn's server, except that the SIGTERM / SIGINT it shut down on is not raised again after it stops
    (uvicorn raises it, to end the process by the signal's default action): serve() returns, the engine shuts down,
    the process exits 0."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


class ChatService:
    """The requests' path: parse, encode the images (one at a time, off the event loop), lay out, generate."""

    def __init__(self, pipe: Pipeline, engine: Any, name: str, limits: RequestLimits) -> None:
        self.pipe, self.engine, self.name, self.limits = pipe, engine, name, limits
        self.vision = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vision")
        self.max_model_len = engine.model_config.max_model_len
        merge = getattr(pipe.config.vision_config, "spatial_merge_size", 1)
        geometry = pipe.geometry
        self.grid_thw = (1, geometry.grid_rows * merge, geometry.grid_cols * merge)
        self.plugin = SERVED_MODELS[pipe.model.model_type].plugin

    def prepare(self, request: ChatRequest) -> EngineInput:
        """The vision graph over the request's images and the prompt as vLLM takes it (runs on the vision thread)."""
        content = self.pipe.content(request.prompt, request.images)
        question = request.prompt.replace(self.pipe.model.image_token, "").strip()
        vision = self.pipe.encode_images(request.images, [question] * len(request.images))
        rows = range(len(request.images))
        segments = self.pipe.segments(content, vision, rows)
        return engine_input(self.pipe.model, segments, vision, rows, self.pipe.llm.image_token_id,
                            self.grid_thw if self.plugin else None)

    async def start(self, body: Any) -> tuple[ChatRequest, EngineInput, Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request = parse_chat_request(body, self.limits, self.pipe.model.image_token)
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(self.vision, self.prepare, request)
        except PipelineError as error:
            raise BadRequest(str(error)) from None
        room = self.max_model_len - prepared.prompt_tokens
        new_tokens = min(self.limits.max_tokens, room) if request.max_tokens is None else request.max_tokens
        if new_tokens > room or new_tokens < 1:
            raise BadRequest(f"the prompt's {prepared.prompt_tokens} tokens (images included) + max_tokens "
                             f"{max(new_tokens, 1)} exceed the model's context of {self.max_model_len}")
        params = SamplingParams(temperature=request.temperature, max_tokens=new_tokens, seed=request.seed,
                                output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY)
        return request, prepared, params

    async def outputs(self, prepared: EngineInput, params: Any, request_id: str) -> AsyncIterator[Any]:
        async for output in self.engine.generate(prepared.prompt, params, request_id):
            yield output


def make_app(service: ChatService) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="vtp-export serve")

    def refused(message: str, status: int = 400) -> JSONResponse:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.engine.errored:
            return refused("the engine is not running", 503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        model = {"id": service.name, "object": "model", "owned_by": "vtp-export",
                 "max_model_len": service.max_model_len}
        return JSONResponse({"object": "list", "data": [model]})

    @app.post("/v1/chat/completions")
    async def chat(http: Request):
        try:
            body = json.loads(await http.body())
        except (ValueError, UnicodeDecodeError):
            return refused("the request body is not JSON")
        try:
            request, prepared, params = await service.start(body)
        except VtpError as error:
            return refused(str(error))
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        head = {"id": request_id, "created": created, "model": service.name}
        outputs = service.outputs(prepared, params, request_id)
        if request.stream:
            return StreamingResponse(stream_chunks(outputs, head, request, prepared), media_type="text/event-stream")
        try:
            final = [output async for output in outputs][-1]
        except ValueError as error:  # vLLM's own input checks
            return refused(str(error).splitlines()[0][:300])
        except Exception as error:  # the engine failed: a server error, the server's health says so
            return refused(f"the engine failed: {type(error).__name__}", 500)
        completion = final.outputs[0]
        choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                  "finish_reason": completion.finish_reason or "stop"}
        if request.return_token_ids:
            choice["token_ids"] = list(completion.token_ids)
        tokens = len(completion.token_ids)
        return JSONResponse(head | {"object": "chat.completion", "choices": [choice],
                                    "usage": usage(prepared, tokens), "image_tokens": prepared.image_tokens})

    return app


def usage(prepared: EngineInput, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prepared.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prepared.prompt_tokens + completion_tokens}


async def stream_chunks(outputs: AsyncIterator[Any], head: dict, request: ChatRequest,
                        prepared: EngineInput) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: the role, then text deltas, the finish reason, [DONE]."""

    def event(delta: dict, finish: str | None = None, **extra) -> str:
        chunk = head | {"object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}
        return data(chunk)

    yield event({"role": "assistant", "content": ""})
    tokens = 0
    try:
        async for output in outputs:
            completion = output.outputs[0]
            tokens += len(completion.token_ids)
            extra = {"token_ids": list(completion.token_ids)} if request.return_token_ids else {}
            yield event({"content": completion.text}, completion.finish_reason, **extra)
    except ValueError as error:  # vLLM's own input checks
        yield data({"error": {"message": str(error).splitlines()[0][:300], "code": 400}})
    except Exception as error:  # the engine failed: the server's health says so
        yield data({"error": {"message": f"the engine failed: {type(error).__name__}", "code": 500}})
    yield data(head | {"object": "chat.completion.chunk", "choices": [], "usage": usage(prepared, tokens)})
    yield "data: [DONE]\n\n"


def data(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
