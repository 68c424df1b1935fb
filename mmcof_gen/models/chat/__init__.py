"""Chat models behind one small async interface, for every role (planner, reader, verifier, summariser,
task writer) and for evaluation: an OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI) or a
transformers model in this process.

Images travel with their message, before its text (the order CoF samples use: `<image>Question: ...`).

    model = chat_model(ChatModelConfig(backend="openai", base_url="http://localhost:8000/v1",
                                       model="Qwen/Qwen2.5-VL-7B-Instruct"))
    reply = await model.complete([ChatMessage("user", "What is written here?", [crop])])

The package by job: `config` (the settings and the backends registry), `interface` (messages, completions,
the protocol and the factory), `openai_server` (the HTTP client) with `rate_limits` and `refusals` (what a
refusal says and what to change), `in_process` (transformers) and `json_replies` (validated, repaired
replies). Importers use the names below.
"""

from mmcof_gen.models.chat.config import ChatModelConfig
from mmcof_gen.models.chat.in_process import chat_conversation
from mmcof_gen.models.chat.interface import ChatMessage, ChatModel, Completion, about_images, chat_model
from mmcof_gen.models.chat.json_replies import ReplyError, complete_json
from mmcof_gen.models.chat.openai_server import OpenAIChat, data_url, openai_messages
from mmcof_gen.models.chat.rate_limits import endpoint_limiter
from mmcof_gen.models.chat.refusals import IMAGE_LIMIT, ChatError, ServerLimitError

__all__ = ["IMAGE_LIMIT", "ChatError", "ChatMessage", "ChatModel", "ChatModelConfig", "Completion", "OpenAIChat",
           "ReplyError", "ServerLimitError", "about_images", "chat_conversation", "chat_model", "complete_json",
           "data_url", "endpoint_limiter", "openai_messages"]
