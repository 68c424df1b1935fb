"""OpenAI-compatible chat-completions servers (vLLM, SGLang, llama.cpp, OpenAI) over plain aiohttp POSTs:
the request body with each image encoded once, bounded and counted retries, rate limits per endpoint."""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
import weakref

import pydantic_core
from PIL import Image

from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.models.chat.config import ChatModelConfig
from mmcof_gen.models.chat.interface import ChatMessage, Completion
from mmcof_gen.models.chat.rate_limits import endpoint_limiter
from mmcof_gen.models.chat.refusals import ChatError, HTTPStatusError, describe, refusal


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
                        raise refusal(f"{self.config.base_url} ({self.config.model})", exc, images, retries,
                                      self.config.limit_advice) from None
                    if retries >= self.config.max_retries:
                        raise ChatError(f"{self.config.base_url} ({self.config.model}): gave up after {retries} "
                                        f"retries: {describe(exc)}", retries, transient=True) from None
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

