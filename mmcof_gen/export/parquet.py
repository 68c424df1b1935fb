"""Hugging Face `datasets` Parquet: `mmcof.parquet` with `id`, `messages` and `images` (PNG bytes embedded,
typed as `datasets.Image`), so `load_dataset("parquet", data_files=...)` gives PIL images and the dataset
moves as one file. Written in row groups, so memory stays bounded on large exports."""

from __future__ import annotations

from pathlib import Path

from mmcof_gen.export import sharegpt
from mmcof_gen.export.base import ExportFormat
from mmcof_gen.store import AtomicFile

ROW_GROUP = 256


def record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    return {"id": sample_id, "messages": sample_messages,
            "images": [{"bytes": png, "path": None} for png in images]}


class ParquetWriter:
    """Streams records into `path` through a temporary file renamed on `close`."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq
        from datasets import Features, Image, Value

        features = Features({"id": Value("string"),
                             "messages": [{"role": Value("string"), "content": Value("string")}],
                             "images": [Image()]})
        self.schema = features.arrow_schema  # carries the `datasets` feature types in its metadata
        self.path = Path(path)
        self.file = AtomicFile(self.path)
        self.writer = pq.ParquetWriter(self.file.tmp, self.schema)
        self.rows: list[dict] = []
        self.count = 0

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()
        self.file.commit()


FORMAT = ExportFormat(
    name="parquet", data_file="mmcof.parquet", messages=sharegpt.messages, record=record,
    llamafactory_name="mmcof", embeds_images=True, writer=ParquetWriter, extra=("data", ("pyarrow", "datasets")),
)
