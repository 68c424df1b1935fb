"""A vision-language model in this process (transformers), behind the `ChatModel` protocol; torch and
transformers are imported as one is built."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from mmcof_gen.errors import ConfigError
from mmcof_gen.models.chat.config import ChatModelConfig
from mmcof_gen.models.chat.interface import ChatMessage, Completion


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

