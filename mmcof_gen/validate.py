"""`mmcof-gen validate`: check any sharegpt-style zoom dataset, ours or someone else's, before training on it.

Published zoom datasets have been found whose crops do not show their boxes; a trainer never notices.
This re-executes every tool call with the crop rule of the dataset's student model (its export target:
`--target`, else the `target` its export_report.json names, else qwen2.5-vl) and compares the result with the
stored crop, and checks what silently breaks training: `<image>` placeholders vs images, turn order,
boxes outside their convention's range, frames that model's processor would resize (which moves every pixel
box) and token budgets at that processor's patch size.

Reads LLaMA-Factory sharegpt (`messages` / `role` / `content`, or `conversations` / `from` / `value`),
the Qwen fine-tune layout (`image` + `conversations`), ms-swift JSONL and our Parquet; image paths are
relative to the data file's folder unless `image_root` is given.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from rich.table import Table

from mmcof_gen import cof_format
from mmcof_gen.budget import TokenBudget
from mmcof_gen.errors import ConfigError
from mmcof_gen.extras import require
from mmcof_gen.conventions import CONVENTIONS, read_box
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS, Target
from mmcof_gen.imaging import image_sha256, smart_resize
from mmcof_gen.store import jsonl_lines

CHECKS = ("images", "placeholders", "turn_order", "boxes", "frame_size", "token_budget", "recrop")
EXAMPLES = 5
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_V1_BOX = re.compile(r"<\|box_start\|>\[([^\]]*)\]<\|box_end\|>\s*" + re.escape(cof_format.ZOOMIN))


class Sample:
    """One record in a common shape: messages as role/content, images as paths or PNG bytes."""

    def __init__(self, sample_id: str, messages: list[dict], images: list, base: Path):
        self.id, self.messages, self.images, self.base = sample_id, messages, images, base

    def load(self, index: int) -> Image.Image:
        source = self.images[index]
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, bytes):
            return Image.open(io.BytesIO(source)).convert("RGB")
        path = Path(source)
        with Image.open(path if path.is_absolute() else self.base / path) as image:
            return image.convert("RGB")


def data_files(path: Path) -> list[Path]:
    """The data files of an export folder (those `dataset_info.json` names, else every json/jsonl/parquet)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist; pass an export folder or a .json/.jsonl/.parquet file")
    info = path / "dataset_info.json"
    if info.is_file():
        named = [path / entry["file_name"] for entry in json.loads(info.read_text(encoding="utf-8")).values()
                 if isinstance(entry, dict) and "file_name" in entry]
        files = [p for p in named if p.is_file()]
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES and p.name not in
                       ("export_report.json", "validate_report.json", "filter_report.json"))
    if not files:
        raise ConfigError(f"{path} holds no data file (.json, .jsonl, .parquet); pass the file itself")
    return files


def read_samples(path: Path, image_root: Path | None = None) -> Iterator[Sample]:
    for data_file in data_files(path):
        base = image_root or data_file.parent
        for index, raw in enumerate(read_records(data_file)):
            yield _normalise(raw, f"{data_file.name}#{index}", base)


def read_records(path: Path) -> Iterator[dict]:
    """The raw records of one data file of an exported dataset (.json list, .jsonl, .parquet), as dicts."""
    if path.suffix == ".parquet":
        require("data", "reading .parquet", ("pyarrow",))
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
            yield from batch.to_pylist()
        return
    try:
        data = (json.loads(path.read_text(encoding="utf-8")) if path.suffix == ".json"
                else [json.loads(line) for _, line in jsonl_lines(path)])
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON{'' if path.suffix == '.json' else ' lines'}: {exc}") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a list of samples")
    yield from data


