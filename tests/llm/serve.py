"""llama-cpp-python's OpenAI-compatible server with Gemma 3's chat format (run with the .venv-llm python).

The server's own `gemma` format drops system messages (Gemma 2 had no system role), and the base GGUF carries
no chat template; Gemma 3's template puts the system text at the start of the first user turn, which is what
`gemma3` below does, so the planner's system prompt (its actions and box rules) reaches the model.
Usage: python tests/llm/serve.py SERVER_ARGS... (those of `python -m llama_cpp.server`, plus --chat_format gemma3)
"""

from __future__ import annotations

import sys

from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format
from llama_cpp.server.__main__ import main


@register_chat_format("gemma3")
def gemma3(messages, **kwargs) -> ChatFormatterResponse:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    prompt = ""
    for index, message in enumerate(m for m in messages if m["role"] != "system"):
        text = (system + "\n\n" if index == 0 and system else "") + message["content"]
        prompt += f"<start_of_turn>{'model' if message['role'] == 'assistant' else 'user'}\n{text}<end_of_turn>\n"
    return ChatFormatterResponse(prompt=prompt + "<start_of_turn>model\n", stop="<end_of_turn>")


if __name__ == "__main__":
    sys.exit(main())
