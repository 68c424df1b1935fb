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
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcof_gen.extras import require
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.schema import ModelCall, invalid_fields


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    text: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    cost_usd: float = 0.0      # API models: tokens times the configured prices
    gpu_seconds: float = 0.0   # in-process models: wall seconds of generate on the accelerator
    finish_reason: str = ""    # API models: "length" when the reply was cut at max_tokens

    def as_call(self, role: str) -> ModelCall:
        """What this completion cost, as recorded in the run."""
        return ModelCall(role=role, model=self.model, prompt_tokens=self.prompt_tokens,
                         completion_tokens=self.completion_tokens, seconds=self.seconds, retries=self.retries,
                         cost_usd=self.cost_usd, gpu_seconds=self.gpu_seconds)


class ChatModel(Protocol):
    name: str

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        json_schema: dict | None = None,
    ) -> Completion:
        """One reply; `json_schema` constrains it where the backend supports that (and is validated anyway)."""
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
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0: off)")
    repetition_penalty: float | None = Field(1.0, gt=0, description="1.0: off; null: not sent (APIs without "
                                                                      "the parameter, such as api.openai.com)")
    # transformers backend
    device: str = Field("auto", description="transformers: torch device, or auto (cuda when there is one)")
    dtype: str = Field("auto", description="transformers: torch dtype name, or auto (the checkpoint's)")

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def identity(self) -> dict:
        """What changes replies (for the run fingerprint): not the endpoint, limits, prices or device."""
        identity = self.model_dump(include={"backend", "model", "structured_output", "dtype", "top_p",
                                            "repetition_penalty"})
        if not self.vision:  # only when set, so that the fingerprints of seeing models stay as they were
            identity["vision"] = False
        return identity

    def decoding(self, max_tokens: int, temperature: float) -> dict:
        """The decoding parameters of a call, as sent (and as results record them)."""
        decoding = {"temperature": temperature, "top_p": self.top_p, "max_tokens": max_tokens}
        if self.repetition_penalty is not None:
            decoding["repetition_penalty"] = self.repetition_penalty
        return decoding


def chat_model(config: ChatModelConfig) -> ChatModel:
    """Build the configured backend; transformers is imported only when it is used."""
    if config.backend == "transformers":
        require("hf", "backend transformers")
        return TransformersChat(config)
    return OpenAIChat(config)


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible servers


_DATA_URLS: dict[int, str] = {}  # id of a live image -> its data URL


def data_url(image: Image.Image) -> str:
    """The exact pixels as a base64 PNG data URL (lossless: the model sees what the sample stores).

    Encoded once per image object and kept while the object lives: a frame goes out with most calls of
    every search on it, a crop with every later call of its conversation. Frames and crops are never
    drawn on once made, so a kept URL cannot go stale. Fast compression: the server decodes it at once.
    """
    url = _DATA_URLS.get(id(image))
    if url is None:
        url = "data:image/png;base64," + base64.b64encode(image_to_png_bytes(image, compress_level=1)).decode("ascii")
        _DATA_URLS[id(image)] = url
        weakref.finalize(image, _DATA_URLS.pop, id(image), None)
    return url


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
    """The HTTP library's default TLS context, made once per process: loading the CA certificates takes about
    20 ms, which each client (one per worker event loop, and Ray makes a worker per image in flight) paid again."""
    import httpx2

    return httpx2.create_ssl_context()


