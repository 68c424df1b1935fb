"""A chat model's settings (one model for one or more roles), the backends a setting can name and the
caller's settings its refusals name: settings only, so that the pipeline's configuration reads them without
importing a client (layers.py keeps this module below the clients)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from mmcof_gen.conventions import BoxConvention, convention, family_default
from mmcof_gen.schema import one_of


@dataclass(frozen=True)
class ChatBackend:
    """One chat backend: the class built from a `ChatModelConfig` ("module:Class", imported only as one is
    built) and the optional extra it needs."""

    component: str
    extra: str | None = None


@dataclass(frozen=True)
class LimitAdvice:
    """The caller's settings that bound a request, each as a refusal names it after the server's flag: the
    models layer knows the server's side of a limit, only the caller knows its own settings (config.py gives
    the pipeline's roles theirs; a model built elsewhere names the server's side alone)."""

    images: str | None = None  # what lowers the images in one request
    reply_tokens: str = "the max_tokens of each reply"
    conversation: str | None = None  # what shortens a conversation


# The chat backends by name (`backend` of a model): the one registry that config validation, `chat_model()`
# and the extras check read. A new backend is one module and one line here.
CHAT_BACKENDS: dict[str, ChatBackend] = {
    "openai": ChatBackend("mmcof_gen.models.chat.openai_server:OpenAIChat"),
    "transformers": ChatBackend("mmcof_gen.models.chat.in_process:TransformersChat", "hf"),
}


class ChatModelConfig(BaseModel):
    """One model for one or more roles. API keys are never in here: only the name of the env var."""

    model_config = ConfigDict(extra="forbid")

    backend: one_of(CHAT_BACKENDS) = Field(
        "openai", description="a name of CHAT_BACKENDS: openai (an OpenAI-compatible server) or "
                              "transformers (in this process)")
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

    _limit_advice: LimitAdvice = PrivateAttr(default_factory=LimitAdvice)

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

    @property
    def limit_advice(self) -> LimitAdvice:
        """The caller's settings a refusal over a server limit names (`advise`); by default none."""
        return self._limit_advice

    def advise(self, advice: LimitAdvice) -> None:
        """Name the caller's settings in this model's refusals over a server limit: the layer that owns those
        settings (config.py, for the pipeline's roles) passes them in, the models layer knows only the server's."""
        self._limit_advice = advice
