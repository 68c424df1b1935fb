"""V*-bench in both forms it ships in, and the generic JSONL: read by `tasks.vstar` (which `synthesize`
shares); scored as the V* papers print it, accuracy per category (direct_attributes, relative_position)
and over all questions."""

from __future__ import annotations

import json
from pathlib import Path

from mmcof_gen.benchmarks.base import Benchmark, accuracy
from mmcof_gen.tasks.vstar import VSTAR_QUESTIONS, BenchItem, is_vstar_folder, load_bench


def _first_keys(path: Path) -> set[str]:
    """The keys of the first JSON line of a `.jsonl` file (empty when it is not one)."""
    if not (path.is_file() and path.suffix.lower() == ".jsonl"):
        return set()
    try:
        with path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "{}")
        row = json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set()
    return set(row) if isinstance(row, dict) else set()


def detect(path: Path) -> bool:
    return is_vstar_folder(path) if path.is_dir() else {"text", "label"} <= _first_keys(path)


def detect_generic(path: Path) -> bool:
    return {"image", "question"} <= _first_keys(path)


def score(records: list, items: dict[str, BenchItem]) -> dict:
    categories = sorted({r.category for r in records})
    table = {c: accuracy([r for r in records if r.category == c]) for c in categories}
    return {"table": {**table, "Overall": accuracy(records)}}


BENCHMARK = Benchmark(
    name="vstar", files=f"V* folder (category folders or {VSTAR_QUESTIONS})",
    scoring="V*: accuracy per category and over all questions", detect=detect, load=load_bench, score=score,
    title=lambda path: "V*")
GENERIC = Benchmark(
    name="jsonl", files="JSONL of {image, question, options?, answer, category?}",
    scoring="accuracy per category and over all questions", detect=detect_generic, load=load_bench, score=score,
    title=lambda path: path.stem)
