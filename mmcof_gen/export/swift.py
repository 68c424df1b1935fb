"""ms-swift: `mmcof_swift.jsonl`, one `{"messages": [{"role", "content"}], "images": [...]}` per line (its
standard multimodal format; `<image>` placeholders in the text, the system turn kept)."""

from __future__ import annotations

from mmcof_gen.export import sharegpt
from mmcof_gen.export.base import ExportFormat


def record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    return {"messages": sample_messages, "images": images}


FORMAT = ExportFormat(
    name="swift", data_file="mmcof_swift.jsonl", messages=sharegpt.messages, record=record,
)