def _normalise(raw: dict, fallback_id: str, base: Path) -> Sample:
    if not isinstance(raw, dict):  # a malformed record fails the checks, it never stops the run
        raw = {}
    turns = raw.get("messages") or raw.get("conversations") or []
    messages = []
    for turn in turns if isinstance(turns, list) else []:
        turn = turn if isinstance(turn, dict) else {}
        role = turn.get("role", turn.get("from", ""))
        content = turn.get("content", turn.get("value", ""))
        messages.append({"role": _ROLES.get(role, role), "content": content if isinstance(content, str) else ""})
    images = raw.get("images", raw.get("image")) or []
    if isinstance(images, (str, dict)):
        images = [images]
    return Sample(str(raw.get("id") or fallback_id), messages, list(images), base)


# -- the checks --------------------------------------------------------------------------------------------
def turn_order_problem(messages: list[dict]) -> str | None:
    """system?, user, then (assistant with one tool call, user with the crop)*, then assistant with the answer."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or body[0] != "user" or body[-1] != "assistant":
        return f"turns {roles} must start with user and end with assistant"
    if any(role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(body)):
        return f"turns {roles} do not alternate user/assistant"
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    for number, text in enumerate(assistants[:-1], 1):
        if text.count("<tool_call>") != 1:
            return f"assistant turn {number} holds {text.count('<tool_call>')} tool calls, not exactly 1"
    if "<tool_call>" in assistants[-1] or cof_format.extract_answer(assistants[-1]) is None:
        return "the last assistant turn must hold an <answer> and no tool call"
    return None


def zoom_calls(messages: list[dict]) -> list[dict]:
    """The arguments of every zoom, in order: the first tool call of each assistant turn (what the CoF eval
    loop executes), or the v1 form's `<|box_start|>[...]<|box_end|><|image_zoomin|>`. ValueError if malformed."""
    calls = []
    for message in messages:
        if message["role"] != "assistant":
            continue
        call = cof_format.parse_tool_call(message["content"])
        if call is not None:
            calls.append(call["arguments"])
        for match in _V1_BOX.finditer(message["content"]):
            calls.append({"bbox_2d": json.loads(f"[{match.group(1)}]")})
    return calls


