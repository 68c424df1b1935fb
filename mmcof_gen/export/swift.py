"""ms-swift: `mmcof_swift.jsonl`, one `{"messages": [{"role", "content"}], "images": [...]}` per line (its
standard multimodal format; `<image>` placeholders in the text, the system turn kept)."""

from __future__ import annotations

from mmcof_gen.export import sharegpt
from mmcof_gen.export.base import ExportFormat


def record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    return {"messages": sample_messages, "images": images}


FORMAT = ExportFormat(
    name="swift", data_file="mmcof_swift.jsonl", messages=sharegpt.messages, record=record,
    usage=(
        "ms-swift, from this folder (it resolves relative image paths against the current directory; elsewhere "
        "set `ROOT_IMAGE_DIR=<this folder>` or export with `--absolute-paths`, else every image fails to load and "
        "ms-swift ends with a misleading \"increase max_length\"): `MAX_PIXELS={max_pixels} swift sft --model "
        "Qwen/Qwen2.5-VL-7B-Instruct --dataset mmcof_swift.jsonl --max_length {cutoff_len}` (or more). The "
        "`MAX_PIXELS` environment variable, not `--max_pixels`, is what reaches the image processor: without it "
        "frames above 12.8 MP (16384 image tokens) are shrunk and every box moves, with only an INFO line. A "
        "sample longer than `--max_length` is silently replaced by another row. For a local model folder add "
        "`--template qwen2_5_vl`."),
)
