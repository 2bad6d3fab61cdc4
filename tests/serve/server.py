"""A `vtp-export serve` process from the serving venv (.venv-serve, tools/setup_serve_venv.sh), talked to over HTTP on
the loopback, every wait bounded; and the requests the tests send it."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.pictures import picture

REPO = Path(__file__).resolve().parents[2]
SERVE_VENV = REPO / ".venv-serve"
SERVE_BIN = SERVE_VENV / "bin" / "vtp-export"
START_TIMEOUT_S = 420  # engine start: 40-90 s on a quiet 2-core machine, more while other jobs run
STOP_TIMEOUT_S = 90
REQUEST_TIMEOUT_S = 180
# vLLM's CPU engine on a toy LLM: a small fixed KV cache, no compilation (the tests' engines start in a minute)
ENGINE_FLAGS = ["--kv-cache-memory-bytes", str(64 << 20), "--enforce-eager", "--dtype", "float32",
                "--max-num-seqs", "16"]


def serve_venv_reason() -> str | None:
    """Why the serve tests cannot run here (None: they can)."""
    if not SERVE_BIN.is_file():
        return f"needs the serving venv {SERVE_VENV.name} (bash tools/setup_serve_venv.sh)"
    return None


requires_serve_venv = pytest.mark.skipif(serve_venv_reason() is not None, reason=serve_venv_reason() or "")


def data_url(image: np.ndarray, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(images: list[str], text: str, max_tokens: int = 8, **extra) -> dict:
    """A chat-completions body: the images (URLs), then the text, greedy, with the answer's token ids."""
    content = [{"type": "image_url", "image_url": {"url": url}} for url in images] + [{"type": "text", "text": text}]
    return {"model": "served", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "return_token_ids": True, **extra}


def served_ids(server: "ServeProcess", cases: list[tuple[int, ...]], question: str,
               new_tokens: int) -> list[list[int]]:
    """The server's greedy ids for each case (the seeds of its pictures), every reply checked to be a 200."""
    replies = [server.post(chat([data_url(picture(seed)) for seed in seeds], question, new_tokens)) for seeds in cases]
    assert [reply.status for reply in replies] == [200] * len(cases), [reply.text for reply in replies]
    return [reply.body["choices"][0]["token_ids"] for reply in replies]


def pipeline_ids(pipe, cases: list[tuple[int, ...]], question: str, new_tokens: int) -> list[list[int]]:
    """The Pipeline's greedy ids for the same cases."""
    return [pipe.answer(question, [picture(seed) for seed in seeds], max_new_tokens=new_tokens).token_ids
            for seeds in cases]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: dict | None
    text: str


class ServeProcess:
    """`.venv-serve/bin/vtp-export serve FOLDER` on a free loopback port; its output goes to a log file."""

    def __init__(self, folder: Path, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        with log.open("w") as out:
            self.process = subprocess.Popen([str(SERVE_BIN), "serve", str(folder), "--port", str(self.port),
                                             *ENGINE_FLAGS, *flags], stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vtp-export serve exited with {self.process.returncode}:\n{self.tail()}")
            if self.health() == 200:
                return
            time.sleep(1)
        self.kill()
        raise AssertionError(f"vtp-export serve did not answer /health within {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def post(self, body: dict | bytes, path: str = "/v1/chat/completions") -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            text, status = error.read().decode(), error.code
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        return Reply(status, parsed, text)

    def stream(self, body: dict) -> list[dict]:
        """The server-sent events of a streamed request, up to [DONE]."""
        request = urllib.request.Request(f"{self.url}/v1/chat/completions", data=json.dumps(body | {"stream": True})
                                         .encode(), headers={"Content-Type": "application/json"})
        events = []
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            for line in response:
                line = line.decode().strip()
                if line == "data: [DONE]":
                    return events
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
        raise AssertionError("the stream ended without [DONE]")

    def descendants(self) -> list[int]:
        """Processes started under the server (vLLM's engine core and workers), from /proc."""
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        found, frontier = [], [self.process.pid]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier]
            found += children
            frontier = children
        return found

    def terminate(self) -> int:
        """SIGTERM, then the exit code (bounded wait)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
