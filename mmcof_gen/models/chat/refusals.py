"""What a server's refusal says, and what to change for it: the error of a request refused for good (a vLLM
limit names the `vllm serve` flag to raise, and the caller's settings that bound the request, which the
caller passes in as the model's `LimitAdvice`)."""

from __future__ import annotations

import json

from mmcof_gen.models.chat.config import LimitAdvice


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


def describe(exc: Exception) -> str:
    """Why a call failed, in one line: the server's own message where it sent one."""
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


def refusal(where: str, exc: Exception, images: int, retries: int, advice: LimitAdvice) -> ChatError:
    """The error of a request the server refused for good; a limit of the server names the settings to change."""
    said = describe(exc)
    if IMAGE_LIMIT in said:
        lower = f", or lower {advice.images}" if advice.images else ""
        return ServerLimitError(f"{where}: {said}; this request had {images} images: start vllm serve with "
                                f"--limit-mm-per-prompt '{{\"image\": {images}}}' or more{lower}", retries)
    if MAX_TOKENS_LIMIT in said:
        return ServerLimitError(f"{where}: {said}; lower {advice.reply_tokens} below the server's --max-model-len, "
                                "or serve with a larger --max-model-len", retries)
    if CONTEXT_LIMIT in said:
        lower = f", or lower {advice.conversation}" if advice.conversation else ""
        return ChatError(f"{where}: {said}; this conversation does not fit the server's context: serve with a larger "
                         f"--max-model-len{lower}", retries)
    return ChatError(f"{where}: {said}", retries)
