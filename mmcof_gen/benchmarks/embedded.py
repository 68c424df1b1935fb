"""Benchmark files that carry their images inline (VLMEvalKit-style TSV, parquet), read without holding them.

A VLMEvalKit TSV has one row per question with the image base64 in its `image` column; a row whose `image`
is short (at most 64 characters) holds the `index` of the row whose image it shares. Files run to gigabytes
(HR-Bench 8K), so a scan keeps each row's other columns and only WHERE its image is (byte offset and length
in the TSV, row group and row in a parquet file); `local_image` decodes one image when its episode starts
into a private temporary folder (never beside the user's files) and removes it when the episode ends.

    rows = tsv_rows(Path("hr_bench_4k.tsv"))           # [{"index": "0", "question": ..., "image": EmbeddedImage}]
    with local_image(rows[0]["image"]) as path: ...    # a PNG/JPEG file that exists for the block only
"""

from __future__ import annotations

import base64
import binascii
import csv
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mmcof_gen.tasks.vstar import BenchError, BenchItem

INDEX_REFERENCE = 64  # VLMEvalKit: an `image` of at most 64 characters is the index of another row


@dataclass(frozen=True)
class EmbeddedImage:
    """Where one image lies inside a benchmark file: a TSV byte range (base64) or a parquet row."""

    file: Path
    offset: int = 0  # TSV: byte offset of the base64 text; parquet: row group
    length: int = 0  # TSV: its length in bytes; parquet: row within the group
    column: str = "image"

    def read(self) -> bytes:
        if self.file.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            value = pq.ParquetFile(self.file).read_row_group(self.offset, columns=[self.column])[0][self.length].as_py()
            if isinstance(value, dict):  # a Hugging Face Image feature: {"bytes": ..., "path": ...}
                value = value.get("bytes")
            if isinstance(value, bytes):
                return value
            text = (value or "").encode("ascii", "replace")
        else:
            with self.file.open("rb") as handle:
                handle.seek(self.offset)
                text = handle.read(self.length)
        try:
            return base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{self.file}: the image at byte {self.offset} is not base64 ({exc})") from None


@contextmanager
def local_image(image: Path | EmbeddedImage) -> Iterator[Path]:
    """A file path for the image: the path itself, or an embedded image decoded into a temporary folder."""
    if not isinstance(image, EmbeddedImage):
        yield image
        return
    folder = Path(tempfile.mkdtemp(prefix="mmcof-bench-"))
    try:
        path = folder / "image"
        path.write_bytes(image.read())
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tsv_rows(path: Path, image_column: str = "image") -> list[dict]:
    """Every row of a VLMEvalKit TSV as a dict of its columns, `image` an EmbeddedImage (index references
    resolved to the row they name). One row is in memory at a time, its image never decoded or parsed."""
    rows, where = [], {}
    with path.open("rb") as handle:
        header = next(csv.reader([handle.readline().decode("utf-8-sig").rstrip("\r\n")], delimiter="\t"))
        if image_column not in header:
            raise BenchError(f"--bench {path}: the TSV has no {image_column!r} column (columns: {', '.join(header)})")
        number = 1
        while True:
            start = handle.tell()
            raw = handle.readline()
            while raw.count(b'"') % 2:  # a quoted field spans lines
                more = handle.readline()
                if not more:
                    break
                raw += more
            if not raw:
                break
            number += 1
            if raw.strip():
                row, span = _tsv_row(path, number, header, header.index(image_column), raw.rstrip(b"\r\n"))
                if span is not None:
                    row[image_column] = EmbeddedImage(path, start + span[0], span[1])
                    where[row.get("index", str(number))] = row[image_column]
                rows.append(row)
    for row in rows:
        if not isinstance(row[image_column], EmbeddedImage):
            shared = where.get(row[image_column].strip())
            if shared is None:
                raise BenchError(f"--bench {path}: row {row.get('index')!r} has image {row[image_column]!r}, which is "
                                 "neither an image nor the index of a row with one")
            row[image_column] = shared
    return rows


def _tsv_row(path: Path, number: int, header: list[str], image: int, line: bytes) -> tuple[dict, tuple | None]:
    """One TSV line: its columns (the image's text only when it is an index reference) and the (offset,
    length) of its image text within the line (None for a reference). Base64 holds no tab or quote, so
    the line is split on tabs; a line with quotes (a question holding a tab or a newline) goes through csv."""
    if b'"' in line:
        csv.field_size_limit(sys.maxsize)
        fields = next(csv.reader([line.decode("utf-8")], delimiter="\t"))
        parts = [field.encode("utf-8") for field in fields]
        offsets = [line.index(parts[image])] if image < len(parts) else []
    else:
        parts = line.split(b"\t")
        offsets = [sum(len(part) + 1 for part in parts[:image])]
    if len(parts) != len(header):
        raise BenchError(f"--bench {path}:{number}: {len(parts)} columns, the header has {len(header)}; "
                         "the TSV is cut or malformed")
    size = len(parts[image])
    row = {name: part.decode("utf-8") for name, part in zip(header, parts) if name != header[image]}
    if size > INDEX_REFERENCE:
        return row, (offsets[0], size)
    row[header[image]] = parts[image].decode("utf-8")
    return row, None


def parquet_rows(path: Path, image_column: str = "image") -> list[dict]:
    """The rows of a parquet benchmark file like `tsv_rows`: the image column is read only when needed."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    columns = [name for name in file.schema_arrow.names if name != image_column]
    if image_column not in file.schema_arrow.names:
        raise BenchError(f"--bench {path}: the parquet file has no {image_column!r} column")
    rows = []
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=columns).to_pylist()
        rows += [{**{k: "" if v is None else str(v) for k, v in row.items()},
                  image_column: EmbeddedImage(path, group, i, image_column)} for i, row in enumerate(table)]
    return rows


def table_rows(path: Path) -> list[dict]:
    """The rows of a `.tsv` or `.parquet` benchmark file."""
    return parquet_rows(path) if path.suffix.lower() == ".parquet" else tsv_rows(path)


def table_columns(path: Path) -> list[str]:
    """The column names of a `.tsv` or `.parquet` file, from its header alone (empty if unreadable)."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        with path.open("rb") as handle:
            return next(csv.reader([handle.readline(1 << 16).decode("utf-8-sig").rstrip("\r\n")], delimiter="\t"))
    except Exception:  # noqa: BLE001 - any unreadable file is simply not this layout
        return []


def row_item(path: Path, row: dict, bench: str, category: str, **fields) -> BenchItem:
    """A VLMEvalKit multiple-choice row (`question`, options in columns `A`..`E`, `answer` a letter) as an item."""
    letters = [letter for letter in "ABCDEFGH" if (row.get(letter) or "").strip() not in ("", "nan", "None")]
    options = [row[letter].strip() for letter in letters]
    label = (row.get("answer") or "").strip()
    if label not in letters:
        raise BenchError(f"--bench {path}: row {row.get('index')!r} has answer {label!r}, not one of its option "
                         f"letters {''.join(letters) or '(none)'}")
    return BenchItem(id=str(row.get("index", "")).strip(), image=row["image"], question=row["question"].strip(),
                     options=options, answer=options[letters.index(label)], category=category, label=label,
                     bench=bench, **fields)
