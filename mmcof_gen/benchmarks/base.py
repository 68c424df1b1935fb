"""What every benchmark module declares (`Benchmark`) and the accuracy they all report; the registry of
benchmarks is `mmcof_gen.benchmarks.BENCHMARKS`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mmcof_gen.scoring import Score
from mmcof_gen.tasks.vstar import BenchItem


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its files are recognised and read, and its published scoring."""

    name: str
    files: str  # what it reads, as a user would name it
    scoring: str  # the published scoring, in words, written into the report
    detect: Callable[[Path], bool]
    load: Callable[[Path], list[BenchItem]]
    score: Callable[[list, dict[str, BenchItem]], dict]  # records of one mode x R -> {"table": {...}, "detail": {...}}
    title: Callable[[Path], str]
    judge: Callable[..., Awaitable[Score]] | None = None  # (item, predicted, judge model) when not the default


def accuracy(records: list) -> float:
    return round(sum(r.correct for r in records) / len(records), 4) if records else 0.0
