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
)