def export_target(path: Path) -> Target:
    """The student model an export was written for: the `target` of the export_report.json in its folder
    (qwen2.5-vl for exports that predate targets, and for data that is not ours)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    report = folder / "export_report.json"
    try:
        name = json.loads(report.read_text(encoding="utf-8")).get("target", DEFAULT_TARGET)
    except (OSError, ValueError, AttributeError):
        return TARGETS[DEFAULT_TARGET]
    if name not in TARGETS:
        raise ConfigError(f"{report} names target {name!r}, which this version does not know; pass --target "
                          f"({', '.join(TARGETS)})")
    return TARGETS[name]


def crop_difference(expected: Image.Image, stored: Image.Image, tolerance: float) -> str | None:
    """None when the stored crop shows what the crop function makes (exactly, or within `tolerance`
    mean absolute difference on 0-255, for crops saved as JPEG)."""
    if expected.size != stored.size:
        return f"stored crop is {stored.width}x{stored.height}, the crop function makes {expected.width}x{expected.height}"
    if image_sha256(expected) == image_sha256(stored):
        return None
    diff = float(np.abs(np.asarray(expected, dtype=np.int16) - np.asarray(stored, dtype=np.int16)).mean())
    return None if diff <= tolerance else f"pixels differ (mean absolute difference {diff:.2f} > {tolerance})"


def check_zooms(sample: Sample, images: list[Image.Image], student: Target, tolerance: float,
                record: Callable[[str, Sample, str | None], None]) -> None:
    """The boxes check of a sample (one zoom call per crop, each box readable in the student's convention),
    then, when it passed, the recrop check of each call against its stored crop."""
    frame = images[0]
    try:
        calls = zoom_calls(sample.messages)
    except ValueError as exc:
        record("boxes", sample, str(exc))
        return
    problem = None if len(calls) == len(images) - 1 else f"{len(calls)} zooms for {len(images) - 1} crops"
    for number, call in enumerate(calls if problem is None else [], 1):
        try:
            read_box(call["bbox_2d"], CONVENTIONS[student.boxes], frame.width, frame.height)
        except ValueError as exc:
            problem = f"zoom {number}: {exc}"
            break
    record("boxes", sample, problem)
    if problem:
        return
    for number, call in enumerate(calls, 1):
        try:
            recropped = student.crop(images[:number], call)
        except ValueError as exc:  # imaging.InvalidBox: the target's tool refuses the call
            record("recrop", sample, f"zoom {number}: {exc}")
            continue
        record("recrop", sample, crop_difference(recropped, images[number], tolerance))


def validate(
    path: Path,
    image_root: Path | None = None,
    max_pixels: int = 3840 * 3840,
    cutoff_len: int | None = None,
    tolerance: float = 0.0,
    tokenizer: str | None = None,
    target: str | None = None,
) -> dict:
    """Run every check on every sample of `path` for the student model `target` (none: the export's own);
    returns the report (`ok` is False when any check failed)."""
    student = TARGETS[target] if target else export_target(path)
    results = {name: {"checked": 0, "failed": 0, "examples": []} for name in CHECKS}
    budget = TokenBudget(max_pixels, tokenizer, student.min_pixels, student.factor)

    def record(name: str, sample: Sample, problem: str | None, count: int = 1) -> None:
        results[name]["checked"] += count
        if problem:
            results[name]["failed"] += 1
            if len(results[name]["examples"]) < EXAMPLES:
                results[name]["examples"].append({"id": sample.id, "reason": problem})

    samples = 0
    for sample in read_samples(path, image_root):
        samples += 1
        placeholders = sum(m["content"].count(cof_format.IMAGE) for m in sample.messages)
        record("placeholders", sample, None if placeholders == len(sample.images) else
               f"{placeholders} <image> placeholders for {len(sample.images)} images")
        record("turn_order", sample, turn_order_problem(sample.messages))
        try:
            images = [sample.load(i) for i in range(len(sample.images))]
        except (OSError, ValueError, TypeError) as exc:
            record("images", sample, f"cannot open an image: {exc}")
            continue
        record("images", sample, None if images else "no images")
        if not images:
            continue
        frame = images[0]
        resized = smart_resize(frame.height, frame.width, student.factor, student.min_pixels, max_pixels)
        record("frame_size", sample, None if resized == (frame.height, frame.width) else
               f"images[0] is {frame.width}x{frame.height}; a {student.title} processor at max_pixels {max_pixels} "
               f"resizes it to {resized[1]}x{resized[0]}, which moves every box")
        tokens = budget.add(sample.id, sample.messages, [image.size for image in images])
        record("token_budget", sample, f"{tokens} tokens > cutoff_len {cutoff_len}"
               if cutoff_len and tokens > cutoff_len else None)
        check_zooms(sample, images, student, tolerance, record)

    for row in results.values():
        row["rate"] = round(row["failed"] / row["checked"], 4) if row["checked"] else 0.0
    return {"input": str(path), "target": student.name, "samples": samples,
            "ok": all(r["failed"] == 0 for r in results.values()),
            "checks": results, "token_budget": budget.summary(), "tolerance": tolerance}


def report_table(report: dict) -> Table:
    table = Table(title=f"validate {report['input']}: {report['samples']} samples, "
                        f"{'all checks passed' if report['ok'] else 'CHECKS FAILED'}")
    for column in ("check", "checked", "failed", "rate", "first problem"):
        table.add_column(column, justify="right" if column in ("checked", "failed", "rate") else "left")
    for name, row in report["checks"].items():
        first = row["examples"][0] if row["examples"] else None
        table.add_row(name, str(row["checked"]), str(row["failed"]), f"{row['rate']:.1%}",
                      f"{first['id']}: {first['reason']}" if first else "")
    return table
