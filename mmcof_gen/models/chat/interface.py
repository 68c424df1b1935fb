"""What every chat backend takes and gives: messages (images before their text), a completion with what it
cost, the `ChatModel` protocol, and `chat_model()`, which builds the backend a config names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from mmcof_gen.extras import require
from mmcof_gen.models.chat.config import CHAT_BACKENDS, ChatModelConfig
from mmcof_gen.schema import ModelCall, named_object


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


def chat_model(config: ChatModelConfig) -> ChatModel:
    """Build the configured backend of CHAT_BACKENDS; its module (transformers' imports) only when it is used."""
    backend = CHAT_BACKENDS[config.backend]
    if backend.extra:
        require(backend.extra, f"backend {config.backend}")
    return named_object(backend.component)(config)
