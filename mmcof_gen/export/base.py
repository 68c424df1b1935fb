"""What every export format declares: how a trajectory becomes messages, how messages and image paths
become one record, which data file holds the records and how a trainer is pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmcof_gen import resources
from mmcof_gen.schema import Trajectory

LLAMAFACTORY_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}


@dataclass(frozen=True)
class ExportFormat:
    name: str
    data_file: str
    messages: Callable[[Trajectory, "str | None"], list[dict]]
    """role/content messages with one `<image>` placeholder per image; the str replaces the system prompt"""
    record: Callable[[str, list[dict], list], dict]
    """(sample id, messages, images) -> the record written; images are paths, or PNG bytes for parquet"""
    llamafactory_name: str | None = None
    """the dataset name in dataset_info.json, for formats LLaMA-Factory reads"""

    @property
    def usage(self) -> str:
        """How a trainer reads it without silent changes, for the dataset card: `resources/cards/<name>.md`
        (Markdown; `{max_pixels}` and `{cutoff_len}` are filled from the export's token budget)."""
        return (resources.CARDS / f"{self.name}.md").read_text(encoding="utf-8").removesuffix("\n")


def llamafactory_entry(file_name: str) -> dict:
    """A LLaMA-Factory `dataset_info.json` entry (docs/format.md): sharegpt layout, role/content tags."""
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(LLAMAFACTORY_TAGS)}
