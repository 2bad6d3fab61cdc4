"""OpenAI chat-completions requests as the server takes them: one user message of text and images (data URLs, or
local paths under the server's image root), checked before anything reaches the vision graph or the engine. Every
failure is a BadRequest with one line (HTTP 400)."""

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from vtp_export.errors import VtpError


class BadRequest(VtpError):
    """A request the server refuses (HTTP 400); the message is one line."""


@dataclass(frozen=True)
class RequestLimits:
    max_images: int  # per request
    max_image_pixels: int  # width x height of one image, checked from its header before it is decoded
    image_root: Path | None  # local paths must lie under it; None: local paths are refused
    max_tokens: int  # the ceiling of max_tokens


@dataclass
class ChatRequest:
    # the user's text; where an image follows text, the model's image placeholder marks each image's place (images
    # before all text are placed by Pipeline.content, with the model's separator)
    prompt: str
    images: list[Image.Image]
    max_tokens: int | None  # None: as many as the context leaves, up to the server's --max-tokens
    temperature: float
    seed: int | None
    stream: bool
    return_token_ids: bool


def parse_chat_request(body: Any, limits: RequestLimits, placeholder: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if len(users) != 1 or len(messages) != 1:
        raise BadRequest("one user message per request: the export's prompt template is a single user turn")
    text, images = parse_content(users[0].get("content"), limits, placeholder)
    return ChatRequest(text, images, max_tokens(body, limits), temperature(body), seed(body),
                       flag(body, "stream"), flag(body, "return_token_ids"))


def parse_content(content: Any, limits: RequestLimits, placeholder: str) -> tuple[str, list[Image.Image]]:
    """The user's text (see ChatRequest.prompt) and the images, in order."""
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise BadRequest("a message's 'content' must be a string or a list of parts")
    pieces, images = [], []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if placeholder in part["text"]:
                raise BadRequest(f"the text holds the image placeholder {placeholder!r}: send images as image_url "
                                 "parts")
            pieces.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise BadRequest("an image_url part needs 'image_url': {'url': ...}")
            if len(images) == limits.max_images:
                raise BadRequest(f"more than {limits.max_images} image{'s' * (limits.max_images != 1)} in one "
                                 "request (the server's --max-images)")
            images.append(open_image(url, limits))
            pieces.append(placeholder)
        else:
            raise BadRequest(f"unsupported content part {str(part)[:60]!r}: only 'text' and 'image_url' parts")
    leading = len(images) and all(p == placeholder for p in pieces[:len(images)])
    if leading:  # images, then text: the Pipeline puts the placeholders and the model's separator before the text
        return "".join(pieces[len(images):]), images
    return "".join(pieces), images


def open_image(url: str, limits: RequestLimits) -> Image.Image:
    """A data URL (base64) or a local path (file:// URL or plain path) under the image root, decoded after its
    header's size is checked."""
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise BadRequest("an image data URL must be data:<type>;base64,<data>")
        try:
            source = io.BytesIO(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest("the image data URL is not valid base64") from None
        what = "the data URL's image"
    else:
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise BadRequest(f"image URL scheme {parsed.scheme!r}: the server reads data URLs and local paths only")
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
        if limits.image_root is None:
            raise BadRequest("local image paths are off on this server (start it with --image-root DIR)")
        resolved = path.resolve()
        if not resolved.is_relative_to(limits.image_root):
            raise BadRequest(f"image {path} is outside the server's image root {limits.image_root}")
        if not resolved.is_file():
            raise BadRequest(f"image {path} does not exist")
        source, what = resolved, f"image {path}"
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise BadRequest(f"{what} has {width}x{height} pixels, more than the server's --max-image-pixels "
                                 f"{limits.max_image_pixels}")
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as error:
        raise BadRequest(f"{what} cannot be read: {str(error).splitlines()[0][:160]}") from None


def max_tokens(body: dict, limits: RequestLimits) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limits.max_tokens:
        raise BadRequest(f"max_tokens must be an integer from 1 to {limits.max_tokens}, got {value!r}")
    return value


def temperature(body: dict) -> float:
    value = body.get("temperature", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadRequest(f"temperature must be a finite number >= 0 (0: greedy), got {value!r}")
    return float(value)


def seed(body: dict) -> int | None:
    value = body.get("seed")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise BadRequest(f"seed must be an integer, got {value!r}")
    return value


def flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, got {value!r}")
    return value
