"""Chat models behind one small async interface, for every role (planner, reader, verifier, summariser,
task writer) and for evaluation: an OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI) or a
transformers model in this process.

Images travel with their message, before its text (the order CoF samples use: `<image>Question: ...`).

    model = chat_model(ChatModelConfig(backend="openai", base_url="http://localhost:8000/v1",
                                       model="Qwen/Qwen2.5-VL-7B-Instruct"))
    reply = await model.complete([ChatMessage("user", "What is written here?", [crop])])
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import pydantic_core
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmcof_gen.conventions import BoxConvention, convention, family_default
from mmcof_gen.errors import ConfigError
from mmcof_gen.extras import require
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.schema import ModelCall, invalid_fields


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    text: str
    images: list[Image.Image] = field(default_factory=list)


def about_images(system: str, images: list[Image.Image], text: str) -> list[ChatMessage]:
    """The messages of a request about an image: the system text, then the image (a frame, or a crop), then what
    this request asks. The system text is one for every role, so every request about one frame (each role of
    each search on it, and task synthesis' check on it) begins with the same tokens, and a server with prefix
    caching (vLLM) encodes the frame and computes its KV cache once; a conversation appends its crops and
    turns after that prefix, never before (docs/speed.md, "Prefix-stable requests").
    """
    return [ChatMessage("system", system), ChatMessage("user", text, images)]


class Completion(ModelCall):
    """A reply and what its call cost: the fields of `ModelCall` (cost_usd for API models, gpu_seconds for
    in-process ones), whose role only the caller knows."""

    role: str = ""
    text: str
    finish_reason: str = ""    # API models: "length" when the reply was cut at max_tokens

    def as_call(self, role: str) -> ModelCall:
        """What this completion cost, as recorded in the run."""
        return ModelCall(role=role, **self.model_dump(include=set(ModelCall.model_fields) - {"role"}))


class ChatModel(Protocol):
    name: str

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = 512,
        temperature: float = 0.0,
        json_schema: dict | None = None,
    ) -> Completion:
        """One reply; `json_schema` constrains it where the backend supports that (and is validated anyway).
        `max_tokens` None: not sent, the server decides (the release's judge does so)."""
        ...

    async def aclose(self) -> None:
        """Release connections, on the event loop the model was called on."""
        ...


class ChatError(RuntimeError):
    """A call that failed for good (retries spent, or not retryable); `retries` says how many were made.
    `transient`: the server was out of reach or failing (retries spent), so a later run may succeed."""

    def __init__(self, message: str, retries: int = 0, transient: bool = False):
        super().__init__(message)
        self.retries = retries
        self.transient = transient


class ServerLimitError(ChatError):
    """The server refused a request for a limit that every later request would hit too (images per prompt,
    max_tokens over its context): the run stops at the first one, with the setting to change on either side."""


class ChatModelConfig(BaseModel):
    """One model for one or more roles. API keys are never in here: only the name of the env var."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai", "transformers"] = "openai"
    model: str = Field(description="served model name (openai) or hub id / local folder (transformers)")
    vision: bool = Field(True, description="whether the model is sent images; false: a text-only LLM, for the "
                                           "planner (which then reads every observation as text) or the summariser")
    boxes: str | None = Field(None, description="how the model writes boxes: pixels (of the image it is shown), "
                                                "rel1000 (Qwen3-VL's 0-1000) or rel1 (fractions); none: by the "
                                                "model's family (conventions.FAMILIES), else pixels")
    # openai backend
    base_url: str = Field("http://localhost:8000/v1", description="OpenAI-compatible endpoint, ending in /v1")
    api_key_env: str | None = Field(None, description="env var holding the API key; none: a dummy key (vLLM)")
    max_concurrency: int = Field(64, ge=1, description="requests in flight from one worker (a local worker "
                                                       "thread, or a Ray agent actor over all its images)")
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    max_retries: int = Field(4, ge=0, description="retries on 429/5xx/timeouts/connection errors")
    backoff_seconds: float = Field(1.0, ge=0, description="first backoff; doubles per retry, with jitter")
    max_backoff_seconds: float = Field(60.0, ge=0, description="cap of a backoff and of a Retry-After")
    requests_per_minute: int | None = Field(None, ge=1, description="per endpoint, shared by all roles on it")
    tokens_per_minute: int | None = Field(None, ge=1, description="per endpoint, prompt + completion tokens")
    structured_output: Literal["response_format", "vllm", "json_object", "none"] = Field(
        "response_format", description="how json_schema is sent: OpenAI `response_format` (OpenAI, vLLM, SGLang), "
        "vLLM's `structured_outputs` extra body, `response_format: {type: json_object, schema}` (llama.cpp's "
        "servers: llama-cpp-python, llama-server), or not at all (replies are validated either way)")
    price_input_per_million: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    price_output_per_million: float = Field(0.0, ge=0, description="USD per million completion tokens")
    # decoding: sent with every request, so that a server's or checkpoint's generation config (Qwen2.5-VL's
    # repetition_penalty 1.05) never fills them in unseen; the temperature and max_tokens come with each call
    top_p: float | None = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0: off; null: not sent)")
    repetition_penalty: float | None = Field(1.0, gt=0, description="1.0: off; null: not sent (APIs without "
                                                                      "the parameter, such as api.openai.com)")
    # transformers backend
    device: str = Field("auto", description="transformers: torch device, or auto (cuda when there is one)")
    dtype: str = Field("auto", description="transformers: torch dtype name, or auto (the checkpoint's)")

    @field_validator("boxes")
    @classmethod
    def _known_convention(cls, value: str | None) -> str | None:
        return value if value is None else convention(value).name

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    @property
    def box_convention(self) -> BoxConvention:
        """The convention this model's replies are read in and its prompts state."""
        return convention(self.boxes or family_default(self.model))

    def identity(self) -> dict:
        """What changes replies (for the run fingerprint): not the endpoint, limits, prices or device."""
        identity = self.model_dump(include={"backend", "model", "structured_output", "dtype", "top_p",
                                            "repetition_penalty"})
        if self.boxes is not None:  # only when set: the default follows the model's name, already in here
            identity["boxes"] = self.boxes
        if not self.vision:  # only when set, so that the fingerprints of seeing models stay as they were
            identity["vision"] = False
        return identity

    def decoding(self, max_tokens: int | None, temperature: float) -> dict:
        """The decoding parameters of a call, as sent (and as results record them); None is not sent."""
        decoding = {"temperature": temperature, "top_p": self.top_p, "max_tokens": max_tokens,
                    "repetition_penalty": self.repetition_penalty}
        return {name: value for name, value in decoding.items() if value is not None}


def chat_model(config: ChatModelConfig) -> ChatModel:
    """Build the configured backend; transformers is imported only when it is used."""
    if config.backend == "transformers":
        require("hf", "backend transformers")
        return TransformersChat(config)
    return OpenAIChat(config)


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible servers


_IMAGE_PARTS: dict[int, bytes] = {}  # id of a live image -> its content part, as JSON
_URL_START = len(b'{"type":"image_url","image_url":{"url":"')


def image_part(image: Image.Image) -> bytes:
    """The image's content part (`{"type": "image_url", ...}` with its data URL) as JSON bytes.

    Encoded once per image object and kept while the object lives: a frame goes out with most calls of
    every search on it, a crop with every later call of its conversation, and each request splices these
    bytes in (`OpenAIChat.request_bytes`) instead of encoding the PNG, base64 and JSON again. Frames and
    crops are never drawn on once made, so a kept part cannot go stale. Fast compression: the server
    decodes it at once. Base64 needs no JSON escaping, so the part is written as it is.
    """
    part = _IMAGE_PARTS.get(id(image))
    if part is None:
        png = base64.b64encode(image_to_png_bytes(image, compress_level=1))
        part = b'{"type":"image_url","image_url":{"url":"data:image/png;base64,' + png + b'"}}'
        _IMAGE_PARTS[id(image)] = part
        weakref.finalize(image, _IMAGE_PARTS.pop, id(image), None)
    return part


def data_url(image: Image.Image) -> str:
    """The exact pixels as a base64 PNG data URL (lossless: the model sees what the sample stores)."""
    return image_part(image)[_URL_START:-3].decode("ascii")


def openai_messages(messages: list[ChatMessage]) -> list[dict]:
    """Chat-completions messages; a message with images becomes content parts, images first."""
    out = []
    for message in messages:
        if not message.images:
            out.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in message.images]
        parts.append({"type": "text", "text": message.text})
        out.append({"role": message.role, "content": parts})
    return out


class RateLimiter:
    """Sliding one-minute windows of requests and tokens, shared by every client of one endpoint.

    Thread-safe (a worker thread runs its own event loop), so waiting is an `asyncio.sleep` outside the lock.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None):
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def _wait(self, now: float) -> float:
        while self._requests and now - self._requests[0] >= 60:
            self._requests.popleft()
        while self._tokens and now - self._tokens[0][0] >= 60:
            self._tokens.popleft()
        waits = [0.0]
        if self.requests_per_minute and len(self._requests) >= self.requests_per_minute:
            waits.append(60 - (now - self._requests[0]))
        if self.tokens_per_minute and sum(n for _, n in self._tokens) >= self.tokens_per_minute:
            waits.append(60 - (now - self._tokens[0][0]))
        return max(waits)

    async def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._wait(now)
                if wait <= 0:
                    self._requests.append(now)
                    return
            await asyncio.sleep(wait)

    def record_tokens(self, tokens: int) -> None:
        with self._lock:
            self._tokens.append((time.monotonic(), tokens))


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def endpoint_limiter(config: ChatModelConfig) -> RateLimiter:
    """The one limiter of an endpoint (base URL), made by the first role that uses it."""
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(config.base_url)
        if limiter is None:
            limiter = _LIMITERS[config.base_url] = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        return limiter


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The openai SDK's default TLS context (its CA certificates), made once per process: loading them takes
    about 20 ms, which each client (one per worker event loop, and Ray makes a worker per image in flight) paid
    again."""
    import httpx2

    return httpx2.create_ssl_context()


class HTTPStatusError(Exception):
    """The server answered with an error status; `response` carries its headers (Retry-After), `body` what it
    said (the `error` object of an OpenAI-style error body, else the body)."""

    def __init__(self, response, raw: bytes):
        self.response = response
        self.status_code = response.status
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.body = body.get("error", body) if isinstance(body, dict) else body
        self.message = f"Error code: {self.status_code} - {body}"
        super().__init__(self.message)


class OpenAIChat:
    """Any OpenAI-compatible chat-completions server, with bounded, counted retries.

    Requests are plain aiohttp POSTs of a body made by `request_bytes`: with the openai SDK's request building,
    JSON encoding and response objects a call cost 7x the CPU of the POST itself, and one event loop serves
    every search of a worker (docs/speed.md, "Model client"). Every retry is made here and counted into
    `Completion.retries` (and thus into the trajectory's provenance). The HTTP session and the concurrency
    semaphore belong to one event loop; a call from another loop (another worker thread, another
    `asyncio.run`) gets its own.
    """

    RETRY_STATUS = {408, 409, 429}

    def __init__(self, config: ChatModelConfig):
        self.config = config
        self.name = config.name
        self.limiter = endpoint_limiter(config)
        self._api_key = "EMPTY"
        if config.api_key_env:
            if not os.environ.get(config.api_key_env):
                raise ConfigError(f"model {config.model}: environment variable {config.api_key_env} (api_key_env) "
                                  "is not set; export it with the API key")
            self._api_key = os.environ[config.api_key_env]
        # aiohttp and the TLS context are made as the model is built (a Ray actor starting), not by the first
        # call of each worker thread at once, all queued on the import lock
        import aiohttp  # noqa: F401

        _tls_context()
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session = None
        self._closer = None
        self._semaphore: asyncio.Semaphore | None = None

    async def _bind(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import aiohttp

            # as many kept-alive connections as requests in flight; the timeout is per request, retries apart
            pool = aiohttp.TCPConnector(limit=self.config.max_concurrency, ssl=_tls_context())
            self._session = aiohttp.ClientSession(
                connector=pool, timeout=aiohttp.ClientTimeout(total=self.config.timeout), proxy=_env_proxy(self._url),
                headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"})
            self._closer = _closed_with_loop(self._session)
            await anext(self._closer)
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._loop = loop
        return self._session, self._semaphore

    async def aclose(self) -> None:
        """Close the session of the running loop: its connections belong to that loop (see ImageWorker.close)."""
        if self._closer is not None:
            await self._closer.aclose()
            self._loop = self._session = self._closer = self._semaphore = None

    def request(self, messages: list[ChatMessage], max_tokens: int | None, temperature: float,
                json_schema: dict | None) -> dict:
        """The JSON body of the chat-completions request, as sent (pure)."""
        body: dict = {"model": self.config.model, "messages": openai_messages(messages),
                      **self.config.decoding(max_tokens, temperature)}
        if json_schema is not None and self.config.structured_output == "response_format":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": json_schema.get("title", "reply"), "schema": json_schema}}
        elif json_schema is not None and self.config.structured_output == "vllm":
            body["structured_outputs"] = {"json": json_schema}
        elif json_schema is not None and self.config.structured_output == "json_object":
            body["response_format"] = {"type": "json_object", "schema": json_schema}
        return body

    def request_bytes(self, messages: list[ChatMessage], max_tokens: int | None, temperature: float,
                      json_schema: dict | None) -> bytes:
        """`request` as the JSON bytes sent: each image part as encoded once (`image_part`), the rest by
        pydantic's JSON encoder (Rust, a tenth of the standard library's time), all copied once (one join)."""
        head = self.request([], max_tokens, temperature, json_schema)
        del head["messages"]
        pieces = [pydantic_core.to_json(head)[:-1], b',"messages":[']
        for number, message in enumerate(messages):
            if number:
                pieces.append(b",")
            if not message.images:
                pieces.append(pydantic_core.to_json({"role": message.role, "content": message.text}))
                continue
            pieces += [b'{"role":', pydantic_core.to_json(message.role), b',"content":[']
            for image in message.images:
                pieces += [image_part(image), b","]
            pieces += [pydantic_core.to_json({"type": "text", "text": message.text}), b"]}"]
        pieces.append(b"]}")
        return b"".join(pieces)

    def _retryable(self, exc: Exception) -> bool:
        import aiohttp

        if isinstance(exc, HTTPStatusError):
            return exc.status_code in self.RETRY_STATUS or exc.status_code >= 500
        # connection errors, timeouts, and bodies that are cut short, not JSON or not a completion
        return isinstance(exc, (aiohttp.ClientError, TimeoutError, ValueError))

    def _backoff(self, retry: int, exc: Exception) -> float:
        server = _retry_after(exc)
        if server is not None and server >= 0:
            return min(server, self.config.max_backoff_seconds)
        base = min(self.config.backoff_seconds * 2 ** retry, self.config.max_backoff_seconds)
        return base * (0.5 + random.random() / 2)

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int | None = 512, temperature: float = 0.0,
                       json_schema: dict | None = None) -> Completion:
        session, semaphore = await self._bind()
        body = self.request_bytes(messages, max_tokens, temperature, json_schema)
        start = time.perf_counter()
        retries = 0
        async with semaphore:
            while True:
                await self.limiter.acquire()
                try:
                    async with session.post(self._url, data=body) as answer:
                        raw = await answer.read()
                        if answer.status >= 400:
                            raise HTTPStatusError(answer, raw)
                    response = pydantic_core.from_json(raw)
                    text = _reply_text(response)
                    break
                except Exception as exc:
                    if not self._retryable(exc):
                        images = sum(len(message.images) for message in messages)
                        raise _refusal(f"{self.config.base_url} ({self.config.model})", exc, images, retries) from None
                    if retries >= self.config.max_retries:
                        raise ChatError(f"{self.config.base_url} ({self.config.model}): gave up after {retries} "
                                        f"retries: {_describe(exc)}", retries, transient=True) from None
                    await asyncio.sleep(self._backoff(retries, exc))
                    retries += 1
        usage = response.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens") or 0
        completion_tokens = usage.get("completion_tokens") or 0
        self.limiter.record_tokens(prompt_tokens + completion_tokens)
        cost = (prompt_tokens * self.config.price_input_per_million
                + completion_tokens * self.config.price_output_per_million) / 1e6
        return Completion(text=text, model=response.get("model") or self.config.model, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, seconds=round(time.perf_counter() - start, 4),
                          retries=retries, cost_usd=cost,
                          finish_reason=response["choices"][0].get("finish_reason") or "")


def _env_proxy(url: str) -> str | None:
    """The HTTP(S)_PROXY that applies to `url` (none when NO_PROXY names its host), read once per session: the
    openai SDK's HTTP library honoured these, and aiohttp's own `trust_env` reads them, and .netrc, in a thread
    on every request (nearly doubling the client's CPU per call)."""
    parts = urllib.parse.urlsplit(url)
    return None if urllib.request.proxy_bypass(parts.hostname or "") else urllib.request.getproxies().get(parts.scheme)


async def _closed_with_loop(session):
    """Held at its `yield` while the session's loop lives: `asyncio.run` closes its loop's async generators
    before the loop itself, and so closes the session on its own loop when the caller never calls `aclose`
    (evaluation's runs); left to the garbage collector, an open session logs "Unclosed client session"."""
    try:
        yield
    finally:
        await session.close()


class NotACompletion(ValueError):
    """A 200 reply whose JSON is not a chat completion (a faulty server or proxy): retried like a 5xx, never
    passed on as an empty answer that would cost the model a repair attempt."""


def _reply_text(response) -> str:
    choices = response.get("choices") if isinstance(response, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(content, (str, type(None))):
        raise NotACompletion("the reply is not a chat completion (no choices[0].message with text content)")
    return content or ""


def _describe(exc: Exception) -> str:
    if isinstance(exc, HTTPStatusError):
        # the server's own message (vLLM: {"error": {"message": ...}}), not a dump of the whole body
        said = exc.body.get("message") if isinstance(exc.body, dict) else None
        return f"HTTP {exc.status_code}: {said if isinstance(said, str) else exc.message}"
    if isinstance(exc, TimeoutError):
        return "request timed out"
    return f"{type(exc).__name__}: {exc}"


# What vLLM says when a request is over one of its limits (vllm serve flags) -> what to change on our side.
IMAGE_LIMIT = "image(s) may be provided in one prompt"
MAX_TOKENS_LIMIT = "cannot be greater than max_model_len"
CONTEXT_LIMIT = "maximum context length"


def _refusal(where: str, exc: Exception, images: int, retries: int) -> ChatError:
    """The error of a request the server refused for good; a limit of the server names the settings to change."""
    said = _describe(exc)
    if IMAGE_LIMIT in said:
        return ServerLimitError(
            f"{where}: {said}; this request had {images} images: start vllm serve with --limit-mm-per-prompt "
            f"'{{\"image\": {images}}}' or more, or lower agent.max_zooms (a search sends up to max_zooms + 2 "
            "images in one request)", retries)
    if MAX_TOKENS_LIMIT in said:
        return ServerLimitError(f"{where}: {said}; lower agent.reply_tokens (the max_tokens of each reply) below the "
                                "server's --max-model-len, or serve with a larger --max-model-len", retries)
    if CONTEXT_LIMIT in said:
        return ChatError(f"{where}: {said}; this conversation does not fit the server's context: serve with a larger "
                         "--max-model-len, or lower resolutions or agent.max_steps", retries)
    return ChatError(f"{where}: {said}", retries)


# ---------------------------------------------------------------------------------------------------------
# transformers, in this process


def chat_conversation(messages: list[ChatMessage]) -> list[dict]:
    """The messages as a processor's chat template takes them: each message's images, then its text."""
    return [{"role": m.role, "content": [{"type": "image", "image": image} for image in m.images]
             + [{"type": "text", "text": m.text}]} for m in messages]


class TransformersChat:
    """A vision-language model in this process (`AutoModelForImageTextToText` + `AutoProcessor`).

    Greedy unless a temperature is given. `generate` runs in a thread under a lock (one model, one
    generate at a time), so the event loop keeps serving other tasks. `json_schema` is not enforced
    here (no constrained decoding); callers validate replies anyway.
    """

    def __init__(self, config: ChatModelConfig):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config = config
        self.name = config.name
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(config.model)
            self.model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype).to(device).eval()
        except OSError as exc:
            where = "local folder" if Path(config.model).exists() else "hub id (not in the local cache, offline?)"
            raise ConfigError(f"cannot load transformers model {config.model!r} ({where}): "
                              f"{str(exc).splitlines()[0]}; download it with `hf download {config.model}` "
                              "or point `model` at a local folder") from None
        self.device = device
        self._lock = threading.Lock()

    def _generate(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Completion:
        import torch

        conversation = chat_conversation(messages)
        inputs = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt").to(self.device)
        # every parameter explicit: the checkpoint's generation_config.json (Qwen2.5-VL: repetition_penalty
        # 1.05, top_k 1) would otherwise apply to whatever is not given here
        sampling = {"do_sample": temperature > 0, "repetition_penalty": self.config.repetition_penalty or 1.0}
        if temperature > 0:
            sampling |= {"temperature": temperature, "top_p": self.config.top_p or 1.0, "top_k": 0}
        with self._lock:
            start = time.perf_counter()
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=max_tokens, **sampling)
            seconds = time.perf_counter() - start
        prompt_tokens = inputs["input_ids"].shape[1]
        new_tokens = output[0, prompt_tokens:]
        text = self.processor.decode(new_tokens, skip_special_tokens=True)
        on_gpu = self.device != "cpu"
        return Completion(text=text, model=self.config.model, prompt_tokens=int(prompt_tokens),
                          completion_tokens=int(new_tokens.shape[0]), seconds=round(seconds, 4),
                          gpu_seconds=round(seconds, 4) if on_gpu else 0.0)

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int = 512, temperature: float = 0.0,
                       json_schema: dict | None = None) -> Completion:
        return await asyncio.to_thread(self._generate, messages, max_tokens, temperature)

    async def aclose(self) -> None:
        """Nothing to release: the model goes with this object."""


# ---------------------------------------------------------------------------------------------------------
# JSON replies

Reply = TypeVar("Reply", bound=BaseModel)


class ReplyError(ValueError):
    """A reply that stayed malformed after the repair attempt; `completions` are the calls it cost."""

    def __init__(self, message: str, completions: list[Completion]):
        super().__init__(message)
        self.completions = completions


def parse_reply(text: str, schema: type[Reply]) -> Reply:
    """A reply as `schema`; a fenced ```json block is accepted (models add them even when told not to)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    return schema.model_validate_json(text)


@functools.cache
def _json_schema(schema: type[Reply]) -> dict:
    """Built once per reply model: pydantic regenerates it on every call otherwise (measurable at 300 calls/s)."""
    return schema.model_json_schema()


async def complete_json(model: ChatModel, messages: list[ChatMessage], schema: type[Reply], *,
                        max_tokens: int = 512, temperature: float = 0.0) -> tuple[Reply, list[Completion]]:
    """A reply constrained by (where the backend can) and validated against `schema`.

    A malformed reply gets one repair attempt: the model sees its reply and the validation error.
    Raises ReplyError (with the completions spent) when the repair fails too; ChatError when a call fails.
    """
    json_schema = _json_schema(schema)
    completions = []
    conversation = list(messages)
    for attempt in range(2):
        completion = await model.complete(conversation, max_tokens=max_tokens, temperature=temperature,
                                          json_schema=json_schema)
        completions.append(completion)
        try:
            return parse_reply(completion.text, schema), completions
        except ValidationError as exc:
            problem = invalid_fields(exc, limit=3, whole="reply")
        if completion.finish_reason == "length":  # a repair would be cut at the same length: not asked
            raise ReplyError(f"reply cut at {max_tokens} tokens (finish_reason length, agent.reply_tokens) before "
                             f"it was complete: {problem}", completions)
        conversation = conversation + [
            ChatMessage("assistant", completion.text),
            ChatMessage("user", f"Your reply is not valid: {problem}. Reply again with only a JSON object "
                                f"that follows this schema: {json.dumps(json_schema)}"),
        ]
    raise ReplyError(f"malformed reply after one repair attempt: {problem}", completions)