class OpenAIChat:
    """Any OpenAI-compatible chat-completions server, with bounded, counted retries.

    The openai client's own retries are off so that every retry is counted into `Completion.retries`
    (and thus into the trajectory's provenance). The client and the concurrency semaphore belong to
    one event loop; a call from another loop (another worker thread, another `asyncio.run`) gets its own.
    """

    RETRY_STATUS = {408, 409, 429}

    def __init__(self, config: ChatModelConfig):
        self.config = config
        self.name = config.name
        self.limiter = endpoint_limiter(config)
        self._api_key = "EMPTY"
        if config.api_key_env:
            if not os.environ.get(config.api_key_env):
                from mmcof_gen.config import ConfigError  # config.py imports this module

                raise ConfigError(f"model {config.model}: environment variable {config.api_key_env} (api_key_env) "
                                  "is not set; export it with the API key")
            self._api_key = os.environ[config.api_key_env]
        # the SDK (0.25 s to import) and the TLS context are made as the model is built (a Ray actor starting),
        # not by the first call of each worker thread at once, all queued on the import lock
        import openai  # noqa: F401

        _tls_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None

    def _bind(self):
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import httpx2
            import openai

            # as many kept-alive connections as requests in flight: past the SDK's 100, every request beyond
            # would open a new connection and close it after
            pool = httpx2.Limits(max_connections=None, max_keepalive_connections=self.config.max_concurrency)
            http = openai.DefaultAsyncHttpxClient(verify=_tls_context(), limits=pool)
            self._client = openai.AsyncOpenAI(base_url=self.config.base_url, api_key=self._api_key,
                                              timeout=self.config.timeout, max_retries=0, http_client=http)
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    async def aclose(self) -> None:
        """Close the client of the running loop: its connections belong to that loop (see ImageWorker.close)."""
        if self._client is not None:
            await self._client.close()
            self._loop = self._client = self._semaphore = None

    def request(self, messages: list[ChatMessage], max_tokens: int, temperature: float,
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

    def _retryable(self, exc: Exception) -> bool:
        import openai

        if isinstance(exc, openai.APIStatusError):
            return exc.status_code in self.RETRY_STATUS or exc.status_code >= 500
        # connection errors, timeouts, and bodies that are cut short or not JSON
        return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError,
                                NotACompletion))

    def _backoff(self, retry: int, exc: Exception) -> float:
        server = _retry_after(exc)
        if server is not None and server >= 0:
            return min(server, self.config.max_backoff_seconds)
        base = min(self.config.backoff_seconds * 2 ** retry, self.config.max_backoff_seconds)
        return base * (0.5 + random.random() / 2)

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int = 512, temperature: float = 0.0,
                       json_schema: dict | None = None) -> Completion:
        client, semaphore = self._bind()
        body = self.request(messages, max_tokens, temperature, json_schema)
        start = time.perf_counter()
        retries = 0
        async with semaphore:
            while True:
                await self.limiter.acquire()
                try:
                    # the body goes as extra_body, which the SDK sends as it is: given as arguments, every
                    # message part and the schema would be walked against the SDK's TypedDicts first
                    # (a fifth of the client's CPU per call at 300 calls/s), to the same JSON
                    response = await client.chat.completions.create(model=self.config.model, messages=[],
                                                                    extra_body=body)
                    text = _reply_text(response)
                    break
                except Exception as exc:
                    if not self._retryable(exc):
                        raise _refusal(f"{self.config.base_url} ({self.config.model})", exc, body, retries) from None
                    if retries >= self.config.max_retries:
                        raise ChatError(f"{self.config.base_url} ({self.config.model}): gave up after {retries} "
                                        f"retries: {_describe(exc)}", retries, transient=True) from None
                    await asyncio.sleep(self._backoff(retries, exc))
                    retries += 1
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        self.limiter.record_tokens(prompt_tokens + completion_tokens)
        cost = (prompt_tokens * self.config.price_input_per_million
                + completion_tokens * self.config.price_output_per_million) / 1e6
        return Completion(text=text, model=response.model or self.config.model, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, seconds=round(time.perf_counter() - start, 4),
                          retries=retries, cost_usd=cost, finish_reason=response.choices[0].finish_reason or "")


class NotACompletion(ValueError):
    """A 200 reply whose JSON is not a chat completion (a faulty server or proxy): retried like a 5xx, never
    passed on as an empty answer that would cost the model a repair attempt."""


def _reply_text(response) -> str:
    choices = getattr(response, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    content = getattr(message, "content", None)
    if message is None or not isinstance(content, (str, type(None))):
        raise NotACompletion("the reply is not a chat completion (no choices[0].message with text content)")
    return content or ""


def _describe(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        # the server's own message (vLLM: {"error": {"message": ...}}), not the SDK's dump of the whole body
        said = exc.body.get("message") if isinstance(exc.body, dict) else None
        return f"HTTP {exc.status_code}: {said if isinstance(said, str) else exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    return f"{type(exc).__name__}: {exc}"


# What vLLM says when a request is over one of its limits (vllm serve flags) -> what to change on our side.
IMAGE_LIMIT = "image(s) may be provided in one prompt"
MAX_TOKENS_LIMIT = "cannot be greater than max_model_len"
CONTEXT_LIMIT = "maximum context length"


def _refusal(where: str, exc: Exception, body: dict, retries: int) -> ChatError:
    """The error of a request the server refused for good; a limit of the server names the settings to change."""
    said = _describe(exc)
    if IMAGE_LIMIT in said:
        images = sum(part.get("type") == "image_url" for message in body["messages"]
                     if isinstance(message["content"], list) for part in message["content"])
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
            from mmcof_gen.config import ConfigError  # config.py imports this module

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
            sampling |= {"temperature": temperature, "top_p": self.config.top_p, "top_k": 0}
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
