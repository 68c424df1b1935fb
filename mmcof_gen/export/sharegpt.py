"""LLaMA-Factory ShareGPT (docs/format.md): `mmcof.json`, a JSON list of
`{"id", "messages": [{"role", "content"}], "images": [frame, crop 1, ...]}`, with `dataset_info.json`."""

from __future__ import annotations

from mmcof_gen import cof_format
from mmcof_gen.export.base import ExportFormat
from mmcof_gen.schema import Trajectory


def messages(trajectory: Trajectory, system_prompt: str | None) -> list[dict]:
    return cof_format.trajectory_messages(trajectory, system_prompt or cof_format.SYSTEM_PROMPT)


def record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    return {"id": sample_id, "messages": sample_messages, "images": images}


FORMAT = ExportFormat(
    name="sharegpt", data_file="mmcof.json", messages=messages, record=record, llamafactory_name="mmcof",
    usage=(
        "LLaMA-Factory, in the training YAML: `dataset_dir: <this folder>` (image paths are relative to it), "
        "`dataset: mmcof`, `template: qwen2_vl`, `image_max_pixels: {max_pixels}` (its default, 768x768, would "
        "shrink larger frames and move every box) and `cutoff_len: {cutoff_len}` or more (a shorter one cuts "
        "samples). `mmcof-gen finetune --data <this folder> --emit-llamafactory DIR` writes such a YAML."),
)
