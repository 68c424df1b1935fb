"""The Qwen2.5-VL fine-tune repo (QwenLM/Qwen2.5-VL, `qwen-vl-finetune`): `mmcof_qwen.json`, a JSON list
of `{"id", "image": [frame, crop 1, ...], "conversations": [{"from": "human"|"gpt", "value"}]}`.

That loader maps every turn that is not `human` to the assistant and lets the chat template add its
default system prompt, so this format has no system turn: the tool declaration of the CoF system prompt
is not in these samples (the format instructions are, in every user turn). Use sharegpt to train with it.
"""

from __future__ import annotations

from mmcof_gen.export import sharegpt
from mmcof_gen.export.base import ExportFormat

_ROLES = {"user": "human", "assistant": "gpt"}


def record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    turns = [{"from": _ROLES[m["role"]], "value": m["content"]} for m in sample_messages if m["role"] != "system"]
    return {"id": sample_id, "image": images, "conversations": turns}


FORMAT = ExportFormat(
    name="qwen", data_file="mmcof_qwen.json", messages=sharegpt.messages, record=record,
)
