"""What every export format declares: how a trajectory becomes messages, how messages and image paths
become one record, which data file holds the records and how a trainer is pointed at it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mmcof_gen import resources
from mmcof_gen.export.files import RecordWriter
from mmcof_gen.schema import Trajectory

LLAMAFACTORY_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"}


class DataWriter(Protocol):
    """The data file of an export, written one record at a time and put in place on `close`."""

    count: int

    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


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
    embeds_images: bool = False
    """records carry each image's PNG bytes (written in run order) instead of naming image files"""
    writer: Callable[[Path], DataWriter] = RecordWriter
    """opens the data file (a JSON list or JSON lines by its suffix)"""
    extra: tuple[str, tuple[str, ...]] | None = None
    """the optional extra the format needs and the modules of it that are checked, before the folder is made"""
    card: Path | None = None
    """its "How to train" text for the dataset card; none: `resources/cards/<name>.md`"""

    @property
    def usage(self) -> str:
        """How a trainer reads it without silent changes, for the dataset card (Markdown; `{max_pixels}` and
        `{cutoff_len}` are filled from the export's token budget)."""
        card = self.card or resources.CARDS / f"{self.name}.md"
        return card.read_text(encoding="utf-8").removesuffix("\n")


def llamafactory_entry(file_name: str) -> dict:
    """A LLaMA-Factory `dataset_info.json` entry (docs/format.md): sharegpt layout, role/content tags."""
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(LLAMAFACTORY_TAGS)}
